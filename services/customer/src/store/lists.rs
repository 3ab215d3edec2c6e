//! Every paged read of the customer service, declared once for [`crm_platform::list`]: what
//! each List and Search may filter and order on, the SQL behind it, and the rows it pages over.

use std::sync::LazyLock;

use crm_platform::filter::{EnumDef, FieldType, FilterSchema};
use crm_platform::list::{IdOrder, KeyType, ListSchema, Page, PageSizes, PreparedList};
use crm_proto::crm::customer::v1 as pb;
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::history::FIELD_CHANGE_COLUMNS;
use super::merges::{MERGE_COLUMNS, MergeRow};
use super::{CONSENT_COLUMNS, CUSTOMER_COLUMNS, ConsentRow, CustomerRow};
use crate::domain::{CUSTOMER_STATES, LIFECYCLE_STAGES, PRINCIPAL_KIND};
use crate::error::Result;
use crate::store::{FieldChangeRow, INTERACTION_COLUMNS, InteractionRow};

static LIFECYCLE_STAGE: EnumDef = EnumDef::new("LIFECYCLE_STAGE_", LIFECYCLE_STAGES);
static INTERACTION_TYPE: EnumDef =
    EnumDef::new("INTERACTION_TYPE_", &["CALL", "EMAIL", "MEETING", "NOTE"]);
static INTERACTION_DIRECTION: EnumDef =
    EnumDef::new("INTERACTION_DIRECTION_", &["INBOUND", "OUTBOUND", "NONE"]);
static CUSTOMER_STATE: EnumDef = EnumDef::new("CUSTOMER_STATE_", CUSTOMER_STATES);

/// What ListCustomers, SearchCustomers and ExportCustomers filter on (`c` is a customer row).
pub static CUSTOMER_FILTER: LazyLock<FilterSchema> = LazyLock::new(|| {
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
        .field(
            "owner.kind",
            FieldType::Enum(&PRINCIPAL_KIND),
            "c.owner_kind",
        )
        .field("owner.id", FieldType::Text, "c.owner_id")
        .field("source", FieldType::Text, "c.source")
        .field("tags", FieldType::TextArray, "c.tags")
        .field("state", FieldType::Enum(&CUSTOMER_STATE), "c.state")
        .field("create_time", FieldType::Timestamp, "c.create_time")
        .field("update_time", FieldType::Timestamp, "c.update_time")
        .map_field("attributes", "c.attributes")
});

/// ListCustomers. Names and emails are coalesced: erased customers (listed with show_deleted)
/// have neither.
pub static CUSTOMERS: LazyLock<ListSchema> = LazyLock::new(|| {
    ListSchema::new("ListCustomers", CUSTOMER_COLUMNS, "c.id", KeyType::Uuid)
        .filter(CUSTOMER_FILTER.clone())
        .order_key(
            "display_name",
            "coalesce(c.display_name, '')",
            KeyType::Text,
        )
        .order_key("email", "coalesce(c.email, '')", KeyType::Text)
        .order_key("create_time", "c.create_time", KeyType::Timestamp)
        .order_key("update_time", "c.update_time", KeyType::Timestamp)
        .default_order("create_time")
});

/// A page of customers: the active ones, or every state with `show_deleted`.
pub async fn customers_page(
    conn: &mut PgConnection,
    list: &PreparedList<'_>,
    show_deleted: bool,
) -> Result<Page<CustomerRow>> {
    let states = if show_deleted {
        "TRUE"
    } else {
        "c.state = 'ACTIVE'"
    };
    Ok(list
        .fetch(
            conn,
            |sql| {
                sql.push("customer.customers c");
            },
            |sql| {
                sql.push(states);
            },
        )
        .await?)
}

/// How a search matches: by words (full text), or by similarity when no word matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SearchMode {
    /// Word prefixes, ranked; uses the GIN index on the tsvector.
    FullText,
    /// Trigram similarity, which tolerates typos but costs far more per candidate row.
    Similar,
}

/// SearchCustomers: ranked by score, best first. Its pages carry their [`SearchMode`].
pub static SEARCH: LazyLock<ListSchema> = LazyLock::new(|| {
    ListSchema::new("SearchCustomers", "c.*", "c.id", KeyType::Uuid)
        .filter(CUSTOMER_FILTER.clone())
        .order_key("score", "c.score", KeyType::Float)
        .default_order("score desc")
        .page_sizes(PageSizes::SEARCH)
});

/// A customer a search found, and how well it matched.
#[derive(Debug, FromRow)]
pub struct SearchHit {
    /// The customer.
    #[sqlx(flatten)]
    pub row: CustomerRow,
    /// Relevance; higher is better.
    pub score: f64,
}

/// A page of active customers matching `tsquery` (full text) or `query` (similarity).
pub async fn search_page(
    conn: &mut PgConnection,
    list: &PreparedList<'_, SearchMode>,
    mode: SearchMode,
    tsquery: &str,
    query: &str,
) -> Result<Page<SearchHit>> {
    // Scored in a subquery, so the score is a column to filter, order and page by.
    let from = |sql: &mut sqlx::QueryBuilder<'_, sqlx::Postgres>| {
        sql.push(format_args!("(SELECT {CUSTOMER_COLUMNS}, "));
        match mode {
            SearchMode::FullText => {
                sql.push("ts_rank_cd(c.search_vector, to_tsquery('simple', ")
                    .push_bind(tsquery.to_owned())
                    .push("))::float8 AS score FROM customer.customers c WHERE c.state = 'ACTIVE' ")
                    .push("AND c.search_vector @@ to_tsquery('simple', ")
                    .push_bind(tsquery.to_owned())
                    .push(")");
            }
            SearchMode::Similar => {
                sql.push("word_similarity(")
                    .push_bind(query.to_owned())
                    .push(", c.search_text)::float8 AS score FROM customer.customers c ")
                    .push("WHERE c.state = 'ACTIVE' AND ")
                    .push_bind(query.to_owned())
                    .push(" <% c.search_text");
            }
        }
        sql.push(") c");
    };
    Ok(list
        .fetch_with_state(conn, &mode, from, |sql| {
            sql.push("TRUE");
        })
        .await?)
}

