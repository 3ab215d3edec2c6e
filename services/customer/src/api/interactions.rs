//! CreateInteraction and ListInteractions: a customer's timeline.

use chrono::Utc;
use crm_platform::FieldViolations;
use crm_platform::idempotency;
use crm_platform::list::ListRequest;
use crm_proto::crm::customer::v1 as pb;
use uuid::Uuid;

use super::CustomerApi;
use crate::domain::{self, Principal, parse_id};
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
        let (customer_id, row) = validate_interaction(req.interaction.as_ref(), actor)?;
        idempotency::validate_request_id("request_id", &req.request_id)?;
        let mut tx = self.begin().await?;
        let outcome = idempotency::run(
            &mut tx,
            "CreateInteraction",
            &req.request_id,
            &req,
            async |tx| {
                self.lock_active(tx, customer_id, "").await?;
                let stored = store::insert_interaction(tx, &row).await?;
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
        let list = store::INTERACTIONS.prepare(
            &self.page_tokens,
            &ListRequest {
                page_size: req.page_size,
                page_token: &req.page_token,
                filter: &req.filter,
                scope: &[&req.customer_id],
                ..ListRequest::default()
            },
        )?;
        let mut conn = self.db.acquire().await?;
        self.ensure_exists(&mut conn, id).await?;
        let page = store::interactions_page(&mut conn, &list, id).await?;
        Ok(pb::ListInteractionsResponse {
            interactions: page.rows.iter().map(InteractionRow::to_proto).collect(),
            next_page_token: page.next_page_token,
        })
    }
}

/// Validates an interaction to record, written by `actor`.
fn validate_interaction(
    i: Option<&pb::Interaction>,
    actor: &Principal,
) -> Result<(Uuid, InteractionRow), FieldViolations> {
    let Some(i) = i else {
        return Err(FieldViolations::single("interaction", "is required"));
    };
    let mut v = FieldViolations::new();
    let customer_id = parse_id("interaction.customer_id", &i.customer_id)
        .map_err(|e| v.extend(e))
        .ok();
    let kind = match pb::InteractionType::try_from(i.r#type) {
        Ok(t) if t != pb::InteractionType::Unspecified => {
            t.as_str_name().trim_start_matches("INTERACTION_TYPE_")
        }
        _ => {
            v.add("interaction.type", "must be CALL, EMAIL, MEETING or NOTE");
            ""
        }
    };
    // Unset means NONE: the server stores and returns a direction always.
    let direction = pb::InteractionDirection::try_from(i.direction)
        .map(|d| match d {
            pb::InteractionDirection::Unspecified => "NONE",
            other => other
                .as_str_name()
                .trim_start_matches("INTERACTION_DIRECTION_"),
        })
        .unwrap_or_else(|_| {
            v.add(
                "interaction.direction",
                "must be INBOUND, OUTBOUND or NONE (unset means NONE)",
            );
            "NONE"
        });
    let subject = i.subject.trim().to_string();
    if subject.is_empty() || subject.chars().count() > 200 {
        v.add("interaction.subject", "is required, at most 200 characters");
    }
    if i.body.chars().count() > 10_000 {
        v.add("interaction.body", "must be at most 10000 characters");
    }
    let owner = Principal::owner_from_proto(i.owner.as_ref(), "interaction.owner", &mut v);
    let now = Utc::now();
    let occur_time = match &i.occur_time {
        None => now,
        Some(ts) => match domain::timestamp_from_proto(ts) {
            Some(t) if t <= now + chrono::Duration::days(1) => t,
            _ => {
                v.add(
                    "interaction.occur_time",
                    "must be a valid time at most 1 day ahead",
                );
                now
            }
        },
    };
    let duration_ms = match &i.duration {
        None => None,
        Some(d) if d.seconds >= 0 && d.seconds <= 86_400 && d.nanos >= 0 => {
            Some(d.seconds * 1000 + d.nanos as i64 / 1_000_000)
        }
        Some(_) => {
            v.add("interaction.duration", "must be between 0 and 24 hours");
            None
        }
    };
    let Some(customer_id) = customer_id.filter(|_| v.is_empty()) else {
        return Err(v);
    };
    Ok((
        customer_id,
        InteractionRow {
            id: Uuid::now_v7(),
            customer_id,
            r#type: kind.to_string(),
            direction: direction.to_string(),
            subject,
            body: i.body.clone(),
            occur_time,
            duration_ms,
            owner_kind: owner
                .as_ref()
                .map(|o| o.kind)
                .unwrap_or_default()
                .to_string(),
            owner_id: owner.map(|o| o.id).unwrap_or_default(),
            create_time: now,
            created_by_kind: actor.kind.to_string(),
            created_by: actor.id.clone(),
        },
    ))
}
