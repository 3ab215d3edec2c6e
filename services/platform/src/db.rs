//! PostgreSQL: one pool per service, confined to the service's own schema, and its embedded
//! migrations.
//!
//! A service's pool sets `search_path` to its schema, so sqlx's migration table
//! (`_sqlx_migrations`) lands in that schema too: each service migrates independently.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::DatabaseConfig;

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

    /// Creates the schema if needed and applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", self.schema))
            .execute(&self.pool)
            .await
            .with_context(|| format!("creating schema {}", self.schema))?;
        self.migrator
            .run(&self.pool)
            .await
            .with_context(|| format!("migrating schema {}", self.schema))?;
        Ok(())
    }

    /// The newest migration this binary knows.
    fn latest_migration(&self) -> i64 {
        self.migrator.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// Whether the database answers and the schema is fully migrated.
    pub async fn is_ready(&self) -> Result<bool, sqlx::Error> {
        let applied: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT max(version) FROM {}._sqlx_migrations WHERE success",
            self.schema
        ))
        .fetch_one(&self.health_pool)
        .await
        .or_else(|err| match &err {
            // No migration table yet: reachable but not migrated.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(None),
            _ => Err(err),
        })?;
        Ok(applied.unwrap_or(0) >= self.latest_migration())
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
