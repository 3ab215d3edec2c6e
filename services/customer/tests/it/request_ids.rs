//! Request ids on the writes that take one, through the RPCs: retries of CreateInteraction,
//! identical calls racing each other, and a refused write whose id stays free for the retry.

use crate::common::{Client, TestApp, ada, assert_error, config, consent, fresh_database, within};
use crm_proto::crm::common::v1::Channel;
use crm_proto::crm::customer::v1 as pb;
use tonic::Code;
use uuid::Uuid;

/// The pool size of the server here: small, so that racing calls outnumber it.
const POOL_SIZE: usize = 3;

/// A server over a fresh database whose pool holds `POOL_SIZE` connections.
async fn small_pool_app() -> TestApp {
    let url = fresh_database().await;
    let pool_size = POOL_SIZE.to_string();
    crate::common::spawn_with(config(
        &url,
        "",
        &[("CRM__DATABASE__MAX_CONNECTIONS", pool_size.as_str())],
    ))
    .await
}

fn note(customer_id: &str, subject: &str) -> pb::Interaction {
    pb::Interaction {
        customer_id: customer_id.into(),
        r#type: pb::InteractionType::Note as i32,
        subject: subject.into(),
        ..Default::default()
    }
}

async fn create_interaction(
    client: &Client,
    interaction: pb::Interaction,
    request_id: &str,
) -> Result<pb::CreateInteractionResponse, tonic::Status> {
    let request = client.request(pb::CreateInteractionRequest {
        interaction: Some(interaction),
        request_id: request_id.into(),
    });
    Ok(client
        .inner
        .clone()
        .create_interaction(request)
        .await?
        .into_inner())
}

async fn record_consent(
    client: &Client,
    customer_id: &str,
    request_id: &str,
) -> Result<pb::RecordConsentResponse, tonic::Status> {
    let request = client.request(pb::RecordConsentRequest {
        customer_id: customer_id.into(),
        consent: Some(consent(Channel::Email, pb::ConsentStatus::Withdrawn)),
        request_id: request_id.into(),
    });
    Ok(client
        .inner
        .clone()
        .record_consent(request)
        .await?
        .into_inner())
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.pool().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retried_create_interaction_returns_the_first_interaction_and_records_one() {
    let app = small_pool_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    let request_id = Uuid::now_v7().to_string();
    let first = create_interaction(&client, note(&customer.id, "called"), &request_id)
        .await
        .unwrap();

    let retry = create_interaction(&client, note(&customer.id, "called"), &request_id)
        .await
        .unwrap();

    assert_eq!(retry, first);
    assert_eq!(
        count(&app, "SELECT count(*) FROM customer.interactions").await,
        1
    );
}

#[tokio::test]
async fn a_create_interaction_request_id_reused_for_another_interaction_is_rejected_and_records_nothing()
 {
    let app = small_pool_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    let request_id = Uuid::now_v7().to_string();
    create_interaction(&client, note(&customer.id, "called"), &request_id)
        .await
        .unwrap();

    let status = create_interaction(&client, note(&customer.id, "emailed"), &request_id)
        .await
        .unwrap_err();

    assert_error(&status, Code::AlreadyExists, "REQUEST_ID_REUSED");
    assert_eq!(
        count(&app, "SELECT count(*) FROM customer.interactions").await,
        1
    );
}

#[tokio::test]
async fn one_consent_sent_at_four_times_the_pool_size_under_one_request_id_is_recorded_once() {
    let app = small_pool_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    let request_id = Uuid::now_v7().to_string();

    let calls = (0..4 * POOL_SIZE).map(|_| record_consent(&client, &customer.id, &request_id));
    let responses = within(futures::future::join_all(calls)).await;

    let first = responses[0].as_ref().unwrap();
    for response in &responses {
        assert_eq!(
            response.as_ref().unwrap(),
            first,
            "every call gets one answer"
        );
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM customer.consents").await,
        1
    );
    let stored = client.get(&customer.id).await.unwrap();
    assert_eq!(Some(&stored), first.customer.as_ref());
}

#[tokio::test]
async fn a_write_refused_under_a_request_id_leaves_the_id_free_for_the_retry() {
    let app = small_pool_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    let deleted = client.delete(&customer.id, "").await.unwrap();
    let request_id = Uuid::now_v7().to_string();
    let refused = create_interaction(&client, note(&customer.id, "called"), &request_id)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    client.undelete(&customer.id, &deleted.etag).await.unwrap();

    let retry = create_interaction(&client, note(&customer.id, "called"), &request_id).await;

    let interaction = retry.unwrap().interaction.unwrap();
    assert_eq!(interaction.subject, "called");
    assert_eq!(
        count(&app, "SELECT count(*) FROM customer.interactions").await,
        1
    );
}
