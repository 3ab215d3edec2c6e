//! What the platform's integration tests share: fresh databases, unique Redis prefixes,
//! configuration, a TCP proxy that plays an outage, bounded waits and the metrics recorder.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crm_platform::config::Config;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use uuid::Uuid;

/// The longest a test waits for any one thing before failing instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test after [`WAIT`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("no answer within the test's wait bound")
}

/// Polls `condition` until it holds, failing the test with `what` after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin URL of the test PostgreSQL server.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// The test Redis.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// Creates a fresh, empty database `crm_test_<uuid>` (the test runner drops them all after a
/// run) and returns its URL.
pub async fn fresh_database() -> String {
    let name = format!("crm_test_{}", Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&admin_url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL at {} (set DATABASE_URL): {e}",
                admin_url()
            )
        });
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("creating the test database");
    admin.close().await;
    let (base, _) = admin_url()
        .rsplit_once('/')
        .map(|(base, db)| (base.to_string(), db.to_string()))
        .expect("DATABASE_URL has a database path");
    format!("{base}/{name}")
}

/// A pool on `url`.
pub async fn pool(url: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test database (DATABASE_URL): {e}"))
}

/// A Redis key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}", Uuid::now_v7().simple())
}

/// A raw connection to the test Redis, after checking that it answers.
pub async fn redis_connection() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).expect("REDIS_URL is a Redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("these tests need Redis at {url} (set REDIS_URL): {e}"));
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("Redis at {url} (REDIS_URL) does not answer PING: {e}"));
    assert_eq!(pong, "PONG");
    conn
}

/// The configuration from the defaults and `env` only (the process's environment is not read).
pub fn config(env: &[(&str, &str)]) -> Config {
    Config::load_from(
        None,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap_or_else(|e| panic!("test configuration: {e}"))
}

/// The process's Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("installing the metrics recorder")
    })
}

/// The sum of every series of the counter `name` whose labels include all of `labels`
/// (`key="value"` strings).
pub fn counter(name: &str, labels: &[&str]) -> u64 {
    metrics()
        .render()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|l| rest.contains(l)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum::<f64>() as u64
}

/// A TCP proxy in front of a server that a test can cut and restore, to play an outage. While
/// cut it drops every open connection and closes each new one as soon as it is accepted; it
/// keeps its port for its whole life.
pub struct Outage {
    pub addr: SocketAddr,
    up: Arc<tokio::sync::watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Outage {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(tokio::sync::watch::Sender::new(true));
        let state = up.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*state.borrow() {
                    continue; // dropped: the client sees its connection closed
                }
                let mut cut = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up, accept }
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.accept.abort();
        self.up.send_replace(false);
    }
}

/// The host:port of a `redis://host:port` URL, for the proxy to forward to.
pub fn redis_addr() -> SocketAddr {
    let url = redis_url();
    let host_port = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .replace("localhost", "127.0.0.1");
    host_port
        .parse()
        .unwrap_or_else(|e| panic!("REDIS_URL host must be an IP:port for outage tests: {e}"))
}
