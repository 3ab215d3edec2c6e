//! One call that turns a List or Search request into a page: page size, signed keyset cursor,
//! filter and order ([AIP-158](https://google.aip.dev/158), [AIP-160](https://google.aip.dev/160),
//! [AIP-132](https://google.aip.dev/132#ordering)), as `proto/README.md` describes them.
//!
//! A service declares each list once, as a [`ListSchema`]: the columns of its rows, the fields
//! `filter` may name, the keys `order_by` may name with the SQL behind each, the id that breaks
//! ties, the default order and the page sizes. A request then takes two steps:
//!
//! 1. [`ListSchema::prepare`] checks `page_size`, `filter` and `order_by` (every violation at
//!    once), then `page_token`, which must be signed by this server for the same query. Nothing
//!    touches the database, so a bad request never takes a pooled connection.
//! 2. [`PreparedList::fetch`] runs one keyset query on the caller's connection,
//!    `SELECT … FROM <rows> WHERE (<condition>) AND (<filter>) AND (<after the cursor>)
//!    ORDER BY <keys>, <id> LIMIT <page size + 1>`, built with `QueryBuilder::push_bind`, and
//!    returns the page and the token of the next one (empty after the last).
//!
//! ```ignore
//! static INTERACTIONS: LazyLock<ListSchema> = LazyLock::new(|| {
//!     ListSchema::new("ListInteractions", "i.id, i.subject, i.occur_time", "i.id", KeyType::Uuid)
//!         .filter(FilterSchema::new().field("occur_time", FieldType::Timestamp, "i.occur_time"))
//!         .order_key("occur_time", "i.occur_time", KeyType::Timestamp)
//!         .default_order("occur_time desc")
//! });
//!
//! let list = INTERACTIONS.prepare(&tokens, &ListRequest {
//!     page_size: req.page_size,
//!     page_token: &req.page_token,
//!     filter: &req.filter,
//!     scope: &[&req.customer_id],
//!     ..ListRequest::default()
//! })?;
//! let mut conn = pool.acquire().await?;
//! let page: Page<InteractionRow> = list
//!     .fetch(
//!         &mut conn,
//!         |sql| { sql.push("customer.interactions i"); },
//!         |sql| { sql.push("i.customer_id = ").push_bind(customer_id); },
//!     )
//!     .await?;
//! ```
//!
//! The cursor is the last row's sort values and id as PostgreSQL renders them through
//! `to_jsonb` (ISO 8601 for times, whatever the session's `DateStyle`), cast back to each key's
//! type when compared, so a value round-trips exactly. Sort keys must never be NULL: coalesce a
//! nullable column in its key's SQL.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, Postgres, QueryBuilder, Row};

use crate::error::{ApiError, FieldViolations};
use crate::filter::{self, FilterSchema, OrderTerm, SqlFilter};
use crate::page_token::{PageTokenCodec, PageTokenError, query_fingerprint};

/// The SQL type of a sort key or id: what the cursor's text is cast back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `text`
    Text,
    /// `int8` (also serves `int4` columns)
    Integer,
    /// `float8`
    Float,
    /// `timestamptz`
    Timestamp,
    /// `uuid`
    Uuid,
}

impl KeyType {
    fn cast(self) -> &'static str {
        match self {
            KeyType::Text => "text",
            KeyType::Integer => "int8",
            KeyType::Float => "float8",
            KeyType::Timestamp => "timestamptz",
            KeyType::Uuid => "uuid",
        }
    }
}

/// A List's page size when the request sends 0, and its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSizes {
    /// Used when `page_size` is 0.
    pub default: u32,
    /// Larger requests are clamped to this.
    pub max: u32,
}

impl PageSizes {
    /// Every List: 0 means 50, at most 1,000.
    pub const LIST: Self = Self {
        default: 50,
        max: 1000,
    };
    /// Every Search (ranked by a `query`): 0 means 20, at most 100.
    pub const SEARCH: Self = Self {
        default: 20,
        max: 100,
    };

