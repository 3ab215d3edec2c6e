//! SQL for merge records.

use chrono::{DateTime, Utc};
use crm_platform::db::bind_filter_params;
use crm_platform::filter::SqlFilter;
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

const MERGE_COLUMNS: &str = "id, survivor_id, merged_ids, merge_time, merged_by_kind, merged_by";

#[derive(FromRow)]
struct MergeRow {
    id: Uuid,
    survivor_id: Uuid,
    merged_ids: Vec<Uuid>,
    merge_time: DateTime<Utc>,
    merged_by_kind: String,
    merged_by: String,
}

impl MergeRow {
    fn to_proto(&self) -> pb::MergeRecord {
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

/// One page of merge records, oldest first, and the keyset position of its last row.
pub struct MergePage {
    /// The records, at most the limit asked for.
    pub records: Vec<pb::MergeRecord>,
    /// (merge_time, id) of the last record when more follow.
    pub next: Option<(DateTime<Utc>, Uuid)>,
}

/// Merges (of `survivor`, or all) matching `filter` (compiled with parameters from `$5`), oldest
/// first, after the (merge_time, id) cursor.
pub async fn merges_page(
    conn: &mut PgConnection,
    survivor: Option<Uuid>,
    filter: &SqlFilter,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: u32,
) -> Result<MergePage> {
    let sql = format!(
        "SELECT {MERGE_COLUMNS} FROM customer.merges m \
         WHERE ($1::uuid IS NULL OR m.survivor_id = $1) \
           AND ($2::timestamptz IS NULL OR (m.merge_time, m.id) > ($2, $3)) AND {} \
         ORDER BY m.merge_time, m.id LIMIT $4",
        filter.sql
    );
    let query = sqlx::query_as::<_, MergeRow>(&sql)
        .bind(survivor)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1).unwrap_or_default())
        .bind(i64::from(limit) + 1);
    let mut rows = bind_filter_params(query, &filter.params)
        .fetch_all(conn)
        .await?;
    let next = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|last| (last.merge_time, last.id))
    } else {
        None
    };
    Ok(MergePage {
        records: rows.iter().map(MergeRow::to_proto).collect(),
        next,
    })
}
