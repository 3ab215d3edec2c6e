//! How the service behaves when its dependencies fail, at its deadlines and at shutdown.
//! (Draining unary calls at shutdown is the platform's, tested in crm-platform's `serving`
//! tests; here the service's own streams.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{
    Client, Outage, ada, assert_error, config, fresh_database, health_of, postgres_addr,
    redis_addr, redis_url, spawn_app, spawn_with, via, within,
};
use crm_proto::crm::customer::v1 as pb;
use crm_proto::crm::customer::v1::import_customers_response::Kind;
use futures::StreamExt;
use tokio::time::Instant;
use tonic::Code;
use uuid::Uuid;

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// How long a test waits for a condition that the service reaches by itself within a few
/// seconds (readiness is re-checked every second, a pooled connection is awaited for at most a
/// second, Redis reconnects are tried once a second).
const CONDITION_DEADLINE: Duration = Duration::from_secs(20);

/// How often a waiting test looks again.
const POLL: Duration = Duration::from_millis(50);

#[tokio::test]
async fn calls_answer_correct_data_from_postgres_while_redis_is_unreachable_from_the_start() {
    let url = fresh_database().await;
    // Nothing listens on port 1: every Redis command fails.
    let app = spawn_with(config(&url, "redis://127.0.0.1:1", &[])).await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let before_update = client.get(&created.id).await.unwrap();

    let mut changed = before_update.clone();
    changed.display_name = "Ada King".into();
    let updated = client.update(changed, &["display_name"]).await.unwrap();
    let after_update = client.get(&updated.id).await.unwrap();

    assert_eq!(before_update, created);
    assert_eq!(updated.display_name, "Ada King");
    assert_eq!(after_update, updated);
}

#[tokio::test]
async fn calls_keep_answering_correct_data_from_postgres_when_redis_goes_away() {
    let url = fresh_database().await;
    let proxy = Outage::start(redis_addr()).await;
    let app = spawn_with(config(&url, &format!("redis://{}", proxy.addr), &[])).await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    client.get(&created.id).await.unwrap(); // cached in both tiers

    proxy.cut();
    let mut changed = created.clone();
    changed.display_name = "Ada King".into();
    let updated = client.update(changed, &["display_name"]).await.unwrap();
    let after_update = client.get(&created.id).await.unwrap();
    let new = client.create(ada()).await.unwrap();
    let new_read_back = client.get(&new.id).await.unwrap();

    assert_eq!(updated.display_name, "Ada King");
    assert_eq!(after_update, updated);
    assert_eq!(new_read_back, new);
    let stored: String =
        sqlx::query_scalar("SELECT display_name FROM customer.customers WHERE id = $1::uuid")
            .bind(&created.id)
            .fetch_one(&app.pool().await)
            .await
            .unwrap();
    assert_eq!(stored, "Ada King");
}

#[tokio::test]
async fn postgres_outage_is_unavailable_with_retry_info_and_the_service_recovers_by_itself() {
    let url = fresh_database().await;
    let proxy = Outage::start(postgres_addr()).await;
    let app = spawn_with(config(&via(&url, proxy.addr), &redis_url(), &[])).await;
    let client = app.client().await;
    client.create(ada()).await.unwrap();

    proxy.cut();
    let lost = ada();
    let status = client.create(lost.clone()).await.unwrap_err();

    assert_error(&status, Code::Unavailable, "DEPENDENCY_UNAVAILABLE");
    let retry = tonic_types::StatusExt::get_details_retry_info(&status)
        .expect("UNAVAILABLE carries RetryInfo");
    assert_eq!(
        retry.retry_delay,
        Some(Duration::from_secs(1)),
        "{status:?}"
    );
    wait_for(
        "health to turn NOT_SERVING while PostgreSQL is gone",
        || async { health_of(app.addr).await == NOT_SERVING },
    )
    .await;

    proxy.restore();
    wait_for("the service to recover when PostgreSQL returns", || async {
        client.create(ada()).await.is_ok() && health_of(app.addr).await == SERVING
    })
    .await;
    let lost_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM customer.customers WHERE email = $1")
            .bind(&lost.email)
            .fetch_one(&app.pool().await)
            .await
            .unwrap();
    assert_eq!(lost_rows, 0, "the refused create wrote nothing");
}

#[tokio::test]
async fn two_instances_sharing_redis_never_serve_a_stale_read_after_a_write() {
    let url = fresh_database().await;
    // A generous bound on waiting for the other instance's acknowledgement, so a slow, shared
    // CI machine does not turn a late acknowledgement into a stale read.
    let settings = [("CRM__REDIS__TIMEOUT_MS", "2000")];
    let a = spawn_with(config(&url, &redis_url(), &settings)).await;
    let b = spawn_with(config(&url, &redis_url(), &settings)).await;
    let (writer, reader) = (a.client().await, b.client().await);
    let tiers = InProcessProbe::new(&url, a.pool().await).await;
    tiers.wait_until_live(&writer).await;
    tiers.wait_until_live(&reader).await;
    let mut customer = writer.create(ada()).await.unwrap();

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
    assert!(
        tiers.serves_from_process(&reader).await,
        "the reader's in-process tier was still in use at the end"
    );
}

