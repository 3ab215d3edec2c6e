//! Bearer-token authentication and per-method scopes.
//!
//! Tokens are HS256 JWTs with `sub`, `iss`, `aud`, `exp` and a space-separated `scope` claim (as
//! in OAuth 2.0), and optionally `principal_kind: "service"` for callers that are services rather
//! than people; `exp`, `nbf` and `iat` are checked with [`CLOCK_SKEW_LEEWAY_SECS`] of skew. Each
//! method's scope is declared in its contract (the `(crm.common.v1.auth)` option, read by
//! [`ContractScopes`]); health and reflection stay open so probes and `grpcurl list` work
//! without a token.

mod contract;

pub use contract::{
    AUTH_OPTION_FIELD, ContractScopes, SCOPE_CHECKED_IN_HANDLER, ScopeError, contract_services,
};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crm_proto::crm::common::v1::{Principal as CommonPrincipal, PrincipalKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::error::ApiError;

/// Clock skew allowed between the token's issuer and this server, for `exp`, `nbf` and `iat`.
pub const CLOCK_SKEW_LEEWAY_SECS: u64 = 30;

/// Path prefixes served without a token.
const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection."];

/// The claims of a CRM Suite token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Who the caller is (a service or a person).
    pub sub: String,
    /// Who issued the token.
    pub iss: String,
    /// Who the token is for.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issue time, seconds since the epoch.
    pub iat: u64,
    /// Granted scopes, space-separated, e.g. "customer.read customer.write".
    #[serde(default)]
    pub scope: String,
    /// `"service"` for a CRM Suite service or another internal caller; absent (or anything
    /// else) for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_kind: Option<String>,
}

/// The `principal_kind` claim value of service tokens.
pub const SERVICE_PRINCIPAL_KIND: &str = "service";

/// The authenticated caller of a request, available to handlers through the request's
/// extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject.
    pub subject: String,
    /// The scopes the token grants.
    pub scopes: BTreeSet<String>,
    /// Whether the token is a service's (claim `principal_kind: "service"`) or a person's.
    pub kind: PrincipalKind,
}

impl Principal {
    /// The principal of a request, or "anonymous" for the open methods.
    pub fn of<T>(request: &tonic::Request<T>) -> String {
        request
            .extensions()
            .get::<Principal>()
            .map(|p| p.subject.clone())
            .unwrap_or_else(|| "anonymous".to_string())
    }

    /// The caller of a request as a `crm.common.v1.Principal` (USER or SERVICE, id = `sub`), for
    /// audit fields and change events; a USER "anonymous" for the open methods.
    pub fn caller_of<T>(request: &tonic::Request<T>) -> CommonPrincipal {
        request
            .extensions()
            .get::<Principal>()
            .map(Principal::principal)
            .unwrap_or_else(|| CommonPrincipal {
                kind: PrincipalKind::User as i32,
                id: "anonymous".to_string(),
            })
    }

    /// This caller as a `crm.common.v1.Principal`.
    pub fn principal(&self) -> CommonPrincipal {
        CommonPrincipal {
            kind: self.kind as i32,
            id: self.subject.clone(),
        }
    }
}

/// Verifies tokens and decides whether a call may proceed.
#[derive(Clone)]
pub struct AuthPolicy {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
    scopes: Arc<ContractScopes>,
}

impl std::fmt::Debug for AuthPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthPolicy")
            .field("methods", &self.scopes.len())
            .finish_non_exhaustive()
    }
}

