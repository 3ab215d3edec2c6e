//! ScanDuplicateCustomers as a long-running operation, followed through
//! `google.longrunning.Operations` on the same server.

use std::time::Duration;

use crm_proto::crm::common::v1::OperationMetadata;
use crm_proto::crm::customer::v1 as pb;
use crm_proto::google::longrunning::operations_client::OperationsClient;
use crm_proto::google::longrunning::{
    CancelOperationRequest, GetOperationRequest, ListOperationsRequest, Operation,
    WaitOperationRequest, operation,
};
use futures::future::join_all;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{
    Client, TestApp, ada, assert_invalid, config, fresh_database, redis_url, spawn_app, spawn_with,
    within,
};

/// A customer named `name` with phone `phone` (and a unique email).
fn person(name: &str, phone: &str) -> pb::Customer {
    pb::Customer {
        display_name: name.into(),
        phone: phone.into(),
        tags: Vec::new(),
        ..ada()
    }
}

async fn operations(app: &TestApp) -> OperationsClient<Channel> {
    OperationsClient::new(app.channel().await)
}

async fn start_scan(
    client: &Client,
    min_score: Option<f64>,
    request_id: &str,
) -> Result<Operation, tonic::Status> {
    let request = client.request(pb::ScanDuplicateCustomersRequest {
        min_score,
        request_id: request_id.into(),
    });
    Ok(client
        .inner
        .clone()
        .scan_duplicate_customers(request)
        .await?
        .into_inner())
}

/// Waits through WaitOperation until `name` is done.
async fn until_done(app: &TestApp, client: &Client, name: &str) -> Operation {
    let mut operations = operations(app).await;
    within(async {
        loop {
            let request = client.request(WaitOperationRequest {
                name: name.into(),
                timeout: Some(Duration::from_secs(2).try_into().unwrap()),
            });
            let operation = operations
                .wait_operation(request)
                .await
                .unwrap()
                .into_inner();
            if operation.done {
                return operation;
            }
        }
    })
    .await
}

fn scan_response(operation: &Operation) -> pb::ScanDuplicateCustomersResponse {
    match &operation.result {
        Some(operation::Result::Response(any)) => {
            assert_eq!(
                any.type_url,
                "type.googleapis.com/crm.customer.v1.ScanDuplicateCustomersResponse"
            );
            pb::ScanDuplicateCustomersResponse::decode(any.value.as_slice()).unwrap()
        }
        other => panic!("expected the scan's response, got {other:?}"),
    }
}

fn metadata(operation: &Operation) -> OperationMetadata {
    OperationMetadata::decode(operation.metadata.as_ref().unwrap().value.as_slice()).unwrap()
}

#[tokio::test]
async fn the_scan_groups_the_seeded_duplicates_and_reports_its_progress() {
    let app = spawn_app().await;
    let client = app.client().await;
    // Three records sharing one phone, two sharing another, one on its own.
    let ada1 = client
        .create(person("Ada Lovelace", "+441000000001"))
        .await
        .unwrap();
    let ada2 = client
        .create(person("Augusta King", "+441000000001"))
        .await
        .unwrap();
    let ada3 = client
        .create(person("A. A. Lovelace-King", "+441000000001"))
        .await
        .unwrap();
    let grace1 = client
        .create(person("Grace Hopper", "+15550000002"))
        .await
        .unwrap();
    let grace2 = client
        .create(person("Grace B. Murray", "+15550000002"))
        .await
        .unwrap();
    client
        .create(person("Alan Turing", "+441000000003"))
        .await
        .unwrap();
    let deleted = client
        .create(person("Ghost", "+15550000002"))
        .await
        .unwrap();
    client.delete(&deleted.id, "").await.unwrap();

    let started = start_scan(&client, Some(0.85), "").await.unwrap();
    let done = until_done(&app, &client, &started.name).await;

    assert!(started.name.starts_with("operations/"));
    assert!(!started.done);
    let response = scan_response(&done);
    assert_eq!(response.scanned_count, 6);
    let groups: Vec<Vec<String>> = response
        .groups
        .iter()
        .map(|g| g.customer_ids.clone())
        .collect();
    assert_eq!(
        groups,
        [
            vec![ada1.id.clone(), ada2.id.clone(), ada3.id.clone()],
            vec![grace1.id.clone(), grace2.id.clone()],
        ]
    );
    for group in &response.groups {
        assert!(group.score >= 0.85, "{group:?}");
        assert!(
            group.reasons.contains(&"same phone".to_string()),
            "{group:?}"
        );
    }
    let meta = metadata(&done);
    assert_eq!((meta.items_done, meta.items_total), (6, Some(6)));
}

#[tokio::test]
async fn a_scan_with_nothing_above_the_minimum_score_finds_no_groups() {
    let app = spawn_app().await;
    let client = app.client().await;
    client
        .create(person("Ada Lovelace", "+441000000001"))
        .await
        .unwrap();
    client
        .create(person("Grace Hopper", "+15550000002"))
        .await
        .unwrap();

    let started = start_scan(&client, None, "").await.unwrap();
    let done = until_done(&app, &client, &started.name).await;

    let response = scan_response(&done);
    assert_eq!(response.scanned_count, 2);
    assert!(response.groups.is_empty(), "{response:?}");
}

