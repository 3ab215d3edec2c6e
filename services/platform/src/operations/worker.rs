//! The workers that run operations off the request path, and the context a handler gets.

use std::time::Duration;

use bytes::Bytes;
use crm_proto::google::rpc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::store::{self, Claimed, State};
use super::{Handler, INTERRUPTED, OnRestart, OperationStore, Outcome, RETENTION, operation_name};
use crate::error::ApiError;

/// How often an idle worker looks for work that no wake-up announced (queued by another
/// replica, or a lease that ran out).
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a worker waits after a database error before trying again.
const ERROR_BACKOFF: Duration = Duration::from_secs(2);

/// How often finished operations older than [`RETENTION`] are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// What a handler sees of its operation: the request, a way to report progress, and whether
/// it should stop.
#[derive(Debug, Clone)]
pub struct OperationContext {
    id: Uuid,
    request: Bytes,
    pool: PgPool,
    owner: Uuid,
    lease: Duration,
    cancel: CancellationToken,
}

impl OperationContext {
    /// The operation's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The operation's resource name, `operations/<uuid>`.
    pub fn name(&self) -> String {
        operation_name(self.id)
    }

    /// The request the operation was started with, decoded.
    pub fn request<M: prost::Message + Default>(&self) -> Result<M, rpc::Status> {
        M::decode(self.request.clone()).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!("stored request of {}: {e}", self.name()))
                .into_rpc_status()
        })
    }

    /// Whether the operation should stop: CancelOperation was called, or this worker lost it.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `Err(CANCELLED)` once the operation should stop; call it between units of work and
    /// return the error with `?`.
    pub fn checkpoint(&self) -> Result<(), rpc::Status> {
        if self.is_cancelled() {
            Err(cancelled_status())
        } else {
            Ok(())
        }
    }

    /// Records progress in the operation's metadata (visible to GetOperation) and renews the
    /// lease. A failed write is logged and skipped: progress is advisory, the outcome is not.
    pub async fn progress(&self, stage: &str, items_done: i64, items_total: Option<i64>) {
        let progress = Some((stage, items_done, items_total));
        match store::renew(&self.pool, self.id, self.owner, self.lease, progress).await {
            Ok(Some(true)) | Ok(None) => self.cancel.cancel(),
            Ok(Some(false)) => {}
            Err(err) => tracing::warn!(operation = %self.name(), error = %err,
                "recording operation progress failed"),
        }
    }
}

/// The status of an operation that was cancelled.
pub(super) fn cancelled_status() -> rpc::Status {
    rpc::Status {
        code: tonic::Code::Cancelled as i32,
        message: "the operation was cancelled".into(),
        details: Vec::new(),
    }
}

/// The status of an operation its process stopped running and that cannot be resumed.
fn interrupted_status() -> rpc::Status {
    ApiError::Aborted {
        reason: INTERRUPTED,
        message: "the operation was interrupted when the process running it stopped; \
                  start it again"
            .into(),
    }
    .into_rpc_status()
}

/// Starts `store`'s workers and its purge loop.
pub(super) fn spawn(store: &OperationStore, shutdown: &CancellationToken) {
    for _ in 0..store.workers {
        tokio::spawn(work(store.clone(), shutdown.clone()));
    }
    tokio::spawn(purge(store.clone(), shutdown.clone()));
}

