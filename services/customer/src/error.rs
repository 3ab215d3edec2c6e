//! The customer service's errors, and how each reaches the caller (through
//! [`crm_platform::ApiError`], the suite's one mapping to gRPC status codes).

use crm_platform::ApiError;
use crm_platform::error::{DbFailure, classify_db_error};
use uuid::Uuid;

use crate::domain::CustomerState;

/// Everything a customer call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No customer has this id.
    #[error("customer {0} not found")]
    NotFound(Uuid),
    /// Another active customer has this email.
    #[error("another active customer already uses this email")]
    EmailTaken,
    /// The etag sent is not the current one.
    #[error("the customer changed since the etag was read")]
    EtagMismatch,
    /// The customer is deleted, merged or erased, and the call needs an active one.
    #[error("customer {id} is {state}")]
    NotActive {
        /// The customer.
        id: Uuid,
        /// Its state.
        state: CustomerState,
    },
    /// Undelete of a customer that is not deleted.
    #[error("customer {0} is not deleted")]
    NotDeleted(Uuid),
    /// A platform-level failure (validation, paging, unavailability).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A database error not matched above.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<crm_platform::FieldViolations> for Error {
    fn from(violations: crm_platform::FieldViolations) -> Self {
        Error::Api(ApiError::InvalidArgument(violations))
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        match err {
            Error::NotFound(id) => ApiError::not_found("customer", id.to_string()),
            Error::EmailTaken => ApiError::AlreadyExists {
                reason: "EMAIL_ALREADY_EXISTS",
                message: "another active customer already uses this email".into(),
            },
            Error::EtagMismatch => ApiError::Aborted {
                reason: "ETAG_MISMATCH",
                message: "the customer changed since the etag was read; read it again and retry"
                    .into(),
            },
            Error::NotActive { id, state } => ApiError::FailedPrecondition {
                reason: "CUSTOMER_NOT_ACTIVE",
                message: format!("customer {id} is {}", state.name().to_lowercase()),
            },
            Error::NotDeleted(id) => ApiError::FailedPrecondition {
                reason: "CUSTOMER_NOT_DELETED",
                message: format!("customer {id} is not deleted"),
            },
            Error::Api(api) => api,
            Error::Database(db) => match classify_db_error(&db) {
                DbFailure::UniqueViolation(c) if c == "customers_active_email_key" => {
                    Error::EmailTaken.into()
                }
                _ => db.into(),
            },
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        ApiError::from(err).into()
    }
}

/// Result of customer operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
