//! ListCustomers: paging, filters and order.

use crate::common::{Client, TestApp, ada, assert_invalid, spawn_app, violated_fields};
use crm_proto::crm::customer::v1 as pb;
use tonic::Code;
use uuid::Uuid;

/// Every page of a listing, following `next_page_token` until it is empty.
async fn all_pages(client: &Client, request: pb::ListCustomersRequest) -> Vec<Vec<pb::Customer>> {
    let mut pages = Vec::new();
    let mut request = request;
    loop {
        let page = client.list(request.clone()).await.unwrap();
        pages.push(page.customers);
        if page.next_page_token.is_empty() {
            return pages;
        }
        assert!(pages.len() < 1000, "paging never ends");
        request.page_token = page.next_page_token;
    }
}

/// The ids of a listing's customers across all its pages, in order.
async fn listed_ids(client: &Client, order_by: &str, page_size: i32) -> Vec<String> {
    all_pages(
        client,
        pb::ListCustomersRequest {
            order_by: order_by.into(),
            page_size,
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .flatten()
    .map(|c| c.id)
    .collect()
}

/// The descriptions of a status's `BadRequest` violations.
fn violation_descriptions(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| v.description)
                .collect()
        })
        .unwrap_or_default()
}

/// Inserts `count` active customers straight into the table (the columns without defaults, as
/// the migration defines them), far faster than as many CreateCustomer calls.
async fn insert_customers(app: &TestApp, count: usize) {
    let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    let inserted = sqlx::query(
        "INSERT INTO customer.customers (id, display_name, email, created_by, updated_by) \
         SELECT id, 'Bulk ' || n, 'bulk' || n || '@example.com', 'test', 'test' \
         FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)",
    )
    .bind(&ids)
    .execute(&app.pool().await)
    .await
    .unwrap();
    assert_eq!(inserted.rows_affected(), count as u64);
}

#[tokio::test]
async fn pages_stay_stable_while_customers_are_inserted() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut expected = Vec::new();
    for _ in 0..7 {
        expected.push(client.create(ada()).await.unwrap().id);
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list(pb::ListCustomersRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.customers.into_iter().map(|c| c.id));
        // Newer rows sort after the cursor (create_time order) and must not shift pages.
        client.create(ada()).await.unwrap();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }

    assert_eq!(&seen[..7], &expected[..], "no row skipped or repeated");
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
}

#[tokio::test]
async fn every_customer_appears_exactly_once_across_pages() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut expected = Vec::new();
    for _ in 0..7 {
        expected.push(client.create(ada()).await.unwrap());
    }

    let pages = all_pages(
        &client,
        pb::ListCustomersRequest {
            page_size: 3,
            ..Default::default()
        },
    )
    .await;

    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 3, 1],
        "three pages, the last one short"
    );
    assert_eq!(
        pages.concat(),
        expected,
        "creation order, each customer once"
    );
}

