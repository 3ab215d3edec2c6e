//! Create, Get, BatchGet, List, Update, Delete and Undelete: the single-customer RPCs and the
//! listing.

use crm_platform::db::bind_filter_params;
use crm_platform::filter::{self, OrderTerm, SqlFilter};
use crm_platform::idempotency::{self, Outcome};
use crm_platform::page_token::query_fingerprint;
use crm_platform::paging::{SortKey, keyset_after, keyset_order_by, page_size};
use crm_platform::{ApiError, FieldViolations};
use crm_proto::crm::common::v1::ChangeType;
use crm_proto::crm::customer::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CUSTOMER_FILTER, CustomerApi, Write, both};
use crate::domain::history::diff;
use crate::domain::{CustomerFields, CustomerPatch, Principal, parse_id};
use crate::error::{Error, Result};
use crate::store::{self, CUSTOMER_COLUMNS, CustomerRow};

/// order_by keys of ListCustomers: (name, SQL expression, SQL type of its cursor value). Names
/// and emails are coalesced: erased customers (listed with show_deleted) have neither.
const ORDER_KEYS: &[(&str, &str, &str)] = &[
    ("display_name", "coalesce(c.display_name, '')", "text"),
    ("email", "coalesce(c.email, '')", "text"),
    ("create_time", "c.create_time", "timestamptz"),
    ("update_time", "c.update_time", "timestamptz"),
];

/// Keyset position of a ListCustomers page: the sort values of the last row, then its id.
#[derive(Serialize, Deserialize)]
struct ListCursor {
    values: Vec<String>,
    id: Uuid,
}

/// The parsed order_by of a ListCustomers request (`create_time` when empty).
fn list_order(order_by: &str) -> Result<Vec<OrderTerm>> {
    let allowed: Vec<&str> = ORDER_KEYS.iter().map(|k| k.0).collect();
    let mut order = filter::parse_order_by(order_by, &allowed)
        .map_err(|e| ApiError::invalid("order_by", e.to_string()))?;
    if order.is_empty() {
        order.push(OrderTerm {
            field: "create_time".into(),
            descending: false,
        });
    }
    Ok(order)
}

fn sort_keys(order: &[OrderTerm]) -> Vec<SortKey<'static>> {
    order
        .iter()
        .filter_map(|term| {
            let key = ORDER_KEYS.iter().find(|k| k.0 == term.field)?;
            Some(SortKey {
                sql: key.1,
                sql_type: key.2,
                descending: term.descending,
            })
        })
        .collect()
}

/// The cursor after `last`, in the order's keys.
fn list_cursor(order: &[OrderTerm], last: &CustomerRow) -> ListCursor {
    let time =
        |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let values = order
        .iter()
        .map(|term| match term.field.as_str() {
            "display_name" => last.display_name.clone().unwrap_or_default(),
            "email" => last.email.clone().unwrap_or_default(),
            "update_time" => time(&last.update_time),
            _ => time(&last.create_time),
        })
        .collect();
    ListCursor {
        values,
        id: last.id,
    }
}

/// The SQL of one ListCustomers page, and the cursor's parameters (after the filter's).
fn list_sql(
    keys: &[SortKey<'_>],
    sql_filter: &SqlFilter,
    cursor: Option<&ListCursor>,
    show_deleted: bool,
) -> Result<(String, Vec<String>)> {
    // Without show_deleted only active customers are listed; with it, every state is.
    let states = if show_deleted {
        "TRUE"
    } else {
        "c.state = 'ACTIVE'"
    };
    let mut sql = format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customer.customers c WHERE {states} AND {}",
        sql_filter.sql
    );
    let mut cursor_params: Vec<String> = Vec::new();
    if let Some(cursor) = cursor {
        if cursor.values.len() != keys.len() {
            return Err(ApiError::invalid("page_token", "does not match order_by").into());
        }
        let after = keyset_after(keys, "c.id", sql_filter.params.len() + 1);
        sql.push_str(&format!(" AND {after}"));
        cursor_params = cursor.values.clone();
        cursor_params.push(cursor.id.to_string());
    }
    let limit_param = sql_filter.params.len() + cursor_params.len() + 1;
    sql.push_str(&format!(
        " ORDER BY {} LIMIT ${limit_param}",
        keyset_order_by(keys, "c.id")
    ));
    Ok((sql, cursor_params))
}

impl CustomerApi {
    /// Creates a customer in its own transaction, honouring the request id (checked against
    /// `hashed`, the request as the caller sent it); `true` when it was created now, `false`
    /// when the request id was seen before.
    pub(super) async fn create_once(
        &self,
        fields: &CustomerFields,
        request_id: &str,
        hashed: &impl Message,
        actor: &Principal,
    ) -> Result<(pb::CreateCustomerResponse, bool)> {
        let mut tx = self.begin().await?;
        let outcome = idempotency::run(&mut tx, "CreateCustomer", request_id, hashed, async |tx| {
            let row = store::insert(tx, Uuid::now_v7(), fields, actor).await?;
            let customer = Some(row.to_proto(Vec::new()));
            Ok::<_, Error>((pb::CreateCustomerResponse { customer }, row))
        })
        .await?;
        match outcome {
            Outcome::Replayed(response) => Ok((response, false)),
            Outcome::Ran(response, row) => {
                self.finish_write(tx, &[Write::whole(row, ChangeType::Created)], actor)
                    .await?;
                Ok((response, true))
            }
        }
    }

    pub(super) async fn create(
        &self,
        req: pb::CreateCustomerRequest,
        actor: &Principal,
    ) -> Result<pb::CreateCustomerResponse> {
        let customer = req
            .customer
            .as_ref()
            .ok_or_else(|| ApiError::invalid("customer", "is required"))?;
        let fields = CustomerFields::from_proto(customer, "customer")?;
        idempotency::validate_request_id("request_id", &req.request_id)?;
        Ok(self
            .create_once(&fields, &req.request_id, &req, actor)
            .await?
            .0)
    }

