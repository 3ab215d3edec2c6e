//! The change feed behind WatchCustomerChanges: events are read from `customer.changes` in
//! sequence order; one LISTEN connection per process wakes every open stream when a write
//! commits, with a slow poll as the fallback should a notification be missed.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use crm_platform::ApiError;
use crm_proto::crm::common::v1::{ChangeHeader, ChangeType};
use crm_proto::crm::customer::v1 as pb;
use futures::Stream;
use prost::Message;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::domain;
use crate::error::Result;

/// How long events are kept.
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);
const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// How long a gap in sequence numbers may stay open before it is taken for a rolled-back insert.
/// The sequence number is taken by the last statement before commit, so a live transaction
/// fills its gap within milliseconds; this bound is far above that.
const GAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon to look again while waiting for a gap to fill.
const GAP_POLL: Duration = Duration::from_millis(20);
const BATCH: i64 = 500;

/// The sequence number a watch starts after.
pub async fn start_position(db: &PgPool, req: &pb::WatchCustomerChangesRequest) -> Result<i64> {
    if !req.resume_token.is_empty() {
        let seq: i64 = req
            .resume_token
            .parse()
            .ok()
            .filter(|s: &i64| *s >= 0)
            .ok_or_else(|| ApiError::invalid("resume_token", "is not a token this feed issued"))?;
        let oldest: Option<i64> = sqlx::query_scalar("SELECT min(seq) FROM customer.changes")
            .fetch_one(db)
            .await?;
        if let Some(oldest) = oldest
            && seq < oldest - 1
        {
            return Err(ApiError::OutOfRange {
                reason: "RESUME_TOKEN_EXPIRED",
                message: "the events after this resume_token are no longer kept; start without one"
                    .into(),
            }
            .into());
        }
        return Ok(seq);
    }
    if let Some(ts) = &req.start_time {
        let start = domain::timestamp_from_proto(ts)
            .ok_or_else(|| ApiError::invalid("start_time", "is not a valid timestamp"))?;
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT min(seq) - 1 FROM customer.changes WHERE change_time >= $1")
                .bind(start)
                .fetch_one(db)
                .await?;
        if let Some(seq) = seq {
            return Ok(seq);
        }
    }
    Ok(
        sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM customer.changes")
            .fetch_one(db)
            .await?,
    )
}

#[derive(sqlx::FromRow)]
struct ChangeRow {
    seq: i64,
    customer_id: Uuid,
    change_type: String,
    merged_into_id: Option<Uuid>,
    snapshot: Option<Vec<u8>>,
    change_time: chrono::DateTime<chrono::Utc>,
    version: Option<i64>,
    changed_paths: Vec<String>,
    actor_kind: String,
    actor_id: String,
}

/// `ChangeHeader.resource_type` of every event of this feed.
pub const RESOURCE_TYPE: &str = "crm.customer.v1.Customer";

impl ChangeRow {
    fn change_type(&self) -> ChangeType {
        ChangeType::from_str_name(&self.change_type).unwrap_or_default()
    }

    fn to_proto(&self) -> pb::WatchCustomerChangesResponse {
        let header = ChangeHeader {
            resume_token: self.seq.to_string(),
            change_type: self.change_type() as i32,
            resource_type: RESOURCE_TYPE.to_string(),
            resource_id: self.customer_id.to_string(),
            // Events written before versions were kept say 0.
            version: self.version.unwrap_or_default(),
            changed_paths: (!self.changed_paths.is_empty()).then(|| prost_types::FieldMask {
                paths: self.changed_paths.clone(),
            }),
            change_time: Some(domain::timestamp_to_proto(self.change_time)),
            actor: Some(domain::Principal::stored(&self.actor_kind, &self.actor_id).to_proto()),
            merged_into_id: self
                .merged_into_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
        };
        pb::WatchCustomerChangesResponse {
            event: Some(pb::CustomerChangeEvent {
                header: Some(header),
                customer: self
                    .snapshot
                    .as_deref()
                    .and_then(|bytes| pb::Customer::decode(bytes).ok()),
            }),
        }
    }
}

