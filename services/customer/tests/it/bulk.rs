//! ImportCustomers and ExportCustomers, the streaming bulk RPCs.

use crate::common::{ada, spawn_app};
use crm_proto::crm::customer::v1 as pb;
use futures::StreamExt;

#[tokio::test]
async fn import_reports_each_row_and_skips_bad_ones() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut bad = ada();
    bad.email = "broken".into();
    let rows = vec![
        pb::ImportCustomersRequest {
            row_ref: "1".into(),
            customer: Some(ada()),
            request_id: String::new(),
        },
        pb::ImportCustomersRequest {
            row_ref: "2".into(),
            customer: Some(bad),
            request_id: String::new(),
        },
        pb::ImportCustomersRequest {
            row_ref: "3".into(),
            customer: Some(ada()),
            request_id: String::new(),
        },
    ];

    let results: Vec<pb::ImportCustomersResponse> = client
        .inner
        .clone()
        .import_customers(client.request(futures::stream::iter(rows)))
        .await
        .unwrap()
        .into_inner()
        .map(|r| r.unwrap())
        .collect()
        .await;

    let outcomes: Vec<_> = results
        .iter()
        .map(|r| (r.row_ref.as_str(), r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("1", pb::ImportRowOutcome::Created as i32),
            ("2", pb::ImportRowOutcome::Rejected as i32),
            ("3", pb::ImportRowOutcome::Created as i32)
        ]
    );
    assert!(
        results[1].errors[0].contains("customer.email"),
        "{:?}",
        results[1].errors
    );
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
