//! The auth matrix: every method of every served service, called with every way a token can be
//! wrong, must answer UNAUTHENTICATED; with a valid token lacking the method's scope (as its
//! contract declares it), PERMISSION_DENIED; and with only that scope, anything but those two.
//!
//! Services in [`SCOPE_CHECKED_IN_HANDLER`] (`google.longrunning.Operations`) decide the scope
//! from the operation a call names, so the matrix first starts a real operation (through a
//! served method that returns one) and checks their methods on it: refused to a token without
//! scopes, accepted with every scope.
//!
//! ```ignore
//! let services = served_services(app.channel().await).await;
//! auth_matrix(&app, &services).await.assert_clean();
//! ```

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use prost_reflect::{MethodDescriptor, Value};
use tonic::Code;

use super::app::TestApp;
use super::auth::{AUDIENCE, ISSUER, JWT_SECRET, SUBJECT, user_token};
use super::malformed::{Finding, every_scope, every_scope_token, plausible};
use super::rpc::{Outcome, call_raw, methods_of, path_of};
use crate::auth::{ContractScopes, SCOPE_CHECKED_IN_HANDLER};

/// Calls in flight at once.
const CONCURRENCY: usize = 8;

/// What a run of the matrix sent and found.
#[derive(Debug, Clone, Default)]
pub struct AuthMatrixReport {
    /// Methods called.
    pub methods: usize,
    /// Calls made.
    pub calls: usize,
    /// Every answer that was not the expected one, sorted by method and case.
    pub findings: Vec<Finding>,
}

impl AuthMatrixReport {
    /// Fails the test listing every finding, one a line, when there is any.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert!(self.findings.is_empty(), "{}", self.render());
    }

    /// The findings as lines, with a summary line first.
    pub fn render(&self) -> String {
        let mut text = format!(
            "{} of {} auth-matrix calls over {} methods answered wrongly:\n",
            self.findings.len(),
            self.calls,
            self.methods
        );
        for f in &self.findings {
            let _ = writeln!(
                text,
                "  {} | {} | {} | {}",
                f.method, f.probe, f.problem, f.answer
            );
        }
        text
    }
}

/// What a case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Unauthenticated,
    PermissionDenied,
    /// Any answer but UNAUTHENTICATED or PERMISSION_DENIED (and an answer at all).
    Admitted,
}

impl Expect {
    fn check(self, outcome: &Outcome) -> Option<String> {
        let code = outcome.code();
        let ok = match self {
            Expect::Unauthenticated => code == Some(Code::Unauthenticated),
            Expect::PermissionDenied => code == Some(Code::PermissionDenied),
            Expect::Admitted => {
                !matches!(code, Some(Code::Unauthenticated | Code::PermissionDenied))
                    && !matches!(outcome, Outcome::NoAnswer)
            }
        };
        (!ok).then(|| match self {
            Expect::Unauthenticated => "expected UNAUTHENTICATED".to_string(),
            Expect::PermissionDenied => "expected PERMISSION_DENIED".to_string(),
            Expect::Admitted => "expected the call to pass auth".to_string(),
        })
    }
}

struct Case {
    method: MethodDescriptor,
    name: String,
    authorization: Option<String>,
    body: Bytes,
    expect: Expect,
}

/// Runs the matrix over every method of `services` on `app`'s server.
pub async fn auth_matrix(app: &TestApp, services: &[&str]) -> AuthMatrixReport {
    let methods = methods_of(services);
    let channel = app.channel().await;
    let all_scopes = format!("Bearer {}", every_scope_token(services));
    let operation = start_operation(&channel, &methods, &all_scopes).await;
    let mut refusals = Vec::new();
    let mut admissions = Vec::new();
    let mut findings = Vec::new();
    for method in &methods {
        let body = request_for(method, operation.as_deref());
        for (name, authorization) in unauthenticated_headers(services) {
            refusals.push(Case {
                method: method.clone(),
                name,
                authorization,
                body: body.clone(),
                expect: Expect::Unauthenticated,
            });
        }
        let service = method.parent_service().full_name().to_string();
        if SCOPE_CHECKED_IN_HANDLER.contains(&service.as_str()) {
            if operation.is_none() && !method.name().starts_with("List") {
                findings.push(Finding {
                    method: path_of(method),
                    probe: "a token without scopes, on a real operation".into(),
                    problem: "no served method started an operation to check it on".into(),
                    answer: String::new(),
                });
                continue;
            }
            refusals.push(Case {
                method: method.clone(),
                name: "a token without scopes".into(),
                authorization: Some(format!("Bearer {}", user_token(&[]))),
                body: body.clone(),
                expect: Expect::PermissionDenied,
            });
            admissions.push(Case {
                method: method.clone(),
                name: "a token with every scope".into(),
                authorization: Some(all_scopes.clone()),
                body,
                expect: Expect::Admitted,
            });
            continue;
        }
        let scopes = ContractScopes::for_services(&[service.as_str()])
            .unwrap_or_else(|e| panic!("the scopes of {service}: {e}"));
        let path = path_of(method);
        let required = scopes
            .scope_of(&path)
            .unwrap_or_else(|| panic!("{path} declares no scope"))
            .to_string();
        let others: Vec<String> = every_scope(services)
            .into_iter()
            .filter(|s| *s != required)
            .collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        refusals.push(Case {
            method: method.clone(),
            name: format!("every scope but `{required}`"),
            authorization: Some(format!("Bearer {}", user_token(&others))),
            body: body.clone(),
            expect: Expect::PermissionDenied,
        });
        admissions.push(Case {
            method: method.clone(),
            name: format!("only `{required}`"),
            authorization: Some(format!("Bearer {}", user_token(&[required.as_str()]))),
            body,
            expect: Expect::Admitted,
        });
    }
    let calls = refusals.len() + admissions.len();
    // Refusals first: an admitted Cancel or Delete may end the operation the others name.
    for cases in [refusals, admissions] {
        findings.extend(run(&channel, cases).await);
    }
    findings.sort();
    AuthMatrixReport {
        methods: methods.len(),
        calls,
        findings,
    }
}

