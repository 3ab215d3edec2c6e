//! What the bulk reads walk: the active customers, in id order, a batch at a time (the
//! duplicate scan over all of them, the export over those matching a filter).

use crm_platform::filter::SqlFilter;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{CUSTOMER_COLUMNS, CustomerRow};
use crate::error::Result;

/// How many customers are active now.
pub async fn count_active(conn: &mut PgConnection) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM customer.customers WHERE state = 'ACTIVE'")
            .fetch_one(conn)
            .await?,
    )
}

/// Up to `limit` active customers with ids after `after` (all when `None`), in id order.
pub async fn active_after(
    conn: &mut PgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<CustomerRow>> {
    let sql = format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customer.customers c \
         WHERE c.state = 'ACTIVE' AND ($1::uuid IS NULL OR c.id > $1) \
         ORDER BY c.id LIMIT $2"
    );
    Ok(sqlx::query_as(&sql)
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// Up to `limit` active customers matching `filter` with ids after `after`, in id order.
pub async fn active_matching_after(
    conn: &mut PgConnection,
    filter: &SqlFilter,
    after: Uuid,
    limit: i64,
) -> Result<Vec<CustomerRow>> {
    let mut query = QueryBuilder::<Postgres>::new(format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customer.customers c WHERE c.state = 'ACTIVE' AND c.id > "
    ));
    query.push_bind(after).push(" AND (");
    filter.push_to(&mut query);
    query.push(") ORDER BY c.id LIMIT ").push_bind(limit);
    Ok(query.build_query_as().fetch_all(conn).await?)
}
