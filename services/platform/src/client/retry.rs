//! When a failed call is tried again, after gRPC's retry design: only UNAVAILABLE (the call
//! was not processed, or processing it again is harmless), only methods the caller declared
//! idempotent, a bounded number of attempts, exponential backoff with full jitter, never past
//! the deadline, and never once the response has started (headers received: committed).

use std::time::Duration;

use rand::Rng as _;

/// The first retry waits up to this long.
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// Each further retry waits up to this many times longer…
const BACKOFF_MULTIPLIER: u32 = 2;
/// …but never longer than this.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Which calls of one client are retried, and how often.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    max_attempts: u32,
    idempotent: Vec<String>,
}

impl RetryPolicy {
    /// At most `max_attempts` attempts (the first included) of the methods in `idempotent`,
    /// each a method name (`GetCustomer`) or a full one (`crm.customer.v1.CustomerService/GetCustomer`).
    pub(crate) fn new(max_attempts: u32, idempotent: &[&str]) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            idempotent: idempotent
                .iter()
                .map(|m| format!("/{}", m.trim_start_matches('/')))
                .collect(),
        }
    }

    /// Whether calls to `path` (`/pkg.Service/Method`) may be sent more than once.
    pub(crate) fn is_idempotent(&self, path: &str) -> bool {
        self.max_attempts > 1 && self.idempotent.iter().any(|m| path.ends_with(m.as_str()))
    }

    /// Whether another attempt may follow attempt number `attempt` (1-based).
    pub(crate) fn allows_attempt_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// How long to wait before the retry that follows attempt number `attempt`: a random
    /// share of an exponentially growing bound, so callers that failed together spread out.
    pub(crate) fn backoff(attempt: u32) -> Duration {
        let bound = INITIAL_BACKOFF
            .saturating_mul(BACKOFF_MULTIPLIER.saturating_pow(attempt.saturating_sub(1)))
            .min(MAX_BACKOFF);
        let millis = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_declared_methods_are_idempotent() {
        let policy = RetryPolicy::new(3, &["GetCustomer", "grpc.health.v1.Health/Check"]);

        assert!(policy.is_idempotent("/crm.customer.v1.CustomerService/GetCustomer"));
        assert!(policy.is_idempotent("/grpc.health.v1.Health/Check"));
        assert!(!policy.is_idempotent("/crm.customer.v1.CustomerService/UpdateCustomer"));
        assert!(!policy.is_idempotent("/crm.customer.v1.CustomerService/BatchGetCustomer"));
    }

    #[test]
    fn one_attempt_means_no_retry_at_all() {
        let policy = RetryPolicy::new(1, &["GetCustomer"]);

        assert!(!policy.is_idempotent("/crm.customer.v1.CustomerService/GetCustomer"));
        assert!(!policy.allows_attempt_after(1));
    }

    #[test]
    fn attempts_are_bounded() {
        let policy = RetryPolicy::new(3, &[]);

        assert!(policy.allows_attempt_after(2));
        assert!(!policy.allows_attempt_after(3));
    }

    #[test]
    fn backoff_grows_exponentially_up_to_its_cap() {
        for _ in 0..100 {
            assert!(RetryPolicy::backoff(1) <= INITIAL_BACKOFF);
            assert!(RetryPolicy::backoff(3) <= INITIAL_BACKOFF * 4);
            assert!(RetryPolicy::backoff(30) <= MAX_BACKOFF);
        }
        let spread: std::collections::BTreeSet<Duration> =
            (0..100).map(|_| RetryPolicy::backoff(5)).collect();
        assert!(spread.len() > 1, "jitter spreads the waits");
    }
}