/// One worker: claims operations and runs them one at a time until `shutdown`.
async fn work(store: OperationStore, shutdown: CancellationToken) {
    let owner = Uuid::now_v7();
    let kinds: Vec<&str> = store.handlers.keys().copied().collect();
    while !shutdown.is_cancelled() {
        let pause = match store::claim(&store.pool, owner, &kinds, store.lease).await {
            Ok(Some(claimed)) => {
                run_claimed(&store, owner, claimed, &shutdown).await;
                continue;
            }
            Ok(None) => POLL_INTERVAL,
            Err(err) => {
                // Before migrations ran, or while the database is away: try again later.
                tracing::debug!(service = store.service, error = %err, "claiming an operation failed");
                ERROR_BACKOFF
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = store.wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Runs one claimed operation to its end (or hands it back when the process stops).
async fn run_claimed(
    store: &OperationStore,
    owner: Uuid,
    claimed: Claimed,
    shutdown: &CancellationToken,
) {
    let id = claimed.id;
    let handler = &store.handlers[claimed.kind.as_str()];
    if claimed.previous_state == State::Running {
        tracing::warn!(operation = %operation_name(id), kind = %claimed.kind,
            "taking over an operation whose process stopped");
        let ended = if claimed.cancel_requested {
            Some((State::Cancelled, cancelled_status()))
        } else if handler.on_restart == OnRestart::Fail {
            Some((State::Failed, interrupted_status()))
        } else {
            None
        };
        if let Some((state, status)) = ended {
            end(store, id, owner, state, Err(status)).await;
            return;
        }
    }
    let ctx = OperationContext {
        id,
        request: Bytes::from(claimed.request),
        pool: store.pool.clone(),
        owner,
        lease: store.lease,
        cancel: CancellationToken::new(),
    };
    match supervise(store, handler, ctx, shutdown).await {
        Supervised::Finished(cancel_requested, outcome) => {
            let state = match &outcome {
                Ok(_) => State::Succeeded,
                Err(status) if cancel_requested || status.code == tonic::Code::Cancelled as i32 => {
                    State::Cancelled
                }
                Err(_) => State::Failed,
            };
            let outcome = match outcome {
                Err(_) if state == State::Cancelled => Err(cancelled_status()),
                other => other,
            };
            end(store, id, owner, state, outcome).await;
        }
        Supervised::Stopping => {
            let result = if handler.on_restart == OnRestart::Resume {
                store::release(&store.pool, id, owner).await
            } else {
                store::finish(
                    &store.pool,
                    id,
                    owner,
                    State::Failed,
                    None,
                    Some(&interrupted_status()),
                )
                .await
                .map(drop)
            };
            if let Err(err) = result {
                // The lease runs out and the next process takes it over.
                tracing::warn!(operation = %operation_name(id), error = %err,
                    "handing back an operation at shutdown failed");
            }
        }
        Supervised::LeaseLost => {}
    }
}

enum Supervised {
    /// The handler returned; whether a cancel had been requested, and what it returned.
    Finished(bool, Outcome),
    /// The process is stopping; the handler was stopped.
    Stopping,
    /// Another worker owns the operation now; the handler was stopped.
    LeaseLost,
}

/// Runs the handler in a task of its own (so a panic ends the operation instead of the worker),
/// renewing the lease and passing cancel requests on, until it returns or the process stops.
async fn supervise(
    store: &OperationStore,
    handler: &Handler,
    ctx: OperationContext,
    shutdown: &CancellationToken,
) -> Supervised {
    let (id, owner, cancel) = (ctx.id, ctx.owner, ctx.cancel.clone());
    let mut task = tokio::spawn((handler.run)(ctx));
    let mut renew = tokio::time::interval(store.lease / 3);
    let mut cancel_requested = false;
    loop {
        tokio::select! {
            joined = &mut task => {
                let outcome = joined.unwrap_or_else(|err| {
                    Err(ApiError::Internal(anyhow::anyhow!("the operation's handler failed: {err}"))
                        .into_rpc_status())
                });
                return Supervised::Finished(cancel_requested || cancel.is_cancelled(), outcome);
            }
            () = shutdown.cancelled() => {
                task.abort();
                return Supervised::Stopping;
            }
            _ = renew.tick() => {
                match store::renew(&store.pool, id, owner, store.lease, None).await {
                    Ok(Some(requested)) => {
                        if requested {
                            cancel_requested = true;
                            cancel.cancel();
                        }
                    }
                    Ok(None) => {
                        tracing::warn!(operation = %operation_name(id), "lost the operation's lease; stopping it");
                        task.abort();
                        return Supervised::LeaseLost;
                    }
                    Err(err) => tracing::warn!(operation = %operation_name(id), error = %err,
                        "renewing an operation's lease failed"),
                }
            }
        }
    }
}

/// Stores how the operation ended.
async fn end(store: &OperationStore, id: Uuid, owner: Uuid, state: State, outcome: Outcome) {
    let (response, error) = match &outcome {
        Ok(response) => (Some(response), None),
        Err(status) => (None, Some(status)),
    };
    // A failed write leaves it RUNNING with a lease that runs out: the next worker resumes or
    // fails it, so it is never stuck.
    match store::finish(&store.pool, id, owner, state, response, error).await {
        Ok(true) => tracing::info!(operation = %operation_name(id), ?state, "operation ended"),
        Ok(false) => tracing::warn!(operation = %operation_name(id),
            "operation ended after another worker took it over; result dropped"),
        Err(err) => tracing::warn!(operation = %operation_name(id), error = %err,
            "storing an operation's outcome failed"),
    }
}

/// Deletes finished operations older than [`RETENTION`], hourly, until `shutdown`.
async fn purge(store: OperationStore, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PURGE_INTERVAL) => {}
        }
        match store::purge_finished(&store.pool, RETENTION).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                service = store.service,
                purged = n,
                "purged finished operations"
            ),
            Err(err) => tracing::warn!(service = store.service, error = %err,
                "purging finished operations failed"),
        }
    }
}
