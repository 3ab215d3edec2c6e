//! `idempotency::run` against the real PostgreSQL, in a service schema migrated by
//! `Database::migrate` (so `request_ids` is the platform's migration): replay, reuse, expiry,
//! purge, failures, races, and forgetting an erased subject's responses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crm_platform::ApiError;
use crm_platform::db::Database;
use crm_platform::idempotency::{
    BatchClaim, Outcome, REMEMBER_FOR, REQUEST_SUBJECT_ERASED, Subject, claim_batch,
    forget_subject, purge_expired, release_batch, request_hash, run, store_batch,
};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tonic_types::StatusExt;

use crate::support::{config, eventually, fresh_database, within};

/// The service schema the tests' request ids live in.
const SCHEMA: &str = "idem";
/// How long the contract (proto/README.md) promises a request id is remembered. The tests age
/// rows against this figure, not against the code's constant, so a wrong constant fails them.
const CONTRACT_MEMORY: Duration = Duration::from_secs(24 * 60 * 60);
const METHOD: &str = "CreateThing";
/// The pool size of the service under test.
const POOL_SIZE: usize = 4;

/// A service with no migrations of its own: its schema holds the platform's tables only.
static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

/// A fresh database with the `idem` schema migrated as a service's is, plus a `things` table
/// the work writes to; its pool's `search_path` is `idem`.
async fn service_schema() -> PgPool {
    let url = fresh_database().await;
    let config = config(&[
        ("CRM__DATABASE__URL", &url),
        ("CRM__DATABASE__MAX_CONNECTIONS", &POOL_SIZE.to_string()),
    ]);
    let db = Database::connect_lazy(&config.database, SCHEMA, &NO_MIGRATIONS).unwrap();
    within(db.migrate()).await.unwrap();
    sqlx::query("CREATE TABLE things (name text NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    db.pool
}

/// The work of a CreateThing call: inserts a thing named `request` and answers `response`.
async fn create_thing(
    tx: &mut sqlx::PgConnection,
    request: &str,
    response: &str,
) -> Result<(String, ()), ApiError> {
    sqlx::query("INSERT INTO things (name) VALUES ($1)")
        .bind(request)
        .execute(&mut *tx)
        .await?;
    Ok((response.to_string(), ()))
}

/// The thing named `name`, as the subject of the responses about it.
fn thing(name: &str) -> Subject {
    Subject::new("test.Thing", name)
}

/// CreateThing `request` (about the thing of that name) under `request_id`, in a transaction of
/// its own that commits unless `run` failed.
async fn call(
    pool: &PgPool,
    request_id: &str,
    request: &str,
    response: &str,
) -> Result<Outcome<String, ()>, ApiError> {
    let mut tx = pool.begin().await.unwrap();
    let request = request.to_string();
    let about = [thing(&request)];
    let outcome = run(&mut tx, METHOD, request_id, &request, &about, async |tx| {
        create_thing(tx, &request, response).await
    })
    .await?;
    tx.commit().await.unwrap();
    Ok(outcome)
}

fn ran(response: &str) -> Outcome<String, ()> {
    Outcome::Ran(response.to_string(), ())
}

fn replayed(response: &str) -> Outcome<String, ()> {
    Outcome::Replayed(response.to_string())
}

/// The hash `run` stores for `request`.
fn hash_of(request: &str) -> Vec<u8> {
    request_hash(&prost::Message::encode_to_vec(&request.to_string()))
}

fn encoded(response: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&response.to_string())
}

