//! The durable consumer: a background task that follows another service's
//! `Watch<Resource>Changes` RPC and hands each event to an idempotent handler.
//!
//! - **Checkpoint**: the position (the last handled event's resume token) lives in the
//!   consumer's own schema (`consumer_checkpoints`, a platform table), keyed by the consumer's
//!   name. It advances only after the handler succeeded, so every event is delivered **at least
//!   once**, in feed order; after a crash the last event may come again. Handlers skip what
//!   they have already applied (e.g. a version not newer than the one stored).
//! - **Failures**: a failing handler, a broken stream or an unreachable producer stop delivery;
//!   the consumer reconnects from the checkpoint after an exponential backoff with jitter
//!   ([`ConsumerOptions`]), so the failed event is delivered again.
//! - **Re-sync**: without a checkpoint (first start) or when the producer no longer keeps the
//!   events after it (`OUT_OF_RANGE`, reason `RESUME_TOKEN_EXPIRED`), the consumer calls
//!   [`ChangeHandler::resync`], which rebuilds what it keeps from the producer's List (with
//!   `show_deleted`), then follows the feed from [`Position::Since`] the re-sync's start minus
//!   [`ConsumerOptions::resync_overlap`]: changes made during the re-sync arrive as events too.
//! - **Shutdown**: the task ends on its cancellation token, between events (a handler call is
//!   never cut off half-way).
//!
//! The consumer is generic over the watch call ([`WatchFeed`], usually a closure over the
//! producer's generated client), so every service plugs in its own client and channel.

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use crm_proto::crm::common::v1::ChangeHeader;
use futures::{Stream, StreamExt};
use rand::Rng;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::db::Database;

/// A message of a Watch RPC: it carries a change header with the event's resume token.
pub trait FeedMessage: Send + Sync + 'static {
    /// The event's header; `None` only in a malformed message.
    fn header(&self) -> Option<&ChangeHeader>;
}

/// Every `Watch…Response` of the contracts is `{ event: { header, <resource> } }`.
macro_rules! feed_messages {
    ($($message:ty),* $(,)?) => {
        $(impl FeedMessage for $message {
            fn header(&self) -> Option<&ChangeHeader> {
                self.event.as_ref()?.header.as_ref()
            }
        })*
    };
}

feed_messages!(
    crm_proto::crm::customer::v1::WatchCustomerChangesResponse,
    crm_proto::crm::sales::v1::WatchOrderChangesResponse,
    crm_proto::crm::sales::v1::WatchOpportunityChangesResponse,
    crm_proto::crm::support::v1::WatchTicketChangesResponse,
    crm_proto::crm::support::v1::WatchTicketCategoryChangesResponse,
    crm_proto::crm::support::v1::WatchAgentChangesResponse,
    crm_proto::crm::support::v1::WatchSlaPolicyChangesResponse,
    crm_proto::crm::support::v1::WatchArticleChangesResponse,
    crm_proto::crm::marketing::v1::WatchSegmentChangesResponse,
    crm_proto::crm::marketing::v1::WatchCampaignChangesResponse,
    crm_proto::crm::marketing::v1::WatchDeliveryChangesResponse,
    crm_proto::crm::inference::v1::WatchModelVersionChangesResponse,
);

/// Where a watch (re)opens the producer's feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// After the event with this resume token.
    After(String),
    /// From the first event committed at or after this time (after a re-sync). A feed whose
    /// request has no `start_time` starts at its current end instead.
    Since(DateTime<Utc>),
}

impl Position {
    /// The request's `resume_token` (empty for [`Position::Since`]).
    pub fn resume_token(&self) -> String {
        match self {
            Position::After(token) => token.clone(),
            Position::Since(_) => String::new(),
        }
    }

    /// The request's `start_time` (unset for [`Position::After`]).
    pub fn start_time(&self) -> Option<prost_types::Timestamp> {
        match self {
            Position::After(_) => None,
            Position::Since(time) => Some(prost_types::Timestamp {
                seconds: time.timestamp(),
                nanos: time.timestamp_subsec_nanos() as i32,
            }),
        }
    }
}

