//! RecordConsent and ListConsentHistory.

use crm_platform::idempotency::{self, Outcome};
use crm_platform::list::ListRequest;
use crm_proto::crm::customer::v1 as pb;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{CustomerApi, Write, both, customer_subject};
use crate::domain::consent::{ValidConsent, validate_consent};
use crate::domain::history::{FieldChange, consent_json};
use crate::domain::{Principal, parse_id};
use crate::error::Result;
use crate::store;

impl CustomerApi {
    /// Records a decision: a new current consent for its channel, a `consents.<CHANNEL>` entry
    /// in the field history, and an UPDATED event on `consents`. A repeated request id returns
    /// the first call's response.
    pub(super) async fn record(
        &self,
        req: pb::RecordConsentRequest,
        actor: &Principal,
    ) -> Result<pb::RecordConsentResponse> {
        let (id, consent) = both(
            parse_id("customer_id", &req.customer_id),
            validate_consent(req.consent.as_ref()),
        )?;
        idempotency::validate_request_id("request_id", &req.request_id)?;
        let mut tx = self.begin().await?;
        let outcome = idempotency::run(
            &mut tx,
            "RecordConsent",
            &req.request_id,
            &req,
            &[customer_subject(id)],
            async |tx| self.record_in(tx, id, &consent, actor).await,
        )
        .await?;
        match outcome {
            Outcome::Replayed(response) => Ok(response),
            Outcome::Ran(response, write) => {
                self.finish_write(tx, &[write], actor).await?;
                Ok(response)
            }
        }
    }

    /// Records `consent` of customer `id` in `tx`: the response, and the write to publish.
    async fn record_in(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        consent: &ValidConsent,
        actor: &Principal,
    ) -> Result<(pb::RecordConsentResponse, Write)> {
        self.lock_active(tx, id, "").await?;
        let mut current = store::current_consents(tx, &[id]).await?;
        let stored = store::insert_consent(tx, id, consent, actor).await?;
        let before = current
            .remove(&id)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.channel == stored.channel);
        let row = store::touch(tx, id, actor).await?;
        let change = FieldChange {
            path: consent.channel_path(),
            old_value: before.as_ref().map(consent_json),
            new_value: Some(consent_json(&stored)),
        };
        store::insert_field_changes(tx, id, row.version, actor, &[change]).await?;
        let customer = store::to_protos(tx, std::slice::from_ref(&row)).await?;
        let response = pb::RecordConsentResponse {
            customer: customer.into_iter().next(),
        };
        Ok((response, Write::updated(row, vec!["consents".to_string()])))
    }

    pub(super) async fn consent_history(
        &self,
        req: pb::ListConsentHistoryRequest,
    ) -> Result<pb::ListConsentHistoryResponse> {
        let id = parse_id("customer_id", &req.customer_id)?;
        let page = self
            .page_under_customer(
                &store::CONSENT_HISTORY,
                &ListRequest::new(req.page_size, &req.page_token).scope(&[&req.customer_id]),
                Some(id),
                async |conn, list| store::consent_history_page(conn, list, id).await,
            )
            .await?;
        Ok(pb::ListConsentHistoryResponse {
            consents: page.rows,
            next_page_token: page.next_page_token,
        })
    }
}
