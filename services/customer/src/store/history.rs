//! SQL for the field history (`customer.field_changes`).

use chrono::{DateTime, Utc};
use crm_proto::crm::customer::v1 as pb;
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::domain::history::{FieldChange, to_value};
use crate::domain::{self, Principal};
use crate::error::Result;

/// Records the changes one write made to a customer, at its new `version`.
pub async fn insert_field_changes(
    conn: &mut PgConnection,
    customer_id: Uuid,
    version: i64,
    actor: &Principal,
    changes: &[FieldChange],
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
    let old: Vec<Option<Json<&serde_json::Value>>> = changes
        .iter()
        .map(|c| c.old_value.as_ref().map(Json))
        .collect();
    let new: Vec<Option<Json<&serde_json::Value>>> = changes
        .iter()
        .map(|c| c.new_value.as_ref().map(Json))
        .collect();
    sqlx::query(
        "INSERT INTO customer.field_changes \
           (customer_id, path, old_value, new_value, actor_kind, actor_id, version) \
         SELECT $1, c.path, c.old_value, c.new_value, $5, $6, $7 \
         FROM unnest($2::text[], $3::jsonb[], $4::jsonb[]) AS c (path, old_value, new_value)",
    )
    .bind(customer_id)
    .bind(&paths)
    .bind(&old)
    .bind(&new)
    .bind(actor.kind)
    .bind(&actor.id)
    .bind(version)
    .execute(conn)
    .await?;
    Ok(())
}

/// One stored field change.
#[derive(Debug, FromRow)]
pub struct FieldChangeRow {
    pub id: i64,
    pub path: String,
    pub old_value: Option<Json<serde_json::Value>>,
    pub new_value: Option<Json<serde_json::Value>>,
    pub actor_kind: String,
    pub actor_id: String,
    pub change_time: DateTime<Utc>,
    pub version: i64,
}

impl FieldChangeRow {
    /// The proto message.
    pub fn to_proto(&self) -> pb::CustomerFieldChange {
        pb::CustomerFieldChange {
            path: self.path.clone(),
            old_value: self.old_value.as_ref().map(|v| to_value(&v.0)),
            new_value: self.new_value.as_ref().map(|v| to_value(&v.0)),
            actor: Some(Principal::stored(&self.actor_kind, &self.actor_id).to_proto()),
            change_time: Some(domain::timestamp_to_proto(self.change_time)),
            version: self.version,
        }
    }
}

/// Columns of a field change read (`f` is `customer.field_changes`).
pub(super) const FIELD_CHANGE_COLUMNS: &str = "f.id, f.path, f.old_value, f.new_value, \
    f.actor_kind, f.actor_id, f.change_time, f.version";

/// Every field change of a customer, newest first; the changes of one write share their
/// change_time and keep the order they were recorded in.
pub async fn field_changes(
    conn: &mut PgConnection,
    customer_id: Uuid,
) -> Result<Vec<FieldChangeRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {FIELD_CHANGE_COLUMNS} FROM customer.field_changes f \
         WHERE f.customer_id = $1 ORDER BY f.change_time DESC, f.id"
    ))
    .bind(customer_id)
    .fetch_all(conn)
    .await?)
}
