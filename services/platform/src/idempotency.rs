//! Request-id idempotency (AIP-155): a write retried with the same `request_id` returns the
//! first call's response instead of writing again, also when the two calls run concurrently.
//!
//! [`run`] is the one way to do a request-id-guarded write:
//!
//! ```ignore
//! idempotency::validate_request_id("request_id", &req.request_id)?; // at the edge
//! let mut tx = pool.begin().await?;
//! let about = [Subject::new("crm.things.v1.Thing", thing.id)];
//! let outcome = idempotency::run(&mut tx, "CreateThing", &req.request_id, &req, &about, async |tx| {
//!     let row = store::insert(tx, &thing).await?;
//!     Ok((pb::CreateThingResponse { thing: Some(row.to_proto()) }, row))
//! })
//! .await?;
//! match outcome {
//!     Outcome::Ran(response, row) => { /* commit, publish `row` */ }
//!     Outcome::Replayed(response) => { /* nothing was written */ }
//! }
//! ```
//!
//! A bulk RPC whose rows each stand for one request of a method (ImportCustomers rows are
//! CreateCustomer requests) claims its rows' ids together with [`claim_batch`], then stores
//! the responses with [`store_batch`] (or releases failed rows with [`release_batch`]) in the
//! same transaction: the same table, key and request hash as [`run`], so a row and a single
//! call with the same id and the same request replay each other.
//!
//! The request ids live in the `request_ids` table of the service's own schema, a platform
//! migration (`migrations/1000001_request_ids.sql`) that [`crate::db::Database::migrate`]
//! applies in every service's schema; the service's pool sets `search_path` to that schema, so
//! the statements here name the table unqualified.
//!
//! The claim is made inside the caller's transaction: a concurrent second insert of the same key
//! waits on the first transaction's row lock, then sees its committed response. Ids are
//! remembered for [`REMEMBER_FOR`]; [`purge_expired`] deletes older ones.
//!
//! A stored response may carry personal data, so each claim records the [`Subject`]s its
//! response is about. Erasing a subject (GDPR) calls [`forget_subject`] in the erasing
//! transaction: the subject's stored responses and request hashes are dropped, the keys stay.
//! A replay of a forgotten request is `FAILED_PRECONDITION` with reason
//! [`REQUEST_SUBJECT_ERASED`]: neither the old response (the erased data) nor a new run of the
//! write (which would bring the subject back) is an acceptable answer.

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgTransaction};

use crate::error::ApiError;

/// How long a request id is remembered.
pub const REMEMBER_FOR: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest request id accepted, in characters.
pub const MAX_REQUEST_ID_LEN: usize = 100;

/// The `ErrorInfo.reason` of a replay whose stored response was forgotten by an erasure.
pub const REQUEST_SUBJECT_ERASED: &str = "REQUEST_SUBJECT_ERASED";

/// A resource a stored response describes, e.g. the customer a CreateCustomer response holds:
/// erasing its personal data must forget that response too ([`forget_subject`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject(String);

impl Subject {
    /// The resource `id` of type `resource_type` (the full name of its message type, as the
    /// change feed names it, e.g. `crm.customer.v1.Customer`).
    pub fn new(resource_type: &str, id: impl fmt::Display) -> Self {
        Self(format!("{resource_type}/{id}"))
    }

    /// As stored: `<resource type>/<id>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What [`run`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<R, T> {
    /// The work ran in the caller's transaction (its response is stored there, for replays):
    /// the response and whatever else the work handed back, for the caller to finish with
    /// (commit, publish).
    Ran(R, T),
    /// An earlier call with this request id and the same request committed this response;
    /// the work did not run and the transaction wrote nothing.
    Replayed(R),
}

impl<R, T> Outcome<R, T> {
    /// The response, whether it was made now or replayed.
    pub fn into_response(self) -> R {
        match self {
            Self::Ran(response, _) | Self::Replayed(response) => response,
        }
    }

    /// Whether the response is an earlier call's.
    pub fn is_replay(&self) -> bool {
        matches!(self, Self::Replayed(_))
    }
}

/// The outcome of claiming a request id.
#[derive(Debug)]
enum Claim {
    /// First use: do the work, then store its response.
    New,
    /// Seen before with the same request: return this stored response.
    Replay(Vec<u8>),
}

