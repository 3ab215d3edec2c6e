//! CreateInteraction and ListInteractions: a customer's timeline.

use crm_platform::FieldViolations;
use crm_platform::idempotency;
use crm_platform::list::ListRequest;
use crm_proto::crm::customer::v1 as pb;

use super::{CustomerApi, customer_subject};
use crate::domain::{NewInteraction, Principal, parse_id};
use crate::error::{Error, Result};
use crate::store::{self, InteractionRow};

impl CustomerApi {
    /// Records an interaction; a repeated request id returns the first call's response. The
    /// timeline is not part of the customer record: no event, no version change.
    pub(super) async fn add_interaction(
        &self,
        req: pb::CreateInteractionRequest,
        actor: &Principal,
    ) -> Result<pb::CreateInteractionResponse> {
        let interaction = req
            .interaction
            .as_ref()
            .ok_or_else(|| FieldViolations::single("interaction", "is required"))?;
        let interaction = NewInteraction::try_from(interaction)?;
        idempotency::validate_request_id("request_id", &req.request_id)?;
        let mut tx = self.begin().await?;
        let outcome = idempotency::run(
            &mut tx,
            "CreateInteraction",
            &req.request_id,
            &req,
            &[customer_subject(interaction.customer_id)],
            async |tx| {
                self.lock_active(tx, interaction.customer_id, "").await?;
                let stored = store::insert_interaction(tx, &interaction, actor).await?;
                let interaction = Some(stored.to_proto());
                Ok::<_, Error>((pb::CreateInteractionResponse { interaction }, ()))
            },
        )
        .await?;
        tx.commit().await?;
        Ok(outcome.into_response())
    }

    pub(super) async fn interactions(
        &self,
        req: pb::ListInteractionsRequest,
    ) -> Result<pb::ListInteractionsResponse> {
        let id = parse_id("customer_id", &req.customer_id)?;
        let page = self
            .page_under_customer(
                &store::INTERACTIONS,
                &ListRequest::new(req.page_size, &req.page_token)
                    .filter(&req.filter)
                    .scope(&[&req.customer_id]),
                Some(id),
                async |conn, list| store::interactions_page(conn, list, id).await,
            )
            .await?;
        Ok(pb::ListInteractionsResponse {
            interactions: page.rows.iter().map(InteractionRow::to_proto).collect(),
            next_page_token: page.next_page_token,
        })
    }
}
