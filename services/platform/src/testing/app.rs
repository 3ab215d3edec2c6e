//! A real server running any set of service modules on an ephemeral port, for one test.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::auth::{AuthorizedChannel, BearerAuth, JWT_SECRET};
use super::backends::{redis_connection, redis_url};
use super::database::{fresh_database, pool};
use super::wait::{WAIT, within};
use crate::config::Config;
use crate::server::{ServiceContext, ServiceModule};

/// Builds one service for a server, as `crm serve` does (e.g. `crm_customer::module`).
pub type ModuleFactory<'a> = &'a dyn Fn(&ServiceContext) -> anyhow::Result<ServiceModule>;

/// The health status `SERVING` (`grpc.health.v1`).
const SERVING: i32 = 1;

/// The configuration from the defaults and `env` only (the process's environment is not read).
pub fn config_from(env: &[(&str, &str)]) -> Config {
    Config::load_from(
        None,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap_or_else(|e| panic!("test configuration: {e}"))
}

/// A test server's configuration over `database_url` and `redis_url`, then `extra`.
///
/// Its Redis keys and invalidation channel are prefixed with the database's name: instances
/// over the same database share a cache, as in production, and no other test's instances see
/// their entries or have to acknowledge their invalidations. Tokens are checked with
/// [`JWT_SECRET`]; no metrics port is opened; a pooled connection is awaited for a second.
pub fn config(database_url: &str, redis_url: &str, extra: &[(&str, &str)]) -> Config {
    let database_name = database_url.rsplit('/').next().unwrap_or("crm_test");
    let mut env = vec![
        ("CRM__REDIS__KEY_PREFIX", database_name),
        ("CRM__DATABASE__URL", database_url),
        ("CRM__REDIS__URL", redis_url),
        ("CRM__TELEMETRY__METRICS_ADDR", ""),
        ("CRM__AUTH__JWT_SECRET", JWT_SECRET),
        ("CRM__DATABASE__ACQUIRE_TIMEOUT_MS", "1000"),
    ];
    env.extend_from_slice(extra);
    config_from(&env)
}

/// A running server. Dropping it shuts the server down.
pub struct TestApp {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// The database URL the server was configured with.
    pub database_url: String,
    /// The server's configuration.
    pub config: Arc<Config>,
    /// Cancel to play SIGTERM: NOT_SERVING, then drain.
    pub shutdown: CancellationToken,
    /// The server task; it ends with what `crm_platform::server::serve` returned.
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TestApp {
    /// Serves `modules` over a fresh database and the real Redis.
    pub async fn spawn(modules: &[ModuleFactory<'_>]) -> Self {
        let database_url = fresh_database().await;
        let redis = redis_url();
        redis_connection().await;
        Self::spawn_with(config(&database_url, &redis, &[]), modules).await
    }

    /// Serves `modules` with `config` on an ephemeral port, once each module's database is
    /// migrated, and returns when the server reports SERVING.
    pub async fn spawn_with(config: Config, modules: &[ModuleFactory<'_>]) -> Self {
        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let ctx = ServiceContext::new(config.clone(), shutdown.clone());
        let mut built = Vec::with_capacity(modules.len());
        for module in modules {
            let module = module(&ctx).unwrap_or_else(|e| panic!("building a service: {e:#}"));
            module
                .database
                .migrate()
                .await
                .unwrap_or_else(|e| panic!("migrating {}: {e:#}", module.name));
            built.push(module);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding an ephemeral port");
        let addr = listener.local_addr().expect("the server's address");
        // As `crm serve` does: calls between the services of this app go over loopback.
        ctx.loopback.announce(addr, built.iter().map(|m| m.name));
        let server = tokio::spawn({
            let (config, shutdown) = (config.clone(), shutdown.clone());
            async move { crate::server::serve(&config, built, listener, shutdown).await }
        });
        let database_url = secrecy::ExposeSecret::expose_secret(&config.database.url).to_string();
        let app = Self {
            addr,
            database_url,
            config,
            shutdown,
            server,
        };
        wait_serving(addr).await;
        app
    }

    /// A channel to the server whose unary calls fail after [`WAIT`] instead of hanging the
    /// suite when the server never answers.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("an http URL")
            .connect_timeout(WAIT)
            .timeout(WAIT)
            .connect()
            .await
            .expect("connecting to the test server")
    }

    /// A channel whose calls carry `token` (see [`BearerAuth`]).
    pub async fn channel_with_token(&self, token: impl Into<Option<String>>) -> AuthorizedChannel {
        AuthorizedChannel::new(self.channel().await, BearerAuth::new(token))
    }

    /// A typed client whose calls carry `token`, e.g.
    /// `app.typed_client(user_token(&["customer.read"]), CustomerServiceClient::with_interceptor)`.
    pub async fn typed_client<C>(
        &self,
        token: impl Into<Option<String>>,
        with_interceptor: impl FnOnce(Channel, BearerAuth) -> C,
    ) -> C {
        with_interceptor(self.channel().await, BearerAuth::new(token))
    }

    /// Waits (at most [`WAIT`]) for the server task to end, once [`TestApp::shutdown`] was
    /// cancelled, and returns what `serve` returned.
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        let server = std::mem::replace(&mut self.server, tokio::spawn(async { Ok(()) }));
        within(server).await.expect("the server task did not panic")
    }

    /// A pool on the server's database (through whatever proxy the server uses).
    pub async fn pool(&self) -> sqlx::PgPool {
        pool(&self.database_url).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Waits until the server at `addr` reports SERVING overall (every service's database reachable
/// and migrated), failing the test after [`WAIT`].
pub async fn wait_serving(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !is_serving(addr).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "server at {addr} never became SERVING"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Whether the server at `addr` accepts a connection and reports itself SERVING overall (false
/// while it starts, once it is shutting down, and after it stopped).
pub async fn is_serving(addr: SocketAddr) -> bool {
    let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
        .expect("an http URL")
        .connect_timeout(WAIT)
        .timeout(WAIT)
        .connect()
        .await
    else {
        return false;
    };
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    matches!(response, Ok(answer) if answer.get_ref().status == SERVING)
}

/// The health status (`grpc.health.v1`) the server at `addr` reports for `service` ("" for
/// the server as a whole).
pub async fn health_of(addr: SocketAddr, service: &str) -> i32 {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("an http URL")
        .connect()
        .await
        .expect("connecting to the test server");
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("a health check")
        .into_inner()
        .status
}
