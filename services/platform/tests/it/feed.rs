//! The change feed's outbox and Watch helper against the real PostgreSQL: what is appended in a
//! transaction is watched once committed, in order, per resource type, with the header intact;
//! retention, erasure, bad requests and shutdown.

use std::time::Duration;

use crm_platform::db::Database;
use crm_platform::feed::{self, ChangeEvent, Feed, NewChange, WatchRequest};
use crm_proto::crm::common::v1::{ChangeType, Principal, PrincipalKind};
use futures::{Stream, StreamExt};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::support::{config, fresh_database, within};

const SCHEMA: &str = "feedsvc";
const THING: &str = "crm.test.v1.Thing";
const OTHER: &str = "crm.test.v1.Other";

/// A service without migrations of its own: its schema has the platform's tables only.
static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

struct Fixture {
    database: Database,
    feed: Feed,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A migrated schema on a fresh database and its feed; the pool has `connections`.
async fn fixture_with(connections: u32) -> Fixture {
    let url = fresh_database().await;
    let connections = connections.to_string();
    let config = config(&[
        ("CRM__DATABASE__URL", url.as_str()),
        ("CRM__DATABASE__MAX_CONNECTIONS", connections.as_str()),
    ]);
    let database = Database::connect_lazy(&config.database, SCHEMA, &NO_MIGRATIONS).unwrap();
    within(database.migrate()).await.expect("migrating");
    let shutdown = CancellationToken::new();
    let feed = Feed::start(&database, &shutdown);
    Fixture {
        database,
        feed,
        shutdown,
    }
}

async fn fixture() -> Fixture {
    fixture_with(5).await
}

fn service(id: &str) -> Principal {
    Principal {
        kind: PrincipalKind::Service as i32,
        id: id.into(),
    }
}

/// A change of `resource_type` `id` at `version`, its snapshot the id's bytes.
fn change<'a>(
    resource_type: &'a str,
    id: &str,
    version: i64,
    actor: &'a Principal,
) -> NewChange<'a> {
    NewChange {
        resource_type,
        resource_id: id.into(),
        version,
        change_type: if version == 1 {
            ChangeType::Created
        } else {
            ChangeType::Updated
        },
        changed_paths: &[],
        merged_into_id: None,
        actor,
        snapshot: Some(id.as_bytes().to_vec()),
    }
}

impl Fixture {
    /// Appends `changes` in one committed transaction; returns their sequence numbers.
    async fn commit(&self, changes: &[NewChange<'_>]) -> Vec<i64> {
        let mut tx = self.database.pool.begin().await.unwrap();
        let mut seqs = Vec::new();
        for change in changes {
            seqs.push(feed::append(&mut tx, SCHEMA, change).await.unwrap());
        }
        tx.commit().await.unwrap();
        self.feed.committed();
        seqs
    }

    async fn watch(
        &self,
        resource_type: &'static str,
        resume_token: &str,
    ) -> Result<impl Stream<Item = Result<ChangeEvent, Status>> + use<>, Status> {
        let req = WatchRequest {
            resume_token,
            ..Default::default()
        };
        Ok(self.feed.watch(resource_type, req).await?)
    }
}

async fn next(
    events: &mut (impl Stream<Item = Result<ChangeEvent, Status>> + Unpin),
) -> ChangeEvent {
    within(events.next())
        .await
        .expect("the feed ended")
        .expect("an event")
}

#[tokio::test]
async fn an_appended_change_is_watched_only_once_its_transaction_committed() {
    let f = fixture().await;
    let actor = service("writer");
    let mut events = Box::pin(f.watch(THING, "").await.unwrap());

    let mut tx = f.database.pool.begin().await.unwrap();
    let seq = feed::append(&mut tx, SCHEMA, &change(THING, "a", 1, &actor))
        .await
        .unwrap();
    let before_commit = tokio::time::timeout(Duration::from_millis(1500), events.next()).await;
    tx.commit().await.unwrap();
    f.feed.committed();

    assert!(before_commit.is_err(), "{before_commit:?}");
    assert_eq!(next(&mut events).await.header.resume_token, seq.to_string());
}

#[tokio::test]
async fn a_watch_sends_the_header_and_snapshot_as_appended() {
    let f = fixture().await;
    let actor = service("merger");
    let paths = ["name".to_string(), "tags".to_string()];
    let merged = NewChange {
        change_type: ChangeType::Merged,
        changed_paths: &paths,
        merged_into_id: Some("b".into()),
        ..change(THING, "a", 7, &actor)
    };
    let seqs = f.commit(&[merged]).await;

    let event = next(&mut Box::pin(f.watch(THING, "0").await.unwrap())).await;

    let h = &event.header;
    assert_eq!(
        (
            h.resume_token.as_str(),
            h.change_type(),
            h.resource_type.as_str(),
            h.resource_id.as_str(),
            h.version,
            h.merged_into_id.as_str(),
        ),
        (
            seqs[0].to_string().as_str(),
            ChangeType::Merged,
            THING,
            "a",
            7,
            "b"
        )
    );
    assert_eq!(h.changed_paths.as_ref().unwrap().paths, paths);
    assert_eq!(h.actor, Some(actor));
    assert!(h.change_time.is_some());
    assert_eq!(event.snapshot.as_deref(), Some(&b"a"[..]));
}

#[tokio::test]
async fn a_watch_sends_only_its_resource_type_in_commit_order() {
    let f = fixture().await;
    let actor = service("writer");
    let seqs = f
        .commit(&[
            change(THING, "a", 1, &actor),
            change(OTHER, "x", 1, &actor),
            change(THING, "a", 2, &actor),
        ])
        .await;
    let later = f.commit(&[change(THING, "b", 1, &actor)]).await;

    let mut events = Box::pin(f.watch(THING, "0").await.unwrap());
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(next(&mut events).await.header.resume_token);
    }

