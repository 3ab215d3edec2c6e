//! Create, Get, BatchGet, Update, Delete and Undelete: the single-customer RPCs.

use crate::common::{ada, assert_error, assert_invalid, spawn_app};
use crm_proto::crm::customer::v1 as pb;
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

    assert_invalid(
        &status,
        &["customer.display_name", "customer.email", "customer.phone"],
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

    assert_error(&missing, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert_invalid(&malformed, &["id"]);
}

#[tokio::test]
async fn a_second_active_customer_with_the_same_email_already_exists() {
    let app = spawn_app().await;
    let client = app.client().await;
    let first = client.create(ada()).await.unwrap();
    let mut second = ada();
    second.email = first.email.to_uppercase();

    let status = client.create(second).await.unwrap_err();

    assert_error(&status, Code::AlreadyExists, "EMAIL_ALREADY_EXISTS");
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

    assert_error(&status, Code::AlreadyExists, "REQUEST_ID_REUSED");
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
async fn batch_get_returns_customers_in_request_order() {
    let app = spawn_app().await;
    let client = app.client().await;
    let a = client.create(ada()).await.unwrap();
    let b = client.create(ada()).await.unwrap();

    let response = client
        .inner
        .clone()
        .batch_get_customers(client.request(pb::BatchGetCustomersRequest {
            ids: vec![b.id.clone(), a.id.clone()],
        }))
        .await
        .unwrap()
        .into_inner();

    let ids: Vec<_> = response.customers.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids, [b.id, a.id]);
}
