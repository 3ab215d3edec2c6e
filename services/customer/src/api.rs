//! The gRPC surface of the customer service: validate, convert at the edge, call the store in
//! one transaction, publish the change, convert back. One file per resource under `api/`; this
//! one holds the service's state and what every handler shares. What each List filters and
//! orders on is declared with its SQL, in `store/lists.rs`.

mod bulk;
mod consents;
mod customers;
mod gdpr;
mod history;
mod interactions;
mod merge;
mod scan;
mod search;

use std::pin::Pin;
use std::time::Duration;

use crm_platform::cache::{Cache, Keyspace, Versioned};
use crm_platform::erasure::Vacuum;
use crm_platform::feed::{self, Feed};
use crm_platform::filter::{self, FilterSchema};

use crm_platform::idempotency;
use crm_platform::list::{ListRequest, ListSchema, Page, PreparedList};
use crm_platform::operations::{OnRestart, OperationStore};
use crm_platform::page_token::PageTokenCodec;
use crm_platform::{ApiError, FieldViolations};
use crm_proto::crm::common::v1::ChangeType;
use crm_proto::crm::customer::v1 as pb;
use crm_proto::crm::customer::v1::customer_service_server::CustomerService;
use crm_proto::google::longrunning::Operation;
use futures::Stream;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::SCHEMA;
use crate::domain::{CustomerState, Principal};
use crate::error::{Error, Result};
use crate::store::{self, CustomerRow, customer_subject};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Customers by id, as stored (not following merges), with their row version.
const CUSTOMERS: Keyspace<pb::Customer> = Keyspace::new("customer");

/// How many merged ids GetCustomer follows before giving up (merges never form cycles, but a
/// bound keeps a bug from looping).
const MAX_MERGE_HOPS: usize = 8;

/// The customer service.
#[derive(Clone)]
pub struct CustomerApi {
    db: PgPool,
    cache: Cache,
    page_tokens: PageTokenCodec,
    feed: Feed,
    operations: OperationStore,
    vacuum: Vacuum,
    /// Import batches writing at once (see `bulk.rs`).
    import_writers: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The service's long-running operations and their handlers.
pub fn operations(db: &PgPool) -> OperationStore {
    let scan_db = db.clone();
    OperationStore::new("customer", db.clone()).handler(
        scan::SCAN_KIND,
        OnRestart::Resume,
        move |ctx| scan::run_scan(scan_db.clone(), ctx),
    )
}

/// One customer's part of a write: the row as stored afterwards and what the feed says about it.
struct Write {
    row: CustomerRow,
    change: ChangeType,
    merged_into: Option<Uuid>,
    changed_paths: Vec<String>,
}

impl Write {
    /// A change that touches the customer as a whole (created, deleted, undeleted, erased).
    fn whole(row: CustomerRow, change: ChangeType) -> Self {
        Self {
            row,
            change,
            merged_into: None,
            changed_paths: Vec::new(),
        }
    }

    /// An update of the fields at `changed_paths`.
    fn updated(row: CustomerRow, changed_paths: Vec<String>) -> Self {
        Self {
            row,
            change: ChangeType::Updated,
            merged_into: None,
            changed_paths,
        }
    }

    /// A duplicate folded into `survivor`.
    fn merged(row: CustomerRow, survivor: Uuid) -> Self {
        Self {
            row,
            change: ChangeType::Merged,
            merged_into: Some(survivor),
            changed_paths: Vec::new(),
        }
    }
}

/// The caller of a request, as audit fields and change events name it.
fn caller<T>(request: &Request<T>) -> Principal {
    Principal::caller(&crm_platform::auth::Principal::caller_of(request))
}

impl CustomerApi {
    /// A service over `db`, caching through `cache`, publishing its changes on `feed`,
    /// starting long work as `operations` (see [`operations`]) and vacuuming what erasures
    /// leave behind with `vacuum`.
    pub fn new(
        db: PgPool,
        cache: Cache,
        page_tokens: PageTokenCodec,
        feed: Feed,
        operations: OperationStore,
        vacuum: Vacuum,
    ) -> Self {
        let import_writers = bulk::import_writers(&db);
        Self {
            db,
            cache,
            page_tokens,
            feed,
            operations,
            vacuum,
            import_writers,
        }
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.db.begin().await?)
    }

