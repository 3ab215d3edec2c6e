//! Test harness: each test gets its own PostgreSQL database and a real server on a random
//! port, talking to the real Redis. Without a reachable PostgreSQL or Redis the tests fail
//! loudly instead of skipping.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crm_platform::config::Config;
use crm_platform::server::ServiceContext;
use crm_proto::crm::common::v1::{self as common, Principal, PrincipalKind};
use crm_proto::crm::customer::v1 as pb;
use crm_proto::crm::customer::v1::customer_service_client::CustomerServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use uuid::Uuid;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// The longest a test waits for any one answer from a server before failing.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test (instead of hanging the suite) after `CALL_TIMEOUT`: for
/// stream reads and other awaits that a channel timeout does not cover.
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(CALL_TIMEOUT, future)
        .await
        .expect("no answer within the test's call timeout")
}

/// The admin URL of the test PostgreSQL server (a database on it that exists).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

fn with_database(url: &str, database: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("DATABASE_URL has a database path");
    format!("{base}/{database}")
}

/// Creates a fresh, empty database and returns its URL.
pub async fn fresh_database() -> String {
    let name = format!("crm_test_{}", Uuid::now_v7().simple());
    let admin = sqlx::PgPool::connect(&admin_url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL at {} (set DATABASE_URL, or run scripts/test): {e}",
                admin_url()
            )
        });
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("creating the test database");
    admin.close().await;
    with_database(&admin_url(), &name)
}

/// A configuration for a test server. Its Redis keys and invalidation channel are prefixed with
/// the test database's name: instances over the same database share a cache, as in production,
/// and no other test's instances see their entries or have to acknowledge their invalidations.
pub fn config(database_url: &str, redis_url: &str, extra: &[(&str, &str)]) -> Config {
    let database_name = database_url.rsplit('/').next().unwrap_or("crm_test");
    let mut env = vec![
        (
            "CRM__REDIS__KEY_PREFIX".to_string(),
            database_name.to_string(),
        ),
        ("CRM__DATABASE__URL".to_string(), database_url.to_string()),
        ("CRM__REDIS__URL".to_string(), redis_url.to_string()),
        ("CRM__TELEMETRY__METRICS_ADDR".to_string(), String::new()),
        ("CRM__AUTH__JWT_SECRET".to_string(), JWT_SECRET.to_string()),
        (
            "CRM__DATABASE__ACQUIRE_TIMEOUT_MS".to_string(),
            "1000".to_string(),
        ),
    ];
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    Config::load_from(None, env).expect("test config is valid")
}

/// A running server.
pub struct TestApp {
    pub addr: SocketAddr,
    pub database_url: String,
    pub shutdown: CancellationToken,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// A client with a token granting every customer scope.
    pub async fn client(&self) -> Client {
        self.client_with_scopes(&["customer.read", "customer.write", "customer.gdpr"])
            .await
    }

    pub async fn client_with_scopes(&self, scopes: &[&str]) -> Client {
        let token = crm_platform::auth::mint_token(
            JWT_SECRET,
            "crm-suite",
            "crm-suite",
            "test",
            scopes,
            Duration::from_secs(600),
        );
        self.client_with_token(Some(token)).await
    }

    /// A client with every customer scope and a service's token (`principal_kind: "service"`)
    /// for `subject`.
    pub async fn service_client(&self, subject: &str) -> Client {
        let token = crm_platform::auth::mint_service_token(
            JWT_SECRET,
            "crm-suite",
            "crm-suite",
            subject,
            &["customer.read", "customer.write", "customer.gdpr"],
            Duration::from_secs(600),
        );
        self.client_with_token(Some(token)).await
    }

    pub async fn anonymous_client(&self) -> Client {
        self.client_with_token(None).await
    }

    /// A client that sends `token` (as is) on every call made through `Client::request`.
    pub async fn client_with_token(&self, token: Option<String>) -> Client {
        Client {
            inner: CustomerServiceClient::new(self.channel().await),
            token,
        }
    }

    /// A channel to the server whose unary calls fail after `CALL_TIMEOUT` instead of hanging
    /// the suite when the server never answers.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect()
            .await
            .expect("connecting to the test server")
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.database_url)
            .await
            .expect("test database")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the customer service on a random port over `database_url` (migrated first).
