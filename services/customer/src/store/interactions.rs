//! SQL for interactions: a customer's timeline.

use chrono::{DateTime, Utc};
use crm_proto::crm::customer::v1 as pb;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::domain::{self, NewInteraction, Principal};
use crate::error::Result;

/// One stored interaction. No owner is `owner_kind` and `owner_id` both empty; a direction
/// not stored (or stored before NONE existed) reads as NONE.
#[derive(Debug, Clone, FromRow)]
pub struct InteractionRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub r#type: String,
    pub direction: String,
    pub subject: String,
    pub body: String,
    pub occur_time: DateTime<Utc>,
    pub duration_ms: Option<i64>,
    pub owner_kind: String,
    pub owner_id: String,
    pub create_time: DateTime<Utc>,
    pub created_by_kind: String,
    pub created_by: String,
}

impl InteractionRow {
    /// The proto message.
    pub fn to_proto(&self) -> pb::Interaction {
        let creator = Principal::stored(&self.created_by_kind, &self.created_by).to_proto();
        pb::Interaction {
            id: self.id.to_string(),
            customer_id: self.customer_id.to_string(),
            r#type: pb::InteractionType::from_str_name(&format!("INTERACTION_TYPE_{}", self.r#type))
                .unwrap_or_default() as i32,
            direction: pb::InteractionDirection::from_str_name(&format!(
                "INTERACTION_DIRECTION_{}",
                self.direction
            ))
            .filter(|d| *d != pb::InteractionDirection::Unspecified)
            .unwrap_or(pb::InteractionDirection::None) as i32,
            subject: self.subject.clone(),
            body: self.body.clone(),
            occur_time: Some(domain::timestamp_to_proto(self.occur_time)),
            duration: self.duration_ms.map(|ms| prost_types::Duration {
                seconds: ms / 1000,
                nanos: ((ms % 1000) * 1_000_000) as i32,
            }),
            owner: (!self.owner_id.is_empty())
                .then(|| Principal::stored(&self.owner_kind, &self.owner_id).to_proto()),
            audit: Some(crm_proto::crm::common::v1::AuditInfo {
                create_time: Some(domain::timestamp_to_proto(self.create_time)),
                update_time: Some(domain::timestamp_to_proto(self.create_time)),
                creator: Some(creator.clone()),
                updater: Some(creator),
            }),
        }
    }
}

/// Columns of an interaction read.
pub const INTERACTION_COLUMNS: &str = "id, customer_id, type, direction, subject, body, \
    occur_time, duration_ms, owner_kind, owner_id, create_time, created_by_kind, created_by";

/// Every interaction of a customer, newest first.
pub async fn all_interactions(
    conn: &mut PgConnection,
    customer_id: Uuid,
) -> Result<Vec<InteractionRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {INTERACTION_COLUMNS} FROM customer.interactions WHERE customer_id = $1 \
         ORDER BY occur_time DESC, id DESC"
    ))
    .bind(customer_id)
    .fetch_all(conn)
    .await?)
}

/// Stores an interaction recorded by `actor`.
pub async fn insert_interaction(
    conn: &mut PgConnection,
    interaction: &NewInteraction,
    actor: &Principal,
) -> Result<InteractionRow> {
    let sql = format!(
        "INSERT INTO customer.interactions (id, customer_id, type, direction, subject, body, \
           occur_time, duration_ms, owner_kind, owner_id, created_by_kind, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         RETURNING {INTERACTION_COLUMNS}"
    );
    // No owner is stored as an empty kind and id, as the columns are NOT NULL.
    let (owner_kind, owner_id) = interaction
        .owner
        .as_ref()
        .map_or(("", ""), |o| (o.kind, o.id.as_str()));
    Ok(sqlx::query_as(&sql)
        .bind(Uuid::now_v7())
        .bind(interaction.customer_id)
        .bind(interaction.kind_name())
        .bind(interaction.direction_name())
        .bind(&interaction.subject)
        .bind(&interaction.body)
        .bind(interaction.occur_time)
        .bind(interaction.duration_ms)
        .bind(owner_kind)
        .bind(owner_id)
        .bind(actor.kind)
        .bind(&actor.id)
        .fetch_one(conn)
        .await?)
}
