//! Bounded waits: a test that never gets its answer fails instead of hanging the suite.

use std::time::Duration;

/// The longest a test waits for any one thing (an answer, a condition) before failing.
pub const WAIT: Duration = Duration::from_secs(20);

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Awaits `future`, failing the test after [`WAIT`]: for stream reads and other awaits that a
/// channel timeout does not cover.
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("no answer within the test's wait bound")
}

/// Polls `condition` until it holds, failing the test with `what` after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
