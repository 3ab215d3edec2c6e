//! The customer service over real gRPC, PostgreSQL and Redis: one behaviour per test.

mod common;

use std::time::Duration;

use common::{ada, spawn_app, violated_fields};
use crm_proto::crm::customer::v1 as pb;
use futures::StreamExt;
use tonic::Code;

#[tokio::test]
async fn a_created_customer_can_be_read_back() {
    let app = spawn_app().await;
    let client = app.client().await;

    let created = client.create(ada()).await.unwrap();
    let fetched = client.get(&created.id).await.unwrap();

    assert_eq!(fetched, created);
    assert_eq!(fetched.state, pb::CustomerState::Active as i32);
    assert_eq!(fetched.lifecycle_stage, pb::LifecycleStage::Lead as i32);
    assert_eq!(fetched.audit.unwrap().created_by, "test");
}

#[tokio::test]
async fn bad_fields_are_named_and_nothing_is_written() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut bad = ada();
    bad.email = "not-an-email".into();
    bad.phone = "0151".into();
    bad.display_name = String::new();

    let status = client.create(bad).await.unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["customer.display_name", "customer.email", "customer.phone"]
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM customer.customers")
        .fetch_one(&app.pool().await)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn an_unknown_or_malformed_id_is_not_found_or_invalid() {
    let app = spawn_app().await;
    let client = app.client().await;

    let missing = client
        .get(&uuid::Uuid::now_v7().to_string())
        .await
        .unwrap_err();
    let malformed = client.get("nope").await.unwrap_err();

    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&malformed), ["id"]);
}