pub async fn spawn_with(config: Config) -> TestApp {
    let config = Arc::new(config);
    let database = crm_customer::database(&config).expect("database handle");
    database
        .migrate()
        .await
        .expect("migrating the test database");
    let shutdown = CancellationToken::new();
    let ctx = ServiceContext::new(config.clone(), shutdown.clone());
    let module = crm_customer::module(&ctx).expect("building the service");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let database_url = secrecy::ExposeSecret::expose_secret(&config.database.url).to_string();
    let server_config = config.clone();
    let token = shutdown.clone();
    let server = tokio::spawn(async move {
        crm_platform::server::serve(&server_config, vec![module], listener, token).await
    });
    let app = TestApp {
        addr,
        database_url,
        shutdown,
        server,
    };
    wait_serving(addr).await;
    app
}

/// Starts the service on a fresh database and the real Redis.
pub async fn spawn_app() -> TestApp {
    let url = fresh_database().await;
    let redis = redis_url();
    assert_redis_reachable(&redis).await;
    spawn_with(config(&url, &redis, &[])).await
}

pub async fn assert_redis_reachable(url: &str) {
    let client = redis::Client::open(url).expect("REDIS_URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!("these tests need Redis at {url} (set REDIS_URL, or run scripts/test): {e}")
        });
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("Redis PING");
}

