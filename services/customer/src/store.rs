//! SQL for the customer schema. Handlers own transactions; functions here take a connection
//! (a transaction or a pooled one) and never decide what a caller sees.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use crm_platform::idempotency::{self, Subject};
use crm_proto::crm::customer::v1 as pb;
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::domain::consent::ValidConsent;
use crate::domain::{
    self, Address, Attributes, ContactKind, ContactPoint, CustomerFields, CustomerState,
    LifecycleStage, Principal,
};
use crate::error::Result;
use crate::feed::RESOURCE_TYPE;

mod history;
mod imports;
mod interactions;
mod lists;
mod merges;
mod scan;

pub use history::{FieldChangeRow, field_changes, insert_field_changes};
pub use imports::insert_new;
pub use interactions::{INTERACTION_COLUMNS, InteractionRow, all_interactions, insert_interaction};
pub use lists::{
    CONSENT_HISTORY, CUSTOMER_FILTER, CUSTOMERS, FIELD_CHANGES, INTERACTIONS, MERGE_RECORDS,
    SEARCH, SearchHit, SearchMode, consent_history_page, customers_page, field_changes_page,
    interactions_page, merge_records_page, search_page,
};
pub use merges::{insert_merge, merge_records};
pub use scan::{active_after, active_matching_after, count_active};

/// Every column of `customer.customers` a read needs.
pub const CUSTOMER_COLUMNS: &str = "c.id, c.version, c.state, c.display_name, c.email, \
    c.given_name, c.family_name, c.phone, c.company_name, c.lifecycle_stage, c.owner_kind, \
    c.owner_id, c.source, c.tags, c.attributes, c.attribute_timestamps, c.contact_points, \
    c.addresses, c.merged_into_id, c.delete_time, c.create_time, c.update_time, \
    c.created_by_kind, c.created_by, c.updated_by_kind, c.updated_by";

/// One stored customer.
#[derive(Debug, Clone, FromRow)]
pub struct CustomerRow {
    pub id: Uuid,
    pub version: i64,
    pub state: CustomerState,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub phone: Option<String>,
    pub company_name: Option<String>,
    pub lifecycle_stage: LifecycleStage,
    pub owner_kind: Option<String>,
    pub owner_id: Option<String>,
    pub source: Option<String>,
    pub tags: Vec<String>,
    pub attributes: Json<serde_json::Map<String, serde_json::Value>>,
    pub attribute_timestamps: Vec<String>,
    pub contact_points: Json<Vec<ContactPoint>>,
    pub addresses: Json<Vec<Address>>,
    pub merged_into_id: Option<Uuid>,
    pub delete_time: Option<DateTime<Utc>>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub created_by_kind: String,
    pub created_by: String,
    pub updated_by_kind: String,
    pub updated_by: String,
}

impl CustomerRow {
    /// The etag of this version.
    pub fn etag(&self) -> String {
        etag_of(self.version)
    }

    /// The writable fields as stored, to apply an update mask onto.
    pub fn fields(&self) -> CustomerFields {
        CustomerFields {
            display_name: self.display_name.clone().unwrap_or_default(),
            email: self.email.clone(),
            given_name: self.given_name.clone(),
            family_name: self.family_name.clone(),
            phone: self.phone.clone(),
            company_name: self.company_name.clone(),
            lifecycle_stage: self.lifecycle_stage,
            owner: self
                .owner_kind
                .as_deref()
                .zip(self.owner_id.as_deref())
                .map(|(kind, id)| Principal::stored(kind, id)),
            source: self.source.clone(),
            tags: self.tags.clone(),
            attributes: Attributes {
                values: self.attributes.0.clone(),
                timestamp_keys: self.attribute_timestamps.clone(),
            },
            contact_points: self.contact_points.0.clone(),
            addresses: self.addresses.0.clone(),
        }
    }

