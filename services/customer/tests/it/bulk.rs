//! ImportCustomers and ExportCustomers, the streaming bulk RPCs.

use crate::common::{
    Client, Outage, ada, assert_invalid, config, fresh_database, postgres_addr, redis_url,
    spawn_app, spawn_with, via, within,
};
use crm_proto::crm::customer::v1 as pb;
use futures::StreamExt;
use tonic::Code;

fn row(row_ref: &str, customer: pb::Customer, request_id: &str) -> pb::ImportCustomersRequest {
    pb::ImportCustomersRequest {
        row_ref: row_ref.into(),
        customer: Some(customer),
        request_id: request_id.into(),
    }
}

/// Streams `rows` as one import and collects every result, in the order they arrive.
async fn import(
    client: &Client,
    rows: Vec<pb::ImportCustomersRequest>,
) -> Vec<pb::ImportCustomersResponse> {
    let results = client
        .inner
        .clone()
        .import_customers(client.request(futures::stream::iter(rows)))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.expect("an import result"))
        .collect();
    within(results).await
}

/// Every exported customer's id, in the order the stream sent them.
async fn export(client: &Client, filter: &str) -> Result<Vec<String>, tonic::Status> {
    let stream = client
        .inner
        .clone()
        .export_customers(client.request(pb::ExportCustomersRequest {
            filter: filter.into(),
        }))
        .await?
        .into_inner();
    within(
        stream
            .map(|r| r.map(|e| e.customer.expect("a customer").id))
            .collect::<Vec<_>>(),
    )
    .await
    .into_iter()
    .collect()
}

async fn count_customers(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM customer.customers")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn outcomes(results: &[pb::ImportCustomersResponse]) -> Vec<(&str, pb::ImportRowOutcome)> {
    results
        .iter()
        .map(|r| (r.row_ref.as_str(), r.outcome()))
        .collect()
}

#[tokio::test]
async fn import_reports_each_row_and_skips_bad_ones() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut bad = ada();
    bad.email = "broken".into();
    let (first, third) = (ada(), ada());

    let results = import(
        &client,
        vec![
            row("1", first.clone(), ""),
            row("2", bad, ""),
            row("3", third.clone(), ""),
        ],
    )
    .await;

    use pb::ImportRowOutcome::{Created, Rejected};
    assert_eq!(
        outcomes(&results),
        [("1", Created), ("2", Rejected), ("3", Created)]
    );
    assert_eq!(results[1].errors.len(), 1, "{:?}", results[1].errors);
    assert!(
        results[1].errors[0].starts_with("customer.email"),
        "{:?}",
        results[1].errors
    );
    assert_eq!(results[1].customer_id, "");
    for (result, sent) in [(&results[0], &first), (&results[2], &third)] {
        assert!(result.errors.is_empty(), "{:?}", result.errors);
        let stored = client.get(&result.customer_id).await.unwrap();
        assert_eq!(stored.email, sent.email);
    }
    assert_eq!(count_customers(&app.pool().await).await, 2);
}

#[tokio::test]
async fn import_results_arrive_in_row_order_echoing_each_row_ref() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut rows = Vec::new();
    let mut expected = Vec::new();
    for i in 0..40 {
        let row_ref = format!("sheet1!A{}", i + 2);
        let mut customer = ada();
        let outcome = if i % 7 == 3 {
            customer.display_name = String::new();
            pb::ImportRowOutcome::Rejected
        } else {
            pb::ImportRowOutcome::Created
        };
        rows.push(row(&row_ref, customer, ""));
        expected.push((row_ref, outcome));
    }

    let results = import(&client, rows).await;

    let got: Vec<(String, pb::ImportRowOutcome)> = outcomes(&results)
        .into_iter()
        .map(|(r, o)| (r.to_string(), o))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(count_customers(&app.pool().await).await, 34);
}

