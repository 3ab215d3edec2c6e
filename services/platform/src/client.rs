//! Calling another CRM Suite service: the one way to do it.
//!
//! A [`ServiceClient`] is a channel-like `tower::Service` that a generated client wraps:
//!
//! ```ignore
//! let channel = ServiceClient::connect(&ctx, "customer", &["customer.read"])?;
//! let mut customers = CustomerServiceClient::new(channel);
//! ```
//!
//! Every call through it:
//! - goes to one of the addresses `clients.<service>.endpoint` resolves to (a headless Service:
//!   one per ready pod), balanced by tonic's balanced channel and re-resolved every
//!   `clients.<service>.resolve_interval_secs`, so scaled pods join and gone ones leave. Without
//!   an endpoint, a service this process serves itself is called over loopback (all-in-one
//!   mode takes the same path as production);
//! - carries `grpc-timeout` = the shorter of the incoming call's remaining deadline and the
//!   call's own timeout: the one the caller set on the request (`Request::set_timeout`, e.g. a
//!   long-lived stream), else `clients.<service>.timeout_ms`; a deadline already passed fails
//!   with DEADLINE_EXCEEDED without calling;
//! - is retried on UNAVAILABLE when the caller declared its method idempotent (gRPC's retry
//!   design: backoff with jitter, never past the deadline, never once the response started),
//!   at most `clients.<service>.max_attempts` attempts;
//! - forwards the W3C trace context (`traceparent`) and `x-request-id` of the call being served;
//! - carries a service token with only the scopes the caller declared, renewed before expiry;
//! - is counted in `crm_client_requests_total{target,method,code}` and timed in
//!   `crm_client_request_duration_seconds{target,method}`.
//!
//! Failures come back as gRPC statuses (transport errors as UNAVAILABLE), never as transport
//! errors, so metrics and retries see every outcome.

mod context;
mod identity;
mod observe;
mod resolve;
mod retry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt as _;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};
use tower::{BoxError, ServiceExt as _};
use tracing::Instrument as _;

pub use self::context::{CallContext, CallDeadline};
pub use self::observe::ClientBody;
pub use self::resolve::{DnsResolver, Loopback, Resolve};

use self::identity::ServiceIdentity;
use self::observe::{CallRecorder, code_of};
use self::resolve::{Resolution, Source};
use self::retry::RetryPolicy;
use crate::config::ClientConfig;
use crate::middleware::REQUEST_ID_HEADER;
use crate::server::ServiceContext;

/// Room for endpoint changes not yet taken up by the balancer.
const CHANGES_CAPACITY: usize = 64;

/// A balanced, deadline-aware, retrying, authenticated channel to one CRM Suite service. Cheap
/// to clone; clones share connections.
#[derive(Clone)]
pub struct ServiceClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

struct Shared {
    target: String,
    channel: Channel,
    resolution: watch::Receiver<Resolution>,
    identity: ServiceIdentity,
    timeout: Duration,
    retry: RetryPolicy,
}

/// How a [`ServiceClient`] is built; start with [`ServiceClient::builder`].
pub struct ServiceClientBuilder<'a> {
    ctx: &'a ServiceContext,
    target: String,
    caller: Option<String>,
    scopes: Vec<&'a str>,
    idempotent: Vec<&'a str>,
    resolver: Arc<dyn Resolve>,
}

impl std::fmt::Debug for ServiceClientBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClientBuilder")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl ServiceClient {
    /// A client of `target` (e.g. `customer`, a key of `clients.*`) whose token grants
    /// `scopes`, no method retried. Shorthand for [`ServiceClient::builder`].
    pub fn connect(ctx: &ServiceContext, target: &str, scopes: &[&str]) -> anyhow::Result<Self> {
        Self::builder(ctx, target).scopes(scopes).connect()
    }

    /// Starts building a client of `target`.
    pub fn builder<'a>(ctx: &'a ServiceContext, target: &str) -> ServiceClientBuilder<'a> {
        ServiceClientBuilder {
            ctx,
            target: target.to_string(),
            caller: None,
            scopes: Vec::new(),
            idempotent: Vec::new(),
            resolver: Arc::new(DnsResolver),
        }
    }
}

