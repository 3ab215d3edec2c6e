//! The customer records service (`crm.customer.v1.CustomerService`): the system of record for
//! customers, their contact data, consent, interactions, merges and GDPR requests.
//!
//! Read top-down: [`api`] (the gRPC surface), [`domain`] (validation and conversion at the
//! edge), [`store`] (SQL), [`feed`] (the change feed), [`error`].

pub mod api;
pub mod domain;
pub mod error;
pub mod feed;
pub mod store;

use crm_platform::cache::Cache;
use crm_platform::config::Config;
use crm_platform::db::Database;
use crm_platform::erasure::Vacuum;
use crm_platform::server::{ServiceContext, ServiceModule};
use crm_proto::crm::customer::v1::customer_service_server::CustomerServiceServer;
use sqlx::migrate::Migrator;

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "customer";

/// The service's gRPC name, also its health-check name.
pub const GRPC_SERVICE: &str = "crm.customer.v1.CustomerService";

/// The service's migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The service's database handle (lazy: nothing connects until first use).
pub fn database(config: &Config) -> anyhow::Result<Database> {
    Database::connect_lazy(&config.database, SCHEMA, &MIGRATOR)
}

/// Builds the service for `crm serve`.
pub fn module(ctx: &ServiceContext) -> anyhow::Result<ServiceModule> {
    let database = database(&ctx.config)?;
    let cache = Cache::new(SCHEMA, &ctx.config.redis, &ctx.config.cache)?;
    cache.spawn_invalidation_listener(ctx.shutdown.clone());
    let feed = crm_platform::feed::Feed::start(&database, &ctx.shutdown);
    api::spawn_housekeeping(database.pool.clone(), ctx.shutdown.clone());
    let operations = api::operations(&database.pool);
    let vacuum = Vacuum::start(&database, store::ERASED_TABLES, &ctx.shutdown);
    let api = api::CustomerApi::new(
        database.pool.clone(),
        cache,
        ctx.page_tokens.clone(),
        feed,
        operations.clone(),
        vacuum,
    );
    Ok(ServiceModule {
        name: "customer",
        grpc_service: GRPC_SERVICE,
        database,
        add_routes: Box::new(move |routes| {
            routes.add_service(CustomerServiceServer::new(api));
        }),
        operations: Some(operations),
    })
}
