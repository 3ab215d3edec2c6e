//! WatchCustomerChanges, the change feed.

use std::time::Duration;

use crate::common::{ada, spawn_app, within};
use crm_proto::crm::customer::v1 as pb;
use futures::StreamExt;

#[tokio::test]
async fn the_change_feed_resumes_after_a_token_without_gaps() {
    let app = spawn_app().await;
    let client = app.client().await;
    let first = client.create(ada()).await.unwrap();
    let mut feed = client
        .inner
        .clone()
        .watch_customer_changes(client.request(pb::WatchCustomerChangesRequest {
            resume_token: "0".into(),
            start_time: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let event = within(feed.next()).await.unwrap().unwrap().event.unwrap();
    assert_eq!(event.customer_id, first.id);
    drop(feed);

    let second = client.create(ada()).await.unwrap();
    let mut resumed = client
        .inner
        .clone()
        .watch_customer_changes(client.request(pb::WatchCustomerChangesRequest {
            resume_token: event.resume_token,
            start_time: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let next = within(resumed.next()).await.unwrap().unwrap();

    assert_eq!(next.event.unwrap().customer_id, second.id);
}

#[tokio::test]
async fn the_change_feed_waits_for_a_late_commit_instead_of_skipping_it() {
    let app = spawn_app().await;
    let client = app.client().await;
    let pool = app.pool().await;
    let insert = |seq: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO customer.changes (seq, customer_id, change_type) \
                 VALUES ($1, $2, 'CHANGE_TYPE_UPDATED')",
            )
            .bind(seq)
            .bind(uuid::Uuid::now_v7())
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query("SELECT pg_notify('customer_changes', '')")
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    let mut feed = client
        .inner
        .clone()
        .watch_customer_changes(client.request(pb::WatchCustomerChangesRequest {
            resume_token: "0".into(),
            start_time: None,
        }))
        .await
        .unwrap()
        .into_inner();

    insert(1).await;
    assert_eq!(next_token(&mut feed, 5).await.as_deref(), Some("1"));
    // 3 commits before 2: the feed must hold 3 back rather than skip 2 for good.
    insert(3).await;
    assert_eq!(next_token(&mut feed, 1).await, None);
    insert(2).await;

    assert_eq!(next_token(&mut feed, 5).await.as_deref(), Some("2"));
    assert_eq!(next_token(&mut feed, 5).await.as_deref(), Some("3"));
}

/// The next event's resume token, or None when nothing arrives within `seconds`.
async fn next_token(
    feed: &mut tonic::Streaming<pb::WatchCustomerChangesResponse>,
    seconds: u64,
) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(seconds), feed.next())
        .await
        .ok()
        .map(|r| r.unwrap().unwrap().event.unwrap().resume_token)
}
