//! Long-running operations (AIP-151): work returned to the caller at once as a
//! `google.longrunning.Operation`, run off the request path, with progress in its metadata,
//! cooperative cancellation and a defined outcome when the process dies mid-operation.
//!
//! A service builds one [`OperationStore`] over its own schema (table `operations`, a platform
//! migration) and registers a handler per operation kind. A write RPC starts an operation with
//! [`OperationStore::start`] inside its own transaction (so request-id idempotency replays the
//! same operation), commits, then calls [`OperationStore::wake`]. The server runs a few workers
//! per store ([`OperationStore::spawn_workers`]) and serves one `google.longrunning.Operations`
//! ([`OperationsService`]) for every store of the process.
//!
//! Workers claim queued operations with `FOR UPDATE SKIP LOCKED` and hold a lease they renew
//! while the handler runs. A RUNNING operation whose lease expired belonged to a process that
//! died: a resumable kind ([`OnRestart::Resume`]) is run again from the start, any other ends
//! `ABORTED` with reason `INTERRUPTED`, so nothing stays RUNNING. Finished operations are kept
//! for [`RETENTION`], then purged.

mod service;
mod store;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crm_proto::crm::common::v1::Principal as CommonPrincipal;
use crm_proto::google::longrunning::Operation;
use crm_proto::google::rpc;
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ApiError;

pub use service::OperationsService;
pub use worker::OperationContext;

/// How long finished operations are kept (proto/README.md: 30 days).
pub const RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// How long a worker's claim on a running operation lasts without renewal; it renews every
/// third of it, so a live worker never loses it and a dead one's work is taken over soon.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The gRPC name of the Operations service.
pub const OPERATIONS_GRPC_SERVICE: &str = "google.longrunning.Operations";

/// The type of `Operation.metadata`.
pub const METADATA_TYPE: &str = "crm.common.v1.OperationMetadata";

/// The reason (`ErrorInfo.reason`) of an operation that its process stopped running and that
/// cannot be resumed.
pub const INTERRUPTED: &str = "INTERRUPTED";

/// What a handler gives back: the operation's response, or the error it ends with.
pub type Outcome = Result<prost_types::Any, rpc::Status>;

/// What happens to an operation of this kind whose process stopped while it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRestart {
    /// Run it again from the start (the handler is safe to repeat).
    Resume,
    /// End it `ABORTED` with reason [`INTERRUPTED`].
    Fail,
}

type HandlerFn = Arc<dyn Fn(OperationContext) -> BoxFuture<'static, Outcome> + Send + Sync>;

#[derive(Clone)]
struct Handler {
    run: HandlerFn,
    on_restart: OnRestart,
}

/// One service's operations: its table, its handlers, and the wake-up its workers wait on.
#[derive(Clone)]
pub struct OperationStore {
    service: &'static str,
    pool: PgPool,
    handlers: Arc<HashMap<&'static str, Handler>>,
    wake: Arc<Notify>,
    lease: Duration,
    workers: usize,
}

impl std::fmt::Debug for OperationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperationStore")
            .field("service", &self.service)
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl OperationStore {
    /// The operations of `service` (its short name, e.g. `customer`: callers need
    /// `customer.read` to read them and `customer.write` to cancel or delete them), kept in the
    /// `operations` table reached through `pool` (whose `search_path` is the service's schema).
    pub fn new(service: &'static str, pool: PgPool) -> Self {
        Self {
            service,
            pool,
            handlers: Arc::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            lease: DEFAULT_LEASE,
            workers: 2,
        }
    }

    /// Registers the handler of operations of `kind`.
    ///
    /// # Panics
    ///
    /// If `kind` already has a handler (a programming error).
    pub fn handler<F, Fut>(mut self, kind: &'static str, on_restart: OnRestart, run: F) -> Self
    where
        F: Fn(OperationContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let run: HandlerFn = Arc::new(move |ctx| Box::pin(run(ctx)));
        let previous = Arc::make_mut(&mut self.handlers).insert(kind, Handler { run, on_restart });
        assert!(
            previous.is_none(),
            "operation kind {kind:?} registered twice"
        );
        self
    }

    /// Sets the lease (default [`DEFAULT_LEASE`]); short leases let tests play a dead process.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Sets how many operations of this service run at once in this process (default 2).
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// The service's short name, e.g. `customer`.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Queues an operation of `kind` with its `request`, inside the caller's transaction, and
    /// returns it as the caller sees it (not done). Call [`wake`](Self::wake) after the commit.
    pub async fn start(
        &self,
        conn: &mut PgConnection,
        kind: &'static str,
        request: &impl prost::Message,
        requested_by: &CommonPrincipal,
    ) -> Result<Operation, ApiError> {
        if !self.handlers.contains_key(kind) {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "no handler for operations of kind {kind:?} in {}",
                self.service
            )));
        }
        let row = store::insert(
            conn,
            Uuid::now_v7(),
            kind,
            &request.encode_to_vec(),
            requested_by,
        )
        .await?;
        Ok(row.to_proto())
    }

    /// Tells an idle worker that an operation was queued (after the commit that queued it).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The operation `id` as GetOperation returns it, if this service has it.
    pub async fn get(&self, id: Uuid) -> Result<Option<Operation>, ApiError> {
        let row = store::fetch(&self.pool, id).await?;
        Ok(row.map(|r| r.to_proto()))
    }

    /// Deletes operations that finished more than `retention` ago (the workers do this hourly
    /// with [`RETENTION`]); returns how many.
    pub async fn purge_finished(&self, retention: Duration) -> Result<u64, ApiError> {
        Ok(store::purge_finished(&self.pool, retention).await?)
    }

    /// Starts this store's workers and its retention purge; they stop when `shutdown` is
    /// cancelled.
    pub fn spawn_workers(&self, shutdown: &CancellationToken) {
        worker::spawn(self, shutdown);
    }
}

/// The resource name of operation `id`: `operations/<uuid>`.
pub fn operation_name(id: Uuid) -> String {
    format!("operations/{id}")
}

/// The id in an operation's resource name; INVALID_ARGUMENT on `field` when it is missing or
/// not `operations/<uuid>`.
pub fn parse_operation_name(field: &str, name: &str) -> Result<Uuid, ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid(field, "is required"));
    }
    name.strip_prefix("operations/")
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| ApiError::invalid(field, "must be `operations/<uuid>`"))
}

/// Wraps `message` as an `Any` of type `type_name` (e.g. `crm.customer.v1.ScanDuplicateCustomersResponse`),
/// as an operation's response.
pub fn pack(type_name: &str, message: &impl prost::Message) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: message.encode_to_vec(),
    }
}

/// The `google.rpc.Status` an operation ends with when its handler fails with `err` (the same
/// code and details a call would carry; internal causes are logged, never stored).
pub fn failure(err: ApiError) -> rpc::Status {
    err.into_rpc_status()
}
