//! The kinds of failure a CRM Suite call can end in, and the one table that turns them into
//! `tonic::Status` with rich details (`google.rpc.BadRequest`, `ErrorInfo`, `RetryInfo`).
//!
//! Each service keeps its own error enum with domain variants and converts it into [`ApiError`];
//! the mapping to gRPC codes, and the rule that internal detail is logged but never sent, live
//! here once.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error the suite returns.
pub const ERROR_DOMAIN: &str = "crm-suite";

/// How long a caller should wait before retrying an UNAVAILABLE call.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Characters of a caller's input an error message may quote (see [`quote`]).
pub const MAX_QUOTED_CHARS: usize = 64;
/// Field violations a status carries; past it the message ends "and N more".
pub const MAX_VIOLATIONS: usize = 20;
/// Characters of a status message, and of each violation's field and description: a safety net
/// so that no error, however it was built, sends a caller's megabyte back to it.
pub const MAX_MESSAGE_CHARS: usize = 2_048;
const MAX_VIOLATION_CHARS: usize = 256;

/// `input` for an error message: Debug-quoted, cut to its first [`MAX_QUOTED_CHARS`] characters
/// with "…" after the closing quote when it was longer. Use it wherever a message names what the
/// caller sent.
pub fn quote(input: &str) -> String {
    match input.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("{input:?}"),
        Some((end, _)) => format!("{:?}…", &input[..end]),
    }
}

/// `text` cut to at most `max` characters, "…" marking the cut.
fn capped(text: &str, max: usize) -> String {
    if text.char_indices().nth(max).is_none() {
        return text.to_string();
    }
    let end = text
        .char_indices()
        .nth(max.saturating_sub(1))
        .map_or(text.len(), |(i, _)| i);
    format!("{}…", &text[..end])
}

/// Field violations collected while validating a request. A request with any is rejected
/// whole, with every violation listed, so a caller can fix all of them at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldViolations(Vec<FieldViolation>);

/// One bad field: its path in the request (e.g. `customer.email`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, dot-separated, with `[i]` for list elements.
    pub field: String,
    /// What is wrong with it, for a person to read.
    pub description: String,
}

impl FieldViolations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// A single-violation error, for checks that stand alone.
    pub fn single(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut violations = Self::new();
        violations.add(field, description);
        violations
    }

    /// How many were recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The violations recorded.
    pub fn iter(&self) -> impl Iterator<Item = &FieldViolation> {
        self.0.iter()
    }

    /// `Ok(())` when nothing was recorded, else the violations as an error.
    pub fn into_result(self) -> Result<(), ApiError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self))
        }
    }

    /// Prefixes every field path, e.g. to report violations of a nested message.
    pub fn prefixed(self, prefix: &str) -> Self {
        Self(
            self.0
                .into_iter()
                .map(|v| FieldViolation {
                    field: format!("{prefix}.{}", v.field),
                    description: v.description,
                })
                .collect(),
        )
    }

    /// Appends another set of violations.
    pub fn extend(&mut self, other: FieldViolations) {
        self.0.extend(other.0);
    }
}

impl fmt::Display for FieldViolations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

