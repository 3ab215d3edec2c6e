//! Happy paths of the remaining RPCs: batch reads, duplicates, consent, the interaction
//! timeline, GDPR export and the bulk export stream.

mod common;

use common::{ada, spawn_app, violated_fields};
use crm_proto::crm::customer::v1 as pb;
use futures::StreamExt;
use tonic::Code;

fn consent(channel: pb::ConsentChannel, status: pb::ConsentStatus) -> pb::Consent {
    pb::Consent {
        channel: channel as i32,
        status: status as i32,
        legal_basis: pb::LegalBasis::Consent as i32,
        source: "checkout-form".into(),
        ..Default::default()
    }
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

#[tokio::test]
async fn duplicates_are_proposed_with_their_reasons() {
    let app = spawn_app().await;
    let client = app.client().await;
    let original = client.create(ada()).await.unwrap();
    let mut twin = ada();
    twin.phone = original.phone.clone();
    let twin = client.create(twin).await.unwrap();
    let mut stranger = ada();
    stranger.display_name = "Zygmunt Bauman".into();
    stranger.phone = "+4830000000".into();
    client.create(stranger).await.unwrap();

    let response = client
        .inner
        .clone()
        .find_duplicate_customers(client.request(pb::FindDuplicateCustomersRequest {
            customer_id: original.id.clone(),
            page_size: 10,
        }))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(response.candidates.len(), 1);
    let candidate = &response.candidates[0];
    assert_eq!(candidate.customer.as_ref().unwrap().id, twin.id);
    assert!(
        candidate.reasons.contains(&"same phone".to_string()),
        "{:?}",
        candidate.reasons
    );
    assert!(candidate.score >= 0.9);
}

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

#[tokio::test]
async fn interactions_form_a_filterable_timeline_newest_first() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut inner = client.inner.clone();
    for (kind, subject) in [
        (pb::InteractionType::Call, "intro call"),
        (pb::InteractionType::Note, "likes engines"),
        (pb::InteractionType::Call, "follow-up"),
    ] {
        inner
            .create_interaction(client.request(pb::CreateInteractionRequest {
                interaction: Some(pb::Interaction {
                    customer_id: created.id.clone(),
                    r#type: kind as i32,
                    subject: subject.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            }))
            .await
            .unwrap();
    }

    let calls = inner
        .list_interactions(client.request(pb::ListInteractionsRequest {
            customer_id: created.id.clone(),
            filter: "type = CALL".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();

    let subjects: Vec<_> = calls
        .interactions
        .iter()
        .map(|i| i.subject.as_str())
        .collect();
    assert_eq!(subjects, ["follow-up", "intro call"]);
}

#[tokio::test]
async fn the_gdpr_export_holds_everything_about_the_customer() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut inner = client.inner.clone();
    inner
        .record_consent(client.request(pb::RecordConsentRequest {
            customer_id: created.id.clone(),
            consent: Some(consent(pb::ConsentChannel::Sms, pb::ConsentStatus::Granted)),
        }))
        .await
        .unwrap();
    inner
        .create_interaction(client.request(pb::CreateInteractionRequest {
            interaction: Some(pb::Interaction {
                customer_id: created.id.clone(),
                r#type: pb::InteractionType::Meeting as i32,
                subject: "kick-off".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap();

    let export = inner
        .export_customer_data(client.request(pb::ExportCustomerDataRequest {
            id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(export.customer.unwrap().email, created.email);
    assert_eq!(export.consent_history.len(), 1);
    assert_eq!(export.interactions[0].subject, "kick-off");
    assert!(export.export_time.is_some());
}

#[tokio::test]
async fn merge_history_lists_each_merge_into_the_survivor() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let dup = client.create(ada()).await.unwrap();
    let mut inner = client.inner.clone();
    inner
        .merge_customers(client.request(pb::MergeCustomersRequest {
            survivor_id: survivor.id.clone(),
            duplicate_ids: vec![dup.id.clone()],
            request_id: "merge-1".into(),
        }))
        .await
        .unwrap();

    let records = inner
        .list_merge_records(client.request(pb::ListMergeRecordsRequest {
            customer_id: survivor.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .merge_records;

    assert_eq!(records.len(), 1);
    assert_eq!(records[0].merged_ids, std::slice::from_ref(&dup.id));
    let merged = client.get(&dup.id).await.unwrap();
    assert_eq!(merged.id, survivor.id);
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

    let mut exported: Vec<String> = client
        .inner
        .clone()
        .export_customers(client.request(pb::ExportCustomersRequest {
            filter: "tags:vip".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap().customer.unwrap().id)
        .collect()
        .await;

    exported.sort();
    vips.sort();
    assert_eq!(exported, vips);
}
