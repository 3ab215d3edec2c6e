//! Change feeds, both directions: the one way a service publishes its changes and follows
//! another's.
//!
//! - **Outbox** ([`append`]): a write appends a [`NewChange`] to the platform-owned table
//!   `change_events` of its schema, in its own transaction, so an event exists exactly when the
//!   change committed. After commit it calls [`Feed::committed`] to wake readers at once.
//! - **Watch** ([`Feed::watch`]): a `Watch<Resource>Changes` RPC streams [`ChangeEvent`]s (the
//!   `crm.common.v1.ChangeHeader` plus the encoded resource) from a resume token or a start
//!   time, in sequence order, waiting for sequence gaps of transactions still committing. One
//!   LISTEN connection per process wakes every open stream; a slow poll covers a lost
//!   notification. Events are kept for [`RETENTION`]; an older token is `OUT_OF_RANGE` with
//!   reason `RESUME_TOKEN_EXPIRED`. The service only maps an event to its own message.
//! - **Durable consumer** ([`consumer`]): a background task that follows another service's
//!   Watch RPC over gRPC with a checkpoint in the consumer's own schema.
//!
//! A service publishing a feed:
//!
//! ```ignore
//! let feed = Feed::start(&database, &ctx.shutdown);            // in module()
//! feed::append(&mut tx, SCHEMA, &change).await?;               // in each write, last
//! feed::append_all(&mut tx, SCHEMA, &changes).await?;          // or all of a bulk write's
//! tx.commit().await?;
//! feed.committed();
//! let events = feed.watch(RESOURCE_TYPE, WatchRequest { .. }).await?;   // the Watch RPC
//! Ok(Response::new(Box::pin(events.map(|e| e.map(to_my_event)))))
//! ```
//!
//! The tables are platform migrations (`change_events`, `consumer_checkpoints`), so every
//! service's schema has them.

pub mod consumer;
mod wake;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crm_proto::crm::common::v1::{ChangeHeader, ChangeType, Principal, PrincipalKind};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch as signal};
use tokio_util::sync::CancellationToken;

pub use watch::{WatchRequest, change_types};

use crate::db::Database;

/// How long events are kept.
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// How often expired events are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// One change to append to the outbox: the header's fields and the resource after it.
#[derive(Debug, Clone)]
pub struct NewChange<'a> {
    /// Full name of the resource's message type, e.g. `crm.customer.v1.Customer`.
    pub resource_type: &'a str,
    /// Id of the resource that changed.
    pub resource_id: String,
    /// The resource's version after the change.
    pub version: i64,
    /// What happened.
    pub change_type: ChangeType,
    /// Update-mask paths the change touched (UPDATED only).
    pub changed_paths: &'a [String],
    /// For MERGED: the id the resource was merged into.
    pub merged_into_id: Option<String>,
    /// Who made the change.
    pub actor: &'a Principal,
    /// The resource as encoded protobuf right after the change; `None` for a tombstone.
    pub snapshot: Option<Vec<u8>>,
}

/// One event as a Watch RPC sends it: the header (with its resume token) and the encoded
/// resource right after the change (`None` for tombstones and erased resources).
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// The `crm.common.v1.ChangeHeader` of the event.
    pub header: ChangeHeader,
    /// The resource as encoded protobuf.
    pub snapshot: Option<Vec<u8>>,
}

impl ChangeEvent {
    /// The snapshot decoded as `M`; `None` for tombstones (and for undecodable bytes, which
    /// only a schema mix-up could produce: the event itself still counts).
    pub fn decode_snapshot<M: prost::Message + Default>(&self) -> Option<M> {
        self.snapshot
            .as_deref()
            .and_then(|bytes| M::decode(bytes).ok())
    }
}

/// How an actor's kind is stored: the enum name without its prefix (`USER`).
fn kind_name(kind: i32) -> &'static str {
    match PrincipalKind::try_from(kind).unwrap_or_default() {
        PrincipalKind::Team => "TEAM",
        PrincipalKind::Agent => "AGENT",
        PrincipalKind::Service => "SERVICE",
        // Events carry the caller of a write; one without a kind was a user.
        PrincipalKind::User | PrincipalKind::Unspecified => "USER",
    }
}

/// The stored kind as the enum; an unknown name reads as USER.
fn kind_from_name(name: &str) -> PrincipalKind {
    PrincipalKind::from_str_name(&format!("PRINCIPAL_KIND_{name}")).unwrap_or(PrincipalKind::User)
}

/// Appends a change event to `schema`'s outbox inside the caller's transaction and returns its
/// sequence number. Call it last, just before commit, so the number is taken as late as
/// possible (readers wait for lower numbers still in flight), then [`Feed::committed`] after
/// the commit.
pub async fn append(
    tx: &mut PgConnection,
    schema: &str,
    change: &NewChange<'_>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "INSERT INTO {schema}.change_events (resource_type, resource_id, change_type, version, \
           changed_paths, merged_into_id, actor_kind, actor_id, snapshot) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq"
    ))
    .bind(change.resource_type)
    .bind(&change.resource_id)
    .bind(change.change_type.as_str_name())
    .bind(change.version)
    .bind(change.changed_paths)
    .bind(change.merged_into_id.as_deref())
    .bind(kind_name(change.actor.kind))
    .bind(&change.actor.id)
    .bind(change.snapshot.as_deref())
    .fetch_one(tx)
    .await
}

