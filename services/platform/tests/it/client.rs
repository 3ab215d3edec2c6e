//! `crm_platform::client` against real tonic servers on 127.0.0.1: fixtures serving
//! `grpc.health.v1.Health` that record what reaches them, and a relay that serves through the
//! platform's middleware and calls a fixture, as a service calling another would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crm_platform::auth::Claims;
use crm_platform::client::{CallContext, Resolve, ServiceClient};
use crm_platform::config::DEV_JWT_SECRET;
use crm_platform::middleware::{DeadlineLayer, ObservabilityLayer, RunToCompletionLayer};
use crm_platform::server::ServiceContext;
use futures::future::BoxFuture;
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::support::{config, counter, eventually, metrics, within};

/// The response header naming the fixture that answered.
const SERVED_BY: &str = "x-served-by";

/// A health server that records each call's metadata, can answer UNAVAILABLE a number of times
/// first, and names itself in every answer.
struct Fixture {
    name: &'static str,
    checks: AtomicUsize,
    watches: AtomicUsize,
    unavailable_first: AtomicUsize,
    seen: Mutex<Vec<MetadataMap>>,
}

impl Fixture {
    fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            checks: AtomicUsize::new(0),
            watches: AtomicUsize::new(0),
            unavailable_first: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn checks(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }

    fn last_seen(&self) -> MetadataMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a call arrived")
    }

    fn header(&self, name: &str) -> String {
        self.last_seen()
            .get(name)
            .unwrap_or_else(|| panic!("{name} arrived"))
            .to_str()
            .unwrap()
            .to_string()
    }
}

/// A [`Fixture`] as a tonic service (the fixture itself stays with the test).
struct Served(Arc<Fixture>);

#[tonic::async_trait]
impl Health for Served {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.checks.fetch_add(1, Ordering::SeqCst);
        self.0.seen.lock().unwrap().push(request.metadata().clone());
        let fail = self
            .0
            .unavailable_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(Status::unavailable("fixture: try again"));
        }
        let mut response = Response::new(HealthCheckResponse { status: 1 });
        response
            .metadata_mut()
            .insert(SERVED_BY, self.0.name.parse().unwrap());
        Ok(response)
    }

    type WatchStream = futures::stream::BoxStream<'static, Result<HealthCheckResponse, Status>>;

    /// One message, then UNAVAILABLE.
    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.0.watches.fetch_add(1, Ordering::SeqCst);
        let stream = futures::stream::iter([
            Ok(HealthCheckResponse { status: 1 }),
            Err(Status::unavailable("fixture: stream broke")),
        ]);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Serves `fixture` on a fresh 127.0.0.1 port until the test ends.
async fn serve(fixture: Arc<Fixture>, stop: &CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = stop.clone();
    tokio::spawn(
        Server::builder()
            .add_service(HealthServer::new(Served(fixture)))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop.cancelled_owned()),
    );
    addr
}

/// Resolves every name to the addresses the test sets.
#[derive(Clone, Default)]
struct TestResolver(Arc<Mutex<Vec<SocketAddr>>>);

impl TestResolver {
    fn set(&self, addrs: &[SocketAddr]) {
        *self.0.lock().unwrap() = addrs.to_vec();
    }
}

impl Resolve for TestResolver {
    fn resolve(&self, _: &str, _: u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let addrs = self.0.lock().unwrap().clone();
        Box::pin(async move { Ok(addrs) })
    }
}

/// A context whose client of `target` resolves `fixture.test` with the test's resolver.
fn context(target: &str, extra: &[(&str, &str)], stop: &CancellationToken) -> ServiceContext {
    let prefix = format!("CRM__CLIENTS__{}__", target.to_uppercase());
    let mut env: Vec<(String, String)> = vec![
        (format!("{prefix}ENDPOINT"), "http://fixture.test:1".into()),
        (format!("{prefix}RESOLVE_INTERVAL_SECS"), "1".into()),
    ];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v.to_string())),
    );
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ServiceContext::new(Arc::new(config(&pairs)), stop.clone())
}

/// A health client of `target` over the platform's client, `Check` declared idempotent when
/// `idempotent`.
fn health_client(
    ctx: &ServiceContext,
    target: &str,
    resolver: &TestResolver,
    idempotent: &[&str],
) -> HealthClient<ServiceClient> {
    let channel = ServiceClient::builder(ctx, target)
        .caller("tester")
        .scopes(&["customer.read"])
        .idempotent(idempotent)
        .resolver(resolver.clone())
        .connect()
        .unwrap();
    HealthClient::new(channel)
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest::default()
}