    assert_eq!(tokens, [seqs[0], seqs[2], later[0]].map(|s| s.to_string()));
}

#[tokio::test]
async fn after_a_purge_an_older_token_is_out_of_range_and_the_newest_event_is_kept() {
    let f = fixture().await;
    let actor = service("writer");
    let seqs = f
        .commit(&[
            change(THING, "a", 1, &actor),
            change(THING, "b", 1, &actor),
            change(THING, "c", 1, &actor),
        ])
        .await;

    let purged = feed::purge_older_than(&f.database.pool, SCHEMA, Duration::ZERO)
        .await
        .unwrap();

    assert_eq!(purged, 2, "everything but the newest event");
    let Err(status) = f.watch(THING, &seqs[0].to_string()).await else {
        panic!("a token from before the purge was accepted");
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(
        status.get_details_error_info().map(|i| i.reason),
        Some("RESUME_TOKEN_EXPIRED".to_string())
    );
    let mut events = Box::pin(f.watch(THING, &seqs[1].to_string()).await.unwrap());
    assert_eq!(
        next(&mut events).await.header.resume_token,
        seqs[2].to_string()
    );
}

#[tokio::test]
async fn erasing_snapshots_keeps_the_events_of_that_resource_as_tombstones() {
    let f = fixture().await;
    let actor = service("writer");
    f.commit(&[
        change(THING, "a", 1, &actor),
        change(THING, "a", 2, &actor),
        change(THING, "b", 1, &actor),
    ])
    .await;

    let mut conn = f.database.pool.acquire().await.unwrap();
    let erased = feed::erase_snapshots(&mut conn, SCHEMA, THING, "a")
        .await
        .unwrap();

    let mut events = Box::pin(f.watch(THING, "0").await.unwrap());
    let mut snapshots = Vec::new();
    for _ in 0..3 {
        let event = next(&mut events).await;
        snapshots.push((event.header.resource_id, event.snapshot));
    }
    assert_eq!(erased, 2);
    assert_eq!(
        snapshots,
        [
            ("a".to_string(), None),
            ("a".to_string(), None),
            ("b".to_string(), Some(b"b".to_vec()))
        ]
    );
}

#[tokio::test]
async fn a_bad_token_start_time_and_change_type_are_each_named() {
    let f = fixture().await;
    let bad_time = prost_types::Timestamp {
        seconds: 0,
        nanos: -1,
    };

    let token = f
        .feed
        .watch(
            THING,
            WatchRequest {
                resume_token: "x",
                change_types: &[ChangeType::Created as i32, 0, 99],
                ..Default::default()
            },
        )
        .await
        .err()
        .map(Status::from)
        .expect("refused");
    let time = f
        .feed
        .watch(
            THING,
            WatchRequest {
                start_time: Some(&bad_time),
                ..Default::default()
            },
        )
        .await
        .err()
        .map(Status::from)
        .expect("refused");

    let fields = |status: &Status| -> Vec<String> {
        status
            .get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default()
    };
    assert_eq!(
        fields(&token),
        ["change_types[1]", "change_types[2]", "resume_token"]
    );
    assert_eq!(fields(&time), ["start_time"]);
}

#[tokio::test]
async fn open_watches_end_with_unavailable_when_the_process_shuts_down() {
    let f = fixture().await;
    let mut events = Box::pin(f.watch(THING, "").await.unwrap());

    f.shutdown.cancel();

    let ended = within(events.next()).await.expect("a last message");
    assert_eq!(ended.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn four_times_the_pool_size_of_watches_each_receive_every_event() {
    const POOL: u32 = 2;
    let f = fixture_with(POOL).await;
    let actor = service("writer");
    let opened = futures::future::join_all((0..4 * POOL).map(|_| f.watch(THING, ""))).await;
    let mut watches: Vec<_> = opened.into_iter().map(|w| Box::pin(w.unwrap())).collect();

    let seqs = f
        .commit(&[change(THING, "a", 1, &actor), change(THING, "b", 1, &actor)])
        .await;

    let expected: Vec<String> = seqs.iter().map(|s| s.to_string()).collect();
    let received = futures::future::join_all(watches.iter_mut().map(|events| async move {
        vec![
            next(events).await.header.resume_token,
            next(events).await.header.resume_token,
        ]
    }))
    .await;
    assert!(
        received.iter().all(|tokens| *tokens == expected),
        "{received:?}"
    );
}
