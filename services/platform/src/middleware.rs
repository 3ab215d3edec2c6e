//! Tower layers every CRM Suite server runs, outermost first: [`ObservabilityLayer`] (request
//! id, trace context, span, metrics), [`DeadlineLayer`] (`grpc-timeout` and the default
//! deadline; response streams ended at their deadline and at shutdown), [`AuthLayer`], load
//! shedding (tower's), [`RunToCompletionLayer`], then a global concurrency limit (tower's).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::Extractor;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Code;
use tower::{BoxError, Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::AuthPolicy;
use crate::client::{CallContext, CallDeadline};

/// Header carrying the request id, read from the caller or generated, and echoed back.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of the current request, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Adds request ids, trace context, a span per call and Prometheus metrics.
#[derive(Debug, Clone, Default)]
pub struct ObservabilityLayer;

impl<S> Layer<S> for ObservabilityLayer {
    type Service = Observability<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observability { inner }
    }
}

/// See [`ObservabilityLayer`].
#[derive(Debug, Clone)]
pub struct Observability<S> {
    inner: S,
}

/// Reads W3C trace context from request headers.
pub(crate) struct HeaderExtractor<'a>(pub(crate) &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Splits `/pkg.Service/Method` into (`pkg.Service`, `Method`).
fn split_path(path: &str) -> (String, String) {
    let trimmed = path.trim_start_matches('/');
    match trimmed.split_once('/') {
        Some((service, method)) => (service.to_string(), method.to_string()),
        None => (trimmed.to_string(), String::new()),
    }
}

fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// The gRPC code a middleware error (not a handler's Status) stands for.
fn code_of_error(err: &BoxError) -> Code {
    if err.is::<tower::load_shed::error::Overloaded>() {
        Code::ResourceExhausted
    } else {
        Code::Unknown
    }
}

/// The gRPC status code in a `grpc-status` header or trailer.
pub(crate) fn code_of_header(value: &HeaderValue) -> Code {
    value
        .to_str()
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .map(Code::from_i32)
        .unwrap_or(Code::Unknown)
}

/// Records one call's outcome once, whenever it becomes known: from the headers of a
/// trailers-only response, from the trailers of a body, or as CANCELLED when the body is dropped
/// before its trailers (the caller went away).
struct CallRecorder {
    service: String,
    method: String,
    start: Instant,
    span: tracing::Span,
    finished: bool,
}

impl CallRecorder {
    fn new(service: String, method: String, span: tracing::Span) -> Self {
        metrics::gauge!("crm_grpc_in_flight_requests", "service" => service.clone()).increment(1.0);
        Self {
            service,
            method,
            start: Instant::now(),
            span,
            finished: false,
        }
    }

    fn finish(&mut self, code: Code) {
        if self.finished {
            return;
        }
        self.finished = true;
        let elapsed = self.start.elapsed();
        let code_name = format!("{code:?}");
        metrics::counter!(
            "crm_grpc_requests_total",
            "service" => self.service.clone(),
            "method" => self.method.clone(),
            "code" => code_name.clone()
        )
        .increment(1);
        metrics::histogram!(
            "crm_grpc_request_duration_seconds",
            "service" => self.service.clone(),
            "method" => self.method.clone()
        )
        .record(elapsed.as_secs_f64());
        metrics::gauge!("crm_grpc_in_flight_requests", "service" => self.service.clone())
            .decrement(1.0);
        self.span.record("rpc.grpc.status_code", code as i32);
        let _entered = self.span.enter();
        let millis = elapsed.as_secs_f64() * 1000.0;
        match code {
            Code::Ok => tracing::debug!(code = %code_name, millis, "call finished"),
            Code::Internal | Code::DataLoss => {
                tracing::error!(code = %code_name, millis, "call failed")
            }
            // Unknown here is the transport's word for a stream the caller reset.
            Code::Unknown => tracing::warn!(code = %code_name, millis, "call ended abnormally"),
            _ => tracing::info!(code = %code_name, millis, "call finished"),
        }
    }
}

