//! RecordConsent and ListConsentHistory.

use crate::common::{ada, consent, spawn_app, violated_fields};
use crm_proto::crm::customer::v1 as pb;
use tonic::Code;

#[tokio::test]
async fn consent_decisions_update_the_customer_and_keep_their_history() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut inner = client.inner.clone();
    for status in [pb::ConsentStatus::Granted, pb::ConsentStatus::Withdrawn] {
        inner
            .record_consent(client.request(pb::RecordConsentRequest {
                customer_id: created.id.clone(),
                consent: Some(consent(pb::ConsentChannel::Email, status)),
            }))
            .await
            .unwrap();
    }

    let customer = client.get(&created.id).await.unwrap();
    let history = inner
        .list_consent_history(client.request(pb::ListConsentHistoryRequest {
            customer_id: created.id.clone(),
            page_size: 1,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(customer.consents.len(), 1);
    assert_eq!(
        customer.consents[0].status,
        pb::ConsentStatus::Withdrawn as i32
    );
    assert_ne!(
        customer.etag, created.etag,
        "a consent change is a change of the customer"
    );
    assert_eq!(
        history.consents[0].status,
        pb::ConsentStatus::Withdrawn as i32
    );
    assert!(
        !history.next_page_token.is_empty(),
        "the older decision is on the next page"
    );
}

#[tokio::test]
async fn a_consent_without_legal_basis_or_source_is_rejected() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();

    let status = client
        .inner
        .clone()
        .record_consent(client.request(pb::RecordConsentRequest {
            customer_id: created.id,
            consent: Some(pb::Consent {
                channel: pb::ConsentChannel::Sms as i32,
                status: pb::ConsentStatus::Granted as i32,
                ..Default::default()
            }),
        }))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["consent.legal_basis", "consent.source"]
    );
}
