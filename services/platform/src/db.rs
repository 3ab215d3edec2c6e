//! PostgreSQL: one pool per service, confined to the service's own schema, and its embedded
//! migrations.
//!
//! A service's pool sets `search_path` to its schema, so sqlx's migration table
//! (`_sqlx_migrations`) lands in that schema too: each service migrates independently.
//!
//! A schema gets two sets of migrations in one run: the platform's ([`PLATFORM_MIGRATOR`]: the
//! tables every service has, such as request ids, versions from 1000001 on) and the service's
//! own (versions from 1 on). One `_sqlx_migrations` table records both.
//!
//! Migrations run as the schema's owner, never as the role that serves: see [`roles`] for the
//! two roles of a schema and what each may do.

pub mod roles;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use secrecy::ExposeSecret;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection as _, PgConnection, PgPool};

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
    /// Where migrations connect (`database.migrate_url`, else `database.url`). A migration's
    /// connection is taken out of this pool and closed afterwards, because migrating switches
    /// the session's role.
    migrate_pool: PgPool,
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
        let migrate_options = match &config.migrate_url {
            Some(url) => PgConnectOptions::from_str(url.expose_secret())
                .context("database.migrate_url is not a valid PostgreSQL URL")?
                .options([("search_path", schema)]),
            None => options.clone(),
        };
        let acquire_timeout = Duration::from_millis(config.acquire_timeout_ms);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(0)
            .acquire_timeout(acquire_timeout)
            .idle_timeout(Duration::from_secs(300))
            .test_before_acquire(false)
            .connect_lazy_with(options.clone());
        let health_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options.application_name(&format!("crm-{schema}-health")));
        let migrate_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(migrate_options.application_name(&format!("crm-{schema}-migrate")));
        Ok(Self {
            pool,
            schema,
            health_pool,
            migrate_pool,
            migrator,
        })
    }

    /// Applies pending migrations, the platform's and the service's in version order, as the
    /// schema's owner; creates the schema if it does not exist yet (owned by whoever migrates).
    ///
    /// A schema that is already up to date is only read, so a role that may only read
    /// `_sqlx_migrations` (the runtime role, with `database.migrate_on_start`) passes; one
    /// that is behind needs a connection that is the schema's owner or may `SET ROLE` to it.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = self.combined_migrator().await?;
        let mut conn = self.migration_connection().await?;
        let result = async {
            if self.is_up_to_date(&mut conn, &migrator).await? {
                return Ok(());
            }
            roles::become_schema_owner(&mut conn, self.schema).await?;
            self.run(&mut conn, &migrator).await
        }
        .await;
        // Never reused: its role may have been switched.
        let _ = conn.close().await;
        result
    }

    /// Creates the schema's two roles (see [`roles`]), hands the schema and everything in it to
    /// the owner, migrates as the owner and grants the runtime role what it needs. Idempotent;
    /// also converts a schema migrated before roles existed (objects owned by the admin).
    ///
    /// Needs a connection (`database.migrate_url`, else `database.url`) with `CREATEROLE`
    /// that owns the database or is a superuser.
    pub async fn migrate_with_roles(
        &self,
        setup: roles::RoleSetup,
    ) -> anyhow::Result<roles::ServiceRoles> {
        let migrator = self.combined_migrator().await?;
        let mut conn = self.migration_connection().await?;
        let result = async {
            roles::prepare(&mut conn, self.schema, setup).await?;
            roles::become_schema_owner(&mut conn, self.schema).await?;
            self.run(&mut conn, &migrator).await?;
            roles::grant_runtime(&mut conn, self.schema).await?;
            roles::describe(&mut conn, self.schema).await
        }
        .await;
        let _ = conn.close().await;
        result
    }

    /// A connection of its own for one migration run, outside every pool.
    async fn migration_connection(&self) -> anyhow::Result<PgConnection> {
        let conn = self
            .migrate_pool
            .acquire()
            .await
            .with_context(|| format!("connecting to migrate schema {}", self.schema))?;
        Ok(conn.detach())
    }

    async fn run(&self, conn: &mut PgConnection, migrator: &Migrator) -> anyhow::Result<()> {
        // `run_direct`, not `run`: `run`'s `Acquire` bound on a `&mut PgConnection` makes the
        // future not `Send` for every lifetime, and readiness migrates inside a spawned task.
        migrator
            .run_direct(conn)
            .await
            .with_context(|| format!("migrating schema {}", self.schema))
    }

    /// Whether every migration of `migrator` is recorded as applied, with the same checksum,
    /// and nothing else is: then there is nothing to do and nothing to write.
    async fn is_up_to_date(
        &self,
        conn: &mut PgConnection,
        migrator: &Migrator,
    ) -> anyhow::Result<bool> {
        let applied: Vec<(i64, bool, Vec<u8>)> = match sqlx::query_as(&format!(
            "SELECT version, success, checksum FROM {}._sqlx_migrations",
            roles::ident(self.schema)
        ))
        .fetch_all(&mut *conn)
        .await
        {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("42P01" | "3F000")) =>
            {
                return Ok(false);
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("reading the applied migrations of {}", self.schema));
            }
        };
        let known = migrator.iter().count();
        Ok(applied.len() == known
            && migrator.iter().all(|m| {
                applied.iter().any(|(version, success, checksum)| {
                    *version == m.version && *success && checksum[..] == m.checksum[..]
                })
            }))
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
}
