//! Long-running operations against the real PostgreSQL: the state machine a worker drives, the
//! Operations methods (called directly, with the principal the auth layer would attach), and
//! what happens to an operation whose process died.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use crm_platform::auth::Principal;
use crm_platform::db::Database;
use crm_platform::operations::{
    OnRestart, OperationContext, OperationStore, OperationsService, Outcome, RETENTION, pack,
};
use crm_platform::page_token::PageTokenCodec;
use crm_proto::crm::common::v1::{OperationMetadata, Principal as CommonPrincipal, PrincipalKind};
use crm_proto::google::longrunning::operations_server::Operations;
use crm_proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    Operation, WaitOperationRequest, operation,
};
use crm_proto::google::rpc;
use prost::Message;
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::support::{config, eventually, fresh_database, within};

const SCHEMA: &str = "ops";

/// A service with no migrations of its own: only the platform's tables.
static NO_MIGRATIONS: Migrator = Migrator {
    migrations: Cow::Borrowed(&[]),
    ..Migrator::DEFAULT
};

/// The echo handler's request and response: it ends with this status (OK means success).
type Echo = rpc::Status;

fn echo(code: Code, message: &str) -> Echo {
    rpc::Status {
        code: code as i32,
        message: message.into(),
        details: Vec::new(),
    }
}

/// Reports progress, then ends as the request says.
async fn run_echo(ctx: OperationContext) -> Outcome {
    let request: Echo = ctx.request()?;
    ctx.progress("echoing", 1, Some(1)).await;
    if request.code == Code::Ok as i32 {
        Ok(pack("google.rpc.Status", &request))
    } else {
        Err(request)
    }
}