    /// A customer through the cache, as stored (not following merges).
    async fn get_stored(&self, id: Uuid) -> Result<pb::Customer> {
        let db = self.db.clone();
        let customer = self
            .cache
            .get_or_load(&CUSTOMERS.key(id), || {
                let db = db.clone();
                async move {
                    let mut conn = db.acquire().await?;
                    match store::load(&mut conn, id).await {
                        Ok(Some((version, value))) => Ok(Versioned { version, value }),
                        Ok(None) => Err(ApiError::not_found("customer", id.to_string())),
                        Err(err) => Err(ApiError::from(err)),
                    }
                }
            })
            .await?;
        Ok(customer)
    }

    /// A customer, following merged ids to the survivor.
    async fn get_resolved(&self, id: Uuid) -> Result<pb::Customer> {
        let mut customer = self.get_stored(id).await?;
        for _ in 0..MAX_MERGE_HOPS {
            if customer.state != pb::CustomerState::Merged as i32 {
                return Ok(customer);
            }
            let next = Uuid::parse_str(&customer.merged_into_id).map_err(|e| {
                Error::Api(ApiError::Internal(anyhow::anyhow!(
                    "bad merged_into_id: {e}"
                )))
            })?;
            customer = self.get_stored(next).await?;
        }
        Err(Error::Api(ApiError::Internal(anyhow::anyhow!(
            "merge chain of {id} is longer than {MAX_MERGE_HOPS}"
        ))))
    }

    /// Appends the changes to the feed, commits, and publishes the new versions to the cache.
    async fn finish_write(
        &self,
        mut tx: Transaction<'static, Postgres>,
        writes: &[Write],
        actor: &Principal,
    ) -> Result<Vec<pb::Customer>> {
        let rows: Vec<CustomerRow> = writes.iter().map(|w| w.row.clone()).collect();
        // A customer created in this transaction has no consents yet: no need to look them up.
        let customers = if writes.iter().all(|w| w.change == ChangeType::Created) {
            rows.iter().map(|row| row.to_proto(Vec::new())).collect()
        } else {
            store::to_protos(&mut tx, &rows).await?
        };
        let actor = actor.to_proto();
        for (customer, write) in customers.iter().zip(writes) {
            let change = crate::feed::new_change(
                &write.row,
                write.change,
                write.merged_into,
                &write.changed_paths,
                customer,
                &actor,
            );
            feed::append(&mut tx, SCHEMA, &change).await?;
        }
        tx.commit().await?;
        self.feed.committed();
        for (customer, write) in customers.iter().zip(writes) {
            let (key, version) = (CUSTOMERS.key(write.row.id), write.row.version);
            if write.change == ChangeType::Created {
                self.cache.put_new(&key, version, customer).await;
            } else {
                self.cache.put(&key, version, customer).await;
            }
        }
        Ok(customers)
    }

    async fn lock_active(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        etag: &str,
    ) -> Result<CustomerRow> {
        let row = store::find(tx, id, true)
            .await?
            .ok_or(Error::NotFound(id))?;
        if !etag.is_empty() && etag != row.etag() {
            return Err(Error::EtagMismatch);
        }
        if row.state != CustomerState::Active {
            return Err(Error::NotActive {
                id,
                state: row.state,
            });
        }
        Ok(row)
    }