/// [`append`] for many changes of one transaction in one statement (a bulk write), in the
/// order given; returns their sequence numbers in that order.
pub async fn append_all(
    tx: &mut PgConnection,
    schema: &str,
    changes: &[NewChange<'_>],
) -> Result<Vec<i64>, sqlx::Error> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = sqlx::QueryBuilder::new(format!(
        "INSERT INTO {schema}.change_events (resource_type, resource_id, change_type, version, \
           changed_paths, merged_into_id, actor_kind, actor_id, snapshot) "
    ));
    query.push_values(changes, |mut row, change| {
        row.push_bind(change.resource_type)
            .push_bind(&change.resource_id)
            .push_bind(change.change_type.as_str_name())
            .push_bind(change.version)
            .push_bind(change.changed_paths)
            .push_bind(change.merged_into_id.as_deref())
            .push_bind(kind_name(change.actor.kind))
            .push_bind(&change.actor.id)
            .push_bind(change.snapshot.as_deref());
    });
    // Sequence numbers are taken in the VALUES order; sorted, they match `changes`.
    query.push(" RETURNING seq");
    let mut seqs: Vec<i64> = query.build_query_scalar().fetch_all(tx).await?;
    seqs.sort_unstable();
    Ok(seqs)
}

/// Drops the snapshots of every event of one resource (GDPR erasure): the events stay, as
/// tombstones, so consumers still see what happened.
pub async fn erase_snapshots(
    conn: &mut PgConnection,
    schema: &str,
    resource_type: &str,
    resource_id: &str,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(&format!(
        "UPDATE {schema}.change_events SET snapshot = NULL \
         WHERE resource_type = $1 AND resource_id = $2 AND snapshot IS NOT NULL"
    ))
    .bind(resource_type)
    .bind(resource_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes events older than `age`, except the newest event: it marks how far the feed went,
/// so a resume token from before a purge is still recognised as expired. Returns how many.
pub async fn purge_older_than(
    db: &PgPool,
    schema: &str,
    age: Duration,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(&format!(
        "DELETE FROM {schema}.change_events \
         WHERE change_time < now() - make_interval(secs => $1) \
           AND seq < (SELECT max(seq) FROM {schema}.change_events)"
    ))
    .bind(age.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// A service's change feed: its outbox in the service's schema, the wake-ups of its readers and
/// its retention. Cheap to clone; every clone shares the background tasks.
#[derive(Clone, Debug)]
pub struct Feed {
    db: PgPool,
    schema: &'static str,
    /// Bumped on every notification that a write committed (in any instance).
    readers: signal::Receiver<u64>,
    /// Told after each local commit; coalesced into one NOTIFY.
    committed: Arc<Notify>,
    /// Ends open streams when the process shuts down, so they do not hold up the drain.
    shutdown: CancellationToken,
}

impl Feed {
    /// The feed of `database`'s schema. Spawns, until `shutdown`: the LISTEN connection that
    /// wakes readers, the notifier that tells other instances about local commits, and the
    /// purge of events past [`RETENTION`]. Open streams end with UNAVAILABLE on `shutdown`
    /// (the caller resumes elsewhere with its last token).
    pub fn start(database: &Database, shutdown: &CancellationToken) -> Self {
        let (notify, readers) = signal::channel(0u64);
        let committed = Arc::new(Notify::new());
        let channel = wake::channel_name(database.schema);
        wake::spawn_listener(
            database.pool.clone(),
            channel.clone(),
            notify,
            shutdown.clone(),
        );
        wake::spawn_notifier(
            database.pool.clone(),
            channel,
            committed.clone(),
            shutdown.clone(),
        );
        spawn_purge(database.pool.clone(), database.schema, shutdown.clone());
        Self {
            db: database.pool.clone(),
            schema: database.schema,
            readers,
            committed,
            shutdown: shutdown.clone(),
        }
    }

    /// The schema whose outbox this is.
    pub fn schema(&self) -> &'static str {
        self.schema
    }

    /// Wakes every reader of the feed, in every instance: call it after each commit that
    /// appended events. (Without it readers still see the events, after their fallback poll.)
    pub fn committed(&self) {
        self.committed.notify_one();
    }
}

/// Purges events past [`RETENTION`] every [`PURGE_INTERVAL`] until `shutdown`.
fn spawn_purge(db: PgPool, schema: &'static str, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PURGE_INTERVAL) => {}
            }
            match purge_older_than(&db, schema, RETENTION).await {
                Ok(n) if n > 0 => {
                    tracing::info!(schema, purged = n, "expired change events deleted")
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(schema, error = %err, "purging change events failed"),
            }
        }
    });
}

/// A row of `change_events`.
#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    resource_type: String,
    resource_id: String,
    change_type: String,
    version: i64,
    changed_paths: Vec<String>,
    merged_into_id: Option<String>,
    actor_kind: String,
    actor_id: String,
    change_time: DateTime<Utc>,
    snapshot: Option<Vec<u8>>,
}

impl EventRow {
    fn change_type(&self) -> ChangeType {
        ChangeType::from_str_name(&self.change_type).unwrap_or_default()
    }

    fn into_event(self) -> ChangeEvent {
        let change_type = self.change_type();
        let header = ChangeHeader {
            resume_token: self.seq.to_string(),
            change_type: change_type as i32,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            version: self.version,
            changed_paths: (!self.changed_paths.is_empty()).then_some(prost_types::FieldMask {
                paths: self.changed_paths,
            }),
            change_time: Some(prost_types::Timestamp {
                seconds: self.change_time.timestamp(),
                nanos: self.change_time.timestamp_subsec_nanos() as i32,
            }),
            actor: Some(Principal {
                kind: kind_from_name(&self.actor_kind) as i32,
                id: self.actor_id,
            }),
            merged_into_id: self.merged_into_id.unwrap_or_default(),
        };
        ChangeEvent {
            header,
            snapshot: self.snapshot,
        }
    }
}