/// Runs until cancelled.
async fn run_until_cancelled(ctx: OperationContext) -> Outcome {
    ctx.progress("waiting", 1, Some(2)).await;
    loop {
        ctx.checkpoint()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes longer than several leases, renewing nothing itself.
async fn run_slowly(_ctx: OperationContext) -> Outcome {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(pack("google.rpc.Status", &echo(Code::Ok, "slow")))
}

struct Fixture {
    database: Database,
    store: OperationStore,
    service: OperationsService,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A migrated schema on a fresh database with a pool of `pool_size`, and a store of service
/// `demo` with the test handlers; workers are not started.
async fn fixture_with_pool(pool_size: u32) -> Fixture {
    let url = fresh_database().await;
    let pool_size = pool_size.to_string();
    let config = config(&[
        ("CRM__DATABASE__URL", &url),
        ("CRM__DATABASE__MAX_CONNECTIONS", &pool_size),
    ]);
    let database = Database::connect_lazy(&config.database, SCHEMA, &NO_MIGRATIONS).unwrap();
    within(database.migrate()).await.unwrap();
    let store = OperationStore::new("demo", database.pool.clone())
        .with_lease(Duration::from_millis(300))
        .handler("echo", OnRestart::Resume, run_echo)
        .handler("block", OnRestart::Fail, run_until_cancelled)
        .handler("slow", OnRestart::Fail, run_slowly)
        .handler("patient", OnRestart::Resume, run_until_cancelled);
    let service = OperationsService::new(
        vec![store.clone()],
        PageTokenCodec::new(b"operations-test-key"),
        Duration::from_secs(10),
    );
    Fixture {
        database,
        store,
        service,
        shutdown: CancellationToken::new(),
    }
}

async fn fixture() -> Fixture {
    fixture_with_pool(4).await
}

fn caller() -> CommonPrincipal {
    CommonPrincipal {
        kind: PrincipalKind::User as i32,
        id: "tester".into(),
    }
}

/// A request as the auth layer hands it on for a token with `scopes`.
fn as_caller<T>(scopes: &[&str], message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(Principal {
        subject: "tester".into(),
        scopes: scopes
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        kind: PrincipalKind::User,
    });
    request
}

fn full<T>(message: T) -> tonic::Request<T> {
    as_caller(&["demo.read", "demo.write"], message)
}

impl Fixture {
    async fn start(&self, kind: &'static str, request: &Echo) -> Operation {
        let mut conn = self.database.pool.acquire().await.unwrap();
        let operation = self
            .store
            .start(&mut conn, kind, request, &caller())
            .await
            .unwrap();
        self.store.wake();
        operation
    }

    fn run_workers(&self) {
        self.store.spawn_workers(&self.shutdown);
    }

    async fn get(&self, name: &str) -> Result<Operation, tonic::Status> {
        let request = full(GetOperationRequest { name: name.into() });
        Ok(within(self.service.get_operation(request))
            .await?
            .into_inner())
    }

    async fn wait(&self, name: &str, timeout: Option<Duration>) -> Operation {
        let request = full(WaitOperationRequest {
            name: name.into(),
            timeout: timeout.map(|t| t.try_into().unwrap()),
        });
        within(self.service.wait_operation(request))
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits (through WaitOperation, repeatedly) until `name` is done.
    async fn until_done(&self, name: &str) -> Operation {
        within(async {
            loop {
                let operation = self.wait(name, Some(Duration::from_secs(2))).await;
                if operation.done {
                    return operation;
                }
            }
        })
        .await
    }

    async fn cancel(&self, name: &str) -> Result<(), tonic::Status> {
        let request = full(CancelOperationRequest { name: name.into() });
        within(self.service.cancel_operation(request))
            .await
            .map(drop)
    }

    async fn delete(&self, name: &str) -> Result<(), tonic::Status> {
        let request = full(DeleteOperationRequest { name: name.into() });
        within(self.service.delete_operation(request))
            .await
            .map(drop)
    }

    async fn list(&self, filter: &str, page_size: i32, page_token: &str) -> ListPage {
        let request = full(ListOperationsRequest {
            name: "operations".into(),
            filter: filter.into(),
            page_size,
            page_token: page_token.into(),
            return_partial_success: false,
        });
        within(self.service.list_operations(request))
            .await
            .map(|r| {
                let r = r.into_inner();
                (
                    r.operations.into_iter().map(|o| o.name).collect(),
                    r.next_page_token,
                )
            })
    }

    /// Plays a process that died while running `name`: RUNNING under a lease that ran out.
    async fn abandon(&self, name: &str) {
        let id = name.strip_prefix("operations/").unwrap();
        sqlx::query(
            "UPDATE operations SET state = 'RUNNING', lease_owner = gen_random_uuid(), \
             lease_expire_time = now() - interval '1 second' WHERE id = $1::uuid",
        )
        .bind(id)
        .execute(&self.database.pool)
        .await
        .unwrap();
    }
}

type ListPage = Result<(Vec<String>, String), tonic::Status>;

fn metadata(operation: &Operation) -> OperationMetadata {
    let any = operation.metadata.as_ref().expect("metadata is always set");
    assert_eq!(
        any.type_url,
        "type.googleapis.com/crm.common.v1.OperationMetadata"
    );
    OperationMetadata::decode(any.value.as_slice()).unwrap()
}

fn error_of(operation: &Operation) -> rpc::Status {
    match &operation.result {
        Some(operation::Result::Error(status)) => status.clone(),
        other => panic!("expected an error result, got {other:?}"),
    }
}

fn response_of(operation: &Operation) -> Echo {
    match &operation.result {
        Some(operation::Result::Response(any)) => {
            assert_eq!(any.type_url, "type.googleapis.com/google.rpc.Status");
            Echo::decode(any.value.as_slice()).unwrap()
        }
        other => panic!("expected a response, got {other:?}"),
    }
}

fn field_violations(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_operation_is_queued_then_run_by_a_worker_and_done_with_its_response() {
    let fx = fixture().await;
    let started = fx.start("echo", &echo(Code::Ok, "hello")).await;
    let queued = fx.get(&started.name).await.unwrap();

    fx.run_workers();
    let done = fx.until_done(&started.name).await;

    assert!(started.name.starts_with("operations/"), "{}", started.name);
    assert!(!started.done && !queued.done);
    assert_eq!(metadata(&queued).stage, "queued");
    assert!(queued.result.is_none());
    assert_eq!(response_of(&done).message, "hello");
    let meta = metadata(&done);
    assert_eq!((meta.items_done, meta.items_total), (1, Some(1)));
    assert!(meta.end_time.is_some());
    assert_eq!(meta.requested_by, Some(caller()));
}

#[tokio::test]
async fn a_failing_handler_ends_the_operation_with_its_error() {
    let fx = fixture().await;
    fx.run_workers();
    let started = fx
        .start("echo", &echo(Code::FailedPrecondition, "no way"))
        .await;

    let done = fx.until_done(&started.name).await;

    let error = error_of(&done);
    assert_eq!(error.code, Code::FailedPrecondition as i32);
    assert_eq!(error.message, "no way");
}

#[tokio::test]
async fn cancelling_a_running_operation_ends_it_cancelled_at_its_next_checkpoint() {
    let fx = fixture().await;
    fx.run_workers();
    let started = fx.start("block", &echo(Code::Ok, "")).await;
    eventually("the operation reports progress", || async {
        metadata(&fx.get(&started.name).await.unwrap()).stage == "waiting"
    })
    .await;

    fx.cancel(&started.name).await.unwrap();
    let done = fx.until_done(&started.name).await;

    assert_eq!(error_of(&done).code, Code::Cancelled as i32);
    assert!(metadata(&done).cancel_requested);
}

#[tokio::test]
async fn cancelling_a_queued_operation_ends_it_at_once_and_no_worker_runs_it() {
    let fx = fixture().await;
    let started = fx.start("echo", &echo(Code::Ok, "never")).await;

    fx.cancel(&started.name).await.unwrap();
    let cancelled = fx.get(&started.name).await.unwrap();
    fx.run_workers();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = fx.get(&started.name).await.unwrap();

    assert!(cancelled.done);
    assert_eq!(error_of(&cancelled).code, Code::Cancelled as i32);
    assert_eq!(error_of(&later).code, Code::Cancelled as i32);
}

#[tokio::test]
async fn wait_returns_the_operation_unfinished_when_its_timeout_passes() {
    let fx = fixture().await;
    let started = fx.start("block", &echo(Code::Ok, "")).await;

    let began = tokio::time::Instant::now();
    let waited = fx
        .wait(&started.name, Some(Duration::from_millis(300)))
        .await;

    assert!(!waited.done);
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn wait_answers_before_the_callers_deadline() {
    let fx = fixture().await;
    let started = fx.start("block", &echo(Code::Ok, "")).await;
    let mut request = full(WaitOperationRequest {
        name: started.name.clone(),
        timeout: None,
    });
    request
        .metadata_mut()
        .insert("grpc-timeout", "800m".parse().unwrap());

    let began = tokio::time::Instant::now();
    let waited = within(fx.service.wait_operation(request)).await.unwrap();

    assert!(!waited.into_inner().done);
    assert!(began.elapsed() < Duration::from_millis(800));
}

#[tokio::test]
async fn only_done_operations_can_be_deleted() {
    let fx = fixture().await;
    let running = fx.start("block", &echo(Code::Ok, "")).await;
    let finished = fx.start("echo", &echo(Code::Ok, "")).await;
    fx.cancel(&finished.name).await.unwrap();

    let not_done = fx.delete(&running.name).await.unwrap_err();
    fx.delete(&finished.name).await.unwrap();
    let gone = fx.get(&finished.name).await.unwrap_err();
    let again = fx.delete(&finished.name).await.unwrap_err();

    assert_eq!(not_done.code(), Code::FailedPrecondition, "{not_done:?}");
    assert!(!fx.get(&running.name).await.unwrap().done);
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(again.code(), Code::NotFound);
}

#[tokio::test]
async fn malformed_names_are_invalid_on_name_and_unknown_ones_not_found() {
    let fx = fixture().await;

    for name in [
        "",
        "operations/",
        "operations/42",
        "jobs/0190a5c2-7b3e-7c1a-9f2d-3e4b5c6d7e8f",
    ] {
        let status = fx.get(name).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?}: {status:?}");
        assert_eq!(field_violations(&status), ["name"], "{name:?}");
        let status = fx.cancel(name).await.unwrap_err();
        assert_eq!(field_violations(&status), ["name"], "cancel {name:?}");
    }
    let unknown = "operations/0190a5c2-7b3e-7c1a-9f2d-3e4b5c6d7e8f";
    for status in [
        fx.get(unknown).await.unwrap_err(),
        fx.cancel(unknown).await.unwrap_err(),
        fx.delete(unknown).await.unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
}

#[tokio::test]
async fn list_pages_newest_first_and_filters_on_done() {
    let fx = fixture().await;
    let mut names = Vec::new();
    for _ in 0..5 {
        names.push(fx.start("echo", &echo(Code::Ok, "")).await.name);
    }
    for name in &names[..2] {
        fx.cancel(name).await.unwrap();
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..3 {
        let (page, next) = fx.list("", 2, &token).await.unwrap();
        assert!(page.len() <= 2);
        seen.extend(page);
        token = next;
        if token.is_empty() {
            break;
        }
    }
    let (done, _) = fx.list("done = true", 0, "").await.unwrap();
    let (running, _) = fx.list("done = false", 0, "").await.unwrap();

    let newest_first: Vec<String> = names.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    assert!(token.is_empty(), "the third page is the last");
    assert_eq!(
        done.into_iter().collect::<HashSet<_>>(),
        names[..2].iter().cloned().collect()
    );
    assert_eq!(running.len(), 3);
}

#[tokio::test]
async fn list_rejects_a_bad_filter_name_or_page_token_naming_the_field() {
    let fx = fixture().await;
    for _ in 0..3 {
        fx.start("echo", &echo(Code::Ok, "")).await;
    }
    let (_, token) = fx.list("done = false", 1, "").await.unwrap();

    let unknown_field = fx.list("kind = \"x\"", 0, "").await.unwrap_err();
    let other_query = fx.list("done = true", 1, &token).await.unwrap_err();
    let negative = fx.list("", -1, "").await.unwrap_err();
    let bad_name = within(fx.service.list_operations(full(ListOperationsRequest {
        name: "jobs".into(),
        ..Default::default()
    })))
    .await
    .unwrap_err();

    assert_eq!(field_violations(&unknown_field), ["filter"]);
    assert_eq!(field_violations(&other_query), ["page_token"]);
    assert_eq!(field_violations(&negative), ["page_size"]);
    assert_eq!(field_violations(&bad_name), ["name"]);
}

#[tokio::test]
async fn reading_needs_the_services_read_scope_and_cancelling_its_write_scope() {
    let fx = fixture().await;
    let started = fx.start("block", &echo(Code::Ok, "")).await;
    let name = started.name.clone();

    let get_without = fx
        .service
        .get_operation(as_caller(
            &["other.read"],
            GetOperationRequest { name: name.clone() },
        ))
        .await
        .unwrap_err();
    let list_without = fx
        .service
        .list_operations(as_caller(&["other.read"], ListOperationsRequest::default()))
        .await
        .unwrap_err();
    let cancel_read_only = fx
        .service
        .cancel_operation(as_caller(
            &["demo.read"],
            CancelOperationRequest { name: name.clone() },
        ))
        .await
        .unwrap_err();
    let get_read_only = fx
        .service
        .get_operation(as_caller(
            &["demo.read"],
            GetOperationRequest { name: name.clone() },
        ))
        .await;

    assert_eq!(get_without.code(), Code::PermissionDenied);
    assert!(
        get_without.message().contains("demo.read"),
        "{get_without:?}"
    );
    assert_eq!(list_without.code(), Code::PermissionDenied);
    assert_eq!(cancel_read_only.code(), Code::PermissionDenied);
    assert!(cancel_read_only.message().contains("demo.write"));
    assert!(get_read_only.is_ok());
    assert!(!metadata(&fx.get(&name).await.unwrap()).cancel_requested);
}

#[tokio::test]
async fn after_a_restart_a_resumable_operation_is_run_again_and_another_ends_interrupted() {
    let fx = fixture().await;
    let resumable = fx.start("echo", &echo(Code::Ok, "resumed")).await;
    let fragile = fx.start("block", &echo(Code::Ok, "")).await;
    fx.abandon(&resumable.name).await;
    fx.abandon(&fragile.name).await;

    fx.run_workers();
    let resumed = fx.until_done(&resumable.name).await;
    let interrupted = fx.until_done(&fragile.name).await;

    assert_eq!(response_of(&resumed).message, "resumed");
    let error = error_of(&interrupted);
    assert_eq!(error.code, Code::Aborted as i32);
    let reasons: Vec<String> = error
        .details
        .iter()
        .filter(|d| d.type_url.ends_with("google.rpc.ErrorInfo"))
        .map(|d| {
            tonic_types::pb::ErrorInfo::decode(d.value.as_slice())
                .unwrap()
                .reason
        })
        .collect();
    assert_eq!(reasons, ["INTERRUPTED"]);
}

#[tokio::test]
async fn a_running_operation_keeps_its_lease_while_its_handler_works() {
    let fx = fixture().await;
    fx.run_workers();
    let started = fx.start("slow", &echo(Code::Ok, "")).await;

    let done = fx.until_done(&started.name).await;

    // 1.5 s of work under a 300 ms lease: without renewal the second worker would have taken
    // it over (a second attempt), and as a non-resumable kind it would have ended INTERRUPTED.
    assert_eq!(response_of(&done).message, "slow");
    let id = started.name.strip_prefix("operations/").unwrap();
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM operations WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&fx.database.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn at_shutdown_a_resumable_operation_is_queued_again_and_another_ends_interrupted() {
    let fx = fixture().await;
    let worker_stop = CancellationToken::new();
    let resumable = fx.start("patient", &echo(Code::Ok, "")).await;
    let fragile = fx.start("block", &echo(Code::Ok, "")).await;
    fx.store.spawn_workers(&worker_stop);
    eventually("both operations run", || async {
        let a = metadata(&fx.get(&resumable.name).await.unwrap()).stage;
        let b = metadata(&fx.get(&fragile.name).await.unwrap()).stage;
        a == "waiting" && b == "waiting"
    })
    .await;

    worker_stop.cancel();
    eventually("the fragile operation is ended", || async {
        fx.get(&fragile.name).await.unwrap().done
    })
    .await;
    eventually("the resumable operation is queued", || async {
        metadata(&fx.get(&resumable.name).await.unwrap()).stage == "queued"
    })
    .await;

    assert_eq!(
        error_of(&fx.get(&fragile.name).await.unwrap()).code,
        Code::Aborted as i32
    );
    assert!(!fx.get(&resumable.name).await.unwrap().done);
}

#[tokio::test]
async fn finished_operations_are_purged_after_the_retention_period() {
    let fx = fixture().await;
    let old = fx.start("echo", &echo(Code::Ok, "")).await;
    let recent = fx.start("echo", &echo(Code::Ok, "")).await;
    let queued = fx.start("echo", &echo(Code::Ok, "")).await;
    fx.cancel(&old.name).await.unwrap();
    fx.cancel(&recent.name).await.unwrap();
    sqlx::query("UPDATE operations SET end_time = now() - interval '31 days' WHERE id = $1::uuid")
        .bind(old.name.strip_prefix("operations/").unwrap())
        .execute(&fx.database.pool)
        .await
        .unwrap();

    let purged = fx.store.purge_finished(RETENTION).await.unwrap();

    assert_eq!(purged, 1);
    assert_eq!(fx.get(&old.name).await.unwrap_err().code(), Code::NotFound);
    assert!(fx.get(&recent.name).await.unwrap().done);
    assert!(!fx.get(&queued.name).await.unwrap().done);
}

#[tokio::test]
async fn get_list_and_wait_at_four_times_the_pool_size_all_succeed() {
    let pool_size = 2;
    let fx = fixture_with_pool(pool_size).await;
    fx.run_workers();
    let started = fx.start("echo", &echo(Code::Ok, "")).await;
    fx.until_done(&started.name).await;

    let calls = (0..4 * pool_size).map(|i| {
        let (fx, name) = (&fx, started.name.clone());
        async move {
            match i % 3 {
                0 => fx.get(&name).await.map(drop),
                1 => fx.list("", 10, "").await.map(drop),
                _ => fx
                    .service
                    .wait_operation(full(WaitOperationRequest {
                        name,
                        timeout: Some(Duration::from_millis(100).try_into().unwrap()),
                    }))
                    .await
                    .map(drop),
            }
        }
    });
    let results = within(futures::future::join_all(calls)).await;

    let failed: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test]
async fn cancel_and_delete_at_four_times_the_pool_size_all_succeed() {
    let pool_size = 2;
    let fx = fixture_with_pool(pool_size).await;
    // No workers: the operations stay queued, so each cancel ends one at once.
    let mut names = Vec::new();
    for _ in 0..4 * pool_size {
        names.push(fx.start("block", &echo(Code::Ok, "")).await.name);
    }

    let cancelled = within(futures::future::join_all(
        names.iter().map(|name| fx.cancel(name)),
    ))
    .await;
    let deleted = within(futures::future::join_all(
        names.iter().map(|name| fx.delete(name)),
    ))
    .await;

    let failed: Vec<_> = cancelled
        .into_iter()
        .chain(deleted)
        .filter_map(Result::err)
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    for name in &names {
        let gone = fx.get(name).await.unwrap_err();
        assert_eq!(gone.code(), Code::NotFound, "{name} was deleted: {gone:?}");
    }
}
