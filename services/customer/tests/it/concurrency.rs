//! How the service behaves under load and when callers go away: calls beyond the pool size,
//! cancelled calls, deadlines, load shedding, request ids and the shutdown drain bound.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{CALL_TIMEOUT, Client, TestApp, ada, config, consent, fresh_database, within};
use crm_proto::crm::common::v1::Channel;
use crm_proto::crm::customer::v1 as pb;
use futures::future::{BoxFuture, join_all};
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;
use tonic::Code;
use uuid::Uuid;

/// The pool size of the servers here: small, so that a call holding two connections or leaking
/// one shows.
const POOL_SIZE: usize = 3;

/// Calls made at once: four times the pool.
const CALLS: usize = 4 * POOL_SIZE;

/// The `application_name` of the service's pooled connections (the health pool's differs).
const POOL_APPLICATION: &str = "crm-customer";

/// A server over a fresh database whose pool holds `POOL_SIZE` connections (acquire timeout as
/// the harness sets it) and which caches nothing, so every read reaches PostgreSQL.
async fn small_pool_app(extra: &[(&str, &str)]) -> TestApp {
    let url = fresh_database().await;
    let pool_size = POOL_SIZE.to_string();
    let mut env = vec![("CRM__DATABASE__MAX_CONNECTIONS", pool_size.as_str())];
    env.extend_from_slice(extra);
    crate::common::spawn_with(config(&url, "", &env)).await
}

/// Creates `n` customers, `CALLS` at a time.
async fn seed(client: &Client, n: usize) -> Vec<pb::Customer> {
    let mut created = Vec::with_capacity(n);
    while created.len() < n {
        let batch = (n - created.len()).min(CALLS);
        for result in join_all((0..batch).map(|_| client.create(ada()))).await {
            created.push(result.expect("seeding a customer"));
        }
    }
    created
}

/// Starts `CALLS` calls at once and waits for all of them.
async fn at_once<T, F, Fut>(call: F) -> Vec<Result<T, tonic::Status>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    join_all((0..CALLS).map(call)).await
}

/// How many items each of several calls returned.
type Counts = Vec<Result<usize, tonic::Status>>;

/// Asserts that every call of `rpc` succeeded and returns their results.
#[track_caller]
fn all_succeeded<T>(rpc: &str, results: Vec<Result<T, tonic::Status>>) -> Vec<T> {
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|status| format!("{:?}: {}", status.code(), status.message()))
        .collect();
    assert!(
        failures.is_empty(),
        "{rpc}: {} of {} calls made at once failed: {failures:?}",
        failures.len(),
        results.len()
    );
    results.into_iter().map(Result::unwrap).collect()
}

/// The (state, wait event type) of each of the service's pooled connections to the test database.
async fn pool_connections(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT coalesce(state, ''), coalesce(wait_event_type, '') FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(POOL_APPLICATION)
    .fetch_all(pool)
    .await
    .expect("reading pg_stat_activity")
}

