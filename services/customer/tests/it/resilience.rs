//! How the service behaves when its dependencies fail, and when it is told to stop.

use std::time::Duration;

use crate::common::{
    Outage, ada, config, fresh_database, health_of, postgres_addr, redis_url, spawn_with, via,
};
use crm_proto::crm::customer::v1 as pb;
use futures::StreamExt;
use tonic::Code;

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::test]
async fn calls_succeed_from_postgres_while_redis_is_unreachable() {
    let url = fresh_database().await;
    // Nothing listens on port 1: every Redis command fails.
    let app = spawn_with(config(&url, "redis://127.0.0.1:1", &[])).await;
    let client = app.client().await;

    let created = client.create(ada()).await.unwrap();
    let first = client.get(&created.id).await.unwrap();
    let second = client.get(&created.id).await.unwrap();

    assert_eq!(
        (first.id.as_str(), second.id.as_str()),
        (created.id.as_str(), created.id.as_str())
    );
}

#[tokio::test]
async fn postgres_outage_is_unavailable_and_the_service_recovers_by_itself() {
    let url = fresh_database().await;
    let proxy = Outage::start(postgres_addr()).await;
    let app = spawn_with(config(&via(&url, proxy.addr), &redis_url(), &[])).await;
    let client = app.client().await;
    client.create(ada()).await.unwrap();

    proxy.cut();
    let status = client.create(ada()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let mut saw_not_serving = false;
    for _ in 0..50 {
        if health_of(app.addr).await == NOT_SERVING {
            saw_not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        saw_not_serving,
        "health should turn NOT_SERVING while PostgreSQL is gone"
    );

    proxy.restore();
    let mut recovered = false;
    for _ in 0..100 {
        if client.create(ada()).await.is_ok() && health_of(app.addr).await == SERVING {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the service should recover when PostgreSQL returns"
    );
}

#[tokio::test]
async fn two_instances_sharing_redis_never_serve_a_stale_read_after_a_write() {
    let url = fresh_database().await;
    let a = spawn_with(config(&url, &redis_url(), &[])).await;
    let b = spawn_with(config(&url, &redis_url(), &[])).await;
    let (writer, reader) = (a.client().await, b.client().await);
    let mut customer = writer.create(ada()).await.unwrap();
    // Wait until both in-process tiers are live, so the test exercises them.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for round in 0..30 {
        reader.get(&customer.id).await.unwrap(); // B caches the current version
        customer.display_name = format!("Ada, round {round}");
        customer = writer
            .update(customer.clone(), &["display_name"])
            .await
            .unwrap();

        let seen = reader.get(&customer.id).await.unwrap();

        assert_eq!(
            seen.display_name, customer.display_name,
            "stale read in round {round}"
        );
        assert_eq!(seen.etag, customer.etag);
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish_before_the_server_stops() {
    let url = fresh_database().await;
    let app = spawn_with(config(
        &url,
        &redis_url(),
        &[("CRM__SERVER__SHUTDOWN_GRACE_SECS", "10")],
    ))
    .await;
    let client = app.client().await;
    let (rows_tx, rows_rx) = tokio::sync::mpsc::channel(4);
    let rows = tokio_stream::wrappers::ReceiverStream::new(rows_rx);
    let mut import = client
        .inner
        .clone()
        .import_customers(client.request(rows))
        .await
        .unwrap()
        .into_inner();
    rows_tx
        .send(pb::ImportCustomersRequest {
            row_ref: "before".into(),
            customer: Some(ada()),
            request_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(import.next().await.unwrap().unwrap().row_ref, "before");

    // What SIGTERM does: cancel the shutdown token.
    app.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    rows_tx
        .send(pb::ImportCustomersRequest {
            row_ref: "during".into(),
            customer: Some(ada()),
            request_id: String::new(),
        })
        .await
        .unwrap();
    drop(rows_tx);

    let rest: Vec<_> = import.map(|r| r.unwrap().row_ref).collect().await;
    assert_eq!(rest, ["during"], "the in-flight call finished its work");
    let stopped = tokio::time::timeout(Duration::from_secs(10), app_server(app)).await;
    assert!(
        stopped.is_ok(),
        "the server stops once in-flight calls are done"
    );
}

async fn app_server(mut app: crate::common::TestApp) {
    let handle = std::mem::replace(&mut app.server, tokio::spawn(async { Ok(()) }));
    handle.await.unwrap().unwrap();
}
