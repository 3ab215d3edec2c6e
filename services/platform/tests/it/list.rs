//! The list call against PostgreSQL: a small table in a fresh database, paged every way a List
//! pages it.

use chrono::{DateTime, Duration, TimeZone, Utc};
use crm_platform::ApiError;
use crm_platform::filter::{FieldType, FilterSchema};
use crm_platform::list::{IdOrder, KeyType, ListRequest, ListSchema, Page, PageSizes};
use crm_platform::page_token::PageTokenCodec;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{fresh_database, pool, within};

/// One row of the test table.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Thing {
    id: Uuid,
    owner: i64,
    name: Option<String>,
    size: i64,
    score: f64,
    create_time: DateTime<Utc>,
}

const COLUMNS: &str = "t.id, t.owner, t.name, t.size, t.score, t.create_time";

fn schema() -> ListSchema {
    ListSchema::new("ListThings", COLUMNS, "t.id", KeyType::Uuid)
        .filter(
            FilterSchema::new()
                .field("name", FieldType::Text, "t.name")
                .field("size", FieldType::Integer, "t.size")
                .map_field("attributes", "t.attributes"),
        )
        .order_key("name", "coalesce(t.name, '')", KeyType::Text)
        .order_key("size", "t.size", KeyType::Integer)
        .order_key("score", "t.score", KeyType::Float)
        .order_key("create_time", "t.create_time", KeyType::Timestamp)
        .default_order("create_time")
}

fn tokens() -> PageTokenCodec {
    PageTokenCodec::new(b"list test secret, thirty-two b!!")
}

fn base_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 31, 9, 0, 0).unwrap()
}

/// A fresh database with the table `things`.
async fn database() -> PgPool {
    let pool = pool(&fresh_database().await).await;
    sqlx::query(
        "CREATE TABLE things (id uuid PRIMARY KEY, owner int8 NOT NULL, name text, \
         size int8 NOT NULL, score float8 NOT NULL, create_time timestamptz NOT NULL, \
         attributes jsonb NOT NULL DEFAULT '{}')",
    )
    .execute(&pool)
    .await
    .expect("creating the test table");
    pool
}

async fn insert(pool: &PgPool, thing: &Thing, attributes: serde_json::Value) {
    sqlx::query("INSERT INTO things VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(thing.id)
        .bind(thing.owner)
        .bind(&thing.name)
        .bind(thing.size)
        .bind(thing.score)
        .bind(thing.create_time)
        .bind(attributes)
        .execute(pool)
        .await
        .expect("inserting a thing");
}

/// `count` things of owner 1 with many ties: a few names (one missing), sizes and scores, and
/// times that differ by single microseconds. Scores need every bit of a float8 to order.
async fn seed(pool: &PgPool, count: usize) -> Vec<Thing> {
    let names = [None, Some("ann"), Some("bo"), Some("cy")];
    let scores = [0.1 + 0.2, 1.0 / 3.0, 0.3, 2.0 / 3.0];
    let mut things = Vec::with_capacity(count);
    for i in 0..count {
        let thing = Thing {
            id: Uuid::now_v7(),
            owner: 1,
            name: names[i % names.len()].map(str::to_owned),
            size: (i % 5) as i64,
            score: scores[i % scores.len()],
            create_time: base_time() + Duration::microseconds((i % 7) as i64),
        };
        let tier = if i % 2 == 0 { "gold" } else { "silver" };
        insert(
            pool,
            &thing,
            serde_json::json!({ "tier": tier, "seats": i }),
        )
        .await;
        things.push(thing);
    }
    things
}

/// A request for owner 1 in `order_by`, pages of `page_size`.
fn request<'a>(order_by: &'a str, page_size: i32) -> ListRequest<'a> {
    ListRequest {
        page_size,
        order_by,
        scope: &["1"],
        ..ListRequest::default()
    }
}