#[tokio::test]
async fn health_turns_not_serving_when_postgres_stops_answering_whatever_the_acquire_timeout() {
    let url = fresh_database().await;
    let proxy = Outage::start(postgres_addr()).await;
    // A pooled connection is awaited for a minute: health must not wait for it.
    let settings = [("CRM__DATABASE__ACQUIRE_TIMEOUT_MS", "60000")];
    let app = spawn_with(config(&via(&url, proxy.addr), &redis_url(), &settings)).await;

    // Frozen, not gone: nothing answers and nothing closes, so only a timeout can tell.
    proxy.stall();
    let stalled = Instant::now();
    wait_for(
        "health to turn NOT_SERVING while PostgreSQL is frozen",
        || async { health_of(app.addr).await == NOT_SERVING },
    )
    .await;
    let noticed = stalled.elapsed();
    proxy.restore();
    let restored = Instant::now();
    wait_for(
        "health to turn SERVING when PostgreSQL answers again",
        || async { health_of(app.addr).await == SERVING },
    )
    .await;

    eprintln!(
        "NOT_SERVING {} ms after PostgreSQL froze; SERVING {} ms after it answered again",
        noticed.as_millis(),
        restored.elapsed().as_millis()
    );
}

/// One create of the outage test: what the caller was told.
enum Told {
    Created(String),
    Refused(tonic::Status),
}

