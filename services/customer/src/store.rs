//! SQL for the customer schema. Handlers own transactions; functions here take a connection
//! (a transaction or a pooled one) and never decide what a caller sees.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use crm_proto::crm::customer::v1 as pb;
use sqlx::types::Json;
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use crate::domain::{self, Address, Attributes, ContactPoint, CustomerFields};
use crate::error::Result;

/// Every column of `customer.customers` a read needs.
pub const CUSTOMER_COLUMNS: &str = "c.id, c.version, c.state, c.display_name, c.email, \
    c.given_name, c.family_name, c.phone, c.company_name, c.lifecycle_stage, c.owner_id, \
    c.source, c.tags, c.attributes, c.attribute_timestamps, c.contact_points, c.addresses, \
    c.merged_into_id, c.delete_time, c.create_time, c.update_time, c.created_by, c.updated_by";

/// One stored customer.
#[derive(Debug, Clone, FromRow)]
pub struct CustomerRow {
    pub id: Uuid,
    pub version: i64,
    pub state: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub phone: Option<String>,
    pub company_name: Option<String>,
    pub lifecycle_stage: String,
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
    pub created_by: String,
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
            lifecycle_stage: domain::LIFECYCLE_STAGES
                .iter()
                .find(|s| **s == self.lifecycle_stage)
                .copied()
                .unwrap_or("LEAD"),
            owner_id: self.owner_id.clone(),
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
        let state = match self.state.as_str() {
            "ACTIVE" => pb::CustomerState::Active,
            "DELETED" => pb::CustomerState::Deleted,
            "MERGED" => pb::CustomerState::Merged,
            "ERASED" => pb::CustomerState::Erased,
            _ => pb::CustomerState::Unspecified,
        };
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
            lifecycle_stage: domain::lifecycle_stage_value(&self.lifecycle_stage) as i32,
            owner_id: fields.owner_id.unwrap_or_default(),
            tags: fields.tags,
            attributes: fields.attributes.to_proto(),
            contact_points: fields
                .contact_points
                .iter()
                .map(|cp| pb::ContactPoint {
                    r#type: if cp.kind == "PHONE" {
                        pb::ContactPointType::Phone
                    } else {
                        pb::ContactPointType::Email
                    } as i32,
                    value: cp.value.clone(),
                    label: cp.label.clone(),
                })
                .collect(),
            addresses: fields.addresses.iter().map(Into::into).collect(),
            consents,
            source: fields.source.unwrap_or_default(),
            state: state as i32,
            delete_time: self.delete_time.map(domain::timestamp_to_proto),
            merged_into_id: self
                .merged_into_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            audit: Some(crm_proto::crm::common::v1::AuditInfo {
                create_time: Some(domain::timestamp_to_proto(self.create_time)),
                update_time: Some(domain::timestamp_to_proto(self.update_time)),
                created_by: self.created_by.clone(),
                updated_by: self.updated_by.clone(),
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

/// Binds the writable fields as parameters $2..=$15, in the column order insert and update use.
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
        .bind(&fields.owner_id)
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
    actor: &str,
) -> Result<CustomerRow> {
    let sql = format!(
        "INSERT INTO customer.customers AS c (id, display_name, email, given_name, family_name, \
           phone, company_name, lifecycle_stage, owner_id, source, tags, attributes, \
           attribute_timestamps, contact_points, addresses, created_by, updated_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $16) \
         RETURNING {CUSTOMER_COLUMNS}"
    );
    Ok(bind_fields(sqlx::query_as(&sql).bind(id), fields)
        .bind(actor)
        .fetch_one(conn)
        .await?)
}

/// Overwrites the writable fields of a customer and bumps its version.
pub async fn update_fields(
    conn: &mut PgConnection,
    id: Uuid,
    fields: &CustomerFields,
    actor: &str,
) -> Result<CustomerRow> {
    let sql = format!(
        "UPDATE customer.customers AS c SET display_name = $2, email = $3, given_name = $4, \
           family_name = $5, phone = $6, company_name = $7, lifecycle_stage = $8, owner_id = $9, \
           source = $10, tags = $11, attributes = $12, attribute_timestamps = $13, \
           contact_points = $14, addresses = $15, updated_by = $16, update_time = now(), \
           version = c.version + 1 \
         WHERE c.id = $1 RETURNING {CUSTOMER_COLUMNS}"
    );
    Ok(bind_fields(sqlx::query_as(&sql).bind(id), fields)
        .bind(actor)
        .fetch_one(conn)
        .await?)
}

/// Moves a customer to `state` (soft delete, undelete, merge) and bumps its version.
pub async fn set_state(
    conn: &mut PgConnection,
    id: Uuid,
    state: &str,
    merged_into: Option<Uuid>,
    actor: &str,
) -> Result<CustomerRow> {
    let sql = format!(
        "UPDATE customer.customers AS c SET state = $2, merged_into_id = $3, \
           delete_time = CASE WHEN $2 = 'DELETED' THEN now() ELSE NULL END, \
           updated_by = $4, update_time = now(), version = c.version + 1 \
         WHERE c.id = $1 RETURNING {CUSTOMER_COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .bind(state)
        .bind(merged_into)
        .bind(actor)
        .fetch_one(conn)
        .await?)
}

/// Erases every piece of personal data of a customer and leaves a tombstone.
pub async fn erase(conn: &mut PgConnection, id: Uuid, actor: &str) -> Result<CustomerRow> {
    sqlx::query("DELETE FROM customer.consents WHERE customer_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE customer.interactions SET subject = '[erased]', body = '', owner_id = '' \
         WHERE customer_id = $1",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    sqlx::query("UPDATE customer.changes SET snapshot = NULL WHERE customer_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    let sql = format!(
        "UPDATE customer.customers AS c SET state = 'ERASED', display_name = NULL, email = NULL, \
           given_name = NULL, family_name = NULL, phone = NULL, company_name = NULL, \
           owner_id = NULL, source = NULL, tags = '{{}}', attributes = '{{}}', \
           attribute_timestamps = '{{}}', contact_points = '[]', addresses = '[]', \
           delete_time = NULL, updated_by = $2, update_time = now(), version = c.version + 1 \
         WHERE c.id = $1 RETURNING {CUSTOMER_COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .bind(actor)
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
    recorded_by: String,
}

impl ConsentRow {
    fn to_proto(&self) -> pb::Consent {
        pb::Consent {
            channel: pb::ConsentChannel::from_str_name(&self.channel).unwrap_or_default() as i32,
            status: pb::ConsentStatus::from_str_name(&self.status).unwrap_or_default() as i32,
            legal_basis: pb::LegalBasis::from_str_name(&self.legal_basis).unwrap_or_default()
                as i32,
            source: self.source.clone(),
            capture_time: Some(domain::timestamp_to_proto(self.capture_time)),
            record_time: Some(domain::timestamp_to_proto(self.record_time)),
            recorded_by: self.recorded_by.clone(),
        }
    }
}

/// The current consent per channel of each customer in `ids`.
pub async fn current_consents(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<pb::Consent>>> {
    let rows: Vec<ConsentRow> = sqlx::query_as(
        "SELECT DISTINCT ON (customer_id, channel) customer_id, channel, status, legal_basis, \
           source, capture_time, record_time, recorded_by \
         FROM customer.consents WHERE customer_id = ANY($1) \
         ORDER BY customer_id, channel, record_time DESC, id DESC",
    )
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

/// Appends a consent decision.
pub async fn insert_consent(
    conn: &mut PgConnection,
    customer_id: Uuid,
    consent: &crate::api::ValidConsent,
    actor: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO customer.consents \
           (customer_id, channel, status, legal_basis, source, capture_time, recorded_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(customer_id)
    .bind(consent.channel)
    .bind(consent.status)
    .bind(consent.legal_basis)
    .bind(&consent.source)
    .bind(consent.capture_time)
    .bind(actor)
    .execute(conn)
    .await?;
    Ok(())
}

/// A page of consent history, newest first, after the (record_time, id) cursor.
pub async fn consent_history(
    conn: &mut PgConnection,
    customer_id: Uuid,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> Result<Vec<(i64, DateTime<Utc>, pb::Consent)>> {
    #[derive(FromRow)]
    struct Row {
        id: i64,
        #[sqlx(flatten)]
        consent: ConsentRow,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, customer_id, channel, status, legal_basis, source, capture_time, \
           record_time, recorded_by \
         FROM customer.consents WHERE customer_id = $1 \
           AND ($2::timestamptz IS NULL OR (record_time, id) < ($2, $3)) \
         ORDER BY record_time DESC, id DESC LIMIT $4",
    )
    .bind(customer_id)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1).unwrap_or(0))
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.id, r.consent.record_time, r.consent.to_proto()))
        .collect())
}

/// One stored interaction.
#[derive(Debug, Clone, FromRow)]
pub struct InteractionRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub r#type: String,
    pub direction: String,
    pub subject: String,
    pub body: String,
    pub occur_time: DateTime<Utc>,
    pub duration_ms: Option<i64>,
    pub owner_id: String,
    pub create_time: DateTime<Utc>,
    pub created_by: String,
}

impl InteractionRow {
    /// The proto message.
    pub fn to_proto(&self) -> pb::Interaction {
        pb::Interaction {
            id: self.id.to_string(),
            customer_id: self.customer_id.to_string(),
            r#type: pb::InteractionType::from_str_name(&format!("INTERACTION_TYPE_{}", self.r#type))
                .unwrap_or_default() as i32,
            direction: pb::InteractionDirection::from_str_name(&format!(
                "INTERACTION_DIRECTION_{}",
                self.direction
            ))
            .unwrap_or_default() as i32,
            subject: self.subject.clone(),
            body: self.body.clone(),
            occur_time: Some(domain::timestamp_to_proto(self.occur_time)),
            duration: self.duration_ms.map(|ms| prost_types::Duration {
                seconds: ms / 1000,
                nanos: ((ms % 1000) * 1_000_000) as i32,
            }),
            owner_id: self.owner_id.clone(),
            audit: Some(crm_proto::crm::common::v1::AuditInfo {
                create_time: Some(domain::timestamp_to_proto(self.create_time)),
                update_time: Some(domain::timestamp_to_proto(self.create_time)),
                created_by: self.created_by.clone(),
                updated_by: self.created_by.clone(),
            }),
        }
    }
}

/// Columns of an interaction read.
pub const INTERACTION_COLUMNS: &str = "id, customer_id, type, direction, subject, body, \
    occur_time, duration_ms, owner_id, create_time, created_by";

/// Records merges: the survivor and who was folded in.
pub async fn insert_merge(
    conn: &mut PgConnection,
    id: Uuid,
    survivor: Uuid,
    merged: &[Uuid],
    actor: &str,
) -> Result<pb::MergeRecord> {
    let merge_time: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO customer.merges (id, survivor_id, merged_ids, merged_by) \
         VALUES ($1, $2, $3, $4) RETURNING merge_time",
    )
    .bind(id)
    .bind(survivor)
    .bind(merged)
    .bind(actor)
    .fetch_one(&mut *conn)
    .await?;
    Ok(pb::MergeRecord {
        id: id.to_string(),
        survivor_id: survivor.to_string(),
        merged_ids: merged.iter().map(Uuid::to_string).collect(),
        merge_time: Some(domain::timestamp_to_proto(merge_time)),
        merged_by: actor.to_string(),
    })
}