/// (request_hash, response) of every stored row of `request_id`, read from the service schema
/// by name.
async fn stored(pool: &PgPool, request_id: &str) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    sqlx::query_as(&format!(
        "SELECT request_hash, response FROM {SCHEMA}.request_ids WHERE request_id = $1"
    ))
    .bind(request_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The names of the things the committed work inserted, in order.
async fn things(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT name FROM things ORDER BY name")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Moves the claim of `request_id` `age` into the past.
async fn age(pool: &PgPool, request_id: &str, age: Duration) {
    sqlx::query(
        "UPDATE request_ids SET create_time = now() - make_interval(secs => $2) \
         WHERE request_id = $1",
    )
    .bind(request_id)
    .bind(age.as_secs_f64())
    .execute(pool)
    .await
    .unwrap();
}

fn one_minute_past_expiry() -> Duration {
    CONTRACT_MEMORY + Duration::from_secs(60)
}

/// Backends of this database waiting on a lock.
async fn lock_waiters(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Whether a transaction has run the work and sits open: its claim is not visible to others,
/// so look for the open transaction whose last statement was the work's.
async fn work_done_in_open_transaction(pool: &PgPool) -> bool {
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state = 'idle in transaction' AND query LIKE 'INSERT INTO things%'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    open == 1
}

#[tokio::test]
async fn a_first_call_runs_the_work_once_and_stores_its_response_in_the_service_schema() {
    let pool = service_schema().await;

    let outcome = call(&pool, "req-1", "ada", "ada created").await.unwrap();

    assert_eq!(outcome, ran("ada created"));
    assert_eq!(things(&pool).await, ["ada"]);
    assert_eq!(
        stored(&pool, "req-1").await,
        [(hash_of("ada"), Some(encoded("ada created")))]
    );
}

#[tokio::test]
async fn a_repeated_call_replays_the_stored_response_without_running_the_work() {
    let pool = service_schema().await;
    call(&pool, "req-1", "ada", "ada created").await.unwrap();

    let outcome = call(&pool, "req-1", "ada", "a second ada").await.unwrap();

    assert_eq!(outcome, replayed("ada created"));
    assert_eq!(things(&pool).await, ["ada"], "the work must not run again");
    assert_eq!(
        stored(&pool, "req-1").await,
        [(hash_of("ada"), Some(encoded("ada created")))],
        "the replay must leave the stored response alone"
    );
}

#[tokio::test]
async fn an_empty_request_id_runs_the_work_every_time_and_claims_nothing() {
    let pool = service_schema().await;

    let first = call(&pool, "", "ada", "ada created").await.unwrap();
    let second = call(&pool, "", "ada", "ada created").await.unwrap();

    assert_eq!((first, second), (ran("ada created"), ran("ada created")));
    assert_eq!(things(&pool).await, ["ada", "ada"]);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM request_ids")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn the_same_id_for_a_different_request_is_already_exists_request_id_reused() {
    let pool = service_schema().await;
    call(&pool, "req-1", "ada", "ada created").await.unwrap();

    let err = call(&pool, "req-1", "grace", "grace created")
        .await
        .unwrap_err();

    assert!(matches!(err, ApiError::AlreadyExists { .. }), "{err:?}");
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "REQUEST_ID_REUSED");
    assert_eq!(things(&pool).await, ["ada"], "the work must not run");
    assert_eq!(
        stored(&pool, "req-1").await,
        [(hash_of("ada"), Some(encoded("ada created")))],
        "the first request's claim must stay"
    );
}

/// What `claim_batch` said of each request, as (kind, replayed response or refusal reason).
fn claim_kinds(claims: Vec<BatchClaim<String>>) -> Vec<(&'static str, String)> {
    claims
        .into_iter()
        .map(|claim| match claim {
            BatchClaim::New => ("new", String::new()),
            BatchClaim::Replayed(response) => ("replayed", response),
            BatchClaim::Refused(err) => {
                let status = tonic::Status::from(err);
                let reason = status.get_details_error_info().unwrap().reason;
                if reason == "REQUEST_ID_REUSED" {
                    assert!(status.message().contains(METHOD), "{status:?}");
                }
                ("refused", reason)
            }
        })
        .collect()
}

#[tokio::test]
async fn a_batch_claim_shares_ids_and_hashes_with_single_calls() {
    let pool = service_schema().await;
    call(&pool, "single", "ada", "ada created").await.unwrap();
    let (ada, grace, linus) = ("ada".to_string(), "grace".to_string(), "linus".to_string());
    let mut tx = pool.begin().await.unwrap();

    let claims = claim_batch::<_, String>(
        &mut tx,
        METHOD,
        &[("single", &ada), ("new-1", &grace), ("new-2", &linus)],
    )
    .await
    .unwrap();
    let grace_subject = Subject::new("people", "grace");
    store_batch(
        &mut tx,
        METHOD,
        &[("new-1", &"grace created".to_string(), &grace_subject)],
    )
    .await
    .unwrap();
    release_batch(&mut tx, METHOD, &["new-2"]).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!(
        claim_kinds(claims),
        [
            ("replayed", "ada created".to_string()),
            ("new", String::new()),
            ("new", String::new())
        ]
    );
    assert_eq!(
        call(&pool, "new-1", "grace", "again").await.unwrap(),
        replayed("grace created")
    );
    assert!(
        stored(&pool, "new-2").await.is_empty(),
        "a released claim is free"
    );
    let mut tx = pool.begin().await.unwrap();
    let again = claim_batch::<_, String>(&mut tx, METHOD, &[("single", &grace), ("new-2", &linus)])
        .await
        .unwrap();
    assert_eq!(
        claim_kinds(again),
        [
            ("refused", "REQUEST_ID_REUSED".to_string()),
            ("new", String::new())
        ]
    );
    tx.rollback().await.unwrap();

    // A batch-stored response is about its subject: erasing the subject forgets it, and the
    // batch claim then refuses the id as a single call would.
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(forget_subject(&mut tx, &grace_subject).await.unwrap(), 1);
    let after_erase = claim_batch::<_, String>(&mut tx, METHOD, &[("new-1", &grace)])
        .await
        .unwrap();
    assert_eq!(
        claim_kinds(after_erase),
        [("refused", REQUEST_SUBJECT_ERASED.to_string())]
    );
}

#[tokio::test]
async fn the_same_id_for_another_method_is_a_separate_claim() {
    let pool = service_schema().await;
    call(&pool, "req-1", "ada", "ada created").await.unwrap();

    let mut tx = pool.begin().await.unwrap();
    let request = "merge".to_string();
    let outcome = run(&mut tx, "MergeThings", "req-1", &request, &[], async |tx| {
        create_thing(tx, &request, "merged").await
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(outcome, ran("merged"));
    assert_eq!(stored(&pool, "req-1").await.len(), 2);
}

#[tokio::test]
async fn a_failed_work_stores_nothing_and_a_retry_runs_it_again() {
    let pool = service_schema().await;
    let mut tx = pool.begin().await.unwrap();
    let request = "ada".to_string();

    // The work fails on the database, which aborts the transaction.
    let failed = run(&mut tx, METHOD, "req-1", &request, &[], async |tx| {
        sqlx::query("INSERT INTO no_such_table VALUES (1)")
            .execute(&mut *tx)
            .await?;
        Ok::<_, ApiError>((String::from("never"), ()))
    })
    .await;
    drop(tx);

    assert!(matches!(failed, Err(ApiError::Internal(_))), "{failed:?}");
    assert_eq!(stored(&pool, "req-1").await, []);
    let retry = call(&pool, "req-1", "ada", "ada created").await.unwrap();
    assert_eq!(
        retry,
        ran("ada created"),
        "the retry must do the work itself"
    );
    assert_eq!(things(&pool).await, ["ada"]);
}

#[tokio::test]
async fn a_failed_work_releases_its_claim_even_when_the_caller_commits() {
    let pool = service_schema().await;
    let mut tx = pool.begin().await.unwrap();
    let request = "ada".to_string();

    // The work refuses the request without a database error: the transaction stays usable
    // and the caller commits it.
    let failed = run(&mut tx, METHOD, "req-1", &request, &[], async |_tx| {
        Err::<(String, ()), _>(ApiError::invalid("name", "is taken"))
    })
    .await;
    tx.commit().await.unwrap();

    assert!(
        matches!(failed, Err(ApiError::InvalidArgument(_))),
        "{failed:?}"
    );
    assert_eq!(
        stored(&pool, "req-1").await,
        [],
        "no claim without a response"
    );
    let retry = call(&pool, "req-1", "ada", "ada created").await.unwrap();
    assert_eq!(retry, ran("ada created"));
}

#[tokio::test]
async fn a_claim_whose_transaction_rolls_back_leaves_the_id_free() {
    let pool = service_schema().await;
    let mut abandoned = pool.begin().await.unwrap();
    let request = "ada".to_string();
    let outcome = run(&mut abandoned, METHOD, "req-1", &request, &[], async |tx| {
        create_thing(tx, &request, "ada created").await
    })
    .await
    .unwrap();
    assert_eq!(outcome, ran("ada created"));
    abandoned.rollback().await.unwrap();

    let retry = call(&pool, "req-1", "ada", "ada created").await.unwrap();

    assert_eq!(
        retry,
        ran("ada created"),
        "the retry must do the work itself"
    );
    assert_eq!(things(&pool).await, ["ada"]);
    assert_eq!(stored(&pool, "req-1").await.len(), 1);
}

#[tokio::test]
async fn a_call_racing_an_unfinished_one_waits_and_replays_its_response() {
    let pool = service_schema().await;
    let (finish, mut finished) = tokio::sync::oneshot::channel::<()>();

    // The first call claims the id and does the work, then holds its transaction open until
    // told to finish.
    let first = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let request = "ada".to_string();
            let outcome = run(&mut tx, METHOD, "req-1", &request, &[], async |tx| {
                let created = create_thing(tx, &request, "ada created").await;
                (&mut finished).await.unwrap();
                created
            })
            .await
            .unwrap();
            tx.commit().await.unwrap();
            outcome
        }
    });
    eventually("the first call has done its work", || {
        work_done_in_open_transaction(&pool)
    })
    .await;
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { call(&pool, "req-1", "ada", "a second ada").await }
    });
    eventually("the second call waits on the first one's claim", || async {
        lock_waiters(&pool).await == 1
    })
    .await;
    finish.send(()).unwrap();

    let (first, second) = (within(first).await.unwrap(), within(second).await.unwrap());

    assert_eq!(first, ran("ada created"));
    assert_eq!(second.unwrap(), replayed("ada created"));
    assert_eq!(things(&pool).await, ["ada"], "the work ran once");
}

