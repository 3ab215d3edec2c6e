//! ImportCustomers and ExportCustomers, the streaming bulk RPCs.

use crate::common::{
    Client, Outage, ada, assert_error, assert_invalid, config, eventually, fresh_database,
    postgres_addr, redis_url, spawn_app, spawn_with, via, within,
};
use crm_proto::crm::common::v1::ItemResult;
use crm_proto::crm::customer::v1 as pb;
use crm_proto::crm::customer::v1::import_customers_response::Kind;
use futures::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

fn row(row_ref: &str, customer: pb::Customer, request_id: &str) -> pb::ImportCustomersRequest {
    pb::ImportCustomersRequest {
        row_ref: row_ref.into(),
        customer: Some(customer),
        request_id: request_id.into(),
    }
}

/// What an import answered: a result per row, in the order they arrived, then the summary.
struct Imported {
    results: Vec<ItemResult>,
    summary: pb::ImportCustomersSummary,
}

/// Streams `rows` as one import and collects every answer; the summary must come last, once.
async fn import(client: &Client, rows: Vec<pb::ImportCustomersRequest>) -> Imported {
    let answers: Vec<pb::ImportCustomersResponse> = within(
        client
            .inner
            .clone()
            .import_customers(client.request(futures::stream::iter(rows)))
            .await
            .unwrap()
            .into_inner()
            .map(|r| r.expect("an import answer"))
            .collect(),
    )
    .await;
    let (last, rows) = answers.split_last().expect("at least the summary");
    let Some(Kind::Summary(summary)) = last.kind.clone() else {
        panic!("the last answer is not the summary: {last:?}");
    };
    let results = rows
        .iter()
        .map(|answer| match answer.kind.clone() {
            Some(Kind::Result(result)) => result,
            other => panic!("a row's answer is not a result: {other:?}"),
        })
        .collect();
    Imported { results, summary }
}

/// The gRPC code of a row's status.
fn code(result: &ItemResult) -> Code {
    Code::from(
        result
            .status
            .as_ref()
            .expect("every result has a status")
            .code,
    )
}

/// A row's status as the tonic status a single call would have ended in.
fn status(result: &ItemResult) -> tonic::Status {
    let rpc = result.status.clone().expect("every result has a status");
    let details = prost::Message::encode_to_vec(&tonic_types::pb::Status {
        code: rpc.code,
        message: rpc.message.clone(),
        details: rpc.details,
    });
    tonic::Status::with_details(Code::from(rpc.code), rpc.message, details.into())
}