/// Waits until none of the service's connections is running a statement or sits inside a
/// transaction, failing with their states if that never happens.
async fn wait_until_connections_are_idle(pool: &PgPool) {
    let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
    loop {
        let connections = pool_connections(pool).await;
        if connections.iter().all(|(state, _)| state == "idle") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pooled connections never went idle outside a transaction: {connections:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Holds a lock on the customer's row until the returned transaction ends.
async fn lock_row(pool: &PgPool, id: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("a test transaction");
    sqlx::query("SELECT 1 FROM customer.customers WHERE id = $1 FOR UPDATE")
        .bind(Uuid::parse_str(id).unwrap())
        .execute(&mut *tx)
        .await
        .expect("locking the customer's row");
    tx
}

fn rename(customer: &pb::Customer, display_name: &str) -> pb::UpdateCustomerRequest {
    pb::UpdateCustomerRequest {
        customer: Some(pb::Customer {
            display_name: display_name.into(),
            etag: String::new(),
            ..customer.clone()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["display_name".into()],
        }),
    }
}

fn interaction(customer_id: &str, subject: &str) -> pb::Interaction {
    pb::Interaction {
        customer_id: customer_id.into(),
        r#type: pb::InteractionType::Note as i32,
        subject: subject.into(),
        ..Default::default()
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test]
async fn list_customers_called_at_four_times_the_pool_size_all_succeed() {
    let app = small_pool_app(&[]).await;
    let client = app.client().await;
    seed(&client, 300).await;

    let pages = at_once(|_| {
        client.list(pb::ListCustomersRequest {
            page_size: 50,
            ..Default::default()
        })
    })
    .await;

    for page in all_succeeded("ListCustomers", pages) {
        assert_eq!(page.customers.len(), 50);
        assert!(
            !page.next_page_token.is_empty(),
            "300 customers fill 6 pages"
        );
    }
}

#[tokio::test]
async fn the_operations_called_at_four_times_the_pool_size_all_answer_unimplemented() {
    let app = small_pool_app(&[]).await;
    let client = app.client().await;
    let target = client.create(ada()).await.unwrap();

    let erasures = at_once(|_| {
        let mut inner = client.inner.clone();
        let request = client.request(pb::EraseCustomerRequest {
            id: target.id.clone(),
            reason: "ticket 42".into(),
            request_id: String::new(),
        });
        async move { inner.erase_customer(request).await }
    })
    .await;
    let exports = at_once(|_| {
        let mut inner = client.inner.clone();
        let request = client.request(pb::ExportCustomerDataRequest {
            id: target.id.clone(),
            request_id: String::new(),
        });
        async move { inner.export_customer_data(request).await }
    })
    .await;

    // Each looks the customer up on a pooled connection first: none may end UNAVAILABLE.
    for (rpc, results) in [("EraseCustomer", erasures), ("ExportCustomerData", exports)] {
        let codes: Vec<Code> = results
            .iter()
            .map(|r| r.as_ref().map_or_else(|s| s.code(), |_| Code::Ok))
            .collect();
        assert_eq!(codes, vec![Code::Unimplemented; CALLS], "{rpc}");
    }
}

#[tokio::test]
async fn every_read_called_at_four_times_the_pool_size_succeeds() {
    let app = small_pool_app(&[]).await;
    let client = app.client().await;
    let customers = seed(&client, 300).await;
    let target = &customers[0];
    let mut inner = client.inner.clone();
    for i in 0..5 {
        let status = if i % 2 == 0 {
            pb::ConsentStatus::Granted
        } else {
            pb::ConsentStatus::Withdrawn
        };
        inner
            .record_consent(client.request(pb::RecordConsentRequest {
                customer_id: target.id.clone(),
                consent: Some(consent(Channel::Email, status)),
                request_id: String::new(),
            }))
            .await
            .expect("recording a consent");
        inner
            .create_interaction(client.request(pb::CreateInteractionRequest {
                interaction: Some(interaction(&target.id, &format!("note {i}"))),
                request_id: String::new(),
            }))
            .await
            .expect("recording an interaction");
    }
    for dup in &customers[1..3] {
        inner
            .merge_customers(client.request(pb::MergeCustomersRequest {
                survivor_id: target.id.clone(),
                duplicate_ids: vec![dup.id.clone()],
                request_id: String::new(),
            }))
            .await
            .expect("merging a duplicate");
    }
    let batch: Vec<String> = customers[..100].iter().map(|c| c.id.clone()).collect();

    // Each read, CALLS at once: how many items each call returned, and how many it should.
    let reads: Vec<(&str, Counts, usize)> = vec![
        (
            "SearchCustomers",
            at_once(|_| {
                let mut inner = client.inner.clone();
                let request = client.request(pb::SearchCustomersRequest {
                    query: "ada".into(),
                    page_size: 50,
                    ..Default::default()
                });
                async move {
                    Ok(inner
                        .search_customers(request)
                        .await?
                        .into_inner()
                        .results
                        .len())
                }
            })
            .await,
            50,
        ),
        (
            "BatchGetCustomers",
            at_once(|_| {
                let mut inner = client.inner.clone();
                let request = client.request(pb::BatchGetCustomersRequest { ids: batch.clone() });
                async move {
                    Ok(inner
                        .batch_get_customers(request)
                        .await?
                        .into_inner()
                        .customers
                        .len())
                }
            })
            .await,
            100,
        ),
        (
            "GetCustomer",
            at_once(|i| {
                let (client, id) = (client.clone(), customers[10 + i].id.clone());
                async move { client.get(&id).await.map(|c| usize::from(c.id == id)) }
            })
            .await,
            1,
        ),
        (
            "FindDuplicateCustomers",
            at_once(|_| {
                let mut inner = client.inner.clone();
                let request = client.request(pb::FindDuplicateCustomersRequest {
                    customer_id: target.id.clone(),
                    max_results: 10,
                });
                async move {
                    let found = inner.find_duplicate_customers(request).await?.into_inner();
                    Ok(usize::from(found.candidates.len() <= 10))
                }
            })
            .await,
            1,
        ),
        (
            "ListMergeRecords",
            at_once(|i| {
                let mut inner = client.inner.clone();
                // Half of the calls list the target's merges, half every merge.
                let customer_id = if i % 2 == 0 {
                    target.id.clone()
                } else {
                    String::new()
                };
                let request = client.request(pb::ListMergeRecordsRequest {
                    customer_id,
                    ..Default::default()
                });
                async move {
                    Ok(inner
                        .list_merge_records(request)
                        .await?
                        .into_inner()
                        .merge_records
                        .len())
                }
            })
            .await,
            2,
        ),
        (
            // 5 consent decisions, and the contact point each merge added.
            "ListCustomerFieldChanges",
            at_once(|_| {
                let mut inner = client.inner.clone();
                let request = client.request(pb::ListCustomerFieldChangesRequest {
                    customer_id: target.id.clone(),
                    ..Default::default()
                });
                async move {
                    Ok(inner
                        .list_customer_field_changes(request)
                        .await?
                        .into_inner()
                        .field_changes
                        .len())
                }
            })
            .await,
            5 + 2,
        ),
        (
            "ListConsentHistory",
            at_once(|_| {
                let mut inner = client.inner.clone();
                let request = client.request(pb::ListConsentHistoryRequest {
                    customer_id: target.id.clone(),
                    page_size: 50,
                    page_token: String::new(),
                });
                async move {
                    Ok(inner
                        .list_consent_history(request)
                        .await?
                        .into_inner()
                        .consents
                        .len())
                }
            })
            .await,
            5,
        ),
        (
            "ListInteractions",
            at_once(|_| {
                let mut inner = client.inner.clone();
                let request = client.request(pb::ListInteractionsRequest {
                    customer_id: target.id.clone(),
                    page_size: 50,
                    ..Default::default()
                });
                async move {
                    Ok(inner
                        .list_interactions(request)
                        .await?
                        .into_inner()
                        .interactions
                        .len())
                }
            })
            .await,
            5,
        ),
        (
            "ExportServiceCustomerData",
            at_once(|_| {
                let mut inner = client.inner.clone();
                let request = client.request(pb::ExportServiceCustomerDataRequest {
                    id: target.id.clone(),
                });
                async move {
                    let export = inner
                        .export_service_customer_data(request)
                        .await?
                        .into_inner();
                    Ok(export.consent_history.len()
                        + export.interactions.len()
                        + export.merge_records.len()
                        + export.field_changes.len())
                }
            })
            .await,
            5 + 5 + 2 + 7,
        ),
        (
            "ExportCustomers",
            at_once(|_| {
                let mut inner = client.inner.clone();
                let request = client.request(pb::ExportCustomersRequest::default());
                async move {
                    let mut stream = inner.export_customers(request).await?.into_inner();
                    let mut exported = 0;
                    while let Some(item) = within(stream.next()).await {
                        item?;
                        exported += 1;
                    }
                    Ok(exported)
                }
            })
            .await,
            298,
        ),
    ];

    for (rpc, results, expected) in reads {
        for returned in all_succeeded(rpc, results) {
            assert_eq!(
                returned, expected,
                "{rpc} returned the wrong number of items"
            );
        }
    }
}

#[tokio::test]
async fn every_write_called_at_four_times_the_pool_size_succeeds() {
    let app = small_pool_app(&[]).await;
    let client = app.client().await;
    let customers = seed(&client, CALLS).await;
    let merge_pairs = seed(&client, 2 * CALLS).await;
    let pool = app.pool().await;

    let creates = at_once(|i| {
        let mut inner = client.inner.clone();
        let request = client.request(pb::CreateCustomerRequest {
            customer: Some(ada()),
            request_id: format!("create-{i}"),
        });
        async move { inner.create_customer(request).await }
    })
    .await;
    let updates = at_once(|i| {
        let mut inner = client.inner.clone();
        let request = client.request(rename(&customers[i], &format!("Renamed {i}")));
        async move { inner.update_customer(request).await }
    })
    .await;
    let consents = at_once(|i| {
        let mut inner = client.inner.clone();
        let request = client.request(pb::RecordConsentRequest {
            customer_id: customers[i].id.clone(),
            consent: Some(consent(Channel::Sms, pb::ConsentStatus::Granted)),
            request_id: String::new(),
        });
        async move { inner.record_consent(request).await }
    })
    .await;
    let interactions = at_once(|i| {
        let mut inner = client.inner.clone();
        let request = client.request(pb::CreateInteractionRequest {
            interaction: Some(interaction(&customers[i].id, "concurrent note")),
            request_id: format!("interaction-{i}"),
        });
        async move { inner.create_interaction(request).await }
    })
    .await;
    let merges = at_once(|i| {
        let mut inner = client.inner.clone();
        let request = client.request(pb::MergeCustomersRequest {
            survivor_id: merge_pairs[2 * i].id.clone(),
            duplicate_ids: vec![merge_pairs[2 * i + 1].id.clone()],
            request_id: format!("merge-{i}"),
        });
        async move { inner.merge_customers(request).await }
    })
    .await;

    all_succeeded("CreateCustomer", creates);
    for (i, updated) in all_succeeded("UpdateCustomer", updates)
        .into_iter()
        .enumerate()
    {
        let updated = updated.into_inner().customer.unwrap();
        assert_eq!(updated.display_name, format!("Renamed {i}"));
    }
    all_succeeded("RecordConsent", consents);
    all_succeeded("CreateInteraction", interactions);
    all_succeeded("MergeCustomers", merges);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM customer.customers").await,
        (4 * CALLS) as i64,
        "seeded and created customers"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM customer.customers WHERE display_name LIKE 'Renamed %'"
        )
        .await,
        CALLS as i64
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM customer.consents").await,
        CALLS as i64
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM customer.interactions").await,
        CALLS as i64
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM customer.customers WHERE state = 'MERGED'"
        )
        .await,
        CALLS as i64
    );
}

/// PostgreSQL notices, which sqlx reports as tracing events with this target.
const NOTICE_TARGET: &str = "sqlx::postgres::notice";

/// A tracing subscriber that keeps the message of every PostgreSQL notice and ignores the rest.
#[derive(Clone, Default)]
struct Notices(Arc<Mutex<Vec<String>>>);

impl Notices {
    /// Installs itself as the process's subscriber (nextest runs each test in its own process).
    fn capture() -> Self {
        let notices = Self::default();
        tracing::subscriber::set_global_default(notices.clone())
            .expect("capturing notices needs the process's tracing subscriber to itself");
        notices
    }

    fn messages(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl tracing::Subscriber for Notices {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == NOTICE_TARGET
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" {
                    self.0.push_str(value);
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0.push_str(&format!("{value:?}"));
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().unwrap().push(message.0);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn calls_cancelled_midway_leave_no_pooled_connection_inside_a_transaction() {
    const ROUNDS: usize = 20;
    const PER_KIND: usize = 3; // calls of each kind per round
    let notices = Notices::capture();
    let url = fresh_database().await;
    let app =
        crate::common::spawn_with(config(&url, "", &[("CRM__DATABASE__MAX_CONNECTIONS", "2")]))
            .await;
    let client = app.client().await;
    let pool = app.pool().await;
    let renamed = seed(&client, 10).await;
    let pairs = seed(&client, 2 * ROUNDS * PER_KIND).await;
    let new_customers: Vec<pb::Customer> = (0..ROUNDS * PER_KIND).map(|_| ada()).collect();
    let create = |k: usize| {
        client.request(pb::CreateCustomerRequest {
            customer: Some(new_customers[k].clone()),
            request_id: format!("create-{k}"),
        })
    };
    let merge = |k: usize| {
        client.request(pb::MergeCustomersRequest {
            survivor_id: pairs[2 * k].id.clone(),
            duplicate_ids: vec![pairs[2 * k + 1].id.clone()],
            request_id: format!("merge-{k}"),
        })
    };

    // Calls whose callers give up after 1 to 29 ms: some before the call reaches the server,
    // some while it waits for a connection, some inside its transaction, some never.
    let mut cancelled = 0;
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let calls = (0..3 * PER_KIND).map(|i| {
            let k = round * PER_KIND + i / 3;
            let mut inner = client.inner.clone();
            let call: BoxFuture<'static, Result<(), tonic::Status>> = match i % 3 {
                0 => {
                    let request = client.request(rename(&renamed[k % 10], &format!("Call {k}")));
                    async move { inner.update_customer(request).await.map(drop) }.boxed()
                }
                1 => {
                    let request = create(k);
                    async move { inner.create_customer(request).await.map(drop) }.boxed()
                }
                _ => {
                    let request = merge(k);
                    async move { inner.merge_customers(request).await.map(drop) }.boxed()
                }
            };
            let patience = Duration::from_millis(1 + (round * 9 + i) as u64 * 7 % 29);
            tokio::time::timeout(patience, call)
        });
        for outcome in join_all(calls).await {
            match outcome {
                Err(_elapsed) => cancelled += 1,
                Ok(Ok(())) => {}
                Ok(Err(status)) => {
                    failures.push(format!("{:?}: {}", status.code(), status.message()))
                }
            }
        }
    }
    assert!(
        cancelled > 0,
        "no call was cancelled: the test exercised nothing"
    );
    assert!(
        failures.is_empty(),
        "calls that were not cancelled failed: {failures:?}"
    );

    // (b) Once the abandoned work is over, no pooled connection sits inside a transaction.
    wait_until_connections_are_idle(&pool).await;

    // (a) Every call succeeds afterwards, and its writes are committed: visible from another
    // connection.
    let mut inner = client.inner.clone();
    for (k, customer) in new_customers.iter().enumerate() {
        let created = inner
            .create_customer(create(k))
            .await
            .unwrap_or_else(|s| panic!("retrying create {k}: {s:?}"))
            .into_inner()
            .customer
            .unwrap();
        let stored: Option<String> =
            sqlx::query_scalar("SELECT email FROM customer.customers WHERE id = $1")
                .bind(Uuid::parse_str(&created.id).unwrap())
                .fetch_optional(&pool)
                .await
                .unwrap();
        assert_eq!(
            stored.as_deref(),
            Some(customer.email.as_str()),
            "create {k}"
        );
    }
    for k in 0..ROUNDS * PER_KIND {
        inner
            .merge_customers(merge(k))
            .await
            .unwrap_or_else(|s| panic!("retrying merge {k}: {s:?}"));
        let state: String =
            sqlx::query_scalar("SELECT state FROM customer.customers WHERE id = $1")
                .bind(Uuid::parse_str(&pairs[2 * k + 1].id).unwrap())
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(state, "MERGED", "merge {k}");
    }
    for (k, customer) in renamed.iter().enumerate() {
        inner
            .update_customer(client.request(rename(customer, &format!("Final {k}"))))
            .await
            .unwrap_or_else(|s| panic!("updating customer {k}: {s:?}"));
        let stored: String =
            sqlx::query_scalar("SELECT display_name FROM customer.customers WHERE id = $1")
                .bind(Uuid::parse_str(&customer.id).unwrap())
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(stored, format!("Final {k}"));
    }
    wait_until_connections_are_idle(&pool).await;

    // (c) No statement ever ran in a transaction state the connection did not expect.
    let notices = notices.messages();
    assert!(
        !notices
            .iter()
            .any(|n| n.contains("transaction in progress")),
        "a pooled connection's transaction state went wrong: {notices:?}"
    );
}

#[tokio::test]
async fn the_default_deadline_cuts_a_call_that_sends_none_with_deadline_exceeded_and_nothing_half_written()
 {
    let app = small_pool_app(&[("CRM__SERVER__DEFAULT_TIMEOUT_MS", "300")]).await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let pool = app.pool().await;
    let lock = lock_row(&pool, &created.id).await;

    let status = client
        .inner
        .clone()
        .update_customer(client.request(rename(&created, "Countess of Lovelace")))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    lock.rollback().await.unwrap();
    wait_until_connections_are_idle(&pool).await;
    assert_whole_or_nothing(&pool, &created.id, "Countess of Lovelace").await;
}

#[tokio::test]
async fn a_grpc_timeout_longer_than_the_default_deadline_is_cut_at_the_default() {
    let app = small_pool_app(&[("CRM__SERVER__DEFAULT_TIMEOUT_MS", "300")]).await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let pool = app.pool().await;
    let lock = lock_row(&pool, &created.id).await;
    let mut request = client.request(rename(&created, "Countess of Lovelace"));
    // Longer than the server allows, shorter than the test's channel timeout: the server's
    // DEADLINE_EXCEEDED answer arrives before the client's own timer gives up.
    request.set_timeout(Duration::from_secs(10));

    let status = client
        .inner
        .clone()
        .update_customer(request)
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    lock.rollback().await.unwrap();
    wait_until_connections_are_idle(&pool).await;
    assert_whole_or_nothing(&pool, &created.id, "Countess of Lovelace").await;
}

/// Asserts that the customer carries either the whole rename to `new_name` (its row, version
/// and change event) or none of it.
async fn assert_whole_or_nothing(pool: &PgPool, id: &str, new_name: &str) {
    let id = Uuid::parse_str(id).unwrap();
    let (name, version): (String, i64) =
        sqlx::query_as("SELECT display_name, version FROM customer.customers WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    let changes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customer.change_events WHERE resource_id::uuid = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    let renamed = name == new_name;
    assert_eq!(
        (version, changes),
        if renamed { (2, 2) } else { (1, 1) },
        "renamed: {renamed}; the row's version and its change events disagree"
    );
}
