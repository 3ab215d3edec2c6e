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

use crm_platform::auth::MethodScopes;
use crm_platform::cache::Cache;
use crm_platform::config::Config;
use crm_platform::db::Database;
use crm_platform::server::{ServiceContext, ServiceModule};
use crm_proto::crm::customer::v1::customer_service_server::CustomerServiceServer;
use sqlx::migrate::Migrator;

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "customer";

/// The service's gRPC name, also its health-check name.
pub const GRPC_SERVICE: &str = "crm.customer.v1.CustomerService";

/// The service's migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

const READ: &str = "customer.read";
const WRITE: &str = "customer.write";
const GDPR: &str = "customer.gdpr";

/// The scope each method needs.
pub const SCOPES: MethodScopes = &[
    ("/crm.customer.v1.CustomerService/CreateCustomer", WRITE),
    ("/crm.customer.v1.CustomerService/GetCustomer", READ),
    ("/crm.customer.v1.CustomerService/BatchGetCustomers", READ),
    ("/crm.customer.v1.CustomerService/ListCustomers", READ),
    ("/crm.customer.v1.CustomerService/UpdateCustomer", WRITE),
    ("/crm.customer.v1.CustomerService/DeleteCustomer", WRITE),
    ("/crm.customer.v1.CustomerService/UndeleteCustomer", WRITE),
    ("/crm.customer.v1.CustomerService/SearchCustomers", READ),
    (
        "/crm.customer.v1.CustomerService/FindDuplicateCustomers",
        READ,
    ),
    ("/crm.customer.v1.CustomerService/MergeCustomers", WRITE),
    ("/crm.customer.v1.CustomerService/ListMergeRecords", READ),
    ("/crm.customer.v1.CustomerService/EraseCustomer", GDPR),
    ("/crm.customer.v1.CustomerService/ExportCustomerData", GDPR),
    (
        "/crm.customer.v1.CustomerService/EraseServiceCustomerData",
        GDPR,
    ),
    (
        "/crm.customer.v1.CustomerService/ExportServiceCustomerData",
        GDPR,
    ),
    (
        "/crm.customer.v1.CustomerService/ListCustomerFieldChanges",
        READ,
    ),
    (
        "/crm.customer.v1.CustomerService/ScanDuplicateCustomers",
        READ,
    ),
    ("/crm.customer.v1.CustomerService/RecordConsent", WRITE),
    ("/crm.customer.v1.CustomerService/ListConsentHistory", READ),
    ("/crm.customer.v1.CustomerService/CreateInteraction", WRITE),
    ("/crm.customer.v1.CustomerService/ListInteractions", READ),
    ("/crm.customer.v1.CustomerService/ImportCustomers", WRITE),
    ("/crm.customer.v1.CustomerService/ExportCustomers", READ),
    (
        "/crm.customer.v1.CustomerService/WatchCustomerChanges",
        READ,
    ),
];

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
    let api = api::CustomerApi::new(database.pool.clone(), cache, ctx.page_tokens.clone(), feed);
    Ok(ServiceModule {
        name: "customer",
        grpc_service: GRPC_SERVICE,
        scopes: SCOPES,
        database,
        add_routes: Box::new(move |routes| {
            routes.add_service(CustomerServiceServer::new(api));
        }),
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn every_method_of_the_contract_has_a_scope() {
        let descriptors =
            prost_types::FileDescriptorSet::decode(crm_proto::FILE_DESCRIPTOR_SET).unwrap();
        let methods: Vec<String> = descriptors
            .file
            .iter()
            .filter(|f| f.package() == "crm.customer.v1")
            .flat_map(|f| f.service.iter())
            .flat_map(|s| {
                s.method
                    .iter()
                    .map(move |m| format!("/{}/{}", super::GRPC_SERVICE, m.name()))
            })
            .collect();

        assert_eq!(methods.len(), super::SCOPES.len());
        for method in methods {
            assert!(
                super::SCOPES.iter().any(|(path, _)| *path == method),
                "{method} has no scope"
            );
        }
    }
}
