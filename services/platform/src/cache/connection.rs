//! The Redis connection of a [`Cache`](super::Cache): up or known down, reconnected by one
//! background task, and the replay of writes that missed Redis (see the module docs of
//! `cache`).

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, RedisError, Script};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::count;

/// Reconnect backoff: the first retry, and the longest wait between attempts.
pub(super) const RECONNECT_FIRST: Duration = Duration::from_millis(250);
pub(super) const RECONNECT_MAX: Duration = Duration::from_secs(1);

/// Writes that missed Redis remembered for replay; past this the namespace is dropped instead.
const UNPUBLISHED_CAP: usize = 100_000;

/// Deletes the stored entry if it is older than ARGV[1] (or unreadable): the replay of a write
/// that could not reach Redis, which must not remove a newer entry written since.
const DELETE_IF_OLDER: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%-?%d+):'))
  if version == nil or version < tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1])
    return 1
  end
end
return 0
";
/// How often, while up, writes that missed Redis just before it came back are replayed.
const REPLAY_EVERY: Duration = Duration::from_millis(200);

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

/// The Redis connection and its up/down state, shared with the task that reconnects it.
pub(super) struct RedisTier {
    pub(super) client: redis::Client,
    /// Connect and response timeouts of every connection made.
    connection_config: AsyncConnectionConfig,
    /// Cloned out (never held across I/O) by each command.
    connection: std::sync::RwLock<Option<MultiplexedConnection>>,
    up: AtomicBool,
    /// Wakes the reconnect task when a call marks Redis down.
    went_down: Notify,
    /// `redis.timeout_ms`: the bound on each command.
    pub(super) timeout: Duration,
    pub(super) set_if_newer: Script,
    delete_if_older: Script,
    /// The invalidation channel.
    pub(super) channel: String,
    /// `<redis.key_prefix>:<service>`, for dropping the namespace when replay overflowed.
    namespace: String,
    unpublished: std::sync::Mutex<Unpublished>,
}

/// Writes that could not reach Redis: key → newest version written.
#[derive(Default)]
struct Unpublished {
    versions: HashMap<String, i64>,
    overflowed: bool,
}

impl Unpublished {
    fn note(&mut self, key: &str, version: i64) {
        if let Some(known) = self.versions.get_mut(key) {
            *known = (*known).max(version);
        } else if self.versions.len() < UNPUBLISHED_CAP {
            self.versions.insert(key.to_string(), version);
        } else {
            self.overflowed = true;
        }
    }

    fn is_empty(&self) -> bool {
        self.versions.is_empty() && !self.overflowed
    }
}

/// Whether `err` says the connection, rather than the command, failed.
fn is_connection_error(err: &RedisError) -> bool {
    err.is_connection_dropped()
        || err.is_io_error()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
}