impl AuthPolicy {
    /// A policy for the given secret, issuer, audience and the served methods' scopes.
    pub fn new(secret: &str, issuer: &str, audience: &str, scopes: ContractScopes) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // A token used before its `nbf` is refused (jsonwebtoken skips that check by default);
        // the leeway covers clock skew for `nbf` as for `exp`.
        validation.validate_nbf = true;
        validation.leeway = CLOCK_SKEW_LEEWAY_SECS;
        Self {
            key: Arc::new(DecodingKey::from_secret(secret.as_bytes())),
            validation: Arc::new(validation),
            scopes: Arc::new(scopes),
        }
    }

    /// Whether `path` is served without a token.
    pub fn is_open(path: &str) -> bool {
        OPEN_PREFIXES.iter().any(|p| path.starts_with(p))
    }

    /// Checks the `authorization` header value for a call to `path`.
    ///
    /// Returns `Ok(None)` for open methods, the principal when the token is valid and grants
    /// the method's scope (or, for a service in [`SCOPE_CHECKED_IN_HANDLER`], when the token is
    /// valid), and UNAUTHENTICATED / PERMISSION_DENIED otherwise (also for a method that is not
    /// one of the served ones).
    pub fn authorize(
        &self,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<Option<Principal>, Status> {
        if Self::is_open(path) {
            return Ok(None);
        }
        let header = authorization.ok_or_else(|| {
            Status::unauthenticated("missing bearer token: send `authorization: Bearer <token>`")
        })?;
        // The scheme is case-insensitive (RFC 7235 §2.1, which RFC 6750 builds on).
        let token = header
            .trim()
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated("the authorization header must be `Bearer <token>`")
            })?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "the token's signature is not valid",
                    ErrorKind::InvalidIssuer => "the token has the wrong issuer",
                    ErrorKind::InvalidAudience => "the token has the wrong audience",
                    _ => "the token is malformed",
                };
                Status::unauthenticated(why)
            })?
            .claims;
        // jsonwebtoken does not look at `iat`. A token issued later than now (beyond the skew
        // allowance) comes from a wrong clock or a forger: it is refused as `nbf` would be.
        if claims.iat > unix_now().saturating_add(self.validation.leeway) {
            return Err(Status::unauthenticated(
                "the token was issued in the future (iat): check the issuer's clock",
            ));
        }
        let kind = match claims.principal_kind.as_deref() {
            Some(SERVICE_PRINCIPAL_KIND) => PrincipalKind::Service,
            _ => PrincipalKind::User,
        };
        let principal = Principal {
            kind,
            subject: claims.sub,
            scopes: claims
                .scope
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        };
        if is_scope_checked_in_handler(path) {
            return Ok(Some(principal));
        }
        // A method without a known scope is refused: a route added outside the served
        // contracts must be closed, not open to every authenticated caller.
        let Some(required) = self.scopes.scope_of(path) else {
            return Err(Status::permission_denied(format!(
                "the method {path} is not open to any scope"
            )));
        };
        if !principal.scopes.contains(required) {
            return Err(Status::permission_denied(format!(
                "this method needs the scope `{required}`"
            )));
        }
        Ok(Some(principal))
    }
}

/// Seconds since the Unix epoch (0 for a clock before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Whether `path` (`/package.Service/Method`) belongs to a service whose handler checks scopes.
fn is_scope_checked_in_handler(path: &str) -> bool {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    SCOPE_CHECKED_IN_HANDLER.contains(&service)
}

/// Checks, inside a handler, that the call's authenticated caller holds `scope`; for the
/// services in [`SCOPE_CHECKED_IN_HANDLER`], whose scope depends on the resource named (e.g. an
/// operation checks `<service>.read` of the service that owns it). Returns the caller.
///
/// UNAUTHENTICATED when the request carries no principal (the auth layer did not run, or the
/// method is open); PERMISSION_DENIED naming `scope` when the token lacks it.
pub fn require_scope<'r, T>(
    request: &'r tonic::Request<T>,
    scope: &str,
) -> Result<&'r Principal, ApiError> {
    let principal =
        request
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| ApiError::Unauthenticated {
                message: "missing bearer token: send `authorization: Bearer <token>`".to_string(),
            })?;
    if principal.scopes.contains(scope) {
        Ok(principal)
    } else {
        Err(ApiError::PermissionDenied {
            message: format!("this method needs the scope `{scope}`"),
        })
    }
}

