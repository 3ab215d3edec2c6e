//! Request-id idempotency (AIP-155): a create retried with the same `request_id` returns the
//! first call's response instead of creating again, also when the two calls run concurrently.
//!
//! Each service keeps its own table in its own schema, created by its migrations:
//!
//! ```sql
//! CREATE TABLE <schema>.request_ids (
//!     method       text        NOT NULL,
//!     request_id   text        NOT NULL,
//!     request_hash bytea       NOT NULL,
//!     response     bytea,
//!     create_time  timestamptz NOT NULL DEFAULT now(),
//!     PRIMARY KEY (method, request_id)
//! );
//! ```
//!
//! The claim is made inside the caller's transaction: a concurrent second insert of the same key
//! waits on the first transaction's row lock, then sees its committed response. Ids are
//! remembered for [`REMEMBER_FOR`]; [`purge_expired`] deletes older ones.

use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::error::ApiError;

/// How long a request id is remembered.
pub const REMEMBER_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest request id accepted, in characters.
pub const MAX_REQUEST_ID_LEN: usize = 100;

/// The outcome of claiming a request id.
#[derive(Debug)]
enum Claim {
    /// First use: do the work, then [`complete`] with the response.
    New,
    /// Seen before with the same request: return this stored response.
    Replay(Bytes),
}

/// Hashes the encoded request, so reuse of an id for a different request is detected.
pub fn request_hash(encoded_request: &[u8]) -> Vec<u8> {
    Sha256::digest(encoded_request).to_vec()
}

/// Checks the shape of a request id; empty means "no idempotency asked for".
pub fn validate_request_id(field: &str, request_id: &str) -> Result<(), ApiError> {
    // Counted in characters, as the contract states, not in UTF-8 bytes.
    if request_id.chars().count() > MAX_REQUEST_ID_LEN {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_REQUEST_ID_LEN} characters"),
        ));
    }
    if request_id.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Claims `request_id` for `method` inside the caller's transaction.
async fn claim(
    tx: &mut PgConnection,
    schema: &'static str,
    method: &str,
    request_id: &str,
    hash: &[u8],
) -> Result<Claim, ApiError> {
    // An expired claim is taken over as if new; a live one is left alone and read back.
    let inserted: Option<bool> = sqlx::query_scalar(&format!(
        "INSERT INTO {schema}.request_ids (method, request_id, request_hash) \
         VALUES ($1, $2, $3) \
         ON CONFLICT (method, request_id) DO UPDATE \
           SET request_hash = EXCLUDED.request_hash, response = NULL, create_time = now() \
           WHERE {schema}.request_ids.create_time < now() - make_interval(secs => $4) \
         RETURNING true"
    ))
    .bind(method)
    .bind(request_id)
    .bind(hash)
    .bind(REMEMBER_FOR.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    if inserted.is_some() {
        return Ok(Claim::New);
    }
    let (stored_hash, response): (Vec<u8>, Option<Vec<u8>>) = sqlx::query_as(&format!(
        "SELECT request_hash, response FROM {schema}.request_ids \
         WHERE method = $1 AND request_id = $2"
    ))
    .bind(method)
    .bind(request_id)
    .fetch_one(&mut *tx)
    .await?;
    if stored_hash != hash {
        return Err(ApiError::AlreadyExists {
            reason: "REQUEST_ID_REUSED",
            message: format!("request_id {request_id:?} was already used with a different request"),
        });
    }
    match response {
        Some(bytes) => Ok(Claim::Replay(Bytes::from(bytes))),
        // The row is committed only together with its response, so this means a bug.
        None => Err(ApiError::Internal(anyhow::anyhow!(
            "request id {request_id} claimed without a response"
        ))),
    }
}

/// Claims `request_id` for `method` and, if an earlier call with the same request already
/// completed, returns its stored response. `None` means: do the work, then [`complete`]. An
/// empty `request_id` (the caller asked for no idempotency) always yields `None`.
pub async fn replay<M: prost::Message + Default>(
    tx: &mut PgConnection,
    schema: &'static str,
    method: &str,
    request_id: &str,
    hash: &[u8],
) -> Result<Option<M>, ApiError> {
    if request_id.is_empty() {
        return Ok(None);
    }
    match claim(tx, schema, method, request_id, hash).await? {
        Claim::New => Ok(None),
        Claim::Replay(bytes) => M::decode(bytes).map(Some).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!(
                "stored response of {method} {request_id}: {e}"
            ))
        }),
    }
}

/// Stores the response of a claimed request id, in the same transaction as the work. A no-op
/// for an empty `request_id`.
pub async fn complete(
    tx: &mut PgConnection,
    schema: &'static str,
    method: &str,
    request_id: &str,
    response: &impl prost::Message,
) -> Result<(), ApiError> {
    if request_id.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "UPDATE {schema}.request_ids SET response = $3 WHERE method = $1 AND request_id = $2"
    ))
    .bind(method)
    .bind(request_id)
    .bind(response.encode_to_vec())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deletes request ids older than [`REMEMBER_FOR`]; returns how many.
pub async fn purge_expired(pool: &sqlx::PgPool, schema: &'static str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(&format!(
        "DELETE FROM {schema}.request_ids WHERE create_time < now() - make_interval(secs => $1)"
    ))
    .bind(REMEMBER_FOR.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violated_fields(err: ApiError) -> Vec<String> {
        match err {
            ApiError::InvalidArgument(violations) => {
                violations.iter().map(|v| v.field.clone()).collect()
            }
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_request_id_is_allowed() {
        assert!(validate_request_id("request_id", "").is_ok());
    }

    #[test]
    fn a_request_id_of_the_maximum_length_is_allowed() {
        let id = "a".repeat(MAX_REQUEST_ID_LEN);
        assert!(validate_request_id("request_id", &id).is_ok());
    }

    #[test]
    fn a_request_id_is_measured_in_characters_not_bytes() {
        let fits = "é".repeat(MAX_REQUEST_ID_LEN);
        assert!(validate_request_id("request_id", &fits).is_ok());
        let too_long = "é".repeat(MAX_REQUEST_ID_LEN + 1);
        let err = validate_request_id("request_id", &too_long).unwrap_err();
        assert_eq!(violated_fields(err), ["request_id"]);
    }

    #[test]
    fn a_request_id_longer_than_the_maximum_is_invalid_and_names_the_field() {
        let id = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        let err = validate_request_id("request_id", &id).unwrap_err();
        assert_eq!(violated_fields(err), ["request_id"]);
    }

    #[test]
    fn request_ids_with_control_characters_are_invalid() {
        for (case, id) in [
            ("a newline", "abc\ndef"),
            ("a tab", "abc\tdef"),
            ("a NUL", "abc\0"),
            ("a DEL", "abc\u{7f}"),
            ("a C1 control", "abc\u{85}"),
        ] {
            let err = validate_request_id("customer.request_id", id).unwrap_err();
            assert_eq!(violated_fields(err), ["customer.request_id"], "{case}");
        }
    }

    #[test]
    fn a_uuid_request_id_is_allowed() {
        assert!(validate_request_id("request_id", "0192f0c1-7a3b-7c44-9d1e-2f3a4b5c6d7e").is_ok());
    }

    #[test]
    fn the_request_hash_tells_different_requests_apart() {
        assert_eq!(request_hash(b"one"), request_hash(b"one"));
        assert_ne!(request_hash(b"one"), request_hash(b"two"));
    }
}
