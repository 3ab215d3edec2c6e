//! GDPR: this service's part of an erasure or an export (EraseServiceCustomerData,
//! ExportServiceCustomerData), and the suite-wide operations (EraseCustomer,
//! ExportCustomerData), which run as long-running operations.
//!
//! Until those two run as operations, they validate their request exactly as they will (so
//! callers get the right INVALID_ARGUMENT or NOT_FOUND) and then answer UNIMPLEMENTED, rather
//! than starting an operation nothing runs.

use chrono::Utc;
use crm_platform::{ApiError, FieldViolations};
use crm_proto::crm::common::v1::ChangeType;
use crm_proto::crm::customer::v1 as pb;
use crm_proto::google::longrunning::Operation;
use uuid::Uuid;

use super::{CustomerApi, Write, both, idempotency};
use crate::domain::{self, CustomerState, Principal, parse_id};
use crate::error::{Error, Result};
use crate::store::{self, InteractionRow};

/// The reason of an erasure: required, at most 200 characters.
fn validate_reason(reason: &str) -> Result<String, FieldViolations> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 200 {
        return Err(FieldViolations::single(
            "reason",
            "is required, at most 200 characters",
        ));
    }
    Ok(reason.to_string())
}

/// The answer of a method whose operation nothing runs yet.
fn not_deployed(method: &str) -> Error {
    let message = format!(
        "{method} runs as a long-running operation; the operations runner is not deployed yet"
    );
    Error::Api(ApiError::Unimplemented { message })
}

impl CustomerApi {
    /// Erases a customer and everything merged into it, in one transaction. Erasing twice is
    /// not an error: the tombstone is returned again.
    async fn erase(&self, id: Uuid, actor: &Principal) -> Result<pb::Customer> {
        let mut tx = self.begin().await?;
        let row = store::find(&mut tx, id, true)
            .await?
            .ok_or(Error::NotFound(id))?;
        if row.state == CustomerState::Erased {
            return Ok(store::to_protos(&mut tx, &[row]).await?.remove(0));
        }
        // Records merged into this one describe the same person: they go too.
        let merged = store::merged_into(&mut tx, id).await?;
        let mut writes = Vec::new();
        for other in merged.into_iter().chain(std::iter::once(id)) {
            let row = store::erase(&mut tx, other, actor).await?;
            writes.push(Write::whole(row, ChangeType::Erased));
        }
        let mut customers = self.finish_write(tx, &writes, actor).await?;
        // Committed: the old row versions are dead, and the vacuum can remove them.
        self.vacuum.erased();
        tracing::info!(customer_id = %id, "customer erased");
        customers
            .pop()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("erasure wrote nothing")).into())
    }

    pub(super) async fn erase_service_data(
        &self,
        req: pb::EraseServiceCustomerDataRequest,
        actor: &Principal,
    ) -> Result<pb::EraseServiceCustomerDataResponse> {
        let (id, reason) = both(parse_id("id", &req.id), validate_reason(&req.reason))?;
        tracing::info!(customer_id = %id, reason = %reason, actor = %actor.id, "erasing customer");
        Ok(pb::EraseServiceCustomerDataResponse {
            customer: Some(self.erase(id, actor).await?),
        })
    }

    pub(super) async fn export_service_data(
        &self,
        req: pb::ExportServiceCustomerDataRequest,
    ) -> Result<pb::ExportServiceCustomerDataResponse> {
        let id = parse_id("id", &req.id)?;
        let mut conn = self.db.acquire().await?;
        let (_, customer) = store::load(&mut conn, id)
            .await?
            .ok_or(Error::NotFound(id))?;
        let consent_history = store::consent_history(&mut conn, id).await?;
        let interactions = store::all_interactions(&mut conn, id).await?;
        let field_changes = store::field_changes(&mut conn, id).await?;
        Ok(pb::ExportServiceCustomerDataResponse {
            customer: Some(customer),
            consent_history,
            interactions: interactions.iter().map(InteractionRow::to_proto).collect(),
            merge_records: store::merge_records(&mut conn, id).await?,
            export_time: Some(domain::timestamp_to_proto(Utc::now())),
            field_changes: field_changes.iter().map(|c| c.to_proto()).collect(),
        })
    }

    /// EraseCustomer: validated, then UNIMPLEMENTED until the operations runner is deployed.
    pub(super) async fn start_erase(&self, req: pb::EraseCustomerRequest) -> Result<Operation> {
        let (id, _) = both(parse_id("id", &req.id), validate_reason(&req.reason))?;
        idempotency::validate_request_id("request_id", &req.request_id)?;
        let mut conn = self.db.acquire().await?;
        self.ensure_exists(&mut conn, id).await?;
        Err(not_deployed("EraseCustomer"))
    }

    /// ExportCustomerData: validated, then UNIMPLEMENTED until the operations runner is deployed.
    pub(super) async fn start_export(
        &self,
        req: pb::ExportCustomerDataRequest,
    ) -> Result<Operation> {
        let id = parse_id("id", &req.id)?;
        idempotency::validate_request_id("request_id", &req.request_id)?;
        let mut conn = self.db.acquire().await?;
        self.ensure_exists(&mut conn, id).await?;
        Err(not_deployed("ExportCustomerData"))
    }
}
