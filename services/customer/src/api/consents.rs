//! RecordConsent and ListConsentHistory.

use chrono::{DateTime, Utc};
use crm_platform::idempotency::{self, Outcome};
use crm_platform::page_token::query_fingerprint;
use crm_platform::paging::page_size;
use crm_proto::crm::customer::v1 as pb;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{CustomerApi, Write, both};
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
        let limit = page_size(req.page_size, 50, 1000)?;
        let fingerprint = query_fingerprint(&[&req.customer_id]);
        let cursor: Option<(DateTime<Utc>, i64)> =
            self.decode_token(&req.page_token, fingerprint)?;
        let mut conn = self.db.acquire().await?;
        self.ensure_exists(&mut conn, id).await?;
        let mut entries = store::consent_history(&mut conn, id, cursor, limit as i64 + 1).await?;
        let next_page_token = if entries.len() > limit as usize {
            entries.truncate(limit as usize);
            let last = entries.last().expect("a full page has a last row");
            self.page_tokens.encode(fingerprint, &(last.1, last.0))
        } else {
            String::new()
        };
        Ok(pb::ListConsentHistoryResponse {
            consents: entries.into_iter().map(|e| e.2).collect(),
            next_page_token,
        })
    }
}
