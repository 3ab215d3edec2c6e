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
//! - The in-process tier is used only while this instance's subscription is live. When it
//!   drops, the tier is flushed and bypassed until the subscription is back (and flushed again
//!   then), so a missed invalidation can never be served.
//! - Redis failures never fail a call: they are logged, counted
//!   (`crm_cache_requests_total{tier="redis",result="error"}`) and the value comes from
//!   PostgreSQL.

use std::any::Any;
use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use rand::Rng;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use secrecy::ExposeSecret;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::{CacheConfig, RedisConfig};
use crate::error::ApiError;

/// Keeps whichever of the stored and the offered entry has the higher version.
const SET_IF_NEWER: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%-?%d+):'))
  if version and version >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
";

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
    local_live: AtomicBool,
    /// Writes waiting for acknowledgements of their invalidation, by message token.
    pending_acks: std::sync::Mutex<std::collections::HashMap<u64, tokio::sync::watch::Sender<i64>>>,
    redis: Option<RedisTier>,
    ttl: Duration,
    jitter_pct: u8,
}

struct RedisTier {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    last_attempt_ms: AtomicU64,
    started: Instant,
    timeout: Duration,
    script: Script,
    channel: String,
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

impl RedisTier {
    /// A connection, or `None` while Redis is unreachable. Reconnects at most once a second so
    /// an outage costs each call nothing but a check.
    async fn connection(&self) -> Option<ConnectionManager> {
        let mut guard = self.connection.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Some(conn.clone());
        }
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_attempt_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < 1000 {
            return None;
        }
        self.last_attempt_ms.store(now_ms.max(1), Ordering::Relaxed);
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        match tokio::time::timeout(
            self.timeout * 4,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        {
            Ok(Ok(conn)) => {
                tracing::info!("connected to Redis");
                *guard = Some(conn.clone());
                Some(conn)
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "Redis unreachable; serving from PostgreSQL");
                None
            }
            Err(_) => {
                tracing::warn!("Redis connect timed out; serving from PostgreSQL");
                None
            }
        }
    }

    async fn run<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection().await?;
        match tokio::time::timeout(self.timeout, op(conn)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(err)) => {
                count("redis", "error");
                tracing::warn!(error = %err, "Redis command failed; serving from PostgreSQL");
                if err.is_connection_dropped() || err.is_io_error() || err.is_connection_refusal() {
                    *self.connection.lock().await = None;
                }
                None
            }
            Err(_) => {
                count("redis", "error");
                tracing::warn!("Redis command timed out; serving from PostgreSQL");
                None
            }
        }
    }
}

impl Cache {
    /// A cache for `namespace` (the service's name: keys and the invalidation channel are
    /// prefixed with it). An empty `redis.url` runs without Redis and without the in-process
    /// tier, since nothing could tell it about other instances' writes.
    pub fn new(namespace: &str, redis: &RedisConfig, cache: &CacheConfig) -> anyhow::Result<Self> {
        let redis_url = redis.url.expose_secret();
        let redis_tier = if redis_url.is_empty() {
            None
        } else {
            Some(RedisTier {
                client: redis::Client::open(redis_url)
                    .map_err(|e| anyhow::anyhow!("redis.url: {e}"))?,
                connection: Mutex::new(None),
                last_attempt_ms: AtomicU64::new(0),
                started: Instant::now(),
                timeout: Duration::from_millis(redis.timeout_ms),
                script: Script::new(SET_IF_NEWER),
                channel: format!("{}:{namespace}:invalidate", redis.key_prefix),
            })
        };
        let ttl = Duration::from_secs(cache.ttl_secs);
        let local = (cache.local_capacity > 0 && redis_tier.is_some()).then(|| {
            moka::future::Cache::builder()
                .max_capacity(cache.local_capacity)
                .time_to_live(ttl)
                .build()
        });
        Ok(Self {
            inner: Arc::new(Inner {
                namespace: format!("{}:{namespace}", redis.key_prefix),
                local,
                announced: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(Duration::from_secs(60))
                    .build(),
                local_live: AtomicBool::new(false),
                pending_acks: std::sync::Mutex::new(std::collections::HashMap::new()),
                redis: redis_tier,
                ttl,
                jitter_pct: cache.ttl_jitter_pct,
            }),
        })
    }

    /// The Redis key of `key`, e.g. `crm:customer:customer:<id>` (`redis.key_prefix`, the
    /// service, the keyspace, the id): what to look for with `redis-cli`.
    pub fn redis_key<M>(&self, key: &Key<M>) -> String {
        format!("{}:{}", self.inner.namespace, key.path)
    }

