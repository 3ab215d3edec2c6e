//! Request-id claims in the caller's transaction: replay, reuse, expiry, purge and races.

use crm_platform::ApiError;
use crm_platform::idempotency::{REMEMBER_FOR, complete, purge_expired, replay, request_hash};
use sqlx::PgPool;
use std::time::Duration;
use tonic_types::StatusExt;

use crate::support::{eventually, fresh_database, pool, within};

const SCHEMA: &str = "idem";
/// How long the contract (proto/README.md) promises a request id is remembered. The tests age
/// rows against this figure, not against the code's constant, so a wrong constant fails them.
const CONTRACT_MEMORY: Duration = Duration::from_secs(24 * 60 * 60);
const METHOD: &str = "/crm.test.v1.TestService/CreateThing";

/// A fresh database holding `idem.request_ids` as the module documents it.
async fn request_ids_table() -> PgPool {
    let pool = pool(&fresh_database().await).await;
    sqlx::query(&format!("CREATE SCHEMA {SCHEMA}"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {SCHEMA}.request_ids (
             method       text        NOT NULL,
             request_id   text        NOT NULL,
             request_hash bytea       NOT NULL,
             response     bytea,
             create_time  timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (method, request_id)
         )"
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool
}

/// Claims `request_id` in a transaction of its own; when it is new, completes it with
/// `response` and commits. Returns what the claim returned.
async fn call(pool: &PgPool, request_id: &str, request: &[u8], response: &str) -> Option<String> {
    let mut tx = pool.begin().await.unwrap();
    let hash = request_hash(request);
    let replayed = replay::<String>(&mut tx, SCHEMA, METHOD, request_id, &hash)
        .await
        .unwrap();
    if replayed.is_none() {
        complete(&mut tx, SCHEMA, METHOD, request_id, &response.to_string())
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    replayed
}

/// (request_hash, response) of every stored row of `request_id`.
async fn stored(pool: &PgPool, request_id: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    sqlx::query_as(&format!(
        "SELECT request_hash, response FROM {SCHEMA}.request_ids WHERE request_id = $1"
    ))
    .bind(request_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Moves the claim of `request_id` `age` into the past.
async fn age(pool: &PgPool, request_id: &str, age: Duration) {
    sqlx::query(&format!(
        "UPDATE {SCHEMA}.request_ids SET create_time = now() - make_interval(secs => $2) \
         WHERE request_id = $1"
    ))
    .bind(request_id)
    .bind(age.as_secs_f64())
    .execute(pool)
    .await
    .unwrap();
}

fn one_minute_past_expiry() -> Duration {
    CONTRACT_MEMORY + Duration::from_secs(60)
}

#[tokio::test]
async fn a_first_call_claims_the_id_and_stores_its_response() {
    let pool = request_ids_table().await;

    let replayed = call(&pool, "req-1", b"create ada", "ada created").await;

    assert_eq!(replayed, None);
    let encoded = prost::Message::encode_to_vec(&"ada created".to_string());
    assert_eq!(
        stored(&pool, "req-1").await,
        [(request_hash(b"create ada"), Some(encoded))]
    );
}

#[tokio::test]
async fn a_completed_request_id_replays_the_stored_response() {
    let pool = request_ids_table().await;
    call(&pool, "req-1", b"create ada", "ada created").await;

    let replayed = call(&pool, "req-1", b"create ada", "a second ada").await;

    assert_eq!(replayed.as_deref(), Some("ada created"));
    let encoded = prost::Message::encode_to_vec(&"ada created".to_string());
    assert_eq!(
        stored(&pool, "req-1").await,
        [(request_hash(b"create ada"), Some(encoded))],
        "the replay must leave the stored response alone"
    );
}

#[tokio::test]
async fn an_empty_request_id_is_never_claimed() {
    let pool = request_ids_table().await;

    let first = call(&pool, "", b"create ada", "ada created").await;
    let second = call(&pool, "", b"create ada", "ada created").await;

    assert_eq!((first, second), (None, None));
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {SCHEMA}.request_ids"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn the_same_id_for_a_different_request_is_already_exists_request_id_reused() {
    let pool = request_ids_table().await;
    call(&pool, "req-1", b"create ada", "ada created").await;

    let mut tx = pool.begin().await.unwrap();
    let err = replay::<String>(
        &mut tx,
        SCHEMA,
        METHOD,
        "req-1",
        &request_hash(b"create grace"),
    )
    .await
    .unwrap_err();
    tx.rollback().await.unwrap();

    assert!(matches!(err, ApiError::AlreadyExists { .. }), "{err:?}");
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "REQUEST_ID_REUSED");
    let encoded = prost::Message::encode_to_vec(&"ada created".to_string());
    assert_eq!(
        stored(&pool, "req-1").await,
        [(request_hash(b"create ada"), Some(encoded))],
        "the first request's claim must stay"
    );
}

#[tokio::test]
async fn the_same_id_for_another_method_is_a_separate_claim() {
    let pool = request_ids_table().await;
    call(&pool, "req-1", b"create ada", "ada created").await;

    let mut tx = pool.begin().await.unwrap();
    let other_method = "/crm.test.v1.TestService/MergeThings";
    let replayed = replay::<String>(
        &mut tx,
        SCHEMA,
        other_method,
        "req-1",
        &request_hash(b"merge"),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(replayed, None);
    assert_eq!(stored(&pool, "req-1").await.len(), 2);
}

#[tokio::test]
async fn an_id_older_than_the_memory_window_counts_as_new() {
    let pool = request_ids_table().await;
    call(&pool, "req-1", b"create ada", "ada created").await;
    age(&pool, "req-1", one_minute_past_expiry()).await;

    let replayed = call(&pool, "req-1", b"create grace", "grace created").await;

    assert_eq!(replayed, None, "an expired id must be claimed afresh");
    let encoded = prost::Message::encode_to_vec(&"grace created".to_string());
    assert_eq!(
        stored(&pool, "req-1").await,
        [(request_hash(b"create grace"), Some(encoded))]
    );
    let fresh: bool = sqlx::query_scalar(&format!(
        "SELECT create_time > now() - interval '1 hour' FROM {SCHEMA}.request_ids"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(fresh, "the new claim must restart the memory window");
}

#[tokio::test]
async fn an_id_just_inside_the_memory_window_still_replays() {
    let pool = request_ids_table().await;
    call(&pool, "req-1", b"create ada", "ada created").await;
    age(&pool, "req-1", CONTRACT_MEMORY - Duration::from_secs(60)).await;

    let replayed = call(&pool, "req-1", b"create ada", "a second ada").await;

    assert_eq!(replayed.as_deref(), Some("ada created"));
}

#[tokio::test]
async fn purging_deletes_only_expired_request_ids() {
    let pool = request_ids_table().await;
    for id in ["fresh", "almost-expired", "expired", "long-expired"] {
        call(&pool, id, id.as_bytes(), "done").await;
    }
    age(
        &pool,
        "almost-expired",
        CONTRACT_MEMORY - Duration::from_secs(60),
    )
    .await;
    age(&pool, "expired", one_minute_past_expiry()).await;
    age(&pool, "long-expired", CONTRACT_MEMORY * 7).await;

    let purged = purge_expired(&pool, SCHEMA).await.unwrap();

    assert_eq!(purged, 2);
    let left: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT request_id FROM {SCHEMA}.request_ids ORDER BY request_id"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(left, ["almost-expired", "fresh"]);
}

#[tokio::test]
async fn one_id_claimed_by_two_concurrent_transactions_has_one_winner_and_one_replay() {
    let pool = request_ids_table().await;
    let hash = request_hash(b"create ada");
    let mut winner = pool.begin().await.unwrap();
    let claimed = replay::<String>(&mut winner, SCHEMA, METHOD, "req-1", &hash)
        .await
        .unwrap();
    assert_eq!(claimed, None, "the first transaction claims the id");

    // The second claim waits on the first transaction's row lock.
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { call(&pool, "req-1", b"create ada", "a second ada").await }
    });
    eventually("the second claim waits on the first one's lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        waiting == 1
    })
    .await;
    complete(
        &mut winner,
        SCHEMA,
        METHOD,
        "req-1",
        &"ada created".to_string(),
    )
    .await
    .unwrap();
    winner.commit().await.unwrap();

    let replayed = within(second).await.unwrap();

    assert_eq!(replayed.as_deref(), Some("ada created"));
    let encoded = prost::Message::encode_to_vec(&"ada created".to_string());
    assert_eq!(stored(&pool, "req-1").await, [(hash, Some(encoded))]);
}

#[tokio::test]
async fn a_claim_whose_transaction_rolls_back_leaves_the_id_free() {
    let pool = request_ids_table().await;
    let hash = request_hash(b"create ada");
    let mut abandoned = pool.begin().await.unwrap();
    let claimed = replay::<String>(&mut abandoned, SCHEMA, METHOD, "req-1", &hash)
        .await
        .unwrap();
    assert_eq!(claimed, None);
    abandoned.rollback().await.unwrap();

    let replayed = call(&pool, "req-1", b"create ada", "ada created").await;

    assert_eq!(replayed, None, "the retry must do the work itself");
    assert_eq!(stored(&pool, "req-1").await.len(), 1);
}

#[test]
fn request_ids_are_remembered_for_the_24_hours_the_contract_states() {
    assert_eq!(REMEMBER_FOR, CONTRACT_MEMORY);
}
