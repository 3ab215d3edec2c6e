//! The read side of a feed: where a watch starts, and the stream of events after it.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crm_proto::crm::common::v1::ChangeType;
use futures::Stream;
use sqlx::PgPool;
use tokio::sync::{mpsc, watch as signal};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{ChangeEvent, EventRow, Feed};
use crate::{ApiError, FieldViolations};

/// How often an idle stream looks for events should a notification be lost.
const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// How long a gap in sequence numbers may stay open before it is taken for a rolled-back insert.
/// The sequence number is taken by the last statement before commit, so a live transaction
/// fills its gap within milliseconds; this bound is far above that.
const GAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon to look again while waiting for a gap to fill.
const GAP_POLL: Duration = Duration::from_millis(20);
/// Events read per query.
const BATCH: i64 = 500;
/// Buffered events per stream: a slow caller holds back its own stream only.
const BUFFER: usize = 256;

/// The fields every `Watch<Resource>ChangesRequest` has, borrowed from it.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchRequest<'a> {
    /// Continue after this event; empty: start at `start_time` or at the current end.
    pub resume_token: &'a str,
    /// Without a resume token, start with the first event committed at or after this time.
    pub start_time: Option<&'a prost_types::Timestamp>,
    /// Only these kinds of change (`ChangeType` values); empty means all.
    pub change_types: &'a [i32],
}

/// The change types a watch asks for (empty: all); UNSPECIFIED and unknown values are
/// violations of `change_types[i]`.
pub fn change_types(values: &[i32], v: &mut FieldViolations) -> Vec<ChangeType> {
    let mut types = Vec::new();
    for (i, value) in values.iter().enumerate() {
        match ChangeType::try_from(*value) {
            Ok(ChangeType::Unspecified) | Err(_) => v.add(
                format!("change_types[{i}]"),
                "must be CREATED, UPDATED, DELETED, UNDELETED, MERGED or ERASED",
            ),
            Ok(kind) => types.push(kind),
        }
    }
    types
}

/// A resume token as the sequence number it names.
fn parse_token(token: &str, v: &mut FieldViolations) -> Option<i64> {
    let seq = token.parse().ok().filter(|s: &i64| *s >= 0);
    if seq.is_none() {
        v.add("resume_token", "is not a token this feed issued");
    }
    seq
}

/// A start time as an instant.
fn parse_start_time(ts: &prost_types::Timestamp, v: &mut FieldViolations) -> Option<DateTime<Utc>> {
    let time = u32::try_from(ts.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos));
    if time.is_none() {
        v.add("start_time", "is not a valid timestamp");
    }
    time
}

/// Where a validated watch starts.
enum Start {
    After(i64),
    At(DateTime<Utc>),
    End,
}

impl Feed {
    /// Opens a `Watch<Resource>Changes` stream of the events of `resource_type`: validates the
    /// request (INVALID_ARGUMENT naming each bad field; `OUT_OF_RANGE` with reason
    /// `RESUME_TOKEN_EXPIRED` for a token older than the events kept), then streams events in
    /// sequence order until the caller goes away.
    pub async fn watch(
        &self,
        resource_type: &'static str,
        req: WatchRequest<'_>,
    ) -> Result<impl Stream<Item = Result<ChangeEvent, Status>> + Send + use<>, ApiError> {
        let mut v = FieldViolations::new();
        let types = change_types(req.change_types, &mut v);
        let start = if !req.resume_token.is_empty() {
            parse_token(req.resume_token, &mut v).map(Start::After)
        } else if let Some(ts) = req.start_time {
            parse_start_time(ts, &mut v).map(Start::At)
        } else {
            Some(Start::End)
        };
        v.into_result()?;
        let after = self.start_position(start.unwrap_or(Start::End)).await?;
        Ok(self.stream(
            after,
            Filter {
                resource_type,
                types,
            },
        ))
    }

    /// The sequence number a watch starts after.
    async fn start_position(&self, start: Start) -> Result<i64, ApiError> {
        let table = format!("{}.change_events", self.schema);
        match start {
            Start::After(seq) => {
                let oldest: Option<i64> =
                    sqlx::query_scalar(&format!("SELECT min(seq) FROM {table}"))
                        .fetch_one(&self.db)
                        .await?;
                match oldest {
                    Some(oldest) if seq < oldest - 1 => Err(ApiError::OutOfRange {
                        reason: "RESUME_TOKEN_EXPIRED",
                        message: "the events after this resume_token are no longer kept; \
                                  start without one"
                            .into(),
                    }),
                    _ => Ok(seq),
                }
            }
            Start::At(time) => {
                // One statement, one snapshot: an event committed between a first look for
                // events since `time` and a second look for the end would be skipped.
                Ok(sqlx::query_scalar(&format!(
                    "SELECT coalesce((SELECT min(seq) - 1 FROM {table} WHERE change_time >= $1), \
                       (SELECT max(seq) FROM {table}), 0)"
                ))
                .bind(time)
                .fetch_one(&self.db)
                .await?)
            }
            Start::End => self.end().await,
        }
    }

