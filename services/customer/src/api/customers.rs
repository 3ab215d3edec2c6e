//! Create, Get, BatchGet, List, Update, Delete and Undelete: the single-customer RPCs and the
//! listing.

use crm_platform::idempotency::{self, Outcome};
use crm_platform::list::ListRequest;
use crm_platform::{ApiError, FieldViolations};
use crm_proto::crm::common::v1::ChangeType;
use crm_proto::crm::customer::v1 as pb;
use prost::Message;
use uuid::Uuid;

use super::{CustomerApi, Write, both, customer_subject};
use crate::domain::history::diff;
use crate::domain::{CustomerFields, CustomerPatch, CustomerState, Principal, parse_id};
use crate::error::{Error, Result};
use crate::store;

impl CustomerApi {
    /// Creates a customer in its own transaction, honouring the request id (checked against
    /// `hashed`, the request as the caller sent it); `true` when it was created now, `false`
    /// when the request id was seen before.
    pub(super) async fn create_once(
        &self,
        fields: &CustomerFields,
        request_id: &str,
        hashed: &impl Message,
        actor: &Principal,
    ) -> Result<(pb::CreateCustomerResponse, bool)> {
        let id = Uuid::now_v7();
        let about = [customer_subject(id)];
        let mut tx = self.begin().await?;
        let outcome = idempotency::run(
            &mut tx,
            "CreateCustomer",
            request_id,
            hashed,
            &about,
            async |tx| {
                let row = store::insert(tx, id, fields, actor).await?;
                let customer = Some(row.to_proto(Vec::new()));
                Ok::<_, Error>((pb::CreateCustomerResponse { customer }, row))
            },
        )
        .await?;
        match outcome {
            Outcome::Replayed(response) => Ok((response, false)),
            Outcome::Ran(response, row) => {
                self.finish_write(tx, &[Write::whole(row, ChangeType::Created)], actor)
                    .await?;
                Ok((response, true))
            }
        }
    }

    pub(super) async fn create(
        &self,
        req: pb::CreateCustomerRequest,
        actor: &Principal,
    ) -> Result<pb::CreateCustomerResponse> {
        let customer = req
            .customer
            .as_ref()
            .ok_or_else(|| ApiError::invalid("customer", "is required"))?;
        let fields = CustomerFields::try_from(customer)?;
        idempotency::validate_request_id("request_id", &req.request_id)?;
        Ok(self
            .create_once(&fields, &req.request_id, &req, actor)
            .await?
            .0)
    }

    pub(super) async fn get(&self, req: pb::GetCustomerRequest) -> Result<pb::GetCustomerResponse> {
        let id = parse_id("id", &req.id)?;
        Ok(pb::GetCustomerResponse {
            customer: Some(self.get_resolved(id).await?),
        })
    }

    /// Every id is answered, duplicates once per occurrence, in request order.
    pub(super) async fn batch_get(
        &self,
        req: pb::BatchGetCustomersRequest,
    ) -> Result<pb::BatchGetCustomersResponse> {
        if req.ids.is_empty() || req.ids.len() > 100 {
            return Err(ApiError::invalid("ids", "name 1..=100 ids").into());
        }
        let mut v = FieldViolations::new();
        let ids: Vec<Uuid> = req
            .ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| {
                parse_id(&format!("ids[{i}]"), id)
                    .map_err(|e| v.extend(e))
                    .ok()
            })
            .collect();
        v.into_result()?;
        let mut customers = Vec::with_capacity(ids.len());
        for id in ids {
            customers.push(self.get_resolved(id).await?);
        }
        Ok(pb::BatchGetCustomersResponse { customers })
    }

    /// One page of customers, on one pooled connection.
    pub(super) async fn list(
        &self,
        req: pb::ListCustomersRequest,
    ) -> Result<pb::ListCustomersResponse> {
        let show_deleted = if req.show_deleted { "1" } else { "0" };
        let list = store::CUSTOMERS.prepare(
            &self.page_tokens,
            &ListRequest::new(req.page_size, &req.page_token)
                .filter(&req.filter)
                .order_by(&req.order_by)
                .scope(&[show_deleted]),
        )?;
        // One connection for the page and its consents.
        let mut conn = self.db.acquire().await?;
        let page = store::customers_page(&mut conn, &list, req.show_deleted).await?;
        let customers = store::to_protos(&mut conn, &page.rows).await?;
        Ok(pb::ListCustomersResponse {
            customers,
            next_page_token: page.next_page_token,
        })
    }

    /// Validates the request (mask first) before the row is read, then applies the mask and
    /// records each changed field in the history.
    pub(super) async fn update(
        &self,
        req: pb::UpdateCustomerRequest,
        actor: &Principal,
    ) -> Result<pb::UpdateCustomerResponse> {
        let incoming = req
            .customer
            .as_ref()
            .ok_or_else(|| ApiError::invalid("customer", "is required"))?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let (patch, id) = both(
            CustomerPatch::new(incoming, &paths),
            parse_id("customer.id", &incoming.id),
        )?;
        let mut tx = self.begin().await?;
        let row = self.lock_active(&mut tx, id, &incoming.etag).await?;
        let before = row.fields();
        let mut fields = before.clone();
        patch.apply(&mut fields)?;
        let changes = diff(&before, &fields);
        let row = store::update_fields(&mut tx, id, &fields, actor).await?;
        store::insert_field_changes(&mut tx, id, row.version, actor, &changes).await?;
        let paths = changes.into_iter().map(|c| c.path).collect();
        let mut customers = self
            .finish_write(tx, &[Write::updated(row, paths)], actor)
            .await?;
        Ok(pb::UpdateCustomerResponse {
            customer: customers.pop(),
        })
    }

    pub(super) async fn delete(
        &self,
        req: pb::DeleteCustomerRequest,
        actor: &Principal,
    ) -> Result<pb::DeleteCustomerResponse> {
        let id = parse_id("id", &req.id)?;
        let mut tx = self.begin().await?;
        self.lock_active(&mut tx, id, &req.etag).await?;
        let row = store::set_state(&mut tx, id, CustomerState::Deleted, None, actor).await?;
        let mut customers = self
            .finish_write(tx, &[Write::whole(row, ChangeType::Deleted)], actor)
            .await?;
        Ok(pb::DeleteCustomerResponse {
            customer: customers.pop(),
        })
    }

    pub(super) async fn undelete(
        &self,
        req: pb::UndeleteCustomerRequest,
        actor: &Principal,
    ) -> Result<pb::UndeleteCustomerResponse> {
        let id = parse_id("id", &req.id)?;
        let mut tx = self.begin().await?;
        let row = store::find(&mut tx, id, true)
            .await?
            .ok_or(Error::NotFound(id))?;
        if !req.etag.is_empty() && req.etag != row.etag() {
            return Err(Error::EtagMismatch);
        }
        if row.state != CustomerState::Deleted {
            return Err(Error::NotDeleted(id));
        }
        let row = store::set_state(&mut tx, id, CustomerState::Active, None, actor).await?;
        let mut customers = self
            .finish_write(tx, &[Write::whole(row, ChangeType::Undeleted)], actor)
            .await?;
        Ok(pb::UndeleteCustomerResponse {
            customer: customers.pop(),
        })
    }
}