#[tokio::test]
async fn postgres_restarting_under_concurrent_creates_keeps_every_acknowledged_create() {
    let url = fresh_database().await;
    let proxy = Outage::start(postgres_addr()).await;
    let app = spawn_with(config(&via(&url, proxy.addr), &redis_url(), &[])).await;
    // Around the proxy, so the test can look while the service cannot.
    let direct = crm_platform::testing::pool(&url).await;
    let client = Arc::new(app.client().await);
    let stop = Arc::new(AtomicBool::new(false));
    // Four times the pool size (10) of callers, each creating until told to stop.
    let callers: Vec<_> = (0..40)
        .map(|_| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut told = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let request = client.request(pb::CreateCustomerRequest {
                        customer: Some(ada()),
                        request_id: Uuid::now_v7().to_string(),
                    });
                    match client.inner.clone().create_customer(request).await {
                        Ok(response) => {
                            told.push(Told::Created(response.into_inner().customer.unwrap().id))
                        }
                        Err(status) => {
                            told.push(Told::Refused(status));
                            // As a caller honouring RetryInfo would, if more briefly.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                told
            })
        })
        .collect();
    wait_for("creates to succeed before the outage", || async {
        count_customers(&direct).await > 0
    })
    .await;

    proxy.cut();
    wait_for("health to turn NOT_SERVING", || async {
        health_of(app.addr).await == NOT_SERVING
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await; // creates keep arriving while it is down
    proxy.restore();
    let restored = Instant::now();
    wait_for("health to turn SERVING again", || async {
        health_of(app.addr).await == SERVING
    })
    .await;
    let serving_after = restored.elapsed();
    let before_more = count_customers(&direct).await;
    wait_for("creates to succeed again", || async {
        count_customers(&direct).await > before_more
    })
    .await;
    let creating_after = restored.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for caller in callers {
        for told in within(caller).await.unwrap() {
            match told {
                Told::Created(id) => acknowledged.push(Uuid::parse_str(&id).unwrap()),
                Told::Refused(status) => refused.push(status),
            }
        }
    }

    let present: i64 =
        sqlx::query_scalar("SELECT count(*) FROM customer.customers WHERE id = ANY($1)")
            .bind(&acknowledged)
            .fetch_one(&direct)
            .await
            .unwrap();
    eprintln!(
        "{} acknowledged creates, {present} present; {} refused; SERVING {} ms and creating \
         again {} ms after PostgreSQL returned",
        acknowledged.len(),
        refused.len(),
        serving_after.as_millis(),
        creating_after.as_millis()
    );
    assert_eq!(
        present,
        acknowledged.len() as i64,
        "an acknowledged create was lost"
    );
    assert!(!refused.is_empty(), "no create ran into the outage");
    for status in &refused {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
}

async fn count_customers(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM customer.customers")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A Watch of the change feed from now on, with the caller's `deadline` if any.
async fn watch(
    client: &Client,
    deadline: Option<Duration>,
) -> tonic::Streaming<pb::WatchCustomerChangesResponse> {
    let mut request = client.request(pb::WatchCustomerChangesRequest::default());
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    client
        .inner
        .clone()
        .watch_customer_changes(request)
        .await
        .unwrap()
        .into_inner()
}

/// Reads `stream` until it ends with an error, which it returns.
async fn end_of<T>(stream: &mut tonic::Streaming<T>) -> tonic::Status {
    within(async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return status,
                None => panic!("the stream ended without an error"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_stream_outliving_the_callers_grpc_timeout_ends_with_deadline_exceeded() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut feed = watch(&client, Some(Duration::from_millis(300))).await;

    let status = end_of(&mut feed).await;

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn a_unary_call_outliving_the_default_deadline_is_deadline_exceeded() {
    let url = fresh_database().await;
    let app = spawn_with(config(
        &url,
        &redis_url(),
        &[("CRM__SERVER__DEFAULT_TIMEOUT_MS", "500")],
    ))
    .await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    // The update waits for this row lock until its deadline passes.
    let pool = app.pool().await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM customer.customers WHERE id = $1::uuid FOR UPDATE")
        .bind(&created.id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut changed = created.clone();
    changed.display_name = "Ada King".into();

    let status = client.update(changed, &["display_name"]).await.unwrap_err();
    holder.rollback().await.unwrap();

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn shutdown_ends_open_watch_and_import_streams_with_unavailable_and_keeps_what_was_acknowledged()
 {
    let url = fresh_database().await;
    // A drain bound far beyond what the test waits: the server has to stop because its streams
    // ended, not because the bound ran out.
    let settings = [("CRM__SERVER__SHUTDOWN_GRACE_SECS", "120")];
    let mut app = spawn_with(config(&url, &redis_url(), &settings)).await;
    let client = app.client().await;
    let mut feed = watch(&client, None).await;
    let (rows, rows_out) = tokio::sync::mpsc::channel(8);
    let mut import = client
        .inner
        .clone()
        .import_customers(client.request(tokio_stream::wrappers::ReceiverStream::new(rows_out)))
        .await
        .unwrap()
        .into_inner();
    let first = ada();
    rows.send(pb::ImportCustomersRequest {
        row_ref: "1".into(),
        customer: Some(first.clone()),
        request_id: Uuid::now_v7().to_string(),
    })
    .await
    .unwrap();
    let acknowledged = within(import.next()).await.unwrap().unwrap();
    let Some(Kind::Result(result)) = acknowledged.kind else {
        panic!("a row result: {acknowledged:?}");
    };

    // What SIGTERM does.
    app.shutdown.cancel();
    let watch_end = end_of(&mut feed).await;
    let import_end = end_of(&mut import).await;
    let stopped = app.stopped().await;

    for status in [&watch_end, &import_end] {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("resume"), "{status:?}");
    }
    stopped.expect("the server stopped cleanly once its streams ended");
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM customer.customers WHERE id = $1::uuid")
            .bind(&result.id)
            .fetch_one(&crm_platform::testing::pool(&url).await)
            .await
            .unwrap();
    assert_eq!(kept, 1, "the acknowledged row is committed");
    drop(rows);
}

/// Polls `condition` until it holds, failing the test after `CONDITION_DEADLINE`.
async fn wait_for<F, Fut>(what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + CONDITION_DEADLINE;
    loop {
        if within(condition()).await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited {CONDITION_DEADLINE:?} for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Shows from outside whether an instance answers from its in-process tier: it reads a
/// customer (filling its tiers), the row then changes in PostgreSQL behind the service's back
/// and its Redis entry is deleted, and it reads again. Only the in-process tier can still hold
/// the first answer. Each probe uses a customer of its own, left stale in that instance.
struct InProcessProbe {
    pool: sqlx::PgPool,
    redis: redis::aio::MultiplexedConnection,
    key_prefix: String,
}

impl InProcessProbe {
    async fn new(database_url: &str, pool: sqlx::PgPool) -> Self {
        let redis = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connecting to Redis");
        // As `common::config` sets `redis.key_prefix`; the service's keys are
        // `<prefix>:customer:customer:<id>`.
        let database = database_url.rsplit('/').next().unwrap();
        Self {
            pool,
            redis,
            key_prefix: format!("{database}:customer:customer"),
        }
    }

    /// Waits until the instance behind `client` answers from its in-process tier.
    async fn wait_until_live(&self, client: &Client) {
        wait_for("an instance's in-process cache tier to be live", || {
            self.serves_from_process(client)
        })
        .await;
    }

    async fn serves_from_process(&self, client: &Client) -> bool {
        let probe = client.create(ada()).await.unwrap();
        let first = client.get(&probe.id).await.unwrap();
        sqlx::query(
            "UPDATE customer.customers SET display_name = 'changed behind the cache', \
             version = version + 1 WHERE id = $1::uuid",
        )
        .bind(&probe.id)
        .execute(&self.pool)
        .await
        .unwrap();
        let deleted: i64 = redis::cmd("DEL")
            .arg(format!("{}:{}", self.key_prefix, probe.id))
            .query_async(&mut self.redis.clone())
            .await
            .unwrap();
        // Without this the probe would pass on a Redis hit, not only an in-process one.
        assert_eq!(
            deleted, 1,
            "the probe's Redis entry is named as the service names it"
        );
        let second = client.get(&probe.id).await.unwrap();
        second.display_name == first.display_name
    }
}