    /// The size for a requested `page_size`: the default for 0, else the value clamped to the cap
    /// (AIP-158 coerces large values rather than rejecting them); `None` when negative.
    pub fn resolve(self, requested: i32) -> Option<u32> {
        match u32::try_from(requested) {
            Ok(0) => Some(self.default),
            Ok(n) => Some(n.min(self.max)),
            Err(_) => None,
        }
    }
}

/// How the id, which ends every order so that it is total, is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdOrder {
    /// In the direction of the last sort key, so one composite index serves the whole order.
    FollowsLastKey,
    /// Always ascending, e.g. to keep rows that share a time in the order they were written.
    Ascending,
}

#[derive(Debug, Clone)]
struct SortKey {
    name: &'static str,
    sql: &'static str,
    key_type: KeyType,
}

/// How one resource is listed. SQL is `&'static str` on purpose: it is spliced into the query
/// verbatim, so it must be written by the service, never taken from a request.
#[derive(Debug, Clone)]
pub struct ListSchema {
    method: &'static str,
    columns: &'static str,
    id: SortKey,
    id_order: IdOrder,
    filter: FilterSchema,
    keys: Vec<SortKey>,
    default_order: Vec<OrderTerm>,
    page_sizes: PageSizes,
}

impl ListSchema {
    /// A list served by `method` (its page tokens are good for that method only), whose rows are
    /// selected as `columns` and ordered last by `id_sql`, of type `id_type`. Without further
    /// declarations it accepts no filter fields and no order_by, orders by the id ascending, and
    /// pages as [`PageSizes::LIST`].
    pub fn new(
        method: &'static str,
        columns: &'static str,
        id_sql: &'static str,
        id_type: KeyType,
    ) -> Self {
        Self {
            method,
            columns,
            id: SortKey {
                name: "id",
                sql: id_sql,
                key_type: id_type,
            },
            id_order: IdOrder::FollowsLastKey,
            filter: FilterSchema::new(),
            keys: Vec::new(),
            default_order: Vec::new(),
            page_sizes: PageSizes::LIST,
        }
    }

    /// The fields `filter` may name.
    pub fn filter(mut self, schema: FilterSchema) -> Self {
        self.filter = schema;
        self
    }

    /// A key `order_by` may name, sorting by the SQL expression `sql` of type `key_type`, which
    /// must never be NULL.
    ///
    /// # Panics
    ///
    /// If `name` is declared twice (a programming error).
    pub fn order_key(mut self, name: &'static str, sql: &'static str, key_type: KeyType) -> Self {
        assert!(
            self.keys.iter().all(|k| k.name != name),
            "order key {name:?} is declared twice"
        );
        self.keys.push(SortKey {
            name,
            sql,
            key_type,
        });
        self
    }

    /// The order when `order_by` is empty, in `order_by` syntax (e.g. `"create_time desc"`);
    /// lists whose request has no `order_by` always use it. Declare the keys first.
    ///
    /// # Panics
    ///
    /// If `order_by` names keys not declared (a programming error).
    pub fn default_order(mut self, order_by: &'static str) -> Self {
        self.default_order = filter::parse_order_by(order_by, &self.key_names())
            .unwrap_or_else(|e| panic!("default order {order_by:?} of {}: {e}", self.method));
        self
    }

    /// How the id is sorted; [`IdOrder::FollowsLastKey`] unless set.
    pub fn id_order(mut self, id_order: IdOrder) -> Self {
        self.id_order = id_order;
        self
    }

    /// The default page size and cap; [`PageSizes::LIST`] unless set.
    pub fn page_sizes(mut self, page_sizes: PageSizes) -> Self {
        self.page_sizes = page_sizes;
        self
    }

