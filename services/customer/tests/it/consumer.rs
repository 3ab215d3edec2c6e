//! A durable consumer (crm_platform::feed::consumer) following the real customer service over
//! gRPC: every change at least once and in order, across restarts of the consumer and of the
//! producer, a re-sync when its checkpoint is older than the feed keeps, and no checkpoint
//! advance past an event its handler failed on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crm_platform::db::Database;
use crm_platform::feed::consumer::{self, ChangeHandler, Consumer, ConsumerOptions, Position};
use crm_proto::crm::customer::v1 as pb;
use sqlx::migrate::Migrator;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::{
    Client, TestApp, ada, config, eventually, redis_url, spawn_app, spawn_with, within,
};

/// The consumer's own schema (a service with no tables but the platform's).
const SCHEMA: &str = "follower";
const NAME: &str = "customer-changes";
static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

/// What the test handler saw.
#[derive(Default)]
struct Seen {
    /// Resume tokens (as numbers) of the events handled, in delivery order.
    handled: Vec<i64>,
    resyncs: usize,
    /// Every event fails while set.
    failing: bool,
    failures: usize,
}

/// A handler that records what it is given.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Seen>>);

impl Recorder {
    fn seen<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    /// Whether every one of `tokens` has been handled.
    fn has_handled(&self, tokens: &[i64]) -> bool {
        self.seen(|s| tokens.iter().all(|t| s.handled.contains(t)))
    }
}

impl ChangeHandler<pb::WatchCustomerChangesResponse> for Recorder {
    async fn handle(&self, message: &pb::WatchCustomerChangesResponse) -> anyhow::Result<()> {
        let header = message.event.as_ref().and_then(|e| e.header.as_ref());
        let header = header.expect("every event has a header");
        let mut seen = self.0.lock().unwrap();
        if seen.failing {
            seen.failures += 1;
            anyhow::bail!("refusing {}", header.resource_id);
        }
        seen.handled.push(header.resume_token.parse()?);
        Ok(())
    }

    async fn resync(&self) -> anyhow::Result<()> {
        self.seen(|s| s.resyncs += 1);
        Ok(())
    }
}

/// The producer the consumer calls; replaced when the producer restarts elsewhere.
type Producer = Arc<Mutex<Client>>;

/// A running producer (the customer service), a client of it, the producer handle the
/// consumer calls, and the consumer's database.
async fn arrange() -> (TestApp, Client, Producer, Database) {
    let app = spawn_app().await;
    let client = app.client().await;
    let producer: Producer = Arc::new(Mutex::new(client.clone()));
    let database = consumer_database(&app).await;
    (app, client, producer, database)
}

/// A consumer that handled two new events and stopped, leaving its checkpoint after them;
/// returns the feed's events at that point.
async fn consume_two_events_then_stop(
    app: &TestApp,
    client: &Client,
    producer: &Producer,
    database: &Database,
) -> Vec<i64> {
    let recorder = Recorder::default();
    let consumer = start(database, producer, recorder.clone());
    write_two_events(client).await;
    let before = feed_tokens(app).await;
    until("the first consumer handled both events", || {
        recorder.has_handled(&before)
    })
    .await;
    stop(consumer).await;
    before
}

/// The consumer's database: its own schema in the producer's test database.
async fn consumer_database(app: &TestApp) -> Database {
    let config = config(&app.database_url, &redis_url(), &[]);
    let database = Database::connect_lazy(&config.database, SCHEMA, &NO_MIGRATIONS).unwrap();
    within(database.migrate())
        .await
        .expect("migrating the consumer's schema");
    database
}

/// Starts a consumer of the customer feed with `handler`, calling whichever client `producer`
/// holds when it (re)connects.
fn start(
    database: &Database,
    producer: &Producer,
    handler: Recorder,
) -> (CancellationToken, JoinHandle<()>) {
    let producer = producer.clone();
    let watch = move |from: Position| {
        let client = producer.lock().unwrap().clone();
        async move {
            let request = client.request(pb::WatchCustomerChangesRequest {
                resume_token: from.resume_token(),
                start_time: from.start_time(),
                change_types: Vec::new(),
            });
            let mut inner = client.inner.clone();
            Ok(inner.watch_customer_changes(request).await?.into_inner())
        }
    };
    let options = ConsumerOptions {
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..ConsumerOptions::default()
    };
    let shutdown = CancellationToken::new();
    let task = Consumer::new(NAME, database, watch, handler)
        .with_options(options)
        .spawn(shutdown.clone());
    (shutdown, task)
}

async fn stop((shutdown, task): (CancellationToken, JoinHandle<()>)) {
    shutdown.cancel();
    within(task).await.expect("the consumer stops cleanly");
}

/// Polls until `condition` holds, failing the test after the kit's wait.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    eventually(what, || std::future::ready(condition())).await;
}

/// Every event of the producer's feed, as numbers.
async fn feed_tokens(app: &TestApp) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM customer.change_events ORDER BY seq")
        .fetch_all(&app.pool().await)
        .await
        .unwrap()
}

async fn stored_checkpoint(database: &Database) -> Option<Position> {
    consumer::checkpoint(&database.pool, SCHEMA, NAME)
        .await
        .unwrap()
}

/// The distinct tokens in the order first delivered; asserts that order is the feed's.
#[track_caller]
fn assert_in_order(handled: &[i64]) -> Vec<i64> {
    let mut distinct: Vec<i64> = Vec::new();
    for token in handled {
        if !distinct.contains(token) {
            distinct.push(*token);
        }
    }
    assert!(
        distinct.windows(2).all(|w| w[0] < w[1]),
        "delivered out of order: {handled:?}"
    );
    distinct
}