    /// The sequence number of the newest event (0 when there is none).
    async fn end(&self) -> Result<i64, ApiError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT coalesce(max(seq), 0) FROM {}.change_events",
            self.schema
        ))
        .fetch_one(&self.db)
        .await?)
    }
}

/// Which events a stream sends.
struct Filter {
    resource_type: &'static str,
    /// Empty: all.
    types: Vec<ChangeType>,
}

impl Filter {
    fn wants(&self, row: &EventRow) -> bool {
        row.resource_type == self.resource_type
            && (self.types.is_empty() || self.types.contains(&row.change_type()))
    }
}

/// Whether the reader may pass `seq` after `after`, tracking the first missing number and
/// when it was first seen missing in `gap`.
fn may_pass(after: i64, seq: i64, gap: &mut Option<(i64, Instant)>) -> bool {
    if seq == after + 1 {
        return true;
    }
    let missing = after + 1;
    match gap {
        Some((first, since)) if *first == missing => since.elapsed() >= GAP_TIMEOUT,
        _ => {
            *gap = Some((missing, Instant::now()));
            false
        }
    }
}

/// What a reader does after a batch.
enum Next {
    /// Read again at once (the batch was full).
    ReadNow,
    /// Wait for a gap to fill.
    WaitForGap,
    /// Wait for a notification (or the fallback poll).
    WaitForEvents,
    /// The caller went away or the stream failed.
    Stop,
}

/// One open stream: reads events after `after` and sends those the filter wants.
struct Reader {
    db: PgPool,
    /// The batch query.
    sql: String,
    readers: signal::Receiver<u64>,
    /// False once the process's listener is gone (shutting down): then only polls wake us.
    listening: bool,
    shutdown: CancellationToken,
    filter: Filter,
    tx: mpsc::Sender<Result<ChangeEvent, Status>>,
    /// The last sequence number passed.
    after: i64,
    /// The first missing sequence number and when it was first seen missing.
    gap: Option<(i64, Instant)>,
}

impl Reader {
    /// Reads until the caller goes away or the process shuts down.
    async fn run(mut self) {
        loop {
            let pause = match self.read_batch().await {
                Next::ReadNow => continue,
                Next::WaitForGap => GAP_POLL,
                Next::WaitForEvents => FALLBACK_POLL,
                Next::Stop => return,
            };
            let wake_on_notify = self.listening && pause == FALLBACK_POLL;
            tokio::select! {
                _ = self.tx.closed() => return,
                _ = self.shutdown.cancelled() => {
                    let status = Status::unavailable(
                        "the server is shutting down; resume with the last resume_token",
                    );
                    let _ = self.tx.send(Err(status)).await;
                    return;
                }
                changed = self.readers.changed(), if wake_on_notify => {
                    self.listening = changed.is_ok();
                }
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Reads one batch and sends what may be sent of it.
    async fn read_batch(&mut self) -> Next {
        let rows: Vec<EventRow> = match sqlx::query_as(&self.sql)
            .bind(self.after)
            .bind(BATCH)
            .fetch_all(&self.db)
            .await
        {
            Ok(rows) => rows,
            Err(err) => {
                let _ = self.tx.send(Err(Status::from(ApiError::from(err)))).await;
                return Next::Stop;
            }
        };
        let full = rows.len() as i64 == BATCH;
        for row in rows {
            if !may_pass(self.after, row.seq, &mut self.gap) {
                return Next::WaitForGap;
            }
            self.gap = None;
            self.after = row.seq;
            if self.filter.wants(&row) && self.tx.send(Ok(row.into_event())).await.is_err() {
                return Next::Stop;
            }
        }
        if full {
            Next::ReadNow
        } else {
            Next::WaitForEvents
        }
    }
}

impl Feed {
    /// Streams events after `after` in a task of their own, until the caller goes away or the
    /// process shuts down.
    ///
    /// The filter runs in the reader, not in SQL: it must see every sequence number (of every
    /// resource type) to tell a gap still filling from one that never will.
    fn stream(
        &self,
        after: i64,
        filter: Filter,
    ) -> impl Stream<Item = Result<ChangeEvent, Status>> + Send + use<> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let reader = Reader {
            db: self.db.clone(),
            sql: format!(
                "SELECT seq, resource_type, resource_id, change_type, version, changed_paths, \
                   merged_into_id, actor_kind, actor_id, change_time, snapshot \
                 FROM {}.change_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                self.schema
            ),
            readers: self.readers.clone(),
            listening: true,
            shutdown: self.shutdown.clone(),
            filter,
            tx,
            after,
            gap: None,
        };
        tokio::spawn(reader.run());
        ReceiverStream::new(rx)
    }
}