#[derive(FromRow)]
struct MergeRow {
    id: Uuid,
    survivor_id: Uuid,
    merged_ids: Vec<Uuid>,
    merge_time: DateTime<Utc>,
    merged_by: String,
}

/// Merges a customer survived, newest first.
pub async fn merge_records(
    conn: &mut PgConnection,
    survivor: Uuid,
) -> Result<Vec<pb::MergeRecord>> {
    let rows: Vec<MergeRow> = sqlx::query_as(
        "SELECT id, survivor_id, merged_ids, merge_time, merged_by FROM customer.merges \
         WHERE survivor_id = $1 ORDER BY merge_time DESC, id DESC",
    )
    .bind(survivor)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| pb::MergeRecord {
            id: row.id.to_string(),
            survivor_id: row.survivor_id.to_string(),
            merged_ids: row.merged_ids.iter().map(Uuid::to_string).collect(),
            merge_time: Some(domain::timestamp_to_proto(row.merge_time)),
            merged_by: row.merged_by,
        })
        .collect())
}

/// Appends a change event. Call it last, just before commit, so the sequence number is taken
/// as late as possible (the feed reader waits for lower numbers still in flight).
pub async fn append_change(
    conn: &mut PgConnection,
    customer_id: Uuid,
    change_type: crm_proto::crm::common::v1::ChangeType,
    merged_into: Option<Uuid>,
    snapshot: Option<&pb::Customer>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO customer.changes (customer_id, change_type, merged_into_id, snapshot) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(customer_id)
    .bind(change_type.as_str_name())
    .bind(merged_into)
    .bind(snapshot.map(prost::Message::encode_to_vec))
    .execute(conn)
    .await?;
    Ok(())
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

/// Every interaction of a customer, newest first.
pub async fn all_interactions(
    conn: &mut PgConnection,
    customer_id: Uuid,
) -> Result<Vec<InteractionRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {INTERACTION_COLUMNS} FROM customer.interactions WHERE customer_id = $1 \
         ORDER BY occur_time DESC, id DESC"
    ))
    .bind(customer_id)
    .fetch_all(conn)
    .await?)
}

