//! The read-through cache's coherence rules (see the top of `cache.rs`), against the real Redis;
//! how it lives through Redis outages is in `outage`.

mod outage;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crm_platform::ApiError;
use crm_platform::cache::{Cache, Key, Keyspace, Versioned};
use futures::StreamExt;
use redis::AsyncCommands;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::support::{
    Outage, config, counter, eventually, redis_addr, redis_connection, redis_url, unique_prefix,
    within,
};

const NAMESPACE: &str = "test";

/// The keyspace of these tests: a text per key.
const THINGS: Keyspace<String> = Keyspace::new("thing");

fn entry(version: i64, text: &str) -> Versioned<String> {
    Versioned {
        version,
        value: text.to_string(),
    }
}

/// Publishes `entry` as a committed write of `key`.
async fn put(cache: &Cache, key: &Key<String>, entry: Versioned<String>) {
    cache.put(key, entry.version, &entry.value).await;
}

/// What Redis holds for `entry`: its version, a colon, the encoded value.
fn redis_value(entry: Versioned<String>) -> Vec<u8> {
    let mut raw = format!("{}:", entry.version).into_bytes();
    raw.extend(prost::Message::encode_to_vec(&entry.value));
    raw
}

/// A cache of namespace `test` on `redis_url` with its own key `prefix` (no TTL jitter), once
/// it has connected to Redis (it connects in the background, reading PostgreSQL meanwhile).
async fn cache_on(redis_url: &str, prefix: &str, extra: &[(&str, &str)]) -> Cache {
    let cache = unconnected_cache_on(redis_url, prefix, extra);
    eventually("the cache is connected to Redis", || {
        let up = cache.redis_up();
        async move { up }
    })
    .await;
    cache
}

/// A cache as [`cache_on`] makes it, without waiting for its connection to Redis.
fn unconnected_cache_on(redis_url: &str, prefix: &str, extra: &[(&str, &str)]) -> Cache {
    let mut env = vec![
        ("CRM__REDIS__URL", redis_url),
        ("CRM__REDIS__KEY_PREFIX", prefix),
        ("CRM__CACHE__TTL_JITTER_PCT", "0"),
    ];
    env.extend_from_slice(extra);
    let config = config(&env);
    Cache::new(NAMESPACE, &config.redis, &config.cache).unwrap()
}

/// An instance whose in-process tier is live: subscribed to invalidations until the guard
/// drops.
async fn live(cache: &Cache) -> DropGuard {
    let shutdown = CancellationToken::new();
    cache.spawn_invalidation_listener(shutdown.clone());
    let watched = cache.clone();
    eventually("the in-process tier is live", || {
        let live = watched.local_tier_live();
        async move { live }
    })
    .await;
    shutdown.drop_guard()
}

async fn wait_until_live(cache: &Cache, live: bool) {
    eventually(&format!("local_tier_live() is {live}"), || {
        let now = cache.local_tier_live();
        async move { now == live }
    })
    .await;
}

/// The row behind a key as PostgreSQL would hold it, and how often it was loaded.
struct Row {
    current: Mutex<Versioned<String>>,
    loads: AtomicUsize,
}

impl Row {
    fn new(initial: Versioned<String>) -> Self {
        Self {
            current: Mutex::new(initial),
            loads: AtomicUsize::new(0),
        }
    }

    /// Commits a new version (the caller then publishes it with `put`).
    fn commit(&self, entry: Versioned<String>) {
        *self.current.lock().unwrap() = entry;
    }

    async fn load(&self) -> Result<Versioned<String>, ApiError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Ok(self.current.lock().unwrap().clone())
    }

    fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
}

/// The raw Redis value of `key` of `cache`.
async fn in_redis(cache: &Cache, key: &Key<String>) -> Option<Vec<u8>> {
    let mut redis = redis_connection().await;
    redis.get(cache.redis_key(key)).await.unwrap()
}

#[tokio::test]
async fn a_put_of_an_older_version_never_overwrites_a_newer_one_in_redis() {
    let prefix = unique_prefix();
    let cache = cache_on(&redis_url(), &prefix, &[]).await;
    let key = THINGS.key(1);
    put(&cache, &key, entry(2, "new")).await;

    within(put(&cache, &key, entry(1, "old"))).await;

    assert_eq!(
        in_redis(&cache, &key).await,
        Some(redis_value(entry(2, "new")))
    );
}

#[tokio::test]
async fn a_load_of_an_older_row_never_overwrites_a_newer_entry_in_redis() {
    let prefix = unique_prefix();
    let reader = cache_on(&redis_url(), &prefix, &[]).await;
    let writer = cache_on(&redis_url(), &prefix, &[]).await;
    let key = THINGS.key(1);
    let row = Row::new(entry(1, "old"));

    // The reader reads the old row; the writer commits and publishes before the read returns.
    let read = reader
        .get_or_load(&key, || async {
            let old = row.load().await;
            row.commit(entry(2, "new"));
            put(&writer, &key, entry(2, "new")).await;
            old
        })
        .await
        .unwrap();

    assert_eq!(read, "old", "the read began before the write");
    assert_eq!(
        in_redis(&reader, &key).await,
        Some(redis_value(entry(2, "new")))
    );
    let next = within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    assert_eq!(next, "new");
    assert_eq!(row.loads(), 1, "the next read is served by Redis");
}

