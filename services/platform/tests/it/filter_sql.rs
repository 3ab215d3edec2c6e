//! Compiled filters run in PostgreSQL, pushed into a `QueryBuilder` that binds their values: the
//! SQL and the bound types (text arrays for enum ordering, DATE, INTERVAL, UUID) agree with what
//! PostgreSQL expects. No tables: the rows are a VALUES list.

use crm_platform::filter::{self, EnumDef, FieldType, FilterSchema};
use sqlx::{Postgres, QueryBuilder};

use crate::support::{admin_url, within};

const PRIORITIES: EnumDef = EnumDef::new("TICKET_PRIORITY_", &["LOW", "NORMAL", "HIGH", "URGENT"]);
const CHANNELS: EnumDef = EnumDef::new("CHANNEL_", &["EMAIL", "SMS", "PUSH"]);
const WATCHER: &str = "0190f3a4-8c1e-7b52-9d3f-2a6c4e8b1f07";

const ROWS: &str = "(VALUES \
    ('a', 'URGENT', DATE '2026-01-31', INTERVAL '2 minutes', ARRAY['0190f3a4-8c1e-7b52-9d3f-2a6c4e8b1f07']::uuid[], ARRAY['SMS']), \
    ('b', 'HIGH', DATE '2026-02-01', INTERVAL '2 minutes', ARRAY[]::uuid[], ARRAY['SMS', 'EMAIL']), \
    ('c', 'LOW', DATE '2025-12-31', INTERVAL '30 seconds', ARRAY['0190f3a4-8c1e-7b52-9d3f-2a6c4e8b1f07']::uuid[], ARRAY['PUSH']), \
    ('d', NULL, NULL, NULL, NULL, NULL)\
) AS t(name, priority, close_date, wait, watcher_ids, channels)";

fn schema() -> FilterSchema {
    FilterSchema::new()
        .field("priority", FieldType::Enum(&PRIORITIES), "t.priority")
        .field("close_date", FieldType::Date, "t.close_date")
        .field("wait", FieldType::Duration, "t.wait")
        .field("watcher_ids", FieldType::UuidArray, "t.watcher_ids")
        .field("channels", FieldType::EnumArray(&CHANNELS), "t.channels")
}

/// The names of the rows `filter` selects.
async fn select(filter: &str) -> Vec<String> {
    let expr = filter::parse(filter).unwrap();
    let compiled = filter::to_sql(&expr, &schema()).unwrap();
    let mut query = QueryBuilder::<Postgres>::new(format!("SELECT t.name FROM {ROWS} WHERE "));
    compiled.push_to(&mut query);
    query.push(" ORDER BY t.name");
    let sql = query.sql().to_owned();
    let pool = within(sqlx::PgPool::connect(&admin_url()))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL at {} (set DATABASE_URL): {e}",
                admin_url()
            )
        });
    let rows: Vec<(String,)> = within(query.build_query_as().fetch_all(&pool))
        .await
        .unwrap_or_else(|e| panic!("{filter}: {sql}: {e}"));
    pool.close().await;
    rows.into_iter().map(|(name,)| name).collect()
}

#[tokio::test]
async fn enum_ordering_selects_rows_by_declared_order_and_never_null() {
    assert_eq!(select("priority >= HIGH").await, ["a", "b"]);
    assert_eq!(select("priority < TICKET_PRIORITY_HIGH").await, ["c"]);
    assert_eq!(select("NOT priority < HIGH").await, ["a", "b"]);
}

#[tokio::test]
async fn dates_bind_as_dates() {
    assert_eq!(select("close_date >= \"2026-01-31\"").await, ["a", "b"]);
    assert_eq!(select("close_date = \"2025-12-31\"").await, ["c"]);
}

#[tokio::test]
async fn durations_bind_as_intervals() {
    assert_eq!(select("wait > 90s").await, ["a", "b"]);
    assert_eq!(
        select("wait = \"30s\" OR wait = 120s").await,
        ["a", "b", "c"]
    );
    assert_eq!(select("wait < 30.5s").await, ["c"]);
}

#[tokio::test]
async fn list_membership_binds_uuids_and_bare_enum_names() {
    assert_eq!(select(&format!("watcher_ids:{WATCHER}")).await, ["a", "c"]);
    assert_eq!(select("channels:CHANNEL_SMS").await, ["a", "b"]);
    assert_eq!(select("channels:EMAIL channels:SMS").await, ["b"]);
}
