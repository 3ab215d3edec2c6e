//! CreateInteraction and ListInteractions.

use crate::common::{ada, spawn_app};
use crm_proto::crm::customer::v1 as pb;

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
