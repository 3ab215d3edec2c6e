//! Every RPC of every service this build serves, probed with malformed input and put through
//! the auth matrix (the platform test kit's harnesses). The services come from the binary's
//! registry and the methods from the contracts, so a service is covered by being registered.

// The registry is the binary's; this test compiles the same file rather than a copy of its list.
#[path = "../src/registry.rs"]
#[allow(dead_code)]
mod registry;

use crm_platform::testing::{
    ModuleFactory, TestApp, auth_matrix, probe_malformed_inputs, served_services,
};

/// A server running every registered service, and the business services it serves (the
/// registry's and those the platform serves for them, e.g. `google.longrunning.Operations`).
async fn every_registered_service() -> (TestApp, Vec<String>) {
    let factories: Vec<ModuleFactory<'_>> = registry::SERVICES
        .iter()
        .map(|entry| &entry.module as ModuleFactory<'_>)
        .collect();
    let app = TestApp::spawn(&factories).await;
    let served = served_services(app.channel().await).await;
    for entry in registry::SERVICES {
        assert!(
            served.iter().any(|s| s == entry.grpc_service),
            "{} is registered but not served: {served:?}",
            entry.grpc_service
        );
    }
    (app, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_rpc_answers_malformed_input_without_internal_errors_or_oversized_answers() {
    let (app, served) = every_registered_service().await;
    let services: Vec<&str> = served.iter().map(String::as_str).collect();

    let report = probe_malformed_inputs(&app, &services).await;

    println!("{}", report.render());
    report.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_rpc_refuses_bad_tokens_and_missing_scopes_and_admits_its_scope() {
    let (app, served) = every_registered_service().await;
    let services: Vec<&str> = served.iter().map(String::as_str).collect();

    let report = auth_matrix(&app, &services).await;

    println!("{}", report.render());
    report.assert_clean();
}
