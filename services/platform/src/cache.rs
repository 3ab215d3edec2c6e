//! Read-through cache: an in-process tier in front of Redis, in front of PostgreSQL.
//!
//! Values are typed: a [`Keyspace`] names a kind of value and fixes its protobuf type (as
//! svix's `kv_def!`), so [`Cache::get_or_load`] returns that type and [`Cache::put`] takes it;
//! the encoding for Redis is done here, once. A service declares one keyspace per resource:
//!
//! ```ignore
//! const CUSTOMERS: Keyspace<pb::Customer> = Keyspace::new("customer");
//! let customer = cache.get_or_load(&CUSTOMERS.key(id), || load(id)).await?;
//! cache.put(&CUSTOMERS.key(id), row.version, &customer).await;
//! ```
//!
//! Coherence:
//!
//! - Entries carry the row's version. Redis is only ever written through a script that keeps the
//!   newer version, so a reader that loaded an old row cannot overwrite a writer's newer entry.
//! - A miss on the in-process tier is single-flight: concurrent callers for one key share one
//!   load.
//! - After a commit the writer calls [`Cache::put`]: the new entry goes to its own tier and
//!   Redis, and an invalidation (key, version) is published on Redis pub/sub so every other
//!   instance drops older copies from its in-process tier. The writer then waits (bounded by
//!   `redis.timeout_ms`) until every subscribed instance has acknowledged it, so once a write
//!   has returned no instance serves the older copy. A pub/sub message alone is not enough: it
//!   can still sit unread in another instance's socket when the caller's next read arrives there.
//! - A load that raced with a write (it read the row before the write committed) is detected by
//!   the announced version and done again, so its result never reaches a caller who came after
//!   the write.
//!
//! Redis outages cost a call nothing:
//!
//! - Redis is either up or known to be down (an atomic flag). A connection error or a command
//!   slower than `redis.timeout_ms` marks it down; while down, calls skip Redis without waiting
//!   for anything (counted as `crm_cache_requests_total{tier="redis",result="skipped"}`) and
//!   read from PostgreSQL. One background task per cache reconnects, with a backoff of
//!   250 ms doubling to 1 s, and marks Redis up once a fresh connection answers `PING`. No lock
//!   is held across I/O on the call path. (The redis crate's `ConnectionManager` reconnects by
//!   itself too, but a command issued meanwhile awaits its reconnect: the stall this replaces.
//!   The crate's multiplexed connection with its connect and response timeouts is what is used.)
//! - A write whose entry or invalidation could not reach Redis is remembered (key and version,
//!   up to 100,000 keys) and replayed as soon as Redis is reachable again, before it is marked
//!   up: an older entry is deleted from Redis and the version is announced to every instance.
//!   So a value written during an outage is not served stale from Redis once Redis is back
//!   (past that cap, the whole namespace is dropped from Redis and every instance flushes).
//!
//! Stale reads are bounded: **a read that starts more than 500 ms after a write was acknowledged
//! elsewhere never returns the older value**, whatever happened to this instance's connections.
//!
//! - Every 200 ms each instance publishes a heartbeat (its send time) on a channel of its own,
//!   which its invalidation subscription also listens to. Redis delivers a subscriber's messages
//!   in the order it executed the publishes, so when a heartbeat sent at `s` comes back, every
//!   invalidation Redis executed before `s` has been applied here. (That order holds on one
//!   Redis server, with or without replicas; Redis Cluster does not promise it across nodes.)
//! - The in-process tier is used only while the newest heartbeat seen back was sent less than
//!   500 ms ago, Redis is up, and the tier has been flushed since it was last off. A read checks
//!   that against the clock itself, so the bound does not depend on when a background task
//!   runs. A write acknowledged at `t` had its invalidation executed by Redis before `t`; a read
//!   at `r > t + 500 ms` uses the tier only with a heartbeat sent after `r - 500 ms > t`, which
//!   came back after that invalidation. Otherwise it reads Redis or PostgreSQL.
//! - A connection error or timeout on the call path turns the tier off at once (Redis is marked
//!   down); other errors (a failing script, say) are only logged and counted. A subscription that carries no heartbeat for 2 s is dropped and made again, and the
//!   tier is flushed every time it goes off and again before it goes back on.
//! - Acknowledgements are sent from their own tasks, so a slow or dead Redis never stops the
//!   listener from reading messages.
//! - Partition: if the *writer* cannot reach Redis while the reader can, no invalidation is
//!   published, and the reader keeps serving the older value from its tier and from Redis until
//!   the writer reaches Redis again (its replay then drops the older entry and announces the new
//!   version: within one reconnect backoff, at most 1 s, of Redis becoming reachable to it), or,
//!   if the writer never does (it crashed meanwhile), until the entry's TTL
//!   (`cache.ttl_secs`). Nothing else can tell the reader.
//! - Redis failures never fail a call: they are logged, counted
//!   (`crm_cache_requests_total{tier="redis",result="error"}`) and the value comes from
//!   PostgreSQL. `crm_cache_redis_up{cache}` is 1 while Redis is in use, 0 while it is down.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use rand::Rng;
use redis::AsyncCommands;
use secrecy::ExposeSecret;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{CacheConfig, RedisConfig};
use crate::error::ApiError;