impl<'a> ServiceClientBuilder<'a> {
    /// The scopes the calling service needs, and the only ones its token carries.
    pub fn scopes(mut self, scopes: &[&'a str]) -> Self {
        self.scopes = scopes.to_vec();
        self
    }

    /// The token's subject: the calling service's name. Default `telemetry.service_name`.
    pub fn caller(mut self, caller: &str) -> Self {
        self.caller = Some(caller.to_string());
        self
    }

    /// Methods safe to send more than once, as a method name (`GetCustomer`) or a full one
    /// (`crm.customer.v1.CustomerService/GetCustomer`): reads, and writes the caller always
    /// sends with a `request_id`. Only unary-request methods: the request is kept for a retry.
    pub fn idempotent(mut self, methods: &[&'a str]) -> Self {
        self.idempotent = methods.to_vec();
        self
    }

    /// Resolves endpoint names with `resolver` instead of DNS.
    pub fn resolver(mut self, resolver: impl Resolve) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// Builds the client and starts following the target's addresses in the background (so
    /// it needs a tokio runtime). Fails when the target cannot be reached as configured.
    pub fn connect(self) -> anyhow::Result<ServiceClient> {
        let config = &self.ctx.config;
        let target = self.target;
        let client_config = config.clients.get(&target).cloned().unwrap_or_default();
        for scope in &self.scopes {
            anyhow::ensure!(
                !scope.is_empty() && !scope.contains(char::is_whitespace),
                "a client of {target} declares the scope {scope:?}: scopes are single words"
            );
        }
        let source = source_of(&target, &client_config, self.resolver, &self.ctx.loopback)?;
        let timeout = Duration::from_millis(client_config.timeout_ms);
        let (channel, changes) = Channel::balance_channel(CHANGES_CAPACITY);
        let (state, resolution) = watch::channel(Resolution::Pending);
        tokio::spawn(resolve::follow(
            target.clone(),
            source,
            move |addr| endpoint_for(addr, timeout),
            changes,
            state,
            self.ctx.shutdown.clone(),
        ));
        let caller = self
            .caller
            .unwrap_or_else(|| config.telemetry.service_name.clone());
        Ok(ServiceClient {
            shared: Arc::new(Shared {
                identity: ServiceIdentity::new(config, &caller, &self.scopes),
                retry: RetryPolicy::new(client_config.max_attempts, &self.idempotent),
                target,
                channel,
                resolution,
                timeout,
            }),
        })
    }
}

/// Where `target`'s instances are found: its configured endpoint, or this process.
fn source_of(
    target: &str,
    config: &ClientConfig,
    resolver: Arc<dyn Resolve>,
    loopback: &Loopback,
) -> anyhow::Result<Source> {
    let Some(endpoint) = config.endpoint.as_deref() else {
        anyhow::ensure!(
            loopback.serves(target) != Some(false),
            "clients.{target}.endpoint is not set and this process does not serve {target}"
        );
        return Ok(Source::Loopback(loopback.clone()));
    };
    let key = format!("clients.{target}.endpoint");
    let uri: Uri = endpoint
        .parse()
        .with_context(|| format!("{key}: not a URI"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "{key}: only http:// is supported (TLS between services belongs to the mesh)"
    );
    let host = uri
        .host()
        .with_context(|| format!("{key}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(Source::Name {
        host,
        port: uri.port_u16().unwrap_or(80),
        resolver,
        interval: Duration::from_secs(config.resolve_interval_secs),
    })
}

/// The endpoint of one resolved instance.
fn endpoint_for(addr: SocketAddr, connect_timeout: Duration) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("an http URI made of a socket address is valid")
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
}

impl tower::Service<Request<tonic::body::Body>> for ServiceClient {
    type Response = Response<ClientBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call waits for a ready endpoint itself, within its own deadline.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        // Read here, in the caller's task, where its call context and span are current.
        let context = CallContext::current().unwrap_or_default();
        let span = tracing::info_span!(
            "grpc.client",
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.target = %self.shared.target,
            rpc.method = %request.uri().path(),
        );
        let shared = self.shared.clone();
        let within = span.clone();
        Box::pin(async move { Ok(shared.send(request, context, &span).await) }.instrument(within))
    }
}

impl Shared {
    /// Sends one call (with its retries) and records its outcome.
    async fn send(
        &self,
        request: Request<tonic::body::Body>,
        context: CallContext,
        span: &tracing::Span,
    ) -> Response<ClientBody> {
        let mut recorder = CallRecorder::new(&self.target, request.uri().path());
        let response = self.attempts(request, &context, span).await;
        let recorder = match response.headers().get("grpc-status") {
            // Trailers-only: the outcome is known now.
            Some(code) => {
                recorder.finish(code_of(code));
                None
            }
            None => Some(recorder),
        };
        response.map(|body| ClientBody::new(body, recorder))
    }