#[tokio::test]
async fn a_retried_scan_returns_the_same_operation_and_a_reused_request_id_is_refused() {
    let app = spawn_app().await;
    let client = app.client().await;

    let first = start_scan(&client, Some(0.9), "scan-1").await.unwrap();
    let retry = start_scan(&client, Some(0.9), "scan-1").await.unwrap();
    let reused = start_scan(&client, Some(0.5), "scan-1").await.unwrap_err();
    let (listed, _) = list(&app, &client, "").await;

    assert_eq!(retry.name, first.name);
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused:?}");
    assert_eq!(listed, [first.name]);
}

#[tokio::test]
async fn the_scan_validates_its_request() {
    let app = spawn_app().await;
    let client = app.client().await;

    let above_one = start_scan(&client, Some(1.5), "").await.unwrap_err();
    let negative = start_scan(&client, Some(-0.1), "").await.unwrap_err();
    let long_request_id = start_scan(&client, None, &"r".repeat(101))
        .await
        .unwrap_err();
    let (listed, _) = list(&app, &client, "").await;

    assert_invalid(&above_one, &["min_score"]);
    assert_invalid(&negative, &["min_score"]);
    assert_invalid(&long_request_id, &["request_id"]);
    assert!(listed.is_empty(), "nothing was started: {listed:?}");
}

async fn list(app: &TestApp, client: &Client, filter: &str) -> (Vec<String>, String) {
    let response = operations(app)
        .await
        .list_operations(client.request(ListOperationsRequest {
            filter: filter.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    (
        response.operations.into_iter().map(|o| o.name).collect(),
        response.next_page_token,
    )
}

#[tokio::test]
async fn operations_need_a_token_the_read_scope_to_read_and_the_write_scope_to_cancel() {
    let app = spawn_app().await;
    let client = app.client().await;
    let started = start_scan(&client, None, "").await.unwrap();
    let reader = app.client_with_scopes(&["customer.read"]).await;
    let anonymous = app.anonymous_client().await;
    let mut ops = operations(&app).await;
    let get = |c: &Client| {
        c.request(GetOperationRequest {
            name: started.name.clone(),
        })
    };

    let read = ops.get_operation(get(&reader)).await;
    let cancel = ops
        .cancel_operation(reader.request(CancelOperationRequest {
            name: started.name.clone(),
        }))
        .await
        .unwrap_err();
    let unauthenticated = ops.get_operation(get(&anonymous)).await.unwrap_err();

    assert!(read.is_ok(), "{read:?}");
    assert_eq!(cancel.code(), Code::PermissionDenied, "{cancel:?}");
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn scans_gets_and_lists_at_four_times_the_pool_size_all_succeed() {
    const POOL_SIZE: usize = 3;
    let url = fresh_database().await;
    let pool_size = POOL_SIZE.to_string();
    let app = spawn_with(config(
        &url,
        &redis_url(),
        &[("CRM__DATABASE__MAX_CONNECTIONS", pool_size.as_str())],
    ))
    .await;
    let client = app.client().await;
    for i in 0..5 {
        client
            .create(person("Ada Lovelace", &format!("+44100000000{i}")))
            .await
            .unwrap();
    }
    let first = start_scan(&client, None, "").await.unwrap();
    let ops = operations(&app).await;

    let calls = (0..4 * POOL_SIZE).map(|i| {
        let (client, mut ops, name) = (client.clone(), ops.clone(), first.name.clone());
        async move {
            match i % 3 {
                0 => start_scan(&client, None, "").await.map(drop),
                1 => ops
                    .get_operation(client.request(GetOperationRequest { name }))
                    .await
                    .map(drop),
                _ => ops
                    .list_operations(client.request(ListOperationsRequest::default()))
                    .await
                    .map(drop),
            }
        }
    });
    let results = within(join_all(calls)).await;

    let failed: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let done = until_done(&app, &client, &first.name).await;
    assert_eq!(scan_response(&done).scanned_count, 5);
}

#[tokio::test]
async fn a_scan_whose_process_died_mid_run_is_resumed_and_finishes() {
    let app = spawn_app().await;
    let client = app.client().await;
    let first = client
        .create(person("Ada Lovelace", "+441000000001"))
        .await
        .unwrap();
    let twin = client
        .create(person("Augusta King", "+441000000001"))
        .await
        .unwrap();
    // What a process that died while scanning leaves behind: RUNNING under an expired lease.
    let id = uuid::Uuid::now_v7();
    let request = pb::ScanDuplicateCustomersRequest {
        min_score: Some(0.85),
        request_id: String::new(),
    };
    sqlx::query(
        "INSERT INTO customer.operations (id, kind, state, request, requested_by_kind, \
           requested_by_id, attempts, lease_owner, lease_expire_time) \
         VALUES ($1, 'customer.scan_duplicates', 'RUNNING', $2, 1, 'test', 1, \
           gen_random_uuid(), now() - interval '1 second')",
    )
    .bind(id)
    .bind(request.encode_to_vec())
    .execute(&app.pool().await)
    .await
    .unwrap();

    let done = until_done(&app, &client, &format!("operations/{id}")).await;

    let groups: Vec<Vec<String>> = scan_response(&done)
        .groups
        .into_iter()
        .map(|g| g.customer_ids)
        .collect();
    assert_eq!(groups, [vec![first.id, twin.id]]);
}
