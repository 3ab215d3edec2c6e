//! Metrics of outgoing calls: `crm_client_requests_total{target,method,code}` and
//! `crm_client_request_duration_seconds{target,method}`, recorded once per call (not per
//! attempt) when its outcome is known.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tonic::Code;

pub(crate) use crate::middleware::code_of_header as code_of;

/// Records one outgoing call's outcome, at most once.
pub(crate) struct CallRecorder {
    target: String,
    method: String,
    start: Instant,
    finished: bool,
}

impl CallRecorder {
    pub(crate) fn new(target: &str, path: &str) -> Self {
        let method = path.rsplit('/').next().unwrap_or(path).to_string();
        Self {
            target: target.to_string(),
            method,
            start: Instant::now(),
            finished: false,
        }
    }

    pub(crate) fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        metrics::counter!(
            "crm_client_requests_total",
            "target" => self.target.clone(),
            "method" => self.method.clone(),
            "code" => format!("{code:?}")
        )
        .increment(1);
        metrics::histogram!(
            "crm_client_request_duration_seconds",
            "target" => self.target.clone(),
            "method" => self.method.clone()
        )
        .record(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for CallRecorder {
    /// A response dropped before its status arrived was abandoned by its caller.
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// The response body of an outgoing call, recording the call's status from its trailers.
    pub struct ClientBody {
        #[pin]
        inner: tonic::body::Body,
        recorder: Option<CallRecorder>,
    }
}

impl ClientBody {
    /// `inner`, whose status `recorder` records when it arrives (`None`: already recorded).
    pub(crate) fn new(inner: tonic::body::Body, recorder: Option<CallRecorder>) -> Self {
        Self { inner, recorder }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(recorder) = this.recorder.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        recorder.finish(trailers.get("grpc-status").map_or(Code::Unknown, code_of));
                    }
                }
                Poll::Ready(Some(Err(_))) => recorder.finish(Code::Unavailable),
                // A body ending without trailers is not a complete gRPC response.
                Poll::Ready(None) => recorder.finish(Code::Unknown),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