    fn key_names(&self) -> Vec<&'static str> {
        self.keys.iter().map(|k| k.name).collect()
    }

    /// Checks `request` and decodes its page token: the first step of every page.
    ///
    /// `page_size`, `filter` and `order_by` are checked together, so every violation among them
    /// is reported at once; `page_token` is checked after them, against the query they make.
    pub fn prepare<'a>(
        &'a self,
        tokens: &'a PageTokenCodec,
        request: &ListRequest<'_>,
    ) -> Result<PreparedList<'a, ()>, ApiError> {
        self.prepare_with_state(tokens, request)
    }

    /// [`prepare`](Self::prepare) for a list that carries state of its own from page to page in
    /// the token (a search that fell back to another way of matching, say): the state of the
    /// page before is [`PreparedList::state`].
    pub fn prepare_with_state<'a, S: DeserializeOwned>(
        &'a self,
        tokens: &'a PageTokenCodec,
        request: &ListRequest<'_>,
    ) -> Result<PreparedList<'a, S>, ApiError> {
        let limit = self
            .page_sizes
            .resolve(request.page_size)
            .ok_or_else(|| FieldViolations::single("page_size", "must not be negative"));
        let filter = filter::parse(request.filter)
            .and_then(|expr| filter::to_sql(&expr, &self.filter))
            .map_err(|e| FieldViolations::single("filter", e.to_string()));
        let order = filter::parse_order_by(request.order_by, &self.key_names())
            .map_err(|e| FieldViolations::single("order_by", e.to_string()));
        let (limit, filter, order) = match (limit, filter, order) {
            (Ok(limit), Ok(filter), Ok(order)) => (limit, filter, self.sort_order(&order)),
            (limit, filter, order) => {
                let mut violations = FieldViolations::new();
                for bad in [limit.err(), filter.err(), order.err()]
                    .into_iter()
                    .flatten()
                {
                    violations.extend(bad);
                }
                return Err(ApiError::InvalidArgument(violations));
            }
        };
        let mut parts = vec![self.method];
        parts.extend_from_slice(request.scope);
        parts.extend([request.filter, request.order_by]);
        let fingerprint = query_fingerprint(&parts);
        let after = decode_cursor::<S>(tokens, request.page_token, fingerprint, order.len())?;
        Ok(PreparedList {
            schema: self,
            tokens,
            limit,
            filter,
            order,
            fingerprint,
            after,
        })
    }

    /// The keys and directions of the order `terms` ask for (the default when empty), the id
    /// last.
    fn sort_order(&self, terms: &[OrderTerm]) -> Vec<(&SortKey, bool)> {
        let terms = if terms.is_empty() {
            &self.default_order
        } else {
            terms
        };
        let mut order: Vec<(&SortKey, bool)> = terms
            .iter()
            .filter_map(|term| {
                let key = self.keys.iter().find(|k| k.name == term.field)?;
                Some((key, term.descending))
            })
            .collect();
        let id_descending = match self.id_order {
            IdOrder::FollowsLastKey => order.last().is_some_and(|(_, descending)| *descending),
            IdOrder::Ascending => false,
        };
        order.push((&self.id, id_descending));
        order
    }
}

/// The parts of a List or Search request that paging reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListRequest<'a> {
    /// `page_size` as sent.
    pub page_size: i32,
    /// `page_token` as sent.
    pub page_token: &'a str,
    /// `filter` as sent; empty when the request has none.
    pub filter: &'a str,
    /// `order_by` as sent; empty when the request has none.
    pub order_by: &'a str,
    /// The request's other fields that choose its rows (a parent id, `show_deleted`, a search
    /// text): a page token is good only for the query it was issued for.
    pub scope: &'a [&'a str],
}

impl<'a> ListRequest<'a> {
    /// A request for the page `page_token` of `page_size` rows, unfiltered, in the default
    /// order, with no scope; the builder methods below add the rest.
    pub fn new(page_size: i32, page_token: &'a str) -> Self {
        Self {
            page_size,
            page_token,
            ..Self::default()
        }
    }

    /// With the request's `filter`.
    pub fn filter(self, filter: &'a str) -> Self {
        Self { filter, ..self }
    }