/// The change types a watch asks for (empty: all); UNSPECIFIED and unknown values are
/// INVALID_ARGUMENT naming their index.
pub fn change_types(req: &pb::WatchCustomerChangesRequest) -> Result<Vec<ChangeType>> {
    let mut v = crm_platform::FieldViolations::new();
    let mut types = Vec::new();
    for (i, value) in req.change_types.iter().enumerate() {
        match ChangeType::try_from(*value) {
            Ok(ChangeType::Unspecified) | Err(_) => v.add(
                format!("change_types[{i}]"),
                "must be CREATED, UPDATED, DELETED, UNDELETED, MERGED or ERASED",
            ),
            Ok(kind) => types.push(kind),
        }
    }
    v.into_result()?;
    Ok(types)
}

/// Streams events after `after` until the caller goes away.
///
/// Only events of `types` are sent (all when empty). The filter runs here, not in SQL: the
/// reader must see every sequence number to tell a gap still filling from one that never will.
pub fn stream(
    db: PgPool,
    mut changes: watch::Receiver<u64>,
    mut after: i64,
    types: Vec<ChangeType>,
) -> impl Stream<Item = Result<pb::WatchCustomerChangesResponse, Status>> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        // The first missing sequence number and when it was first seen missing.
        let mut gap: Option<(i64, Instant)> = None;
        loop {
            let batch: Result<Vec<ChangeRow>, sqlx::Error> = sqlx::query_as(
                "SELECT seq, customer_id, change_type, merged_into_id, snapshot, change_time, \
                   version, changed_paths, actor_kind, actor_id \
                 FROM customer.changes WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(BATCH)
            .fetch_all(&db)
            .await;
            let rows = match batch {
                Ok(rows) => rows,
                Err(err) => {
                    let _ = tx.send(Err(Status::from(ApiError::from(err)))).await;
                    return;
                }
            };
            let mut waiting_for_gap = false;
            for row in &rows {
                if row.seq != after + 1 {
                    let missing = after + 1;
                    match gap {
                        Some((seq, since)) if seq == missing && since.elapsed() >= GAP_TIMEOUT => {}
                        Some((seq, _)) if seq == missing => {
                            waiting_for_gap = true;
                            break;
                        }
                        _ => {
                            gap = Some((missing, Instant::now()));
                            waiting_for_gap = true;
                            break;
                        }
                    }
                }
                gap = None;
                after = row.seq;
                let wanted = types.is_empty() || types.contains(&row.change_type());
                if wanted && tx.send(Ok(row.to_proto())).await.is_err() {
                    return;
                }
            }
            if waiting_for_gap {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(GAP_POLL) => {}
                }
                continue;
            }
            if rows.len() as i64 == BATCH {
                continue;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(FALLBACK_POLL) => {}
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Wakes feed readers in every instance after commits: writers call `notify_one` on `wake`, and
/// this loop turns bursts of them into one `NOTIFY customer_changes`. NOTIFY inside the write
/// transaction would take PostgreSQL's global notify lock until commit and serialize all writes.
pub fn spawn_notifier(
    db: PgPool,
    wake: std::sync::Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = wake.notified() => {}
            }
            if let Err(err) = sqlx::query("SELECT pg_notify('customer_changes', '')")
                .execute(&db)
                .await
            {
                tracing::debug!(error = %err, "cannot notify feed readers; they poll instead");
            }
            // Coalesce: commits in the next few milliseconds ride on the next notification.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

/// Bumps `notify` for every `customer_changes` notification; returns only on a connection error.
async fn listen(db: &PgPool, notify: &watch::Sender<u64>) -> Result<Infallible, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(db).await?;
    listener.listen("customer_changes").await?;
    loop {
        listener.recv().await?;
        notify.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Listens for `customer_changes` notifications and bumps `notify` for every one, until
/// `shutdown`; reconnects after errors.
pub fn spawn_listener(db: PgPool, notify: watch::Sender<u64>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let listened = listen(&db, &notify);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = listened => {
                    let Err(err) = result;
                    tracing::debug!(error = %err, "change listener lost its connection; polling until it is back");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    });
}
