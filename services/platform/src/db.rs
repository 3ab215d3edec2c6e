//! PostgreSQL: one pool per service, confined to the service's own schema, and its embedded
//! migrations.
//!
//! A service's pool sets `search_path` to its schema, so sqlx's migration table
//! (`_sqlx_migrations`) lands in that schema too: each service migrates independently.
//!
//! A schema gets two sets of migrations in one run: the platform's ([`PLATFORM_MIGRATOR`]: the
//! tables every service has, such as request ids, versions from 1000001 on) and the service's
//! own (versions from 1 on). One `_sqlx_migrations` table records both.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::DatabaseConfig;

/// The tables every service has, owned by the platform and created in each service's schema.
pub static PLATFORM_MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The first version the platform's migrations may use; a service's own stay below it.
pub const FIRST_PLATFORM_VERSION: i64 = 1_000_001;

/// The platform's and a service's migrations as one source, so one run applies both in
/// version order and one `_sqlx_migrations` table checks both.
#[derive(Debug)]
struct SchemaMigrations(Vec<Migration>);

impl<'s> MigrationSource<'s> for SchemaMigrations {
    fn resolve(self) -> BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move { Ok(self.0) })
    }
}

/// A service's database: its pool, schema and migrations.
#[derive(Debug, Clone)]
pub struct Database {
    /// The pool; every connection's `search_path` is the service's schema.
    pub pool: PgPool,
    /// The schema the service owns.
    pub schema: &'static str,
    /// One connection of its own for readiness checks, so a busy pool never reads as an
    /// unreachable database (which would take a loaded pod out of rotation).
    health_pool: PgPool,
    migrator: &'static Migrator,
}

impl Database {
    /// A pool that connects on first use, so a service starts (NOT_SERVING) while PostgreSQL is
    /// still unreachable and recovers by itself when it comes back.
    pub fn connect_lazy(
        config: &DatabaseConfig,
        schema: &'static str,
        migrator: &'static Migrator,
    ) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(config.url.expose_secret())
            .context("database.url is not a valid PostgreSQL URL")?
            .options([("search_path", schema)])
            .application_name(&format!("crm-{schema}"))
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(0)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .idle_timeout(Duration::from_secs(300))
            .test_before_acquire(false)
            .connect_lazy_with(options.clone());
        let health_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .connect_lazy_with(options.application_name(&format!("crm-{schema}-health")));
        Ok(Self {
            pool,
            schema,
            health_pool,
            migrator,
        })
    }

    /// Creates the schema if needed and applies pending migrations: the platform's and the
    /// service's, in version order.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", self.schema))
            .execute(&self.pool)
            .await
            .with_context(|| format!("creating schema {}", self.schema))?;
        self.combined_migrator()
            .await?
            .run(&self.pool)
            .await
            .with_context(|| format!("migrating schema {}", self.schema))?;
        Ok(())
    }

    async fn combined_migrator(&self) -> anyhow::Result<Migrator> {
        if let Some(clash) = self
            .migrator
            .iter()
            .find(|m| m.version >= FIRST_PLATFORM_VERSION)
        {
            anyhow::bail!(
                "migration {} of schema {} uses a version reserved for the platform \
                 (from {FIRST_PLATFORM_VERSION} on)",
                clash.version,
                self.schema
            );
        }
        let mut migrations: Vec<Migration> = PLATFORM_MIGRATOR
            .iter()
            .chain(self.migrator.iter())
            .cloned()
            .collect();
        migrations.sort_by_key(|m| m.version);
        Migrator::new(SchemaMigrations(migrations))
            .await
            .map_err(|err| anyhow::anyhow!("assembling the migrations of {}: {err}", self.schema))
    }

    /// Every migration version this binary applies to the schema.
    fn known_versions(&self) -> Vec<i64> {
        PLATFORM_MIGRATOR
            .iter()
            .chain(self.migrator.iter())
            .map(|m| m.version)
            .collect()
    }

    /// Whether the database answers and every migration this binary knows has been applied.
    pub async fn is_ready(&self) -> Result<bool, sqlx::Error> {
        let known = self.known_versions();
        let applied: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {}._sqlx_migrations WHERE success AND version = ANY($1)",
            self.schema
        ))
        .bind(&known)
        .fetch_one(&self.health_pool)
        .await
        .or_else(|err| match &err {
            // No migration table yet: reachable but not migrated.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(0),
            _ => Err(err),
        })?;
        Ok(applied == known.len() as i64)
    }

    /// Creates (or updates) the least-privilege role `crm_<schema>` that may use this schema
    /// only. Needs a connection with CREATEROLE; the role gets no password here (set it with
    /// `ALTER ROLE … PASSWORD` or use your platform's IAM).
    pub async fn create_service_role(&self) -> anyhow::Result<String> {
        let role = format!("crm_{}", self.schema);
        let schema = self.schema;
        let statements = [
            format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN \
                 CREATE ROLE {role} LOGIN; END IF; END $$"
            ),
            format!("REVOKE ALL ON SCHEMA public FROM {role}"),
            format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
            format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"
            ),
            format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"),
            format!(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} \
                 GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}"
            ),
            format!(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} \
                 GRANT USAGE, SELECT ON SEQUENCES TO {role}"
            ),
        ];
        for statement in statements {
            sqlx::query(&statement)
                .execute(&self.pool)
                .await
                .with_context(|| format!("granting {role} access to schema {schema}"))?;
        }
        Ok(role)
    }
}

/// Binds filter parameters (from [`crate::filter::to_sql`]) to a query, in order.
pub fn bind_filter_params<'q, O>(
    mut query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    params: &'q [crate::filter::SqlValue],
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    use crate::filter::SqlValue;
    for param in params {
        query = match param {
            SqlValue::Text(v) => query.bind(v.as_str()),
            SqlValue::Int(v) => query.bind(*v),
            SqlValue::Float(v) => query.bind(*v),
            SqlValue::Bool(v) => query.bind(*v),
            SqlValue::Timestamp(v) => query.bind(*v),
            SqlValue::Date(v) => query.bind(*v),
            SqlValue::Interval(v) => query.bind(*v),
            SqlValue::Uuid(v) => query.bind(*v),
            SqlValue::TextArray(v) => query.bind(v.as_slice()),
        };
    }
    query
}