    /// With the request's `order_by`.
    pub fn order_by(self, order_by: &'a str) -> Self {
        Self { order_by, ..self }
    }

    /// With the request's fields that choose its rows (see [`ListRequest::scope`]).
    pub fn scope(self, scope: &'a [&'a str]) -> Self {
        Self { scope, ..self }
    }
}

/// What a page token holds.
#[derive(Serialize, Deserialize)]
struct Cursor<S> {
    /// The sort values of the last row sent, then its id, as text.
    after: Vec<String>,
    /// The list's own state, `()` for most.
    state: S,
}

fn decode_cursor<S: DeserializeOwned>(
    tokens: &PageTokenCodec,
    token: &str,
    fingerprint: u64,
    key_count: usize,
) -> Result<Option<Cursor<S>>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = |e: PageTokenError| ApiError::invalid("page_token", e.to_string());
    let cursor: Cursor<S> = tokens.decode(token, fingerprint).map_err(invalid)?;
    // Signed by us for this query, so only a release that changed the keys gets here.
    if cursor.after.len() != key_count {
        return Err(invalid(PageTokenError::Malformed));
    }
    Ok(Some(cursor))
}

/// A checked List request, ready to fetch its page.
pub struct PreparedList<'a, S = ()> {
    schema: &'a ListSchema,
    tokens: &'a PageTokenCodec,
    limit: u32,
    filter: SqlFilter,
    order: Vec<(&'a SortKey, bool)>,
    fingerprint: u64,
    after: Option<Cursor<S>>,
}

/// One page of rows and the token of the next page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<R> {
    /// The rows, at most the page size.
    pub rows: Vec<R>,
    /// The token for the next page; empty on the last page.
    pub next_page_token: String,
}

impl<R> Page<R> {
    /// The same page with each row converted, e.g. to its proto message.
    pub fn map<T>(self, convert: impl FnMut(R) -> T) -> Page<T> {
        Page {
            rows: self.rows.into_iter().map(convert).collect(),
            next_page_token: self.next_page_token,
        }
    }
}

impl<S> PreparedList<'_, S> {
    /// The page size in effect.
    pub fn page_size(&self) -> u32 {
        self.limit
    }

    /// Whether the request has no page token.
    pub fn is_first_page(&self) -> bool {
        self.after.is_none()
    }

    /// The state the page before stored with its token; `None` on the first page.
    pub fn state(&self) -> Option<&S> {
        self.after.as_ref().map(|cursor| &cursor.state)
    }

    /// The page's query: `SELECT <columns>, <cursor> FROM ` + `from` + ` WHERE (` + `condition`
    /// + `) AND (<filter>) AND (<after the cursor>) ORDER BY … LIMIT <page size + 1>`.
    fn query<'q>(
        &self,
        from: impl FnOnce(&mut QueryBuilder<'q, Postgres>),
        condition: impl FnOnce(&mut QueryBuilder<'q, Postgres>),
    ) -> QueryBuilder<'q, Postgres> {
        let mut sql = QueryBuilder::new("SELECT ");
        sql.push(self.schema.columns).push(", ARRAY[");
        for (i, (key, _)) in self.order.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push(format_args!("to_jsonb({}) #>> '{{}}'", key.sql));
        }
        sql.push("] AS page_cursor FROM ");
        from(&mut sql);
        sql.push(" WHERE (");
        condition(&mut sql);
        sql.push(") AND (");
        self.filter.push_to(&mut sql);
        sql.push(")");
        if let Some(cursor) = &self.after {
            sql.push(" AND ");
            self.push_after(&mut sql, &cursor.after);
        }
        sql.push(" ORDER BY ");
        for (i, (key, descending)) in self.order.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push(key.sql)
                .push(if *descending { " DESC" } else { " ASC" });
        }
        sql.push(" LIMIT ").push_bind(i64::from(self.limit) + 1);
        sql
    }

    /// The rows after the cursor `values`, in the order's sense.
    fn push_after(&self, sql: &mut QueryBuilder<'_, Postgres>, values: &[String]) {
        let bind = |sql: &mut QueryBuilder<'_, Postgres>, i: usize| {
            let (key, _) = self.order[i];
            sql.push_bind(values[i].clone())
                .push("::")
                .push(key.key_type.cast());
        };
        let descending = self.order[0].1;
        if self.order.iter().all(|(_, d)| *d == descending) {
            // One row comparison, which an index on the keys serves directly.
            let keys: Vec<&str> = self.order.iter().map(|(key, _)| key.sql).collect();
            sql.push(format_args!("({}) ", keys.join(", ")))
                .push(if descending { "< (" } else { "> (" });
            for i in 0..self.order.len() {
                if i > 0 {
                    sql.push(", ");
                }
                bind(sql, i);
            }
            sql.push(")");
            return;
        }
        // Mixed directions: (k1 > $a) OR (k1 = $a AND k2 < $b) OR … each in its key's sense.
        sql.push("(");
        for i in 0..self.order.len() {
            if i > 0 {
                sql.push(" OR ");
            }
            sql.push("(");
            for j in 0..i {
                sql.push(self.order[j].0.sql).push(" = ");
                bind(sql, j);
                sql.push(" AND ");
            }
            let (key, descending) = self.order[i];
            sql.push(key.sql)
                .push(if descending { " < " } else { " > " });
            bind(sql, i);
            sql.push(")");
        }
        sql.push(")");
    }
}