fn outcomes(results: &[ItemResult]) -> Vec<(&str, Code)> {
    results
        .iter()
        .map(|r| (r.r#ref.as_str(), code(r)))
        .collect()
}

fn summary(created: i64, repeated: i64, rejected: i64) -> pb::ImportCustomersSummary {
    pb::ImportCustomersSummary {
        created_count: created,
        repeated_count: repeated,
        rejected_count: rejected,
    }
}

/// Every message of an export: the customer's id and the message's resume token.
async fn export_with_tokens(
    client: &Client,
    filter: &str,
    resume_token: &str,
) -> Result<Vec<(String, String)>, tonic::Status> {
    let stream = client
        .inner
        .clone()
        .export_customers(client.request(pb::ExportCustomersRequest {
            filter: filter.into(),
            resume_token: resume_token.into(),
            as_of_time: None,
        }))
        .await?
        .into_inner();
    within(
        stream
            .map(|r| r.map(|e| (e.customer.expect("a customer").id, e.resume_token)))
            .collect::<Vec<_>>(),
    )
    .await
    .into_iter()
    .collect()
}

/// Every exported customer's id, in the order the stream sent them.
async fn export(client: &Client, filter: &str) -> Result<Vec<String>, tonic::Status> {
    let exported = export_with_tokens(client, filter, "").await?;
    Ok(exported.into_iter().map(|(id, _)| id).collect())
}

async fn count_customers(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM customer.customers")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn import_reports_each_row_and_skips_bad_ones() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut bad = ada();
    bad.email = "broken".into();
    let (first, third) = (ada(), ada());

    let Imported {
        results,
        summary: totals,
    } = import(
        &client,
        vec![
            row("1", first.clone(), ""),
            row("2", bad, ""),
            row("3", third.clone(), ""),
        ],
    )
    .await;

    assert_eq!(
        outcomes(&results),
        [
            ("1", Code::Ok),
            ("2", Code::InvalidArgument),
            ("3", Code::Ok)
        ]
    );
    let indexes: Vec<i64> = results.iter().map(|r| r.index).collect();
    assert_eq!(indexes, [0, 1, 2]);
    assert_invalid(&status(&results[1]), &["customer.email"]);
    assert_eq!(results[1].id, "");
    for (result, sent) in [(&results[0], &first), (&results[2], &third)] {
        assert!(result.status.as_ref().unwrap().details.is_empty());
        let stored = client.get(&result.id).await.unwrap();
        assert_eq!(stored.email, sent.email);
    }
    assert_eq!(totals, summary(2, 0, 1));
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
            Code::InvalidArgument
        } else {
            Code::Ok
        };
        rows.push(row(&row_ref, customer, ""));
        expected.push((i, row_ref, outcome));
    }

    let imported = import(&client, rows).await;

    let got: Vec<(i64, String, Code)> = imported
        .results
        .iter()
        .map(|r| (r.index, r.r#ref.clone(), code(r)))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(imported.summary, summary(34, 0, 6));
    assert_eq!(count_customers(&app.pool().await).await, 34);
}

#[tokio::test]
async fn a_re_sent_import_answers_ok_with_the_same_customers_counted_as_repeated_and_creates_none()
{
    let app = spawn_app().await;
    let client = app.client().await;
    let rows: Vec<_> = (0..5)
        .map(|i| row(&format!("{i}"), ada(), &format!("import-7-row-{i}")))
        .collect();
    let first = import(&client, rows.clone()).await;
    let pool = app.pool().await;
    let before = count_customers(&pool).await;

    let again = import(&client, rows).await;

    assert_eq!(first.summary, summary(5, 0, 0));
    assert_eq!(again.summary, summary(0, 5, 0));
    assert!(again.results.iter().all(|r| code(r) == Code::Ok));
    let ids = |imported: &Imported| {
        imported
            .results
            .iter()
            .map(|r| (r.r#ref.clone(), r.id.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&again), ids(&first));
    assert_eq!((before, count_customers(&pool).await), (5, 5));
}

#[tokio::test]
async fn an_imported_row_whose_email_is_taken_carries_the_status_create_customer_returns() {
    let app = spawn_app().await;
    let client = app.client().await;
    let existing = client.create(ada()).await.unwrap();
    let mut twin = ada();
    twin.email = existing.email.clone();
    twin.display_name = "Ada's twin".into();

    let results = import(&client, vec![row("twin", twin.clone(), "")])
        .await
        .results;
    let created = client.create(twin).await.unwrap_err();

    let imported = status(&results[0]);
    assert_eq!(outcomes(&results), [("twin", Code::AlreadyExists)]);
    assert_eq!(results[0].id, "");
    assert_eq!(
        (imported.code(), imported.message()),
        (created.code(), created.message())
    );
    let reason = |s: &tonic::Status| s.get_details_error_info().map(|info| info.reason);
    assert_eq!(reason(&imported), reason(&created));
    assert_eq!(reason(&imported).as_deref(), Some("EMAIL_ALREADY_EXISTS"));
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
    .await
    .results;

    assert_eq!(
        outcomes(&results),
        [
            (at_limit.as_str(), Code::Ok),
            (over_limit.as_str(), Code::InvalidArgument)
        ]
    );
    assert_eq!(results[1].id, "");
    assert_invalid(&status(&results[1]), &["row_ref"]);
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
    let Some(Kind::Result(answered)) = answered.kind else {
        panic!("a row's result first: {answered:?}");
    };
    assert_eq!(
        outcomes(std::slice::from_ref(&answered)),
        [("before", Code::Ok)]
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
    assert_eq!(stored, [(answered.id, before.email)]);
}

/// Rows `0..n` with unique emails, refs `"{i}"` and, when `ids` names a prefix, request ids
/// `"{ids}-{i}"`.
fn rows(n: usize, ids: Option<&str>) -> Vec<pb::ImportCustomersRequest> {
    (0..n)
        .map(|i| {
            let request_id = ids
                .map(|prefix| format!("{prefix}-{i}"))
                .unwrap_or_default();
            row(&i.to_string(), ada(), &request_id)
        })
        .collect()
}

/// Streams `rows` the way a fast caller writing one message at a time does: each row goes out
/// as its own small HTTP/2 DATA frame (the client yields between rows, so its encoder never
/// gathers two), with no pause beyond that.
async fn import_frame_by_frame(client: &Client, rows: Vec<pb::ImportCustomersRequest>) -> Imported {
    let one_frame_each = futures::stream::iter(rows).then(|row| async move {
        tokio::task::yield_now().await;
        row
    });
    let answers: Vec<pb::ImportCustomersResponse> = within(
        client
            .inner
            .clone()
            .import_customers(client.request(one_frame_each))
            .await
            .unwrap()
            .into_inner()
            .map(|r| r.expect("an import answer"))
            .collect(),
    )
    .await;
    let (last, rows) = answers.split_last().expect("at least the summary");
    let Some(Kind::Summary(summary)) = last.kind.clone() else {
        panic!("the last answer is not the summary: {last:?}");
    };
    let results = rows
        .iter()
        .map(|answer| match answer.kind.clone() {
            Some(Kind::Result(result)) => result,
            other => panic!("a row's answer is not a result: {other:?}"),
        })
        .collect();
    Imported { results, summary }
}

async fn count_created_events(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM customer.change_events WHERE change_type = 'CHANGE_TYPE_CREATED'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn five_thousand_rows_sent_frame_by_frame_as_fast_as_possible_are_each_answered_and_stored() {
    let app = spawn_app().await;
    let client = app.client().await;

    let imported = import_frame_by_frame(&client, rows(5000, None)).await;

    assert_eq!(imported.summary, summary(5000, 0, 0));
    assert_eq!(imported.results.len(), 5000);
    for (i, result) in imported.results.iter().enumerate() {
        assert_eq!(
            (result.index, code(result)),
            (i as i64, Code::Ok),
            "{result:?}"
        );
    }
    let pool = app.pool().await;
    assert_eq!(count_customers(&pool).await, 5000);
    assert_eq!(
        count_created_events(&pool).await,
        5000,
        "one change event per customer"
    );
}

/// Flow control, not a cut: while the database holds the import's first batch, a sender
/// writing one small frame per row is held back by HTTP/2 flow control after the server's
/// read-ahead and one stream window of rows (with hyper's default 1 MiB window it could queue
/// ~11,000 such rows and h2 would close the connection with GOAWAY `too_many_data_frames`);
/// once the database lets go, every row is answered.
#[tokio::test]
async fn a_sender_outpacing_a_stalled_import_is_held_back_by_flow_control_then_answered() {
    let app = spawn_app().await;
    let client = app.client().await;
    let pool = app.pool().await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE customer.customers IN SHARE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let pulled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = futures::stream::iter(rows(8_000, None)).then({
        let pulled = pulled.clone();
        move |row| {
            let pulled = pulled.clone();
            async move {
                tokio::task::yield_now().await;
                pulled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                row
            }
        }
    });
    let mut inner = client.inner.clone();
    let request = client.request(counted);
    let import = tokio::spawn(async move {
        let answers = inner.import_customers(request).await?.into_inner();
        answers
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
    });

    // The sender fills the read-ahead (1,000 rows) and a 64 KiB window of ~95-byte rows
    // (~690), then stops: the count no longer moves between two looks.
    let mut last = 0;
    eventually("the sender is held back", || {
        let now = pulled.load(std::sync::atomic::Ordering::SeqCst);
        let settled = now >= 1_500 && now == last;
        last = now;
        async move { settled }
    })
    .await;
    let held_at = pulled.load(std::sync::atomic::Ordering::SeqCst);
    lock.rollback().await.unwrap();
    let answers = within(import).await.unwrap().expect("the import completes");

    assert!(
        held_at < 3_000,
        "the sender was not held back: {held_at} rows sent"
    );
    assert_eq!(answers.len(), 8_001, "a result per row, then the summary");
    assert_eq!(count_customers(&pool).await, 8_000);
}

#[tokio::test]
async fn bad_rows_inside_a_batch_get_their_own_error_and_their_batch_mates_commit() {
    let app = spawn_app().await;
    let client = app.client().await;
    let taken = client.create(ada()).await.unwrap();
    // Sent at once, so that they share batches: one invalid at the edge, one whose email an
    // active customer has, one whose email an earlier row of the same batch takes.
    let mut rows = rows(600, None);
    rows[250].customer.as_mut().unwrap().email = "broken".into();
    rows[300].customer.as_mut().unwrap().email = taken.email.clone();
    let earlier_email = rows[100].customer.as_ref().unwrap().email.clone();
    rows[400].customer.as_mut().unwrap().email = earlier_email;

    let imported = import(&client, rows).await;

    let refused: Vec<(&str, Code)> = outcomes(&imported.results)
        .into_iter()
        .filter(|(_, code)| *code != Code::Ok)
        .collect();
    assert_eq!(
        refused,
        [
            ("250", Code::InvalidArgument),
            ("300", Code::AlreadyExists),
            ("400", Code::AlreadyExists)
        ]
    );
    assert_invalid(&status(&imported.results[250]), &["customer.email"]);
    for i in [300, 400] {
        let status = status(&imported.results[i]);
        let reason = status.get_details_error_info().map(|info| info.reason);
        assert_eq!(reason.as_deref(), Some("EMAIL_ALREADY_EXISTS"), "row {i}");
        assert_eq!(imported.results[i].id, "");
    }
    assert_eq!(imported.summary, summary(597, 0, 3));
    let pool = app.pool().await;
    assert_eq!(count_customers(&pool).await, 1 + 597);
    assert_eq!(count_created_events(&pool).await, 1 + 597);
    for result in imported.results.iter().filter(|r| code(r) == Code::Ok) {
        client.get(&result.id).await.unwrap();
    }
}

#[tokio::test]
async fn a_request_id_repeated_within_one_stream_answers_the_first_rows_customer() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = ada();
    let mut other = ada();
    other.display_name = "Someone else".into();
    let mut rows = rows(10, None);
    rows[2] = row("first", customer.clone(), "same-id");
    rows[3] = row("again", customer.clone(), "same-id");
    rows[7] = row("later", customer, "same-id");
    rows[8] = row("different", other, "same-id");

    let imported = import(&client, rows).await;

    let results = &imported.results;
    assert_eq!(imported.summary, summary(7, 2, 1));
    for i in [3, 7] {
        assert_eq!(
            (code(&results[i]), &results[i].id),
            (Code::Ok, &results[2].id)
        );
    }
    assert_error(
        &status(&results[8]),
        Code::AlreadyExists,
        "REQUEST_ID_REUSED",
    );
    assert_eq!(count_customers(&app.pool().await).await, 7);
}

#[tokio::test]
async fn a_large_re_sent_import_answers_each_row_as_the_first_time_and_writes_nothing_new() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut rows = rows(1500, Some("resent"));
    rows[700].customer.as_mut().unwrap().display_name = String::new();
    let first = import(&client, rows.clone()).await;
    let pool = app.pool().await;
    let (customers, events) = (
        count_customers(&pool).await,
        count_created_events(&pool).await,
    );

    let again = import(&client, rows).await;

    assert_eq!(first.summary, summary(1499, 0, 1));
    assert_eq!(again.summary, summary(0, 1499, 1));
    let answers = |imported: &Imported| -> Vec<(String, Code, String)> {
        imported
            .results
            .iter()
            .map(|r| (r.r#ref.clone(), code(r), r.id.clone()))
            .collect()
    };
    assert_eq!(answers(&again), answers(&first));
    assert_eq!((customers, events), (1499, 1499));
    assert_eq!(count_customers(&pool).await, customers);
    assert_eq!(count_created_events(&pool).await, events);
}

#[tokio::test]
async fn an_import_row_repeating_a_create_customer_request_replays_it_and_a_different_one_is_reused()
 {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = ada();
    let created = client
        .inner
        .clone()
        .create_customer(client.request(pb::CreateCustomerRequest {
            customer: Some(customer.clone()),
            request_id: "crm-import-42".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    let mut changed = customer.clone();
    changed.display_name = "Ada King".into();

    let imported = import(
        &client,
        vec![
            row("same", customer, "crm-import-42"),
            row("changed", changed, "crm-import-42"),
        ],
    )
    .await;

    assert_eq!(imported.summary, summary(0, 1, 1));
    assert_eq!(
        (code(&imported.results[0]), imported.results[0].id.as_str()),
        (Code::Ok, created.id.as_str())
    );
    let reused = status(&imported.results[1]);
    assert_error(&reused, Code::AlreadyExists, "REQUEST_ID_REUSED");
    assert!(
        reused.message().contains("CreateCustomer") && reused.message().contains("crm-import-42"),
        "{reused:?}"
    );
    assert_eq!(count_customers(&app.pool().await).await, 1);
}

/// The import contract when the caller goes away mid-stream: every row answered is stored; a
/// row not answered may be stored too (its batch committed, the answer was lost with the
/// connection), never twice, and re-sending the rows with their request ids answers each one,
/// creating only those that were not stored.
#[tokio::test]
async fn an_import_cut_by_the_caller_keeps_every_answered_row_and_a_re_send_completes_it() {
    let app = spawn_app().await;
    let client = app.client().await;
    let all = rows(2000, Some("cut"));
    let (rows_tx, rows_rx) = tokio::sync::mpsc::channel(16);
    let mut answers = client
        .inner
        .clone()
        .import_customers(client.request(tokio_stream::wrappers::ReceiverStream::new(rows_rx)))
        .await
        .unwrap()
        .into_inner();
    let sender = tokio::spawn({
        let all = all.clone();
        async move {
            for row in all {
                if rows_tx.send(row).await.is_err() {
                    return;
                }
            }
            // Never half-closes: the caller cuts the call instead.
            std::future::pending::<()>().await;
        }
    });
    let mut answered = Vec::new();
    while answered.len() < 700 {
        match within(answers.next()).await {
            Some(Ok(pb::ImportCustomersResponse {
                kind: Some(Kind::Result(result)),
            })) => answered.push(result),
            other => panic!("a row's result, got {other:?}"),
        }
    }

    drop(answers);
    sender.abort();

    let pool = app.pool().await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT id::text FROM customer.customers")
        .fetch_all(&pool)
        .await
        .unwrap();
    for result in &answered {
        assert!(
            stored.contains(&result.id),
            "answered row {} is stored",
            result.r#ref
        );
    }
    assert!(stored.len() >= answered.len() && stored.len() <= all.len());
    let again = import(&client, all).await;
    assert_eq!(again.results.len(), 2000);
    assert!(again.results.iter().all(|r| code(r) == Code::Ok));
    for (first, resent) in answered.iter().zip(&again.results) {
        assert_eq!(first.id, resent.id, "row {}", first.r#ref);
    }
    // A batch still committing when the call was cut may have stored more rows since.
    assert!(again.summary.repeated_count >= stored.len() as i64);
    assert_eq!(
        again.summary.created_count + again.summary.repeated_count,
        2000
    );
    assert_eq!(count_customers(&pool).await, 2000, "no row stored twice");
}

#[tokio::test]
async fn many_imports_at_once_on_a_small_pool_each_answer_every_row() {
    const POOL_SIZE: usize = 3;
    const IMPORTS: usize = 4 * POOL_SIZE;
    let url = fresh_database().await;
    let app = spawn_with(config(
        &url,
        &redis_url(),
        &[("CRM__DATABASE__MAX_CONNECTIONS", &POOL_SIZE.to_string())],
    ))
    .await;
    let client = app.client().await;

    let imports = (0..IMPORTS).map(|n| {
        let client = client.clone();
        let rows = rows(400, Some(&format!("import-{n}")));
        async move { import_frame_by_frame(&client, rows).await }
    });
    let imported = futures::future::join_all(imports).await;

    for (n, imported) in imported.iter().enumerate() {
        assert_eq!(imported.summary, summary(400, 0, 0), "import {n}");
        assert!(
            imported.results.iter().all(|r| code(r) == Code::Ok),
            "import {n}"
        );
    }
    let pool = app.pool().await;
    assert_eq!(count_customers(&pool).await, (IMPORTS * 400) as i64);
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
    client.erase(erased, "ticket 7").await.unwrap();

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
    assert_eq!(imported.summary, summary(523, 0, 0));

    let exported = export(&client, "").await.unwrap();

    assert_eq!(exported.len(), 523);
    for (i, pair) in exported.windows(2).enumerate() {
        let (a, b) = (
            uuid::Uuid::parse_str(&pair[0]).unwrap(),
            uuid::Uuid::parse_str(&pair[1]).unwrap(),
        );
        assert!(a < b, "position {i}: {a} then {b}");
    }
    let mut expected: Vec<String> = imported.results.into_iter().map(|r| r.id).collect();
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

#[tokio::test]
async fn an_export_resumed_with_a_token_continues_after_that_customer() {
    let app = spawn_app().await;
    let client = app.client().await;
    for i in 0..8 {
        let mut c = ada();
        if i % 2 == 0 {
            c.tags = vec!["other".into()];
        }
        client.create(c).await.unwrap();
    }
    let whole = export_with_tokens(&client, "tags:vip", "").await.unwrap();
    let (_, token) = whole[1].clone();

    let resumed = export_with_tokens(&client, "tags:vip", &token)
        .await
        .unwrap();

    assert_eq!(whole.len(), 4);
    assert!(whole.iter().all(|(_, token)| !token.is_empty()));
    let ids = |messages: &[(String, String)]| -> Vec<String> {
        messages.iter().map(|(id, _)| id.clone()).collect()
    };
    assert_eq!(ids(&resumed), ids(&whole[2..]));
    let last = export_with_tokens(&client, "tags:vip", &whole[3].1)
        .await
        .unwrap();
    assert!(last.is_empty(), "nothing after the last customer: {last:?}");
}

#[tokio::test]
async fn a_resume_token_from_another_filter_or_not_from_an_export_is_invalid_on_resume_token() {
    let app = spawn_app().await;
    let client = app.client().await;
    client.create(ada()).await.unwrap();
    let exported = export_with_tokens(&client, "tags:vip", "").await.unwrap();
    let token = exported[0].1.clone();

    for (case, filter, token) in [
        ("another filter", "", token.as_str()),
        ("garbage", "tags:vip", "not-a-token"),
        ("a tampered token", "tags:vip", &token[..token.len() - 2]),
    ] {
        let status = export_with_tokens(&client, filter, token)
            .await
            .expect_err(case);

        assert_invalid(&status, &["resume_token"]);
    }
}

async fn export_as_of(client: &Client, as_of_time: prost_types::Timestamp) -> tonic::Status {
    client
        .inner
        .clone()
        .export_customers(client.request(pb::ExportCustomersRequest {
            as_of_time: Some(as_of_time),
            ..Default::default()
        }))
        .await
        .expect_err("a point-in-time export is not served")
}

#[tokio::test]
async fn a_point_in_time_export_is_unimplemented_and_a_future_instant_is_invalid() {
    let app = spawn_app().await;
    let client = app.client().await;
    client.create(ada()).await.unwrap();
    let now = std::time::SystemTime::now();
    let hour = std::time::Duration::from_secs(3600);

    let past = export_as_of(&client, (now - hour).into()).await;
    let future = export_as_of(&client, (now + hour).into()).await;

    assert_eq!(past.code(), Code::Unimplemented, "{past:?}");
    assert!(past.message().contains("as_of_time"), "{past:?}");
    assert_invalid(&future, &["as_of_time"]);
}
