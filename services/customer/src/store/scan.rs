//! What the bulk duplicate scan reads: the active customers, in id order, a batch at a time.

use sqlx::PgConnection;
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