#[tokio::test]
async fn list_filters_by_fields_tags_and_attributes() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut vip = ada();
    vip.lifecycle_stage = pb::LifecycleStage::Customer as i32;
    vip.attributes.insert(
        "seats".into(),
        pb::AttributeValue {
            kind: Some(pb::attribute_value::Kind::IntValue(40)),
        },
    );
    let vip = client.create(vip).await.unwrap();
    let mut other = ada();
    other.tags.clear();
    client.create(other).await.unwrap();

    let page = client
        .list(pb::ListCustomersRequest {
            filter: "lifecycle_stage = CUSTOMER AND tags:vip AND attributes.seats > 10".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    assert_eq!(
        page.customers.iter().map(|c| &c.id).collect::<Vec<_>>(),
        [&vip.id]
    );
}

#[tokio::test]
async fn a_bad_filter_is_invalid_and_its_description_gives_the_position() {
    let app = spawn_app().await;
    let client = app.client().await;

    for (filter, position) in [
        ("display_name = ", 15),
        ("shoe_size = 9", 0),
        ("tags:vip AND (email = \"a\"", 25),
    ] {
        let status = client
            .list(pb::ListCustomersRequest {
                filter: filter.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{filter}: {status:?}");
        assert_eq!(violated_fields(&status), ["filter"], "{filter}");
        let description = &violation_descriptions(&status)[0];
        assert!(
            description.starts_with(&format!("at position {position}: ")),
            "{filter}: {description}"
        );
    }
}

#[tokio::test]
async fn a_bad_order_by_is_invalid_and_its_description_gives_the_position() {
    let app = spawn_app().await;
    let client = app.client().await;

    for (order_by, position) in [
        ("shoe_size", 0),
        ("display_name, phone", 14),
        ("email sideways", 6),
        ("create_time desc desc", 17),
        ("email, email", 7),
        ("email,,create_time", 6),
    ] {
        let status = client
            .list(pb::ListCustomersRequest {
                order_by: order_by.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();

        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{order_by}: {status:?}"
        );
        assert_eq!(violated_fields(&status), ["order_by"], "{order_by}");
        let description = &violation_descriptions(&status)[0];
        assert!(
            description.starts_with(&format!("at position {position}: ")),
            "{order_by}: {description}"
        );
    }
}

#[tokio::test]
async fn each_order_key_sorts_ascending_and_descending_across_pages() {
    let app = spawn_app().await;
    let client = app.client().await;
    // Names, emails, creation and last update each in a different order.
    let mut created = Vec::new();
    for (name, email) in [
        ("Charlie", "yankee"),
        ("Alpha", "whiskey"),
        ("Echo", "zulu"),
        ("Bravo", "xray"),
        ("Delta", "victor"),
    ] {
        let mut customer = ada();
        customer.display_name = name.into();
        customer.email = format!("{email}@example.com");
        created.push(client.create(customer).await.unwrap());
    }
    let mut updated = Vec::new();
    for i in [3, 0, 4, 1, 2] {
        let mut change = created[i].clone();
        change.company_name = format!("Company {i}");
        client.update(change, &["company_name"]).await.unwrap();
        updated.push(i);
    }
    let ids = |indexes: &[usize]| -> Vec<String> {
        indexes.iter().map(|&i| created[i].id.clone()).collect()
    };

    for (key, ascending) in [
        ("display_name", ids(&[1, 3, 0, 4, 2])),
        ("email", ids(&[4, 1, 3, 0, 2])),
        ("create_time", ids(&[0, 1, 2, 3, 4])),
        ("update_time", ids(&updated)),
    ] {
        let descending: Vec<String> = ascending.iter().rev().cloned().collect();

        let listed_ascending = listed_ids(&client, key, 2).await;
        let listed_explicitly_ascending = listed_ids(&client, &format!("{key} asc"), 2).await;
        let listed_descending = listed_ids(&client, &format!("{key} desc"), 2).await;

        assert_eq!(listed_ascending, ascending, "{key}");
        assert_eq!(listed_explicitly_ascending, ascending, "{key} asc");
        assert_eq!(listed_descending, descending, "{key} desc");
    }
}

#[tokio::test]
async fn ties_on_the_sort_key_are_broken_by_id_and_paging_through_them_loses_nothing() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut customers = Vec::new();
    for name in ["Twin", "Zed", "Twin", "Abe", "Twin", "Twin", "Twin"] {
        let mut customer = ada();
        customer.display_name = name.into();
        if name == "Twin" {
            customer.email = String::new(); // ties on email ("" sorts as the key) as well
        }
        customers.push(client.create(customer).await.unwrap());
    }

    for key in ["display_name", "email"] {
        let mut ascending = customers.clone();
        ascending.sort_by(|a, b| {
            let sort_key = |c: &pb::Customer| {
                if key == "email" {
                    c.email.clone()
                } else {
                    c.display_name.clone()
                }
            };
            sort_key(a).cmp(&sort_key(b)).then(
                Uuid::parse_str(&a.id)
                    .unwrap()
                    .cmp(&Uuid::parse_str(&b.id).unwrap()),
            )
        });
        let ascending: Vec<String> = ascending.into_iter().map(|c| c.id).collect();
        let descending: Vec<String> = ascending.iter().rev().cloned().collect();

        for page_size in [1, 2, 3] {
            assert_eq!(
                listed_ids(&client, key, page_size).await,
                ascending,
                "{key}, pages of {page_size}"
            );
            assert_eq!(
                listed_ids(&client, &format!("{key} desc"), page_size).await,
                descending,
                "{key} desc, pages of {page_size}"
            );
        }
    }
}

/// One customer in each state, made through the RPCs: (active survivor, deleted, merged,
/// erased), in creation order.
async fn one_in_each_state(client: &Client) -> [pb::Customer; 4] {
    let active = client.create(ada()).await.unwrap();
    let deleted = client.create(ada()).await.unwrap();
    let deleted = client.delete(&deleted.id, "").await.unwrap();
    let merged = client.create(ada()).await.unwrap();
    let survivor = client
        .merge(&active.id, &[&merged.id], "")
        .await
        .unwrap()
        .customer
        .unwrap();
    let erased = client.create(ada()).await.unwrap();
    let erased = client.erase(&erased.id, "ticket 42").await.unwrap();
    [survivor, deleted, merged, erased]
}

/// (id, state) of every customer a listing returns, across pages.
async fn listed_states(
    client: &Client,
    request: pb::ListCustomersRequest,
) -> Vec<(String, pb::CustomerState)> {
    all_pages(client, request)
        .await
        .into_iter()
        .flatten()
        .map(|c| (c.id, pb::CustomerState::try_from(c.state).unwrap()))
        .collect()
}

#[tokio::test]
async fn show_deleted_adds_deleted_merged_and_erased_customers() {
    let app = spawn_app().await;
    let client = app.client().await;
    let [survivor, deleted, merged, erased] = one_in_each_state(&client).await;
    let listing = |show_deleted| pb::ListCustomersRequest {
        show_deleted,
        ..Default::default()
    };

    let without = listed_states(&client, listing(false)).await;
    let with = listed_states(&client, listing(true)).await;

    use pb::CustomerState::{Active, Deleted, Erased, Merged};
    assert_eq!(without, [(survivor.id.clone(), Active)]);
    assert_eq!(
        with,
        [
            (survivor.id, Active),
            (deleted.id, Deleted),
            (merged.id, Merged),
            (erased.id, Erased),
        ]
    );
}

#[tokio::test]
async fn a_state_filter_picks_states_and_without_show_deleted_matches_only_active() {
    let app = spawn_app().await;
    let client = app.client().await;
    let [survivor, deleted, merged, erased] = one_in_each_state(&client).await;
    let ids = |listed: Vec<(String, pb::CustomerState)>| -> Vec<String> {
        listed.into_iter().map(|(id, _)| id).collect()
    };

    for (filter, show_deleted, expected) in [
        ("state = MERGED", true, vec![merged.id.clone()]),
        ("state = ERASED", true, vec![erased.id.clone()]),
        (
            "state = CUSTOMER_STATE_ERASED",
            true,
            vec![erased.id.clone()],
        ),
        (
            "state != ACTIVE",
            true,
            vec![deleted.id.clone(), merged.id.clone(), erased.id.clone()],
        ),
        (
            "state = DELETED OR state = ACTIVE",
            true,
            vec![survivor.id.clone(), deleted.id.clone()],
        ),
        ("state = MERGED", false, vec![]),
        ("state = ACTIVE", false, vec![survivor.id.clone()]),
    ] {
        let request = pb::ListCustomersRequest {
            filter: filter.into(),
            show_deleted,
            ..Default::default()
        };

        let listed = ids(listed_states(&client, request).await);

        assert_eq!(listed, expected, "{filter} (show_deleted {show_deleted})");
    }
    let status = client
        .list(pb::ListCustomersRequest {
            filter: "state = GONE".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(&status, &["filter"]);
}

#[tokio::test]
async fn erased_customers_without_names_page_by_display_name_without_loss() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut all = Vec::new();
    for _ in 0..2 {
        all.extend(one_in_each_state(&client).await.map(|c| c.id));
    }
    all.sort();

    for order_by in ["display_name", "display_name desc", "email desc"] {
        let request = pb::ListCustomersRequest {
            order_by: order_by.into(),
            page_size: 1,
            show_deleted: true,
            ..Default::default()
        };

        let mut listed: Vec<String> = listed_states(&client, request)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();

        listed.sort();
        assert_eq!(listed, all, "{order_by}: every customer exactly once");
    }
}

#[tokio::test]
async fn a_page_size_of_zero_means_fifty() {
    let app = spawn_app().await;
    let client = app.client().await;
    insert_customers(&app, 51).await;

    let page = client.list(Default::default()).await.unwrap();

    assert_eq!(page.customers.len(), 50);
    assert!(!page.next_page_token.is_empty());
}

#[tokio::test]
async fn a_page_size_above_a_thousand_is_clamped_to_a_thousand() {
    let app = spawn_app().await;
    let client = app.client().await;
    insert_customers(&app, 1003).await;

    for page_size in [1001, i32::MAX] {
        let pages = all_pages(
            &client,
            pb::ListCustomersRequest {
                page_size,
                ..Default::default()
            },
        )
        .await;

        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            [1000, 3],
            "page_size {page_size}"
        );
    }
}

#[tokio::test]
async fn a_negative_page_size_is_invalid() {
    let app = spawn_app().await;
    let client = app.client().await;

    for page_size in [-1, i32::MIN] {
        let status = client
            .list(pb::ListCustomersRequest {
                page_size,
                ..Default::default()
            })
            .await
            .unwrap_err();

        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{page_size}: {status:?}"
        );
        assert_eq!(violated_fields(&status), ["page_size"], "{page_size}");
    }
}

#[tokio::test]
async fn a_malformed_page_token_is_invalid() {
    let app = spawn_app().await;
    let client = app.client().await;
    client.create(ada()).await.unwrap();

    for token in ["not a token!", "AAAA", "eyJ2IjoxfQ", "===="] {
        let status = client
            .list(pb::ListCustomersRequest {
                page_token: token.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();

        assert_invalid(&status, &["page_token"]);
    }
}

#[tokio::test]
async fn a_tampered_page_token_is_invalid() {
    let app = spawn_app().await;
    let client = app.client().await;
    for _ in 0..3 {
        client.create(ada()).await.unwrap();
    }
    let token = client
        .list(pb::ListCustomersRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .next_page_token;
    assert!(!token.is_empty());

    for position in [0, token.len() / 2, token.len() - 2] {
        let mut chars: Vec<char> = token.chars().collect();
        chars[position] = if chars[position] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();

        let status = client
            .list(pb::ListCustomersRequest {
                page_size: 1,
                page_token: tampered,
                ..Default::default()
            })
            .await
            .unwrap_err();

        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "flipped at {position}: {status:?}"
        );
        assert_eq!(violated_fields(&status), ["page_token"], "at {position}");
    }
}

#[tokio::test]
async fn a_page_token_from_another_query_is_rejected() {
    let app = spawn_app().await;
    let client = app.client().await;
    for _ in 0..3 {
        client.create(ada()).await.unwrap();
    }
    let first = pb::ListCustomersRequest {
        page_size: 1,
        ..Default::default()
    };
    let token = client.list(first.clone()).await.unwrap().next_page_token;

    for (case, request) in [
        (
            "another order_by",
            pb::ListCustomersRequest {
                order_by: "display_name".into(),
                ..first.clone()
            },
        ),
        (
            "another filter",
            pb::ListCustomersRequest {
                filter: "tags:vip".into(),
                ..first.clone()
            },
        ),
        (
            "show_deleted",
            pb::ListCustomersRequest {
                show_deleted: true,
                ..first.clone()
            },
        ),
    ] {
        let status = client
            .list(pb::ListCustomersRequest {
                page_token: token.clone(),
                ..request
            })
            .await
            .unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(violated_fields(&status), ["page_token"], "{case}");
    }
}