fn served_by<T>(response: &Response<T>) -> String {
    response
        .metadata()
        .get(SERVED_BY)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn concurrent_calls_are_balanced_over_every_resolved_address() {
    let stop = CancellationToken::new();
    let (a, b) = (Fixture::new("a"), Fixture::new("b"));
    let resolver = TestResolver::default();
    resolver.set(&[serve(a.clone(), &stop).await, serve(b.clone(), &stop).await]);
    let ctx = context("balanced", &[], &stop);
    let client = health_client(&ctx, "balanced", &resolver, &[]);

    let calls = (0..64).map(|_| {
        let mut client = client.clone();
        async move { client.check(check()).await }
    });
    let results = within(futures::future::join_all(calls)).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(a.checks() + b.checks(), 64);
    // Both connections are up by now, so calls reach both (chosen at random per call).
    eventually("both servers receive calls", || {
        let mut client = client.clone();
        let (a, b) = (a.clone(), b.clone());
        async move {
            client.check(check()).await.unwrap();
            a.checks() > 0 && b.checks() > 0
        }
    })
    .await;
    stop.cancel();
}

#[tokio::test]
async fn re_resolution_adds_new_addresses_and_drops_gone_ones() {
    let stop = CancellationToken::new();
    let (a, b) = (Fixture::new("a"), Fixture::new("b"));
    let (addr_a, addr_b) = (serve(a.clone(), &stop).await, serve(b.clone(), &stop).await);
    let resolver = TestResolver::default();
    resolver.set(&[addr_a]);
    let ctx = context("rescaled", &[], &stop);
    let mut client = health_client(&ctx, "rescaled", &resolver, &[]);
    let first = within(client.check(check())).await.unwrap();
    assert_eq!(served_by(&first), "a");

    resolver.set(&[addr_b]);
    eventually("the new address receives calls", || {
        let mut client = client.clone();
        async move { served_by(&client.check(check()).await.unwrap()) == "b" }
    })
    .await;
    let before = a.checks();
    for _ in 0..20 {
        let response = within(client.check(check())).await.unwrap();
        assert_eq!(
            served_by(&response),
            "b",
            "the gone address still receives calls"
        );
    }

    assert_eq!(a.checks(), before);
    stop.cancel();
}

#[tokio::test]
async fn a_name_with_no_address_fails_unavailable_until_its_first_pod_appears() {
    let stop = CancellationToken::new();
    let first = Fixture::new("first");
    let addr = serve(first.clone(), &stop).await;
    let resolver = TestResolver::default();
    let ctx = context("empty", &[("RESOLVE_INTERVAL_SECS", "300")], &stop);
    let mut client = health_client(&ctx, "empty", &resolver, &[]);

    let status = within(client.check(check())).await.unwrap_err();
    resolver.set(&[addr]);

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Looked up again well before the 300 s interval, because the last answer was empty.
    eventually("the first pod receives calls", || {
        let mut client = client.clone();
        async move { client.check(check()).await.is_ok() }
    })
    .await;
    stop.cancel();
}

#[tokio::test]
async fn an_unset_endpoint_calls_the_service_this_process_serves_over_loopback() {
    let stop = CancellationToken::new();
    let local = Fixture::new("local");
    let addr = serve(local.clone(), &stop).await;
    let ctx = ServiceContext::new(Arc::new(config(&[])), stop.clone());
    let mut client =
        HealthClient::new(ServiceClient::connect(&ctx, "customer", &["customer.read"]).unwrap());

    ctx.loopback.announce(addr, ["customer"]);
    let response = within(client.check(check())).await.unwrap();

    assert_eq!(served_by(&response), "local");
    let elsewhere = ServiceClient::connect(&ctx, "sales", &["sales.read"]).unwrap_err();
    assert!(
        elsewhere.to_string().contains("clients.sales.endpoint"),
        "{elsewhere}"
    );
    stop.cancel();
}

#[tokio::test]
async fn unavailable_is_retried_for_a_method_declared_idempotent() {
    let stop = CancellationToken::new();
    let fixture = Fixture::new("flaky");
    fixture.unavailable_first.store(2, Ordering::SeqCst);
    let resolver = TestResolver::default();
    resolver.set(&[serve(fixture.clone(), &stop).await]);
    let ctx = context("retried", &[("MAX_ATTEMPTS", "3")], &stop);
    let mut client = health_client(&ctx, "retried", &resolver, &["Check"]);

    let response = within(client.check(check())).await;

    assert!(response.is_ok(), "{response:?}");
    assert_eq!(fixture.checks(), 3);
    stop.cancel();
}

#[tokio::test]
async fn retries_stop_after_max_attempts() {
    let stop = CancellationToken::new();
    let fixture = Fixture::new("down");
    fixture.unavailable_first.store(100, Ordering::SeqCst);
    let resolver = TestResolver::default();
    resolver.set(&[serve(fixture.clone(), &stop).await]);
    let ctx = context("bounded", &[("MAX_ATTEMPTS", "3")], &stop);
    let mut client = health_client(&ctx, "bounded", &resolver, &["Check"]);

    let status = within(client.check(check())).await.unwrap_err();

    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(fixture.checks(), 3);
    stop.cancel();
}

#[tokio::test]
async fn unavailable_is_not_retried_for_a_method_not_declared_idempotent() {
    let stop = CancellationToken::new();
    let fixture = Fixture::new("flaky");
    fixture.unavailable_first.store(1, Ordering::SeqCst);
    let resolver = TestResolver::default();
    resolver.set(&[serve(fixture.clone(), &stop).await]);
    let ctx = context("once", &[("MAX_ATTEMPTS", "5")], &stop);
    let mut client = health_client(&ctx, "once", &resolver, &["Watch"]);

    let status = within(client.check(check())).await.unwrap_err();

    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(fixture.checks(), 1);
    stop.cancel();
}

#[tokio::test]
async fn a_stream_is_not_retried_once_its_first_message_arrived() {
    let stop = CancellationToken::new();
    let fixture = Fixture::new("stream");
    let resolver = TestResolver::default();
    resolver.set(&[serve(fixture.clone(), &stop).await]);
    let ctx = context("streamed", &[], &stop);
    let mut client = health_client(&ctx, "streamed", &resolver, &["Watch"]);

    let mut stream = within(client.watch(check())).await.unwrap().into_inner();
    let first = within(stream.next()).await;
    let second = within(stream.next()).await;

    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    assert!(
        matches!(&second, Some(Err(status)) if status.code() == Code::Unavailable),
        "{second:?}"
    );
    assert_eq!(fixture.watches.load(Ordering::SeqCst), 1);
    stop.cancel();
}

#[tokio::test]
async fn a_passed_deadline_fails_fast_without_calling() {
    let stop = CancellationToken::new();
    let fixture = Fixture::new("never");
    let resolver = TestResolver::default();
    resolver.set(&[serve(fixture.clone(), &stop).await]);
    let ctx = context("late", &[], &stop);
    let mut client = health_client(&ctx, "late", &resolver, &["Check"]);
    let passed = CallContext {
        deadline: Some(tokio::time::Instant::now() - Duration::from_millis(1)),
        ..CallContext::default()
    };

    let status = within(passed.scope(client.check(check())))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(fixture.checks(), 0);
    stop.cancel();
}

#[tokio::test]
async fn a_timeout_set_on_the_request_replaces_the_clients_default() {
    let stop = CancellationToken::new();
    let fixture = Fixture::new("patient");
    let resolver = TestResolver::default();
    resolver.set(&[serve(fixture.clone(), &stop).await]);
    let ctx = context("patient", &[("TIMEOUT_MS", "2000")], &stop);
    let mut client = health_client(&ctx, "patient", &resolver, &[]);
    let mut request = Request::new(check());
    request.set_timeout(Duration::from_secs(60));

    within(client.check(request)).await.unwrap();
    within(client.check(check())).await.unwrap();

    let sent: Vec<u64> = fixture
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.get("grpc-timeout").unwrap().to_str().unwrap())
        .map(|t| t.strip_suffix('m').unwrap().parse().unwrap())
        .collect();
    assert!((2001..=60_000).contains(&sent[0]), "{sent:?}");
    assert!((1..=2000).contains(&sent[1]), "{sent:?}");
    stop.cancel();
}