async fn run(channel: &tonic::transport::Channel, cases: Vec<Case>) -> Vec<Finding> {
    futures::stream::iter(cases)
        .map(|case| {
            let channel = channel.clone();
            async move {
                let outcome = call_raw(
                    channel,
                    &case.method,
                    case.authorization.as_deref(),
                    case.body,
                )
                .await;
                case.expect.check(&outcome).map(|problem| Finding {
                    method: path_of(&case.method),
                    probe: case.name,
                    problem,
                    answer: outcome.describe(),
                })
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|finding| async move { finding })
        .collect()
        .await
}

/// A plausible request for `method`, naming `operation` in its `name` field if it has one and
/// an operation was started.
fn request_for(method: &MethodDescriptor, operation: Option<&str>) -> Bytes {
    let input = method.input();
    let mut message = plausible(&input, 0);
    if let (Some(name), Some(field)) = (operation, input.get_field_by_name("name")) {
        message.set_field(&field, Value::String(name.to_string()));
    }
    if let Some(field) = input.get_field_by_name("filter") {
        message.clear_field(&field);
    }
    Bytes::from(message.encode_to_vec())
}

/// Starts a long-running operation through the first served method that returns one and
/// answers with it, and returns its name.
async fn start_operation(
    channel: &tonic::transport::Channel,
    methods: &[MethodDescriptor],
    authorization: &str,
) -> Option<String> {
    for method in methods {
        if method.output().full_name() != "google.longrunning.Operation"
            || method.parent_service().full_name() == "google.longrunning.Operations"
        {
            continue;
        }
        let body = Bytes::from(plausible(&method.input(), 0).encode_to_vec());
        if let Outcome::Message(answer) =
            call_raw(channel.clone(), method, Some(authorization), body).await
            && let Ok(operation) = crm_proto::google::longrunning::Operation::decode(answer)
            && !operation.name.is_empty()
        {
            return Some(operation.name);
        }
    }
    None
}

/// Each way an `authorization` header can fail authentication, with every scope granted where a
/// token is sent: named, with the header (`None`: no header).
fn unauthenticated_headers(services: &[&str]) -> Vec<(String, Option<String>)> {
    let scope = every_scope(services).join(" ");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = |changes: serde_json::Value| {
        let mut claims = serde_json::json!({
            "sub": SUBJECT,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 600,
            "scope": scope,
        });
        for (key, value) in changes.as_object().expect("claim changes are an object") {
            claims[key] = value.clone();
        }
        claims
    };
    let sign = |claims: &serde_json::Value, secret: &str| {
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key)
            .expect("test claims serialize");
        Some(format!("Bearer {token}"))
    };
    let valid = claims(serde_json::json!({}));
    vec![
        ("no token".into(), None),
        (
            "a Basic header".into(),
            Some("Basic dXNlcjpwYXNzd29yZA==".into()),
        ),
        (
            "a bearer that is not a JWT".into(),
            Some("Bearer not-a-jwt".into()),
        ),
        (
            "a bad signature".into(),
            sign(&valid, "another-secret-another-secret-another"),
        ),
        (
            "an expired token".into(),
            sign(
                &claims(serde_json::json!({"iat": now - 7200, "exp": now - 3600})),
                JWT_SECRET,
            ),
        ),
        (
            "a token not valid yet (nbf)".into(),
            sign(&claims(serde_json::json!({"nbf": now + 3600})), JWT_SECRET),
        ),
        (
            "a token issued in the future (iat)".into(),
            sign(&claims(serde_json::json!({"iat": now + 3600})), JWT_SECRET),
        ),
        (
            "a token for another audience".into(),
            sign(&claims(serde_json::json!({"aud": "elsewhere"})), JWT_SECRET),
        ),
        (
            "a token from another issuer".into(),
            sign(&claims(serde_json::json!({"iss": "elsewhere"})), JWT_SECRET),
        ),
    ]
}