#[tokio::test]
async fn a_re_sent_import_answers_duplicate_request_with_the_same_customers_and_creates_none() {
    let app = spawn_app().await;
    let client = app.client().await;
    let rows: Vec<_> = (0..5)
        .map(|i| row(&format!("{i}"), ada(), &format!("import-7-row-{i}")))
        .collect();
    let first = import(&client, rows.clone()).await;
    let pool = app.pool().await;
    let before = count_customers(&pool).await;

    let again = import(&client, rows).await;

    assert!(
        first
            .iter()
            .all(|r| r.outcome() == pb::ImportRowOutcome::Created),
        "{first:?}"
    );
    assert!(
        again
            .iter()
            .all(|r| r.outcome() == pb::ImportRowOutcome::DuplicateRequest),
        "{again:?}"
    );
    let ids = |results: &[pb::ImportCustomersResponse]| {
        results
            .iter()
            .map(|r| (r.row_ref.clone(), r.customer_id.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&again), ids(&first));
    assert_eq!((before, count_customers(&pool).await), (5, 5));
}

#[tokio::test]
async fn an_imported_row_whose_email_an_active_customer_has_is_rejected_naming_the_email() {
    let app = spawn_app().await;
    let client = app.client().await;
    let existing = client.create(ada()).await.unwrap();
    let mut twin = ada();
    twin.email = existing.email.clone();
    twin.display_name = "Ada's twin".into();

    let results = import(&client, vec![row("twin", twin, "")]).await;

    assert_eq!(
        outcomes(&results),
        [("twin", pb::ImportRowOutcome::Rejected)]
    );
    assert_eq!(results[0].customer_id, "");
    assert_eq!(results[0].errors.len(), 1, "{:?}", results[0].errors);
    assert!(
        results[0].errors[0].starts_with("customer.email: "),
        "{:?}",
        results[0].errors
    );
    let pool = app.pool().await;
    assert_eq!(count_customers(&pool).await, 1);
    let stored = client.get(&existing.id).await.unwrap();
    assert_eq!(stored.display_name, existing.display_name);
}

#[tokio::test]
async fn an_imported_row_ref_over_100_characters_is_rejected_naming_row_ref() {
    let app = spawn_app().await;
    let client = app.client().await;
    let (at_limit, over_limit) = ("r".repeat(100), "r".repeat(101));

    let results = import(
        &client,
        vec![row(&at_limit, ada(), ""), row(&over_limit, ada(), "")],
    )
    .await;

    assert_eq!(
        outcomes(&results),
        [
            (at_limit.as_str(), pb::ImportRowOutcome::Created),
            (over_limit.as_str(), pb::ImportRowOutcome::Rejected)
        ]
    );
    assert_eq!(results[1].customer_id, "");
    assert_eq!(results[1].errors.len(), 1, "{:?}", results[1].errors);
    assert!(
        results[1].errors[0].starts_with("row_ref"),
        "{:?}",
        results[1].errors
    );
    assert_eq!(count_customers(&app.pool().await).await, 1);
}

#[tokio::test]
async fn a_database_outage_ends_the_import_with_unavailable_and_rows_answered_before_stay_committed()
 {
    let url = fresh_database().await;
    let proxy = Outage::start(postgres_addr()).await;
    let app = spawn_with(config(&via(&url, proxy.addr), &redis_url(), &[])).await;
    let client = app.client().await;
    let (rows_tx, rows_rx) = tokio::sync::mpsc::channel(4);
    let mut results = client
        .inner
        .clone()
        .import_customers(client.request(tokio_stream::wrappers::ReceiverStream::new(rows_rx)))
        .await
        .unwrap()
        .into_inner();
    let (before, during) = (ada(), ada());
    rows_tx
        .send(row("before", before.clone(), ""))
        .await
        .unwrap();
    let answered = within(results.next()).await.unwrap().unwrap();
    assert_eq!(
        (answered.row_ref.as_str(), answered.outcome()),
        ("before", pb::ImportRowOutcome::Created)
    );

    proxy.cut();
    rows_tx
        .send(row("during", during.clone(), ""))
        .await
        .unwrap();
    let outcome = within(results.next()).await;
    drop(rows_tx);

    match outcome {
        Some(Err(status)) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        other => panic!("the import should end with UNAVAILABLE, got {other:?}"),
    }
    // Read what is stored directly, not through the cut proxy.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT id::text, email FROM customer.customers")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(stored, [(answered.customer_id, before.email)]);
}

#[tokio::test]
async fn export_streams_every_matching_active_customer_once() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut vips = Vec::new();
    for i in 0..12 {
        let mut c = ada();
        if i % 3 == 0 {
            c.tags = vec!["other".into()];
        }
        let created = client.create(c).await.unwrap();
        if i % 3 != 0 {
            vips.push(created.id);
        }
    }

    let exported = export(&client, "tags:vip").await.unwrap();

    vips.sort();
    assert_eq!(exported, vips, "every vip, once, in id order");
}

