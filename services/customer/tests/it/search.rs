//! SearchCustomers and FindDuplicateCustomers.

use crate::common::{ada, spawn_app};
use crm_proto::crm::customer::v1 as pb;

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
