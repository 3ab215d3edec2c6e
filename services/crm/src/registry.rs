//! The services this build serves: the one list that `crm serve`, `crm migrate`, `crm token`'s
//! default scopes, the health-check names and `--help` all derive from. Adding a service to the
//! build is adding its entry here (and its Helm values block turning on, see
//! `helm/crm/values.yaml`).

use anyhow::Context as _;
use crm_platform::auth::ContractScopes;
use crm_platform::config::Config;
use crm_platform::db::Database;
use crm_platform::server::{ServiceContext, ServiceModule};

/// One service of this build.
#[derive(Debug)]
pub struct ServiceEntry {
    /// Short name, as `crm serve` and `crm migrate` take it, e.g. `customer`.
    pub name: &'static str,
    /// Fully qualified gRPC service name: its health-check name, and the contract service whose
    /// `(crm.common.v1.auth)` options give each method's scope.
    pub grpc_service: &'static str,
    /// The service's database handle with its embedded migrations (lazy: connects on use).
    pub database: fn(&Config) -> anyhow::Result<Database>,
    /// Builds the running service for `crm serve`.
    pub module: fn(&ServiceContext) -> anyhow::Result<ServiceModule>,
}

/// Every service this build serves, in the order `crm serve all` starts them.
pub const SERVICES: &[ServiceEntry] = &[ServiceEntry {
    name: "customer",
    grpc_service: crm_customer::GRPC_SERVICE,
    database: crm_customer::database,
    module: crm_customer::module,
}];

/// The word that selects every service.
pub const ALL: &str = "all";

/// The short names of the served services, comma-separated, for messages and `--help`.
pub fn names() -> String {
    SERVICES
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The entries `requested` names, each once, in the registry's order; every service for an empty
/// request or `all`. An unknown name fails with a message listing what this build serves.
pub fn select(requested: &[String]) -> anyhow::Result<Vec<&'static ServiceEntry>> {
    if requested.is_empty() || requested.iter().any(|s| s == ALL) {
        return Ok(SERVICES.iter().collect());
    }
    if let Some(unknown) = requested
        .iter()
        .find(|name| !SERVICES.iter().any(|s| s.name == name.as_str()))
    {
        anyhow::bail!(
            "this build does not serve {unknown:?}; it serves: {} (or `{ALL}` for every one)",
            names()
        );
    }
    Ok(SERVICES
        .iter()
        .filter(|s| requested.iter().any(|name| name == s.name))
        .collect())
}

/// The scopes of every method the registry's services serve, as their contracts declare them:
/// what a development token gets by default.
pub fn scopes() -> anyhow::Result<Vec<String>> {
    let services: Vec<&str> = SERVICES.iter().map(|s| s.grpc_service).collect();
    let scopes = ContractScopes::for_services(&services)
        .context("reading the served methods' scopes from the contracts")?;
    Ok(scopes.scopes().into_iter().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn all_and_nothing_select_every_service() {
        for requested in [
            strings(&[]),
            strings(&["all"]),
            strings(&["customer", "all"]),
        ] {
            let selected = select(&requested).unwrap();

            assert_eq!(selected.len(), SERVICES.len(), "{requested:?}");
        }
    }

    #[test]
    fn a_name_repeated_is_selected_once() {
        let selected = select(&strings(&["customer", "customer"])).unwrap();

        assert_eq!(
            selected.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["customer"]
        );
    }

    #[test]
    fn a_service_this_build_does_not_serve_is_refused_listing_what_it_serves() {
        let err = select(&strings(&["customer", "sales"])).unwrap_err();

        let message = err.to_string();
        assert!(message.contains("\"sales\""), "{message}");
        assert!(message.contains(&names()), "{message}");
    }

    #[test]
    fn names_and_grpc_services_are_unique() {
        let mut names: Vec<_> = SERVICES.iter().map(|s| s.name).collect();
        let mut grpc: Vec<_> = SERVICES.iter().map(|s| s.grpc_service).collect();
        names.sort();
        names.dedup();
        grpc.sort();
        grpc.dedup();

        assert_eq!(names.len(), SERVICES.len());
        assert_eq!(grpc.len(), SERVICES.len());
        assert!(!names.contains(&ALL));
    }

    #[test]
    fn the_default_scopes_are_every_scope_the_served_contracts_declare() {
        let scopes = scopes().unwrap();

        for scope in ["customer.read", "customer.write", "customer.gdpr"] {
            assert!(scopes.iter().any(|s| s == scope), "{scope} in {scopes:?}");
        }
        for scope in &scopes {
            let service = scope.split('.').next().unwrap();
            assert!(
                SERVICES.iter().any(|s| s.name == service),
                "{scope} belongs to no served service"
            );
        }
    }
}