#[tokio::test]
async fn the_token_carries_the_callers_name_and_only_its_declared_scopes() {
    let stop = CancellationToken::new();
    let fixture = Fixture::new("auth");
    let resolver = TestResolver::default();
    resolver.set(&[serve(fixture.clone(), &stop).await]);
    let ctx = context("scoped", &[], &stop);
    let mut client = health_client(&ctx, "scoped", &resolver, &[]);

    within(client.check(check())).await.unwrap();

    let header = fixture.header("authorization");
    let token = header.strip_prefix("Bearer ").expect("a bearer token");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["crm-suite"]);
    let claims = jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(DEV_JWT_SECRET.as_bytes()),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims.scope, "customer.read");
    assert_eq!(claims.sub, "tester");
    assert_eq!(claims.principal_kind.as_deref(), Some("service"));
    stop.cancel();
}

#[tokio::test]
async fn each_call_is_counted_once_with_its_code() {
    metrics();
    let stop = CancellationToken::new();
    let fixture = Fixture::new("counted");
    fixture.unavailable_first.store(1, Ordering::SeqCst);
    let resolver = TestResolver::default();
    resolver.set(&[serve(fixture.clone(), &stop).await]);
    let ctx = context("counted", &[], &stop);
    let mut client = health_client(&ctx, "counted", &resolver, &[]);

    let _ = within(client.check(check())).await;
    within(client.check(check())).await.unwrap();
    within(client.check(check())).await.unwrap();

    let series = |code: &str| {
        counter(
            "crm_client_requests_total",
            &[
                r#"target="counted""#,
                r#"method="Check""#,
                &format!(r#"code="{code}""#),
            ],
        )
    };
    assert_eq!(series("Unavailable"), 1);
    assert_eq!(series("Ok"), 2);
    let rendered = metrics().render();
    assert!(
        rendered.contains(
            r#"crm_client_request_duration_seconds_count{target="counted",method="Check"} 3"#
        ) || rendered.contains(
            r#"crm_client_request_duration_seconds_count{method="Check",target="counted"} 3"#
        ),
        "every call is timed:\n{rendered}"
    );
    stop.cancel();
}

/// A health service that answers by calling a fixture through the platform's client, served
/// behind the platform's middleware like a real service.
struct Relay {
    next: HealthClient<ServiceClient>,
}

#[tonic::async_trait]
impl Health for Relay {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.next.clone().check(request.into_inner()).await
    }

    type WatchStream = futures::stream::BoxStream<'static, Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("the relay only checks"))
    }
}