    /// Tries `request` until it succeeds, fails in a way not worth retrying, runs out of
    /// attempts, or would outlive its deadline.
    async fn attempts(
        &self,
        request: Request<tonic::body::Body>,
        context: &CallContext,
        span: &tracing::Span,
    ) -> Response<tonic::body::Body> {
        let (mut parts, body) = request.into_parts();
        let own = crate::middleware::grpc_timeout(&parts.headers).unwrap_or(self.timeout);
        let budget = context.remaining().map_or(own, |left| left.min(own));
        if budget.is_zero() {
            return status_response(Status::deadline_exceeded(format!(
                "the deadline passed before {} was called",
                self.target
            )));
        }
        let deadline = Instant::now() + budget;
        self.decorate(&mut parts.headers, context, span);

        let retryable = self.retry.is_idempotent(parts.uri.path());
        if !retryable {
            return self
                .attempt(Request::from_parts(parts, body), deadline)
                .await;
        }
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(status) => return status_response(status),
        };
        let mut attempt = 1;
        loop {
            let request = Request::from_parts(parts.clone(), replay(&body));
            let response = self.attempt(request, deadline).await;
            let unavailable = response
                .headers()
                .get("grpc-status")
                .is_some_and(|code| code_of(code) == tonic::Code::Unavailable);
            if !unavailable || !self.retry.allows_attempt_after(attempt) {
                return response;
            }
            let wait = RetryPolicy::backoff(attempt);
            if Instant::now() + wait >= deadline {
                return response;
            }
            tracing::debug!(target = %self.target, attempt, ?wait, "UNAVAILABLE: retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Adds the service token, the request id and the trace context.
    fn decorate(&self, headers: &mut http::HeaderMap, context: &CallContext, span: &tracing::Span) {
        headers.insert(http::header::AUTHORIZATION, self.identity.bearer());
        if !headers.contains_key(REQUEST_ID_HEADER)
            && let Some(id) = context.request_id.as_deref()
            && let Ok(value) = HeaderValue::from_str(id)
        {
            headers.insert(REQUEST_ID_HEADER, value);
        }
        context.inject_trace(span, headers);
    }

    /// One attempt, answered by `deadline` (its remaining time sent as `grpc-timeout`).
    async fn attempt(
        &self,
        mut request: Request<tonic::body::Body>,
        deadline: Instant,
    ) -> Response<tonic::body::Body> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return status_response(Status::deadline_exceeded(format!(
                "the deadline passed while calling {}",
                self.target
            )));
        }
        request
            .headers_mut()
            .insert("grpc-timeout", grpc_timeout_value(remaining));
        let sent = async {
            self.ready_endpoints().await?;
            self.channel.clone().oneshot(request).await.map_err(|err| {
                Status::unavailable(format!("{} is unreachable: {err}", self.target))
            })
        };
        match tokio::time::timeout_at(deadline, sent).await {
            Ok(Ok(response)) => response,
            Ok(Err(status)) => status_response(status),
            Err(_) => status_response(Status::deadline_exceeded(format!(
                "{} did not answer within the deadline of {} ms",
                self.target,
                remaining.as_millis()
            ))),
        }
    }

    /// Waits until the target has been resolved; fails when it resolved to nothing.
    async fn ready_endpoints(&self) -> Result<(), Status> {
        let mut resolution = self.resolution.clone();
        let resolved = resolution
            .wait_for(|r| *r != Resolution::Pending)
            .await
            .map_err(|_| Status::unavailable(format!("{} is no longer followed", self.target)))?;
        match &*resolved {
            Resolution::Ready(0) => Err(Status::unavailable(format!(
                "no address of {} is known",
                self.target
            ))),
            Resolution::Misconfigured(why) => Err(Status::failed_precondition(why.clone())),
            _ => Ok(()),
        }
    }
}

/// A request body that sends `bytes` again.
fn replay(bytes: &Bytes) -> tonic::body::Body {
    tonic::body::Body::new(http_body_util::Full::new(bytes.clone()))
}

fn status_response(status: Status) -> Response<tonic::body::Body> {
    status.into_http()
}

/// `grpc-timeout` for `remaining`, in milliseconds (rounded up, so a short deadline is not
/// sent as zero), within the 8 digits gRPC allows.
fn grpc_timeout_value(remaining: Duration) -> HeaderValue {
    let millis = remaining.as_micros().div_ceil(1000).min(99_999_999);
    HeaderValue::try_from(format!("{millis}m")).expect("digits and a unit are a valid header")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_is_sent_in_milliseconds_rounded_up() {
        assert_eq!(grpc_timeout_value(Duration::from_millis(1500)), "1500m");
        assert_eq!(grpc_timeout_value(Duration::from_micros(10)), "1m");
        assert_eq!(
            grpc_timeout_value(Duration::from_secs(10 * 86_400)),
            "99999999m"
        );
    }

    #[test]
    fn an_endpoint_names_its_host_and_port() {
        let config = ClientConfig {
            endpoint: Some("http://crm-customer-headless:6000".into()),
            ..ClientConfig::default()
        };

        let source = source_of(
            "customer",
            &config,
            Arc::new(DnsResolver),
            &Loopback::default(),
        )
        .unwrap();

        let Source::Name { host, port, .. } = source else {
            panic!("a configured endpoint is resolved by name");
        };
        assert_eq!((host.as_str(), port), ("crm-customer-headless", 6000));
    }

    #[test]
    fn an_unset_endpoint_of_a_service_served_elsewhere_is_refused() {
        let loopback = Loopback::default();
        loopback.announce("127.0.0.1:1".parse().unwrap(), ["customer"]);

        let err = source_of(
            "sales",
            &ClientConfig::default(),
            Arc::new(DnsResolver),
            &loopback,
        )
        .err()
        .expect("sales is neither configured nor served here");

        assert!(err.to_string().contains("clients.sales.endpoint"), "{err}");
    }

    #[test]
    fn an_https_endpoint_is_refused_naming_its_key() {
        let config = ClientConfig {
            endpoint: Some("https://customer:443".into()),
            ..ClientConfig::default()
        };

        let err = source_of(
            "customer",
            &config,
            Arc::new(DnsResolver),
            &Loopback::default(),
        )
        .err()
        .expect("TLS is not built in");

        assert!(
            err.to_string().contains("clients.customer.endpoint"),
            "{err}"
        );
    }
}