mod connection;

use connection::{RECONNECT_FIRST, RECONNECT_MAX, RedisTier};

/// The stale-read bound: the in-process tier is used only while a heartbeat sent less than this
/// long ago has come back through this instance's subscription (see the module docs).
pub const STALE_READ_BOUND: Duration = Duration::from_millis(500);

/// How often an instance publishes the heartbeat it expects back: well inside
/// [`STALE_READ_BOUND`], so a busy machine can delay one by 300 ms before the tier flaps.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);

/// A subscription that has carried no heartbeat for this long is presumed half-dead (its socket
/// open, its messages lost) and made again.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(2);

/// How often the listener re-evaluates the tier's state when no message arrives.
const WATCHDOG_EVERY: Duration = Duration::from_millis(100);

/// A kind of cached value: the segment its keys carry (`<redis.key_prefix>:<service>:<kind>:<id>`)
/// and the protobuf type stored under them. Declare one per resource, as a `const`, so a key can
/// only ever be read back as the type it was written with.
pub struct Keyspace<M> {
    kind: &'static str,
    value: PhantomData<fn() -> M>,
}

impl<M> Keyspace<M> {
    /// The keyspace `kind`, e.g. `customer`; unique within a service.
    pub const fn new(kind: &'static str) -> Self {
        Self {
            kind,
            value: PhantomData,
        }
    }

    /// The key of the value with this `id`.
    pub fn key(&self, id: impl Display) -> Key<M> {
        Key {
            path: format!("{}:{id}", self.kind),
            value: PhantomData,
        }
    }
}

/// The key of one cached value of type `M`, made by [`Keyspace::key`].
pub struct Key<M> {
    /// `<kind>:<id>`; the cache puts its namespace in front.
    path: String,
    value: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for Key<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Key").field(&self.path).finish()
    }
}

/// A value as loaded from its row, with the row's version (higher is newer).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<M> {
    /// The row's version.
    pub version: i64,
    /// The value.
    pub value: M,
}

/// What a cached value must be: a protobuf message (Redis holds its encoding) that the
/// in-process tier can hand out copies of.
pub trait CacheValue: Message + Default + Clone + Send + Sync + 'static {}

impl<M: Message + Default + Clone + Send + Sync + 'static> CacheValue for M {}

/// A value as Redis holds it: `<version>:<encoded value>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    version: i64,
    bytes: Bytes,
}

impl Entry {
    fn from_redis(raw: &[u8]) -> Option<Self> {
        let colon = raw.iter().position(|b| *b == b':')?;
        let version = std::str::from_utf8(&raw[..colon]).ok()?.parse().ok()?;
        Some(Self {
            version,
            bytes: Bytes::copy_from_slice(&raw[colon + 1..]),
        })
    }
}