    /// One page of a list under one customer (its timeline, field history, consents, merges):
    /// the request is checked before a connection is taken, then the customer is looked up and
    /// the page read on that one pooled connection. `customer` is `None` for a list of every
    /// customer's rows.
    async fn page_under_customer<R>(
        &self,
        schema: &ListSchema,
        request: &ListRequest<'_>,
        customer: Option<Uuid>,
        fetch: impl AsyncFnOnce(&mut PgConnection, &PreparedList<'_>) -> Result<Page<R>>,
    ) -> Result<Page<R>> {
        let list = schema.prepare(&self.page_tokens, request)?;
        let mut conn = self.db.acquire().await?;
        if let Some(id) = customer {
            self.ensure_exists(&mut conn, id).await?;
        }
        fetch(&mut conn, &list).await
    }

    /// Fails with NOT_FOUND unless a customer (in any state) has this id.
    async fn ensure_exists(&self, conn: &mut PgConnection, id: Uuid) -> Result<CustomerRow> {
        store::find(conn, id, false)
            .await?
            .ok_or(Error::NotFound(id))
    }

    /// The request's `filter`, compiled against `schema`.
    fn parse_filter(&self, input: &str, schema: &FilterSchema) -> Result<filter::SqlFilter> {
        let expr = filter::parse(input).map_err(|e| ApiError::invalid("filter", e.to_string()))?;
        Ok(
            filter::to_sql(&expr, schema)
                .map_err(|e| ApiError::invalid("filter", e.to_string()))?,
        )
    }
}

/// Both values, or the violations of either (or both): so a request with several bad fields
/// has all of them reported at once.
fn both<A, B>(
    a: Result<A, FieldViolations>,
    b: Result<B, FieldViolations>,
) -> Result<(A, B), FieldViolations> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (a, b) => {
            let mut v = FieldViolations::new();
            for violations in [a.err(), b.err()].into_iter().flatten() {
                v.extend(violations);
            }
            Err(v)
        }
    }
}

