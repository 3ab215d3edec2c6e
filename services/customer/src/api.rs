//! The gRPC surface of the customer service: validate, convert at the edge, call the store in
//! one transaction, publish the change, convert back.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use crm_platform::auth::Principal;
use crm_platform::cache::{Cache, Entry};
use crm_platform::db::bind_filter_params;
use crm_platform::filter::{self, EnumDef, FieldType, FilterSchema, OrderTerm};
use crm_platform::idempotency;
use crm_platform::page_token::{PageTokenCodec, query_fingerprint};
use crm_platform::paging::{SortKey, keyset_after, keyset_order_by, page_size};
use crm_platform::{ApiError, FieldViolations};
use crm_proto::crm::common::v1::ChangeType;
use crm_proto::crm::customer::v1 as pb;
use crm_proto::crm::customer::v1::customer_service_server::CustomerService;
use futures::{Stream, StreamExt};
use prost::Message;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::SCHEMA;
use crate::domain::{self, CustomerFields, LIFECYCLE_STAGES, parse_id};
use crate::error::{Error, Result};
use crate::store::{self, CUSTOMER_COLUMNS, CustomerRow, INTERACTION_COLUMNS, InteractionRow};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// How many merged ids GetCustomer follows before giving up (merges never form cycles, but a
/// bound keeps a bug from looping).
const MAX_MERGE_HOPS: usize = 8;

static LIFECYCLE_STAGE: EnumDef = EnumDef::new("LIFECYCLE_STAGE_", LIFECYCLE_STAGES);
static INTERACTION_TYPE: EnumDef =
    EnumDef::new("INTERACTION_TYPE_", &["CALL", "EMAIL", "MEETING", "NOTE"]);
static INTERACTION_DIRECTION: EnumDef =
    EnumDef::new("INTERACTION_DIRECTION_", &["INBOUND", "OUTBOUND"]);

static CUSTOMER_FILTER: LazyLock<FilterSchema> = LazyLock::new(|| {
    FilterSchema::new()
        .field("display_name", FieldType::Text, "c.display_name")
        .field("email", FieldType::Text, "c.email")
        .field("given_name", FieldType::Text, "c.given_name")
        .field("family_name", FieldType::Text, "c.family_name")
        .field("phone", FieldType::Text, "c.phone")
        .field("company_name", FieldType::Text, "c.company_name")
        .field(
            "lifecycle_stage",
            FieldType::Enum(&LIFECYCLE_STAGE),
            "c.lifecycle_stage",
        )
        .field("owner_id", FieldType::Text, "c.owner_id")
        .field("source", FieldType::Text, "c.source")
        .field("tags", FieldType::TextArray, "c.tags")
        .field("create_time", FieldType::Timestamp, "c.create_time")
        .field("update_time", FieldType::Timestamp, "c.update_time")
        .map_field("attributes", "c.attributes")
});

static INTERACTION_FILTER: LazyLock<FilterSchema> = LazyLock::new(|| {
    FilterSchema::new()
        .field("type", FieldType::Enum(&INTERACTION_TYPE), "type")
        .field(
            "direction",
            FieldType::Enum(&INTERACTION_DIRECTION),
            "direction",
        )
        .field("owner_id", FieldType::Text, "owner_id")
        .field("occur_time", FieldType::Timestamp, "occur_time")
});

/// order_by keys of ListCustomers: (name, SQL expression, SQL type of its cursor value).
const ORDER_KEYS: &[(&str, &str, &str)] = &[
    ("display_name", "c.display_name", "text"),
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

/// How a search matches: by words (full text), or by similarity when no word matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum SearchMode {
    FullText,
    Similar,
}

/// Keyset position of a SearchCustomers page.
#[derive(Serialize, Deserialize)]
struct SearchCursor {
    mode: SearchMode,
    score: f64,
    id: Uuid,
}

#[derive(sqlx::FromRow)]
struct SearchHit {
    #[sqlx(flatten)]
    row: CustomerRow,
    score: f64,
}

/// The customer service.
#[derive(Clone)]
pub struct CustomerApi {
    db: PgPool,
    cache: Cache,
    page_tokens: PageTokenCodec,
    changes: watch::Receiver<u64>,
    committed: Arc<tokio::sync::Notify>,
}

