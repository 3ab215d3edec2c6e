//! How the service behaves when its dependencies fail. (Draining at shutdown is the platform's,
//! tested in crm-platform's `serving` tests.)

use std::time::Duration;

use crate::common::{
    Client, Outage, ada, assert_error, config, fresh_database, health_of, postgres_addr,
    redis_addr, redis_url, spawn_with, via, within,
};
use tokio::time::Instant;
use tonic::Code;

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