/// Creates a customer and one update of it: two events.
async fn write_two_events(client: &Client) -> String {
    let created = client.create(ada()).await.unwrap();
    let renamed = pb::Customer {
        display_name: "Ada King".into(),
        ..created.clone()
    };
    client.update(renamed, &["display_name"]).await.unwrap();
    created.id
}

#[tokio::test]
async fn a_consumer_receives_every_change_at_least_once_in_order() {
    let (app, client, producer, database) = arrange().await;
    let recorder = Recorder::default();
    let consumer = start(&database, &producer, recorder.clone());

    for _ in 0..3 {
        write_two_events(&client).await;
    }

    let expected = feed_tokens(&app).await;
    assert_eq!(expected.len(), 6);
    until("every event handled", || recorder.has_handled(&expected)).await;
    let handled = recorder.seen(|s| s.handled.clone());
    assert_eq!(assert_in_order(&handled), expected);
    assert_eq!(recorder.seen(|s| s.resyncs), 1, "the first start re-syncs");
    let last = expected.last().unwrap().to_string();
    stop(consumer).await;
    assert_eq!(
        stored_checkpoint(&database).await,
        Some(Position::After(last))
    );
}

#[tokio::test]
async fn a_restarted_consumer_resumes_from_its_checkpoint_without_a_resync() {
    let (app, client, producer, database) = arrange().await;
    let before = consume_two_events_then_stop(&app, &client, &producer, &database).await;

    write_two_events(&client).await;
    let second = Recorder::default();
    let consumer = start(&database, &producer, second.clone());

    let all = feed_tokens(&app).await;
    let missed = &all[before.len()..];
    until("the restarted consumer handled what it missed", || {
        second.has_handled(missed)
    })
    .await;
    stop(consumer).await;
    let handled = second.seen(|s| s.handled.clone());
    assert_eq!(
        assert_in_order(&handled),
        missed,
        "resumed after the checkpoint"
    );
    assert_eq!(second.seen(|s| s.resyncs), 0);
}

#[tokio::test]
async fn a_consumer_follows_the_producer_across_its_restart() {
    let (app, client, producer, database) = arrange().await;
    let recorder = Recorder::default();
    let consumer = start(&database, &producer, recorder.clone());
    write_two_events(&client).await;
    let before = feed_tokens(&app).await;
    until("the events before the restart handled", || {
        recorder.has_handled(&before)
    })
    .await;

    let mut app = app;
    app.shutdown.cancel();
    let _ = within(&mut app.server).await;
    let restarted = spawn_with(config(&app.database_url, &redis_url(), &[])).await;
    *producer.lock().unwrap() = restarted.client().await;
    write_two_events(&restarted.client().await).await;

    let all = feed_tokens(&restarted).await;
    until("the events after the restart handled", || {
        recorder.has_handled(&all)
    })
    .await;
    stop(consumer).await;
    let handled = recorder.seen(|s| s.handled.clone());
    assert_eq!(assert_in_order(&handled), all);
    assert_eq!(
        recorder.seen(|s| s.resyncs),
        1,
        "only the first start re-synced"
    );
}

#[tokio::test]
async fn a_consumer_whose_checkpoint_expired_resyncs_then_follows_the_feed() {
    let (app, client, producer, database) = arrange().await;
    consume_two_events_then_stop(&app, &client, &producer, &database).await;
    write_two_events(&client).await;
    // What 30 days of retention do to the events the consumer has not seen.
    crm_platform::feed::purge_older_than(&app.pool().await, "customer", Duration::ZERO)
        .await
        .unwrap();

    let second = Recorder::default();
    let consumer = start(&database, &producer, second.clone());
    until("the consumer re-synced", || second.seen(|s| s.resyncs == 1)).await;
    let after_resync = write_two_events(&client).await;

    let newest = *feed_tokens(&app).await.last().unwrap();
    until("the event after the re-sync handled", || {
        second.seen(|s| s.handled.contains(&newest))
    })
    .await;
    stop(consumer).await;
    assert_eq!(second.seen(|s| s.resyncs), 1);
    assert_eq!(
        stored_checkpoint(&database).await,
        Some(Position::After(newest.to_string())),
        "following {after_resync} from the feed again"
    );
}

#[tokio::test]
async fn a_failing_handler_holds_the_checkpoint_and_later_events_until_it_succeeds() {
    let (app, client, producer, database) = arrange().await;
    let recorder = Recorder::default();
    let consumer = start(&database, &producer, recorder.clone());
    // The re-sync stores where the consumer follows from right after the handler's part.
    let after_resync = within(async {
        loop {
            if let Some(position) = stored_checkpoint(&database).await {
                return Some(position);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    recorder.seen(|s| s.failing = true);

    write_two_events(&client).await;
    until("the first event failed, and again after a backoff", || {
        recorder.seen(|s| s.failures >= 3)
    })
    .await;
    let handled_while_failing = recorder.seen(|s| s.handled.clone());
    let checkpoint_while_failing = stored_checkpoint(&database).await;
    recorder.seen(|s| s.failing = false);

    let all = feed_tokens(&app).await;
    until("both events handled once the handler recovers", || {
        recorder.has_handled(&all)
    })
    .await;
    stop(consumer).await;
    assert!(
        handled_while_failing.is_empty(),
        "nothing after the failing event was handled: {handled_while_failing:?}"
    );
    assert!(
        matches!(after_resync, Some(Position::Since(_))),
        "{after_resync:?}"
    );
    assert_eq!(
        checkpoint_while_failing, after_resync,
        "the checkpoint held"
    );
    assert_eq!(assert_in_order(&recorder.seen(|s| s.handled.clone())), all);
    assert_eq!(
        stored_checkpoint(&database).await,
        Some(Position::After(all.last().unwrap().to_string()))
    );
}
