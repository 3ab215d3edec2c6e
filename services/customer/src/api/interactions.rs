//! CreateInteraction and ListInteractions: a customer's timeline.

use chrono::{DateTime, Utc};
use crm_platform::FieldViolations;
use crm_platform::db::bind_filter_params;
use crm_platform::idempotency;
use crm_platform::page_token::query_fingerprint;
use crm_platform::paging::page_size;
use crm_proto::crm::customer::v1 as pb;
use uuid::Uuid;

use super::{CustomerApi, INTERACTION_FILTER};
use crate::domain::{self, Principal, parse_id};
use crate::error::{Error, Result};
use crate::store::{self, INTERACTION_COLUMNS, InteractionRow};

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
        let limit = page_size(req.page_size, 50, 1000)?;
        let sql_filter = self.parse_filter(&req.filter, &INTERACTION_FILTER, 5)?;
        let fingerprint = query_fingerprint(&[&req.customer_id, &req.filter]);
        let cursor: Option<(DateTime<Utc>, Uuid)> =
            self.decode_token(&req.page_token, fingerprint)?;
        let mut conn = self.db.acquire().await?;
        self.ensure_exists(&mut conn, id).await?;
        let sql = format!(
            "SELECT {INTERACTION_COLUMNS} FROM customer.interactions WHERE customer_id = $1 \
             AND ($2::timestamptz IS NULL OR (occur_time, id) < ($2, $3)) AND {} \
             ORDER BY occur_time DESC, id DESC LIMIT $4",
            sql_filter.sql
        );
        let query = sqlx::query_as::<_, InteractionRow>(&sql)
            .bind(id)
            .bind(cursor.map(|c| c.0))
            .bind(cursor.map(|c| c.1).unwrap_or_default())
            .bind(limit as i64 + 1);
        let mut rows = bind_filter_params(query, &sql_filter.params)
            .fetch_all(&mut *conn)
            .await?;
        let next_page_token = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            let last = rows.last().expect("a full page has a last row");
            self.page_tokens
                .encode(fingerprint, &(last.occur_time, last.id))
        } else {
            String::new()
        };
        Ok(pb::ListInteractionsResponse {
            interactions: rows.iter().map(InteractionRow::to_proto).collect(),
            next_page_token,
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
