//! ListCustomers: paging, filters and order.

use crate::common::{ada, spawn_app, violated_fields};
use crm_proto::crm::customer::v1 as pb;
use tonic::Code;

#[tokio::test]
async fn pages_stay_stable_while_customers_are_inserted() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut expected = Vec::new();
    for _ in 0..7 {
        expected.push(client.create(ada()).await.unwrap().id);
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list(pb::ListCustomersRequest {
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.customers.into_iter().map(|c| c.id));
        // Newer rows sort after the cursor (create_time order) and must not shift pages.
        client.create(ada()).await.unwrap();
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }

    assert_eq!(&seen[..7], &expected[..], "no row skipped or repeated");
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
}

#[tokio::test]
async fn list_filters_by_fields_tags_and_attributes() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut vip = ada();
    vip.lifecycle_stage = pb::LifecycleStage::Customer as i32;
    vip.attributes.insert(
        "seats".into(),
        pb::AttributeValue {
            kind: Some(pb::attribute_value::Kind::IntValue(40)),
        },
    );
    let vip = client.create(vip).await.unwrap();
    let mut other = ada();
    other.tags.clear();
    client.create(other).await.unwrap();

    let page = client
        .list(pb::ListCustomersRequest {
            filter: "lifecycle_stage = CUSTOMER AND tags:vip AND attributes.seats > 10".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    assert_eq!(
        page.customers.iter().map(|c| &c.id).collect::<Vec<_>>(),
        [&vip.id]
    );
}

#[tokio::test]
async fn a_filter_syntax_error_points_at_its_position() {
    let app = spawn_app().await;
    let client = app.client().await;

    let status = client
        .list(pb::ListCustomersRequest {
            filter: "display_name = ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let unknown = client
        .list(pb::ListCustomersRequest {
            filter: "shoe_size = 9".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["filter"]);
    assert!(
        status.message().contains("position"),
        "{}",
        status.message()
    );
    assert_eq!(unknown.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_page_token_from_another_query_is_rejected() {
    let app = spawn_app().await;
    let client = app.client().await;
    for _ in 0..3 {
        client.create(ada()).await.unwrap();
    }
    let page = client
        .list(pb::ListCustomersRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap();

    let status = client
        .list(pb::ListCustomersRequest {
            page_size: 1,
            page_token: page.next_page_token,
            order_by: "display_name".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert_eq!(violated_fields(&status), ["page_token"]);
}