/// The answer to a replay of a request whose subject was erased after it ran.
fn subject_erased(request_id: &str) -> ApiError {
    ApiError::FailedPrecondition {
        reason: REQUEST_SUBJECT_ERASED,
        message: format!(
            "request_id {request_id:?} was used by a write whose data has since been erased; \
             its response is not kept and the write is not done again"
        ),
    }
}

/// Hashes the encoded request, so reuse of an id for a different request is detected.
pub fn request_hash(encoded_request: &[u8]) -> Vec<u8> {
    Sha256::digest(encoded_request).to_vec()
}

/// Checks the shape of a request id; empty means "no idempotency asked for". Call it at the
/// edge with the field's path, before any transaction begins.
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

/// Does `work` once per (`method`, `request_id`) and `request`, in the caller's transaction.
/// `about` names every resource whose data the response carries (none for a response without
/// personal data), so that erasing one of them forgets the response ([`forget_subject`]).
///
/// - A new request id is claimed in `tx`, `work` runs on `tx`, and its response is stored in
///   `tx` next to the claim: [`Outcome::Ran`]. The caller commits (the claim and the work
///   become visible together) or rolls back (the id stays free).
/// - The same id with the same request (the hash of its encoding) returns the committed
///   response without running `work`: [`Outcome::Replayed`]. A concurrent identical call waits
///   on the claim's row lock until the first transaction ends, so `work` runs once.
/// - The same id with a different request is `ALREADY_EXISTS` with reason
///   `REQUEST_ID_REUSED`, and nothing runs.
/// - An id whose response was forgotten because one of its subjects was erased is
///   `FAILED_PRECONDITION` with reason [`REQUEST_SUBJECT_ERASED`], whatever the request, and
///   nothing runs.
/// - An empty `request_id` (the caller asked for no idempotency) runs `work` without a claim.
///
/// When `work` fails, its error is returned and the claim is released, so nothing is stored
/// even if the caller commits anyway; a retry runs the work again.
pub async fn run<Req, Resp, T, E, F>(
    tx: &mut PgTransaction<'_>,
    method: &str,
    request_id: &str,
    request: &Req,
    about: &[Subject],
    work: F,
) -> Result<Outcome<Resp, T>, E>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
    E: From<ApiError>,
    F: AsyncFnOnce(&mut PgConnection) -> Result<(Resp, T), E>,
{
    let conn: &mut PgConnection = tx;
    if request_id.is_empty() {
        let (response, extra) = work(conn).await?;
        return Ok(Outcome::Ran(response, extra));
    }
    let hash = request_hash(&request.encode_to_vec());
    if let Claim::Replay(stored) = claim(conn, method, request_id, &hash, about).await? {
        let response = Resp::decode(stored.as_slice()).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!(
                "stored response of {method} {request_id}: {e}"
            ))
        })?;
        return Ok(Outcome::Replayed(response));
    }
    match work(&mut *conn).await {
        Ok((response, extra)) => {
            store_response(conn, method, request_id, &response).await?;
            Ok(Outcome::Ran(response, extra))
        }
        Err(err) => {
            release(conn, method, request_id).await;
            Err(err)
        }
    }
}

/// Claims `request_id` for `method` inside the caller's transaction.
async fn claim(
    conn: &mut PgConnection,
    method: &str,
    request_id: &str,
    hash: &[u8],
    about: &[Subject],
) -> Result<Claim, ApiError> {
    let subjects: Vec<&str> = about.iter().map(Subject::as_str).collect();
    // An expired claim is taken over as if new; a live one is left alone and read back.
    let inserted: Option<bool> = sqlx::query_scalar(
        "INSERT INTO request_ids (method, request_id, request_hash, subjects) \
         VALUES ($1, $2, $3, $5) \
         ON CONFLICT (method, request_id) DO UPDATE \
           SET request_hash = EXCLUDED.request_hash, subjects = EXCLUDED.subjects, \
               response = NULL, forget_time = NULL, create_time = now() \
           WHERE request_ids.create_time < now() - make_interval(secs => $4) \
         RETURNING true",
    )
    .bind(method)
    .bind(request_id)
    .bind(hash)
    .bind(REMEMBER_FOR.as_secs_f64())
    .bind(&subjects)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_some() {
        return Ok(Claim::New);
    }
    let (stored_hash, response, forgotten): (Vec<u8>, Option<Vec<u8>>, bool) = sqlx::query_as(
        "SELECT request_hash, response, forget_time IS NOT NULL FROM request_ids \
         WHERE method = $1 AND request_id = $2",
    )
    .bind(method)
    .bind(request_id)
    .fetch_one(&mut *conn)
    .await?;
    // Checked before the hash, which the erasure dropped: any request under this id is answered
    // the same way.
    if forgotten {
        return Err(subject_erased(request_id));
    }
    if stored_hash != hash {
        return Err(reused(method, request_id));
    }
    match response {
        Some(bytes) => Ok(Claim::Replay(bytes)),
        // The row is committed only together with its response, so this means a bug.
        None => Err(ApiError::Internal(anyhow::anyhow!(
            "request id {request_id} claimed without a response"
        ))),
    }
}

