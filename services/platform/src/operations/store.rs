//! The `operations` table (migration 1000003). Names are unqualified: the pool's
//! `search_path` is the service's schema.

use std::time::Duration;

use chrono::{DateTime, Utc};
use crm_proto::crm::common::v1::{OperationMetadata, Principal as CommonPrincipal};
use crm_proto::google::longrunning::{Operation, operation};
use crm_proto::google::rpc;
use prost::Message;
use sqlx::{FromRow, PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{METADATA_TYPE, operation_name, pack};
use crate::filter::SqlFilter;

/// Where an operation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "SCREAMING_SNAKE_CASE")]
pub(super) enum State {
    /// Waiting for a worker.
    Queued,
    /// A worker holds its lease.
    Running,
    /// Done with a response.
    Succeeded,
    /// Done with an error.
    Failed,
    /// Done: cancelled before it finished.
    Cancelled,
}

/// Every column a read needs.
const COLUMNS: &str = "id, state, stage, items_done, items_total, cancel_requested, \
    requested_by_kind, requested_by_id, response, error, create_time, update_time, end_time";

/// One stored operation.
#[derive(Debug, Clone, FromRow)]
pub(super) struct OperationRow {
    pub id: Uuid,
    pub state: State,
    pub stage: String,
    pub items_done: i64,
    pub items_total: Option<i64>,
    pub cancel_requested: bool,
    pub requested_by_kind: i32,
    pub requested_by_id: String,
    pub response: Option<Vec<u8>>,
    pub error: Option<Vec<u8>>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub end_time: Option<DateTime<Utc>>,
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

impl OperationRow {
    /// The operation as GetOperation returns it.
    pub fn to_proto(&self) -> Operation {
        let metadata = OperationMetadata {
            create_time: Some(timestamp(self.create_time)),
            update_time: Some(timestamp(self.update_time)),
            end_time: self.end_time.map(timestamp),
            stage: self.stage.clone(),
            items_done: self.items_done,
            items_total: self.items_total,
            cancel_requested: self.cancel_requested,
            requested_by: Some(CommonPrincipal {
                kind: self.requested_by_kind,
                id: self.requested_by_id.clone(),
            }),
        };
        let result = match self.state {
            State::Queued | State::Running => None,
            State::Succeeded => self
                .response
                .as_deref()
                .and_then(|bytes| prost_types::Any::decode(bytes).ok())
                .map(operation::Result::Response),
            State::Failed | State::Cancelled => self
                .error
                .as_deref()
                .and_then(|bytes| rpc::Status::decode(bytes).ok())
                .map(operation::Result::Error),
        };
        Operation {
            name: operation_name(self.id),
            metadata: Some(pack(METADATA_TYPE, &metadata)),
            done: self.end_time.is_some(),
            result,
        }
    }
}

/// Queues a new operation.
pub(super) async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    kind: &str,
    request: &[u8],
    requested_by: &CommonPrincipal,
) -> Result<OperationRow, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO operations (id, kind, state, request, stage, requested_by_kind, requested_by_id) \
         VALUES ($1, $2, 'QUEUED', $3, 'queued', $4, $5) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(kind)
    .bind(request)
    .bind(requested_by.kind)
    .bind(&requested_by.id)
    .fetch_one(conn)
    .await
}

/// The operation `id`, if stored.
pub(super) async fn fetch(pool: &PgPool, id: Uuid) -> Result<Option<OperationRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM operations WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// Up to `limit` operations matching `filter`, newest first, after the id `before`
/// (exclusive) when given. Ids are UUIDv7, so id order is creation order.
pub(super) async fn list(
    pool: &PgPool,
    filter: &SqlFilter,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<OperationRow>, sqlx::Error> {
    let mut query =
        QueryBuilder::<Postgres>::new(format!("SELECT {COLUMNS} FROM operations WHERE ("));
    filter.push_to(&mut query);
    query.push(")");
    if let Some(before) = before {
        query.push(" AND id < ").push_bind(before);
    }
    query.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    query.build_query_as().fetch_all(pool).await
}

/// Asks operation `id` to stop: a queued one ends CANCELLED at once (no worker has it), a
/// running one is flagged for its worker. Returns whether the operation exists.
pub(super) async fn request_cancel(
    pool: &PgPool,
    id: Uuid,
    cancelled: &rpc::Status,
) -> Result<bool, sqlx::Error> {
    let found: Option<bool> = sqlx::query_scalar(
        "UPDATE operations SET \
           cancel_requested = cancel_requested OR end_time IS NULL, \
           update_time = CASE WHEN end_time IS NULL THEN now() ELSE update_time END, \
           error = CASE WHEN state = 'QUEUED' THEN $2 ELSE error END, \
           end_time = CASE WHEN state = 'QUEUED' THEN now() ELSE end_time END, \
           state = CASE WHEN state = 'QUEUED' THEN 'CANCELLED' ELSE state END \
         WHERE id = $1 RETURNING true",
    )
    .bind(id)
    .bind(cancelled.encode_to_vec())
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

/// What DeleteOperation found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Deleted {
    /// It was done and is gone now.
    Yes,
    /// It is still queued or running.
    NotDone,
    /// No such operation.
    NotFound,
}

/// Deletes operation `id` if it is done.
pub(super) async fn delete_done(pool: &PgPool, id: Uuid) -> Result<Deleted, sqlx::Error> {
    // One statement, so existence and deletion are seen at once. The SELECT reads the snapshot
    // from before the DELETE: a row that existed is found whether or not it is gone now.
    let outcome: Option<bool> = sqlx::query_scalar(
        "WITH gone AS (DELETE FROM operations WHERE id = $1 AND end_time IS NOT NULL RETURNING id) \
         SELECT EXISTS (SELECT 1 FROM gone) FROM operations o WHERE o.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(match outcome {
        Some(true) => Deleted::Yes,
        Some(false) => Deleted::NotDone,
        None => Deleted::NotFound,
    })
}