impl CustomerApi {
    /// A service over `db`, caching through `cache`. Feed readers are woken through `changes`;
    /// `committed` is told after every commit that appended to the feed.
    pub fn new(
        db: PgPool,
        cache: Cache,
        page_tokens: PageTokenCodec,
        changes: watch::Receiver<u64>,
        committed: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            db,
            cache,
            page_tokens,
            changes,
            committed,
        }
    }

    fn cache_key(&self, id: Uuid) -> String {
        self.cache.key("customer", &id.to_string())
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.db.begin().await?)
    }

    /// A customer through the cache, as stored (not following merges).
    async fn get_stored(&self, id: Uuid) -> Result<pb::Customer> {
        let db = self.db.clone();
        let entry = self
            .cache
            .get_or_load(&self.cache_key(id), || {
                let db = db.clone();
                async move {
                    let mut conn = db.acquire().await.map_err(ApiError::from)?;
                    match store::load(&mut conn, id).await {
                        Ok(Some((version, customer))) => Ok(Entry {
                            version,
                            bytes: customer.encode_to_vec().into(),
                        }),
                        Ok(None) => Err(ApiError::not_found("customer", id.to_string())),
                        Err(err) => Err(ApiError::from(err)),
                    }
                }
            })
            .await?;
        pb::Customer::decode(entry.bytes).map_err(|e| {
            Error::Api(ApiError::Internal(anyhow::anyhow!(
                "corrupt cache entry: {e}"
            )))
        })
    }

    /// A customer, following merged ids to the survivor.
    async fn get_resolved(&self, id: Uuid) -> Result<pb::Customer> {
        let mut customer = self.get_stored(id).await?;
        for _ in 0..MAX_MERGE_HOPS {
            if customer.state != pb::CustomerState::Merged as i32 {
                return Ok(customer);
            }
            let next = Uuid::parse_str(&customer.merged_into_id).map_err(|e| {
                Error::Api(ApiError::Internal(anyhow::anyhow!(
                    "bad merged_into_id: {e}"
                )))
            })?;
            customer = self.get_stored(next).await?;
        }
        Err(Error::Api(ApiError::Internal(anyhow::anyhow!(
            "merge chain of {id} is longer than {MAX_MERGE_HOPS}"
        ))))
    }

    /// Appends the change, commits, and publishes the new version to the cache.
    async fn finish_write(
        &self,
        mut tx: Transaction<'static, Postgres>,
        rows: &[CustomerRow],
        change_types: &[(ChangeType, Option<Uuid>)],
    ) -> Result<Vec<pb::Customer>> {
        // A customer created in this transaction has no consents yet: no need to look them up.
        let customers = if change_types.iter().all(|(c, _)| *c == ChangeType::Created) {
            rows.iter().map(|row| row.to_proto(Vec::new())).collect()
        } else {
            store::to_protos(&mut tx, rows).await?
        };
        for ((customer, row), (change, merged_into)) in customers.iter().zip(rows).zip(change_types)
        {
            let snapshot = (*change != ChangeType::Erased).then_some(customer);
            store::append_change(&mut tx, row.id, *change, *merged_into, snapshot).await?;
        }
        tx.commit().await?;
        self.committed.notify_one();
        for ((customer, row), (change, _)) in customers.iter().zip(rows).zip(change_types) {
            let key = self.cache_key(row.id);
            let entry = Entry {
                version: row.version,
                bytes: customer.encode_to_vec().into(),
            };
            if *change == ChangeType::Created {
                self.cache.put_new(&key, entry).await;
            } else {
                self.cache.put(&key, entry).await;
            }
        }
        Ok(customers)
    }

    async fn lock_active(
        &self,
        tx: &mut PgConnection,
        id: Uuid,
        etag: &str,
    ) -> Result<CustomerRow> {
        let row = store::find(tx, id, true)
            .await?
            .ok_or(Error::NotFound(id))?;
        if !etag.is_empty() && etag != row.etag() {
            return Err(Error::EtagMismatch);
        }
        if row.state != "ACTIVE" {
            return Err(Error::NotActive {
                id,
                state: row.state,
            });
        }
        Ok(row)
    }

    /// Creates a customer in its own transaction, honouring the request id.
    async fn create(
        &self,
        fields: &CustomerFields,
        request_id: &str,
        request_hash: &[u8],
        actor: &str,
    ) -> Result<(pb::CreateCustomerResponse, bool)> {
        let mut tx = self.begin().await?;
        if let Some(response) =
            idempotency::replay(&mut tx, SCHEMA, "CreateCustomer", request_id, request_hash).await?
        {
            return Ok((response, false));
        }
        let row = store::insert(&mut tx, Uuid::now_v7(), fields, actor).await?;
        let customer = row.to_proto(Vec::new());
        let response = pb::CreateCustomerResponse {
            customer: Some(customer.clone()),
        };
        idempotency::complete(&mut tx, SCHEMA, "CreateCustomer", request_id, &response).await?;
        self.finish_write(tx, &[row], &[(ChangeType::Created, None)])
            .await?;
        Ok((response, true))
    }

    fn parse_filter(
        &self,
        input: &str,
        schema: &FilterSchema,
        first_param: usize,
    ) -> Result<filter::SqlFilter> {
        let expr = filter::parse(input).map_err(|e| ApiError::invalid("filter", e.to_string()))?;
        Ok(filter::to_sql(&expr, schema, first_param)
            .map_err(|e| ApiError::invalid("filter", e.to_string()))?)
    }

    fn decode_token<C: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        fingerprint: u64,
    ) -> Result<Option<C>> {
        if token.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.page_tokens.decode(token, fingerprint).map_err(
            |e| ApiError::invalid("page_token", e.to_string()),
        )?))
    }

    async fn list(&self, req: pb::ListCustomersRequest) -> Result<pb::ListCustomersResponse> {
        let limit = page_size(req.page_size, 50, 1000)?;
        let sql_filter = self.parse_filter(&req.filter, &CUSTOMER_FILTER, 1)?;
        let allowed: Vec<&str> = ORDER_KEYS.iter().map(|k| k.0).collect();
        let mut order = filter::parse_order_by(&req.order_by, &allowed)
            .map_err(|e| ApiError::invalid("order_by", e.to_string()))?;
        if order.is_empty() {
            order.push(OrderTerm {
                field: "create_time".into(),
                descending: false,
            });
        }
        let show_deleted = if req.show_deleted { "1" } else { "0" };
        let fingerprint = query_fingerprint(&[&req.filter, &req.order_by, show_deleted]);
        let cursor: Option<ListCursor> = self.decode_token(&req.page_token, fingerprint)?;
        let keys: Vec<SortKey<'_>> = order
            .iter()
            .map(|term| {
                let key = ORDER_KEYS
                    .iter()
                    .find(|k| k.0 == term.field)
                    .expect("validated");
                SortKey {
                    sql: key.1,
                    sql_type: key.2,
                    descending: term.descending,
                }
            })
            .collect();

        let states = if req.show_deleted {
            "c.state IN ('ACTIVE', 'DELETED')"
        } else {
            "c.state = 'ACTIVE'"
        };
        let mut sql = format!(
            "SELECT {CUSTOMER_COLUMNS} FROM customer.customers c WHERE {states} AND {}",
            sql_filter.sql
        );
        let mut cursor_params: Vec<String> = Vec::new();
        if let Some(cursor) = &cursor {
            if cursor.values.len() != keys.len() {
                return Err(ApiError::invalid("page_token", "does not match order_by").into());
            }
            let after = keyset_after(&keys, "c.id", sql_filter.params.len() + 1);
            sql.push_str(&format!(" AND {after}"));
            cursor_params = cursor.values.clone();
            cursor_params.push(cursor.id.to_string());
        }
        let limit_param = sql_filter.params.len() + cursor_params.len() + 1;
        sql.push_str(&format!(
            " ORDER BY {} LIMIT ${limit_param}",
            keyset_order_by(&keys, "c.id")
        ));

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
            let values = order
                .iter()
                .map(|term| match term.field.as_str() {
                    "display_name" => last.display_name.clone().unwrap_or_default(),
                    "email" => last.email.clone().unwrap_or_default(),
                    "update_time" => last
                        .update_time
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    _ => last
                        .create_time
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                })
                .collect();
            self.page_tokens.encode(
                fingerprint,
                &ListCursor {
                    values,
                    id: last.id,
                },
            )
        } else {
            String::new()
        };
        let customers = store::to_protos(&mut conn, &rows).await?;
        Ok(pb::ListCustomersResponse {
            customers,
            next_page_token,
        })
    }

    async fn search(&self, req: pb::SearchCustomersRequest) -> Result<pb::SearchCustomersResponse> {
        let query = req.query.trim().to_lowercase();
        if query.is_empty() || query.chars().count() > 200 {
            return Err(ApiError::invalid("query", "must be 1..=200 characters").into());
        }
        let words: Vec<String> = query
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .take(10)
            .map(|w| format!("{w}:*"))
            .collect();
        if words.is_empty() {
            return Err(ApiError::invalid("query", "must contain a letter or digit").into());
        }
        let tsquery = words.join(" & ");
        let limit = page_size(req.page_size, 20, 100)?;
        let sql_filter = self.parse_filter(&req.filter, &CUSTOMER_FILTER, 5)?;
        let fingerprint = query_fingerprint(&[&query, &req.filter]);
        let cursor: Option<SearchCursor> = self.decode_token(&req.page_token, fingerprint)?;
        // Full-text matches (word prefixes, ranked) are the main path and use the GIN index on
        // the tsvector. Only when nothing matches at all does the search fall back to trigram
        // similarity, which tolerates typos but costs far more per candidate row.
        let mut mode = cursor.as_ref().map_or(SearchMode::FullText, |c| c.mode);
        let mut hits = self
            .search_page(mode, &tsquery, &query, &sql_filter, cursor.as_ref(), limit)
            .await?;
        if hits.is_empty() && cursor.is_none() && mode == SearchMode::FullText {
            mode = SearchMode::Similar;
            hits = self
                .search_page(mode, &tsquery, &query, &sql_filter, None, limit)
                .await?;
        }
        let next_page_token = if hits.len() > limit as usize {
            hits.truncate(limit as usize);
            let last = hits.last().expect("a full page has a last row");
            self.page_tokens.encode(
                fingerprint,
                &SearchCursor {
                    mode,
                    score: last.score,
                    id: last.row.id,
                },
            )
        } else {
            String::new()
        };
        let rows: Vec<CustomerRow> = hits.iter().map(|h| h.row.clone()).collect();
        let mut conn = self.db.acquire().await?;
        let customers = store::to_protos(&mut conn, &rows).await?;
        Ok(pb::SearchCustomersResponse {
            results: customers
                .into_iter()
                .zip(hits)
                .map(|(customer, hit)| pb::SearchCustomersResult {
                    customer: Some(customer),
                    score: hit.score,
                })
                .collect(),
            next_page_token,
        })
    }

    /// One page of search hits (one more than `limit`, to know whether another page follows).
    async fn search_page(
        &self,
        mode: SearchMode,
        tsquery: &str,
        query: &str,
        sql_filter: &filter::SqlFilter,
        cursor: Option<&SearchCursor>,
        limit: u32,
    ) -> Result<Vec<SearchHit>> {
        let (score, matches) = match mode {
            SearchMode::FullText => (
                "ts_rank_cd(c.search_vector, to_tsquery('simple', $1))",
                "c.search_vector @@ to_tsquery('simple', $1)",
            ),
            SearchMode::Similar => ("word_similarity($2, c.search_text)", "$2 <% c.search_text"),
        };
        let sql = format!(
            "SELECT * FROM ( \
               SELECT {CUSTOMER_COLUMNS}, ({score})::float8 AS score \
               FROM customer.customers c \
               WHERE c.state = 'ACTIVE' AND {matches} AND {} \
             ) c WHERE ($3::float8 IS NULL OR (c.score, c.id) < ($3, $4)) \
             ORDER BY c.score DESC, c.id DESC LIMIT ${}",
            sql_filter.sql,
            sql_filter.params.len() + 5
        );
        let query_builder = sqlx::query_as::<_, SearchHit>(&sql)
            .bind(tsquery)
            .bind(query)
            .bind(cursor.map(|c| c.score))
            .bind(cursor.map(|c| c.id).unwrap_or_default());
        Ok(bind_filter_params(query_builder, &sql_filter.params)
            .bind(limit as i64 + 1)
            .fetch_all(&self.db)
            .await?)
    }

    async fn merge(
        &self,
        req: pb::MergeCustomersRequest,
        actor: &str,
    ) -> Result<pb::MergeCustomersResponse> {
        let mut v = FieldViolations::new();
        let survivor = parse_id("survivor_id", &req.survivor_id);
        if let Err(e) = &survivor {
            v.extend(e.clone());
        }
        if req.duplicate_ids.is_empty() || req.duplicate_ids.len() > 20 {
            v.add("duplicate_ids", "name 1..=20 customers to merge");
        }
        let mut duplicates = Vec::new();
        for (i, id) in req.duplicate_ids.iter().enumerate() {
            match parse_id(&format!("duplicate_ids[{i}]"), id) {
                Ok(id) if duplicates.contains(&id) => {
                    v.add(format!("duplicate_ids[{i}]"), "is repeated")
                }
                Ok(id) if survivor.as_ref().is_ok_and(|s| *s == id) => {
                    v.add(format!("duplicate_ids[{i}]"), "is the survivor itself")
                }
                Ok(id) => duplicates.push(id),
                Err(e) => v.extend(e),
            }
        }
        idempotency::validate_request_id("request_id", &req.request_id)?;
        v.into_result()?;
        let survivor = survivor.expect("validated");

        let mut tx = self.begin().await?;
        let hash = idempotency::request_hash(&req.encode_to_vec());
        if let Some(response) =
            idempotency::replay(&mut tx, SCHEMA, "MergeCustomers", &req.request_id, &hash).await?
        {
            return Ok(response);
        }
        // Lock in id order so concurrent merges cannot deadlock.
        let mut all = duplicates.clone();
        all.push(survivor);
        all.sort();
        let mut locked = Vec::new();
        for id in &all {
            locked.push(self.lock_active(&mut tx, *id, "").await?);
        }
        let survivor_row = locked
            .iter()
            .find(|r| r.id == survivor)
            .expect("locked")
            .clone();
        let mut fields = survivor_row.fields();
        let mut merged_rows = Vec::new();
        for dup in locked.iter().filter(|r| r.id != survivor) {
            let theirs = dup.fields();
            fields.given_name = fields.given_name.or(theirs.given_name);
            fields.family_name = fields.family_name.or(theirs.family_name);
            fields.company_name = fields.company_name.or(theirs.company_name);
            fields.owner_id = fields.owner_id.or(theirs.owner_id);
            if fields.phone.is_none() {
                fields.phone = theirs.phone.clone();
            } else if let Some(phone) = theirs.phone.filter(|p| Some(p) != fields.phone.as_ref()) {
                fields.contact_points.push(domain::ContactPoint {
                    kind: "PHONE".into(),
                    value: phone,
                    label: "merged".into(),
                });
            }
            if fields.email.is_none() {
                fields.email = theirs.email.clone();
            } else if let Some(email) = theirs.email.filter(|e| Some(e) != fields.email.as_ref()) {
                fields.contact_points.push(domain::ContactPoint {
                    kind: "EMAIL".into(),
                    value: email,
                    label: "merged".into(),
                });
            }
            for tag in theirs.tags {
                if !fields.tags.contains(&tag) {
                    fields.tags.push(tag);
                }
            }
            for (key, value) in theirs.attributes.values {
                if !fields.attributes.values.contains_key(&key) {
                    if theirs.attributes.timestamp_keys.contains(&key) {
                        fields.attributes.timestamp_keys.push(key.clone());
                    }
                    fields.attributes.values.insert(key, value);
                }
            }
            for cp in theirs.contact_points {
                if !fields.contact_points.contains(&cp) {
                    fields.contact_points.push(cp);
                }
            }
            for address in theirs.addresses {
                if !fields.addresses.contains(&address) {
                    fields.addresses.push(address);
                }
            }
            // The duplicate leaves the active set first, freeing its email for the survivor.
            merged_rows
                .push(store::set_state(&mut tx, dup.id, "MERGED", Some(survivor), actor).await?);
        }
        fields.tags.truncate(domain::MAX_TAGS);
        fields.contact_points.truncate(domain::MAX_CONTACT_POINTS);
        fields.addresses.truncate(domain::MAX_ADDRESSES);
        store::reassign_history(&mut tx, survivor, &duplicates).await?;
        let survivor_row = store::update_fields(&mut tx, survivor, &fields, actor).await?;
        let merge_record =
            store::insert_merge(&mut tx, Uuid::now_v7(), survivor, &duplicates, actor).await?;
        let mut rows = merged_rows;
        let mut changes: Vec<(ChangeType, Option<Uuid>)> = rows
            .iter()
            .map(|_| (ChangeType::Merged, Some(survivor)))
            .collect();
        rows.push(survivor_row);
        changes.push((ChangeType::Updated, None));
        let survivor_proto = store::to_protos(&mut tx, &rows[rows.len() - 1..])
            .await?
            .remove(0);
        let response = pb::MergeCustomersResponse {
            customer: Some(survivor_proto),
            merge_record: Some(merge_record),
        };
        idempotency::complete(
            &mut tx,
            SCHEMA,
            "MergeCustomers",
            &req.request_id,
            &response,
        )
        .await?;
        self.finish_write(tx, &rows, &changes).await?;
        Ok(response)
    }

    async fn erase(&self, id: Uuid, actor: &str) -> Result<pb::Customer> {
        let mut tx = self.begin().await?;
        let row = store::find(&mut tx, id, true)
            .await?
            .ok_or(Error::NotFound(id))?;
        if row.state == "ERASED" {
            return Ok(store::to_protos(&mut tx, &[row]).await?.remove(0));
        }
        // Records merged into this one describe the same person: they go too.
        let merged = store::merged_into(&mut tx, id).await?;
        let mut rows = Vec::new();
        for other in merged.into_iter().chain(std::iter::once(id)) {
            rows.push(store::erase(&mut tx, other, actor).await?);
        }
        let changes: Vec<_> = rows.iter().map(|_| (ChangeType::Erased, None)).collect();
        let mut customers = self.finish_write(tx, &rows, &changes).await?;
        tracing::info!(customer_id = %id, "customer erased");
        Ok(customers.pop().expect("the erased customer"))
    }

    /// Imports one row. A row the caller got wrong is answered REJECTED and the import goes on;
    /// a database that is unreachable ends the whole stream with UNAVAILABLE, as the contract
    /// says, so the caller re-sends from the first unanswered row instead of seeing every later
    /// row rejected.
    async fn import_row(
        &self,
        row: pb::ImportCustomersRequest,
        actor: &str,
    ) -> Result<pb::ImportCustomersResponse, Status> {
        let reject = |errors: Vec<String>| pb::ImportCustomersResponse {
            row_ref: row.row_ref.clone(),
            outcome: pb::ImportRowOutcome::Rejected as i32,
            customer_id: String::new(),
            errors,
        };
        if row.row_ref.chars().count() > 100 {
            return Ok(reject(vec![
                "row_ref: must be at most 100 characters".into(),
            ]));
        }
        let Some(customer) = &row.customer else {
            return Ok(reject(vec!["customer: is required".into()]));
        };
        let fields = match CustomerFields::from_proto(customer, "customer") {
            Ok(fields) => fields,
            Err(v) => {
                return Ok(reject(
                    v.iter()
                        .map(|v| format!("{}: {}", v.field, v.description))
                        .collect(),
                ));
            }
        };
        if let Err(e) = idempotency::validate_request_id("request_id", &row.request_id) {
            return Ok(reject(vec![e.to_string()]));
        }
        let hash = idempotency::request_hash(&customer.encode_to_vec());
        match self.create(&fields, &row.request_id, &hash, actor).await {
            Ok((response, created)) => Ok(pb::ImportCustomersResponse {
                row_ref: row.row_ref.clone(),
                outcome: if created {
                    pb::ImportRowOutcome::Created
                } else {
                    pb::ImportRowOutcome::DuplicateRequest
                } as i32,
                customer_id: response.customer.map(|c| c.id).unwrap_or_default(),
                errors: Vec::new(),
            }),
            Err(err) => match ApiError::from(err) {
                ApiError::Unavailable(cause) => Err(ApiError::Unavailable(cause).into()),
                ApiError::Internal(cause) => {
                    tracing::warn!(error = %cause, "import row failed");
                    Ok(reject(vec!["the row could not be stored; retry it".into()]))
                }
                api => {
                    // Name the field the conflict is about, as validation errors do.
                    let field = match &api {
                        ApiError::AlreadyExists {
                            reason: "EMAIL_ALREADY_EXISTS",
                            ..
                        } => "customer.email: ",
                        ApiError::AlreadyExists {
                            reason: "REQUEST_ID_REUSED",
                            ..
                        } => "request_id: ",
                        _ => "",
                    };
                    let message = Status::from(api).message().to_string();
                    Ok(reject(vec![format!("{field}{message}")]))
                }
            },
        }
    }
}