impl Drop for CallRecorder {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

impl<S, ResBody> Service<Request<tonic::body::Body>> for Observability<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<tonic::body::Body>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        let request_id = request_id_of(request.headers());
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            request.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        request
            .extensions_mut()
            .insert(RequestId(request_id.clone()));
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let span = tracing::info_span!(
            "grpc.call",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            request_id = %request_id,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let _ = span.set_parent(parent);
        let mut recorder = CallRecorder::new(service, method, span.clone());

        // Take the service that was driven to readiness, leaving a fresh clone behind (tower's
        // documented pattern for services called from a spawned future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Called now, not when the returned future is first polled: tonic starts its own
        // `grpc-timeout` timer right after this returns, and the deadline layer's must be the
        // earlier of the two (see `DeadlineLayer`).
        let call = span.in_scope(|| inner.call(request));
        Box::pin(
            async move {
                match call.await {
                    Ok(mut response) => {
                        if let Some(code) = response.headers().get("grpc-status") {
                            recorder.finish(code_of_header(code));
                        }
                        if let Ok(value) = HeaderValue::from_str(&request_id) {
                            response.headers_mut().insert(REQUEST_ID_HEADER, value);
                        }
                        Ok(response.map(|inner| ObservedBody {
                            inner,
                            recorder: Some(recorder),
                        }))
                    }
                    Err(err) => {
                        let err: BoxError = err.into();
                        recorder.finish(code_of_error(&err));
                        Err(err)
                    }
                }
            }
            .instrument(span),
        )
    }
}

