//! Readiness (the database answers and the service's schema is fully migrated), and the two
//! roles of a schema: the owner that migrates and the runtime role that serves, each tested by
//! connecting as that role.

use std::borrow::Cow;

use crm_platform::db::roles::{RoleSetup, ServiceRoles};
use crm_platform::db::{Database, FIRST_PLATFORM_VERSION, PLATFORM_MIGRATOR};
use sqlx::PgPool;
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
    database_of(SCHEMA, &[("CRM__DATABASE__URL", url)], migrator)
}

/// The database of the service owning `schema`, configured by `env`.
fn database_of(
    schema: &'static str,
    env: &[(&str, &str)],
    migrator: &'static Migrator,
) -> Database {
    let mut env = env.to_vec();
    env.extend([
        ("CRM__DATABASE__MAX_CONNECTIONS", "2"),
        ("CRM__DATABASE__ACQUIRE_TIMEOUT_MS", "500"),
    ]);
    Database::connect_lazy(&config(&env).database, schema, migrator).unwrap()
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
    let applied: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT version FROM {SCHEMA}._sqlx_migrations ORDER BY version"
    ))
    .fetch_all(&pool(&url).await)
    .await
    .unwrap();
    let platform: Vec<i64> = PLATFORM_MIGRATOR.iter().map(|m| m.version).collect();
    let expected: Vec<i64> = [1, 2].into_iter().chain(platform).collect();
    assert_eq!(
        applied, expected,
        "one migrations table in the service's schema records the service's and the platform's"
    );
}