/// Bumps a customer's version for a change kept outside its row (its consents).
pub async fn touch(conn: &mut PgConnection, id: Uuid, actor: &str) -> Result<CustomerRow> {
    let sql = format!(
        "UPDATE customer.customers AS c SET version = c.version + 1, update_time = now(), \
           updated_by = $2 \
         WHERE c.id = $1 RETURNING {CUSTOMER_COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .bind(actor)
        .fetch_one(conn)
        .await?)
}

/// Stores an interaction.
pub async fn insert_interaction(
    conn: &mut PgConnection,
    row: &InteractionRow,
) -> Result<InteractionRow> {
    let sql = format!(
        "INSERT INTO customer.interactions (id, customer_id, type, direction, subject, body, \
           occur_time, duration_ms, owner_id, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {INTERACTION_COLUMNS}"
    );
    Ok(sqlx::query_as(&sql)
        .bind(row.id)
        .bind(row.customer_id)
        .bind(&row.r#type)
        .bind(&row.direction)
        .bind(&row.subject)
        .bind(&row.body)
        .bind(row.occur_time)
        .bind(row.duration_ms)
        .bind(&row.owner_id)
        .bind(&row.created_by)
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
        match point.kind.as_str() {
            "EMAIL" => my_emails.push(point.value.to_lowercase()),
            "PHONE" => my_phones.push(point.value.clone()),
            _ => {}
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

/// Deletes change-feed events older than `age`; returns how many.
pub async fn purge_changes_before(db: &sqlx::PgPool, age: std::time::Duration) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM customer.changes WHERE change_time < now() - make_interval(secs => $1)",
    )
    .bind(age.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
