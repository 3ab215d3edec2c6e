//! SQL for merge records.

use chrono::{DateTime, Utc};
use crm_proto::crm::customer::v1 as pb;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::domain::{self, Principal};
use crate::error::Result;

/// Records merges: the survivor and who was folded in.
pub async fn insert_merge(
    conn: &mut PgConnection,
    id: Uuid,
    survivor: Uuid,
    merged: &[Uuid],
    actor: &Principal,
) -> Result<pb::MergeRecord> {
    let row: MergeRow = sqlx::query_as(&format!(
        "INSERT INTO customer.merges (id, survivor_id, merged_ids, merged_by_kind, merged_by) \
         VALUES ($1, $2, $3, $4, $5) RETURNING {MERGE_COLUMNS}"
    ))
    .bind(id)
    .bind(survivor)
    .bind(merged)
    .bind(actor.kind)
    .bind(&actor.id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.to_proto())
}

/// Columns of a merge record read (`m` is `customer.merges`).
pub(super) const MERGE_COLUMNS: &str =
    "id, survivor_id, merged_ids, merge_time, merged_by_kind, merged_by";

#[derive(FromRow)]
pub(super) struct MergeRow {
    id: Uuid,
    survivor_id: Uuid,
    merged_ids: Vec<Uuid>,
    merge_time: DateTime<Utc>,
    merged_by_kind: String,
    merged_by: String,
}

impl MergeRow {
    pub(super) fn to_proto(&self) -> pb::MergeRecord {
        pb::MergeRecord {
            id: self.id.to_string(),
            survivor_id: self.survivor_id.to_string(),
            merged_ids: self.merged_ids.iter().map(Uuid::to_string).collect(),
            merge_time: Some(domain::timestamp_to_proto(self.merge_time)),
            merger: Some(Principal::stored(&self.merged_by_kind, &self.merged_by).to_proto()),
        }
    }
}

/// Merges a customer survived, newest first.
pub async fn merge_records(
    conn: &mut PgConnection,
    survivor: Uuid,
) -> Result<Vec<pb::MergeRecord>> {
    let rows: Vec<MergeRow> = sqlx::query_as(&format!(
        "SELECT {MERGE_COLUMNS} FROM customer.merges \
         WHERE survivor_id = $1 ORDER BY merge_time DESC, id DESC"
    ))
    .bind(survivor)
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().map(MergeRow::to_proto).collect())
}
