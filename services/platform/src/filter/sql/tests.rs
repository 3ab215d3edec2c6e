//! Compiling parsed filters against a schema that has every field type.

use super::*;
use crate::filter::{MAX_MAP_KEY_CHARS, parse};

const STAGES: EnumDef = EnumDef::new("LIFECYCLE_STAGE_", &["LEAD", "CUSTOMER", "CHURNED"]);
const PRIORITIES: EnumDef = EnumDef::new("TICKET_PRIORITY_", &["LOW", "NORMAL", "HIGH", "URGENT"]);
const CHANNELS: EnumDef = EnumDef::new("CHANNEL_", &["EMAIL", "SMS", "PUSH"]);
const PRINCIPAL_KINDS: EnumDef =
    EnumDef::new("PRINCIPAL_KIND_", &["USER", "TEAM", "AGENT", "SERVICE"]);

pub(super) const ID: &str = "0190f3a4-8c1e-7b52-9d3f-2a6c4e8b1f07";

pub(super) fn schema() -> FilterSchema {
    FilterSchema::new()
        .field("display_name", FieldType::Text, "c.display_name")
        .field("lifetime_orders", FieldType::Integer, "c.lifetime_orders")
        .field("score", FieldType::Float, "c.score")
        .field("is_vip", FieldType::Bool, "c.is_vip")
        .field("create_time", FieldType::Timestamp, "c.create_time")
        .field(
            "lifecycle_stage",
            FieldType::Enum(&STAGES),
            "c.lifecycle_stage",
        )
        .field("tags", FieldType::TextArray, "c.tags")
        .field("owner_id", FieldType::Uuid, "c.owner_id")
        .map_field("attributes", "c.custom_attributes")
        .field("close_date", FieldType::Date, "c.close_date")
        .field("wait", FieldType::Duration, "c.wait")
        .field("priority", FieldType::Enum(&PRIORITIES), "c.priority")
        .field(
            "owner.kind",
            FieldType::Enum(&PRINCIPAL_KINDS),
            "c.owner_kind",
        )
        .field("watcher_ids", FieldType::UuidArray, "c.watcher_ids")
        .field("channels", FieldType::EnumArray(&CHANNELS), "c.channels")
        .field("skills.name", FieldType::TextArray, "c.skill_names")
}

/// A compiled filter as PostgreSQL receives it: the SQL with the placeholders a `QueryBuilder`
/// numbered, and the values bound to them, in order.
#[derive(Debug)]
pub(super) struct Rendered {
    pub(super) sql: String,
    pub(super) params: Vec<SqlValue>,
}

pub(super) fn render(filter: &SqlFilter) -> Rendered {
    let mut builder = QueryBuilder::<Postgres>::new("");
    filter.push_to(&mut builder);
    Rendered {
        sql: builder.sql().to_owned(),
        params: filter.params().cloned().collect(),
    }
}

fn compile(filter: &str) -> Result<Rendered, FilterError> {
    Ok(render(&to_sql(&parse(filter)?, &schema())?))
}

fn compile_error(filter: &str) -> FilterError {
    compile(filter).expect_err("filter should not compile")
}

fn text(value: &str) -> SqlValue {
    SqlValue::Text(value.to_owned())
}

fn texts(values: &[&str]) -> SqlValue {
    SqlValue::TextArray(values.iter().map(|v| (*v).to_owned()).collect())
}

fn restriction(field: &str, op: CompareOp, value: &str) -> Expr {
    Expr::Restriction(Restriction {
        field: field.to_owned(),
        field_position: 0,
        op,
        op_position: 0,
        value: Literal {
            text: value.to_owned(),
            quoted: false,
            prefix_wildcard: false,
            position: 0,
        },
    })
}

// --- Structure --------------------------------------------------------------------------------

