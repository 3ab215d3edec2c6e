//! ListCustomerFieldChanges: who changed which field of a customer, newest first.

use crm_platform::list::ListRequest;
use crm_proto::crm::customer::v1 as pb;

use super::CustomerApi;
use crate::domain::parse_id;
use crate::error::Result;
use crate::store;

impl CustomerApi {
    /// One page of a customer's field history (any state but erased has one), on one pooled
    /// connection.
    pub(super) async fn list_field_changes(
        &self,
        req: pb::ListCustomerFieldChangesRequest,
    ) -> Result<pb::ListCustomerFieldChangesResponse> {
        let id = parse_id("customer_id", &req.customer_id)?;
        let page = self
            .page_under_customer(
                &store::FIELD_CHANGES,
                &ListRequest::new(req.page_size, &req.page_token)
                    .filter(&req.filter)
                    .scope(&[&req.customer_id]),
                Some(id),
                async |conn, list| store::field_changes_page(conn, list, id).await,
            )
            .await?;
        Ok(pb::ListCustomerFieldChangesResponse {
            field_changes: page.rows.iter().map(|row| row.to_proto()).collect(),
            next_page_token: page.next_page_token,
        })
    }
}
