//! ListCustomerFieldChanges: who changed which field of a customer, newest first.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use crm_platform::filter::{FieldType, FilterSchema};
use crm_platform::page_token::query_fingerprint;
use crm_platform::paging::page_size;
use crm_proto::crm::customer::v1 as pb;

use super::CustomerApi;
use crate::domain::{PRINCIPAL_KIND, parse_id};
use crate::error::Result;
use crate::store;

static FIELD_CHANGE_FILTER: LazyLock<FilterSchema> = LazyLock::new(|| {
    FilterSchema::new()
        .field("path", FieldType::Text, "f.path")
        .field(
            "actor.kind",
            FieldType::Enum(&PRINCIPAL_KIND),
            "f.actor_kind",
        )
        .field("actor.id", FieldType::Text, "f.actor_id")
        .field("change_time", FieldType::Timestamp, "f.change_time")
});

impl CustomerApi {
    /// One page of a customer's field history (any state but erased has one), on one pooled
    /// connection.
    pub(super) async fn list_field_changes(
        &self,
        req: pb::ListCustomerFieldChangesRequest,
    ) -> Result<pb::ListCustomerFieldChangesResponse> {
        let id = parse_id("customer_id", &req.customer_id)?;
        let limit = page_size(req.page_size, 50, 1000)?;
        let sql_filter = self.parse_filter(&req.filter, &FIELD_CHANGE_FILTER, 5)?;
        let fingerprint =
            query_fingerprint(&["ListCustomerFieldChanges", &req.customer_id, &req.filter]);
        let cursor: Option<(DateTime<Utc>, i64)> =
            self.decode_token(&req.page_token, fingerprint)?;
        let mut conn = self.db.acquire().await?;
        self.ensure_exists(&mut conn, id).await?;
        let mut rows =
            store::field_changes(&mut conn, id, &sql_filter, cursor, i64::from(limit) + 1).await?;
        let next_page_token = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            let last = rows.last().expect("a full page has a last row");
            self.page_tokens
                .encode(fingerprint, &(last.change_time, last.id))
        } else {
            String::new()
        };
        Ok(pb::ListCustomerFieldChangesResponse {
            field_changes: rows.iter().map(|row| row.to_proto()).collect(),
            next_page_token,
        })
    }
}