/// The error of a request id reused for a different request. It names the method whose ids it
/// shares, since a caller may have used the id through another RPC standing for that method
/// (an ImportCustomers row is a CreateCustomer).
fn reused(method: &str, request_id: &str) -> ApiError {
    ApiError::AlreadyExists {
        reason: "REQUEST_ID_REUSED",
        message: format!(
            "request_id {request_id:?} was already used for a different {method} request; \
             an id stands for one request (the same content), so send a new id for a new one"
        ),
    }
}

/// What [`claim_batch`] found for one request of a batch.
#[derive(Debug)]
pub enum BatchClaim<R> {
    /// First use, now claimed in the caller's transaction: do the work, then store its
    /// response with [`store_batch`] (or give the claim up with [`release_batch`]).
    New,
    /// An earlier call with this id and the same request committed this response.
    Replayed(R),
    /// The id cannot be used, answered as [`run`] answers: it was used for a different request
    /// (`ALREADY_EXISTS`, `REQUEST_ID_REUSED`), or its response was forgotten because its
    /// subject was erased (`FAILED_PRECONDITION`, [`REQUEST_SUBJECT_ERASED`]).
    Refused(ApiError),
}

/// A request id [`claim_batch`] found already taken.
#[derive(sqlx::FromRow)]
struct StoredClaim {
    request_id: String,
    request_hash: Vec<u8>,
    response: Option<Vec<u8>>,
    /// Its response was forgotten because a subject of it was erased.
    forgotten: bool,
}

/// Claims many request ids of `method` at once in the caller's transaction: the batch form of
/// [`run`]'s claim, for a bulk RPC whose rows each stand for one `method` request (so a row
/// and a single call with the same id and the same request answer alike). One claim per
/// `(request_id, request)`, in that order; ids must be non-empty and distinct within the
/// batch. A concurrent claim of the same id waits on the other transaction, as in [`run`].
pub async fn claim_batch<Req, Resp>(
    conn: &mut PgConnection,
    method: &str,
    requests: &[(&str, &Req)],
) -> Result<Vec<BatchClaim<Resp>>, ApiError>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = requests.iter().map(|(id, _)| *id).collect();
    let hashes: Vec<Vec<u8>> = requests
        .iter()
        .map(|(_, request)| request_hash(&request.encode_to_vec()))
        .collect();
    // Claimed in id order, so two batches sharing ids wait on each other instead of deadlocking.
    let claimed: Vec<String> = sqlx::query_scalar(
        "INSERT INTO request_ids (method, request_id, request_hash) \
         SELECT $1, r.id, r.hash FROM UNNEST($2::text[], $3::bytea[]) AS r(id, hash) \
         ORDER BY r.id \
         ON CONFLICT (method, request_id) DO UPDATE \
           SET request_hash = EXCLUDED.request_hash, subjects = '{}', response = NULL, \
               forget_time = NULL, create_time = now() \
           WHERE request_ids.create_time < now() - make_interval(secs => $4) \
         RETURNING request_id",
    )
    .bind(method)
    .bind(&ids)
    .bind(&hashes)
    .bind(REMEMBER_FOR.as_secs_f64())
    .fetch_all(&mut *conn)
    .await?;
    let claimed: std::collections::HashSet<String> = claimed.into_iter().collect();
    let seen: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !claimed.contains(*id))
        .collect();
    let mut stored: std::collections::HashMap<String, StoredClaim> =
        std::collections::HashMap::new();
    if !seen.is_empty() {
        let rows: Vec<StoredClaim> = sqlx::query_as(
            "SELECT request_id, request_hash, response, forget_time IS NOT NULL AS forgotten \
             FROM request_ids WHERE method = $1 AND request_id = ANY($2)",
        )
        .bind(method)
        .bind(&seen)
        .fetch_all(&mut *conn)
        .await?;
        stored = rows
            .into_iter()
            .map(|row| (row.request_id.clone(), row))
            .collect();
    }
    let mut claims = Vec::with_capacity(requests.len());
    for (id, hash) in ids.iter().zip(&hashes) {
        if claimed.contains(*id) {
            claims.push(BatchClaim::New);
            continue;
        }
        let claim = match stored.get(*id) {
            // As in `claim`: checked before the hash, which the erasure dropped.
            Some(StoredClaim {
                forgotten: true, ..
            }) => BatchClaim::Refused(subject_erased(id)),
            Some(row) if row.request_hash != *hash => BatchClaim::Refused(reused(method, id)),
            Some(StoredClaim {
                response: Some(bytes),
                ..
            }) => BatchClaim::Replayed(Resp::decode(bytes.as_slice()).map_err(|e| {
                ApiError::Internal(anyhow::anyhow!("stored response of {method} {id}: {e}"))
            })?),
            // A claim is committed only together with its response, so this means a bug.
            _ => {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "request id {id} of {method} neither claimed nor stored"
                )));
            }
        };
        claims.push(claim);
    }
    Ok(claims)
}