/// A consent decision that passed validation.
#[derive(Debug)]
pub struct ValidConsent {
    pub channel: &'static str,
    pub status: &'static str,
    pub legal_basis: &'static str,
    pub source: String,
    pub capture_time: DateTime<Utc>,
}

fn validate_consent(consent: Option<&pb::Consent>) -> Result<ValidConsent, FieldViolations> {
    let mut v = FieldViolations::new();
    let Some(c) = consent else {
        return Err(FieldViolations::single("consent", "is required"));
    };
    let channel = match pb::ConsentChannel::try_from(c.channel) {
        Ok(ch) if ch != pb::ConsentChannel::Unspecified => ch.as_str_name(),
        _ => {
            v.add(
                "consent.channel",
                "must be EMAIL, SMS, PHONE, PUSH or DIRECT_MAIL",
            );
            ""
        }
    };
    let status = match pb::ConsentStatus::try_from(c.status) {
        Ok(s) if s != pb::ConsentStatus::Unspecified => s.as_str_name(),
        _ => {
            v.add("consent.status", "must be GRANTED or WITHDRAWN");
            ""
        }
    };
    let legal_basis = match pb::LegalBasis::try_from(c.legal_basis) {
        Ok(b) if b != pb::LegalBasis::Unspecified => b.as_str_name(),
        _ => {
            v.add(
                "consent.legal_basis",
                "must be set (CONSENT, CONTRACT, LEGAL_OBLIGATION or LEGITIMATE_INTEREST)",
            );
            ""
        }
    };
    let source = c.source.trim().to_string();
    if source.is_empty() || source.chars().count() > 100 {
        v.add("consent.source", "is required, at most 100 characters");
    }
    let now = Utc::now();
    let capture_time = match &c.capture_time {
        None => now,
        Some(ts) => match domain::timestamp_from_proto(ts) {
            Some(t) if t <= now + chrono::Duration::minutes(5) => t,
            Some(_) => {
                v.add("consent.capture_time", "must not be in the future");
                now
            }
            None => {
                v.add("consent.capture_time", "is not a valid timestamp");
                now
            }
        },
    };
    if v.is_empty() {
        Ok(ValidConsent {
            channel,
            status,
            legal_basis,
            source,
            capture_time,
        })
    } else {
        Err(v)
    }
}