    /// The proto message, with the given current consents.
    pub fn to_proto(&self, consents: Vec<pb::Consent>) -> pb::Customer {
        let fields = self.fields();
        pb::Customer {
            id: self.id.to_string(),
            etag: self.etag(),
            display_name: fields.display_name,
            email: fields.email.unwrap_or_default(),
            given_name: fields.given_name.unwrap_or_default(),
            family_name: fields.family_name.unwrap_or_default(),
            phone: fields.phone.unwrap_or_default(),
            company_name: fields.company_name.unwrap_or_default(),
            lifecycle_stage: pb::LifecycleStage::from(self.lifecycle_stage) as i32,
            owner: fields.owner.as_ref().map(Principal::to_proto),
            tags: fields.tags,
            attributes: fields.attributes.to_proto(),
            contact_points: fields
                .contact_points
                .iter()
                .map(|cp| pb::ContactPoint {
                    r#type: pb::ContactPointType::from(cp.kind) as i32,
                    value: cp.value.clone(),
                    label: cp.label.clone(),
                })
                .collect(),
            addresses: fields.addresses.iter().map(Into::into).collect(),
            consents,
            source: fields.source.unwrap_or_default(),
            state: pb::CustomerState::from(self.state) as i32,
            delete_time: self.delete_time.map(domain::timestamp_to_proto),
            merged_into_id: self
                .merged_into_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            audit: Some(crm_proto::crm::common::v1::AuditInfo {
                create_time: Some(domain::timestamp_to_proto(self.create_time)),
                update_time: Some(domain::timestamp_to_proto(self.update_time)),
                creator: Some(
                    Principal::stored(&self.created_by_kind, &self.created_by).to_proto(),
                ),
                updater: Some(
                    Principal::stored(&self.updated_by_kind, &self.updated_by).to_proto(),
                ),
            }),
        }
    }
}

/// The etag for a row version. Opaque to callers; quoted like an HTTP entity tag.
pub fn etag_of(version: i64) -> String {
    format!("\"{version}\"")
}

/// Fetches one customer; `lock` takes a row lock for the rest of the transaction.
pub async fn find(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<Option<CustomerRow>> {
    let sql = format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customer.customers c WHERE c.id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(conn).await?)
}

/// Binds the writable fields as parameters $2..=$16, in the column order insert and update use.
fn bind_fields<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, CustomerRow, sqlx::postgres::PgArguments>,
    fields: &'q CustomerFields,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, CustomerRow, sqlx::postgres::PgArguments> {
    query
        .bind(&fields.display_name)
        .bind(&fields.email)
        .bind(&fields.given_name)
        .bind(&fields.family_name)
        .bind(&fields.phone)
        .bind(&fields.company_name)
        .bind(fields.lifecycle_stage)
        .bind(fields.owner.as_ref().map(|o| o.kind))
        .bind(fields.owner.as_ref().map(|o| &o.id))
        .bind(&fields.source)
        .bind(&fields.tags)
        .bind(Json(&fields.attributes.values))
        .bind(&fields.attributes.timestamp_keys)
        .bind(Json(&fields.contact_points))
        .bind(Json(&fields.addresses))
}

/// Inserts a new active customer.
pub async fn insert(
    conn: &mut PgConnection,
    id: Uuid,
    fields: &CustomerFields,
    actor: &Principal,
) -> Result<CustomerRow> {
    let sql = format!(
        "INSERT INTO customer.customers AS c (id, display_name, email, given_name, family_name, \
           phone, company_name, lifecycle_stage, owner_kind, owner_id, source, tags, attributes, \
           attribute_timestamps, contact_points, addresses, created_by_kind, created_by, \
           updated_by_kind, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
           $17, $18, $17, $18) \
         RETURNING {CUSTOMER_COLUMNS}"
    );
    Ok(bind_fields(sqlx::query_as(&sql).bind(id), fields)
        .bind(actor.kind)
        .bind(&actor.id)
        .fetch_one(conn)
        .await?)
}