#[tokio::test]
async fn export_leaves_out_deleted_merged_and_erased_customers() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut inner = client.inner.clone();
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(client.create(ada()).await.unwrap().id);
    }
    let (kept, deleted, survivor, merged, erased, undeleted) =
        (&ids[0], &ids[1], &ids[2], &ids[3], &ids[4], &ids[5]);
    for id in [deleted, undeleted] {
        inner
            .delete_customer(client.request(pb::DeleteCustomerRequest {
                id: id.clone(),
                etag: String::new(),
            }))
            .await
            .unwrap();
    }
    inner
        .undelete_customer(client.request(pb::UndeleteCustomerRequest {
            id: undeleted.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap();
    inner
        .merge_customers(client.request(pb::MergeCustomersRequest {
            survivor_id: survivor.clone(),
            duplicate_ids: vec![merged.clone()],
            request_id: String::new(),
        }))
        .await
        .unwrap();
    inner
        .erase_customer(client.request(pb::EraseCustomerRequest {
            id: erased.clone(),
            reason: "ticket 7".into(),
        }))
        .await
        .unwrap();

    let exported = export(&client, "").await.unwrap();

    let mut active = vec![kept.clone(), survivor.clone(), undeleted.clone()];
    active.sort();
    assert_eq!(exported, active);
}

#[tokio::test]
async fn export_streams_more_than_one_batch_strictly_in_id_order() {
    let app = spawn_app().await;
    let client = app.client().await;
    // More than the export's internal batch of 500 rows.
    let rows: Vec<_> = (0..523).map(|i| row(&i.to_string(), ada(), "")).collect();
    let imported = import(&client, rows).await;
    assert!(
        imported
            .iter()
            .all(|r| r.outcome() == pb::ImportRowOutcome::Created)
    );

    let exported = export(&client, "").await.unwrap();

    assert_eq!(exported.len(), 523);
    for (i, pair) in exported.windows(2).enumerate() {
        let (a, b) = (
            uuid::Uuid::parse_str(&pair[0]).unwrap(),
            uuid::Uuid::parse_str(&pair[1]).unwrap(),
        );
        assert!(a < b, "position {i}: {a} then {b}");
    }
    let mut expected: Vec<String> = imported.into_iter().map(|r| r.customer_id).collect();
    expected.sort();
    let mut streamed = exported.clone();
    streamed.sort();
    assert_eq!(streamed, expected, "each imported customer exactly once");
}

#[tokio::test]
async fn a_bad_export_filter_is_invalid_argument_on_filter() {
    let app = spawn_app().await;
    let client = app.client().await;
    client.create(ada()).await.unwrap();
    let cases = [
        ("unknown field", "colour = RED"),
        ("syntax error", "tags:"),
        ("type mismatch", "create_time > 5"),
    ];

    for (case, filter) in cases {
        let status = export(&client, filter).await.unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_invalid(&status, &["filter"]);
    }
}
