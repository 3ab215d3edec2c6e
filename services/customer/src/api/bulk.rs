//! ImportCustomers and ExportCustomers: customers in bulk, as streams.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use crm_platform::error::rpc_status;
use crm_platform::feed;
use crm_platform::filter::SqlFilter;
use crm_platform::idempotency::{self, BatchClaim, Subject};
use crm_platform::page_token::{PageTokenCodec, PageTokenError, query_fingerprint};
use crm_platform::{ApiError, FieldViolations};
use crm_proto::crm::common::v1::{ChangeType, ItemResult};
use crm_proto::crm::customer::v1 as pb;
use crm_proto::crm::customer::v1::import_customers_response::Kind;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{Acquire, PgConnection, PgPool};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use uuid::Uuid;

use super::{CustomerApi, ResponseStream};
use crate::SCHEMA;
use crate::domain::{CustomerFields, Principal, timestamp_from_proto};
use crate::error::{Error, Result};
use crate::store::{self, CustomerRow};

/// How many customers one export query reads.
const EXPORT_BATCH: i64 = 500;

/// Most rows one import writes in one transaction. 500 keeps a batch's statement far below
/// PostgreSQL's 65,535 parameters (20 per customer) and its transaction short.
const IMPORT_BATCH: usize = 500;

/// Rows read and checked ahead of the batch being written. The reader keeps taking rows off
/// the connection while a batch commits, so they do not wait as small HTTP/2 frames in h2's
/// buffers (which h2 bounds by a budget, closing the connection past it); once this many wait,
/// it stops reading and HTTP/2 flow control holds the sender back.
const READ_AHEAD: usize = 2 * IMPORT_BATCH;

/// The import batches that may write at once: half the pool. A batch waits for one of these
/// (for as long as it takes: an import is a long stream, and this is its backpressure) before
/// it takes a pooled connection, so any number of imports leave the other half of the pool to
/// the other calls, and imports never time out waiting for each other's connections.
pub(super) fn import_writers(db: &PgPool) -> Arc<Semaphore> {
    let pool_size = db.options().get_max_connections() as usize;
    Arc::new(Semaphore::new(pool_size.div_ceil(2)))
}

/// The method whose request ids import rows share: a row is a CreateCustomer.
const CREATE_METHOD: &str = "CreateCustomer";

/// A row as read and checked at the edge, before any write.
enum Checked {
    /// A row that may be written.
    Valid(Box<ValidRow>),
    /// A row rejected at the edge, with its answer.
    Rejected(ItemResult),
}

/// A row that passed the edge checks.
struct ValidRow {
    index: i64,
    row_ref: String,
    fields: CustomerFields,
    /// The CreateCustomer request the row stands for. Its request id is claimed with this
    /// request's hash, so a row and a CreateCustomer call with the same id and the same
    /// customer are one request (either replays the other), whatever the row's ref or index.
    request: pb::CreateCustomerRequest,
}

/// What writing one valid row did.
enum Written {
    /// Created now: the customer's id.
    Created(String),
    /// Its request id was seen before with the same request: the earlier customer's id.
    Repeated(String),
    /// Refused, with the error CreateCustomer would have returned.
    Failed(ApiError),
}

/// Checks one row against the contract's caps (as the codec checks a unary request) and as
/// CreateCustomer checks its request.
fn check(row: pb::ImportCustomersRequest, index: i64) -> Checked {
    if let Err(status) = crm_proto::edge::check_streamed_item(&row) {
        let mut row_ref = row.row_ref;
        if row_ref.chars().count() > 100 {
            // The caps refused it; a result does not echo it.
            row_ref = String::new();
        }
        return Checked::Rejected(ItemResult {
            index,
            r#ref: row_ref,
            status: Some(rpc_status(&status)),
            id: String::new(),
        });
    }
    let pb::ImportCustomersRequest {
        row_ref,
        customer,
        request_id,
    } = row;
    let refuse = |error| {
        let (result, _) = rejected(index, &row_ref, error);
        Checked::Rejected(result)
    };
    if row_ref.chars().count() > 100 {
        return refuse(ApiError::invalid(
            "row_ref",
            "must be at most 100 characters",
        ));
    }
    let Some(customer) = customer else {
        return refuse(ApiError::invalid("customer", "is required"));
    };
    let fields = match CustomerFields::try_from(&customer) {
        Ok(fields) => fields,
        Err(v) => return refuse(ApiError::InvalidArgument(v)),
    };
    if let Err(error) = idempotency::validate_request_id("request_id", &request_id) {
        return refuse(error);
    }
    Checked::Valid(Box::new(ValidRow {
        index,
        row_ref,
        fields,
        request: pb::CreateCustomerRequest {
            customer: Some(customer),
            request_id,
        },
    }))
}