    /// Whether the in-process tier is in use right now.
    pub fn local_tier_live(&self) -> bool {
        self.inner.local.is_some() && self.inner.local_live.load(Ordering::Acquire)
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

    async fn store_in_redis(&self, key: &str, entry: &Entry) {
        let Some(redis) = &self.inner.redis else {
            return;
        };
        let ttl_ms = self.ttl_with_jitter().as_millis() as u64;
        let payload = entry.bytes.to_vec();
        let version = entry.version;
        let script = &redis.script;
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
            .await;
    }

    /// Publishes a committed write: call after the transaction commits, with the row's new
    /// version and value. Never fails; a Redis outage is logged and counted.
    pub async fn put<M: CacheValue>(&self, key: &Key<M>, version: i64, value: &M) {
        let key = self.redis_key(key);
        self.store_everywhere(&key, version, value).await;
        let Some(redis) = &self.inner.redis else {
            return;
        };
        let token: u64 = rand::rng().random();
        let (acks_tx, mut acks) = tokio::sync::watch::channel(0i64);
        self.pending_acks().insert(token, acks_tx);
        let message = format!("inv:{token}:{version}:{key}");
        let channel = redis.channel.clone();
        let receivers = redis
            .run(|mut conn| async move { conn.publish::<_, _, i64>(channel, message).await })
            .await;
        if let Some(receivers) = receivers.filter(|n| *n > 0) {
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
        self.pending_acks().remove(&token);
    }

    /// Publishes a newly created value: no instance can hold an older copy of a key that did
    /// not exist (misses are never cached), so no invalidation round is needed.
    pub async fn put_new<M: CacheValue>(&self, key: &Key<M>, version: i64, value: &M) {
        self.store_everywhere(&self.redis_key(key), version, value)
            .await;
    }

    /// Announces `version` of `key` and stores the value in this instance's tier and Redis.
    async fn store_everywhere<M: CacheValue>(&self, key: &str, version: i64, value: &M) {
        self.note_announced(key, version);
        if let Some(local) = &self.inner.local {
            keep_newer_locally(local, key, LocalEntry::new(version, value.clone())).await;
        }
        let entry = Entry {
            version,
            bytes: value.encode_to_vec().into(),
        };
        self.store_in_redis(key, &entry).await;
    }

    fn pending_acks(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, tokio::sync::watch::Sender<i64>>>
    {
        self.inner
            .pending_acks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn note_announced(&self, key: &str, version: i64) {
        let announced = &self.inner.announced;
        let newest = announced.get(key).map_or(version, |v| v.max(version));
        announced.insert(key.to_string(), newest);
    }

    /// Handles one message on the invalidation channel: `inv:<token>:<version>:<key>` (drop
    /// older copies of `key`, then acknowledge) or `ack:<token>` (count an acknowledgement for
    /// one of this instance's writes).
    async fn handle_message(&self, message: &str) {
        if let Some(token) = message.strip_prefix("ack:") {
            if let Ok(token) = token.parse::<u64>()
                && let Some(acks) = self.pending_acks().get(&token)
            {
                acks.send_modify(|n| *n += 1);
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
        if let Some(redis) = &self.inner.redis {
            let channel = redis.channel.clone();
            let ack = format!("ack:{token}");
            redis
                .run(|mut conn| async move { conn.publish::<_, _, i64>(channel, ack).await })
                .await;
        }
    }

    /// Keeps this instance subscribed to other instances' invalidations until `shutdown`. The
    /// in-process tier is live only while the subscription is.
    pub fn spawn_invalidation_listener(&self, shutdown: CancellationToken) {
        let (Some(_), Some(redis)) = (&self.inner.local, &self.inner.redis) else {
            return;
        };
        let cache = self.clone();
        let client = redis.client.clone();
        let channel = redis.channel.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    redis::RedisResult::Ok(pubsub)
                };
                let pubsub = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    result = tokio::time::timeout(Duration::from_secs(2), subscribed) => result,
                };
                match pubsub {
                    Ok(Ok(pubsub)) => {
                        // Writes made while unsubscribed were never announced here: start empty.
                        if let Some(local) = &cache.inner.local {
                            local.invalidate_all();
                        }
                        cache.inner.local_live.store(true, Ordering::Release);
                        backoff = Duration::from_millis(200);
                        tracing::info!(%channel, "in-process cache tier live");
                        let mut messages = pubsub.into_on_message();
                        loop {
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                message = messages.next() => match message {
                                    Some(message) => {
                                        let payload: String = message.get_payload().unwrap_or_default();
                                        cache.handle_message(&payload).await;
                                    }
                                    None => break,
                                },
                            }
                        }
                        cache.inner.local_live.store(false, Ordering::Release);
                        if let Some(local) = &cache.inner.local {
                            local.invalidate_all();
                        }
                        tracing::warn!(%channel, "lost the invalidation subscription; in-process cache tier off");
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, "cannot subscribe to invalidations yet");
                    }
                    Err(_) => tracing::debug!("subscribing to invalidations timed out"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
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