/// Stores the responses of request ids claimed by [`claim_batch`], in the same transaction as
/// the work, each with the one subject its response is about (so that erasing the subject
/// forgets it, as with [`run`]'s `about`).
pub async fn store_batch<Resp: prost::Message>(
    conn: &mut PgConnection,
    method: &str,
    responses: &[(&str, &Resp, &Subject)],
) -> Result<(), ApiError> {
    if responses.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = responses.iter().map(|(id, _, _)| *id).collect();
    let bytes: Vec<Vec<u8>> = responses
        .iter()
        .map(|(_, r, _)| r.encode_to_vec())
        .collect();
    let subjects: Vec<&str> = responses.iter().map(|(_, _, s)| s.as_str()).collect();
    sqlx::query(
        "UPDATE request_ids AS r SET response = d.response, subjects = ARRAY[d.subject] \
         FROM UNNEST($2::text[], $3::bytea[], $4::text[]) AS d(id, response, subject) \
         WHERE r.method = $1 AND r.request_id = d.id",
    )
    .bind(method)
    .bind(&ids)
    .bind(&bytes)
    .bind(&subjects)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Gives up claims made by [`claim_batch`] whose work failed, so a retry runs it again.
pub async fn release_batch(
    conn: &mut PgConnection,
    method: &str,
    request_ids: &[&str],
) -> Result<(), ApiError> {
    if request_ids.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM request_ids WHERE method = $1 AND request_id = ANY($2)")
        .bind(method)
        .bind(request_ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Stores the response of a claimed request id, in the same transaction as the work.
async fn store_response(
    conn: &mut PgConnection,
    method: &str,
    request_id: &str,
    response: &impl prost::Message,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE request_ids SET response = $3 WHERE method = $1 AND request_id = $2")
        .bind(method)
        .bind(request_id)
        .bind(response.encode_to_vec())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Gives up the claim of a failed work. Best effort: when the work's failure aborted the
/// transaction this fails too, and the caller cannot commit the claim anyway.
async fn release(conn: &mut PgConnection, method: &str, request_id: &str) {
    let released = sqlx::query("DELETE FROM request_ids WHERE method = $1 AND request_id = $2")
        .bind(method)
        .bind(request_id)
        .execute(&mut *conn)
        .await;
    if let Err(err) = released {
        tracing::debug!(error = %err, method, "request id not released; the transaction is aborted");
    }
}

/// Forgets every stored response about `subject`, in the caller's (erasing) transaction: the
/// response and the request hash (a hash of personal data is personal data too) are dropped,
/// the key is kept until it expires so that a replay is answered [`REQUEST_SUBJECT_ERASED`].
/// Returns how many responses were forgotten.
///
/// Run it after the subject's row is locked: a write about the subject that committed before
/// the lock was granted is then visible to this statement (READ COMMITTED), and one that comes
/// after finds the subject erased.
pub async fn forget_subject(conn: &mut PgConnection, subject: &Subject) -> Result<u64, ApiError> {
    let done = sqlx::query(
        "UPDATE request_ids SET response = NULL, request_hash = ''::bytea, forget_time = now() \
         WHERE subjects @> ARRAY[$1::text] AND forget_time IS NULL",
    )
    .bind(subject.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes request ids older than [`REMEMBER_FOR`] from the `request_ids` of the pool's
/// schema; returns how many.
pub async fn purge_expired(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM request_ids WHERE create_time < now() - make_interval(secs => $1)",
    )
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