/// A value in the in-process tier: decoded once, so a hit costs a clone rather than a decode.
/// Values of every keyspace share the tier; the key's type says which type to take back out.
#[derive(Clone)]
struct LocalEntry {
    version: i64,
    value: Arc<dyn Any + Send + Sync>,
}

impl LocalEntry {
    fn new<M: CacheValue>(version: i64, value: M) -> Self {
        Self {
            version,
            value: Arc::new(value),
        }
    }

    fn value<M: CacheValue>(&self) -> Option<M> {
        self.value.downcast_ref::<M>().cloned()
    }
}

/// The cache of one service. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

struct Inner {
    namespace: String,
    local: Option<moka::future::Cache<String, LocalEntry>>,
    /// The newest version announced per key by invalidations, kept a little longer than a load
    /// can take, so a load that raced with a write cannot leave an older entry behind.
    announced: moka::sync::Cache<String, i64>,
    liveness: Liveness,
    /// Writes waiting for acknowledgements of their invalidation, by message token.
    pending_acks: std::sync::Mutex<HashMap<u64, tokio::sync::watch::Sender<i64>>>,
    redis: Option<Arc<RedisTier>>,
    ttl: Duration,
    jitter_pct: u8,
    /// Stops the reconnect task when the last handle to the cache goes.
    _reconnecting: Option<DropGuard>,
}

/// Whether the in-process tier may be used: see "Stale reads are bounded" in the module docs.
struct Liveness {
    started: Instant,
    /// Send time ([`Liveness::now_ms`]) of the newest own heartbeat seen back; 0 = none yet.
    echoed_ms: AtomicU64,
    /// Set by the listener only after flushing the tier; cleared whenever it goes off.
    on: AtomicBool,
    /// The channel this instance's heartbeats go to (unique per instance).
    heartbeat_channel: String,
}

impl Liveness {
    /// Milliseconds since the cache was made, from 1 (0 means "never").
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// How long ago the newest heartbeat seen back was sent.
    fn echo_age(&self) -> Duration {
        match self.echoed_ms.load(Ordering::Acquire) {
            0 => Duration::MAX,
            sent => Duration::from_millis(self.now_ms().saturating_sub(sent)),
        }
    }
}

/// Puts `entry` in the in-process tier unless it holds the same or a newer version: two
/// writers' puts can arrive out of commit order, and the later-arriving older one must not
/// replace the newer entry (as the Redis script ensures there).
async fn keep_newer_locally(
    local: &moka::future::Cache<String, LocalEntry>,
    key: &str,
    entry: LocalEntry,
) {
    local
        .entry_by_ref(key)
        .and_compute_with(|current| {
            let op = match current {
                Some(current) if current.value().version >= entry.version => {
                    moka::ops::compute::Op::Nop
                }
                _ => moka::ops::compute::Op::Put(entry.clone()),
            };
            std::future::ready(op)
        })
        .await;
}

/// Counts one cache look-up outcome.
fn count(tier: &'static str, result: &'static str) {
    metrics::counter!("crm_cache_requests_total", "tier" => tier, "result" => result).increment(1);
}

