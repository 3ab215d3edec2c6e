//! Where the test PostgreSQL and Redis are, from `DATABASE_URL` and `REDIS_URL` (the local
//! defaults otherwise), and the address arithmetic outage tests need.

use std::net::SocketAddr;

/// The admin URL of the test PostgreSQL server (a database on it that exists).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// The URL of the test Redis.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// The host:port of [`admin_url`], for an [`Outage`](super::Outage) proxy to forward to.
pub fn postgres_addr() -> SocketAddr {
    let url = admin_url();
    let after_at = url.rsplit_once('@').map(|(_, rest)| rest).unwrap_or(&url);
    let host_port = after_at.split('/').next().unwrap_or_default();
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    };
    socket_addr(&host_port, "DATABASE_URL")
}

/// The host:port of [`redis_url`], for an [`Outage`](super::Outage) proxy to forward to.
pub fn redis_addr() -> SocketAddr {
    let url = redis_url();
    let host_port = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_string();
    socket_addr(&host_port, "REDIS_URL")
}

/// `host_port` as an address; a proxy needs an IP, so only `localhost` is resolved.
fn socket_addr(host_port: &str, variable: &str) -> SocketAddr {
    host_port
        .replace("localhost", "127.0.0.1")
        .parse()
        .unwrap_or_else(|e| panic!("{variable} host must be an IP:port for outage tests: {e}"))
}

/// `url` (a database URL) with its host:port replaced by `addr`, e.g. an outage proxy's.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme_user, rest) = url.rsplit_once('@').expect("DATABASE_URL with user@host");
    let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
    format!("{scheme_user}@{addr}/{path}")
}

/// A connection to the test Redis, after checking that it answers: the one place a test learns
/// that Redis is missing.
pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    redis_connection_at(&redis_url()).await
}

/// A connection to the Redis at `url`, after checking that it answers.
pub async fn redis_connection_at(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("REDIS_URL is a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!("these tests need Redis at {url} (set REDIS_URL, or run scripts/test): {e}")
        });
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} (REDIS_URL) does not answer PING: {e}"));
    assert_eq!(pong, "PONG");
    conn
}

/// A Redis key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}