/// Every way a call can fail, as the caller sees it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed; nothing was changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(FieldViolations),
    /// The named resource does not exist.
    #[error("{resource} {id} not found")]
    NotFound {
        /// Kind of resource, e.g. "customer".
        resource: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The resource (or another with the same unique key) already exists.
    #[error("{message}")]
    AlreadyExists {
        /// Machine-readable reason, UPPER_SNAKE, e.g. EMAIL_ALREADY_EXISTS.
        reason: &'static str,
        /// For a person.
        message: String,
    },
    /// A concurrency conflict: the etag is stale. Read again and retry.
    #[error("{message}")]
    Aborted {
        /// Machine-readable reason, e.g. ETAG_MISMATCH.
        reason: &'static str,
        /// For a person.
        message: String,
    },
    /// The resource is not in a state that allows the call.
    #[error("{message}")]
    FailedPrecondition {
        /// Machine-readable reason, e.g. CUSTOMER_NOT_ACTIVE.
        reason: &'static str,
        /// For a person.
        message: String,
    },
    /// A value is outside the range the server keeps (e.g. an expired resume token).
    #[error("{message}")]
    OutOfRange {
        /// Machine-readable reason.
        reason: &'static str,
        /// For a person.
        message: String,
    },
    /// The method is declared but not served yet (e.g. it needs a component not deployed).
    #[error("{message}")]
    Unimplemented {
        /// For a person: what is missing.
        message: String,
    },
    /// The call carries no valid credentials.
    #[error("{message}")]
    Unauthenticated {
        /// For a person: what is missing or wrong.
        message: String,
    },
    /// The caller is known but may not do this (e.g. its token lacks a scope).
    #[error("{message}")]
    PermissionDenied {
        /// For a person: which permission is missing.
        message: String,
    },
    /// A dependency (the database) is unreachable; retrying later may succeed.
    #[error("service unavailable: {0}")]
    Unavailable(#[source] anyhow::Error),
    /// A bug or an unexpected state. The cause is logged, never sent.
    #[error("internal error: {0:#}")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A not-found error for `resource` `id`.
    pub fn not_found(resource: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            resource,
            id: id.into(),
        }
    }

    /// An invalid-argument error with one violation.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(FieldViolations::single(field, description))
    }

    /// Rebuilds an error that several callers share because they waited on one coalesced
    /// load; causes are kept as text.
    pub fn from_shared(shared: std::sync::Arc<ApiError>) -> Self {
        match std::sync::Arc::try_unwrap(shared) {
            Ok(err) => err,
            Err(shared) => match &*shared {
                Self::InvalidArgument(v) => Self::InvalidArgument(v.clone()),
                Self::NotFound { resource, id } => Self::NotFound {
                    resource,
                    id: id.clone(),
                },
                Self::AlreadyExists { reason, message } => Self::AlreadyExists {
                    reason,
                    message: message.clone(),
                },
                Self::Aborted { reason, message } => Self::Aborted {
                    reason,
                    message: message.clone(),
                },
                Self::FailedPrecondition { reason, message } => Self::FailedPrecondition {
                    reason,
                    message: message.clone(),
                },
                Self::OutOfRange { reason, message } => Self::OutOfRange {
                    reason,
                    message: message.clone(),
                },
                Self::Unimplemented { message } => Self::Unimplemented {
                    message: message.clone(),
                },
                Self::Unauthenticated { message } => Self::Unauthenticated {
                    message: message.clone(),
                },
                Self::PermissionDenied { message } => Self::PermissionDenied {
                    message: message.clone(),
                },
                Self::Unavailable(cause) => Self::Unavailable(anyhow::anyhow!("{cause:#}")),
                Self::Internal(cause) => Self::Internal(anyhow::anyhow!("{cause:#}")),
            },
        }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::Aborted { .. } => Code::Aborted,
            Self::FailedPrecondition { .. } => Code::FailedPrecondition,
            Self::OutOfRange { .. } => Code::OutOfRange,
            Self::Unimplemented { .. } => Code::Unimplemented,
            Self::Unauthenticated { .. } => Code::Unauthenticated,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }
}

fn error_info(reason: &str, metadata: HashMap<String, String>) -> ErrorDetails {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    details
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let code = err.code();
        match err {
            ApiError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                let mut message = String::from("invalid argument: ");
                for (i, v) in violations.iter().take(MAX_VIOLATIONS).enumerate() {
                    let field = capped(&v.field, MAX_VIOLATION_CHARS);
                    let description = capped(&v.description, MAX_VIOLATION_CHARS);
                    if i > 0 {
                        message.push_str("; ");
                    }
                    message.push_str(&format!("{field}: {description}"));
                    details.add_bad_request_violation(field, description);
                }
                let more = violations.len().saturating_sub(MAX_VIOLATIONS);
                let mut message = capped(&message, MAX_MESSAGE_CHARS - 32);
                if more > 0 {
                    message.push_str(&format!("; and {more} more"));
                }
                Status::with_error_details(code, message, details)
            }
            ApiError::NotFound { resource, id } => Status::with_error_details(
                code,
                format!("{resource} {} not found", quote(&id)),
                error_info(
                    &format!("{}_NOT_FOUND", resource.to_uppercase()),
                    HashMap::from([("id".to_string(), capped(&id, MAX_VIOLATION_CHARS))]),
                ),
            ),
            ApiError::AlreadyExists { reason, message }
            | ApiError::Aborted { reason, message }
            | ApiError::FailedPrecondition { reason, message }
            | ApiError::OutOfRange { reason, message } => Status::with_error_details(
                code,
                capped(&message, MAX_MESSAGE_CHARS),
                error_info(reason, HashMap::new()),
            ),
            ApiError::Unimplemented { message }
            | ApiError::Unauthenticated { message }
            | ApiError::PermissionDenied { message } => {
                Status::new(code, capped(&message, MAX_MESSAGE_CHARS))
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(
                    error = format!("{cause:#}"),
                    "call failed: dependency unavailable"
                );
                let mut details = error_info("DEPENDENCY_UNAVAILABLE", HashMap::new());
                details.set_retry_info(Some(RETRY_AFTER));
                Status::with_error_details(
                    code,
                    "the service cannot reach its database right now; retry later",
                    details,
                )
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "call failed: internal error");
                Status::new(code, "internal error; it has been logged")
            }
        }
    }
}

