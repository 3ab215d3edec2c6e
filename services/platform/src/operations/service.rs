//! `google.longrunning.Operations`, one per process over every served service's store.
//!
//! Names are `operations/<uuid>` with no service part (proto/README.md), so a call finds the
//! operation by asking each store; ids are UUIDv7, unique across stores. The scope is checked
//! here, once the operation's service is known: `<service>.read` for Get, List and Wait,
//! `<service>.write` for Cancel and Delete.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crm_proto::google::longrunning::operations_server::Operations;
use crm_proto::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest,
    ListOperationsResponse, Operation, WaitOperationRequest,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::store::{self, Deleted, OperationRow};
use super::worker::cancelled_status;
use super::{OperationStore, parse_operation_name};
use crate::auth::{Principal, require_scope};
use crate::error::ApiError;
use crate::filter::{self, FieldType, FilterSchema};
use crate::list::PageSizes;
use crate::page_token::{PageTokenCodec, query_fingerprint};

/// How often WaitOperation looks at the operation again.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// What WaitOperation keeps of the caller's deadline to send its answer in.
const WAIT_ANSWER_MARGIN: Duration = Duration::from_millis(250);

/// ListOperations' filter: `done` (bool) and `create_time` (timestamp).
static OPERATION_FILTER: LazyLock<FilterSchema> = LazyLock::new(|| {
    FilterSchema::new()
        .field("done", FieldType::Bool, "(end_time IS NOT NULL)")
        .field("create_time", FieldType::Timestamp, "create_time")
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

impl Access {
    fn scope(self, service: &str) -> String {
        match self {
            Access::Read => format!("{service}.read"),
            Access::Write => format!("{service}.write"),
        }
    }
}

/// Serves `google.longrunning.Operations` over the stores of every service in the process.
#[derive(Debug, Clone)]
pub struct OperationsService {
    stores: Arc<Vec<OperationStore>>,
    page_tokens: PageTokenCodec,
    default_timeout: Duration,
}

impl OperationsService {
    /// Serves `stores`; `default_timeout` is the server's deadline for calls that send no
    /// `grpc-timeout` (WaitOperation answers before it).
    pub fn new(
        stores: Vec<OperationStore>,
        page_tokens: PageTokenCodec,
        default_timeout: Duration,
    ) -> Self {
        Self {
            stores: Arc::new(stores),
            page_tokens,
            default_timeout,
        }
    }

    /// The store holding operation `id` and its row, checking the caller's scope for it.
    async fn find<T>(
        &self,
        request: &Request<T>,
        id: Uuid,
        name: &str,
        access: Access,
    ) -> Result<(&OperationStore, OperationRow), Status> {
        for store in self.stores.iter() {
            if let Some(row) = store::fetch(&store.pool, id)
                .await
                .map_err(ApiError::from)?
            {
                require_scope(request, &access.scope(store.service))?;
                return Ok((store, row));
            }
        }
        Err(ApiError::not_found("operation", name).into())
    }

    /// How long WaitOperation may wait: the request's `timeout` (if set), within the caller's
    /// deadline less a margin to answer in.
    fn wait_budget(&self, request: &Request<WaitOperationRequest>) -> Result<Duration, Status> {
        let deadline = crate::middleware::grpc_timeout(&request.metadata().clone().into_headers())
            .map_or(self.default_timeout, |asked| {
                asked.min(self.default_timeout)
            });
        let mut budget = deadline.saturating_sub(WAIT_ANSWER_MARGIN.min(deadline / 4));
        if let Some(timeout) = &request.get_ref().timeout {
            let asked = Duration::try_from(*timeout)
                .map_err(|_| Status::from(ApiError::invalid("timeout", "must not be negative")))?;
            budget = budget.min(asked);
        }
        Ok(budget)
    }
}

fn caller_scopes<T>(request: &Request<T>) -> Option<&std::collections::BTreeSet<String>> {
    request.extensions().get::<Principal>().map(|p| &p.scopes)
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(
        &self,
        request: Request<ListOperationsRequest>,
    ) -> Result<Response<ListOperationsResponse>, Status> {
        let scopes = caller_scopes(&request)
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        let readable: Vec<&OperationStore> = self
            .stores
            .iter()
            .filter(|s| scopes.contains(&Access::Read.scope(s.service)))
            .collect();
        if readable.is_empty() {
            let needed: Vec<String> = self
                .stores
                .iter()
                .map(|s| format!("`{}`", Access::Read.scope(s.service)))
                .collect();
            return Err(Status::permission_denied(format!(
                "this method needs one of the scopes {}",
                needed.join(", ")
            )));
        }
        let req = request.get_ref();
        Ok(Response::new(self.list(&readable, req).await?))
    }

    async fn get_operation(
        &self,
        request: Request<GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let name = &request.get_ref().name;
        let id = parse_operation_name("name", name)?;
        let (_, row) = self.find(&request, id, name, Access::Read).await?;
        Ok(Response::new(row.to_proto()))
    }

    async fn delete_operation(
        &self,
        request: Request<DeleteOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let name = &request.get_ref().name;
        let id = parse_operation_name("name", name)?;
        let (store, _) = self.find(&request, id, name, Access::Write).await?;
        match store::delete_done(&store.pool, id)
            .await
            .map_err(ApiError::from)?
        {
            Deleted::Yes => Ok(Response::new(())),
            Deleted::NotDone => Err(ApiError::FailedPrecondition {
                reason: "OPERATION_NOT_DONE",
                message: format!("{name} is not done; cancel it or wait for it first"),
            }
            .into()),
            Deleted::NotFound => Err(ApiError::not_found("operation", name).into()),
        }
    }

    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<()>, Status> {
        let name = &request.get_ref().name;
        let id = parse_operation_name("name", name)?;
        let (store, _) = self.find(&request, id, name, Access::Write).await?;
        let found = store::request_cancel(&store.pool, id, &cancelled_status())
            .await
            .map_err(ApiError::from)?;
        if !found {
            return Err(ApiError::not_found("operation", name).into());
        }
        Ok(Response::new(()))
    }

    async fn wait_operation(
        &self,
        request: Request<WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        let name = request.get_ref().name.clone();
        let id = parse_operation_name("name", &name)?;
        let budget = self.wait_budget(&request)?;
        let until = tokio::time::Instant::now() + budget;
        let (store, mut row) = self.find(&request, id, &name, Access::Read).await?;
        while row.end_time.is_none() && tokio::time::Instant::now() + WAIT_POLL < until {
            tokio::time::sleep(WAIT_POLL).await;
            row = store::fetch(&store.pool, id)
                .await
                .map_err(ApiError::from)?
                .ok_or_else(|| ApiError::not_found("operation", &name))?;
        }
        Ok(Response::new(row.to_proto()))
    }
}

/// The position after the last operation of a page.
#[derive(serde::Serialize, serde::Deserialize)]
struct Cursor {
    before: Uuid,
}

impl OperationsService {
    /// One page of the operations in `stores`, newest first. Each store is asked for its next
    /// `page_size + 1` after the cursor and the answers merged by id, which orders across stores
    /// because ids are UUIDv7.
    async fn list(
        &self,
        stores: &[&OperationStore],
        req: &ListOperationsRequest,
    ) -> Result<ListOperationsResponse, ApiError> {
        if !req.name.is_empty() && req.name != "operations" {
            return Err(ApiError::invalid("name", "must be empty or `operations`"));
        }
        let limit = PageSizes::LIST
            .resolve(req.page_size)
            .ok_or_else(|| ApiError::invalid("page_size", "must not be negative"))?;
        let expr =
            filter::parse(&req.filter).map_err(|e| ApiError::invalid("filter", e.to_string()))?;
        let sql_filter = filter::to_sql(&expr, &OPERATION_FILTER)
            .map_err(|e| ApiError::invalid("filter", e.to_string()))?;
        let fingerprint = query_fingerprint(&["operations", &req.filter]);
        let before = if req.page_token.is_empty() {
            None
        } else {
            let cursor: Cursor = self
                .page_tokens
                .decode(&req.page_token, fingerprint)
                .map_err(|e| ApiError::invalid("page_token", e.to_string()))?;
            Some(cursor.before)
        };
        let mut rows = Vec::new();
        for store in stores {
            rows.extend(store::list(&store.pool, &sql_filter, before, i64::from(limit) + 1).await?);
        }
        rows.sort_by_key(|row| std::cmp::Reverse(row.id));
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => self
                .page_tokens
                .encode(fingerprint, &Cursor { before: last.id }),
            _ => String::new(),
        };
        Ok(ListOperationsResponse {
            operations: rows.iter().map(OperationRow::to_proto).collect(),
            next_page_token,
            unreachable: Vec::new(),
        })
    }
}