/// Reads, numbers and checks the caller's rows into `checked` until the caller half-closes,
/// its stream fails (passed on, last) or the import stops listening.
async fn read_rows(
    mut rows: Streaming<pb::ImportCustomersRequest>,
    checked: mpsc::Sender<Result<Checked, Status>>,
) {
    let mut index = 0;
    while let Some(row) = rows.next().await {
        let item = row.map(|row| check(row, index));
        let broken = item.is_err();
        index += 1;
        if checked.send(item).await.is_err() || broken {
            return;
        }
    }
}

/// Splits rows into consecutive batches whose request ids are distinct: a repeated id starts
/// a new batch, so it is claimed after the earlier row's batch committed and is answered as
/// CreateCustomer answers a retry.
fn split_at_repeated_request_ids(rows: Vec<Checked>) -> Vec<Vec<Checked>> {
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut ids = HashSet::new();
    for row in rows {
        if let Checked::Valid(valid) = &row {
            let id = &valid.request.request_id;
            if !id.is_empty() && !ids.insert(id.clone()) {
                batches.push(std::mem::take(&mut batch));
                ids.clear();
                ids.insert(id.clone());
            }
        }
        batch.push(row);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Inserts `customers` in one statement, inside a savepoint so that a failing statement leaves
/// the batch's transaction usable: then nothing is inserted and each row is tried alone. The
/// rows inserted, by id.
async fn insert_together(
    tx: &mut PgConnection,
    customers: &[(Uuid, &CustomerFields)],
    actor: &Principal,
) -> Result<HashMap<Uuid, CustomerRow>> {
    let mut savepoint = tx.begin().await?;
    match store::insert_new(&mut savepoint, customers, actor).await {
        Ok(rows) => {
            savepoint.commit().await?;
            Ok(rows.into_iter().map(|row| (row.id, row)).collect())
        }
        Err(err) => match ApiError::from(err) {
            ApiError::Unavailable(cause) => Err(ApiError::Unavailable(cause).into()),
            error => {
                tracing::debug!(error = %error, "an import batch's insert failed; inserting its rows one by one");
                savepoint.rollback().await?;
                Ok(HashMap::new())
            }
        },
    }
}

/// Inserts one customer inside a savepoint, so that its failure leaves the batch's
/// transaction usable.
async fn insert_alone(
    tx: &mut PgConnection,
    id: Uuid,
    fields: &CustomerFields,
    actor: &Principal,
) -> Result<CustomerRow> {
    let mut savepoint = tx.begin().await?;
    match store::insert(&mut savepoint, id, fields, actor).await {
        Ok(row) => {
            savepoint.commit().await?;
            Ok(row)
        }
        Err(err) => {
            savepoint.rollback().await?;
            Err(err)
        }
    }
}

/// The result of a row that created (or had created) the customer `id`.
fn accepted(row: &ValidRow, id: String) -> ItemResult {
    ItemResult {
        index: row.index,
        r#ref: row.row_ref.clone(),
        status: Some(rpc_status(&Status::new(Code::Ok, ""))),
        id,
    }
}

/// What happened to one imported row, for the closing summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Repeated,
    Rejected,
}

/// The result of a rejected row: the status CreateCustomer would have returned.
fn rejected(index: i64, row_ref: &str, error: ApiError) -> (ItemResult, Outcome) {
    let result = ItemResult {
        index,
        r#ref: row_ref.to_string(),
        status: Some(error.into_rpc_status()),
        id: String::new(),
    };
    (result, Outcome::Rejected)
}

/// Where an export continues: after this customer id. Signed and bound to the filter, like a
/// page token.
#[derive(Serialize, Deserialize)]
struct ExportCursor {
    after: Uuid,
}

fn export_fingerprint(filter: &str) -> u64 {
    query_fingerprint(&["ExportCustomers", filter])
}

/// Point-in-time exports need every field's history back to the instant asked for, and the
/// history only starts with this version of the schema; until the rollback is built, a valid
/// `as_of_time` is answered UNIMPLEMENTED rather than with today's values (which would leak
/// later facts into a training set).
fn refuse_as_of_time(as_of_time: Option<&prost_types::Timestamp>) -> Result<()> {
    let Some(as_of_time) = as_of_time else {
        return Ok(());
    };
    match timestamp_from_proto(as_of_time) {
        Some(instant) if instant <= Utc::now() => Err(Error::Api(ApiError::Unimplemented {
            message: "ExportCustomers with as_of_time (a point-in-time export) is not served yet; \
                      export without it for the current records"
                .to_string(),
        })),
        Some(_) => Err(FieldViolations::single("as_of_time", "must not be in the future").into()),
        None => Err(FieldViolations::single("as_of_time", "is not a valid timestamp").into()),
    }
}

/// The id an export's `resume_token` continues after (nil without one).
fn resume_after(tokens: &PageTokenCodec, req: &pb::ExportCustomersRequest) -> Result<Uuid> {
    if req.resume_token.is_empty() {
        return Ok(Uuid::nil());
    }
    let cursor: ExportCursor = tokens
        .decode(&req.resume_token, export_fingerprint(&req.filter))
        .map_err(|e| {
            let why = match e {
                PageTokenError::QueryChanged => {
                    "was issued for another filter; resume with the filter the export started with"
                }
                _ => "is not a resume token this export issued; start again without one",
            };
            ApiError::invalid("resume_token", why)
        })?;
    Ok(cursor.after)
}

impl CustomerApi {
    /// Reads rows as they come, writes them in batches (one transaction each) and answers every
    /// row with an `ItemResult` once its batch committed, in row order; once the caller has
    /// half-closed and every row is answered, sends the summary. A failure of a whole batch (a
    /// database outage) ends the stream with its status and answers none of that batch's rows,
    /// which were not committed; rows answered before stay committed.
    pub(super) fn import(
        &self,
        rows: Streaming<pb::ImportCustomersRequest>,
        actor: Principal,
    ) -> ResponseStream<pb::ImportCustomersResponse> {
        let (checked_tx, checked_rx) = mpsc::channel(READ_AHEAD);
        tokio::spawn(read_rows(rows, checked_tx));
        let (tx, rx) = mpsc::channel(IMPORT_BATCH);
        let api = self.clone();
        tokio::spawn(async move {
            let mut summary = pb::ImportCustomersSummary::default();
            // Whatever has arrived while the last batch was being written is the next batch:
            // a row sent alone is answered at once, a fast sender gets full batches.
            let mut chunks = ReceiverStream::new(checked_rx).ready_chunks(IMPORT_BATCH);
            while let Some(chunk) = chunks.next().await {
                let mut rows = Vec::with_capacity(chunk.len());
                let mut broken = None;
                for item in chunk {
                    match item {
                        Ok(row) => rows.push(row),
                        Err(status) => broken = Some(status),
                    }
                }
                for batch in split_at_repeated_request_ids(rows) {
                    // Nobody would hear of these rows: leave them unwritten.
                    if tx.is_closed() {
                        return;
                    }
                    let answers = match api.import_batch(batch, &actor).await {
                        Ok(answers) => answers,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    };
                    for (result, outcome) in answers {
                        match outcome {
                            Outcome::Created => summary.created_count += 1,
                            Outcome::Repeated => summary.repeated_count += 1,
                            Outcome::Rejected => summary.rejected_count += 1,
                        }
                        let message = pb::ImportCustomersResponse {
                            kind: Some(Kind::Result(result)),
                        };
                        if tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                }
                if let Some(status) = broken {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            let summary = pb::ImportCustomersResponse {
                kind: Some(Kind::Summary(summary)),
            };
            let _ = tx.send(Ok(summary)).await;
        });
        Box::pin(ReceiverStream::new(rx))
    }

    /// Writes the valid rows of `batch` in one transaction and answers every row of it, in
    /// order. A row the caller got wrong (at the edge or in the database) is answered with the
    /// status CreateCustomer would have returned while the others commit; an error of the
    /// whole batch is returned, and then no row of it was committed.
    async fn import_batch(
        &self,
        batch: Vec<Checked>,
        actor: &Principal,
    ) -> Result<Vec<(ItemResult, Outcome)>, Status> {
        let valid: Vec<&ValidRow> = batch
            .iter()
            .filter_map(|row| match row {
                Checked::Valid(row) => Some(&**row),
                Checked::Rejected(_) => None,
            })
            .collect();
        let mut written = if valid.is_empty() {
            Vec::new()
        } else {
            self.write_rows(&valid, actor).await.map_err(Status::from)?
        }
        .into_iter();
        let mut answers = Vec::with_capacity(batch.len());
        for row in batch {
            let answer = match row {
                Checked::Rejected(result) => (result, Outcome::Rejected),
                Checked::Valid(row) => match written.next() {
                    Some(Written::Created(id)) => (accepted(&row, id), Outcome::Created),
                    Some(Written::Repeated(id)) => (accepted(&row, id), Outcome::Repeated),
                    Some(Written::Failed(error)) => rejected(row.index, &row.row_ref, error),
                    None => {
                        let bug = anyhow::anyhow!("an import batch wrote fewer rows than it got");
                        return Err(ApiError::Internal(bug).into());
                    }
                },
            };
            answers.push(answer);
        }
        Ok(answers)
    }

    /// Creates the customers of `rows` in one transaction, honouring their request ids as
    /// CreateCustomer does; what happened to each row, in order. Request ids must be distinct
    /// within `rows`.
    async fn write_rows(&self, rows: &[&ValidRow], actor: &Principal) -> Result<Vec<Written>> {
        let _writer = self.import_writers.acquire().await.map_err(|_| {
            ApiError::Internal(anyhow::anyhow!("the import writers' semaphore is closed"))
        })?;
        let mut tx = self.begin().await?;
        let mut written: Vec<Option<Written>> = rows.iter().map(|_| None).collect();

        let with_ids: Vec<usize> = (0..rows.len())
            .filter(|&i| !rows[i].request.request_id.is_empty())
            .collect();
        let requests: Vec<(&str, &pb::CreateCustomerRequest)> = with_ids
            .iter()
            .map(|&i| (rows[i].request.request_id.as_str(), &rows[i].request))
            .collect();
        let claims = idempotency::claim_batch::<_, pb::CreateCustomerResponse>(
            &mut tx,
            CREATE_METHOD,
            &requests,
        )
        .await?;
        for (&i, claim) in with_ids.iter().zip(claims) {
            written[i] = match claim {
                BatchClaim::New => None,
                BatchClaim::Replayed(response) => Some(Written::Repeated(
                    response.customer.map(|c| c.id).unwrap_or_default(),
                )),
                BatchClaim::Refused(error) => Some(Written::Failed(error)),
            };
        }

        let new: Vec<(usize, Uuid)> = (0..rows.len())
            .filter(|&i| written[i].is_none())
            .map(|i| (i, Uuid::now_v7()))
            .collect();
        let customers: Vec<(Uuid, &CustomerFields)> =
            new.iter().map(|&(i, id)| (id, &rows[i].fields)).collect();
        let mut inserted = insert_together(&mut tx, &customers, actor).await?;
        let mut created = Vec::with_capacity(new.len());
        for &(i, id) in &new {
            // Skipped by the statement (a taken email) or not tried (the statement failed):
            // alone, it either goes in or fails with the error CreateCustomer would report.
            let row = match inserted.remove(&id) {
                Some(row) => row,
                None => match insert_alone(&mut tx, id, &rows[i].fields, actor).await {
                    Ok(row) => row,
                    Err(err) => match ApiError::from(err) {
                        ApiError::Unavailable(cause) => {
                            return Err(ApiError::Unavailable(cause).into());
                        }
                        error => {
                            written[i] = Some(Written::Failed(error));
                            continue;
                        }
                    },
                },
            };
            written[i] = Some(Written::Created(row.id.to_string()));
            created.push((i, row));
        }

        let released: Vec<&str> = new
            .iter()
            .filter(|&&(i, _)| matches!(written[i], Some(Written::Failed(_))))
            .map(|&(i, _)| rows[i].request.request_id.as_str())
            .filter(|id| !id.is_empty())
            .collect();
        idempotency::release_batch(&mut tx, CREATE_METHOD, &released).await?;
        let responses: Vec<(usize, pb::CreateCustomerResponse)> = created
            .iter()
            .map(|(i, row)| {
                let customer = Some(row.to_proto(Vec::new()));
                (*i, pb::CreateCustomerResponse { customer })
            })
            .collect();
        let subjects: Vec<Subject> = created
            .iter()
            .map(|(_, row)| store::customer_subject(row.id))
            .collect();
        let stored: Vec<(&str, &pb::CreateCustomerResponse, &Subject)> = responses
            .iter()
            .zip(&subjects)
            .filter(|((i, _), _)| !rows[*i].request.request_id.is_empty())
            .map(|((i, response), subject)| {
                (rows[*i].request.request_id.as_str(), response, subject)
            })
            .collect();
        idempotency::store_batch(&mut tx, CREATE_METHOD, &stored).await?;

        let actor = actor.to_proto();
        let changes: Vec<_> = created
            .iter()
            .zip(&responses)
            .filter_map(|((_, row), (_, response))| {
                let customer = response.customer.as_ref()?;
                let change =
                    crate::feed::new_change(row, ChangeType::Created, None, &[], customer, &actor);
                Some(change)
            })
            .collect();
        feed::append_all(&mut tx, SCHEMA, &changes).await?;
        tx.commit().await?;
        self.feed.committed();
        // No cache write: no instance can hold a copy of an id that did not exist (misses are
        // not cached), so the first read loads it, and a large import does not flood Redis.
        Ok(written
            .into_iter()
            .map(|w| {
                w.unwrap_or_else(|| {
                    let bug = anyhow::anyhow!("an import row was left without an outcome");
                    Written::Failed(ApiError::Internal(bug))
                })
            })
            .collect())
    }

    /// Streams the active customers matching the filter in id order, each with the token to
    /// resume after it.
    pub(super) fn export(
        &self,
        req: pb::ExportCustomersRequest,
    ) -> Result<ResponseStream<pb::ExportCustomersResponse>> {
        let sql_filter = self.parse_filter(&req.filter, &store::CUSTOMER_FILTER)?;
        refuse_as_of_time(req.as_of_time.as_ref())?;
        let after = resume_after(&self.page_tokens, &req)?;
        let (tx, rx) = mpsc::channel(256);
        let (db, tokens) = (self.db.clone(), self.page_tokens.clone());
        let fingerprint = export_fingerprint(&req.filter);
        tokio::spawn(async move {
            let mut after = after;
            loop {
                let page = export_page(&db, &sql_filter, after).await;
                let customers = match page {
                    Ok(customers) if customers.is_empty() => return,
                    Ok(customers) => customers,
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(err))).await;
                        return;
                    }
                };
                // A short batch is the last: no query (and no pooled connection) to learn it.
                let last_batch = customers.len() < EXPORT_BATCH as usize;
                for customer in customers {
                    after = Uuid::parse_str(&customer.id).unwrap_or(after);
                    let message = pb::ExportCustomersResponse {
                        customer: Some(customer),
                        resume_token: tokens.encode(fingerprint, &ExportCursor { after }),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                if last_batch {
                    return;
                }
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// The next active customers after `after` matching the filter.
async fn export_page(db: &PgPool, filter: &SqlFilter, after: Uuid) -> Result<Vec<pb::Customer>> {
    let mut conn = db.acquire().await?;
    let rows = store::active_matching_after(&mut conn, filter, after, EXPORT_BATCH).await?;
    store::to_protos(&mut conn, &rows).await
}