#[tokio::test]
async fn many_identical_concurrent_calls_run_the_work_exactly_once() {
    let pool = service_schema().await;
    let runs = AtomicUsize::new(0);
    let calls = 4 * POOL_SIZE;

    let outcomes = within(futures::future::join_all((0..calls).map(|_| async {
        let mut tx = pool.begin().await?;
        let request = "ada".to_string();
        let outcome = run(&mut tx, METHOD, "req-1", &request, &[], async |tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            // Long enough for the other calls to arrive while the claim is open.
            tokio::time::sleep(Duration::from_millis(50)).await;
            create_thing(tx, &request, "ada created").await
        })
        .await?;
        tx.commit().await?;
        Ok::<_, ApiError>(outcome)
    })))
    .await;

    let outcomes: Vec<_> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the work ran once");
    assert_eq!(things(&pool).await, ["ada"]);
    assert_eq!(outcomes.iter().filter(|o| !o.is_replay()).count(), 1);
    for outcome in outcomes {
        assert_eq!(outcome.into_response(), "ada created");
    }
}

#[tokio::test]
async fn an_id_older_than_the_memory_window_counts_as_new() {
    let pool = service_schema().await;
    call(&pool, "req-1", "ada", "ada created").await.unwrap();
    age(&pool, "req-1", one_minute_past_expiry()).await;

    let outcome = call(&pool, "req-1", "grace", "grace created")
        .await
        .unwrap();

    assert_eq!(
        outcome,
        ran("grace created"),
        "an expired id must be claimed afresh"
    );
    assert_eq!(
        stored(&pool, "req-1").await,
        [(hash_of("grace"), Some(encoded("grace created")))]
    );
    let fresh: bool =
        sqlx::query_scalar("SELECT create_time > now() - interval '1 hour' FROM request_ids")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(fresh, "the new claim must restart the memory window");
}