#[tokio::test]
async fn a_put_of_an_older_version_never_overwrites_a_newer_one_in_the_in_process_tier() {
    let prefix = unique_prefix();
    let cache = cache_on(&redis_url(), &prefix, &[]).await;
    let _listening = live(&cache).await;
    let key = THINGS.key(1);
    let row = Row::new(entry(2, "new"));
    within(put(&cache, &key, entry(2, "new"))).await;

    // The writer of version 1 publishes late, after version 2's writer.
    within(put(&cache, &key, entry(1, "old"))).await;
    within(cache.put_new(&key, 1, &"old".to_string())).await;

    let read = within(cache.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    assert_eq!(read, "new");
    assert!(cache.local_tier_live());
}

#[tokio::test]
async fn concurrent_reads_of_one_missing_key_run_the_loader_once() {
    let prefix = unique_prefix();
    let cache = cache_on(&redis_url(), &prefix, &[]).await;
    let _listening = live(&cache).await;
    let key = THINGS.key(1);
    let row = Row::new(entry(1, "only"));
    let (open, gate) = tokio::sync::watch::channel(false);

    // Every load waits at the gate, which opens only once the first load has started, so all
    // the readers are in flight together.
    let load = || {
        let mut gate = gate.clone();
        let row = &row;
        async move {
            let loaded = row.load().await;
            gate.wait_for(|open| *open).await.unwrap();
            loaded
        }
    };
    let readers = futures::future::join_all((0..16).map(|_| cache.get_or_load(&key, load)));
    let opener = async {
        eventually("the first load has started", || {
            let started = row.loads() > 0;
            async move { started }
        })
        .await;
        open.send_replace(true);
    };
    let (reads, ()) = within(async { tokio::join!(readers, opener) }).await;

    assert_eq!(row.loads(), 1, "one load for all the concurrent readers");
    for read in reads {
        assert_eq!(read.unwrap(), "only");
    }
}

#[tokio::test]
async fn a_load_that_raced_a_write_on_another_instance_is_redone() {
    let prefix = unique_prefix();
    let reader = cache_on(&redis_url(), &prefix, &[]).await;
    let writer = cache_on(&redis_url(), &prefix, &[]).await;
    let _reader_listening = live(&reader).await;
    let key = THINGS.key(1);
    let row = Row::new(entry(1, "old"));

    // The load reads version 1; before it returns, the other instance commits version 2 and
    // its put returns (every subscribed instance has acknowledged it).
    let read = within(reader.get_or_load(&key, || async {
        let old = row.load().await;
        if old.as_ref().is_ok_and(|e| e.version == 1) {
            row.commit(entry(2, "new"));
            put(&writer, &key, entry(2, "new")).await;
        }
        old
    }))
    .await
    .unwrap();

    assert_eq!(read, "new", "the raced load must be redone");
    let again = within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    assert_eq!(again, "new", "the old version must not stay cached");
}

#[tokio::test]
async fn without_its_subscription_an_instance_bypasses_its_in_process_tier() {
    let proxy = Outage::start(redis_addr()).await;
    let prefix = unique_prefix();
    let reader = cache_on(&format!("redis://{}", proxy.addr), &prefix, &[]).await;
    let writer = cache_on(&redis_url(), &prefix, &[]).await;
    let _listening = live(&reader).await;
    let key = THINGS.key(1);
    let row = Row::new(entry(1, "old"));
    within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    assert_eq!(row.loads(), 1, "the second read is served from the cache");

    proxy.cut();
    wait_until_live(&reader, false).await;
    // Another instance writes; its invalidation cannot reach the cut-off reader.
    row.commit(entry(2, "new"));
    within(put(&writer, &key, entry(2, "new"))).await;

    let first = within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    let second = within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    assert_eq!(first, "new");
    assert_eq!(second, "new");
    assert_eq!(
        row.loads(),
        3,
        "with Redis and the in-process tier out of use, every read loads"
    );
    assert!(!reader.local_tier_live());
}

#[tokio::test]
async fn the_in_process_tier_starts_empty_when_the_subscription_comes_back() {
    let proxy = Outage::start(redis_addr()).await;
    let prefix = unique_prefix();
    let reader = cache_on(&format!("redis://{}", proxy.addr), &prefix, &[]).await;
    let writer = cache_on(&redis_url(), &prefix, &[]).await;
    let _listening = live(&reader).await;
    let key = THINGS.key(1);
    let row = Row::new(entry(1, "old"));
    proxy.cut();
    wait_until_live(&reader, false).await;
    // While cut off, this instance writes version 2 (kept in its own tier) and another
    // instance writes version 3, whose invalidation this one never receives.
    row.commit(entry(2, "mine"));
    within(put(&reader, &key, entry(2, "mine"))).await;
    row.commit(entry(3, "theirs"));
    within(put(&writer, &key, entry(3, "theirs"))).await;

    proxy.restore();
    wait_until_live(&reader, true).await;

    let read = within(reader.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    assert_eq!(read, "theirs");
}

#[tokio::test]
async fn an_invalidation_nobody_acknowledges_times_out_and_is_counted_not_failed() {
    let prefix = unique_prefix();
    let writer = cache_on(&redis_url(), &prefix, &[("CRM__REDIS__TIMEOUT_MS", "300")]).await;
    let key = THINGS.key(1);
    // A subscriber that never acknowledges.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut silent = client.get_async_pubsub().await.unwrap_or_else(|e| {
        panic!(
            "these tests need Redis at {} (set REDIS_URL): {e}",
            redis_url()
        )
    });
    silent
        .subscribe(format!("{prefix}:{NAMESPACE}:invalidate"))
        .await
        .unwrap();
    let timeouts_before = counter("crm_cache_invalidation_timeouts_total", &[]);

    within(put(&writer, &key, entry(1, "v1"))).await;

    assert_eq!(
        counter("crm_cache_invalidation_timeouts_total", &[]),
        timeouts_before + 1
    );
    let message = within(silent.on_message().next()).await.unwrap();
    let payload: String = message.get_payload().unwrap();
    assert!(
        payload.starts_with("inv:") && payload.ends_with(&format!(":1:{}", writer.redis_key(&key))),
        "{payload}"
    );
    assert_eq!(
        in_redis(&writer, &key).await,
        Some(redis_value(entry(1, "v1")))
    );
}