/// What a consumer does with the events it follows.
pub trait ChangeHandler<M>: Send + Sync + 'static {
    /// Applies one event. Called at least once per event, in feed order, so it must be
    /// idempotent. An error leaves the checkpoint before this event: it comes again after a
    /// backoff.
    fn handle(&self, message: &M) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Rebuilds what the consumer keeps from the producer's current state (its List, with
    /// `show_deleted`), because the feed cannot replay what happened since the checkpoint:
    /// called on first start and after `RESUME_TOKEN_EXPIRED`. Events during the re-sync are
    /// delivered afterwards, so it may read a state that is a little older than the first
    /// event that follows. An error is retried after a backoff.
    fn resync(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Opens the producer's Watch RPC at a position: usually a closure
/// `move |from: Position| { let mut client = client.clone(); async move { Ok(client.watch_…(…).await?.into_inner()) } }`.
pub trait WatchFeed<M>: Send + 'static {
    /// The stream of messages, `tonic::Streaming<M>` for a generated client.
    type Stream: Stream<Item = Result<M, Status>> + Send + Unpin + 'static;

    /// Opens the feed at `from`.
    fn watch(
        &mut self,
        from: Position,
    ) -> impl Future<Output = Result<Self::Stream, Status>> + Send;
}

impl<F, Fut, S, M> WatchFeed<M> for F
where
    F: FnMut(Position) -> Fut + Send + 'static,
    Fut: Future<Output = Result<S, Status>> + Send,
    S: Stream<Item = Result<M, Status>> + Send + Unpin + 'static,
{
    type Stream = S;

    fn watch(&mut self, from: Position) -> impl Future<Output = Result<S, Status>> + Send {
        self(from)
    }
}

/// How a consumer waits and overlaps.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Backoff after the first failure in a row; doubled per further failure.
    pub first_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// How far before a re-sync's start the feed is followed afterwards: covers write
    /// transactions that were open during the re-sync and clock skew between the services.
    pub resync_overlap: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            resync_overlap: Duration::from_secs(60),
        }
    }
}

impl ConsumerOptions {
    /// The pause after `failures` failures in a row: exponential, capped, with ±25 % jitter so
    /// the replicas of a consumer do not reconnect in step.
    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let base = self
            .first_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff);
        base.mul_f64(rand::rng().random_range(0.75..=1.25))
    }
}

/// The checkpoint `consumer` stored in `schema` (`None` before its first re-sync).
pub async fn checkpoint(
    db: &PgPool,
    schema: &str,
    consumer: &str,
) -> Result<Option<Position>, sqlx::Error> {
    let row: Option<(String, Option<DateTime<Utc>>)> = sqlx::query_as(&format!(
        "SELECT resume_token, start_time FROM {schema}.consumer_checkpoints WHERE consumer = $1"
    ))
    .bind(consumer)
    .fetch_optional(db)
    .await?;
    Ok(
        row.and_then(|(token, start_time)| match (token.is_empty(), start_time) {
            (false, _) => Some(Position::After(token)),
            (true, Some(time)) => Some(Position::Since(time)),
            (true, None) => None,
        }),
    )
}

/// Stores `position` as `consumer`'s checkpoint in `schema`.
async fn store_checkpoint(
    db: &PgPool,
    schema: &str,
    consumer: &str,
    position: &Position,
) -> Result<(), sqlx::Error> {
    let (token, start_time) = match position {
        Position::After(token) => (token.as_str(), None),
        Position::Since(time) => ("", Some(*time)),
    };
    sqlx::query(&format!(
        "INSERT INTO {schema}.consumer_checkpoints (consumer, resume_token, start_time) \
         VALUES ($1, $2, $3) \
         ON CONFLICT (consumer) DO UPDATE SET resume_token = EXCLUDED.resume_token, \
           start_time = EXCLUDED.start_time, update_time = now()"
    ))
    .bind(consumer)
    .bind(token)
    .bind(start_time)
    .execute(db)
    .await?;
    Ok(())
}

/// Whether a watch failed because the checkpoint is older than the producer keeps.
fn is_expired(status: &Status) -> bool {
    status.code() == Code::OutOfRange
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == "RESUME_TOKEN_EXPIRED")
}

/// How one round of following ended without an error.
enum Round {
    /// Shutdown was requested.
    Shutdown,
    /// The feed must be re-synced before it can be followed again.
    Expired,
}