/// The `google.rpc.Status` a call ending in `status` carries: its code, message and the details
/// [`ApiError`] attached (`BadRequest`, `ErrorInfo`, `RetryInfo`), as `Any`s. For the per-item
/// results of bulk and streaming calls (`crm.common.v1.ItemResult.status`), which must carry what a
/// single call would have returned.
pub fn rpc_status(status: &Status) -> crm_proto::google::rpc::Status {
    // tonic-types puts the details on the wire as an encoded google.rpc.Status with the same
    // code and message; a status without details (INTERNAL, OK) gets an empty list.
    prost::Message::decode(status.details())
        .ok()
        .filter(|decoded: &crm_proto::google::rpc::Status| decoded.code == status.code() as i32)
        .unwrap_or_else(|| crm_proto::google::rpc::Status {
            code: status.code() as i32,
            message: status.message().to_string(),
            details: Vec::new(),
        })
}

impl ApiError {
    /// This error as a `google.rpc.Status` (see [`rpc_status`]).
    pub fn into_rpc_status(self) -> crm_proto::google::rpc::Status {
        rpc_status(&Status::from(self))
    }
}

/// What a database error means for the caller. Services use it to turn the constraint
/// violations they expect into the right error and everything else into UNAVAILABLE or
/// INTERNAL.
#[derive(Debug)]
pub enum DbFailure {
    /// A unique constraint, by name.
    UniqueViolation(String),
    /// A foreign-key constraint, by name.
    ForeignKeyViolation(String),
    /// A check constraint, by name.
    CheckViolation(String),
    /// A serialization failure or deadlock: safe to retry the transaction.
    Conflict,
    /// The database is unreachable, shutting down, or the pool is exhausted.
    Unavailable,
    /// Anything else.
    Other,
}