/// Waits until the health check says SERVING (database reachable and migrated).
pub async fn wait_serving(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            if let Ok(response) = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                && response.into_inner().status == 1
            {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server at {addr} never became SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A customer client that adds the bearer token to every call.
#[derive(Clone)]
pub struct Client {
    pub inner: CustomerServiceClient<Channel>,
    token: Option<String>,
}

impl Client {
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }

    pub async fn create(&self, customer: pb::Customer) -> Result<pb::Customer, tonic::Status> {
        let request = self.request(pb::CreateCustomerRequest {
            customer: Some(customer),
            request_id: String::new(),
        });
        Ok(self
            .inner
            .clone()
            .create_customer(request)
            .await?
            .into_inner()
            .customer
            .unwrap())
    }

    pub async fn get(&self, id: &str) -> Result<pb::Customer, tonic::Status> {
        let request = self.request(pb::GetCustomerRequest { id: id.into() });
        Ok(self
            .inner
            .clone()
            .get_customer(request)
            .await?
            .into_inner()
            .customer
            .unwrap())
    }

    pub async fn list(
        &self,
        req: pb::ListCustomersRequest,
    ) -> Result<pb::ListCustomersResponse, tonic::Status> {
        let request = self.request(req);
        Ok(self
            .inner
            .clone()
            .list_customers(request)
            .await?
            .into_inner())
    }

    pub async fn update(
        &self,
        customer: pb::Customer,
        paths: &[&str],
    ) -> Result<pb::Customer, tonic::Status> {
        let request = self.request(pb::UpdateCustomerRequest {
            customer: Some(customer),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        });
        Ok(self
            .inner
            .clone()
            .update_customer(request)
            .await?
            .into_inner()
            .customer
            .unwrap())
    }
}

impl Client {
    pub async fn delete(&self, id: &str, etag: &str) -> Result<pb::Customer, tonic::Status> {
        let request = self.request(pb::DeleteCustomerRequest {
            id: id.into(),
            etag: etag.into(),
        });
        let response = self.inner.clone().delete_customer(request).await?;
        Ok(response.into_inner().customer.unwrap())
    }

    pub async fn undelete(&self, id: &str, etag: &str) -> Result<pb::Customer, tonic::Status> {
        let request = self.request(pb::UndeleteCustomerRequest {
            id: id.into(),
            etag: etag.into(),
        });
        let response = self.inner.clone().undelete_customer(request).await?;
        Ok(response.into_inner().customer.unwrap())
    }

    /// EraseServiceCustomerData (this service's erasure); the tombstone.
    pub async fn erase(&self, id: &str, reason: &str) -> Result<pb::Customer, tonic::Status> {
        let request = self.request(pb::EraseServiceCustomerDataRequest {
            id: id.into(),
            reason: reason.into(),
        });
        let response = self
            .inner
            .clone()
            .erase_service_customer_data(request)
            .await?;
        Ok(response.into_inner().customer.unwrap())
    }

    /// One page of a customer's field history.
    pub async fn field_changes(
        &self,
        req: pb::ListCustomerFieldChangesRequest,
    ) -> Result<pb::ListCustomerFieldChangesResponse, tonic::Status> {
        let request = self.request(req);
        let response = self
            .inner
            .clone()
            .list_customer_field_changes(request)
            .await?;
        Ok(response.into_inner())
    }

    /// One page of merge records.
    pub async fn merge_records(
        &self,
        req: pb::ListMergeRecordsRequest,
    ) -> Result<pb::ListMergeRecordsResponse, tonic::Status> {
        let request = self.request(req);
        let response = self.inner.clone().list_merge_records(request).await?;
        Ok(response.into_inner())
    }

    pub async fn merge(
        &self,
        survivor_id: &str,
        duplicate_ids: &[&str],
        request_id: &str,
    ) -> Result<pb::MergeCustomersResponse, tonic::Status> {
        let request = self.request(pb::MergeCustomersRequest {
            survivor_id: survivor_id.into(),
            duplicate_ids: duplicate_ids.iter().map(|id| id.to_string()).collect(),
            request_id: request_id.into(),
        });
        Ok(self
            .inner
            .clone()
            .merge_customers(request)
            .await?
            .into_inner())
    }
}

/// A valid customer with a unique email.
pub fn ada() -> pb::Customer {
    pb::Customer {
        display_name: "Ada Lovelace".into(),
        email: format!("ada.{}@example.com", Uuid::now_v7().simple()),
        phone: "+4915112345678".into(),
        tags: vec!["vip".into()],
        ..Default::default()
    }
}

/// The field paths of a status's BadRequest violations.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// A TCP proxy in front of PostgreSQL that a test can cut and restore, to play an outage. It
/// keeps its port for its whole life (no unbind and rebind another test could race): while cut,
/// it drops every open connection and closes each new one as soon as it is accepted.
pub struct Outage {
    pub addr: SocketAddr,
    up: Arc<tokio::sync::watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Outage {
    pub async fn start(target: SocketAddr) -> Arc<Self> {
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
        Arc::new(Self { addr, up, accept })
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

/// The host:port of the admin URL, for the proxy to forward to.
pub fn postgres_addr() -> SocketAddr {
    let url = admin_url();
    let after_at = url.rsplit_once('@').map(|(_, rest)| rest).unwrap_or(&url);
    let host_port = after_at.split('/').next().unwrap();
    let host_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    };
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port
        .parse()
        .expect("DATABASE_URL host must be an IP:port for the outage tests")
}

/// Replaces host:port of a database URL.
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme_user, rest) = url.rsplit_once('@').expect("DATABASE_URL with user@host");
    let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
    format!("{scheme_user}@{addr}/{path}")
}

pub async fn health_of(addr: SocketAddr) -> i32 {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "crm.customer.v1.CustomerService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// The `ErrorInfo` reason of a status ("" when it carries none).
pub fn error_reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

/// Asserts a status's code and `ErrorInfo` reason, showing the whole status when they differ.
#[track_caller]
pub fn assert_error(status: &tonic::Status, code: tonic::Code, reason: &str) {
    assert_eq!(
        (status.code(), error_reason(status).as_str()),
        (code, reason),
        "{status:?}"
    );
}

/// Asserts INVALID_ARGUMENT whose `BadRequest` names exactly `fields`.
#[track_caller]
pub fn assert_invalid(status: &tonic::Status, fields: &[&str]) {
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(status), fields, "{status:?}");
}

/// A principal of `kind` with `id`.
pub fn principal(kind: PrincipalKind, id: &str) -> Principal {
    Principal {
        kind: kind as i32,
        id: id.into(),
    }
}

/// The USER principal tests' tokens name (subject "test").
pub fn test_user() -> Principal {
    principal(PrincipalKind::User, "test")
}

/// A consent decision on `channel` with a legal basis and source, as RecordConsent requires.
pub fn consent(channel: common::Channel, status: pb::ConsentStatus) -> pb::Consent {
    pb::Consent {
        channel: channel as i32,
        status: status as i32,
        legal_basis: pb::LegalBasis::Consent as i32,
        source: "checkout-form".into(),
        ..Default::default()
    }
}
