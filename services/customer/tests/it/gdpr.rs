//! EraseCustomer and ExportCustomerData.

use crate::common::{ada, consent, spawn_app};
use crm_proto::crm::customer::v1 as pb;

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