fn validate_interaction(
    i: Option<&pb::Interaction>,
) -> Result<(Uuid, InteractionRow), FieldViolations> {
    let Some(i) = i else {
        return Err(FieldViolations::single("interaction", "is required"));
    };
    let mut v = FieldViolations::new();
    let customer_id = parse_id("interaction.customer_id", &i.customer_id)
        .map_err(|e| v.extend(e))
        .ok();
    let kind = match pb::InteractionType::try_from(i.r#type) {
        Ok(t) if t != pb::InteractionType::Unspecified => {
            t.as_str_name().trim_start_matches("INTERACTION_TYPE_")
        }
        _ => {
            v.add("interaction.type", "must be CALL, EMAIL, MEETING or NOTE");
            ""
        }
    };
    let direction = pb::InteractionDirection::try_from(i.direction)
        .map(|d| match d {
            pb::InteractionDirection::Unspecified => "UNSPECIFIED",
            other => other
                .as_str_name()
                .trim_start_matches("INTERACTION_DIRECTION_"),
        })
        .unwrap_or_else(|_| {
            v.add("interaction.direction", "unknown value");
            "UNSPECIFIED"
        });
    let subject = i.subject.trim().to_string();
    if subject.is_empty() || subject.chars().count() > 200 {
        v.add("interaction.subject", "is required, at most 200 characters");
    }
    if i.body.chars().count() > 10_000 {
        v.add("interaction.body", "must be at most 10000 characters");
    }
    if i.owner_id.chars().count() > 100 {
        v.add("interaction.owner_id", "must be at most 100 characters");
    }
    let now = Utc::now();
    let occur_time = match &i.occur_time {
        None => now,
        Some(ts) => match domain::timestamp_from_proto(ts) {
            Some(t) if t <= now + chrono::Duration::days(1) => t,
            _ => {
                v.add(
                    "interaction.occur_time",
                    "must be a valid time at most 1 day ahead",
                );
                now
            }
        },
    };
    let duration_ms = match &i.duration {
        None => None,
        Some(d) if d.seconds >= 0 && d.seconds <= 86_400 && d.nanos >= 0 => {
            Some(d.seconds * 1000 + d.nanos as i64 / 1_000_000)
        }
        Some(_) => {
            v.add("interaction.duration", "must be between 0 and 24 hours");
            None
        }
    };
    if !v.is_empty() {
        return Err(v);
    }
    let customer_id = customer_id.expect("validated");
    Ok((
        customer_id,
        InteractionRow {
            id: Uuid::now_v7(),
            customer_id,
            r#type: kind.to_string(),
            direction: direction.to_string(),
            subject,
            body: i.body.clone(),
            occur_time,
            duration_ms,
            owner_id: i.owner_id.clone(),
            create_time: now,
            created_by: String::new(),
        },
    ))
}

