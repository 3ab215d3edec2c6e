//! What an erasure (GDPR) leaves behind in PostgreSQL, and the vacuum that removes it.
//!
//! An erasure overwrites and deletes rows in one transaction: the service's own statements,
//! [`crate::feed::erase_snapshots`] and [`crate::idempotency::forget_subject`]. PostgreSQL keeps
//! the old row versions, personal data included, as dead tuples in each table, its TOAST table
//! and every index over an erased column (names, emails, search vectors) until a VACUUM removes
//! them. Autovacuum gets to a table only once a fifth of it has changed, which on a large, quiet
//! table can take weeks, and since PostgreSQL 14 it may skip the indexes when few rows died. So
//! after an erasure commits the service calls [`Vacuum::erased`], and a background task runs
//! `VACUUM (INDEX_CLEANUP ON)` over the tables an erasure touches.
//!
//! The bound: the dead tuples of an erasure are gone within [`COALESCE`] plus the time of at
//! most two vacuum passes after it commits, provided no transaction that started before the
//! erasure is still open anywhere in the database cluster (VACUUM cannot remove a row version
//! an open snapshot may still see; it goes at the first pass after that transaction ends). The
//! vacuum needs to own the tables (PostgreSQL 17: the MAINTAIN privilege); without it the pass
//! logs a warning naming the tables and the data stays until autovacuum.
//!
//! What VACUUM cannot do: the freed space keeps its bytes until PostgreSQL reuses it (only
//! `VACUUM FULL` rewrites a table), and WAL segments, WAL archives, backups and replicas keep
//! their copies until their own retention ends.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::Database;

/// How long the vacuum waits after an erasure for others to join the same pass: each pass scans
/// every index of the tables whole, so a burst of erasures costs one pass, not one each.
pub const COALESCE: Duration = Duration::from_secs(10);

/// After a failed pass, how long until the next try.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The platform's tables that hold personal data an erasure removes.
const PLATFORM_TABLES: &[&str] = &["request_ids", "change_events"];

/// Vacuums a service's tables after erasures (see the module documentation). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Vacuum {
    wake: Arc<Notify>,
}

impl Vacuum {
    /// Starts the vacuum task of `database`'s schema, over the platform's tables and the
    /// service's `tables` (unqualified names in that schema) that an erasure writes to. It stops
    /// with `shutdown`.
    pub fn start(database: &Database, tables: &[&str], shutdown: &CancellationToken) -> Self {
        Self::start_after(database, tables, COALESCE, shutdown)
    }

    /// [`Vacuum::start`] with another wait than [`COALESCE`] before each pass.
    pub fn start_after(
        database: &Database,
        tables: &[&str],
        coalesce: Duration,
        shutdown: &CancellationToken,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let tables: Vec<String> = PLATFORM_TABLES
            .iter()
            .chain(tables)
            .map(|table| table.to_string())
            .collect();
        tokio::spawn(run(
            database.pool.clone(),
            database.schema,
            tables,
            coalesce,
            wake.clone(),
            shutdown.clone(),
        ));
        Self { wake }
    }

    /// Asks for a pass, to start after [`COALESCE`] (or the wait it was started with). Call it once the erasure has committed: a
    /// pass only removes what was dead when it began. An erasure during a pass gets another.
    pub fn erased(&self) {
        self.wake.notify_one();
    }
}

async fn run(
    pool: PgPool,
    schema: &'static str,
    tables: Vec<String>,
    coalesce: Duration,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = wake.notified() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(coalesce) => {}
        }
        if let Err(err) = vacuum(&pool, schema, &tables).await {
            tracing::warn!(
                schema,
                error = %err,
                "vacuum after erasure failed; erased data stays in dead tuples until a retry"
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY_AFTER) => wake.notify_one(),
            }
        }
    }
}

/// One pass over the `tables` of `schema` this role may vacuum.
async fn vacuum(pool: &PgPool, schema: &str, tables: &[String]) -> Result<(), sqlx::Error> {
    // VACUUM skips a table it may not touch with a mere warning to the session; say it here.
    let owned: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, pg_has_role(current_user, c.relowner, 'USAGE') \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = ANY($2)",
    )
    .bind(schema)
    .bind(tables)
    .fetch_all(pool)
    .await?;
    let (allowed, refused): (Vec<_>, Vec<_>) = owned.into_iter().partition(|(_, owned)| *owned);
    let allowed: Vec<String> = allowed.into_iter().map(|(table, _)| table).collect();
    let refused: Vec<String> = refused.into_iter().map(|(table, _)| table).collect();
    if !refused.is_empty() {
        tracing::warn!(
            schema,
            tables = ?refused,
            "not the owner: erased data stays in these tables' dead tuples until autovacuum"
        );
    }
    if allowed.is_empty() {
        return Ok(());
    }
    let qualified: Vec<String> = allowed.iter().map(|t| format!("{schema}.{t}")).collect();
    // Not in a transaction (VACUUM refuses one), and forcing index cleanup: indexes hold the
    // erased values too, and PostgreSQL would skip them when few rows died.
    let started = std::time::Instant::now();
    sqlx::raw_sql(&format!(
        "VACUUM (INDEX_CLEANUP ON) {}",
        qualified.join(", ")
    ))
    .execute(pool)
    .await?;
    tracing::info!(
        schema,
        tables = ?allowed,
        millis = started.elapsed().as_millis() as u64,
        "vacuumed after erasure"
    );
    Ok(())
}
