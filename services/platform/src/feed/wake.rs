//! Waking feed readers after commits, in every instance of a service: writers tell a local
//! notifier, which sends one `NOTIFY <schema>_changes` per burst; one LISTEN connection per
//! process bumps a watch channel that every open stream waits on.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// How long commits are gathered into one notification.
const COALESCE: Duration = Duration::from_millis(5);

/// How long the listener waits before reconnecting after losing its connection.
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// The notification channel of `schema`'s feed.
pub(super) fn channel_name(schema: &str) -> String {
    format!("{schema}_changes")
}

/// Turns bursts of `committed` signals into one NOTIFY on `channel`, until `shutdown`. NOTIFY
/// inside the write transaction would take PostgreSQL's global notify lock until commit and
/// serialize all writes, hence this separate loop.
pub(super) fn spawn_notifier(
    db: PgPool,
    channel: String,
    committed: Arc<Notify>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = committed.notified() => {}
            }
            if let Err(err) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(&channel)
                .execute(&db)
                .await
            {
                tracing::debug!(error = %err, "cannot notify feed readers; they poll instead");
            }
            // Commits in the next few milliseconds ride on the next notification.
            tokio::time::sleep(COALESCE).await;
        }
    });
}

/// Bumps `readers` for every notification on `channel`; returns only on a connection error.
async fn listen(
    db: &PgPool,
    channel: &str,
    readers: &watch::Sender<u64>,
) -> Result<Infallible, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(db).await?;
    listener.listen(channel).await?;
    loop {
        listener.recv().await?;
        readers.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Listens on `channel` and bumps `readers` for every notification, until `shutdown`;
/// reconnects after errors (readers poll meanwhile).
pub(super) fn spawn_listener(
    db: PgPool,
    channel: String,
    readers: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                result = listen(&db, &channel, &readers) => {
                    let Err(err) = result;
                    tracing::debug!(error = %err, "change listener lost its connection; polling until it is back");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RECONNECT_AFTER) => {}
            }
        }
    });
}
