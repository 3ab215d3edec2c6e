//! A server of any service modules, over real gRPC: health and reflection open without a
//! token, tokens and scopes checked before a call reaches a service, request ids, load
//! shedding, deadlines and the shutdown drain. The service is a fixture (`fixture.rs`).

use std::time::Duration;

use crm_platform::server::{DrainCut, ServiceContext};
use crm_platform::testing::{
    BearerAuth, TestApp, config, eventually, fresh_database, health_of, is_serving, redis_url,
    user_token, within,
};
use crm_proto::google::longrunning as lro;
use crm_proto::google::longrunning::operations_client::OperationsClient;
use futures::StreamExt;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic_reflection::pb::v1 as reflection;

use crate::fixture::{Fixture, MISSING, SCOPE, SERVICE};

const SERVING: i32 = 1;

/// A client of the fixture with a token granting `scopes`, or none.
type Operations = OperationsClient<crm_platform::testing::AuthorizedChannel>;

/// HTTP/2 as hyper speaks it, with nothing of gRPC's on top.
type PlainHttp2 = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

/// A client of the fixture over plain HTTP/2. A tonic channel acts on the `grpc-timeout` it
/// sends, answering CANCELLED itself when it runs out; this one reports what the server said.
fn plain_client(app: &TestApp) -> OperationsClient<InterceptedService<PlainHttp2, BearerAuth>> {
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let origin = format!("http://{}", app.addr).parse().unwrap();
    let auth = BearerAuth::new(user_token(&[SCOPE]));
    OperationsClient::with_origin(InterceptedService::new(http, auth), origin)
}

/// Serves `fixture` over a fresh database with `extra` settings.
async fn spawn(fixture: &Fixture, extra: &[(&str, &str)]) -> TestApp {
    let config = config(&fresh_database().await, &redis_url(), extra);
    let module = |ctx: &ServiceContext| fixture.module(ctx);
    TestApp::spawn_with(config, &[&module]).await
}

/// A client of the fixture whose calls carry a token with its scope.
async fn client(app: &TestApp) -> Operations {
    OperationsClient::new(app.channel_with_token(user_token(&[SCOPE])).await)
}

fn get(name: &str) -> lro::GetOperationRequest {
    lro::GetOperationRequest { name: name.into() }
}

fn wait(name: &str) -> lro::WaitOperationRequest {
    lro::WaitOperationRequest {
        name: name.into(),
        timeout: None,
    }
}

/// Starts a `WaitOperation` call named `name` that the fixture holds until its gate opens, and
/// returns once the call has reached the service.
async fn hold(
    app: &TestApp,
    fixture: &Fixture,
    name: &str,
) -> tokio::task::JoinHandle<Result<tonic::Response<lro::Operation>, tonic::Status>> {
    let reached = fixture.calls() + 1;
    let held = tokio::spawn({
        let mut client = client(app).await;
        let request = wait(name);
        async move { client.wait_operation(request).await }
    });
    eventually("the held call reaches the service", || async {
        fixture.calls() == reached
    })
    .await;
    held
}

#[tokio::test]
async fn health_answers_for_the_server_and_each_service_without_a_token() {
    let app = spawn(&Fixture::new(), &[]).await;

    let overall = health_of(app.addr, "").await;
    let service = health_of(app.addr, SERVICE).await;

    assert_eq!((overall, service), (SERVING, SERVING));
}

#[tokio::test]
async fn reflection_lists_the_served_services_without_a_token() {
    let app = spawn(&Fixture::new(), &[]).await;
    let mut reflection =
        reflection::server_reflection_client::ServerReflectionClient::new(app.channel().await);
    let request = reflection::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            reflection::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };

    let mut answers = within(reflection.server_reflection_info(tokio_stream::once(request)))
        .await
        .expect("reflection needs no token")
        .into_inner();
    let answer = within(answers.next()).await.unwrap().unwrap();

    let Some(reflection::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("a list of services: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [SERVICE, "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

#[tokio::test]
async fn a_call_without_a_token_or_its_scope_is_refused_before_its_work_runs() {
    let fixture = Fixture::new();
    let app = spawn(&fixture, &[]).await;
    let mut anonymous = app
        .typed_client(None, OperationsClient::with_interceptor)
        .await;
    let mut unscoped = app
        .typed_client(
            user_token(&["other.read"]),
            OperationsClient::with_interceptor,
        )
        .await;

    let without_token = anonymous
        .get_operation(get("operations/a"))
        .await
        .unwrap_err();
    let without_scope = unscoped
        .get_operation(get("operations/a"))
        .await
        .unwrap_err();

    assert_eq!(
        without_token.code(),
        Code::Unauthenticated,
        "{without_token:?}"
    );
    assert_eq!(
        without_scope.code(),
        Code::PermissionDenied,
        "{without_scope:?}"
    );
    assert!(without_scope.message().contains(SCOPE), "{without_scope:?}");
    assert_eq!(fixture.calls(), 0, "no refused call did any work");
}

#[tokio::test]
async fn the_callers_request_id_is_echoed_in_the_response_metadata() {
    let app = spawn(&Fixture::new(), &[]).await;
    let mut request = tonic::Request::new(get("operations/a"));
    request
        .metadata_mut()
        .insert("x-request-id", "trace-me-42".parse().unwrap());

    let response = client(&app).await.get_operation(request).await.unwrap();

    let echoed = response
        .metadata()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap());
    assert_eq!(echoed, Some("trace-me-42"));
    assert!(response.into_inner().done);
}

#[tokio::test]
async fn a_request_id_is_generated_and_echoed_when_the_caller_sends_none() {
    let app = spawn(&Fixture::new(), &[]).await;
    let mut client = client(&app).await;

    let failed = client.get_operation(get(MISSING)).await.unwrap_err();
    let answered = client.get_operation(get("operations/a")).await.unwrap();

    let ids: Vec<uuid::Uuid> = [failed.metadata(), answered.metadata()]
        .into_iter()
        .map(|metadata| {
            let id = metadata
                .get("x-request-id")
                .expect("the response carries x-request-id")
                .to_str()
                .unwrap();
            uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id} is not a UUID: {e}"))
        })
        .collect();
    assert_eq!(failed.code(), Code::NotFound, "{failed:?}");
    assert_ne!(ids[0], ids[1], "each call gets its own id");
}