impl Cache {
    /// A cache for `namespace` (the service's name: keys and the invalidation channel are
    /// prefixed with it). An empty `redis.url` runs without Redis and without the in-process
    /// tier, since nothing could tell it about other instances' writes. Call it within a Tokio
    /// runtime: it starts connecting to Redis in the background at once, and calls made before
    /// that connection is up read from PostgreSQL.
    pub fn new(namespace: &str, redis: &RedisConfig, cache: &CacheConfig) -> anyhow::Result<Self> {
        let redis_url = redis.url.expose_secret();
        let full_namespace = format!("{}:{namespace}", redis.key_prefix);
        let channel = format!("{full_namespace}:invalidate");
        let timeout = Duration::from_millis(redis.timeout_ms);
        let redis_tier = if redis_url.is_empty() {
            None
        } else {
            Some(Arc::new(RedisTier::new(
                redis_url,
                timeout,
                channel.clone(),
                full_namespace.clone(),
            )?))
        };
        let reconnecting = redis_tier.as_ref().map(|tier| {
            metrics::gauge!("crm_cache_redis_up", "cache" => full_namespace.clone()).set(0.0);
            let stop = CancellationToken::new();
            tokio::spawn(tier.clone().keep_connected(stop.clone()));
            stop.drop_guard()
        });
        let ttl = Duration::from_secs(cache.ttl_secs);
        let local = (cache.local_capacity > 0 && redis_tier.is_some()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(cache.local_capacity)
                .time_to_live(ttl)
                .build()
        });
        let instance: u64 = rand::rng().random();
        Ok(Self {
            inner: Arc::new(Inner {
                namespace: full_namespace,
                local,
                announced: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(Duration::from_secs(60))
                    .build(),
                liveness: Liveness {
                    started: Instant::now(),
                    echoed_ms: AtomicU64::new(0),
                    on: AtomicBool::new(false),
                    heartbeat_channel: format!("{channel}:heartbeat:{instance:016x}"),
                },
                pending_acks: std::sync::Mutex::new(HashMap::new()),
                redis: redis_tier,
                ttl,
                jitter_pct: cache.ttl_jitter_pct,
                _reconnecting: reconnecting,
            }),
        })
    }

    /// The Redis key of `key`, e.g. `crm:customer:customer:<id>` (`redis.key_prefix`, the
    /// service, the keyspace, the id): what to look for with `redis-cli`.
    pub fn redis_key<M>(&self, key: &Key<M>) -> String {
        format!("{}:{}", self.inner.namespace, key.path)
    }

    /// Whether the in-process tier is in use right now: Redis is up, the tier was flushed since
    /// it was last off, and a heartbeat sent within [`STALE_READ_BOUND`] came back.
    pub fn local_tier_live(&self) -> bool {
        self.inner.local.is_some()
            && self.inner.liveness.on.load(Ordering::Acquire)
            && self.redis_up()
            && self.inner.liveness.echo_age() < STALE_READ_BOUND
    }

    /// Whether Redis is in use right now (false while it is known to be down, and until the
    /// first connection is made).
    pub fn redis_up(&self) -> bool {
        self.inner.redis.as_ref().is_some_and(|redis| redis.is_up())
    }

    fn ttl_with_jitter(&self) -> Duration {
        let pct = self.inner.jitter_pct as u64;
        if pct == 0 {
            return self.inner.ttl;
        }
        let ttl_ms = self.inner.ttl.as_millis() as u64;
        let cut = rand::rng().random_range(0..=ttl_ms * pct / 100);
        Duration::from_millis(ttl_ms - cut)
    }

    /// The value of `key`: from the in-process tier, else Redis, else `load` (PostgreSQL, with
    /// the row's version), filling the tiers on the way back. Errors come only from `load`.
    pub async fn get_or_load<M, F, Fut>(&self, key: &Key<M>, load: F) -> Result<M, ApiError>
    where
        M: CacheValue,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Versioned<M>, ApiError>>,
    {
        let key = self.redis_key(key);
        let Some(local) = self.inner.local.as_ref().filter(|_| self.local_tier_live()) else {
            return Ok(self.load_through_redis(&key, &load).await?.value);
        };
        if let Some(value) = local.get(&key).await.and_then(|e| e.value::<M>()) {
            count("local", "hit");
            return Ok(value);
        }
        count("local", "miss");
        // moka coalesces concurrent loads of one key into one; the others wait for it.
        let loaded = local
            .try_get_with_by_ref(&key, async {
                let loaded = self.load_through_redis(&key, &load).await?;
                Ok::<_, ApiError>(LocalEntry::new(loaded.version, loaded.value))
            })
            .await;
        match loaded {
            Ok(entry) if !self.announced_newer(&key, entry.version) => match entry.value::<M>() {
                Some(value) => Ok(value),
                // Only a keyspace reused with another type gets here: skip the tier.
                None => Ok(self.load_through_redis(&key, &load).await?.value),
            },
            Ok(_) => {
                // A write committed while this load was in flight: drop what was loaded and read
                // again, past the in-process tier.
                local.invalidate(&key).await;
                Ok(self.load_through_redis(&key, &load).await?.value)
            }
            Err(shared) => Err(ApiError::from_shared(shared)),
        }
    }

    fn announced_newer(&self, key: &str, version: i64) -> bool {
        self.inner
            .announced
            .get(key)
            .is_some_and(|announced| announced > version)
    }

    async fn load_through_redis<M, F, Fut>(
        &self,
        key: &str,
        load: &F,
    ) -> Result<Versioned<M>, ApiError>
    where
        M: CacheValue,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Versioned<M>, ApiError>>,
    {
        if let Some(cached) = self.read_redis(key).await {
            return Ok(cached);
        }
        let loaded = load().await?;
        let entry = Entry {
            version: loaded.version,
            bytes: loaded.value.encode_to_vec().into(),
        };
        self.store_in_redis(key, &entry).await;
        Ok(loaded)
    }

    /// The value Redis holds for `key`, if any and if it decodes as an `M`.
    async fn read_redis<M: CacheValue>(&self, key: &str) -> Option<Versioned<M>> {
        let redis = self.inner.redis.as_ref()?;
        let owned_key = key.to_string();
        let raw = redis
            .run(|mut conn| async move { conn.get::<_, Option<Vec<u8>>>(owned_key).await })
            .await?;
        let Some(entry) = raw.as_deref().and_then(Entry::from_redis) else {
            count("redis", "miss");
            return None;
        };
        match M::decode(entry.bytes) {
            Ok(value) => {
                count("redis", "hit");
                Some(Versioned {
                    version: entry.version,
                    value,
                })
            }
            Err(err) => {
                // Written by a build with another type for this keyspace. It stays until its
                // TTL: replacing it with an equal version would break the version ordering.
                count("redis", "miss");
                tracing::warn!(key, error = %err, "undecodable cache entry; loading the row");
                None
            }
        }
    }

    /// Stores `entry` in Redis if it is newer than what Redis holds; false if Redis could not be
    /// reached.
    async fn store_in_redis(&self, key: &str, entry: &Entry) -> bool {
        let Some(redis) = &self.inner.redis else {
            return true;
        };
        let ttl_ms = self.ttl_with_jitter().as_millis() as u64;
        let payload = entry.bytes.to_vec();
        let version = entry.version;
        let script = &redis.set_if_newer;
        let owned_key = key.to_string();
        redis
            .run(|mut conn| async move {
                script
                    .key(owned_key)
                    .arg(version)
                    .arg(payload)
                    .arg(ttl_ms)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await
            .is_some()
    }

    /// Publishes a committed write: call after the transaction commits, with the row's new
    /// version and value. Never fails; a Redis outage is logged and counted, and the write is
    /// replayed to Redis when it is back.
    pub async fn put<M: CacheValue>(&self, key: &Key<M>, version: i64, value: &M) {
        let key = self.redis_key(key);
        let stored = self.store_everywhere(&key, version, value).await;
        let Some(redis) = &self.inner.redis else {
            return;
        };
        let token: u64 = rand::rng().random_range(1..u64::MAX);
        let (acks_tx, mut acks) = tokio::sync::watch::channel(0i64);
        self.pending_acks().insert(token, acks_tx);
        let message = format!("inv:{token}:{version}:{key}");
        let channel = redis.channel.clone();
        let receivers = if stored {
            redis
                .run(|mut conn| async move { conn.publish::<_, _, i64>(channel, message).await })
                .await
        } else {
            None
        };
        match receivers {
            None => redis.note_unpublished(&key, version),
            Some(receivers) if receivers > 0 => {
                let all_acked = acks.wait_for(|acked| *acked >= receivers);
                if tokio::time::timeout(redis.timeout, all_acked)
                    .await
                    .is_err()
                {
                    metrics::counter!("crm_cache_invalidation_timeouts_total").increment(1);
                    tracing::warn!(
                        key,
                        receivers,
                        acked = *acks.borrow(),
                        "not every instance acknowledged a cache invalidation in time"
                    );
                }
            }
            Some(_) => {}
        }
        self.pending_acks().remove(&token);
    }

    /// Publishes a newly created value: no instance can hold an older copy of a key that did
    /// not exist (misses are never cached), so no invalidation round is needed.
    pub async fn put_new<M: CacheValue>(&self, key: &Key<M>, version: i64, value: &M) {
        let key = self.redis_key(key);
        if !self.store_everywhere(&key, version, value).await
            && let Some(redis) = &self.inner.redis
        {
            redis.note_unpublished(&key, version);
        }
    }

    /// Announces `version` of `key` and stores the value in this instance's tier and Redis;
    /// false if Redis could not be reached.
    async fn store_everywhere<M: CacheValue>(&self, key: &str, version: i64, value: &M) -> bool {
        self.note_announced(key, version);
        if let Some(local) = &self.inner.local {
            keep_newer_locally(local, key, LocalEntry::new(version, value.clone())).await;
        }
        let entry = Entry {
            version,
            bytes: value.encode_to_vec().into(),
        };
        self.store_in_redis(key, &entry).await
    }

    fn pending_acks(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, tokio::sync::watch::Sender<i64>>> {
        self.inner
            .pending_acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn note_announced(&self, key: &str, version: i64) {
        let announced = &self.inner.announced;
        let newest = announced.get(key).map_or(version, |v| v.max(version));
        announced.insert(key.to_string(), newest);
    }

    /// Handles one message on the invalidation channel: `inv:<token>:<version>:<key>` (drop
    /// older copies of `key`, then acknowledge unless the token is 0, a replay nobody waits
    /// for), `ack:<token>` (count an acknowledgement for one of this instance's writes) or
    /// `flush` (drop the whole tier).
    async fn handle_message(&self, message: &str) {
        if let Some(token) = message.strip_prefix("ack:") {
            if let Ok(token) = token.parse::<u64>()
                && let Some(acks) = self.pending_acks().get(&token)
            {
                acks.send_modify(|n| *n += 1);
            }
            return;
        }
        if message == "flush" {
            if let Some(local) = &self.inner.local {
                local.invalidate_all();
            }
            return;
        }
        let parsed = message.strip_prefix("inv:").and_then(|rest| {
            let mut parts = rest.splitn(3, ':');
            let token = parts.next()?.parse::<u64>().ok()?;
            let version = parts.next()?.parse::<i64>().ok()?;
            Some((token, version, parts.next()?))
        });
        let Some((token, version, key)) = parsed else {
            tracing::warn!(message, "ignoring a malformed cache invalidation");
            return;
        };
        self.note_announced(key, version);
        if let Some(local) = &self.inner.local
            && local.get(key).await.is_some_and(|e| e.version < version)
        {
            local.invalidate(key).await;
        }
        if token != 0
            && let Some(redis) = self.inner.redis.clone()
            && redis.is_up()
        {
            // From a task of its own: the listener must go on reading even if Redis is slow.
            let ack = format!("ack:{token}");
            tokio::spawn(async move {
                let channel = redis.channel.clone();
                redis
                    .run(|mut conn| async move { conn.publish::<_, _, i64>(channel, ack).await })
                    .await;
            });
        }
    }

    /// Notes a heartbeat of this instance's that came back through the subscription.
    fn heard_heartbeat(&self, payload: &str) {
        if let Ok(sent_ms) = payload.parse::<u64>() {
            self.inner
                .liveness
                .echoed_ms
                .fetch_max(sent_ms, Ordering::AcqRel);
        }
    }

    /// Turns the tier on (after flushing it) when it may be used, and off (flushing it) when it
    /// may not. Only the listener calls this, so "on" is always preceded by a flush.
    fn refresh_tier(&self, subscribed: bool) {
        let Some(local) = &self.inner.local else {
            return;
        };
        let liveness = &self.inner.liveness;
        let usable = subscribed && self.redis_up() && liveness.echo_age() < STALE_READ_BOUND;
        let on = liveness.on.load(Ordering::Acquire);
        if usable && !on {
            // Writes made while off may not have been announced here: start empty.
            local.invalidate_all();
            liveness.on.store(true, Ordering::Release);
            tracing::info!(channel = %liveness.heartbeat_channel, "in-process cache tier on");
        } else if !usable && on {
            liveness.on.store(false, Ordering::Release);
            local.invalidate_all();
            tracing::warn!(
                subscribed,
                redis_up = self.redis_up(),
                heartbeat_age_ms = liveness.echo_age().as_millis() as u64,
                "in-process cache tier off: invalidations can no longer be trusted to arrive"
            );
        }
    }

    /// Keeps this instance subscribed to other instances' invalidations, and sends the
    /// heartbeats that prove the subscription works, until `shutdown`. The in-process tier is
    /// used only while they come back (see the module docs).
    pub fn spawn_invalidation_listener(&self, shutdown: CancellationToken) {
        let (Some(_), Some(redis)) = (&self.inner.local, &self.inner.redis) else {
            return;
        };
        tokio::spawn(
            self.clone()
                .send_heartbeats(redis.clone(), shutdown.clone()),
        );
        tokio::spawn(self.clone().listen(redis.clone(), shutdown));
    }

    async fn send_heartbeats(self, redis: Arc<RedisTier>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let channel = self.inner.liveness.heartbeat_channel.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !redis.is_up() {
                continue; // nothing to prove, and not a skipped look-up to count
            }
            let sent_ms = self.inner.liveness.now_ms().to_string();
            let channel = channel.clone();
            redis
                .run(|mut conn| async move { conn.publish::<_, _, i64>(channel, sent_ms).await })
                .await;
        }
    }

    async fn listen(self, redis: Arc<RedisTier>, shutdown: CancellationToken) {
        let heartbeat_channel = self.inner.liveness.heartbeat_channel.clone();
        let channels = [redis.channel.clone(), heartbeat_channel.clone()];
        let mut backoff = RECONNECT_FIRST;
        loop {
            let subscribed = async {
                let mut pubsub = redis.client.get_async_pubsub().await?;
                pubsub.subscribe(&channels).await?;
                redis::RedisResult::Ok(pubsub)
            };
            let pubsub = tokio::select! {
                _ = shutdown.cancelled() => break,
                result = tokio::time::timeout(redis.timeout * 4, subscribed) => result,
            };
            match pubsub {
                Ok(Ok(pubsub)) => {
                    backoff = RECONNECT_FIRST;
                    tracing::debug!(channel = %redis.channel, "subscribed to invalidations");
                    let since = Instant::now();
                    let mut messages = pubsub.into_on_message();
                    let mut watchdog = tokio::time::interval(WATCHDOG_EVERY);
                    watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => {
                                self.refresh_tier(false);
                                return;
                            }
                            message = messages.next() => match message {
                                Some(message) => {
                                    let payload: String = message.get_payload().unwrap_or_default();
                                    if message.get_channel_name() == heartbeat_channel {
                                        self.heard_heartbeat(&payload);
                                    } else {
                                        self.handle_message(&payload).await;
                                    }
                                }
                                None => break,
                            },
                            _ = watchdog.tick() => {
                                let silent = self.inner.liveness.echo_age().min(since.elapsed());
                                if silent > RESUBSCRIBE_AFTER {
                                    tracing::warn!(channel = %redis.channel, "no heartbeat through the subscription; subscribing again");
                                    break;
                                }
                            }
                        }
                        self.refresh_tier(true);
                    }
                    self.refresh_tier(false);
                    tracing::warn!(channel = %redis.channel, "lost the invalidation subscription");
                }
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "cannot subscribe to invalidations yet");
                }
                Err(_) => tracing::debug!("subscribing to invalidations timed out"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
        self.refresh_tier(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_value_splits_at_its_first_colon_into_version_and_binary_value() {
        let entry = Entry {
            version: 42,
            bytes: Bytes::from_static(b"\x00:binary:\xff"),
        };
        assert_eq!(Entry::from_redis(b"42:\x00:binary:\xff"), Some(entry));
    }

    #[test]
    fn a_value_without_version_is_not_an_entry() {
        assert_eq!(Entry::from_redis(b"garbage"), None);
    }
}