#[tokio::test]
async fn redis_dying_between_calls_never_fails_a_call() {
    let proxy = Outage::start(redis_addr()).await;
    let prefix = unique_prefix();
    let cache = cache_on(&format!("redis://{}", proxy.addr), &prefix, &[]).await;
    let key = THINGS.key(1);
    let row = Row::new(entry(1, "old"));
    within(cache.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    within(cache.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    assert_eq!(row.loads(), 1, "the second read is served by Redis");
    let redis_errors = || {
        counter(
            "crm_cache_requests_total",
            &[r#"tier="redis""#, r#"result="error""#],
        )
    };
    let errors_before = redis_errors();

    proxy.cut();

    let read = within(cache.get_or_load(&key, || row.load())).await;
    assert_eq!(read.unwrap(), "old");
    row.commit(entry(2, "new"));
    within(put(&cache, &key, entry(2, "new"))).await;
    let read = within(cache.get_or_load(&key, || row.load())).await;
    assert_eq!(read.unwrap(), "new");
    assert_eq!(row.loads(), 3, "with Redis down every read loads");
    assert!(
        redis_errors() > errors_before,
        "the Redis failure is counted"
    );
}

#[tokio::test]
async fn a_loader_error_reaches_the_caller_and_nothing_is_cached() {
    let prefix = unique_prefix();
    let cache = cache_on(&redis_url(), &prefix, &[]).await;
    let _listening = live(&cache).await;
    let key = THINGS.key(1);

    let err = within(cache.get_or_load(&key, || async { Err(ApiError::not_found("thing", "1")) }))
        .await
        .unwrap_err();

    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(in_redis(&cache, &key).await, None);
    let row = Row::new(entry(1, "found"));
    let read = within(cache.get_or_load(&key, || row.load()))
        .await
        .unwrap();
    assert_eq!(read, "found");
    assert_eq!(row.loads(), 1);
}

#[tokio::test]
async fn an_entry_redis_cannot_decode_as_the_keyspaces_type_is_loaded_from_the_row() {
    let prefix = unique_prefix();
    let cache = cache_on(&redis_url(), &prefix, &[]).await;
    let key = THINGS.key(1);
    let mut redis = redis_connection().await;
    // Not an encoded string: a field of wire type 7, which does not exist.
    let _: () = redis
        .set(cache.redis_key(&key), b"1:\x0f\xff".to_vec())
        .await
        .unwrap();
    let row = Row::new(entry(1, "from the row"));

    let read = within(cache.get_or_load(&key, || row.load())).await;

    assert_eq!(read.unwrap(), "from the row");
    assert_eq!(row.loads(), 1);
}

#[tokio::test]
async fn keyspaces_keep_their_values_apart_and_each_key_reads_back_its_own_type() {
    const COUNTS: Keyspace<u64> = Keyspace::new("count");
    let prefix = unique_prefix();
    let cache = cache_on(&redis_url(), &prefix, &[]).await;
    let _listening = live(&cache).await;
    put(&cache, &THINGS.key(1), entry(1, "a thing")).await;
    cache.put(&COUNTS.key(1), 1, &42).await;

    let thing = within(cache.get_or_load(&THINGS.key(1), || async {
        Err(ApiError::not_found("thing", "1"))
    }))
    .await;
    let count = within(cache.get_or_load(&COUNTS.key(1), || async {
        Err(ApiError::not_found("count", "1"))
    }))
    .await;

    assert_eq!(thing.unwrap(), "a thing");
    assert_eq!(count.unwrap(), 42);
    assert_ne!(
        cache.redis_key(&THINGS.key(1)),
        cache.redis_key(&COUNTS.key(1))
    );
}