impl<S: Serialize + Sync> PreparedList<'_, S> {
    /// Fetches the page on `conn`, storing `state` in the next page's token.
    ///
    /// `from` pushes the table expression (after `FROM`) and `condition` what every listed row
    /// meets (after `WHERE`; `TRUE` for all); either may bind values. `R` reads the schema's
    /// columns.
    pub async fn fetch_with_state<'q, R>(
        &self,
        conn: &mut PgConnection,
        state: &S,
        from: impl FnOnce(&mut QueryBuilder<'q, Postgres>),
        condition: impl FnOnce(&mut QueryBuilder<'q, Postgres>),
    ) -> Result<Page<R>, ApiError>
    where
        R: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let mut query = self.query(from, condition);
        let mut rows = query.build().fetch_all(&mut *conn).await?;
        let limit = self.limit as usize;
        let next_page_token = if rows.len() > limit {
            rows.truncate(limit);
            match rows.last() {
                Some(last) => self.token_after(last, state)?,
                None => String::new(),
            }
        } else {
            String::new()
        };
        let rows = rows
            .iter()
            .map(R::from_row)
            .collect::<Result<Vec<R>, sqlx::Error>>()?;
        Ok(Page {
            rows,
            next_page_token,
        })
    }

    fn token_after(&self, last: &PgRow, state: &S) -> Result<String, ApiError> {
        let values: Vec<Option<String>> = last.try_get("page_cursor")?;
        let after = values
            .into_iter()
            .zip(&self.order)
            .map(|(value, (key, _))| {
                value.ok_or_else(|| {
                    ApiError::Internal(anyhow::anyhow!(
                        "sort key {} ({}) of {} is NULL; coalesce it in the list schema",
                        key.name,
                        key.sql,
                        self.schema.method
                    ))
                })
            })
            .collect::<Result<Vec<String>, ApiError>>()?;
        Ok(self
            .tokens
            .encode(self.fingerprint, &Cursor { after, state }))
    }
}

impl PreparedList<'_, ()> {
    /// Fetches the page on `conn`: [`fetch_with_state`](Self::fetch_with_state) for a list
    /// without state of its own.
    pub async fn fetch<'q, R>(
        &self,
        conn: &mut PgConnection,
        from: impl FnOnce(&mut QueryBuilder<'q, Postgres>),
        condition: impl FnOnce(&mut QueryBuilder<'q, Postgres>),
    ) -> Result<Page<R>, ApiError>
    where
        R: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        self.fetch_with_state(conn, &(), from, condition).await
    }
}

#[cfg(test)]
mod tests;