#[tokio::test]
async fn above_the_concurrency_limit_calls_are_shed_until_the_call_in_flight_finishes() {
    let fixture = Fixture::new();
    let app = spawn(&fixture, &[("CRM__SERVER__CONCURRENCY_LIMIT", "1")]).await;
    let client = client(&app).await;
    let held = hold(&app, &fixture, "operations/held").await;

    let shed = client
        .clone()
        .get_operation(get("operations/a"))
        .await
        .unwrap_err();

    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert_eq!(
        fixture.calls(),
        1,
        "the shed call never reached the service"
    );
    fixture.open();
    let finished = within(held).await.unwrap().expect("the held call succeeds");
    assert_eq!(finished.into_inner().name, "operations/held");
    let after = client.clone().get_operation(get("operations/b")).await;
    assert!(after.is_ok(), "calls are served again: {after:?}");
}

#[tokio::test]
async fn shutdown_lets_a_call_in_flight_finish_before_the_server_stops() {
    let fixture = Fixture::new();
    // A grace far longer than the test waits: the server has to stop because the call ended,
    // not because the drain bound ran out.
    let mut app = spawn(&fixture, &[("CRM__SERVER__SHUTDOWN_GRACE_SECS", "120")]).await;
    let held = hold(&app, &fixture, "operations/held").await;

    // What SIGTERM does.
    app.shutdown.cancel();
    eventually("the server stops serving", || async {
        !is_serving(app.addr).await
    })
    .await;
    fixture.open();
    let finished = within(held).await.unwrap();
    let stopped = app.stopped().await;

    assert_eq!(
        finished
            .expect("the call in flight finished")
            .into_inner()
            .name,
        "operations/held"
    );
    stopped.expect("the server stopped cleanly");
}

#[tokio::test]
async fn shutdown_with_a_call_that_never_finishes_returns_after_the_grace_period_saying_so() {
    let fixture = Fixture::new();
    let mut app = spawn(&fixture, &[("CRM__SERVER__SHUTDOWN_GRACE_SECS", "1")]).await;
    let stuck = hold(&app, &fixture, "operations/stuck").await;

    app.shutdown.cancel();
    let stopped = app.stopped().await;

    let err = stopped.expect_err("a drain cut short is not a clean stop");
    assert!(err.downcast_ref::<DrainCut>().is_some(), "{err:#}");
    // In a process that exits after `serve` the call dies with it; here the caller gives up.
    stuck.abort();
    assert!(within(stuck).await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn a_call_outliving_the_callers_grpc_timeout_is_deadline_exceeded_not_cancelled() {
    let fixture = Fixture::new();
    let app = spawn(&fixture, &[]).await;
    let mut client = plain_client(&app);

    // Several calls: tonic's own timer for the same header, which says CANCELLED, used to win
    // the race against the deadline layer's only some of the time.
    let mut codes = Vec::new();
    for _ in 0..10 {
        let mut request = tonic::Request::new(wait("operations/held"));
        request.set_timeout(Duration::from_millis(20));
        let status = within(client.wait_operation(request)).await.unwrap_err();
        codes.push(status.code());
    }

    assert_eq!(codes, [Code::DeadlineExceeded; 10]);
    fixture.open();
}

#[tokio::test]
async fn a_call_outliving_the_default_deadline_is_deadline_exceeded() {
    let fixture = Fixture::new();
    let app = spawn(&fixture, &[("CRM__SERVER__DEFAULT_TIMEOUT_MS", "200")]).await;

    let status = client(&app)
        .await
        .wait_operation(wait("operations/held"))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("200 ms"), "{status:?}");
    fixture.open();
}