/// An operation a worker has just claimed.
#[derive(Debug, FromRow)]
pub(super) struct Claimed {
    pub id: Uuid,
    pub kind: String,
    pub request: Vec<u8>,
    /// RUNNING means the previous worker's lease expired: its process stopped.
    pub previous_state: State,
    pub cancel_requested: bool,
}

/// Claims the oldest queued operation of one of `kinds`, or a running one whose lease expired,
/// for `owner` for `lease`. Rows other workers hold locks on are skipped, not waited for.
pub(super) async fn claim(
    pool: &PgPool,
    owner: Uuid,
    kinds: &[&str],
    lease: Duration,
) -> Result<Option<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "WITH next AS ( \
           SELECT id, state FROM operations \
           WHERE kind = ANY($2) AND (state = 'QUEUED' \
             OR (state = 'RUNNING' AND lease_expire_time < now())) \
           ORDER BY create_time LIMIT 1 FOR UPDATE SKIP LOCKED) \
         UPDATE operations o SET state = 'RUNNING', lease_owner = $1, \
           lease_expire_time = now() + make_interval(secs => $3), attempts = attempts + 1, \
           stage = CASE WHEN next.state = 'QUEUED' THEN 'running' ELSE 'resuming' END, \
           update_time = now() \
         FROM next WHERE o.id = next.id \
         RETURNING o.id, o.kind, o.request, next.state AS previous_state, o.cancel_requested",
    )
    .bind(owner)
    .bind(kinds)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// Extends `owner`'s lease on `id` and records progress when given. Returns whether a cancel
/// was requested, or `None` when the lease is no longer `owner`'s (another worker took over).
pub(super) async fn renew(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    lease: Duration,
    progress: Option<(&str, i64, Option<i64>)>,
) -> Result<Option<bool>, sqlx::Error> {
    let (stage, done, total) = match progress {
        Some((stage, done, total)) => (Some(stage), Some(done), total),
        None => (None, None, None),
    };
    sqlx::query_scalar(
        "UPDATE operations SET lease_expire_time = now() + make_interval(secs => $3), \
           stage = coalesce($4, stage), items_done = coalesce($5, items_done), \
           items_total = CASE WHEN $4 IS NULL THEN items_total ELSE $6 END, \
           update_time = CASE WHEN $4 IS NULL THEN update_time ELSE now() END \
         WHERE id = $1 AND lease_owner = $2 AND state = 'RUNNING' \
         RETURNING cancel_requested",
    )
    .bind(id)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(stage)
    .bind(done)
    .bind(total)
    .fetch_optional(pool)
    .await
}

/// Ends `owner`'s operation `id` in `state` with its response or error. Returns whether it was
/// still `owner`'s to end.
pub(super) async fn finish(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    state: State,
    response: Option<&prost_types::Any>,
    error: Option<&rpc::Status>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE operations SET state = $3, response = $4, error = $5, end_time = now(), \
           update_time = now(), stage = lower($3), lease_owner = NULL, lease_expire_time = NULL \
         WHERE id = $1 AND lease_owner = $2 AND state = 'RUNNING'",
    )
    .bind(id)
    .bind(owner)
    .bind(state)
    .bind(response.map(Message::encode_to_vec))
    .bind(error.map(Message::encode_to_vec))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Hands `owner`'s operation `id` back to the queue (this process is stopping and the kind is
/// resumable), so another worker starts it without waiting for the lease to run out.
pub(super) async fn release(pool: &PgPool, id: Uuid, owner: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE operations SET state = 'QUEUED', stage = 'queued', lease_owner = NULL, \
           lease_expire_time = NULL, update_time = now() \
         WHERE id = $1 AND lease_owner = $2 AND state = 'RUNNING'",
    )
    .bind(id)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes operations that finished more than `retention` ago; returns how many.
pub(super) async fn purge_finished(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let done =
        sqlx::query("DELETE FROM operations WHERE end_time < now() - make_interval(secs => $1)")
            .bind(retention.as_secs_f64())
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}