/// ListConsentHistory: a customer's decisions, newest first.
pub static CONSENT_HISTORY: LazyLock<ListSchema> = LazyLock::new(|| {
    ListSchema::new(
        "ListConsentHistory",
        CONSENT_COLUMNS,
        "id",
        KeyType::Integer,
    )
    .order_key("record_time", "record_time", KeyType::Timestamp)
    .default_order("record_time desc")
});

/// A page of a customer's consent decisions.
pub async fn consent_history_page(
    conn: &mut PgConnection,
    list: &PreparedList<'_>,
    customer_id: Uuid,
) -> Result<Page<pb::Consent>> {
    let page: Page<ConsentRow> = list
        .fetch(
            conn,
            |sql| {
                sql.push("customer.consents");
            },
            |sql| {
                sql.push("customer_id = ").push_bind(customer_id);
            },
        )
        .await?;
    Ok(page.map(|row| row.to_proto()))
}

static INTERACTION_FILTER: LazyLock<FilterSchema> = LazyLock::new(|| {
    FilterSchema::new()
        .field("type", FieldType::Enum(&INTERACTION_TYPE), "type")
        .field(
            "direction",
            FieldType::Enum(&INTERACTION_DIRECTION),
            "direction",
        )
        .field("owner.kind", FieldType::Enum(&PRINCIPAL_KIND), "owner_kind")
        .field("owner.id", FieldType::Text, "owner_id")
        .field("occur_time", FieldType::Timestamp, "occur_time")
});

/// ListInteractions: a customer's timeline, newest first by occur_time.
pub static INTERACTIONS: LazyLock<ListSchema> = LazyLock::new(|| {
    ListSchema::new("ListInteractions", INTERACTION_COLUMNS, "id", KeyType::Uuid)
        .filter(INTERACTION_FILTER.clone())
        .order_key("occur_time", "occur_time", KeyType::Timestamp)
        .default_order("occur_time desc")
});

/// A page of a customer's interactions.
pub async fn interactions_page(
    conn: &mut PgConnection,
    list: &PreparedList<'_>,
    customer_id: Uuid,
) -> Result<Page<InteractionRow>> {
    Ok(list
        .fetch(
            conn,
            |sql| {
                sql.push("customer.interactions");
            },
            |sql| {
                sql.push("customer_id = ").push_bind(customer_id);
            },
        )
        .await?)
}

static MERGE_FILTER: LazyLock<FilterSchema> = LazyLock::new(|| {
    FilterSchema::new()
        .field("survivor_id", FieldType::Uuid, "m.survivor_id")
        .field("merged_ids", FieldType::UuidArray, "m.merged_ids")
        .field("merge_time", FieldType::Timestamp, "m.merge_time")
});

/// ListMergeRecords: merges, oldest first.
pub static MERGE_RECORDS: LazyLock<ListSchema> = LazyLock::new(|| {
    ListSchema::new("ListMergeRecords", MERGE_COLUMNS, "m.id", KeyType::Uuid)
        .filter(MERGE_FILTER.clone())
        .order_key("merge_time", "m.merge_time", KeyType::Timestamp)
        .default_order("merge_time")
});

/// A page of the merges `survivor` survived, or of every merge.
pub async fn merge_records_page(
    conn: &mut PgConnection,
    list: &PreparedList<'_>,
    survivor: Option<Uuid>,
) -> Result<Page<pb::MergeRecord>> {
    let page: Page<MergeRow> = list
        .fetch(
            conn,
            |sql| {
                sql.push("customer.merges m");
            },
            |sql| {
                match survivor {
                    Some(id) => sql.push("m.survivor_id = ").push_bind(id),
                    None => sql.push("TRUE"),
                };
            },
        )
        .await?;
    Ok(page.map(|row| row.to_proto()))
}

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

/// ListCustomerFieldChanges: newest first; the changes of one write share their change_time
/// and keep the order they were recorded in (ids ascending).
pub static FIELD_CHANGES: LazyLock<ListSchema> = LazyLock::new(|| {
    ListSchema::new(
        "ListCustomerFieldChanges",
        FIELD_CHANGE_COLUMNS,
        "f.id",
        KeyType::Integer,
    )
    .filter(FIELD_CHANGE_FILTER.clone())
    .order_key("change_time", "f.change_time", KeyType::Timestamp)
    .default_order("change_time desc")
    .id_order(IdOrder::Ascending)
});

/// A page of a customer's field history.
pub async fn field_changes_page(
    conn: &mut PgConnection,
    list: &PreparedList<'_>,
    customer_id: Uuid,
) -> Result<Page<FieldChangeRow>> {
    Ok(list
        .fetch(
            conn,
            |sql| {
                sql.push("customer.field_changes f");
            },
            |sql| {
                sql.push("f.customer_id = ").push_bind(customer_id);
            },
        )
        .await?)
}