/// Mints a person's token. Used by `crm token` for development and by tests; production tokens
/// come from the organisation's identity provider with the same claims.
pub fn mint_token(
    secret: &str,
    issuer: &str,
    audience: &str,
    subject: &str,
    scopes: &[&str],
    valid_for: Duration,
) -> String {
    mint(secret, issuer, audience, subject, scopes, valid_for, None)
}

/// Mints a service's token: as [`mint_token`], with the claim `principal_kind: "service"`.
pub fn mint_service_token(
    secret: &str,
    issuer: &str,
    audience: &str,
    subject: &str,
    scopes: &[&str],
    valid_for: Duration,
) -> String {
    let kind = Some(SERVICE_PRINCIPAL_KIND.to_string());
    mint(secret, issuer, audience, subject, scopes, valid_for, kind)
}

fn mint(
    secret: &str,
    issuer: &str,
    audience: &str,
    subject: &str,
    scopes: &[&str],
    valid_for: Duration,
    principal_kind: Option<String>,
) -> String {
    let now = unix_now();
    let claims = Claims {
        sub: subject.to_string(),
        iss: issuer.to_string(),
        aud: audience.to_string(),
        iat: now,
        exp: now + valid_for.as_secs(),
        scope: scopes.join(" "),
        principal_kind,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding of plain claims cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const PATH: &str = "/crm.customer.v1.CustomerService/GetCustomer";

    fn policy() -> AuthPolicy {
        let scopes = ContractScopes::for_services(&["crm.customer.v1.CustomerService"]).unwrap();
        AuthPolicy::new(SECRET, "crm-suite", "crm-suite", scopes)
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A `Bearer` header for arbitrary claims signed with the policy's key, for tokens
    /// `mint_token` cannot make (other issuer, audience, `nbf`).
    fn bearer_with_claims(claims: &serde_json::Value) -> String {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        format!("Bearer {token}")
    }

    /// Valid claims for the policy, with `changes` merged over them.
    fn claims_with(changes: serde_json::Value) -> serde_json::Value {
        let mut claims = serde_json::json!({
            "sub": "tester",
            "iss": "crm-suite",
            "aud": "crm-suite",
            "iat": now(),
            "exp": now() + 600,
            "scope": "customer.read",
        });
        for (key, value) in changes.as_object().unwrap() {
            claims[key] = value.clone();
        }
        claims
    }

    fn bearer(scopes: &[&str], valid_for: Duration) -> String {
        let token = mint_token(
            SECRET,
            "crm-suite",
            "crm-suite",
            "tester",
            scopes,
            valid_for,
        );
        format!("Bearer {token}")
    }

    #[test]
    fn health_needs_no_token() {
        assert_eq!(
            policy()
                .authorize("/grpc.health.v1.Health/Check", None)
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_missing_token_is_unauthenticated() {
        let err = policy().authorize(PATH, None).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn the_right_scope_yields_the_principal() {
        let header = bearer(&["customer.read"], Duration::from_secs(60));
        let principal = policy().authorize(PATH, Some(&header)).unwrap().unwrap();
        assert_eq!(principal.subject, "tester");
    }

    #[test]
    fn a_missing_scope_is_permission_denied() {
        let header = bearer(&["sales.read"], Duration::from_secs(60));
        let err = policy().authorize(PATH, Some(&header)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("customer.read"));
    }

    #[test]
    fn an_expired_token_is_unauthenticated() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = Claims {
            sub: "tester".into(),
            iss: "crm-suite".into(),
            aud: "crm-suite".into(),
            iat: now - 7200,
            exp: now - 3600,
            scope: "customer.read".into(),
            principal_kind: None,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let err = policy()
            .authorize(PATH, Some(&format!("Bearer {token}")))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("expired"));
    }

    #[test]
    fn a_token_signed_with_another_key_is_unauthenticated() {
        let token = mint_token(
            "another-secret-another-secret-xx",
            "crm-suite",
            "crm-suite",
            "x",
            &["customer.read"],
            Duration::from_secs(60),
        );
        let err = policy()
            .authorize(PATH, Some(&format!("Bearer {token}")))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_token_with_every_claim_right_is_accepted() {
        let header = bearer_with_claims(&claims_with(serde_json::json!({})));
        let principal = policy().authorize(PATH, Some(&header)).unwrap().unwrap();
        assert_eq!(principal.subject, "tester");
    }

    #[test]
    fn a_token_from_another_issuer_is_unauthenticated() {
        let header = bearer_with_claims(&claims_with(serde_json::json!({"iss": "someone-else"})));
        let err = policy().authorize(PATH, Some(&header)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("issuer"), "{}", err.message());
    }

    #[test]
    fn a_token_for_another_audience_is_unauthenticated() {
        let header = bearer_with_claims(&claims_with(serde_json::json!({"aud": "billing"})));
        let err = policy().authorize(PATH, Some(&header)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("audience"), "{}", err.message());
    }

    #[test]
    fn malformed_authorization_headers_are_unauthenticated() {
        let token = mint_token(
            SECRET,
            "crm-suite",
            "crm-suite",
            "tester",
            &["customer.read"],
            Duration::from_secs(60),
        );
        let cases = [
            ("the scheme without a token", "Bearer".to_string()),
            ("the scheme and a space only", "Bearer ".to_string()),
            (
                "basic credentials",
                "Basic dXNlcjpwYXNzd29yZA==".to_string(),
            ),
            ("a token without a scheme", token.clone()),
            (
                "another scheme with a valid token",
                format!("Token {token}"),
            ),
            ("a token that is not a JWT", "Bearer not-a-jwt".to_string()),
            (
                "segments of garbage base64",
                "Bearer @@@.!!!.###".to_string(),
            ),
            (
                "a JWT with its signature cut off",
                format!("Bearer {}", token.rsplit_once('.').unwrap().0),
            ),
        ];
        for (case, header) in cases {
            let err = policy().authorize(PATH, Some(&header)).unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::Unauthenticated,
                "{case}: {header:?}"
            );
        }
    }

    #[test]
    fn the_bearer_scheme_is_matched_case_insensitively() {
        let token = mint_token(
            SECRET,
            "crm-suite",
            "crm-suite",
            "tester",
            &["customer.read"],
            Duration::from_secs(60),
        );
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let header = format!("{scheme} {token}");
            let principal = policy()
                .authorize(PATH, Some(&header))
                .unwrap_or_else(|e| panic!("scheme {scheme:?}: {e:?}"))
                .unwrap();
            assert_eq!(principal.subject, "tester", "scheme {scheme:?}");
        }
    }

    #[test]
    fn a_token_not_valid_before_a_future_time_is_unauthenticated() {
        let header = bearer_with_claims(&claims_with(serde_json::json!({"nbf": now() + 300})));
        let err = policy().authorize(PATH, Some(&header)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("not valid yet"), "{}", err.message());
    }

    #[test]
    fn a_token_whose_not_before_time_has_just_passed_is_accepted() {
        let header = bearer_with_claims(&claims_with(serde_json::json!({"nbf": now() - 1})));
        let principal = policy().authorize(PATH, Some(&header)).unwrap().unwrap();
        assert_eq!(principal.subject, "tester");
    }

    #[test]
    fn a_not_before_time_within_the_clock_skew_leeway_is_accepted() {
        let header = bearer_with_claims(&claims_with(serde_json::json!({"nbf": now() + 5})));
        let principal = policy().authorize(PATH, Some(&header)).unwrap().unwrap();
        assert_eq!(principal.subject, "tester");
    }

    #[test]
    fn a_token_issued_in_the_future_is_unauthenticated() {
        let header = bearer_with_claims(&claims_with(serde_json::json!({"iat": now() + 3600})));

        let err = policy().authorize(PATH, Some(&header)).unwrap_err();

        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(
            err.message().contains("issued in the future"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn a_token_issued_just_beyond_the_clock_skew_leeway_is_unauthenticated() {
        let iat = now() + CLOCK_SKEW_LEEWAY_SECS + 5;
        let header = bearer_with_claims(&claims_with(serde_json::json!({"iat": iat})));

        let err = policy().authorize(PATH, Some(&header)).unwrap_err();

        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn an_issue_time_within_the_clock_skew_leeway_is_accepted() {
        let header = bearer_with_claims(&claims_with(serde_json::json!({"iat": now() + 5})));

        let principal = policy().authorize(PATH, Some(&header)).unwrap().unwrap();

        assert_eq!(principal.subject, "tester");
    }

    #[test]
    fn a_token_issued_long_ago_but_unexpired_is_accepted() {
        let header = bearer_with_claims(&claims_with(serde_json::json!({"iat": now() - 86_400})));

        let principal = policy().authorize(PATH, Some(&header)).unwrap().unwrap();

        assert_eq!(principal.subject, "tester");
    }

    #[test]
    fn a_method_that_is_not_served_is_permission_denied() {
        let method = "/crm.customer.v1.CustomerService/NotInTheContract";
        let header = bearer(
            &["customer.read", "customer.write"],
            Duration::from_secs(60),
        );
        let err = policy().authorize(method, Some(&header)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains(method), "{}", err.message());
    }

    #[test]
    fn a_token_with_the_service_claim_is_a_service_principal() {
        let token = mint_service_token(
            SECRET,
            "crm-suite",
            "crm-suite",
            "sales",
            &["customer.read"],
            Duration::from_secs(60),
        );
        let header = format!("Bearer {token}");

        let principal = policy().authorize(PATH, Some(&header)).unwrap().unwrap();

        assert_eq!(
            principal.principal(),
            CommonPrincipal {
                kind: PrincipalKind::Service as i32,
                id: "sales".into(),
            }
        );
    }

    #[test]
    fn a_token_without_the_service_claim_is_a_user_principal() {
        for claims in [
            claims_with(serde_json::json!({})),
            claims_with(serde_json::json!({"principal_kind": "team"})),
            claims_with(serde_json::json!({"principal_kind": "SERVICE"})),
        ] {
            let header = bearer_with_claims(&claims);

            let principal = policy().authorize(PATH, Some(&header)).unwrap().unwrap();

            assert_eq!(principal.kind, PrincipalKind::User, "{claims}");
            assert_eq!(principal.principal().id, "tester");
        }
    }

    #[test]
    fn health_and_reflection_stay_open_without_a_token() {
        let open = [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ];
        for path in open {
            assert_eq!(policy().authorize(path, None).unwrap(), None, "{path}");
        }
    }

    #[test]
    fn an_operations_call_needs_a_valid_token_but_no_fixed_scope() {
        let path = "/google.longrunning.Operations/GetOperation";
        let header = bearer(&[], Duration::from_secs(60));

        let anonymous = policy().authorize(path, None).unwrap_err();
        let principal = policy().authorize(path, Some(&header)).unwrap().unwrap();

        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
        assert_eq!(principal.subject, "tester");
    }

    fn request_of(principal: Option<Principal>) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        if let Some(principal) = principal {
            request.extensions_mut().insert(principal);
        }
        request
    }

    fn principal_with(scopes: &[&str]) -> Principal {
        Principal {
            subject: "tester".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            kind: PrincipalKind::User,
        }
    }

    #[test]
    fn require_scope_returns_the_caller_holding_the_scope() {
        let request = request_of(Some(principal_with(&["customer.read"])));

        let principal = require_scope(&request, "customer.read").unwrap();

        assert_eq!(principal.subject, "tester");
    }

    #[test]
    fn require_scope_refuses_a_caller_lacking_the_scope_naming_it() {
        let request = request_of(Some(principal_with(&["customer.read"])));

        let status = Status::from(require_scope(&request, "customer.write").unwrap_err());

        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("customer.write"), "{status:?}");
    }

    #[test]
    fn require_scope_without_a_caller_is_unauthenticated() {
        let status = Status::from(require_scope(&request_of(None), "customer.read").unwrap_err());

        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
}