impl RedisTier {
    /// The tier of `url`, down until [`RedisTier::keep_connected`] connects it.
    pub(super) fn new(
        url: &str,
        timeout: Duration,
        channel: String,
        namespace: String,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(url).map_err(|e| anyhow::anyhow!("redis.url: {e}"))?,
            // Connecting happens off the call path, so it may take longer than a command.
            connection_config: AsyncConnectionConfig::new()
                .set_connection_timeout(timeout * 4)
                .set_response_timeout(timeout),
            connection: std::sync::RwLock::new(None),
            up: AtomicBool::new(false),
            went_down: Notify::new(),
            timeout,
            set_if_newer: Script::new(SET_IF_NEWER),
            delete_if_older: Script::new(DELETE_IF_OLDER),
            channel,
            namespace,
            unpublished: std::sync::Mutex::new(Unpublished::default()),
        })
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Marks Redis down (once per outage) and wakes the reconnect task.
    fn mark_down(&self, why: &dyn Display) {
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::gauge!("crm_cache_redis_up", "cache" => self.namespace.clone()).set(0.0);
            tracing::warn!(reason = %why, "Redis marked down; serving from PostgreSQL and reconnecting in the background");
            self.went_down.notify_one();
        }
    }

    /// Runs `op` on the connection: `None` at once while Redis is known down, and `None` on a
    /// failure, which marks it down if the connection (or its timeout) was at fault.
    pub(super) async fn run<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let connection = self
            .is_up()
            .then(|| {
                self.connection
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            })
            .flatten();
        let Some(connection) = connection else {
            count("redis", "skipped");
            return None;
        };
        match tokio::time::timeout(self.timeout, op(connection)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(err)) => {
                count("redis", "error");
                if is_connection_error(&err) {
                    self.mark_down(&err);
                } else {
                    tracing::warn!(error = %err, "Redis command failed; serving from PostgreSQL");
                }
                None
            }
            Err(_) => {
                count("redis", "error");
                self.mark_down(&format_args!(
                    "a command took longer than redis.timeout_ms ({:?})",
                    self.timeout
                ));
                None
            }
        }
    }

    /// Keeps Redis connected until `stop`: waits for a call to mark it down, then connects
    /// again with backoff. While up, it replays writes that missed Redis (a call that found
    /// Redis down just before it came back).
    pub(super) async fn keep_connected(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = RECONNECT_FIRST;
        let mut first = true;
        loop {
            if self.is_up() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.went_down.notified() => {}
                    _ = tokio::time::sleep(REPLAY_EVERY) => {
                        let pending = !self.unpublished().is_empty();
                        if pending
                            && let Some(mut connection) = self.current_connection()
                            && let Err(err) = self.replay(&mut connection).await
                        {
                            self.mark_down(&err);
                        }
                    }
                }
                continue;
            }
            let attempt = tokio::select! {
                _ = stop.cancelled() => return,
                attempt = self.connect() => attempt,
            };
            match attempt {
                Ok(connection) => {
                    *self
                        .connection
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Some(connection);
                    self.up.store(true, Ordering::Release);
                    metrics::gauge!("crm_cache_redis_up", "cache" => self.namespace.clone())
                        .set(1.0);
                    tracing::info!("connected to Redis");
                    backoff = RECONNECT_FIRST;
                    first = false;
                }
                Err(err) => {
                    if first {
                        tracing::warn!(error = %err, "Redis unreachable; serving from PostgreSQL and retrying in the background");
                        first = false;
                    } else {
                        tracing::debug!(error = %err, "Redis still unreachable");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
    }

    fn current_connection(&self) -> Option<MultiplexedConnection> {
        self.connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A fresh connection that answers `PING`, after replaying the writes that missed Redis.
    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&self.connection_config)
            .await?;
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await?;
        self.replay(&mut connection).await?;
        Ok(connection)
    }

    fn unpublished(&self) -> std::sync::MutexGuard<'_, Unpublished> {
        self.unpublished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops from Redis the entries older than writes that missed it, and announces those
    /// writes' versions so every instance drops older copies. On failure what is left stays
    /// remembered.
    async fn replay(&self, connection: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let Unpublished {
            versions,
            overflowed,
        } = std::mem::take(&mut *self.unpublished());
        if overflowed {
            if let Err(err) = self.drop_namespace(connection).await {
                self.unpublished().overflowed = true;
                return Err(err);
            }
            tracing::warn!(
                cap = UNPUBLISHED_CAP,
                "more writes missed Redis than are remembered; dropped the cache namespace"
            );
            return Ok(());
        }
        let mut pending = versions.into_iter();
        while let Some((key, version)) = pending.next() {
            let replayed = async {
                self.delete_if_older
                    .key(&key)
                    .arg(version)
                    .invoke_async::<i64>(connection)
                    .await?;
                connection
                    .publish::<_, _, i64>(&self.channel, format!("inv:0:{version}:{key}"))
                    .await
            };
            if let Err(err) = tokio::time::timeout(self.timeout, replayed)
                .await
                .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))
            {
                let mut unpublished = self.unpublished();
                unpublished.note(&key, version);
                for (key, version) in pending {
                    unpublished.note(&key, version);
                }
                return Err(err);
            }
        }
        Ok(())
    }

    /// Deletes every key of this cache's namespace and tells every instance to flush its tier.
    async fn drop_namespace(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let pattern = format!("{}:*", glob_escape(&self.namespace));
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(connection)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<i64>(connection)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        connection
            .publish::<_, _, i64>(&self.channel, "flush")
            .await?;
        Ok(())
    }

    /// Remembers a write that could not reach Redis, for [`RedisTier::replay`].
    pub(super) fn note_unpublished(&self, key: &str, version: i64) {
        self.unpublished().note(key, version);
    }
}

/// `text` with Redis glob characters escaped, for a `SCAN MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_written_twice_during_an_outage_is_replayed_once_with_its_newest_version() {
        let mut unpublished = Unpublished::default();
        unpublished.note("k", 3);
        unpublished.note("k", 2);

        assert_eq!(unpublished.versions, HashMap::from([("k".to_string(), 3)]));
        assert!(!unpublished.overflowed);
    }

    #[test]
    fn past_the_cap_a_new_key_marks_the_replay_overflowed_but_known_keys_still_update() {
        let mut unpublished = Unpublished::default();
        for i in 0..UNPUBLISHED_CAP {
            unpublished.note(&i.to_string(), 1);
        }
        unpublished.note("0", 5);
        assert!(!unpublished.overflowed);

        unpublished.note("one too many", 1);

        assert!(unpublished.overflowed);
        assert_eq!(unpublished.versions.len(), UNPUBLISHED_CAP);
        assert_eq!(unpublished.versions["0"], 5);
    }

    #[test]
    fn a_prefix_with_glob_characters_matches_only_itself() {
        assert_eq!(glob_escape(r"crm[1]*?\x"), r"crm\[1\]\*\?\\x");
    }
}