/// Classifies a sqlx error.
pub fn classify_db_error(err: &sqlx::Error) -> DbFailure {
    match err {
        sqlx::Error::Database(db) => {
            let constraint = db.constraint().unwrap_or_default().to_string();
            match db.code().as_deref() {
                Some("23505") => DbFailure::UniqueViolation(constraint),
                Some("23503") => DbFailure::ForeignKeyViolation(constraint),
                Some("23514") => DbFailure::CheckViolation(constraint),
                Some("40001") | Some("40P01") => DbFailure::Conflict,
                // Class 08: connection exceptions; 57P0x: admin shutdown, crash shutdown, cannot
                // connect now; 53300: too many connections.
                Some(code)
                    if code.starts_with("08") || code.starts_with("57P0") || code == "53300" =>
                {
                    DbFailure::Unavailable
                }
                _ => DbFailure::Other,
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbFailure::Unavailable,
        sqlx::Error::Protocol(_) => DbFailure::Unavailable,
        _ => DbFailure::Other,
    }
}

impl From<sqlx::Error> for ApiError {
    /// The fallback for database errors a service did not expect: UNAVAILABLE when the database
    /// is out of reach, INTERNAL otherwise. Expected constraint violations must be matched by the
    /// service before this.
    fn from(err: sqlx::Error) -> Self {
        match classify_db_error(&err) {
            DbFailure::Unavailable => ApiError::Unavailable(err.into()),
            DbFailure::Conflict => ApiError::Aborted {
                reason: "CONCURRENT_MODIFICATION",
                message: "the data changed concurrently; retry the call".into(),
            },
            _ => ApiError::Internal(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_every_field_violation() {
        let mut violations = FieldViolations::new();
        violations.add("customer.email", "not a valid email address");
        violations.add("customer.phone", "must be E.164, e.g. +4915112345678");

        let status = Status::from(ApiError::InvalidArgument(violations));

        assert_eq!(status.code(), Code::InvalidArgument);
        let bad_request = status
            .get_details_bad_request()
            .expect("BadRequest details");
        let fields: Vec<_> = bad_request
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["customer.email", "customer.phone"]);
    }

    #[test]
    fn internal_errors_never_reach_the_caller() {
        let status = Status::from(ApiError::Internal(anyhow::anyhow!(
            "relation \"customer.customers\" does not exist"
        )));

        assert_eq!(status.code(), Code::Internal);
        assert!(
            !status.message().contains("relation"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn unavailable_tells_the_caller_when_to_retry() {
        let status = Status::from(ApiError::Unavailable(anyhow::anyhow!("connection refused")));

        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.get_error_details().retry_info().unwrap().retry_delay,
            Some(RETRY_AFTER)
        );
        assert!(!status.message().contains("refused"));
    }

    #[test]
    fn not_found_names_the_reason_and_id() {
        let status = Status::from(ApiError::not_found("customer", "0190"));

        assert_eq!(status.code(), Code::NotFound);
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "CUSTOMER_NOT_FOUND");
        assert_eq!(info.metadata.get("id").map(String::as_str), Some("0190"));
    }

    #[test]
    fn an_rpc_status_carries_the_code_message_and_details_of_the_grpc_status() {
        let mut violations = FieldViolations::new();
        violations.add("customer.email", "not a valid email address");

        let rpc = ApiError::InvalidArgument(violations).into_rpc_status();

        assert_eq!(rpc.code, Code::InvalidArgument as i32);
        assert!(rpc.message.contains("customer.email"), "{}", rpc.message);
        assert_eq!(rpc.details.len(), 1);
        assert_eq!(
            rpc.details[0].type_url,
            "type.googleapis.com/google.rpc.BadRequest"
        );
        let bad_request: tonic_types::pb::BadRequest =
            prost::Message::decode(rpc.details[0].value.as_slice()).unwrap();
        assert_eq!(bad_request.field_violations[0].field, "customer.email");
    }

    #[test]
    fn an_rpc_status_without_details_keeps_code_and_message() {
        let rpc = rpc_status(&Status::new(
            Code::Internal,
            "internal error; it has been logged",
        ));

        assert_eq!(rpc.code, Code::Internal as i32);
        assert_eq!(rpc.message, "internal error; it has been logged");
        assert!(rpc.details.is_empty());
    }

    #[test]
    fn a_quote_keeps_a_short_prefix_of_long_input() {
        assert_eq!(quote("abc"), "\"abc\"");
        let long = "é".repeat(1_000_000);

        let quoted = quote(&long);

        assert_eq!(quoted, format!("{:?}…", "é".repeat(MAX_QUOTED_CHARS)));
    }

    #[test]
    fn violations_past_the_cap_are_counted_not_listed() {
        let mut violations = FieldViolations::new();
        for i in 0..100_000 {
            violations.add(format!("ids[{i}]"), "x".repeat(10_000));
        }

        let status = Status::from(ApiError::InvalidArgument(violations));

        let listed = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(listed.len(), MAX_VIOLATIONS);
        assert!(listed.iter().all(|v| v.description.chars().count() <= 256));
        assert!(status.message().chars().count() <= MAX_MESSAGE_CHARS);
        assert!(
            status.message().ends_with("; and 99980 more"),
            "{}",
            status.message()
        );
        assert!(
            status.details().len() < 16 * 1024,
            "{}",
            status.details().len()
        );
    }

    #[test]
    fn a_huge_id_is_quoted_by_its_prefix_only() {
        let id = "x".repeat(1_000_000);

        let status = Status::from(ApiError::not_found("customer", id));

        assert!(status.message().len() < 200, "{}", status.message().len());
        assert!(status.details().len() < 1_024, "{}", status.details().len());
    }

    #[test]
    fn pool_timeouts_are_unavailable() {
        assert!(matches!(
            classify_db_error(&sqlx::Error::PoolTimedOut),
            DbFailure::Unavailable
        ));
    }
}
