//! MergeCustomers and ListMergeRecords.

use crate::common::{ada, spawn_app};
use crm_proto::crm::customer::v1 as pb;

#[tokio::test]
async fn a_merged_id_resolves_to_the_survivor_which_gains_the_duplicates_data() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let mut dup = ada();
    dup.tags = vec!["newsletter".into()];
    dup.company_name = "Engines".into();
    let dup = client.create(dup).await.unwrap();

    let merged = client
        .inner
        .clone()
        .merge_customers(client.request(pb::MergeCustomersRequest {
            survivor_id: survivor.id.clone(),
            duplicate_ids: vec![dup.id.clone()],
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();

    let via_old_id = client.get(&dup.id).await.unwrap();
    assert_eq!(via_old_id.id, survivor.id);
    assert_eq!(via_old_id.company_name, "Engines");
    assert_eq!(via_old_id.tags, ["vip", "newsletter"]);
    assert_eq!(merged.merge_record.unwrap().merged_ids, [dup.id]);
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
