//! What an incoming call hands on to the calls it makes: its deadline, its request id and its
//! trace context.
//!
//! The server's middleware knows these (see [`crate::middleware`]); the handler runs in a task
//! of its own, which runs inside [`CallContext::scope`], so a [`ServiceClient`] called anywhere
//! in the handler reads them with [`CallContext::current`] without the handler passing anything.
//! A task the handler spawns does not inherit a task-local: wrap its future with
//! `CallContext::current().unwrap_or_default().scope(future)` to carry them over.
//!
//! [`ServiceClient`]: crate::client::ServiceClient

use std::future::Future;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use opentelemetry::propagation::Injector;
use opentelemetry::trace::TraceContextExt as _;
use tokio::time::Instant;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::middleware::{HeaderExtractor, RequestId};

tokio::task_local! {
    static CURRENT: CallContext;
}

/// The instant an incoming call's deadline passes, put in the request's extensions by the
/// deadline layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDeadline(pub Instant);

/// The deadline, request id and trace context of the call being served.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// When the incoming call's deadline passes; `None` outside a call (a background task).
    pub deadline: Option<Instant>,
    /// The incoming call's `x-request-id`.
    pub request_id: Option<String>,
    /// The trace context the caller sent (its `traceparent`), used for outgoing calls when no
    /// span of this process carries one (trace export off).
    pub trace: opentelemetry::Context,
}

impl CallContext {
    /// The context of an incoming request, from what the middleware put in its extensions and
    /// the trace context in its headers.
    pub fn of<B>(request: &Request<B>) -> Self {
        let trace = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        Self {
            deadline: request.extensions().get::<CallDeadline>().map(|d| d.0),
            request_id: request
                .extensions()
                .get::<RequestId>()
                .map(|id| id.0.clone()),
            trace,
        }
    }

    /// The context of the call this task serves, if it serves one.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` with this as the current context.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    /// How long until the deadline passes (zero once it has); `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// Writes the trace context of `span` into `headers` as `traceparent` (W3C, through the
    /// process's propagator), falling back to the caller's when `span` has none.
    pub(crate) fn inject_trace(&self, span: &tracing::Span, headers: &mut HeaderMap) {
        let local = span.context();
        let context = if local.span().span_context().is_valid() {
            &local
        } else {
            &self.trace
        };
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(context, &mut HeaderInjector(headers));
        });
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_context_is_current_inside_its_scope_only() {
        let context = CallContext {
            request_id: Some("r-1".into()),
            ..CallContext::default()
        };

        let inside = context
            .scope(async { CallContext::current().and_then(|c| c.request_id) })
            .await;

        assert_eq!(inside.as_deref(), Some("r-1"));
        assert!(CallContext::current().is_none());
    }

    #[tokio::test]
    async fn a_passed_deadline_leaves_nothing_remaining() {
        let context = CallContext {
            deadline: Some(Instant::now() - Duration::from_millis(5)),
            ..CallContext::default()
        };

        assert_eq!(context.remaining(), Some(Duration::ZERO));
        assert_eq!(CallContext::default().remaining(), None);
    }

    #[test]
    fn a_request_carries_its_deadline_and_request_id() {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut request = Request::new(());
        request.extensions_mut().insert(CallDeadline(deadline));
        request.extensions_mut().insert(RequestId("abc".into()));

        let context = CallContext::of(&request);

        assert_eq!(context.deadline, Some(deadline));
        assert_eq!(context.request_id.as_deref(), Some("abc"));
    }
}