fn ok<T>(result: Result<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::CreateCustomerResponse>, Status> {
        let actor = caller(&request);
        ok(self.create(request.into_inner(), &actor).await)
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        ok(self.get(request.into_inner()).await)
    }

    async fn batch_get_customers(
        &self,
        request: Request<pb::BatchGetCustomersRequest>,
    ) -> Result<Response<pb::BatchGetCustomersResponse>, Status> {
        ok(self.batch_get(request.into_inner()).await)
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        ok(self.list(request.into_inner()).await)
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::UpdateCustomerResponse>, Status> {
        let actor = caller(&request);
        ok(self.update(request.into_inner(), &actor).await)
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::DeleteCustomerResponse>, Status> {
        let actor = caller(&request);
        ok(self.delete(request.into_inner(), &actor).await)
    }

    async fn undelete_customer(
        &self,
        request: Request<pb::UndeleteCustomerRequest>,
    ) -> Result<Response<pb::UndeleteCustomerResponse>, Status> {
        let actor = caller(&request);
        ok(self.undelete(request.into_inner(), &actor).await)
    }

    async fn search_customers(
        &self,
        request: Request<pb::SearchCustomersRequest>,
    ) -> Result<Response<pb::SearchCustomersResponse>, Status> {
        ok(self.search(request.into_inner()).await)
    }

    async fn find_duplicate_customers(
        &self,
        request: Request<pb::FindDuplicateCustomersRequest>,
    ) -> Result<Response<pb::FindDuplicateCustomersResponse>, Status> {
        ok(self.find_duplicates(request.into_inner()).await)
    }

    async fn merge_customers(
        &self,
        request: Request<pb::MergeCustomersRequest>,
    ) -> Result<Response<pb::MergeCustomersResponse>, Status> {
        let actor = caller(&request);
        ok(self.merge(request.into_inner(), &actor).await)
    }

    async fn list_merge_records(
        &self,
        request: Request<pb::ListMergeRecordsRequest>,
    ) -> Result<Response<pb::ListMergeRecordsResponse>, Status> {
        ok(self.list_merges(request.into_inner()).await)
    }

    async fn erase_customer(
        &self,
        request: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<Operation>, Status> {
        ok(self.start_erase(request.into_inner()).await)
    }

    async fn export_customer_data(
        &self,
        request: Request<pb::ExportCustomerDataRequest>,
    ) -> Result<Response<Operation>, Status> {
        ok(self.start_export(request.into_inner()).await)
    }

    async fn erase_service_customer_data(
        &self,
        request: Request<pb::EraseServiceCustomerDataRequest>,
    ) -> Result<Response<pb::EraseServiceCustomerDataResponse>, Status> {
        let actor = caller(&request);
        ok(self.erase_service_data(request.into_inner(), &actor).await)
    }

    async fn export_service_customer_data(
        &self,
        request: Request<pb::ExportServiceCustomerDataRequest>,
    ) -> Result<Response<pb::ExportServiceCustomerDataResponse>, Status> {
        ok(self.export_service_data(request.into_inner()).await)
    }

    async fn list_customer_field_changes(
        &self,
        request: Request<pb::ListCustomerFieldChangesRequest>,
    ) -> Result<Response<pb::ListCustomerFieldChangesResponse>, Status> {
        ok(self.list_field_changes(request.into_inner()).await)
    }

    async fn scan_duplicate_customers(
        &self,
        request: Request<pb::ScanDuplicateCustomersRequest>,
    ) -> Result<Response<Operation>, Status> {
        let requested_by = crm_platform::auth::Principal::caller_of(&request);
        ok(self.start_scan(request.into_inner(), &requested_by).await)
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        let actor = caller(&request);
        ok(self.record(request.into_inner(), &actor).await)
    }

    async fn list_consent_history(
        &self,
        request: Request<pb::ListConsentHistoryRequest>,
    ) -> Result<Response<pb::ListConsentHistoryResponse>, Status> {
        ok(self.consent_history(request.into_inner()).await)
    }

    async fn create_interaction(
        &self,
        request: Request<pb::CreateInteractionRequest>,
    ) -> Result<Response<pb::CreateInteractionResponse>, Status> {
        let actor = caller(&request);
        ok(self.add_interaction(request.into_inner(), &actor).await)
    }

    async fn list_interactions(
        &self,
        request: Request<pb::ListInteractionsRequest>,
    ) -> Result<Response<pb::ListInteractionsResponse>, Status> {
        ok(self.interactions(request.into_inner()).await)
    }

    type ImportCustomersStream = ResponseStream<pb::ImportCustomersResponse>;

    async fn import_customers(
        &self,
        request: Request<Streaming<pb::ImportCustomersRequest>>,
    ) -> Result<Response<Self::ImportCustomersStream>, Status> {
        let actor = caller(&request);
        Ok(Response::new(self.import(request.into_inner(), actor)))
    }

    type ExportCustomersStream = ResponseStream<pb::ExportCustomersResponse>;

    async fn export_customers(
        &self,
        request: Request<pb::ExportCustomersRequest>,
    ) -> Result<Response<Self::ExportCustomersStream>, Status> {
        Ok(Response::new(self.export(request.into_inner())?))
    }

    type WatchCustomerChangesStream = ResponseStream<pb::WatchCustomerChangesResponse>;

    async fn watch_customer_changes(
        &self,
        request: Request<pb::WatchCustomerChangesRequest>,
    ) -> Result<Response<Self::WatchCustomerChangesStream>, Status> {
        let events = crate::feed::watch(&self.feed, request.get_ref()).await?;
        Ok(Response::new(Box::pin(events)))
    }
}

/// Housekeeping every 10 minutes until shutdown: deletes request ids past their 24 hours
/// (the feed purges its own events).
pub(crate) fn spawn_housekeeping(db: PgPool, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            }
            match idempotency::purge_expired(&db).await {
                Ok(n) if n > 0 => tracing::info!(purged = n, "expired request ids deleted"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "purging request ids failed"),
            }
        }
    });
}