/// A relay in front of a fresh fixture; returns the relay's address and the fixture.
async fn relay(target: &str, stop: &CancellationToken) -> (SocketAddr, Arc<Fixture>) {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let fixture = Fixture::new("callee");
    let resolver = TestResolver::default();
    resolver.set(&[serve(fixture.clone(), stop).await]);
    let ctx = context(target, &[("TIMEOUT_MS", "30000")], stop);
    let next = health_client(&ctx, target, &resolver, &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layers = tower::ServiceBuilder::new()
        .layer(ObservabilityLayer)
        .layer(DeadlineLayer::new(Duration::from_secs(60)))
        .layer(RunToCompletionLayer)
        .into_inner();
    tokio::spawn(
        Server::builder()
            .layer(layers)
            .add_service(HealthServer::new(Relay { next }))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    (addr, fixture)
}

async fn call_relay(addr: SocketAddr, request: Request<HealthCheckRequest>) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut caller = HealthClient::new(channel);
    within(caller.check(request)).await.unwrap();
}

#[tokio::test]
async fn the_callee_sees_what_is_left_of_the_callers_deadline() {
    let stop = CancellationToken::new();
    let (addr, fixture) = relay("deadline", &stop).await;
    let mut request = Request::new(check());
    request.set_timeout(Duration::from_millis(1500));

    call_relay(addr, request).await;

    let sent = fixture.header("grpc-timeout");
    let millis: u64 = sent
        .strip_suffix('m')
        .expect("milliseconds")
        .parse()
        .unwrap();
    assert!(
        (1..=1500).contains(&millis),
        "the caller's 1500 ms, less the time spent, not the client's 30 s: {sent}"
    );
    stop.cancel();
}

#[tokio::test]
async fn trace_context_and_request_id_reach_the_callee() {
    let stop = CancellationToken::new();
    let (addr, fixture) = relay("traced", &stop).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = Request::new(check());
    let metadata = request.metadata_mut();
    metadata.insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    metadata.insert("x-request-id", "relay-request-1".parse().unwrap());

    call_relay(addr, request).await;

    let traceparent = fixture.header("traceparent");
    assert_eq!(
        traceparent.split('-').nth(1),
        Some(trace_id),
        "the callee continues the caller's trace: {traceparent}"
    );
    assert_eq!(fixture.header("x-request-id"), "relay-request-1");
    stop.cancel();
}

#[tokio::test]
async fn with_trace_export_on_the_callee_continues_the_trace_from_the_callers_span() {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // Thread-local, and this test's runtime (servers included) runs on this one thread.
    let _tracing = tracing::subscriber::set_default(subscriber);
    let stop = CancellationToken::new();
    let (addr, fixture) = relay("exported", &stop).await;
    let (trace_id, caller_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let mut request = Request::new(check());
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );

    call_relay(addr, request).await;

    let traceparent = fixture.header("traceparent");
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields[1], trace_id, "the same trace: {traceparent}");
    assert_ne!(
        fields[2], caller_span,
        "the parent is the relay's own client span: {traceparent}"
    );
    stop.cancel();
}
