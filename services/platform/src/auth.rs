//! Bearer-token authentication and per-method scopes.
//!
//! Tokens are HS256 JWTs with `sub`, `iss`, `aud`, `exp` and a space-separated `scope` claim (as
//! in OAuth 2.0), and optionally `principal_kind: "service"` for callers that are services rather
//! than people. Each service declares the scope every one of its methods needs; health and
//! reflection stay open so probes and `grpcurl list` work without a token.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crm_proto::crm::common::v1::{Principal as CommonPrincipal, PrincipalKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::Status;

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

/// The scope of methods any valid token may call because the handler checks the scope itself
/// (it depends on the resource, e.g. which service an operation belongs to).
pub const SCOPE_CHECKED_IN_HANDLER: &str = "";

/// The method → scope table of one service, e.g.
/// `("/crm.customer.v1.CustomerService/GetCustomer", "customer.read")`.
pub type MethodScopes = &'static [(&'static str, &'static str)];

/// Verifies tokens and decides whether a call may proceed.
#[derive(Clone)]
pub struct AuthPolicy {
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
    scopes: Arc<HashMap<&'static str, &'static str>>,
}

impl std::fmt::Debug for AuthPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthPolicy")
            .field("methods", &self.scopes.len())
            .finish_non_exhaustive()
    }
}

impl AuthPolicy {
    /// A policy for the given secret, issuer, audience and the served services' method tables.
    pub fn new(secret: &str, issuer: &str, audience: &str, tables: &[MethodScopes]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // A token used before its `nbf` is refused (jsonwebtoken skips that check by default);
        // the leeway covers clock skew for `nbf` as for `exp`.
        validation.validate_nbf = true;
        validation.leeway = 30;
        let scopes = tables.iter().flat_map(|t| t.iter().copied()).collect();
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
    /// the method's scope, and UNAUTHENTICATED / PERMISSION_DENIED otherwise (also for a
    /// method missing from every scope table).
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
        // A method no table names is refused: forgetting to declare a new method's scope must
        // close it, not open it to every authenticated caller.
        let Some(required) = self.scopes.get(path) else {
            return Err(Status::permission_denied(format!(
                "the method {path} is not open to any scope"
            )));
        };
        if *required != SCOPE_CHECKED_IN_HANDLER && !principal.scopes.contains(*required) {
            return Err(Status::permission_denied(format!(
                "this method needs the scope `{required}`"
            )));
        }
        Ok(Some(principal))
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
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
    const TABLE: MethodScopes = &[(PATH, "customer.read")];

    fn policy() -> AuthPolicy {
        AuthPolicy::new(SECRET, "crm-suite", "crm-suite", &[TABLE])
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
    fn a_method_missing_from_the_scope_table_is_permission_denied() {
        let method = "/crm.customer.v1.CustomerService/NotInTheTable";
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
}
