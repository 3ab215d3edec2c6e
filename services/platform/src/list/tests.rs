//! Checking requests and building the page query, without a database (the queries themselves
//! run against PostgreSQL in `tests/it/list.rs`).

use super::*;
use crate::filter::FieldType;

fn tokens() -> PageTokenCodec {
    PageTokenCodec::new(b"test secret of thirty-two bytes!")
}

fn schema() -> ListSchema {
    ListSchema::new("ListThings", "t.id, t.name", "t.id", KeyType::Uuid)
        .filter(
            FilterSchema::new()
                .field("name", FieldType::Text, "t.name")
                .field("size", FieldType::Integer, "t.size"),
        )
        .order_key("name", "coalesce(t.name, '')", KeyType::Text)
        .order_key("create_time", "t.create_time", KeyType::Timestamp)
        .default_order("create_time")
}

fn request<'a>(filter: &'a str, order_by: &'a str, page_token: &'a str) -> ListRequest<'a> {
    ListRequest {
        filter,
        order_by,
        page_token,
        ..ListRequest::default()
    }
}

/// The fields an error names, in order.
fn violated(error: ApiError) -> Vec<String> {
    match error {
        ApiError::InvalidArgument(violations) => {
            violations.iter().map(|v| v.field.clone()).collect()
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

/// A token positioned after the given sort values, as a page of `request` would issue it.
fn token_after(list: &PreparedList<'_>, after: &[&str]) -> String {
    let after = after.iter().map(|v| (*v).to_owned()).collect();
    list.tokens
        .encode(list.fingerprint, &Cursor { after, state: () })
}

/// The SQL of the page query, with a table and condition of its own.
fn page_sql(list: &PreparedList<'_>) -> String {
    list.query(
        |sql| {
            sql.push("things t");
        },
        |sql| {
            sql.push("t.owner = ").push_bind(7_i64);
        },
    )
    .sql()
    .to_owned()
}

#[test]
fn zero_means_the_default_larger_sizes_are_clamped_and_negative_ones_refused() {
    assert_eq!(PageSizes::LIST.resolve(0), Some(50));
    assert_eq!(PageSizes::LIST.resolve(5000), Some(1000));
    assert_eq!(PageSizes::LIST.resolve(7), Some(7));
    assert_eq!(PageSizes::SEARCH.resolve(0), Some(20));
    assert_eq!(PageSizes::SEARCH.resolve(101), Some(100));
    assert_eq!(PageSizes::LIST.resolve(-1), None);
}

#[test]
fn page_size_filter_and_order_by_are_reported_together() {
    let (schema, tokens) = (schema(), tokens());
    let bad = ListRequest {
        page_size: -1,
        ..request("colour = red", "size", "")
    };

    let error = schema.prepare(&tokens, &bad).err().unwrap();

    assert_eq!(violated(error), ["page_size", "filter", "order_by"]);
}

#[test]
fn a_bad_filter_names_the_position() {
    let (schema, tokens) = (schema(), tokens());

    let error = schema
        .prepare(&tokens, &request("name = a AND colour = red", "", ""))
        .err()
        .unwrap();

    let ApiError::InvalidArgument(violations) = error else {
        panic!("expected INVALID_ARGUMENT");
    };
    let violation = violations.iter().next().unwrap();
    assert_eq!(violation.field, "filter");
    assert!(
        violation
            .description
            .starts_with("at position 13: unknown field 'colour'"),
        "{}",
        violation.description
    );
}

#[test]
fn the_default_order_applies_when_order_by_is_empty_and_the_id_follows_its_direction() {
    let (schema, tokens) = (schema(), tokens());

    let default = schema.prepare(&tokens, &request("", "", "")).unwrap();
    let descending = schema
        .prepare(&tokens, &request("", "name desc", ""))
        .unwrap();

    assert!(
        page_sql(&default).ends_with(" ORDER BY t.create_time ASC, t.id ASC LIMIT $2"),
        "{}",
        page_sql(&default)
    );
    assert!(
        page_sql(&descending).ends_with(" ORDER BY coalesce(t.name, '') DESC, t.id DESC LIMIT $2"),
        "{}",
        page_sql(&descending)
    );
}

#[test]
fn the_first_page_selects_the_cursor_and_binds_condition_filter_and_limit_in_order() {
    let (schema, tokens) = (schema(), tokens());
    let list = schema
        .prepare(&tokens, &request("name = Ann", "", ""))
        .unwrap();

    assert_eq!(
        page_sql(&list),
        "SELECT t.id, t.name, ARRAY[to_jsonb(t.create_time) #>> '{}', to_jsonb(t.id) #>> '{}'] \
         AS page_cursor FROM things t WHERE (t.owner = $1) AND ((t.name = $2)) \
         ORDER BY t.create_time ASC, t.id ASC LIMIT $3"
    );
    assert!(list.is_first_page());
    assert_eq!(list.page_size(), 50);
}

#[test]
fn keys_in_one_direction_page_with_one_row_comparison() {
    let (schema, tokens) = (schema(), tokens());
    let first = schema
        .prepare(&tokens, &request("", "name desc, create_time desc", ""))
        .unwrap();
    let token = token_after(&first, &["Ann", "2026-01-31T09:00:00+00:00", "some id"]);

    let next = schema
        .prepare(&tokens, &request("", "name desc, create_time desc", &token))
        .unwrap();

    let sql = page_sql(&next);
    assert!(
        sql.contains(
            " AND (coalesce(t.name, ''), t.create_time, t.id) < ($2::text, $3::timestamptz, $4::uuid) \
             ORDER BY coalesce(t.name, '') DESC, t.create_time DESC, t.id DESC LIMIT $5"
        ),
        "{sql}"
    );
    assert!(!next.is_first_page());
}

#[test]
fn mixed_directions_page_with_one_alternative_per_key() {
    let schema = schema().id_order(IdOrder::Ascending);
    let tokens = tokens();
    let first = schema
        .prepare(&tokens, &request("", "name, create_time desc", ""))
        .unwrap();
    let token = token_after(&first, &["Ann", "2026-01-31T09:00:00+00:00", "some id"]);

    let next = schema
        .prepare(&tokens, &request("", "name, create_time desc", &token))
        .unwrap();

    let sql = page_sql(&next);
    assert!(
        sql.contains(
            " AND ((coalesce(t.name, '') > $2::text) \
             OR (coalesce(t.name, '') = $3::text AND t.create_time < $4::timestamptz) \
             OR (coalesce(t.name, '') = $5::text AND t.create_time = $6::timestamptz AND t.id > $7::uuid)) \
             ORDER BY coalesce(t.name, '') ASC, t.create_time DESC, t.id ASC LIMIT $8"
        ),
        "{sql}"
    );
}

#[test]
fn a_token_is_refused_for_another_filter_order_scope_or_method() {
    let (schema, tokens) = (schema(), tokens());
    let scoped = |scope: &'static [&'static str]| ListRequest {
        scope,
        ..request("name = Ann", "name", "")
    };
    let first = schema.prepare(&tokens, &scoped(&["parent-1"])).unwrap();
    let token = token_after(&first, &["Ann", "some id"]);
    let other_method = ListSchema {
        method: "ListOtherThings",
        ..schema.clone()
    };

    let cases = [
        ("same query", &schema, scoped(&["parent-1"]), true),
        ("another scope", &schema, scoped(&["parent-2"]), false),
        (
            "another filter",
            &schema,
            ListRequest {
                filter: "name = Bo",
                ..scoped(&["parent-1"])
            },
            false,
        ),
        (
            "another order",
            &schema,
            ListRequest {
                order_by: "name desc",
                ..scoped(&["parent-1"])
            },
            false,
        ),
        (
            "another method",
            &other_method,
            scoped(&["parent-1"]),
            false,
        ),
    ];

    for (case, schema, request, accepted) in cases {
        let result = schema.prepare(
            &tokens,
            &ListRequest {
                page_token: &token,
                ..request
            },
        );

        match result {
            Ok(_) => assert!(accepted, "{case}: accepted"),
            Err(error) => {
                assert!(!accepted, "{case}: {error}");
                assert_eq!(violated(error), ["page_token"], "{case}");
            }
        }
    }
}

#[test]
fn a_token_with_another_number_of_keys_is_refused() {
    let (schema, tokens) = (schema(), tokens());
    let first = schema.prepare(&tokens, &request("", "", "")).unwrap();
    let token = token_after(&first, &["2026-01-31T09:00:00+00:00"]);

    let error = schema
        .prepare(&tokens, &request("", "", &token))
        .err()
        .unwrap();

    assert_eq!(violated(error), ["page_token"]);
}

#[test]
fn state_travels_in_the_token() {
    let (schema, tokens) = (schema(), tokens());
    let first = schema
        .prepare_with_state::<String>(&tokens, &request("", "", ""))
        .unwrap();
    let token = tokens.encode(
        first.fingerprint,
        &Cursor {
            after: vec!["2026-01-31T09:00:00+00:00".to_owned(), "id".to_owned()],
            state: "similar",
        },
    );

    let next = schema
        .prepare_with_state::<String>(&tokens, &request("", "", &token))
        .unwrap();

    assert_eq!(first.state(), None);
    assert_eq!(next.state().map(String::as_str), Some("similar"));
}

#[test]
#[should_panic(expected = "default order \"size\" of ListThings")]
fn a_default_order_on_an_undeclared_key_is_a_programming_error() {
    let _ = ListSchema::new("ListThings", "t.id", "t.id", KeyType::Uuid).default_order("size");
}

#[test]
#[should_panic(expected = "declared twice")]
fn declaring_an_order_key_twice_is_a_programming_error() {
    let _ = schema().order_key("name", "t.name", KeyType::Text);
}