#[tokio::test]
async fn an_id_just_inside_the_memory_window_still_replays() {
    let pool = service_schema().await;
    call(&pool, "req-1", "ada", "ada created").await.unwrap();
    age(&pool, "req-1", CONTRACT_MEMORY - Duration::from_secs(60)).await;

    let outcome = call(&pool, "req-1", "ada", "a second ada").await.unwrap();

    assert_eq!(outcome, replayed("ada created"));
}

#[tokio::test]
async fn purging_deletes_only_expired_request_ids() {
    let pool = service_schema().await;
    for id in ["fresh", "almost-expired", "expired", "long-expired"] {
        call(&pool, id, id, "done").await.unwrap();
    }
    age(
        &pool,
        "almost-expired",
        CONTRACT_MEMORY - Duration::from_secs(60),
    )
    .await;
    age(&pool, "expired", one_minute_past_expiry()).await;
    age(&pool, "long-expired", CONTRACT_MEMORY * 7).await;

    let purged = purge_expired(&pool).await.unwrap();

    assert_eq!(purged, 2);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT request_id FROM request_ids ORDER BY request_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(left, ["almost-expired", "fresh"]);
}

/// Forgets `subject` in a transaction of its own, as an erasure does; how many were forgotten.
async fn forget(pool: &PgPool, subject: &Subject) -> u64 {
    let mut tx = pool.begin().await.unwrap();
    let forgotten = forget_subject(&mut tx, subject).await.unwrap();
    tx.commit().await.unwrap();
    forgotten
}