pin_project_lite::pin_project! {
    /// A response body that reports the call's gRPC status from its trailers.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        recorder: Option<CallRecorder>,
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(recorder) = this.recorder.as_mut()
                {
                    let code = trailers
                        .get("grpc-status")
                        .map(code_of_header)
                        .unwrap_or(Code::Unknown);
                    recorder.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(recorder) = this.recorder.as_mut() {
                    recorder.finish(Code::Internal);
                }
            }
            Poll::Ready(None) => {
                // A body that ends without trailers ended with the headers' status, already
                // recorded.
                if let Some(recorder) = this.recorder.as_mut() {
                    recorder.finish(Code::Ok);
                }
            }
            Poll::Pending => {}
        }
        polled.map(|frame| frame.map(|result| result.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The deadline a caller asked for in `grpc-timeout` (`None` when absent or malformed).
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let unit_at = value.len().checked_sub(1)?;
    let (amount, unit) = value.split_at(unit_at);
    // The gRPC spec allows at most 8 digits, which also rules out overflow below.
    if amount.is_empty() || amount.len() > 8 {
        return None;
    }
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Answers DEADLINE_EXCEEDED when a call outlives the shorter of the caller's `grpc-timeout`
/// and the server's default deadline, and bounds response streams:
///
/// - A response (a unary call's answer, a stream's start) not ready by that deadline is
///   DEADLINE_EXCEEDED.
/// - A response stream still open at the caller's own `grpc-timeout` ends with
///   DEADLINE_EXCEEDED. The default deadline does not bound streams: a Watch without one stays
///   open as long as its caller reads it.
/// - With [`DeadlineLayer::ending_streams_at`], a response stream that is waiting for its next
///   message when the server shuts down ends with UNAVAILABLE ("resume from your last token"),
///   so the drain does not wait out its bound for streams that would never end by themselves,
///   and callers reconnect to another instance. Unary answers are never cut: their body is
///   ready as soon as it exists. A stream's messages already sent stay sent; what a handler was
///   doing when its stream ended runs to completion ([`RunToCompletionLayer`]), its answer
///   dropped.
///
/// tonic's own timeout (`Server::timeout`, and its reading of `grpc-timeout`) wraps every layer
/// and reports a timeout as CANCELLED, so the server must not set one. tonic still starts a
/// timer from `grpc-timeout` when the caller sends one, right after calling the stack; this
/// layer's timer is started inside that call (every layer above calls its inner service
/// synchronously), so it is never later than tonic's, and tonic polls the inner future before
/// its timer, so when both fire together this layer's answer wins.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    default: Duration,
    shutdown: Option<CancellationToken>,
}

impl DeadlineLayer {
    /// A layer applying `default` to calls that send no `grpc-timeout` (and capping those that
    /// send a longer one).
    pub fn new(default: Duration) -> Self {
        Self {
            default,
            shutdown: None,
        }
    }

    /// Also ends waiting response streams with UNAVAILABLE once `shutdown` is cancelled.
    pub fn ending_streams_at(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = Some(shutdown);
        self
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            default: self.default,
            shutdown: self.shutdown.clone(),
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    default: Duration,
    shutdown: Option<CancellationToken>,
}

/// The status a stream still open at its caller's deadline ends with.
fn deadline_exceeded(budget: Duration) -> tonic::Status {
    tonic::Status::deadline_exceeded(format!(
        "the call's deadline of {} ms passed",
        budget.as_millis()
    ))
}

/// The status a stream still open at shutdown ends with.
fn shutting_down() -> tonic::Status {
    tonic::Status::unavailable("the server is shutting down; resume from your last token")
}

impl<S, ResBody> Service<Request<tonic::body::Body>> for Deadline<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Default + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<BoundedBody<ResBody>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        // When the response stream is ended here, the request stream is ended too, so that a
        // handler reading a client stream stops waiting for rows that will never be answered
        // and the connection can close.
        let cut = CancellationToken::new();
        let mut request = request.map(|inner| {
            tonic::body::Body::new(CutBody {
                inner,
                cut: Box::pin(cut.clone().cancelled_owned()),
                ended: false,
            })
        });
        let asked = grpc_timeout(request.headers());
        let budget = asked.map_or(self.default, |asked| asked.min(self.default));
        // Started here, in `call`, so it runs from the same instant as tonic's (see above).
        let mut expired = Box::pin(tokio::time::sleep(budget));
        let stream_deadline = asked.map(|asked| Box::pin(tokio::time::sleep(asked)));
        // The handler's outgoing calls get what is left of it (see `crate::client`).
        request
            .extensions_mut()
            .insert(CallDeadline(expired.deadline()));
        let call = self.inner.call(request);
        let shutdown = self.shutdown.clone();
        Box::pin(async move {
            tokio::select! {
                biased;
                result = call => {
                    let response = result.map_err(Into::into)?;
                    Ok(response.map(|inner| BoundedBody {
                        inner,
                        deadline: stream_deadline.zip(asked),
                        shutdown: shutdown.map(|token| Box::pin(token.cancelled_owned())),
                        cut,
                        ended: false,
                    }))
                }
                () = &mut expired => Ok(deadline_exceeded(budget).into_http()),
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends with DEADLINE_EXCEEDED at the caller's deadline and with
    /// UNAVAILABLE at shutdown while it waits for its next message (see [`DeadlineLayer`]).
    pub struct BoundedBody<B> {
        #[pin]
        inner: B,
        deadline: Option<(Pin<Box<Sleep>>, Duration)>,
        shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        // Cancelled when this body is ended early: the request stream ends too.
        cut: CancellationToken,
        ended: bool,
    }
}

impl<B: Default> Default for BoundedBody<B> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            deadline: None,
            shutdown: None,
            cut: CancellationToken::new(),
            ended: false,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails with UNAVAILABLE, while it waits for the caller's next
    /// message, once the call's response was ended early (see [`DeadlineLayer`]).
    struct CutBody {
        #[pin]
        inner: tonic::body::Body,
        cut: Pin<Box<WaitForCancellationFutureOwned>>,
        ended: bool,
    }
}

impl Body for CutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Pending => {}
            ready => return ready.map(|frame| frame.map(|result| result.map_err(Into::into))),
        }
        if this.cut.as_mut().poll(cx).is_ready() {
            *this.ended = true;
            // tonic hands a `Status` found in a body error to the handler as it is.
            let status = tonic::Status::cancelled(
                "the call's response stream was ended (its deadline passed, or the server is \
                 shutting down)",
            );
            return Poll::Ready(Some(Err(Box::new(status))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The trailers that end a stream with `status`.
fn trailers_of(status: &tonic::Status) -> Frame<Bytes> {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only a status with undecodable details fails here; the code alone still says it.
        trailers.insert("grpc-status", HeaderValue::from(status.code() as i32));
    }
    Frame::trailers(trailers)
}

impl<B> Body for BoundedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        // The deadline first: a stream that always has a message ready must still end on time.
        if let Some((expired, budget)) = this.deadline.as_mut()
            && expired.as_mut().poll(cx).is_ready()
        {
            *this.ended = true;
            this.cut.cancel();
            return Poll::Ready(Some(Ok(trailers_of(&deadline_exceeded(*budget)))));
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.ended = frame.is_trailers();
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => {
                *this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        // Only a body waiting for its next message is ended at shutdown: whole messages go out,
        // and a unary answer (ready as soon as it exists) is never cut.
        if let Some(shutdown) = this.shutdown.as_mut()
            && shutdown.as_mut().poll(cx).is_ready()
        {
            *this.ended = true;
            this.cut.cancel();
            return Poll::Ready(Some(Ok(trailers_of(&shutting_down()))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

/// Runs each call's handler in a task of its own, so that a caller going away (a reset stream,
/// a passed deadline) cannot drop the handler halfway through: its work finishes and its answer
/// is dropped. The task runs in the call's [`CallContext`], so the handler's outgoing calls
/// carry its deadline, request id and trace context.
///
/// A handler dropped at an `.await` can leave a pooled connection inside a transaction: sqlx
/// (0.8) counts a transaction only once PostgreSQL has answered `BEGIN`, so a future dropped
/// while that answer is on its way returns the connection to the pool still in the transaction
/// ("idle in transaction"; the next `BEGIN` on it warns "there is already a transaction in
/// progress"). Dropped while waiting for `COMMIT`'s answer, the transaction's guard sends a
/// `ROLLBACK` after it ("there is no transaction in progress").
#[derive(Debug, Clone, Default)]
pub struct RunToCompletionLayer;

impl<S> Layer<S> for RunToCompletionLayer {
    type Service = RunToCompletion<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RunToCompletion { inner }
    }
}

/// See [`RunToCompletionLayer`].
#[derive(Debug, Clone)]
pub struct RunToCompletion<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RunToCompletion<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let context = CallContext::of(&request);
        let call = inner.call(request);
        let handler = tokio::spawn(
            context
                .scope(async move { call.await.map_err(Into::into) })
                .in_current_span(),
        );
        Box::pin(async move {
            match handler.await {
                Ok(result) => result,
                Err(err) => {
                    tracing::error!(error = %err, "call handler panicked");
                    Ok(tonic::Status::internal("internal error").into_http())
                }
            }
        })
    }
}

/// Rejects calls without a valid token or the method's scope, and hands the [`Principal`]
/// (crate::auth::Principal) to the handler through the request's extensions.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    policy: AuthPolicy,
}

impl AuthLayer {
    /// A layer enforcing `policy`.
    pub fn new(policy: AuthPolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    policy: AuthPolicy,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.policy.authorize(request.uri().path(), authorization) {
            Ok(principal) => {
                if let Some(principal) = principal {
                    tracing::Span::current().record("enduser.id", principal.subject.as_str());
                    request.extensions_mut().insert(principal);
                }
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move { inner.call(request).await.map_err(Into::into) })
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::ServiceExt;

    /// A call of the customer service's `method`, with `headers`.
    fn call_of(
        method: &str,
        headers: &[(&'static str, &'static str)],
    ) -> Request<tonic::body::Body> {
        let mut request = Request::builder()
            .uri(format!("/crm.customer.v1.CustomerService/{method}"))
            .body(tonic::body::Body::default())
            .unwrap();
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, HeaderValue::from_static(value));
        }
        request
    }

    /// A handler that never answers.
    fn never_answers() -> impl Service<
        Request<tonic::body::Body>,
        Response = Response<tonic::body::Body>,
        Error = BoxError,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|_: Request<tonic::body::Body>| {
            futures::future::pending::<Result<Response<tonic::body::Body>, BoxError>>()
        })
    }

    /// A response body that never ends.
    struct EndlessBody;

    impl Body for EndlessBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    /// The gRPC status of a trailers-only response.
    fn status_of<B>(response: &Response<B>) -> Option<Code> {
        response.headers().get("grpc-status").map(code_of_header)
    }

    /// `code count` for each `crm_grpc_requests_total` series in Prometheus text.
    fn recorded_codes(rendered: &str) -> Vec<String> {
        rendered
            .lines()
            .filter(|line| line.starts_with("crm_grpc_requests_total{"))
            .map(|line| {
                let code = line
                    .split("code=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .unwrap_or("?");
                let count = line.rsplit(' ').next().unwrap_or("?");
                format!("{code} {count}")
            })
            .collect()
    }

    #[tokio::test]
    async fn a_call_abandoned_before_its_answer_is_recorded_as_cancelled() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let _recording = metrics::set_default_local_recorder(&recorder);
        let mut service = ObservabilityLayer.layer(never_answers());
        let mut call = service
            .ready()
            .await
            .unwrap()
            .call(call_of("GetCustomer", &[]));
        assert!(
            (&mut call).now_or_never().is_none(),
            "the handler is still working"
        );

        drop(call);

        assert_eq!(recorded_codes(&metrics.render()), ["Cancelled 1"]);
    }

    #[tokio::test]
    async fn a_response_abandoned_before_its_trailers_is_recorded_as_cancelled() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let _recording = metrics::set_default_local_recorder(&recorder);
        let streams = tower::service_fn(|_: Request<tonic::body::Body>| async {
            Ok::<_, BoxError>(Response::new(EndlessBody))
        });
        let response = ObservabilityLayer
            .layer(streams)
            .oneshot(call_of("ExportCustomers", &[]))
            .await
            .unwrap();
        assert_eq!(recorded_codes(&metrics.render()), Vec::<String>::new());

        drop(response);

        assert_eq!(recorded_codes(&metrics.render()), ["Cancelled 1"]);
    }

    #[tokio::test]
    async fn a_call_past_its_grpc_timeout_answers_and_is_recorded_as_deadline_exceeded() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let _recording = metrics::set_default_local_recorder(&recorder);
        let service = tower::ServiceBuilder::new()
            .layer(ObservabilityLayer)
            .layer(DeadlineLayer::new(Duration::from_secs(600)))
            .service(never_answers());

        let response = tokio::time::timeout(
            Duration::from_secs(10),
            service.oneshot(call_of("UpdateCustomer", &[("grpc-timeout", "20m")])),
        )
        .await
        .expect("answered at the caller's deadline, not the server's default")
        .unwrap();

        assert_eq!(status_of(&response), Some(Code::DeadlineExceeded));
        assert_eq!(recorded_codes(&metrics.render()), ["DeadlineExceeded 1"]);
    }

    #[tokio::test]
    async fn a_call_sending_no_grpc_timeout_gets_the_default_deadline() {
        let service = DeadlineLayer::new(Duration::from_millis(20)).layer(never_answers());

        let response = tokio::time::timeout(
            Duration::from_secs(10),
            service.oneshot(call_of("UpdateCustomer", &[])),
        )
        .await
        .expect("answered at the default deadline")
        .unwrap();

        assert_eq!(status_of(&response), Some(Code::DeadlineExceeded));
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_malformed_ones_are_ignored() {
        for (value, expected) in [
            ("20m", Some(Duration::from_millis(20))),
            ("3S", Some(Duration::from_secs(3))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("250u", Some(Duration::from_micros(250))),
            ("99999999n", Some(Duration::from_nanos(99_999_999))),
            ("123456789m", None),
            ("m", None),
            ("", None),
            ("10x", None),
            ("-5S", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_static(value));
            assert_eq!(grpc_timeout(&headers), expected, "grpc-timeout: {value:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn a_handler_whose_caller_went_away_still_runs_to_completion() {
        let (gate, done) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(AtomicBool::new(false)),
        );
        let handler = tower::service_fn({
            let (gate, done) = (gate.clone(), done.clone());
            move |_: Request<tonic::body::Body>| {
                let (gate, done) = (gate.clone(), done.clone());
                async move {
                    gate.notified().await;
                    done.store(true, Ordering::SeqCst);
                    Ok::<_, BoxError>(Response::new(tonic::body::Body::default()))
                }
            }
        });
        let mut service = RunToCompletionLayer.layer(handler);
        let mut call = service
            .ready()
            .await
            .unwrap()
            .call(call_of("UpdateCustomer", &[]));
        assert!(
            (&mut call).now_or_never().is_none(),
            "the handler is waiting"
        );

        drop(call);
        gate.notify_one();

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done.load(Ordering::SeqCst) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the handler was dropped with its caller"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_handler_that_panics_answers_internal() {
        let panics = tower::service_fn(|_: Request<tonic::body::Body>| async {
            if true {
                panic!("a bug in a handler");
            }
            Ok::<_, BoxError>(Response::new(tonic::body::Body::default()))
        });

        let response = RunToCompletionLayer
            .layer(panics)
            .oneshot(call_of("GetCustomer", &[]))
            .await
            .unwrap();

        assert_eq!(status_of(&response), Some(Code::Internal));
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/crm.customer.v1.CustomerService/GetCustomer"),
            (
                "crm.customer.v1.CustomerService".into(),
                "GetCustomer".into()
            )
        );
    }

    #[test]
    fn a_caller_request_id_is_kept_and_a_missing_one_generated() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id_of(&headers), "abc-123");
        assert_eq!(request_id_of(&HeaderMap::new()).len(), 36);
    }

    #[test]
    fn shed_load_counts_as_resource_exhausted() {
        let err: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
        assert_eq!(code_of_error(&err), Code::ResourceExhausted);
    }
}