#[tokio::test]
async fn a_second_active_customer_with_the_same_email_already_exists() {
    let app = spawn_app().await;
    let client = app.client().await;
    let first = client.create(ada()).await.unwrap();
    let mut second = ada();
    second.email = first.email.to_uppercase();

    let status = client.create(second).await.unwrap_err();

    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(
        !status.message().contains("customers_active_email_key"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_stale_etag_is_aborted_and_overwrites_nothing() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut first = created.clone();
    first.display_name = "Countess of Lovelace".into();
    client.update(first, &["display_name"]).await.unwrap();

    let mut stale = created.clone();
    stale.display_name = "Lost Update".into();
    let status = client.update(stale, &["display_name"]).await.unwrap_err();

    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(
        client.get(&created.id).await.unwrap().display_name,
        "Countess of Lovelace"
    );
}

#[tokio::test]
async fn update_changes_only_the_masked_fields() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut change = created.clone();
    change.company_name = "Analytical Engines Ltd".into();
    change.display_name = "ignored because unmasked".into();

    let updated = client.update(change, &["company_name"]).await.unwrap();

    assert_eq!(updated.company_name, "Analytical Engines Ltd");
    assert_eq!(updated.display_name, "Ada Lovelace");
    assert_ne!(updated.etag, created.etag);
}

#[tokio::test]
async fn the_same_request_id_sent_concurrently_creates_one_customer() {
    let app = spawn_app().await;
    let client = app.client().await;
    let request = pb::CreateCustomerRequest {
        customer: Some(ada()),
        request_id: uuid::Uuid::now_v7().to_string(),
    };

    let calls = (0..8).map(|_| {
        let client = client.clone();
        let request = request.clone();
        async move {
            client
                .inner
                .clone()
                .create_customer(client.request(request))
                .await
                .map(|r| r.into_inner())
        }
    });
    let responses = futures::future::join_all(calls).await;

    let first = responses[0].as_ref().unwrap();
    for response in &responses {
        assert_eq!(
            response.as_ref().unwrap(),
            first,
            "every retry gets the same response"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM customer.customers")
        .fetch_one(&app.pool().await)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_request_id_reused_for_another_request_is_rejected() {
    let app = spawn_app().await;
    let client = app.client().await;
    let request_id = uuid::Uuid::now_v7().to_string();
    let create = |customer| pb::CreateCustomerRequest {
        customer: Some(customer),
        request_id: request_id.clone(),
    };
    client
        .inner
        .clone()
        .create_customer(client.request(create(ada())))
        .await
        .unwrap();

    let status = client
        .inner
        .clone()
        .create_customer(client.request(create(ada())))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::AlreadyExists);
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
async fn a_filter_syntax_error_points_at_its_position() {
    let app = spawn_app().await;
    let client = app.client().await;

    let status = client
        .list(pb::ListCustomersRequest {
            filter: "display_name = ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let unknown = client
        .list(pb::ListCustomersRequest {
            filter: "shoe_size = 9".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["filter"]);
    assert!(
        status.message().contains("position"),
        "{}",
        status.message()
    );
    assert_eq!(unknown.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_page_token_from_another_query_is_rejected() {
    let app = spawn_app().await;
    let client = app.client().await;
    for _ in 0..3 {
        client.create(ada()).await.unwrap();
    }
    let page = client
        .list(pb::ListCustomersRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap();

    let status = client
        .list(pb::ListCustomersRequest {
            page_size: 1,
            page_token: page.next_page_token,
            order_by: "display_name".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert_eq!(violated_fields(&status), ["page_token"]);
}

#[tokio::test]
async fn search_finds_customers_by_name_prefix_and_email() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut grace = ada();
    grace.display_name = "Grace Hopper".into();
    let grace = client.create(grace).await.unwrap();
    client.create(ada()).await.unwrap();

    let response = client
        .inner
        .clone()
        .search_customers(client.request(pb::SearchCustomersRequest {
            query: "hopp".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(response.results[0].customer.as_ref().unwrap().id, grace.id);
    assert_eq!(response.results.len(), 1);
}

#[tokio::test]
async fn a_merged_id_resolves_to_the_survivor_which_gains_the_duplicates_data() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let mut dup = ada();
    dup.tags = vec!["newsletter".into()];
    dup.company_name = "Engines".into();
    let dup = client.create(dup).await.unwrap();

    let merged = client
        .inner
        .clone()
        .merge_customers(client.request(pb::MergeCustomersRequest {
            survivor_id: survivor.id.clone(),
            duplicate_ids: vec![dup.id.clone()],
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();

    let via_old_id = client.get(&dup.id).await.unwrap();
    assert_eq!(via_old_id.id, survivor.id);
    assert_eq!(via_old_id.company_name, "Engines");
    assert_eq!(via_old_id.tags, ["vip", "newsletter"]);
    assert_eq!(merged.merge_record.unwrap().merged_ids, [dup.id]);
}

#[tokio::test]
async fn erase_removes_personal_data_but_keeps_a_tombstone() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    client.get(&created.id).await.unwrap(); // warm the caches

    client
        .inner
        .clone()
        .erase_customer(client.request(pb::EraseCustomerRequest {
            id: created.id.clone(),
            reason: "ticket 42".into(),
        }))
        .await
        .unwrap();

    let tombstone = client.get(&created.id).await.unwrap();
    assert_eq!(tombstone.state, pb::CustomerState::Erased as i32);
    assert!(
        tombstone.display_name.is_empty()
            && tombstone.email.is_empty()
            && tombstone.phone.is_empty()
    );
    let pool = app.pool().await;
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customer.customers WHERE email = $1 OR search_text LIKE '%lovelace%'",
    )
    .bind(&created.email)
    .fetch_one(&pool)
    .await
    .unwrap();
    let snapshots: i64 =
        sqlx::query_scalar("SELECT count(*) FROM customer.changes WHERE snapshot IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((leftovers, snapshots), (0, 0));
}

#[tokio::test]
async fn soft_delete_hides_from_list_and_undelete_restores() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();

    client
        .inner
        .clone()
        .delete_customer(client.request(pb::DeleteCustomerRequest {
            id: created.id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let hidden = client
        .list(Default::default())
        .await
        .unwrap()
        .customers
        .len();
    client
        .inner
        .clone()
        .undelete_customer(client.request(pb::UndeleteCustomerRequest {
            id: created.id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    let shown = client
        .list(Default::default())
        .await
        .unwrap()
        .customers
        .len();

    assert_eq!((hidden, shown), (0, 1));
}

#[tokio::test]
async fn import_reports_each_row_and_skips_bad_ones() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut bad = ada();
    bad.email = "broken".into();
    let rows = vec![
        pb::ImportCustomersRequest {
            row_ref: "1".into(),
            customer: Some(ada()),
            request_id: String::new(),
        },
        pb::ImportCustomersRequest {
            row_ref: "2".into(),
            customer: Some(bad),
            request_id: String::new(),
        },
        pb::ImportCustomersRequest {
            row_ref: "3".into(),
            customer: Some(ada()),
            request_id: String::new(),
        },
    ];

    let results: Vec<pb::ImportCustomersResponse> = client
        .inner
        .clone()
        .import_customers(client.request(futures::stream::iter(rows)))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await;

    let outcomes: Vec<_> = results
        .iter()
        .map(|r| (r.row_ref.as_str(), r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("1", pb::ImportRowOutcome::Created as i32),
            ("2", pb::ImportRowOutcome::Rejected as i32),
            ("3", pb::ImportRowOutcome::Created as i32)
        ]
    );
    assert!(
        results[1].errors[0].contains("customer.email"),
        "{:?}",
        results[1].errors
    );
}

#[tokio::test]
async fn the_change_feed_resumes_after_a_token_without_gaps() {
    let app = spawn_app().await;
    let client = app.client().await;
    let first = client.create(ada()).await.unwrap();
    let mut feed = client
        .inner
        .clone()
        .watch_customer_changes(client.request(pb::WatchCustomerChangesRequest {
            resume_token: "0".into(),
            start_time: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let event = feed.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!(event.customer_id, first.id);
    drop(feed);

    let second = client.create(ada()).await.unwrap();
    let mut resumed = client
        .inner
        .clone()
        .watch_customer_changes(client.request(pb::WatchCustomerChangesRequest {
            resume_token: event.resume_token,
            start_time: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let next = tokio::time::timeout(Duration::from_secs(5), resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    assert_eq!(next.event.unwrap().customer_id, second.id);
}

#[tokio::test]
async fn the_change_feed_waits_for_a_late_commit_instead_of_skipping_it() {
    let app = spawn_app().await;
    let client = app.client().await;
    let pool = app.pool().await;
    let insert = |seq: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO customer.changes (seq, customer_id, change_type) \
                 VALUES ($1, $2, 'CHANGE_TYPE_UPDATED')",
            )
            .bind(seq)
            .bind(uuid::Uuid::now_v7())
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query("SELECT pg_notify('customer_changes', '')")
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    let mut feed = client
        .inner
        .clone()
        .watch_customer_changes(client.request(pb::WatchCustomerChangesRequest {
            resume_token: "0".into(),
            start_time: None,
        }))
        .await
        .unwrap()
        .into_inner();

    insert(1).await;
    assert_eq!(next_token(&mut feed, 5).await.as_deref(), Some("1"));
    // 3 commits before 2: the feed must hold 3 back rather than skip 2 for good.
    insert(3).await;
    assert_eq!(next_token(&mut feed, 1).await, None);
    insert(2).await;

    assert_eq!(next_token(&mut feed, 5).await.as_deref(), Some("2"));
    assert_eq!(next_token(&mut feed, 5).await.as_deref(), Some("3"));
}

/// The next event's resume token, or None when nothing arrives within `seconds`.
async fn next_token(
    feed: &mut tonic::Streaming<pb::WatchCustomerChangesResponse>,
    seconds: u64,
) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(seconds), feed.next())
        .await
        .ok()
        .map(|r| r.unwrap().unwrap().event.unwrap().resume_token)
}