fn ok<T>(result: Result<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::CreateCustomerResponse>, Status> {
        let actor = Principal::of(&request);
        let req = request.into_inner();
        ok(async {
            let customer = req
                .customer
                .as_ref()
                .ok_or_else(|| ApiError::invalid("customer", "is required"))?;
            let fields = CustomerFields::from_proto(customer, "customer")?;
            idempotency::validate_request_id("request_id", &req.request_id)?;
            let hash = idempotency::request_hash(&req.encode_to_vec());
            Ok(self
                .create(&fields, &req.request_id, &hash, &actor)
                .await?
                .0)
        }
        .await)
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        let req = request.into_inner();
        ok(async {
            let id = parse_id("id", &req.id)?;
            Ok(pb::GetCustomerResponse {
                customer: Some(self.get_resolved(id).await?),
            })
        }
        .await)
    }

    async fn batch_get_customers(
        &self,
        request: Request<pb::BatchGetCustomersRequest>,
    ) -> Result<Response<pb::BatchGetCustomersResponse>, Status> {
        let req = request.into_inner();
        ok(async {
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
        .await)
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        ok(self.list(request.into_inner()).await)
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::UpdateCustomerResponse>, Status> {
        let actor = Principal::of(&request);
        let req = request.into_inner();
        ok(async {
            let incoming = req
                .customer
                .as_ref()
                .ok_or_else(|| ApiError::invalid("customer", "is required"))?;
            let id = parse_id("customer.id", &incoming.id)?;
            let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
            let mut tx = self.begin().await?;
            let row = self.lock_active(&mut tx, id, &incoming.etag).await?;
            let mut fields = row.fields();
            fields.apply_mask(incoming, &paths)?;
            let row = store::update_fields(&mut tx, id, &fields, &actor).await?;
            let mut customers = self
                .finish_write(tx, &[row], &[(ChangeType::Updated, None)])
                .await?;
            Ok(pb::UpdateCustomerResponse {
                customer: customers.pop(),
            })
        }
        .await)
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::DeleteCustomerResponse>, Status> {
        let actor = Principal::of(&request);
        let req = request.into_inner();
        ok(async {
            let id = parse_id("id", &req.id)?;
            let mut tx = self.begin().await?;
            self.lock_active(&mut tx, id, &req.etag).await?;
            let row = store::set_state(&mut tx, id, "DELETED", None, &actor).await?;
            let mut customers = self
                .finish_write(tx, &[row], &[(ChangeType::Deleted, None)])
                .await?;
            Ok(pb::DeleteCustomerResponse {
                customer: customers.pop(),
            })
        }
        .await)
    }

    async fn undelete_customer(
        &self,
        request: Request<pb::UndeleteCustomerRequest>,
    ) -> Result<Response<pb::UndeleteCustomerResponse>, Status> {
        let actor = Principal::of(&request);
        let req = request.into_inner();
        ok(async {
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
            let row = store::set_state(&mut tx, id, "ACTIVE", None, &actor).await?;
            let mut customers = self
                .finish_write(tx, &[row], &[(ChangeType::Undeleted, None)])
                .await?;
            Ok(pb::UndeleteCustomerResponse {
                customer: customers.pop(),
            })
        }
        .await)
    }

    async fn search_customers(
        &self,
        request: Request<pb::SearchCustomersRequest>,
    ) -> Result<Response<pb::SearchCustomersResponse>, Status> {
        ok(self.search(request.into_inner()).await)
    }

    async fn find_duplicate_customers(
        &self,
        request: Request<pb::FindDuplicateCustomersRequest>,
    ) -> Result<Response<pb::FindDuplicateCustomersResponse>, Status> {
        let req = request.into_inner();
        ok(async {
            let id = parse_id("customer_id", &req.customer_id)?;
            let limit = page_size(req.page_size, 10, 50)?;
            let mut conn = self.db.acquire().await?;
            let me = store::find(&mut conn, id, false)
                .await?
                .ok_or(Error::NotFound(id))?;
            if me.state != "ACTIVE" {
                return Err(Error::NotActive {
                    id,
                    state: me.state,
                });
            }
            let candidates = store::duplicate_candidates(&mut conn, &me, limit as i64).await?;
            let rows: Vec<CustomerRow> = candidates.iter().map(|c| c.row.clone()).collect();
            let customers = store::to_protos(&mut conn, &rows).await?;
            Ok(pb::FindDuplicateCustomersResponse {
                candidates: customers
                    .into_iter()
                    .zip(candidates)
                    .map(|(customer, c)| pb::DuplicateCandidate {
                        customer: Some(customer),
                        score: c.score,
                        reasons: c.reasons,
                    })
                    .collect(),
            })
        }
        .await)
    }

    async fn merge_customers(
        &self,
        request: Request<pb::MergeCustomersRequest>,
    ) -> Result<Response<pb::MergeCustomersResponse>, Status> {
        let actor = Principal::of(&request);
        ok(self.merge(request.into_inner(), &actor).await)
    }

    async fn list_merge_records(
        &self,
        request: Request<pb::ListMergeRecordsRequest>,
    ) -> Result<Response<pb::ListMergeRecordsResponse>, Status> {
        let req = request.into_inner();
        ok(async {
            let id = parse_id("customer_id", &req.customer_id)?;
            let mut conn = self.db.acquire().await?;
            store::find(&mut conn, id, false)
                .await?
                .ok_or(Error::NotFound(id))?;
            Ok(pb::ListMergeRecordsResponse {
                merge_records: store::merge_records(&mut conn, id).await?,
            })
        }
        .await)
    }

    async fn erase_customer(
        &self,
        request: Request<pb::EraseCustomerRequest>,
    ) -> Result<Response<pb::EraseCustomerResponse>, Status> {
        let actor = Principal::of(&request);
        let req = request.into_inner();
        ok(async {
            let mut v = FieldViolations::new();
            let id = parse_id("id", &req.id).map_err(|e| v.extend(e)).ok();
            let reason = req.reason.trim();
            if reason.is_empty() || reason.chars().count() > 200 {
                v.add("reason", "is required, at most 200 characters");
            }
            v.into_result()?;
            tracing::info!(customer_id = req.id, reason, actor, "erasing customer");
            Ok(pb::EraseCustomerResponse {
                customer: Some(self.erase(id.expect("validated"), &actor).await?),
            })
        }
        .await)
    }

    async fn export_customer_data(
        &self,
        request: Request<pb::ExportCustomerDataRequest>,
    ) -> Result<Response<pb::ExportCustomerDataResponse>, Status> {
        let req = request.into_inner();
        ok(async {
            let id = parse_id("id", &req.id)?;
            let mut conn = self.db.acquire().await?;
            let (_, customer) = store::load(&mut conn, id)
                .await?
                .ok_or(Error::NotFound(id))?;
            let consent_history = store::consent_history(&mut conn, id, None, i64::MAX)
                .await?
                .into_iter()
                .map(|c| c.2)
                .collect();
            let interactions = store::all_interactions(&mut conn, id).await?;
            Ok(pb::ExportCustomerDataResponse {
                customer: Some(customer),
                consent_history,
                interactions: interactions.iter().map(InteractionRow::to_proto).collect(),
                merge_records: store::merge_records(&mut conn, id).await?,
                export_time: Some(domain::timestamp_to_proto(Utc::now())),
            })
        }
        .await)
    }

    async fn record_consent(
        &self,
        request: Request<pb::RecordConsentRequest>,
    ) -> Result<Response<pb::RecordConsentResponse>, Status> {
        let actor = Principal::of(&request);
        let req = request.into_inner();
        ok(async {
            let mut v = FieldViolations::new();
            let id = parse_id("customer_id", &req.customer_id)
                .map_err(|e| v.extend(e))
                .ok();
            let consent = validate_consent(req.consent.as_ref())
                .map_err(|e| v.extend(e))
                .ok();
            v.into_result()?;
            let (id, consent) = (id.expect("validated"), consent.expect("validated"));
            let mut tx = self.begin().await?;
            self.lock_active(&mut tx, id, "").await?;
            store::insert_consent(&mut tx, id, &consent, &actor).await?;
            let row = store::touch(&mut tx, id, &actor).await?;
            let mut customers = self
                .finish_write(tx, &[row], &[(ChangeType::Updated, None)])
                .await?;
            Ok(pb::RecordConsentResponse {
                customer: customers.pop(),
            })
        }
        .await)
    }

    async fn list_consent_history(
        &self,
        request: Request<pb::ListConsentHistoryRequest>,
    ) -> Result<Response<pb::ListConsentHistoryResponse>, Status> {
        let req = request.into_inner();
        ok(async {
            let id = parse_id("customer_id", &req.customer_id)?;
            let limit = page_size(req.page_size, 50, 1000)?;
            let fingerprint = query_fingerprint(&[&req.customer_id]);
            let cursor: Option<(DateTime<Utc>, i64)> =
                self.decode_token(&req.page_token, fingerprint)?;
            let mut conn = self.db.acquire().await?;
            store::find(&mut conn, id, false)
                .await?
                .ok_or(Error::NotFound(id))?;
            let mut entries =
                store::consent_history(&mut conn, id, cursor, limit as i64 + 1).await?;
            let next_page_token = if entries.len() > limit as usize {
                entries.truncate(limit as usize);
                let last = entries.last().expect("a full page has a last row");
                self.page_tokens.encode(fingerprint, &(last.1, last.0))
            } else {
                String::new()
            };
            Ok(pb::ListConsentHistoryResponse {
                consents: entries.into_iter().map(|e| e.2).collect(),
                next_page_token,
            })
        }
        .await)
    }

    async fn create_interaction(
        &self,
        request: Request<pb::CreateInteractionRequest>,
    ) -> Result<Response<pb::CreateInteractionResponse>, Status> {
        let actor = Principal::of(&request);
        let req = request.into_inner();
        ok(async {
            let (customer_id, mut row) = validate_interaction(req.interaction.as_ref())?;
            idempotency::validate_request_id("request_id", &req.request_id)?;
            row.created_by = actor;
            let mut tx = self.begin().await?;
            let hash = idempotency::request_hash(&req.encode_to_vec());
            if let Some(response) =
                idempotency::replay(&mut tx, SCHEMA, "CreateInteraction", &req.request_id, &hash)
                    .await?
            {
                return Ok(response);
            }
            self.lock_active(&mut tx, customer_id, "").await?;
            let stored = store::insert_interaction(&mut tx, &row).await?;
            let response = pb::CreateInteractionResponse {
                interaction: Some(stored.to_proto()),
            };
            idempotency::complete(
                &mut tx,
                SCHEMA,
                "CreateInteraction",
                &req.request_id,
                &response,
            )
            .await?;
            tx.commit().await?;
            Ok(response)
        }
        .await)
    }

    async fn list_interactions(
        &self,
        request: Request<pb::ListInteractionsRequest>,
    ) -> Result<Response<pb::ListInteractionsResponse>, Status> {
        let req = request.into_inner();
        ok(async {
            let id = parse_id("customer_id", &req.customer_id)?;
            let limit = page_size(req.page_size, 50, 1000)?;
            let sql_filter = self.parse_filter(&req.filter, &INTERACTION_FILTER, 5)?;
            let fingerprint = query_fingerprint(&[&req.customer_id, &req.filter]);
            let cursor: Option<(DateTime<Utc>, Uuid)> =
                self.decode_token(&req.page_token, fingerprint)?;
            let mut conn = self.db.acquire().await?;
            store::find(&mut conn, id, false)
                .await?
                .ok_or(Error::NotFound(id))?;
            let sql = format!(
                "SELECT {INTERACTION_COLUMNS} FROM customer.interactions WHERE customer_id = $1 \
                 AND ($2::timestamptz IS NULL OR (occur_time, id) < ($2, $3)) AND {} \
                 ORDER BY occur_time DESC, id DESC LIMIT $4",
                sql_filter.sql
            );
            let query = sqlx::query_as::<_, InteractionRow>(&sql)
                .bind(id)
                .bind(cursor.map(|c| c.0))
                .bind(cursor.map(|c| c.1).unwrap_or_default())
                .bind(limit as i64 + 1);
            let mut rows = bind_filter_params(query, &sql_filter.params)
                .fetch_all(&mut *conn)
                .await?;
            let next_page_token = if rows.len() > limit as usize {
                rows.truncate(limit as usize);
                let last = rows.last().expect("a full page has a last row");
                self.page_tokens
                    .encode(fingerprint, &(last.occur_time, last.id))
            } else {
                String::new()
            };
            Ok(pb::ListInteractionsResponse {
                interactions: rows.iter().map(InteractionRow::to_proto).collect(),
                next_page_token,
            })
        }
        .await)
    }

    type ImportCustomersStream = ResponseStream<pb::ImportCustomersResponse>;

    async fn import_customers(
        &self,
        request: Request<Streaming<pb::ImportCustomersRequest>>,
    ) -> Result<Response<Self::ImportCustomersStream>, Status> {
        let actor = Principal::of(&request);
        let mut rows = request.into_inner();
        // A small buffer: when the caller stops reading results, the import stops reading rows,
        // and HTTP/2 flow control pushes back on the sender. Memory stays bounded.
        let (tx, rx) = mpsc::channel(64);
        let api = self.clone();
        tokio::spawn(async move {
            while let Some(row) = rows.next().await {
                let result = match row {
                    Ok(row) => api.import_row(row, &actor).await,
                    Err(status) => Err(status),
                };
                let failed = result.is_err();
                if tx.send(result).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ExportCustomersStream = ResponseStream<pb::ExportCustomersResponse>;

    async fn export_customers(
        &self,
        request: Request<pb::ExportCustomersRequest>,
    ) -> Result<Response<Self::ExportCustomersStream>, Status> {
        let req = request.into_inner();
        let sql_filter = self
            .parse_filter(&req.filter, &CUSTOMER_FILTER, 2)
            .map_err(Status::from)?;
        let (tx, rx) = mpsc::channel(256);
        let db = self.db.clone();
        tokio::spawn(async move {
            let sql = format!(
                "SELECT {CUSTOMER_COLUMNS} FROM customer.customers c WHERE c.state = 'ACTIVE' \
                 AND c.id > $1 AND {} ORDER BY c.id LIMIT {}",
                sql_filter.sql, 500
            );
            let mut after = Uuid::nil();
            loop {
                let page: Result<Vec<pb::Customer>> = async {
                    let mut conn = db.acquire().await?;
                    let query = sqlx::query_as::<_, CustomerRow>(&sql).bind(after);
                    let rows = bind_filter_params(query, &sql_filter.params)
                        .fetch_all(&mut *conn)
                        .await?;
                    store::to_protos(&mut conn, &rows).await
                }
                .await;
                match page {
                    Ok(customers) if customers.is_empty() => return,
                    Ok(customers) => {
                        for customer in customers {
                            after = Uuid::parse_str(&customer.id).unwrap_or(after);
                            if tx
                                .send(Ok(pb::ExportCustomersResponse {
                                    customer: Some(customer),
                                }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        let _ = tx.send(Err(Status::from(err))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchCustomerChangesStream = ResponseStream<pb::WatchCustomerChangesResponse>;

    async fn watch_customer_changes(
        &self,
        request: Request<pb::WatchCustomerChangesRequest>,
    ) -> Result<Response<Self::WatchCustomerChangesStream>, Status> {
        let req = request.into_inner();
        let start = crate::feed::start_position(&self.db, &req)
            .await
            .map_err(Status::from)?;
        Ok(Response::new(Box::pin(crate::feed::stream(
            self.db.clone(),
            self.changes.clone(),
            start,
        ))))
    }
}

/// Housekeeping every 10 minutes until shutdown: deletes request ids past their 24 hours and
/// change-feed events past their 30 days.
pub(crate) fn spawn_housekeeping(db: PgPool, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            }
            match idempotency::purge_expired(&db, SCHEMA).await {
                Ok(n) if n > 0 => tracing::info!(purged = n, "expired request ids deleted"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "purging request ids failed"),
            }
            match store::purge_changes_before(&db, crate::feed::RETENTION).await {
                Ok(n) if n > 0 => tracing::info!(purged = n, "expired change events deleted"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "purging change events failed"),
            }
        }
    });
}
