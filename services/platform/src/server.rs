//! Serving a set of CRM Suite services on one port: health, reflection, the middleware stack,
//! and graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::{AuthPolicy, ContractScopes};
use crate::client::Loopback;
use crate::config::Config;
use crate::db::Database;
use crate::middleware::{AuthLayer, DeadlineLayer, ObservabilityLayer, RunToCompletionLayer};
use crate::operations::{OPERATIONS_GRPC_SERVICE, OperationStore, OperationsService};
use crate::page_token::PageTokenCodec;

/// The pause between two readiness checks (database reachable and migrated).
const READINESS_INTERVAL: Duration = Duration::from_millis(300);

/// How long one readiness check may take before the database counts as unreachable. sqlx keeps
/// retrying a refused connection until `database.acquire_timeout_ms` (2 s by default), which
/// would hold health at SERVING that long. With the interval this bounds how long health still
/// says SERVING after PostgreSQL went away: at most 0.8 s (a check that passed just before, the
/// pause, then a check that fails or times out), within the 1 s the platform promises. Each
/// service's check is one indexed query on its own health connection, about three a second.
const READINESS_TIMEOUT: Duration = Duration::from_millis(500);

/// Everything a service needs from the platform to build itself.
#[derive(Clone)]
pub struct ServiceContext {
    /// The process's configuration.
    pub config: Arc<Config>,
    /// Signs and checks page tokens (one key for the whole process).
    pub page_tokens: PageTokenCodec,
    /// Cancelled when the process shuts down; background loops stop on it.
    pub shutdown: CancellationToken,
    /// The services this process serves and where, for clients calling them over loopback;
    /// whoever binds the listener announces it ([`Loopback::announce`]).
    pub loopback: Loopback,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext").finish_non_exhaustive()
    }
}

impl ServiceContext {
    /// A context for `config`, shutting down with `shutdown`.
    pub fn new(config: Arc<Config>, shutdown: CancellationToken) -> Self {
        let page_tokens = PageTokenCodec::new(config.page_token_secret().as_bytes());
        Self {
            config,
            page_tokens,
            shutdown,
            loopback: Loopback::default(),
        }
    }
}

/// One service, built and ready to serve.
pub struct ServiceModule {
    /// Short name, e.g. `customer`.
    pub name: &'static str,
    /// Fully qualified gRPC service name, used as its health-check name. Each of its methods
    /// needs the scope its contract declares (`(crm.common.v1.auth)`).
    pub grpc_service: &'static str,
    /// The service's database, checked for readiness.
    pub database: Database,
    /// Adds the service's gRPC routes.
    pub add_routes: Box<dyn FnOnce(&mut RoutesBuilder) + Send>,
    /// The service's long-running operations, if it has any: [`serve`] runs their workers and
    /// serves them through the process's one `google.longrunning.Operations`.
    pub operations: Option<OperationStore>,
}

impl std::fmt::Debug for ServiceModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceModule")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Why [`serve`] failed although it stopped as asked: the drain bound
/// (`server.shutdown_grace_secs`) ran out before every in-flight call had finished, and the
/// remaining calls were cut off. Tell it from other failures with `downcast_ref::<DrainCut>()`.
#[derive(Debug, thiserror::Error)]
#[error("the drain bound of {grace:?} was reached: in-flight calls were cut off")]
pub struct DrainCut {
    /// The bound that ran out.
    pub grace: Duration,
}

/// Serves `modules` on `listener` until `shutdown` is cancelled, then drains in-flight calls
/// for at most `server.shutdown_grace_secs`. Returns `Ok` once every call has finished, or a
/// [`DrainCut`] error when the bound ran out first.
///
/// Refuses to start (an error naming the service or method, before anything is served) when a
/// module's service is not in the contracts' descriptor set or one of its methods declares no
/// scope.
pub async fn serve(
    config: &Config,
    modules: Vec<ServiceModule>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let policy = auth_policy(config, &modules)?;
    // The request plans of the edge codec are built once; here, so no first call pays for it.
    crm_proto::edge::prepare();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let served = add_routes(config, modules, &health, &shutdown).await?;
    let mut routes = served.routes;
    routes.add_service(health_service);
    let monitor = tokio::spawn(watch_readiness(
        health.clone(),
        served.databases,
        config.database.migrate_on_start,
        shutdown.clone(),
    ));
    // The deadline is this stack's, not tonic's `Server::timeout` (which reports CANCELLED); it
    // also ends open response streams at shutdown, so the drain waits for unary calls only. A
    // handler runs in its own task, inside the concurrency limit, so the limit counts handlers
    // still finishing for a caller who went away.
    let layers = tower::ServiceBuilder::new()
        .layer(ObservabilityLayer)
        .layer(DeadlineLayer::new(config.default_timeout()).ending_streams_at(shutdown.clone()))
        .layer(AuthLayer::new(policy))
        .layer(tower::load_shed::LoadShedLayer::new())
        .layer(RunToCompletionLayer)
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.server.concurrency_limit,
        ))
        .into_inner();
    let router = server_builder(config)
        .layer(layers)
        .add_routes(routes.routes());

    let addr = listener.local_addr()?;
    tracing::info!(%addr, services = ?served.names, "serving gRPC");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = shutdown.clone();
    let server = router.serve_with_incoming_shutdown(incoming, async move {
        signal.cancelled().await;
        tracing::info!("shutting down: NOT_SERVING, draining in-flight calls");
        set_all(&health, ServingStatus::NotServing).await;
    });
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let result = drain_within(server, &shutdown, grace).await;
    monitor.abort();
    result
}

