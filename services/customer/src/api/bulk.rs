//! ImportCustomers and ExportCustomers: customers in bulk, as streams.

use chrono::Utc;
use crm_platform::error::rpc_status;
use crm_platform::filter::SqlFilter;
use crm_platform::page_token::{PageTokenCodec, PageTokenError, query_fingerprint};
use crm_platform::{ApiError, FieldViolations};
use crm_proto::crm::common::v1::ItemResult;
use crm_proto::crm::customer::v1 as pb;
use crm_proto::crm::customer::v1::import_customers_response::Kind;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};
use uuid::Uuid;

use super::{CustomerApi, ResponseStream, idempotency};
use crate::domain::{CustomerFields, Principal, timestamp_from_proto};
use crate::error::{Error, Result};
use crate::store;

/// How many customers one export query reads.
const EXPORT_BATCH: i64 = 500;

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
    /// Answers every row with an `ItemResult` as it is committed and, once the caller has
    /// half-closed and every row is answered, with the summary. A database outage ends the
    /// stream with UNAVAILABLE; rows answered before stay committed.
    pub(super) fn import(
        &self,
        mut rows: Streaming<pb::ImportCustomersRequest>,
        actor: Principal,
    ) -> ResponseStream<pb::ImportCustomersResponse> {
        // A small buffer: when the caller stops reading results, the import stops reading rows,
        // and HTTP/2 flow control pushes back on the sender. Memory stays bounded.
        let (tx, rx) = mpsc::channel(64);
        let api = self.clone();
        tokio::spawn(async move {
            let mut summary = pb::ImportCustomersSummary::default();
            let mut index = 0;
            while let Some(row) = rows.next().await {
                let answer = match row {
                    Ok(row) => api.import_row(row, index, &actor).await,
                    Err(status) => Err(status),
                };
                let (result, outcome) = match answer {
                    Ok(answered) => answered,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                match outcome {
                    Outcome::Created => summary.created_count += 1,
                    Outcome::Repeated => summary.repeated_count += 1,
                    Outcome::Rejected => summary.rejected_count += 1,
                }
                index += 1;
                let message = pb::ImportCustomersResponse {
                    kind: Some(Kind::Result(result)),
                };
                if tx.send(Ok(message)).await.is_err() {
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

    /// Imports one row as CreateCustomer would. A row the caller got wrong is answered with the
    /// status CreateCustomer would have returned and the import goes on; a database that is
    /// unreachable ends the whole stream with UNAVAILABLE, as the contract says, so the caller
    /// re-sends from the first unanswered row instead of seeing every later row rejected.
    async fn import_row(
        &self,
        row: pb::ImportCustomersRequest,
        index: i64,
        actor: &Principal,
    ) -> Result<(ItemResult, Outcome), Status> {
        if row.row_ref.chars().count() > 100 {
            let error = ApiError::invalid("row_ref", "must be at most 100 characters");
            return Ok(rejected(index, &row.row_ref, error));
        }
        let Some(customer) = &row.customer else {
            let error = ApiError::invalid("customer", "is required");
            return Ok(rejected(index, &row.row_ref, error));
        };
        let fields = match CustomerFields::try_from(customer) {
            Ok(fields) => fields,
            Err(v) => return Ok(rejected(index, &row.row_ref, ApiError::InvalidArgument(v))),
        };
        if let Err(error) = idempotency::validate_request_id("request_id", &row.request_id) {
            return Ok(rejected(index, &row.row_ref, error));
        }
        // A row's request id guards the customer it carries, not the row (whose ref and index
        // may differ between re-sent imports).
        match self
            .create_once(&fields, &row.request_id, customer, actor)
            .await
        {
            Ok((response, created)) => {
                let result = ItemResult {
                    index,
                    r#ref: row.row_ref,
                    status: Some(rpc_status(&Status::new(Code::Ok, ""))),
                    id: response.customer.map(|c| c.id).unwrap_or_default(),
                };
                let outcome = if created {
                    Outcome::Created
                } else {
                    Outcome::Repeated
                };
                Ok((result, outcome))
            }
            Err(err) => match ApiError::from(err) {
                ApiError::Unavailable(cause) => Err(ApiError::Unavailable(cause).into()),
                error => Ok(rejected(index, &row.row_ref, error)),
            },
        }
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
