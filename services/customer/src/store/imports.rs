//! Many new customers in one statement, for ImportCustomers.

use sqlx::{PgConnection, QueryBuilder};
use uuid::Uuid;

use super::{CUSTOMER_COLUMNS, CustomerRow};
use crate::domain::{CustomerFields, Principal};
use crate::error::Result;
use sqlx::types::Json;

/// Inserts new active customers, skipping each one that conflicts with a unique index (an
/// email already used by an active customer, also by an earlier one of `customers`); returns
/// the rows inserted, in no particular order. Callers find the skipped ones by id and learn
/// why by inserting each alone ([`super::insert`]).
pub async fn insert_new(
    conn: &mut PgConnection,
    customers: &[(Uuid, &CustomerFields)],
    actor: &Principal,
) -> Result<Vec<CustomerRow>> {
    if customers.is_empty() {
        return Ok(Vec::new());
    }
    let mut query = QueryBuilder::new(
        "INSERT INTO customer.customers AS c (id, display_name, email, given_name, family_name, \
           phone, company_name, lifecycle_stage, owner_kind, owner_id, source, tags, attributes, \
           attribute_timestamps, contact_points, addresses, created_by_kind, created_by, \
           updated_by_kind, updated_by) ",
    );
    query.push_values(customers, |mut row, (id, fields)| {
        row.push_bind(*id)
            .push_bind(&fields.display_name)
            .push_bind(&fields.email)
            .push_bind(&fields.given_name)
            .push_bind(&fields.family_name)
            .push_bind(&fields.phone)
            .push_bind(&fields.company_name)
            .push_bind(fields.lifecycle_stage)
            .push_bind(fields.owner.as_ref().map(|o| o.kind))
            .push_bind(fields.owner.as_ref().map(|o| &o.id))
            .push_bind(&fields.source)
            .push_bind(&fields.tags)
            .push_bind(Json(&fields.attributes.values))
            .push_bind(&fields.attributes.timestamp_keys)
            .push_bind(Json(&fields.contact_points))
            .push_bind(Json(&fields.addresses))
            .push_bind(actor.kind)
            .push_bind(&actor.id)
            .push_bind(actor.kind)
            .push_bind(&actor.id);
    });
    query.push(format!(
        " ON CONFLICT DO NOTHING RETURNING {CUSTOMER_COLUMNS}"
    ));
    Ok(query.build_query_as().fetch_all(conn).await?)
}
