//! A calling service's identity: a service token carrying only the scopes the caller declared,
//! minted with the process's signing key and renewed well before it expires.

use std::sync::Mutex;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::auth::mint_service_token;
use crate::config::Config;

/// How long a minted token is valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// A token is replaced once less than this is left, so one in flight never expires on the way
/// (the verifier's clock-skew leeway is not counted on).
const RENEW_BEFORE: Duration = Duration::from_secs(120);

/// Mints and caches the bearer token a client sends.
pub(crate) struct ServiceIdentity {
    secret: String,
    issuer: String,
    audience: String,
    subject: String,
    scopes: Vec<String>,
    current: Mutex<Option<(HeaderValue, Instant)>>,
}

impl ServiceIdentity {
    /// The identity of `subject` holding exactly `scopes`, signed as `config` says.
    pub(crate) fn new(config: &Config, subject: &str, scopes: &[&str]) -> Self {
        Self {
            secret: config.jwt_secret().0.to_string(),
            issuer: config.auth.issuer.clone(),
            audience: config.auth.audience.clone(),
            subject: subject.to_string(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            current: Mutex::new(None),
        }
    }

    /// The `authorization` header value to send now.
    pub(crate) fn bearer(&self) -> HeaderValue {
        let now = Instant::now();
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((header, expires)) = current.as_ref()
            && !needs_renewal(*expires, now)
        {
            return header.clone();
        }
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        let token = mint_service_token(
            &self.secret,
            &self.issuer,
            &self.audience,
            &self.subject,
            &scopes,
            TOKEN_LIFETIME,
        );
        let mut header = HeaderValue::try_from(format!("Bearer {token}"))
            .expect("a JWT is base64url and dots, valid in a header");
        header.set_sensitive(true);
        *current = Some((header.clone(), now + TOKEN_LIFETIME));
        header
    }
}

/// Whether a token expiring at `expires` must be replaced at `now`.
fn needs_renewal(expires: Instant, now: Instant) -> bool {
    expires.saturating_duration_since(now) < RENEW_BEFORE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_renewed_before_it_expires() {
        let now = Instant::now();

        assert!(!needs_renewal(now + TOKEN_LIFETIME, now));
        assert!(needs_renewal(
            now + RENEW_BEFORE - Duration::from_secs(1),
            now
        ));
        assert!(needs_renewal(now, now + Duration::from_secs(1)));
    }

    #[test]
    fn the_cached_token_is_reused_while_fresh() {
        let config = Config::load_from(None, Vec::new()).unwrap();
        let identity = ServiceIdentity::new(&config, "sales", &["customer.read"]);

        let first = identity.bearer();

        assert_eq!(identity.bearer(), first);
        assert!(first.is_sensitive());
    }

    #[test]
    fn a_token_close_to_expiry_is_replaced() {
        let config = Config::load_from(None, Vec::new()).unwrap();
        let identity = ServiceIdentity::new(&config, "sales", &["customer.read"]);
        let stale = HeaderValue::from_static("Bearer stale");
        *identity.current.lock().unwrap() =
            Some((stale.clone(), Instant::now() + RENEW_BEFORE / 2));

        let renewed = identity.bearer();

        assert_ne!(renewed, stale);
        assert_eq!(identity.bearer(), renewed);
    }
}