/// A durable consumer of one feed; see the module documentation.
pub struct Consumer<M, W, H> {
    name: &'static str,
    db: PgPool,
    schema: &'static str,
    watch: W,
    handler: H,
    options: ConsumerOptions,
    /// Failures since the last delivered event or completed re-sync.
    failures: u32,
    _message: PhantomData<fn() -> M>,
}

impl<M, W, H> Consumer<M, W, H>
where
    M: FeedMessage,
    W: WatchFeed<M>,
    H: ChangeHandler<M>,
{
    /// A consumer named `name` (unique within the consumer's service, e.g. `customer-changes`)
    /// keeping its checkpoint in `database`'s schema.
    pub fn new(name: &'static str, database: &Database, watch: W, handler: H) -> Self {
        Self {
            name,
            db: database.pool.clone(),
            schema: database.schema,
            watch,
            handler,
            options: ConsumerOptions::default(),
            failures: 0,
            _message: PhantomData,
        }
    }

    /// The same consumer with other backoff and overlap settings.
    pub fn with_options(mut self, options: ConsumerOptions) -> Self {
        self.options = options;
        self
    }

    /// Runs the consumer in the background until `shutdown`.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    /// Follows the feed until `shutdown`, re-syncing and backing off as needed.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let pause = match self.round(&shutdown).await {
                Ok(Round::Shutdown) => return,
                Ok(Round::Expired) => match self.resync().await {
                    Ok(_) => continue,
                    Err(err) => self.failed(err),
                },
                Err(err) => self.failed(err),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Logs a failure and returns how long to wait before the next round.
    fn failed(&mut self, err: anyhow::Error) -> Duration {
        self.failures += 1;
        let pause = self.options.backoff(self.failures);
        tracing::warn!(
            consumer = self.name,
            failures = self.failures,
            retry_in_ms = pause.as_millis() as u64,
            error = format!("{err:#}"),
            "change consumer interrupted; resuming from its checkpoint"
        );
        pause
    }

    /// One round: opens the feed at the checkpoint (re-syncing first when there is none) and
    /// delivers events until the stream breaks, a handler fails or shutdown is requested.
    async fn round(&mut self, shutdown: &CancellationToken) -> anyhow::Result<Round> {
        let stored = checkpoint(&self.db, self.schema, self.name)
            .await
            .context("reading the checkpoint")?;
        let from = match stored {
            Some(position) => position,
            None => self.resync().await?,
        };
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return Ok(Round::Shutdown),
            opened = self.watch.watch(from) => opened,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(status) if is_expired(&status) => return Ok(Round::Expired),
            Err(status) => return Err(anyhow::Error::new(status).context("opening the feed")),
        };
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ok(Round::Shutdown),
                next = stream.next() => next,
            };
            match next {
                Some(Ok(message)) => self.deliver(&message).await?,
                Some(Err(status)) if is_expired(&status) => return Ok(Round::Expired),
                Some(Err(status)) => {
                    return Err(anyhow::Error::new(status).context("reading the feed"));
                }
                None => anyhow::bail!("the producer ended the feed"),
            }
        }
    }

    /// Hands one event to the handler, then moves the checkpoint past it.
    async fn deliver(&mut self, message: &M) -> anyhow::Result<()> {
        let token = message
            .header()
            .map(|header| header.resume_token.clone())
            .filter(|token| !token.is_empty())
            .context("the producer sent an event without a resume token")?;
        self.handler
            .handle(message)
            .await
            .with_context(|| format!("handling the event at {token}"))?;
        store_checkpoint(&self.db, self.schema, self.name, &Position::After(token))
            .await
            .context("storing the checkpoint")?;
        self.failures = 0;
        Ok(())
    }

    /// Re-syncs through the handler and stores the position to follow the feed from.
    async fn resync(&mut self) -> anyhow::Result<Position> {
        let overlap = chrono::Duration::from_std(self.options.resync_overlap)
            .unwrap_or(chrono::Duration::zero());
        let from = Position::Since(Utc::now() - overlap);
        tracing::info!(
            consumer = self.name,
            "re-syncing from the producer's current state"
        );
        self.handler.resync().await.context("re-syncing")?;
        store_checkpoint(&self.db, self.schema, self.name, &from)
            .await
            .context("storing the checkpoint after a re-sync")?;
        self.failures = 0;
        Ok(from)
    }
}