/// Overwrites the writable fields of a customer and bumps its version.
pub async fn update_fields(
    conn: &mut PgConnection,
    id: Uuid,
    fields: &CustomerFields,
    actor: &Principal,
) -> Result<CustomerRow> {
    let sql = format!(
        "UPDATE customer.customers AS c SET display_name = $2, email = $3, given_name = $4, \
           family_name = $5, phone = $6, company_name = $7, lifecycle_stage = $8, \
           owner_kind = $9, owner_id = $10, source = $11, tags = $12, attributes = $13, \
           attribute_timestamps = $14, contact_points = $15, addresses = $16, \
           updated_by_kind = $17, updated_by = $18, update_time = now(), \
           version = c.version + 1 \
         WHERE c.id = $1 RETURNING {CUSTOMER_COLUMNS}"
    );
    Ok(bind_fields(sqlx::query_as(&sql).bind(id), fields)
        .bind(actor.kind)
        .bind(&actor.id)
        .fetch_one(conn)
        .await?)
}

/// Moves a customer to `state` (soft delete, undelete, merge) and bumps its version.
pub async fn set_state(
    conn: &mut PgConnection,
    id: Uuid,
    state: CustomerState,
    merged_into: Option<Uuid>,
    actor: &Principal,
) -> Result<CustomerRow> {
    let sql = format!(
        "UPDATE customer.customers AS c SET state = $2, merged_into_id = $3, \
           delete_time = CASE WHEN $2 = 'DELETED' THEN now() ELSE NULL END, \
           updated_by_kind = $4, updated_by = $5, update_time = now(), version = c.version + 1 \
         WHERE c.id = $1 RETURNING {CUSTOMER_COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .bind(state)
        .bind(merged_into)
        .bind(actor.kind)
        .bind(&actor.id)
        .fetch_one(conn)
        .await?)
}

/// The service's tables an erasure writes to ([`erase`]), whose dead row versions hold the
/// erased data until they are vacuumed (`crm_platform::erasure`).
pub const ERASED_TABLES: &[&str] = &["customers", "consents", "field_changes", "interactions"];

/// Customer `id` as the subject of the stored responses that carry its data.
pub fn customer_subject(id: Uuid) -> Subject {
    Subject::new(RESOURCE_TYPE, id)
}

