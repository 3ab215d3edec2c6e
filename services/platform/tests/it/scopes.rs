//! Scopes come from the contracts: every method of every `crm.*.v1` service declares one with
//! the `(crm.common.v1.auth)` option, and a server refuses to start serving a service whose
//! methods do not.

use std::collections::BTreeMap;

use crm_platform::auth::{ContractScopes, contract_services};
use crm_platform::db::Database;
use crm_platform::server::ServiceModule;
use sqlx::migrate::Migrator;

use crate::support::{admin_url, config, within};

const CONTRACT_SERVICES: [&str; 5] = [
    "crm.customer.v1.CustomerService",
    "crm.inference.v1.InferenceService",
    "crm.marketing.v1.MarketingService",
    "crm.sales.v1.SalesService",
    "crm.support.v1.SupportService",
];

/// Every rpc of every `proto/crm/<svc>/v1/*.proto` with the scope its `// Scope:` comment
/// documents, keyed by gRPC path.
fn documented_scopes() -> BTreeMap<String, String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/crm");
    let mut documented = BTreeMap::new();
    for package in std::fs::read_dir(&root).unwrap() {
        let dir = package.unwrap().path().join("v1");
        for file in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
            let mut service = String::new();
            let mut scope = None;
            for line in text.lines().map(str::trim) {
                if let Some(name) = line.strip_prefix("service ") {
                    let package = dir.parent().unwrap().file_name().unwrap().to_string_lossy();
                    service = format!("crm.{package}.v1.{}", name.trim_end_matches(" {"));
                } else if let Some(rest) = line.strip_prefix("// Scope: ") {
                    scope = Some(rest.trim_end_matches('.').trim_matches('`').to_string());
                } else if let Some(rest) = line.strip_prefix("rpc ") {
                    let method = rest.split('(').next().unwrap().trim();
                    let path = format!("/{service}/{method}");
                    let scope = scope
                        .take()
                        .unwrap_or_else(|| panic!("{path}: no Scope line"));
                    documented.insert(path, scope);
                }
            }
        }
    }
    documented
}

#[test]
fn every_method_of_every_crm_service_declares_a_scope_of_its_own_service() {
    let services = contract_services().unwrap();

    let scopes =
        ContractScopes::for_services(&services.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(services, CONTRACT_SERVICES);
    assert_eq!(scopes.len(), 24 + 43 + 42 + 49 + 49);
    for (path, scope) in scopes.methods() {
        let package = path.trim_start_matches("/crm.").split('.').next().unwrap();
        let (owner, access) = scope.split_once('.').unwrap();
        assert_eq!(owner, package, "{path} needs {scope}");
        assert!(
            ["read", "write", "gdpr", "admin"].contains(&access),
            "{path} needs {scope}"
        );
    }
}

#[test]
fn the_scope_each_rpc_documents_is_the_one_its_option_declares() {
    let scopes = ContractScopes::for_services(&CONTRACT_SERVICES).unwrap();
    let declared: BTreeMap<String, String> = scopes
        .methods()
        .map(|(path, scope)| (path.to_string(), scope.to_string()))
        .collect();

    assert_eq!(declared, documented_scopes());
}

#[tokio::test]
async fn serve_refuses_a_service_whose_methods_declare_no_scope_naming_it() {
    const UNSCOPED: &str = "crm.test.v1.UnscopedService";
    let config = config(&[("CRM__DATABASE__URL", &admin_url())]);
    let migrator: &'static Migrator = Box::leak(Box::new(Migrator::DEFAULT));
    let module = ServiceModule {
        name: "unscoped",
        grpc_service: UNSCOPED,
        database: Database::connect_lazy(&config.database, "unscoped", migrator).unwrap(),
        operations: None,
        add_routes: Box::new(|_| {}),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let result = within(crm_platform::server::serve(
        &config,
        vec![module],
        listener,
        tokio_util::sync::CancellationToken::new(),
    ))
    .await;

    let err = result.expect_err("serve must refuse a service without scopes");
    assert!(format!("{err:#}").contains(UNSCOPED), "{err:#}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing may be served"
    );
}
