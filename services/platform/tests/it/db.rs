//! Readiness: the database answers and the service's schema is fully migrated.

use std::borrow::Cow;

use crm_platform::db::Database;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::support::{config, fresh_database, pool, within};

const SCHEMA: &str = "svc";

fn migration(version: i64, sql: &'static str) -> Migration {
    Migration::new(
        version,
        Cow::Owned(format!("step {version}")),
        MigrationType::Simple,
        Cow::Borrowed(sql),
        false,
    )
}

/// A service's migrations: `steps` of the two it has.
fn migrator(steps: usize) -> &'static Migrator {
    let migrations = vec![
        migration(1, "CREATE TABLE things (id bigint PRIMARY KEY)"),
        migration(2, "ALTER TABLE things ADD COLUMN name text"),
    ];
    Box::leak(Box::new(Migrator {
        migrations: Cow::Owned(migrations.into_iter().take(steps).collect()),
        ..Migrator::DEFAULT
    }))
}

/// The service's database on `url`, with a main pool of two connections.
fn database(url: &str, migrator: &'static Migrator) -> Database {
    let config = config(&[
        ("CRM__DATABASE__URL", url),
        ("CRM__DATABASE__MAX_CONNECTIONS", "2"),
        ("CRM__DATABASE__ACQUIRE_TIMEOUT_MS", "500"),
    ]);
    Database::connect_lazy(&config.database, SCHEMA, migrator).unwrap()
}

#[tokio::test]
async fn a_database_without_the_migrations_table_is_not_ready_rather_than_an_error() {
    let url = fresh_database().await;
    let db = database(&url, migrator(2));

    let without_schema = within(db.is_ready()).await;
    sqlx::query(&format!("CREATE SCHEMA {SCHEMA}"))
        .execute(&pool(&url).await)
        .await
        .unwrap();
    let without_table = within(db.is_ready()).await;

    assert!(
        matches!(without_schema, Ok(false)),
        "without the schema: {without_schema:?}"
    );
    assert!(
        matches!(without_table, Ok(false)),
        "with the schema but no migrations table: {without_table:?}"
    );
}

#[tokio::test]
async fn a_fully_migrated_database_is_ready() {
    let url = fresh_database().await;
    let db = database(&url, migrator(2));

    within(db.migrate()).await.unwrap();

    assert!(within(db.is_ready()).await.unwrap());
    // The platform's own migrations (from FIRST_PLATFORM_VERSION on) are recorded there too.
    let applied: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT version FROM {SCHEMA}._sqlx_migrations WHERE version < {} ORDER BY version",
        crm_platform::db::FIRST_PLATFORM_VERSION
    ))
    .fetch_all(&pool(&url).await)
    .await
    .unwrap();
    assert_eq!(
        applied,
        [1, 2],
        "the migrations table lives in the service's schema"
    );
}

#[tokio::test]
async fn a_database_behind_the_binarys_newest_migration_is_not_ready() {
    let url = fresh_database().await;
    within(database(&url, migrator(1)).migrate()).await.unwrap();

    let newer_binary = database(&url, migrator(2));

    assert!(!within(newer_binary.is_ready()).await.unwrap());
}

#[tokio::test]
async fn readiness_answers_while_every_main_pool_connection_is_held() {
    let url = fresh_database().await;
    let db = database(&url, migrator(2));
    within(db.migrate()).await.unwrap();
    let _held = [
        within(db.pool.acquire()).await.unwrap(),
        within(db.pool.acquire()).await.unwrap(),
    ];
    assert!(
        db.pool.try_acquire().is_none(),
        "the main pool is exhausted"
    );

    let ready = within(db.is_ready()).await;

    assert!(matches!(ready, Ok(true)), "{ready:?}");
}

/// The health status the server reports for `service`.
async fn health(addr: std::net::SocketAddr, service: &str) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test]
async fn the_health_check_says_not_serving_until_the_schema_is_migrated() {
    use tonic_health::pb::health_check_response::ServingStatus;
    const SERVICE: &str = "crm.test.v1.TestService";
    let url = fresh_database().await;
    let config = config(&[("CRM__DATABASE__URL", &url)]);
    let module = crm_platform::server::ServiceModule {
        name: "test",
        grpc_service: SERVICE,
        scopes: &[],
        database: database(&url, migrator(2)),
        add_routes: Box::new(|_| {}),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { crm_platform::server::serve(&config, vec![module], listener, shutdown).await }
    });

    // NOT_SERVING is also the status before the first check: observe it only once the health
    // pool's connection has answered a check.
    let admin = pool(&url).await;
    crate::support::eventually("readiness has checked the database once", || async {
        let checked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1 AND state = 'idle'",
        )
        .bind(format!("crm-{SCHEMA}-health"))
        .fetch_one(&admin)
        .await
        .unwrap();
        checked > 0
    })
    .await;
    let unmigrated = within(health(addr, SERVICE)).await;
    within(database(&url, migrator(2)).migrate()).await.unwrap();
    crate::support::eventually("the health check says SERVING", || async {
        health(addr, SERVICE).await == ServingStatus::Serving as i32
    })
    .await;

    assert_eq!(unmigrated, ServingStatus::NotServing as i32);
    shutdown.cancel();
    within(server).await.unwrap().unwrap();
}