#[test]
fn the_empty_filter_compiles_to_true_without_parameters() {
    let compiled = render(&to_sql(&Expr::True, &schema()).unwrap());

    assert_eq!(compiled.sql, "TRUE");
    assert!(compiled.params.is_empty());
}

#[test]
fn or_binds_tighter_than_and_as_in_aip_160() {
    let compiled = compile("is_vip = true OR lifetime_orders > 5 AND score < 1.5").unwrap();

    assert_eq!(
        compiled.sql,
        "(((c.is_vip = $1) OR (c.lifetime_orders > $2)) AND (c.score < $3))"
    );
    assert_eq!(
        compiled.params,
        [SqlValue::Bool(true), SqlValue::Int(5), SqlValue::Float(1.5)]
    );
}

#[test]
fn parentheses_override_precedence_and_nest() {
    let compiled =
        compile("(is_vip = true OR lifetime_orders > 5) AND NOT (tags:vip OR (score >= 2))")
            .unwrap();

    assert_eq!(
        compiled.sql,
        "(((c.is_vip = $1) OR (c.lifetime_orders > $2)) AND (NOT (($3 = ANY(c.tags)) OR (c.score >= $4))))"
    );
}

#[test]
fn quoted_strings_resolve_backslash_escapes() {
    let compiled = compile(r#"display_name = "say \"hi\"\\ \n\t\*""#).unwrap();

    assert_eq!(compiled.params, [text("say \"hi\"\\ \n\t*")]);
}

#[test]
fn a_minus_directly_before_a_number_makes_it_negative() {
    let compiled = compile("lifetime_orders >= -5").unwrap();

    assert_eq!(compiled.params, [SqlValue::Int(-5)]);
}

#[test]
fn placeholders_continue_after_the_values_the_query_already_binds() {
    let filter = to_sql(
        &parse("display_name = Ann AND lifetime_orders = 3").unwrap(),
        &schema(),
    )
    .unwrap();
    let mut builder = QueryBuilder::<Postgres>::new("SELECT c.id FROM c WHERE c.score > ");
    builder.push_bind(0.5_f64).push(" AND ");

    filter.push_to(&mut builder);

    assert_eq!(
        builder.sql(),
        "SELECT c.id FROM c WHERE c.score > $1 AND ((c.display_name = $2) AND (c.lifetime_orders = $3))"
    );
}

#[test]
fn hand_built_empty_groups_compile_to_their_identity() {
    let expr = Expr::Or(vec![Expr::And(vec![]), Expr::Or(vec![])]);

    let compiled = render(&to_sql(&expr, &schema()).unwrap());

    assert_eq!(compiled.sql, "(TRUE OR FALSE)");
}

#[test]
fn a_hand_built_expression_compiles_like_a_parsed_one() {
    let expr = Expr::Not(Box::new(restriction("is_vip", CompareOp::Eq, "true")));

    let compiled = render(&to_sql(&expr, &schema()).unwrap());

    assert_eq!(compiled.sql, "(NOT (c.is_vip = $1))");
}

// --- Fields -----------------------------------------------------------------------------------

#[test]
fn an_unknown_field_is_reported_at_the_field_with_the_accepted_fields() {
    let error = compile_error("is_vip = true AND colour = red");

    assert_eq!(error.position, 18);
    assert_eq!(
        error.message,
        "unknown field 'colour'; you can filter on: display_name, lifetime_orders, score, \
         is_vip, create_time, lifecycle_stage, tags, owner_id, close_date, wait, priority, \
         owner.kind, watcher_ids, channels, skills.name, attributes.<key>"
    );
}

#[test]
fn error_messages_never_contain_sql() {
    let bad_filters = [
        "colour = red",
        "is_vip > true",
        "attributes.a-b = 1",
        "attributes = 1",
        "tags < a",
        "create_time > \"yesterday\"",
        "close_date = \"2026-02-30\"",
        "priority > EXTREME",
        "watcher_ids:me",
        "wait < 5m",
    ];

    for filter in bad_filters {
        let message = compile_error(filter).message;

        assert!(!message.contains("c."), "{filter}: {message}");
        assert!(!message.contains('$'), "{filter}: {message}");
    }
}

#[test]
fn dotted_message_paths_compile_like_any_other_field() {
    let compiled = compile("owner.kind = TEAM skills.name:\"french\"").unwrap();

    assert_eq!(
        compiled.sql,
        "((c.owner_kind = $1) AND ($2 = ANY(c.skill_names)))"
    );
    assert_eq!(compiled.params, [text("TEAM"), text("french")]);
}

#[test]
fn an_undeclared_dotted_path_is_an_unknown_field() {
    let error = compile_error("owner.id = x");

    assert_eq!(error.position, 0);
    assert!(
        error.message.starts_with("unknown field 'owner.id'"),
        "{}",
        error.message
    );
}

// --- Text -------------------------------------------------------------------------------------

#[test]
fn text_fields_compare_exactly_and_order_as_text() {
    let compiled = compile("display_name = Ann display_name != \"Bo\" display_name >= M").unwrap();

    assert_eq!(
        compiled.sql,
        "((c.display_name = $1) AND (c.display_name <> $2) AND (c.display_name >= $3))"
    );
    assert_eq!(compiled.params, [text("Ann"), text("Bo"), text("M")]);
}

#[test]
fn a_trailing_star_is_a_prefix_match_with_like_metacharacters_escaped() {
    let compiled = compile(r#"display_name = "50%_off\\*""#).unwrap();

    assert_eq!(compiled.sql, "(c.display_name ILIKE $1)");
    assert_eq!(compiled.params, [text(r"50\%\_off\\%")]);
}

#[test]
fn a_prefix_match_can_be_negated_with_not_equal() {
    let compiled = compile(r#"display_name != "Ann*""#).unwrap();

    assert_eq!(compiled.sql, "(c.display_name NOT ILIKE $1)");
    assert_eq!(compiled.params, [text("Ann%")]);
}

#[test]
fn an_escaped_trailing_star_is_matched_literally() {
    let compiled = compile(r#"display_name = "Ann\*""#).unwrap();

    assert_eq!(compiled.sql, "(c.display_name = $1)");
    assert_eq!(compiled.params, [text("Ann*")]);
}

#[test]
fn a_prefix_match_only_works_with_equality() {
    let error = compile_error(r#"display_name > "Ann*""#);

    assert_eq!(error.position, 15);
    assert!(
        error.message.contains("only works with = and !="),
        "{}",
        error.message
    );
}

#[test]
fn has_on_text_is_a_case_insensitive_substring_match_with_escaping() {
    let compiled = compile("display_name:\"100%_sure\"").unwrap();

    assert_eq!(compiled.sql, "(c.display_name ILIKE $1)");
    assert_eq!(compiled.params, [text(r"%100\%\_sure%")]);
}

// --- Numbers, booleans, timestamps, UUIDs -----------------------------------------------------

#[test]
fn integer_fields_take_integers_and_reject_other_values() {
    let compiled = compile("lifetime_orders > 10").unwrap();
    let word = compile_error("lifetime_orders = abc");
    let decimal = compile_error("lifetime_orders = 1.5");

    assert_eq!(compiled.params, [SqlValue::Int(10)]);
    assert_eq!(word.position, 18);
    assert_eq!(
        word.message,
        "field 'lifetime_orders' expects an integer, e.g. 42, got 'abc'"
    );
    assert_eq!(decimal.position, 18);
}

#[test]
fn integer_fields_do_not_support_has() {
    let error = compile_error("lifetime_orders:1");

    assert_eq!(error.position, 15);
    assert_eq!(
        error.message,
        "operator ':' is not supported for integer field 'lifetime_orders'; use =, !=, <, <=, > or >="
    );
}

#[test]
fn float_fields_take_integers_and_decimals_but_not_infinity() {
    let compiled = compile("score >= 2 score < 3.25 score != 1e3").unwrap();
    let error = compile_error("score = inf");

    assert_eq!(
        compiled.params,
        [
            SqlValue::Float(2.0),
            SqlValue::Float(3.25),
            SqlValue::Float(1000.0)
        ]
    );
    assert_eq!(error.position, 8);
    assert!(
        error.message.contains("expects a number"),
        "{}",
        error.message
    );
}

#[test]
fn bool_fields_allow_only_equality_with_true_or_false() {
    let compiled = compile("is_vip = true is_vip != false").unwrap();
    let ordering = compile_error("is_vip > false");
    let other_value = compile_error("is_vip = yes");

    assert_eq!(compiled.sql, "((c.is_vip = $1) AND (c.is_vip <> $2))");
    assert_eq!(
        compiled.params,
        [SqlValue::Bool(true), SqlValue::Bool(false)]
    );
    assert_eq!(ordering.position, 7);
    assert_eq!(
        ordering.message,
        "operator '>' is not supported for boolean field 'is_vip'; use = or !="
    );
    assert_eq!(other_value.position, 9);
    assert_eq!(
        other_value.message,
        "field 'is_vip' expects true or false, got 'yes'"
    );
}

#[test]
fn timestamp_fields_take_rfc_3339_and_normalise_to_utc() {
    let compiled = compile("create_time >= \"2024-01-31T10:00:00+01:00\"").unwrap();

    let expected = DateTime::parse_from_rfc3339("2024-01-31T09:00:00Z").unwrap();
    assert_eq!(compiled.sql, "(c.create_time >= $1)");
    assert_eq!(
        compiled.params,
        [SqlValue::Timestamp(expected.with_timezone(&Utc))]
    );
}

#[test]
fn timestamp_fields_reject_other_text_at_the_value() {
    let error = compile_error("create_time > \"yesterday\"");

    assert_eq!(error.position, 14);
    assert_eq!(
        error.message,
        "field 'create_time' expects an RFC 3339 timestamp in double quotes, e.g. \
         \"2024-01-31T09:00:00Z\", got 'yesterday'"
    );
}

#[test]
fn uuid_fields_parse_uuids_quoted_or_bare_and_reject_other_text() {
    let compiled = compile(&format!("owner_id = {ID} OR owner_id != \"{ID}\"")).unwrap();
    let error = compile_error("owner_id = \"me\"");

    let id = SqlValue::Uuid(Uuid::parse_str(ID).unwrap());
    assert_eq!(compiled.params, [id.clone(), id]);
    assert_eq!(error.position, 11);
    assert!(
        error.message.starts_with("field 'owner_id' expects a UUID"),
        "{}",
        error.message
    );
}

#[test]
fn a_wildcard_on_a_non_text_field_is_rejected() {
    let error = compile_error("lifecycle_stage = \"CUST*\"");

    assert_eq!(error.position, 18);
    assert!(
        error.message.contains("only works on text fields"),
        "{}",
        error.message
    );
}

// --- Dates and durations ----------------------------------------------------------------------

#[test]
fn date_fields_take_quoted_dates_with_every_comparison() {
    let compiled = compile(
        "close_date = \"2026-01-31\" close_date != \"2026-02-01\" close_date < \"2026-03-01\" \
         close_date <= \"2026-03-02\" close_date > \"2025-12-31\" close_date >= \"2025-01-01\"",
    )
    .unwrap();

    let day = |y, m, d| SqlValue::Date(NaiveDate::from_ymd_opt(y, m, d).unwrap());
    assert_eq!(
        compiled.sql,
        "((c.close_date = $1) AND (c.close_date <> $2) AND (c.close_date < $3) AND \
         (c.close_date <= $4) AND (c.close_date > $5) AND (c.close_date >= $6))"
    );
    assert_eq!(
        compiled.params,
        [
            day(2026, 1, 31),
            day(2026, 2, 1),
            day(2026, 3, 1),
            day(2026, 3, 2),
            day(2025, 12, 31),
            day(2025, 1, 1)
        ]
    );
}

#[test]
fn an_impossible_date_is_rejected_at_its_position() {
    let error = compile_error("is_vip = true AND close_date >= \"2026-02-30\"");

    assert_eq!(error.position, 32);
    assert_eq!(
        error.to_string(),
        "at position 32: field 'close_date' expects a real calendar date (year 1 to 9999, \
         month 01 to 12, a day the month has), got '2026-02-30'"
    );
}

#[test]
fn dates_must_be_quoted_and_exactly_year_month_day() {
    let bare = compile_error("close_date = 2026-01-31");
    let timestamp = compile_error("close_date = \"2026-01-31T00:00:00Z\"");
    let has = compile_error("close_date:\"2026-01-31\"");

    assert_eq!(bare.position, 13);
    assert_eq!(
        bare.message,
        "field 'close_date' expects a date in double quotes, e.g. \"2026-01-31\", got '2026-01-31'"
    );
    assert_eq!(timestamp.position, 13);
    assert_eq!(has.position, 10);
    assert!(has.message.contains("date field"), "{}", has.message);
}

#[test]
fn duration_fields_take_seconds_quoted_or_bare_and_bind_an_interval() {
    let compiled = compile("wait >= \"90s\" wait < 3600s wait != 1.5s wait > -2s").unwrap();

    assert_eq!(
        compiled.sql,
        "((c.wait >= $1) AND (c.wait < $2) AND (c.wait <> $3) AND (c.wait > $4))"
    );
    assert_eq!(
        compiled.params,
        [
            SqlValue::Interval(TimeDelta::seconds(90)),
            SqlValue::Interval(TimeDelta::seconds(3600)),
            SqlValue::Interval(TimeDelta::milliseconds(1_500)),
            SqlValue::Interval(TimeDelta::seconds(-2)),
        ]
    );
}

#[test]
fn durations_in_other_units_are_rejected_at_the_value() {
    let minutes = compile_error("wait < 5m");
    let unitless = compile_error("wait < \"90\"");
    let nanos = compile_error("wait < 0.0000001s");

    assert_eq!(minutes.position, 7);
    assert_eq!(
        minutes.message,
        "field 'wait' expects a duration in seconds with an 's' suffix, e.g. 90s or \"1.5s\", got '5m'"
    );
    assert_eq!(unitless.position, 7);
    assert!(nanos.message.contains("microseconds"), "{}", nanos.message);
}

// --- Enums ------------------------------------------------------------------------------------

#[test]
fn enum_fields_accept_listed_names_as_stored_text() {
    let compiled = compile("lifecycle_stage = CUSTOMER OR lifecycle_stage != \"LEAD\"").unwrap();

    assert_eq!(
        compiled.sql,
        "((c.lifecycle_stage = $1) OR (c.lifecycle_stage <> $2))"
    );
    assert_eq!(compiled.params, [text("CUSTOMER"), text("LEAD")]);
}

#[test]
fn prefixed_enum_names_bind_the_bare_name() {
    let compiled = compile(
        "lifecycle_stage = LIFECYCLE_STAGE_CUSTOMER priority != \"TICKET_PRIORITY_LOW\" \
         owner.kind = PRINCIPAL_KIND_TEAM",
    )
    .unwrap();

    assert_eq!(
        compiled.params,
        [text("CUSTOMER"), text("LOW"), text("TEAM")]
    );
}

#[test]
fn enum_fields_reject_unlisted_names_listing_the_allowed_ones() {
    let error = compile_error("lifecycle_stage = customer");

    assert_eq!(error.position, 18);
    assert_eq!(
        error.message,
        "field 'lifecycle_stage' expects one of LEAD, CUSTOMER, CHURNED, got 'customer'"
    );
}

#[test]
fn another_enums_prefix_is_not_accepted() {
    let error = compile_error("priority = LIFECYCLE_STAGE_LEAD");

    assert_eq!(error.position, 11);
    assert_eq!(
        error.message,
        "field 'priority' expects one of LOW, NORMAL, HIGH, URGENT, got 'LIFECYCLE_STAGE_LEAD'"
    );
}

#[test]
fn enum_ordering_selects_names_by_declared_order() {
    let compiled = compile(
        "priority >= HIGH priority > NORMAL priority < TICKET_PRIORITY_HIGH priority <= LOW",
    )
    .unwrap();

    assert_eq!(
        compiled.sql,
        "((c.priority = ANY($1)) AND (c.priority = ANY($2)) AND (c.priority = ANY($3)) AND \
         (c.priority = ANY($4)))"
    );
    assert_eq!(
        compiled.params,
        [
            texts(&["HIGH", "URGENT"]),
            texts(&["HIGH", "URGENT"]),
            texts(&["LOW", "NORMAL"]),
            texts(&["LOW"]),
        ]
    );
}

#[test]
fn enum_ordering_past_either_end_selects_nothing() {
    let compiled = compile("priority < LOW OR priority > URGENT").unwrap();

    assert_eq!(compiled.params, [texts(&[]), texts(&[])]);
}

#[test]
fn enum_ordering_checks_the_name_first() {
    let error = compile_error("priority >= EXTREME");

    assert_eq!(error.position, 12);
    assert!(
        error.message.contains("one of LOW, NORMAL, HIGH, URGENT"),
        "{}",
        error.message
    );
}

#[test]
fn enum_fields_do_not_support_has() {
    let error = compile_error("priority:HIGH");

    assert_eq!(error.position, 8);
    assert_eq!(
        error.message,
        "operator ':' is not supported for enum field 'priority'; use =, !=, <, <=, > or >="
    );
}

// --- Lists ------------------------------------------------------------------------------------

#[test]
fn text_array_fields_test_membership_with_has_or_equals() {
    let compiled = compile("tags:vip tags = \"key account\"").unwrap();
    let error = compile_error("tags != vip");

    assert_eq!(compiled.sql, "(($1 = ANY(c.tags)) AND ($2 = ANY(c.tags)))");
    assert_eq!(compiled.params, [text("vip"), text("key account")]);
    assert_eq!(error.position, 5);
    assert!(
        error.message.contains("list field 'tags'; use : or ="),
        "{}",
        error.message
    );
}

#[test]
fn uuid_array_fields_test_membership_of_a_uuid() {
    let compiled = compile(&format!("watcher_ids:{ID} watcher_ids:\"{ID}\"")).unwrap();
    let not_an_id = compile_error("watcher_ids:me");
    let ordering = compile_error(&format!("watcher_ids > {ID}"));

    let id = SqlValue::Uuid(Uuid::parse_str(ID).unwrap());
    assert_eq!(
        compiled.sql,
        "(($1 = ANY(c.watcher_ids)) AND ($2 = ANY(c.watcher_ids)))"
    );
    assert_eq!(compiled.params, [id.clone(), id]);
    assert_eq!(not_an_id.position, 12);
    assert!(
        not_an_id
            .message
            .starts_with("field 'watcher_ids' expects a UUID"),
        "{}",
        not_an_id.message
    );
    assert_eq!(ordering.position, 12);
}

#[test]
fn enum_array_fields_test_membership_of_a_bare_or_prefixed_name() {
    let compiled = compile("channels:SMS channels:CHANNEL_EMAIL").unwrap();
    let error = compile_error("channels:FAX");

    assert_eq!(
        compiled.sql,
        "(($1 = ANY(c.channels)) AND ($2 = ANY(c.channels)))"
    );
    assert_eq!(compiled.params, [text("SMS"), text("EMAIL")]);
    assert_eq!(error.position, 9);
    assert_eq!(
        error.message,
        "field 'channels' expects one of EMAIL, SMS, PUSH, got 'FAX'"
    );
}

// --- Map fields -------------------------------------------------------------------------------

#[test]
fn attribute_strings_bind_both_key_and_value() {
    let compiled = compile("attributes.plan = \"pro\"").unwrap();

    assert_eq!(compiled.sql, "((c.custom_attributes ->> $1) = $2)");
    assert_eq!(compiled.params, [text("plan"), text("pro")]);
}

#[test]
fn attribute_numbers_compare_numerically_only_against_json_numbers() {
    let compiled = compile("attributes.seats > 10").unwrap();

    assert_eq!(
        compiled.sql,
        "(CASE WHEN jsonb_typeof(c.custom_attributes -> $1) = 'number' \
         THEN (c.custom_attributes ->> $2)::numeric END > $3)"
    );
    assert_eq!(
        compiled.params,
        [text("seats"), text("seats"), SqlValue::Int(10)]
    );
}

#[test]
fn attribute_booleans_compare_as_booleans_and_quoted_ones_as_text() {
    let boolean = compile("attributes.trial = false").unwrap();
    let quoted = compile("attributes.trial = \"false\"").unwrap();

    assert_eq!(
        boolean.sql,
        "(CASE WHEN jsonb_typeof(c.custom_attributes -> $1) = 'boolean' \
         THEN (c.custom_attributes ->> $2)::boolean END = $3)"
    );
    assert_eq!(
        boolean.params,
        [text("trial"), text("trial"), SqlValue::Bool(false)]
    );
    assert_eq!(quoted.sql, "((c.custom_attributes ->> $1) = $2)");
}

#[test]
fn attribute_booleans_cannot_be_ordered() {
    let error = compile_error("attributes.trial < true");

    assert_eq!(error.position, 17);
    assert!(error.message.contains("use = or !="), "{}", error.message);
}

#[test]
fn attribute_text_supports_prefix_and_substring_matches() {
    let compiled = compile("attributes.plan = \"pro*\" attributes.region:eu").unwrap();

    assert_eq!(
        compiled.sql,
        "(((c.custom_attributes ->> $1) ILIKE $2) AND ((c.custom_attributes ->> $3) ILIKE $4))"
    );
    assert_eq!(
        compiled.params,
        [text("plan"), text("pro%"), text("region"), text("%eu%")]
    );
}

#[test]
fn attribute_keys_outside_the_allowed_charset_are_rejected_at_the_key() {
    let error = compile_error("is_vip = true AND attributes.plan-x = pro");

    assert_eq!(error.position, 29);
    assert_eq!(
        error.message,
        "invalid key 'plan-x': keys are 1 to 64 letters, digits or underscores"
    );
}

#[test]
fn attribute_keys_longer_than_the_limit_are_rejected() {
    let longest = format!("attributes.{} = x", "k".repeat(MAX_MAP_KEY_CHARS));
    let too_long = format!("attributes.{} = x", "k".repeat(MAX_MAP_KEY_CHARS + 1));

    assert!(compile(&longest).is_ok());
    assert_eq!(compile_error(&too_long).position, 11);
}

#[test]
fn has_on_the_map_itself_tests_that_a_key_is_set() {
    let compiled = compile("attributes:plan").unwrap();

    assert_eq!(compiled.sql, "((c.custom_attributes -> $1) IS NOT NULL)");
    assert_eq!(compiled.params, [text("plan")]);
}

#[test]
fn comparing_the_whole_map_is_rejected_with_an_example() {
    let error = compile_error("attributes = pro");

    assert_eq!(error.position, 11);
    assert!(
        error.message.contains("attributes.plan = \"pro\""),
        "{}",
        error.message
    );
}