/// The auth policy for `modules`: each method's scope read from the contracts. Refuses a
/// module whose service is not in the contracts or has a method without a scope.
fn auth_policy(config: &Config, modules: &[ServiceModule]) -> anyhow::Result<AuthPolicy> {
    let (jwt_secret, dev_secret) = config.jwt_secret();
    if dev_secret {
        tracing::warn!(
            "auth.jwt_secret is not set: using the built-in development key. Set \
             CRM__AUTH__JWT_SECRET outside a laptop."
        );
    }
    let services: Vec<&str> = modules.iter().map(|m| m.grpc_service).collect();
    let scopes = ContractScopes::for_services(&services).context("refusing to serve")?;
    Ok(AuthPolicy::new(
        jwt_secret,
        &config.auth.issuer,
        &config.auth.audience,
        scopes,
    ))
}

/// What [`add_routes`] put together.
struct Served {
    routes: RoutesBuilder,
    databases: Vec<(&'static str, Database)>,
    names: Vec<&'static str>,
}

/// Every module's routes, NOT_SERVING until its database is ready, one Operations service for
/// all modules with long work, and reflection (v1 and v1alpha) naming all of them.
async fn add_routes(
    config: &Config,
    modules: Vec<ServiceModule>,
    health: &HealthReporter,
    shutdown: &CancellationToken,
) -> anyhow::Result<Served> {
    let mut reflected = vec!["grpc.health.v1.Health"];
    let mut served = Served {
        routes: RoutesBuilder::default(),
        databases: Vec::new(),
        names: Vec::new(),
    };
    let mut operation_stores: Vec<OperationStore> = Vec::new();
    for module in modules {
        health
            .set_service_status(module.grpc_service, ServingStatus::NotServing)
            .await;
        reflected.push(module.grpc_service);
        (module.add_routes)(&mut served.routes);
        operation_stores.extend(module.operations);
        served
            .databases
            .push((module.grpc_service, module.database));
        served.names.push(module.name);
    }
    if !operation_stores.is_empty() {
        reflected.push(OPERATIONS_GRPC_SERVICE);
        add_operations(config, &mut served.routes, operation_stores, shutdown);
    }
    add_reflection(&mut served.routes, &reflected)?;
    Ok(served)
}

/// Server reflection, v1 and v1alpha (grpcurl asks for either), listing `services`.
fn add_reflection(routes: &mut RoutesBuilder, services: &[&'static str]) -> anyhow::Result<()> {
    let builder = || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crm_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl can print BadRequest, ErrorInfo and RetryInfo.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
        services
            .iter()
            .fold(builder, |builder, name| builder.with_service_name(*name))
    };
    routes.add_service(builder().build_v1().context("building reflection v1")?);
    routes.add_service(
        builder()
            .build_v1alpha()
            .context("building reflection v1alpha")?,
    );
    Ok(())
}

/// HTTP/2 flow-control window of each stream a caller sends on: the most a client stream
/// (ImportCustomers) may have sent that the handler has not read yet.
///
/// h2 charges every received DATA frame under 256 bytes (a typical streamed row) up to 256
/// bytes against a per-connection budget until the handler reads it, and ends the connection
/// with GOAWAY `too_many_data_frames` when the budget (half the connection window) runs out.
/// hyper's default stream window (1 MiB) lets a fast sender queue ~7,000 rows of 150 bytes,
/// ~0.7 MiB of charges, past a 1 MiB connection window's budget. The spec's 64 KiB queues at
/// most ~440 such rows (~45 KiB of charges), so the sender waits on flow control instead.
const STREAM_WINDOW: u32 = 64 * 1024;

/// HTTP/2 flow-control window of a whole connection: also sizes h2's small-frame budget (half
/// of it, 2 MiB), room for ~45 streams each holding a full window of 150-byte rows.
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// The HTTP/2 server: keepalives, flow-control windows, and a bounded connection age (when
/// configured) so that clients re-resolve and new pods receive load.
fn server_builder(config: &Config) -> Server {
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .tcp_nodelay(true);
    if config.server.max_connection_age_secs > 0 {
        builder = builder
            .max_connection_age(Duration::from_secs(config.server.max_connection_age_secs))
            .max_connection_age_grace(Duration::from_secs(config.server.shutdown_grace_secs));
    }
    builder
}

/// Runs `server` until it stops; once `shutdown` is cancelled it has `grace` to finish the
/// calls in flight, after which they are cut off and [`DrainCut`] is returned.
async fn drain_within(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    tokio::pin!(server);
    let drained = tokio::select! {
        result = &mut server => {
            result.context("gRPC server failed")?;
            true
        }
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => false,
    };
    if drained {
        tracing::info!("server stopped: every in-flight call finished");
        Ok(())
    } else {
        tracing::warn!(
            ?grace,
            "server stopped: drain bound reached, remaining calls cut off"
        );
        Err(DrainCut { grace }.into())
    }
}

/// Runs the workers of every store and serves them all through one
/// `google.longrunning.Operations`, which finds an operation's service by asking each store.
fn add_operations(
    config: &Config,
    routes: &mut RoutesBuilder,
    stores: Vec<OperationStore>,
    shutdown: &CancellationToken,
) {
    for store in &stores {
        store.spawn_workers(shutdown);
    }
    let page_tokens = PageTokenCodec::new(config.page_token_secret().as_bytes());
    routes.add_service(
        crm_proto::google::longrunning::operations_server::OperationsServer::new(
            OperationsService::new(stores, page_tokens, config.default_timeout()),
        ),
    );
}

/// Turns the overall status; per-service statuses follow from `watch_readiness`, which sees
/// the same shutdown and knows the names.
async fn set_all(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
}

/// Keeps each service's health status in step with its database: SERVING while reachable and
/// migrated, NOT_SERVING otherwise (within 0.8 s, see [`READINESS_TIMEOUT`]); overall ("")
/// SERVING only when every service is.
async fn watch_readiness(
    health: HealthReporter,
    databases: Vec<(&'static str, Database)>,
    migrate_on_start: bool,
    shutdown: CancellationToken,
) {
    let mut migrated = vec![!migrate_on_start; databases.len()];
    let mut last: Vec<Option<bool>> = vec![None; databases.len()];
    loop {
        if shutdown.is_cancelled() {
            for (name, _) in &databases {
                health
                    .set_service_status(*name, ServingStatus::NotServing)
                    .await;
            }
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            return;
        }
        let mut all_ready = true;
        for (i, (name, database)) in databases.iter().enumerate() {
            if !migrated[i] {
                match database.migrate().await {
                    Ok(()) => migrated[i] = true,
                    Err(err) => tracing::warn!(
                        service = name,
                        error = format!("{err:#}"),
                        "migration on start failed; retrying"
                    ),
                }
            }
        }
        // All services at once, so one unreachable database does not delay the others' checks.
        let checks = futures::future::join_all(
            databases
                .iter()
                .map(|(_, database)| tokio::time::timeout(READINESS_TIMEOUT, database.is_ready())),
        )
        .await;
        for (i, ((name, database), check)) in databases.iter().zip(checks).enumerate() {
            let ready = match check {
                Ok(Ok(ready)) => ready,
                Ok(Err(err)) => {
                    if last[i] != Some(false) {
                        tracing::warn!(service = name, error = %err, "database unreachable: NOT_SERVING");
                    }
                    false
                }
                Err(_) => {
                    if last[i] != Some(false) {
                        tracing::warn!(
                            service = name,
                            timeout = ?READINESS_TIMEOUT,
                            "database did not answer the readiness check in time: NOT_SERVING"
                        );
                    }
                    false
                }
            };
            if last[i] != Some(ready) {
                let status = if ready {
                    tracing::info!(service = name, "database ready: SERVING");
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                health.set_service_status(*name, status).await;
                last[i] = Some(ready);
            }
            all_ready &= ready;
            let pool = &database.pool;
            let idle = pool.num_idle() as f64;
            metrics::gauge!("crm_db_pool_connections", "service" => *name, "state" => "idle")
                .set(idle);
            metrics::gauge!("crm_db_pool_connections", "service" => *name, "state" => "in_use")
                .set(pool.size() as f64 - idle);
        }
        if !shutdown.is_cancelled() {
            let overall = if all_ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", overall).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(READINESS_INTERVAL) => {}
        }
    }
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        cancel.cancel();
    });
    token
}
