//! Migration 0003: the customer feed's table becomes the platform's outbox in place. Events
//! written before keep their sequence numbers (the resume tokens consumers hold), and the
//! table ends up with exactly the platform table's shape.

use std::borrow::Cow;
use std::str::FromStr;

use crm_platform::db::{Database, PLATFORM_MIGRATOR};
use crm_proto::crm::common::v1::ChangeType;
use crm_proto::crm::customer::v1 as pb;
use futures::StreamExt;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::common::{config, fresh_database, redis_url, spawn_with, within};

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

/// The columns (name, type, nullable) and index names of `schema.change_events`.
async fn shape(pool: &PgPool, schema: &str) -> (Vec<(String, String, String)>, Vec<String>) {
    let columns = sqlx::query_as(
        "SELECT column_name::text, data_type::text, is_nullable::text \
         FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = 'change_events' ORDER BY column_name",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    let indexes = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes \
         WHERE schemaname = $1 AND tablename = 'change_events' ORDER BY indexname",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    (columns, indexes)
}

/// The customer schema as the previous release left it: customer migrations 1 and 2 and the
/// platform's request ids, nothing later.
async fn migrate_as_previous_release(url: &str) {
    let options = PgConnectOptions::from_str(url)
        .unwrap()
        .options([("search_path", "customer")]);
    let pool = PgPoolOptions::new().connect_with(options).await.unwrap();
    sqlx::query("CREATE SCHEMA customer")
        .execute(&pool)
        .await
        .unwrap();
    let previous: Vec<_> = crm_customer::MIGRATOR
        .iter()
        .filter(|m| m.version < 3)
        .chain(PLATFORM_MIGRATOR.iter().filter(|m| m.version == 1_000_001))
        .cloned()
        .collect();
    Migrator {
        migrations: Cow::Owned(previous),
        ..Migrator::DEFAULT
    }
    .run(&pool)
    .await
    .expect("the previous release's migrations");
    pool.close().await;
}

#[tokio::test]
async fn events_written_before_the_move_are_still_watched_with_their_tokens() {
    let url = fresh_database().await;
    migrate_as_previous_release(&url).await;
    let pool = PgPool::connect(&url).await.unwrap();
    let id = uuid::Uuid::now_v7();
    // One event from before versions were kept, one from the second pass.
    sqlx::query(
        "INSERT INTO customer.changes (seq, customer_id, change_type, snapshot) \
         VALUES (41, $1, 'CHANGE_TYPE_CREATED', NULL)",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO customer.changes (seq, customer_id, change_type, version, changed_paths, \
           actor_kind, actor_id) \
         VALUES (42, $1, 'CHANGE_TYPE_UPDATED', 2, '{email}', 'SERVICE', 'sales')",
    )
    .bind(id)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("SELECT setval('customer.changes_seq_seq', 42)")
        .execute(&pool)
        .await
        .unwrap();

    let app = spawn_with(config(&url, &redis_url(), &[])).await;
    let client = app.client().await;
    let created = client.create(crate::common::ada()).await.unwrap();
    let mut feed = client
        .inner
        .clone()
        .watch_customer_changes(client.request(pb::WatchCustomerChangesRequest {
            resume_token: "40".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut headers = Vec::new();
    for _ in 0..3 {
        let message = within(feed.next()).await.unwrap().unwrap();
        headers.push(message.event.unwrap().header.unwrap());
    }

    let summary: Vec<_> = headers
        .iter()
        .map(|h| {
            (
                h.resume_token.clone(),
                h.change_type(),
                h.resource_id.clone(),
                h.version,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("41".to_string(), ChangeType::Created, id.to_string(), 0),
            ("42".to_string(), ChangeType::Updated, id.to_string(), 2),
            ("43".to_string(), ChangeType::Created, created.id.clone(), 1),
        ]
    );
    assert_eq!(headers[1].changed_paths.as_ref().unwrap().paths, ["email"]);
    assert_eq!(headers[1].actor.as_ref().unwrap().id, "sales");
}

#[tokio::test]
async fn the_moved_table_has_the_platform_tables_shape() {
    let url = fresh_database().await;
    let config = config(&url, &redis_url(), &[]);
    let customer = crm_customer::database(&config).unwrap();
    within(customer.migrate()).await.unwrap();
    let platform_only =
        Database::connect_lazy(&config.database, "platform_only", &NO_MIGRATIONS).unwrap();
    within(platform_only.migrate()).await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();

    let moved = shape(&pool, "customer").await;
    let fresh = shape(&pool, "platform_only").await;

    assert!(!fresh.0.is_empty(), "the platform table exists");
    assert_eq!(moved, fresh);
}