    pub(super) async fn get(&self, req: pb::GetCustomerRequest) -> Result<pb::GetCustomerResponse> {
        let id = parse_id("id", &req.id)?;
        Ok(pb::GetCustomerResponse {
            customer: Some(self.get_resolved(id).await?),
        })
    }

    /// Every id is answered, duplicates once per occurrence, in request order.
    pub(super) async fn batch_get(
        &self,
        req: pb::BatchGetCustomersRequest,
    ) -> Result<pb::BatchGetCustomersResponse> {
        if req.ids.is_empty() || req.ids.len() > 100 {
            return Err(ApiError::invalid("ids", "name 1..=100 ids").into());
        }
        let mut v = FieldViolations::new();
        let ids: Vec<Uuid> = req
            .ids
            .iter()
            .enumerate()
            .filter_map(|(i, id)| {
                parse_id(&format!("ids[{i}]"), id)
                    .map_err(|e| v.extend(e))
                    .ok()
            })
            .collect();
        v.into_result()?;
        let mut customers = Vec::with_capacity(ids.len());
        for id in ids {
            customers.push(self.get_resolved(id).await?);
        }
        Ok(pb::BatchGetCustomersResponse { customers })
    }

    /// One page of customers, on one pooled connection.
    pub(super) async fn list(
        &self,
        req: pb::ListCustomersRequest,
    ) -> Result<pb::ListCustomersResponse> {
        let limit = page_size(req.page_size, 50, 1000)?;
        let sql_filter = self.parse_filter(&req.filter, &CUSTOMER_FILTER, 1)?;
        let order = list_order(&req.order_by)?;
        let show_deleted = if req.show_deleted { "1" } else { "0" };
        let fingerprint = query_fingerprint(&[&req.filter, &req.order_by, show_deleted]);
        let cursor: Option<ListCursor> = self.decode_token(&req.page_token, fingerprint)?;
        let keys = sort_keys(&order);
        let (sql, cursor_params) = list_sql(&keys, &sql_filter, cursor.as_ref(), req.show_deleted)?;

        let mut query =
            bind_filter_params(sqlx::query_as::<_, CustomerRow>(&sql), &sql_filter.params);
        for value in &cursor_params {
            query = query.bind(value);
        }
        // One connection for the page and its consents.
        let mut conn = self.db.acquire().await?;
        let mut rows = query.bind(limit as i64 + 1).fetch_all(&mut *conn).await?;
        let next_page_token = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            let last = rows.last().expect("a full page has a last row");
            self.page_tokens
                .encode(fingerprint, &list_cursor(&order, last))
        } else {
            String::new()
        };
        let customers = store::to_protos(&mut conn, &rows).await?;
        Ok(pb::ListCustomersResponse {
            customers,
            next_page_token,
        })
    }

    /// Validates the request (mask first) before the row is read, then applies the mask and
    /// records each changed field in the history.
    pub(super) async fn update(
        &self,
        req: pb::UpdateCustomerRequest,
        actor: &Principal,
    ) -> Result<pb::UpdateCustomerResponse> {
        let incoming = req
            .customer
            .as_ref()
            .ok_or_else(|| ApiError::invalid("customer", "is required"))?;
        let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let (patch, id) = both(
            CustomerPatch::new(incoming, &paths),
            parse_id("customer.id", &incoming.id),
        )?;
        let mut tx = self.begin().await?;
        let row = self.lock_active(&mut tx, id, &incoming.etag).await?;
        let before = row.fields();
        let mut fields = before.clone();
        patch.apply(&mut fields)?;
        let changes = diff(&before, &fields);
        let row = store::update_fields(&mut tx, id, &fields, actor).await?;
        store::insert_field_changes(&mut tx, id, row.version, actor, &changes).await?;
        let paths = changes.into_iter().map(|c| c.path).collect();
        let mut customers = self
            .finish_write(tx, &[Write::updated(row, paths)], actor)
            .await?;
        Ok(pb::UpdateCustomerResponse {
            customer: customers.pop(),
        })
    }

    pub(super) async fn delete(
        &self,
        req: pb::DeleteCustomerRequest,
        actor: &Principal,
    ) -> Result<pb::DeleteCustomerResponse> {
        let id = parse_id("id", &req.id)?;
        let mut tx = self.begin().await?;
        self.lock_active(&mut tx, id, &req.etag).await?;
        let row = store::set_state(&mut tx, id, "DELETED", None, actor).await?;
        let mut customers = self
            .finish_write(tx, &[Write::whole(row, ChangeType::Deleted)], actor)
            .await?;
        Ok(pb::DeleteCustomerResponse {
            customer: customers.pop(),
        })
    }

    pub(super) async fn undelete(
        &self,
        req: pb::UndeleteCustomerRequest,
        actor: &Principal,
    ) -> Result<pb::UndeleteCustomerResponse> {
        let id = parse_id("id", &req.id)?;
        let mut tx = self.begin().await?;
        let row = store::find(&mut tx, id, true)
            .await?
            .ok_or(Error::NotFound(id))?;
        if !req.etag.is_empty() && req.etag != row.etag() {
            return Err(Error::EtagMismatch);
        }
        if row.state != "DELETED" {
            return Err(Error::NotDeleted(id));
        }
        let row = store::set_state(&mut tx, id, "ACTIVE", None, actor).await?;
        let mut customers = self
            .finish_write(tx, &[Write::whole(row, ChangeType::Undeleted)], actor)
            .await?;
        Ok(pb::UndeleteCustomerResponse {
            customer: customers.pop(),
        })
    }
}