#[tokio::test]
async fn a_service_migration_in_the_platforms_version_range_is_refused() {
    let url = fresh_database().await;
    let clashing: &'static Migrator = Box::leak(Box::new(Migrator {
        migrations: Cow::Owned(vec![migration(
            FIRST_PLATFORM_VERSION,
            "CREATE TABLE things (id bigint PRIMARY KEY)",
        )]),
        ..Migrator::DEFAULT
    }));

    let err = within(database(&url, clashing).migrate())
        .await
        .unwrap_err();

    assert!(
        err.to_string().contains("reserved for the platform"),
        "{err:#}"
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
    // A service of the contracts, so serve finds its methods' scopes; the module adds no routes.
    const SERVICE: &str = "crm.customer.v1.CustomerService";
    let url = fresh_database().await;
    let config = config(&[("CRM__DATABASE__URL", &url)]);
    let module = crm_platform::server::ServiceModule {
        name: "test",
        grpc_service: SERVICE,
        database: database(&url, migrator(2)),
        add_routes: Box::new(|_| {}),
        operations: None,
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

/// A service that grows: its first migration makes a table with an identity key, its second a
/// table with a serial key.
fn growing(steps: usize) -> &'static Migrator {
    let migrations = vec![
        migration(
            1,
            "CREATE TABLE things (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text)",
        ),
        migration(
            2,
            "CREATE TABLE later (id bigserial PRIMARY KEY, note text)",
        ),
    ];
    Box::leak(Box::new(Migrator {
        migrations: Cow::Owned(migrations.into_iter().take(steps).collect()),
        ..Migrator::DEFAULT
    }))
}

/// `url` with `role` as its user: a real login as that role (the test server trusts
/// 127.0.0.1), not a `SET ROLE` inside a superuser's session.
fn as_role(url: &str, role: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{role}@{host}")
}

/// Migrates the test service's schema on `url` with its roles.
async fn with_roles(url: &str, migrator: &'static Migrator, setup: RoleSetup) -> ServiceRoles {
    within(database(url, migrator).migrate_with_roles(setup))
        .await
        .unwrap()
}

async fn run(pool: &PgPool, sql: &str) {
    if let Err(err) = sqlx::query(sql).execute(pool).await {
        panic!("{sql}: {err}");
    }
}

async fn assert_denied(pool: &PgPool, sql: &str) {
    match sqlx::query(sql).execute(pool).await {
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42501") => {}
        other => panic!("{sql}: expected permission denied, got {other:?}"),
    }
}

/// The roles owning the schema's relations (tables, indexes, sequences) and the schema itself.
async fn owners(admin: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT DISTINCT pg_get_userbyid(relowner)::text FROM pg_class \
         WHERE relnamespace = 'svc'::regnamespace \
         UNION SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 'svc'",
    )
    .fetch_all(admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_runtime_role_reads_and_writes_its_tables_and_creates_nothing() {
    let url = fresh_database().await;
    let roles = with_roles(
        &url,
        growing(2),
        RoleSetup {
            restrict_public: true,
        },
    )
    .await;

    let runtime = pool(&as_role(&url, &roles.runtime)).await;

    for sql in [
        "INSERT INTO svc.things (name) VALUES ('a')",
        "UPDATE svc.things SET name = 'b'",
        "SELECT * FROM svc.things",
        "DELETE FROM svc.things",
        "INSERT INTO svc.later (note) VALUES ('x')",
        "INSERT INTO svc.request_ids (method, request_id, request_hash) VALUES ('m', 'r', '\\x00')",
        "SELECT version FROM svc._sqlx_migrations",
    ] {
        run(&runtime, sql).await;
    }
    for sql in [
        "INSERT INTO svc._sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'forged', true, '\\x00', 0)",
        "UPDATE svc._sqlx_migrations SET success = false",
        "DELETE FROM svc._sqlx_migrations",
        "TRUNCATE svc.things",
        "CREATE TABLE svc.extra (id int)",
        "CREATE TABLE public.extra (id int)",
        "CREATE TEMP TABLE scratch (id int)",
        "CREATE SCHEMA mine",
    ] {
        assert_denied(&runtime, sql).await;
    }
    assert_eq!(
        (roles.runtime.as_str(), roles.owner.as_str()),
        ("crm_svc", "crm_svc_owner")
    );
    assert!(!roles.runtime_may_create_temp && !roles.runtime_may_create_in_public);
}

#[tokio::test]
async fn without_restrict_public_the_runtime_role_keeps_temporary_tables_and_is_told_so() {
    let url = fresh_database().await;

    let roles = with_roles(&url, growing(1), RoleSetup::default()).await;

    assert!(roles.runtime_may_create_temp);
    run(
        &pool(&as_role(&url, &roles.runtime)).await,
        "CREATE TEMP TABLE scratch (id int)",
    )
    .await;
}

#[tokio::test]
async fn the_runtime_role_cannot_touch_another_services_schema() {
    let url = fresh_database().await;
    let mine = with_roles(&url, growing(1), RoleSetup::default()).await;
    let theirs = database_of("other", &[("CRM__DATABASE__URL", &url)], growing(1));
    within(theirs.migrate_with_roles(RoleSetup::default()))
        .await
        .unwrap();

    let runtime = pool(&as_role(&url, &mine.runtime)).await;

    for sql in [
        "SELECT * FROM other.things",
        "INSERT INTO other.things (name) VALUES ('x')",
        "SELECT * FROM other._sqlx_migrations",
    ] {
        assert_denied(&runtime, sql).await;
    }
}

#[tokio::test]
async fn the_owner_owns_everything_and_migrating_again_changes_nothing() {
    let url = fresh_database().await;
    let admin = pool(&url).await;
    let db = database(&url, growing(2));
    let roles = within(db.migrate_with_roles(RoleSetup::default()))
        .await
        .unwrap();
    let catalog = || async {
        let relations: Vec<(String, String, Vec<String>)> = sqlx::query_as(
            "SELECT relname::text, pg_get_userbyid(relowner)::text, \
                    array(SELECT unnest(coalesce(relacl, '{}'))::text ORDER BY 1) \
             FROM pg_class WHERE relnamespace = 'svc'::regnamespace ORDER BY 1",
        )
        .fetch_all(&admin)
        .await
        .unwrap();
        let defaults: Vec<String> = sqlx::query_scalar(
            "SELECT defaclobjtype::text || defaclacl::text FROM pg_default_acl ORDER BY 1",
        )
        .fetch_all(&admin)
        .await
        .unwrap();
        let applied: Vec<(i64, String)> = sqlx::query_as(
            "SELECT version, installed_on::text FROM svc._sqlx_migrations ORDER BY 1",
        )
        .fetch_all(&admin)
        .await
        .unwrap();
        (relations, defaults, applied)
    };
    let before = catalog().await;

    within(db.migrate_with_roles(RoleSetup::default()))
        .await
        .unwrap();
    within(db.migrate()).await.unwrap();

    assert_eq!(owners(&admin).await, [roles.owner]);
    assert_eq!(catalog().await, before);
}

#[tokio::test]
async fn a_table_a_later_migration_adds_is_granted_to_the_runtime_role() {
    let url = fresh_database().await;
    let roles = with_roles(&url, growing(1), RoleSetup::default()).await;

    // The next release migrates without --create-roles, connected as the superuser.
    within(database(&url, growing(2)).migrate()).await.unwrap();

    let runtime = pool(&as_role(&url, &roles.runtime)).await;
    run(&runtime, "INSERT INTO svc.later (note) VALUES ('x')").await;
    run(&runtime, "DELETE FROM svc.later").await;
    assert_eq!(owners(&pool(&url).await).await, [roles.owner]);
}

#[tokio::test]
async fn a_schema_migrated_before_roles_existed_is_handed_to_its_owner() {
    let url = fresh_database().await;
    let admin = pool(&url).await;
    within(database(&url, growing(1)).migrate()).await.unwrap();
    // What earlier versions set up: the admin owned everything and granted DML on every table,
    // the migrations table included, through its own default privileges.
    for sql in [
        "DO $$ BEGIN CREATE ROLE crm_svc LOGIN; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        "GRANT USAGE ON SCHEMA svc TO crm_svc",
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA svc TO crm_svc",
        "ALTER DEFAULT PRIVILEGES IN SCHEMA svc \
         GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO crm_svc",
    ] {
        run(&admin, sql).await;
    }

    let roles = with_roles(&url, growing(2), RoleSetup::default()).await;

    assert_eq!(owners(&admin).await, std::slice::from_ref(&roles.owner));
    let defaults_of_others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_default_acl WHERE pg_get_userbyid(defaclrole) <> $1",
    )
    .bind(&roles.owner)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(
        defaults_of_others, 0,
        "the admin's default privileges are gone"
    );
    let runtime = pool(&as_role(&url, &roles.runtime)).await;
    run(&runtime, "INSERT INTO svc.things (name) VALUES ('a')").await;
    run(&runtime, "INSERT INTO svc.later (note) VALUES ('b')").await;
    assert_denied(&runtime, "DELETE FROM svc._sqlx_migrations").await;
}

#[tokio::test]
async fn the_runtime_role_finds_a_current_schema_ready_and_cannot_migrate_one_behind() {
    let url = fresh_database().await;
    let roles = with_roles(&url, growing(1), RoleSetup::default()).await;
    let runtime_url = as_role(&url, &roles.runtime);
    let current = database(&runtime_url, growing(1));
    let behind = database(&runtime_url, growing(2));

    let nothing_to_do = within(current.migrate()).await;
    let refused = within(behind.migrate()).await;

    assert!(nothing_to_do.is_ok(), "{nothing_to_do:?}");
    assert!(within(current.is_ready()).await.unwrap());
    let refused = format!("{:#}", refused.unwrap_err());
    assert!(refused.contains("owned by crm_svc_owner"), "{refused}");
    assert!(!within(behind.is_ready()).await.unwrap());
}

#[tokio::test]
async fn migrate_url_migrates_while_the_pool_connects_as_the_runtime_role() {
    let url = fresh_database().await;
    let roles = with_roles(&url, growing(1), RoleSetup::default()).await;
    let runtime_url = as_role(&url, &roles.runtime);
    let db = database_of(
        SCHEMA,
        &[
            ("CRM__DATABASE__URL", &runtime_url),
            ("CRM__DATABASE__MIGRATE_URL", &url),
        ],
        growing(2),
    );

    within(db.migrate()).await.unwrap();

    assert!(within(db.is_ready()).await.unwrap());
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(user, roles.runtime);
    sqlx::query("INSERT INTO later (note) VALUES ('x')")
        .execute(&db.pool)
        .await
        .unwrap();
}