/// One page of owner `request.scope[0]`'s things.
async fn page(
    pool: &PgPool,
    schema: &ListSchema,
    request: &ListRequest<'_>,
) -> Result<Page<Thing>, ApiError> {
    let tokens = tokens();
    let list = schema.prepare(&tokens, request)?;
    let owner: i64 = request.scope[0].parse().unwrap();
    let mut conn = within(pool.acquire()).await.expect("a connection");
    within(list.fetch(
        &mut conn,
        |sql| {
            sql.push("things t");
        },
        |sql| {
            sql.push("t.owner = ").push_bind(owner);
        },
    ))
    .await
}

/// Every page of `request`, following the tokens to the end.
async fn all_pages(pool: &PgPool, request: ListRequest<'_>) -> Vec<Vec<Thing>> {
    let schema = schema();
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let next = page(
            pool,
            &schema,
            &ListRequest {
                page_token: &token,
                ..request
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{request:?} after {} pages: {e}", pages.len()));
        pages.push(next.rows);
        if next.next_page_token.is_empty() {
            return pages;
        }
        assert!(pages.len() < 1000, "paging never ends");
        token = next.next_page_token;
    }
}

fn ids(things: &[Thing]) -> Vec<Uuid> {
    things.iter().map(|t| t.id).collect()
}

/// The fields an INVALID_ARGUMENT names.
fn violated(result: Result<Page<Thing>, ApiError>) -> Vec<String> {
    match result {
        Err(ApiError::InvalidArgument(violations)) => {
            violations.iter().map(|v| v.field.clone()).collect()
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[tokio::test]
async fn every_row_appears_once_in_order_across_pages_of_every_size() {
    let pool = database().await;
    let things = seed(&pool, 23).await;
    type Order = fn(&Thing, &Thing) -> std::cmp::Ordering;
    let orders: [(&str, Order); 6] = [
        ("", |a, b| (a.create_time, a.id).cmp(&(b.create_time, b.id))),
        ("create_time desc", |a, b| {
            (b.create_time, b.id).cmp(&(a.create_time, a.id))
        }),
        ("name", |a, b| {
            (a.name.clone().unwrap_or_default(), a.id)
                .cmp(&(b.name.clone().unwrap_or_default(), b.id))
        }),
        ("size desc, name", |a, b| {
            let key = |t: &Thing| (t.name.clone().unwrap_or_default(), t.id);
            b.size.cmp(&a.size).then_with(|| key(a).cmp(&key(b)))
        }),
        ("score desc", |a, b| {
            b.score.total_cmp(&a.score).then_with(|| b.id.cmp(&a.id))
        }),
        ("name desc, create_time", |a, b| {
            let key = |t: &Thing| (t.create_time, t.id);
            b.name
                .clone()
                .unwrap_or_default()
                .cmp(&a.name.clone().unwrap_or_default())
                .then_with(|| key(a).cmp(&key(b)))
        }),
    ];

    for (order_by, order) in orders {
        let mut expected = things.clone();
        expected.sort_by(order);
        for page_size in [1, 4, 7, 23, 50] {
            let pages = all_pages(&pool, request(order_by, page_size)).await;

            let listed: Vec<Thing> = pages.concat();
            assert_eq!(
                ids(&listed),
                ids(&expected),
                "order_by {order_by:?}, page_size {page_size}"
            );
            assert!(
                pages.iter().all(|p| p.len() <= page_size as usize),
                "order_by {order_by:?}, page_size {page_size}"
            );
        }
    }
}

#[tokio::test]
async fn ties_are_broken_by_the_id_in_the_last_keys_direction_or_ascending_when_declared() {
    let pool = database().await;
    let mut things = Vec::new();
    for _ in 0..9 {
        let thing = Thing {
            id: Uuid::now_v7(),
            owner: 1,
            name: Some("same".into()),
            size: 1,
            score: 0.5,
            create_time: base_time(),
        };
        insert(&pool, &thing, serde_json::json!({})).await;
        things.push(thing);
    }
    let mut ascending = ids(&things);
    ascending.sort();
    let mut descending = ascending.clone();
    descending.reverse();
    let ascending_ids = schema().id_order(IdOrder::Ascending);

    let asc = all_pages(&pool, request("create_time", 2)).await.concat();
    let desc = all_pages(&pool, request("create_time desc", 2))
        .await
        .concat();
    let mut fixed = Vec::new();
    let mut token = String::new();
    loop {
        let next = page(
            &pool,
            &ascending_ids,
            &ListRequest {
                page_token: &token,
                ..request("create_time desc", 2)
            },
        )
        .await
        .unwrap();
        fixed.extend(next.rows);
        if next.next_page_token.is_empty() {
            break;
        }
        token = next.next_page_token;
    }

    assert_eq!(ids(&asc), ascending);
    assert_eq!(ids(&desc), descending);
    assert_eq!(
        ids(&fixed),
        ascending,
        "IdOrder::Ascending under a descending key"
    );
}

#[tokio::test]
async fn a_page_that_ends_the_rows_exactly_has_no_next_token_and_one_row_more_has_one() {
    let pool = database().await;
    seed(&pool, 5).await;

    let exact = page(&pool, &schema(), &request("", 5)).await.unwrap();
    let short = page(&pool, &schema(), &request("", 4)).await.unwrap();
    let rest = page(
        &pool,
        &schema(),
        &ListRequest {
            page_token: &short.next_page_token,
            ..request("", 4)
        },
    )
    .await
    .unwrap();

    assert_eq!(exact.rows.len(), 5);
    assert_eq!(
        exact.next_page_token, "",
        "no empty page after the last row"
    );
    assert_eq!(short.rows.len(), 4);
    assert!(!short.next_page_token.is_empty());
    assert_eq!(rest.rows.len(), 1);
    assert_eq!(rest.next_page_token, "");
}

#[tokio::test]
async fn page_size_zero_means_the_default_and_the_cap_clamps() {
    let pool = database().await;
    seed(&pool, 60).await;
    let search_sized = schema().page_sizes(PageSizes::SEARCH);

    let default = page(&pool, &schema(), &request("", 0)).await.unwrap();
    let clamped = page(&pool, &search_sized, &request("", 101)).await.unwrap();
    let search_default = page(&pool, &search_sized, &request("", 0)).await.unwrap();

    assert_eq!(default.rows.len(), 50);
    assert_eq!(search_default.rows.len(), 20);
    assert_eq!(clamped.rows.len(), 60, "the cap of 100 lets all 60 through");
}

#[tokio::test]
async fn the_filter_the_condition_and_the_order_combine_and_the_token_is_bound_to_all_three() {
    let pool = database().await;
    let things = seed(&pool, 30).await;
    // Another owner's rows: the condition keeps them out.
    let stranger = Thing {
        id: Uuid::now_v7(),
        owner: 2,
        size: 4,
        ..things[0].clone()
    };
    insert(
        &pool,
        &stranger,
        serde_json::json!({ "tier": "gold", "seats": 9 }),
    )
    .await;
    let filter =
        "size >= 2 AND attributes.tier = \"gold\" AND attributes.tier:gol AND attributes.seats > 3";
    let filtered = |order_by| ListRequest {
        filter,
        ..request(order_by, 2)
    };
    let mut expected: Vec<Thing> = things
        .iter()
        .enumerate()
        .filter(|(i, t)| t.size >= 2 && i % 2 == 0 && *i > 3)
        .map(|(_, t)| t.clone())
        .collect();
    expected.sort_by_key(|t| std::cmp::Reverse((t.size, t.id)));

    let listed = all_pages(&pool, filtered("size desc")).await.concat();
    let first = page(&pool, &schema(), &filtered("size desc"))
        .await
        .unwrap();
    let again = |request: ListRequest<'static>| {
        let token = first.next_page_token.clone();
        let pool = pool.clone();
        async move {
            let request = ListRequest {
                page_token: &token,
                ..request
            };
            page(&pool, &schema(), &request).await
        }
    };

    assert_eq!(ids(&listed), ids(&expected));
    assert!(again(filtered("size desc")).await.is_ok());
    for (case, other) in [
        (
            "another filter",
            ListRequest {
                filter: "size >= 2",
                ..filtered("size desc")
            },
        ),
        ("another order", filtered("size")),
        (
            "another scope",
            ListRequest {
                scope: &["2"],
                ..filtered("size desc")
            },
        ),
    ] {
        assert_eq!(violated(again(other).await), ["page_token"], "{case}");
    }
}

#[tokio::test]
async fn a_tampered_token_is_invalid_on_page_token() {
    let pool = database().await;
    seed(&pool, 3).await;
    let first = page(&pool, &schema(), &request("", 1)).await.unwrap();
    let mut tampered = first.next_page_token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    for token in [tampered.as_str(), "not a token", "AAAA"] {
        let result = page(
            &pool,
            &schema(),
            &ListRequest {
                page_token: token,
                ..request("", 1)
            },
        )
        .await;

        assert_eq!(violated(result), ["page_token"], "{token}");
    }
}

#[tokio::test]
async fn rows_inserted_between_pages_neither_repeat_nor_shift_what_follows() {
    let pool = database().await;
    let things = seed(&pool, 10).await;
    let first = page(&pool, &schema(), &request("", 4)).await.unwrap();
    // Sorts before everything already listed.
    let early = Thing {
        id: Uuid::now_v7(),
        create_time: base_time() - Duration::seconds(1),
        ..things[0].clone()
    };
    insert(&pool, &early, serde_json::json!({})).await;

    let mut rest = Vec::new();
    let mut token = first.next_page_token.clone();
    while !token.is_empty() {
        let next = page(
            &pool,
            &schema(),
            &ListRequest {
                page_token: &token,
                ..request("", 4)
            },
        )
        .await
        .unwrap();
        rest.extend(next.rows);
        token = next.next_page_token;
    }

    let mut expected = ids(&things);
    expected.sort_by_key(|id| {
        let thing = things.iter().find(|t| t.id == *id).unwrap();
        (thing.create_time, thing.id)
    });
    let listed: Vec<Uuid> = ids(&first.rows).into_iter().chain(ids(&rest)).collect();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn state_stored_with_a_page_comes_back_with_the_next() {
    let pool = database().await;
    seed(&pool, 3).await;
    let (schema, tokens) = (schema(), tokens());
    let mut conn = pool.acquire().await.unwrap();

    let first = schema
        .prepare_with_state::<String>(&tokens, &request("", 2))
        .unwrap();
    let page: Page<Thing> = first
        .fetch_with_state(
            &mut conn,
            &"similar".to_owned(),
            |sql| {
                sql.push("things t");
            },
            |sql| {
                sql.push("TRUE");
            },
        )
        .await
        .unwrap();
    let next = schema
        .prepare_with_state::<String>(
            &tokens,
            &ListRequest {
                page_token: &page.next_page_token,
                ..request("", 2)
            },
        )
        .unwrap();

    assert_eq!(first.state(), None);
    assert_eq!(next.state().map(String::as_str), Some("similar"));
}

#[tokio::test]
async fn a_sort_key_that_is_null_is_a_bug_reported_as_internal() {
    let pool = database().await;
    seed(&pool, 4).await;
    let careless = ListSchema::new("ListThings", COLUMNS, "t.id", KeyType::Uuid)
        .order_key("name", "t.name", KeyType::Text)
        .default_order("name desc");

    let result = page(&pool, &careless, &request("", 1)).await;

    assert!(matches!(result, Err(ApiError::Internal(_))), "{result:?}");
}