/// Erases every piece of personal data of a customer (consent and field history included, the
/// change feed's snapshots and the stored responses of its request ids) and leaves a tombstone.
/// The caller holds the customer's row lock (see [`idempotency::forget_subject`]).
pub async fn erase(conn: &mut PgConnection, id: Uuid, actor: &Principal) -> Result<CustomerRow> {
    for table in ["consents", "field_changes"] {
        sqlx::query(&format!(
            "DELETE FROM customer.{table} WHERE customer_id = $1"
        ))
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "UPDATE customer.interactions \
         SET subject = '[erased]', body = '', owner_kind = '', owner_id = '' \
         WHERE customer_id = $1",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    let id_text = id.to_string();
    crm_platform::feed::erase_snapshots(&mut *conn, crate::SCHEMA, RESOURCE_TYPE, &id_text).await?;
    idempotency::forget_subject(&mut *conn, &customer_subject(id)).await?;
    let sql = format!(
        "UPDATE customer.customers AS c SET state = 'ERASED', display_name = NULL, email = NULL, \
           given_name = NULL, family_name = NULL, phone = NULL, company_name = NULL, \
           owner_kind = NULL, owner_id = NULL, source = NULL, tags = '{{}}', attributes = '{{}}', \
           attribute_timestamps = '{{}}', contact_points = '[]', addresses = '[]', \
           delete_time = NULL, updated_by_kind = $2, updated_by = $3, update_time = now(), \
           version = c.version + 1 \
         WHERE c.id = $1 RETURNING {CUSTOMER_COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .bind(actor.kind)
        .bind(&actor.id)
        .fetch_one(conn)
        .await?)
}

#[derive(FromRow)]
struct ConsentRow {
    customer_id: Uuid,
    channel: String,
    status: String,
    legal_basis: String,
    source: String,
    capture_time: DateTime<Utc>,
    record_time: DateTime<Utc>,
    recorded_by_kind: String,
    recorded_by: String,
}

/// Columns of a consent read.
const CONSENT_COLUMNS: &str = "customer_id, channel, status, legal_basis, source, capture_time, \
    record_time, recorded_by_kind, recorded_by";

impl ConsentRow {
    fn to_proto(&self) -> pb::Consent {
        pb::Consent {
            channel: crm_proto::crm::common::v1::Channel::from_str_name(&self.channel)
                .unwrap_or_default() as i32,
            status: pb::ConsentStatus::from_str_name(&self.status).unwrap_or_default() as i32,
            legal_basis: pb::LegalBasis::from_str_name(&self.legal_basis).unwrap_or_default()
                as i32,
            source: self.source.clone(),
            capture_time: Some(domain::timestamp_to_proto(self.capture_time)),
            record_time: Some(domain::timestamp_to_proto(self.record_time)),
            recorder: Some(Principal::stored(&self.recorded_by_kind, &self.recorded_by).to_proto()),
        }
    }
}

/// The current consent per channel of each customer in `ids`.
pub async fn current_consents(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<pb::Consent>>> {
    let rows: Vec<ConsentRow> = sqlx::query_as(&format!(
        "SELECT DISTINCT ON (customer_id, channel) {CONSENT_COLUMNS} \
         FROM customer.consents WHERE customer_id = ANY($1) \
         ORDER BY customer_id, channel, record_time DESC, id DESC",
    ))
    .bind(ids)
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<Uuid, Vec<pb::Consent>> = HashMap::new();
    for row in rows {
        out.entry(row.customer_id).or_default().push(row.to_proto());
    }
    Ok(out)
}

/// A customer as the API returns it, or `None`.
pub async fn load(conn: &mut PgConnection, id: Uuid) -> Result<Option<(i64, pb::Customer)>> {
    let Some(row) = find(conn, id, false).await? else {
        return Ok(None);
    };
    let mut consents = current_consents(conn, &[id]).await?;
    Ok(Some((
        row.version,
        row.to_proto(consents.remove(&id).unwrap_or_default()),
    )))
}

/// Protos for a page of rows, with their consents, in the rows' order.
pub async fn to_protos(conn: &mut PgConnection, rows: &[CustomerRow]) -> Result<Vec<pb::Customer>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut consents = current_consents(conn, &ids).await?;
    Ok(rows
        .iter()
        .map(|r| r.to_proto(consents.remove(&r.id).unwrap_or_default()))
        .collect())
}

/// Appends a consent decision; returns it as stored.
pub async fn insert_consent(
    conn: &mut PgConnection,
    customer_id: Uuid,
    consent: &ValidConsent,
    actor: &Principal,
) -> Result<pb::Consent> {
    let row: ConsentRow = sqlx::query_as(&format!(
        "INSERT INTO customer.consents (customer_id, channel, status, legal_basis, source, \
           capture_time, recorded_by_kind, recorded_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {CONSENT_COLUMNS}"
    ))
    .bind(customer_id)
    .bind(consent.channel)
    .bind(consent.status)
    .bind(consent.legal_basis)
    .bind(&consent.source)
    .bind(consent.capture_time)
    .bind(actor.kind)
    .bind(&actor.id)
    .fetch_one(conn)
    .await?;
    Ok(row.to_proto())
}

/// Every consent decision of a customer, newest first.
pub async fn consent_history(
    conn: &mut PgConnection,
    customer_id: Uuid,
) -> Result<Vec<pb::Consent>> {
    let rows: Vec<ConsentRow> = sqlx::query_as(&format!(
        "SELECT {CONSENT_COLUMNS} FROM customer.consents WHERE customer_id = $1 \
         ORDER BY record_time DESC, id DESC",
    ))
    .bind(customer_id)
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().map(ConsentRow::to_proto).collect())
}