fn assert_subject_erased(err: ApiError) {
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, REQUEST_SUBJECT_ERASED);
}

#[tokio::test]
async fn forgetting_a_subject_drops_its_stored_responses_and_hashes_and_keeps_the_others() {
    let pool = service_schema().await;
    call(&pool, "req-1", "ada", "ada created").await.unwrap();
    call(&pool, "req-2", "ada", "ada created").await.unwrap();
    call(&pool, "req-3", "grace", "grace created")
        .await
        .unwrap();

    let forgotten = forget(&pool, &thing("ada")).await;

    assert_eq!(forgotten, 2);
    for id in ["req-1", "req-2"] {
        assert_eq!(stored(&pool, id).await, [(Vec::new(), None)], "{id}");
    }
    assert_eq!(
        stored(&pool, "req-3").await,
        [(hash_of("grace"), Some(encoded("grace created")))]
    );
    assert_eq!(
        forget(&pool, &thing("ada")).await,
        0,
        "nothing left to forget"
    );
}

#[tokio::test]
async fn a_replay_of_a_forgotten_request_is_failed_precondition_and_does_not_run_the_work() {
    let pool = service_schema().await;
    call(&pool, "req-1", "ada", "ada created").await.unwrap();
    forget(&pool, &thing("ada")).await;

    let same = call(&pool, "req-1", "ada", "ada again").await.unwrap_err();
    let different = call(&pool, "req-1", "grace", "grace").await.unwrap_err();

    assert_subject_erased(same);
    assert_subject_erased(different);
    assert_eq!(things(&pool).await, ["ada"], "the work must not run again");
}

#[tokio::test]
async fn a_response_about_several_subjects_is_forgotten_with_any_of_them() {
    let pool = service_schema().await;
    let mut tx = pool.begin().await.unwrap();
    let request = "ada+grace".to_string();
    let about = [thing("ada"), thing("grace")];
    run(
        &mut tx,
        "MergeThings",
        "req-1",
        &request,
        &about,
        async |tx| create_thing(tx, &request, "merged").await,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(forget(&pool, &thing("grace")).await, 1);

    assert_eq!(stored(&pool, "req-1").await, [(Vec::new(), None)]);
}

#[tokio::test]
async fn a_forgotten_id_past_the_memory_window_counts_as_new() {
    let pool = service_schema().await;
    call(&pool, "req-1", "ada", "ada created").await.unwrap();
    forget(&pool, &thing("ada")).await;
    age(&pool, "req-1", one_minute_past_expiry()).await;

    let outcome = call(&pool, "req-1", "grace", "grace created")
        .await
        .unwrap();

    assert_eq!(outcome, ran("grace created"));
    assert_eq!(
        stored(&pool, "req-1").await,
        [(hash_of("grace"), Some(encoded("grace created")))]
    );
}

#[test]
fn request_ids_are_remembered_for_the_24_hours_the_contract_states() {
    assert_eq!(REMEMBER_FOR, CONTRACT_MEMORY);
}
