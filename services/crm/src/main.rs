//! `crm`: the one binary of CRM Suite. Serves any subset of the services in one process (all of
//! them on a laptop, one per pod in Kubernetes), migrates their schemas, seeds demo data and
//! mints development tokens.

mod registry;
mod seed;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use crm_platform::config::{Config, EXIT_CONFIG};
use crm_platform::db::roles::RoleSetup;
use crm_platform::server::ServiceContext;

/// CRM Suite: customer records, sales, support, marketing and ML inference over gRPC.
///
/// Configuration comes from built-in defaults, then the optional TOML file (--config or
/// CRM_CONFIG_FILE), then environment variables such as CRM__SERVER__LISTEN_ADDR,
/// DATABASE_URL and REDIS_URL. See the README for every key.
#[derive(Debug, Parser)]
#[command(name = "crm", version, about, long_about)]
struct Cli {
    /// TOML configuration file (optional).
    #[arg(long, global = true, env = "CRM_CONFIG_FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve services over gRPC on server.listen_addr, e.g. `crm serve all` or
    /// `crm serve customer`. Stops gracefully on SIGTERM/SIGINT.
    Serve {
        /// Services to serve: `all`, or any of this build's (listed by `crm serve --help`).
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Apply each service's embedded migrations to its own schema (idempotent), as the schema's
    /// owner. Connects with database.migrate_url, else database.url.
    Migrate {
        /// Services to migrate: `all` (default) or names.
        services: Vec<String>,
        /// Also create each schema's two roles: crm_<service>_owner (NOLOGIN) owns the schema and
        /// runs the migrations; crm_<service> (LOGIN, no password) serves, with DML on that
        /// schema's tables only. Hands a schema migrated before to its owner. Needs a superuser,
        /// or a role with CREATEROLE that owns the database.
        #[arg(long)]
        create_roles: bool,
        /// With --create-roles: revoke TEMPORARY on the database and CREATE on schema public
        /// from PUBLIC. Database-wide: every role without its own grant loses them, so use it on
        /// a database the suite owns.
        #[arg(long, requires = "create_roles")]
        restrict_public: bool,
    },
    /// Print a development JWT for grpcurl (last line of stdout). Signed with auth.jwt_secret.
    Token {
        /// The token's subject.
        #[arg(long, default_value = "developer")]
        subject: String,
        /// Scopes to grant (default: every scope the served services' methods declare).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Validity in hours.
        #[arg(long, default_value_t = 12)]
        hours: u64,
        /// Mint a service's token (claim `principal_kind: "service"`): audit fields and change
        /// events then name the subject as a SERVICE principal instead of a USER.
        #[arg(long)]
        service: bool,
    },
    /// Load realistic demo data (idempotent: tops up to the requested count).
    Seed {
        /// How many demo customers there should be.
        #[arg(long, default_value_t = 2000)]
        customers: u32,
    },
}

/// The command line, with the served services' names (from the registry) in the help of the
/// arguments that take them.
fn parse_cli() -> Cli {
    let names = registry::names();
    let command = Cli::command()
        .mut_subcommand("serve", |serve| {
            serve.mut_arg("services", |arg| {
                arg.help(format!(
                    "Services to serve: `{}`, or any of this build's: {names}",
                    registry::ALL
                ))
            })
        })
        .mut_subcommand("migrate", |migrate| {
            migrate.mut_arg("services", |arg| {
                arg.help(format!(
                    "Services to migrate: `{}` (default), or any of this build's: {names}",
                    registry::ALL
                ))
            })
        });
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
}

fn main() -> ExitCode {
    let cli = parse_cli();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => Arc::new(config),
        Err(err) => {
            eprintln!("crm: {err}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("crm: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("crm: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Arc<Config>) -> anyhow::Result<()> {
    match command {
        Command::Serve { services } => serve(services, config).await,
        Command::Migrate {
            services,
            create_roles,
            restrict_public,
        } => {
            for service in registry::select(&services)? {
                let database = (service.database)(&config)?;
                if !create_roles {
                    database.migrate().await?;
                    println!("migrated {} (schema {})", service.name, database.schema);
                    continue;
                }
                let roles = database
                    .migrate_with_roles(RoleSetup { restrict_public })
                    .await?;
                let schema = database.schema;
                println!(
                    "migrated {} (schema {schema}) as {}",
                    service.name, roles.owner
                );
                println!(
                    "role {} owns schema {schema}; role {} may read and write its tables only",
                    roles.owner, roles.runtime
                );
                if roles.runtime_may_create_temp || roles.runtime_may_create_in_public {
                    eprintln!(
                        "note: {} can still create {} through PUBLIC; --restrict-public revokes \
                         that database-wide",
                        roles.runtime,
                        match (
                            roles.runtime_may_create_temp,
                            roles.runtime_may_create_in_public
                        ) {
                            (true, true) => "temporary tables and objects in schema public",
                            (true, false) => "temporary tables",
                            _ => "objects in schema public",
                        }
                    );
                }
            }
            Ok(())
        }
        Command::Token {
            subject,
            scopes,
            hours,
            service,
        } => {
            let (secret, dev) = config.jwt_secret();
            if dev {
                eprintln!("note: signed with the built-in development key (auth.jwt_secret unset)");
            }
            let scopes = if scopes.is_empty() {
                registry::scopes()?
            } else {
                scopes
            };
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            let mint = if service {
                crm_platform::auth::mint_service_token
            } else {
                crm_platform::auth::mint_token
            };
            let token = mint(
                secret,
                &config.auth.issuer,
                &config.auth.audience,
                &subject,
                &scopes,
                Duration::from_secs(hours * 3600),
            );
            println!("{token}");
            Ok(())
        }
        Command::Seed { customers } => seed::run(&config, customers).await,
    }
}

async fn serve(services: Vec<String>, config: Arc<Config>) -> anyhow::Result<()> {
    let selected = registry::select(&services)?;
    let telemetry = crm_platform::telemetry::init(&config)?;
    let shutdown = crm_platform::server::shutdown_on_signals();
    let ctx = ServiceContext::new(config.clone(), shutdown.clone());
    let mut modules = Vec::with_capacity(selected.len());
    for service in selected {
        let module = (service.module)(&ctx)
            .with_context(|| format!("building the {} service", service.name))?;
        // Health names and scopes follow the registry; a module answering under another name
        // would silently escape both.
        anyhow::ensure!(
            module.grpc_service == service.grpc_service,
            "the {} service's module serves {}, but the registry names {}",
            service.name,
            module.grpc_service,
            service.grpc_service
        );
        modules.push(module);
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen_addr))?;
    // Calls between services served here go over loopback, through the same client as in a
    // cluster.
    ctx.loopback
        .announce(listener.local_addr()?, modules.iter().map(|m| m.name));
    let result = crm_platform::server::serve(&config, modules, listener, shutdown).await;
    telemetry.shutdown();
    result
}