/// Moves the interactions and consent history of `from` customers to `to` (a merge).
pub async fn reassign_history(conn: &mut PgConnection, to: Uuid, from: &[Uuid]) -> Result<()> {
    for table in ["interactions", "consents"] {
        sqlx::query(&format!(
            "UPDATE customer.{table} SET customer_id = $1 WHERE customer_id = ANY($2)"
        ))
        .bind(to)
        .bind(from)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Ids of the not-yet-erased customers merged into `survivor`, in id order.
pub async fn merged_into(conn: &mut PgConnection, survivor: Uuid) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM customer.customers \
         WHERE merged_into_id = $1 AND state <> 'ERASED' ORDER BY id",
    )
    .bind(survivor)
    .fetch_all(conn)
    .await?)
}

/// Bumps a customer's version for a change kept outside its row (its consents).
pub async fn touch(conn: &mut PgConnection, id: Uuid, actor: &Principal) -> Result<CustomerRow> {
    let sql = format!(
        "UPDATE customer.customers AS c SET version = c.version + 1, update_time = now(), \
           updated_by_kind = $2, updated_by = $3 \
         WHERE c.id = $1 RETURNING {CUSTOMER_COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .bind(actor.kind)
        .bind(&actor.id)
        .fetch_one(conn)
        .await?)
}

/// A possible duplicate with its score and the reasons.
#[derive(Debug, FromRow)]
pub struct DuplicateRow {
    #[sqlx(flatten)]
    pub row: CustomerRow,
    pub score: f64,
    pub reasons: Vec<String>,
}

/// Active customers that are probably the same person as `me`: same email (also among contact
/// points), same phone, or a similar name (trigram similarity, weighted up at the same company).
pub async fn duplicate_candidates(
    conn: &mut PgConnection,
    me: &CustomerRow,
    limit: i64,
) -> Result<Vec<DuplicateRow>> {
    // "Same email" / "same phone" compare both ways: their primary address against any of mine
    // (primary or contact point), and my primary address against their contact points. Primary
    // emails are unique among active customers, so primary against primary alone never matches.
    let (mut my_emails, mut my_phones): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    my_emails.extend(me.email.clone());
    my_phones.extend(me.phone.clone());
    for point in &me.contact_points.0 {
        match point.kind {
            ContactKind::Email => my_emails.push(point.value.to_lowercase()),
            ContactKind::Phone => my_phones.push(point.value.clone()),
        }
    }
    let same_email = "(c.email = ANY($2) OR c.contact_points @> \
                      jsonb_build_array(jsonb_build_object('value', $7::text)))";
    let same_phone = "(c.phone = ANY($3) OR c.contact_points @> \
                      jsonb_build_array(jsonb_build_object('value', $8::text)))";
    let sql = format!(
        "SELECT * FROM ( \
                       SELECT {CUSTOMER_COLUMNS}, \
                         greatest( \
                           CASE WHEN {same_email} THEN 1.0 ELSE 0 END, \
                           CASE WHEN {same_phone} THEN 0.9 ELSE 0 END, \
                           similarity(lower(c.display_name), lower($4)) \
                             * CASE WHEN coalesce(c.company_name, '') = coalesce($5, '') THEN 1.0 ELSE 0.8 END \
                         )::float8 AS score, \
                         array_remove(ARRAY[ \
                           CASE WHEN {same_email} THEN 'same email' END, \
                           CASE WHEN {same_phone} THEN 'same phone' END, \
                           CASE WHEN similarity(lower(c.display_name), lower($4)) >= 0.4 \
                             THEN 'similar name (' || round(similarity(lower(c.display_name), lower($4))::numeric, 2) || ')' END \
                         ], NULL) AS reasons \
                       FROM customer.customers c \
                       WHERE c.state = 'ACTIVE' AND c.id <> $1 \
                         AND ({same_email} OR {same_phone} OR lower(c.display_name) % lower($4)) \
                     ) c WHERE c.score >= 0.4 ORDER BY c.score DESC, c.id LIMIT $6"
    );
    Ok(sqlx::query_as(&sql)
        .bind(me.id)
        .bind(&my_emails)
        .bind(&my_phones)
        .bind(me.display_name.clone().unwrap_or_default())
        .bind(&me.company_name)
        .bind(limit)
        .bind(&me.email)
        .bind(&me.phone)
        .fetch_all(conn)
        .await?)
}
