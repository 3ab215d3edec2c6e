//! [`Expr`] → parameterised PostgreSQL, checked against a [`FilterSchema`].
//!
//! [`to_sql`] checks the whole expression and yields a [`SqlFilter`]: SQL text with the caller's
//! values kept apart, unnumbered. [`SqlFilter::push_to`] appends it to a `sqlx::QueryBuilder`,
//! which numbers each placeholder as it binds the value, so a filter fits anywhere in a query
//! and nobody counts parameters. Checking is separate from pushing so that a List rejects a bad
//! filter before it takes a database connection.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::parser::{CompareOp, Expr, Literal, Restriction};
use super::schema::{EnumDef, FieldType, FilterSchema, ResolvedField, SchemaField, SchemaMap};
use super::values::{
    DATE_EXPECTED, escape_like, parse_bool, parse_date, parse_decimal, parse_duration,
    parse_integer,
};
use super::{FilterError, MAX_MAP_KEY_CHARS, quote_for_message};

/// A compiled filter: a boolean SQL expression whose caller-supplied values stay apart from the
/// SQL until [`push_to`](Self::push_to) binds them.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlFilter {
    parts: Vec<SqlPart>,
}

#[derive(Debug, Clone, PartialEq)]
enum SqlPart {
    /// SQL written by the service (the schema) or by the compiler, never by the caller.
    Sql(String),
    /// A value from the caller, only ever bound as a parameter.
    Value(SqlValue),
}

impl SqlFilter {
    /// Appends the condition to `builder`, binding each value with `push_bind`.
    pub fn push_to(&self, builder: &mut QueryBuilder<'_, Postgres>) {
        for part in &self.parts {
            match part {
                SqlPart::Sql(sql) => {
                    builder.push(sql);
                }
                SqlPart::Value(value) => value.push_bind(builder),
            }
        }
    }

    /// The values the filter binds, in the order it binds them.
    pub fn params(&self) -> impl Iterator<Item = &SqlValue> {
        self.parts.iter().filter_map(|part| match part {
            SqlPart::Value(value) => Some(value),
            SqlPart::Sql(_) => None,
        })
    }
}

/// A bind parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// `TEXT`
    Text(String),
    /// `INT8`
    Int(i64),
    /// `FLOAT8`
    Float(f64),
    /// `BOOL`
    Bool(bool),
    /// `TIMESTAMPTZ`
    Timestamp(DateTime<Utc>),
    /// `DATE`
    Date(NaiveDate),
    /// `INTERVAL`, whole microseconds (no months or days).
    Interval(TimeDelta),
    /// `UUID`
    Uuid(Uuid),
    /// `TEXT[]`: the enum names an ordering comparison selects.
    TextArray(Vec<String>),
}

impl SqlValue {
    fn push_bind(&self, builder: &mut QueryBuilder<'_, Postgres>) {
        match self {
            SqlValue::Text(v) => builder.push_bind(v.clone()),
            SqlValue::Int(v) => builder.push_bind(*v),
            SqlValue::Float(v) => builder.push_bind(*v),
            SqlValue::Bool(v) => builder.push_bind(*v),
            SqlValue::Timestamp(v) => builder.push_bind(*v),
            SqlValue::Date(v) => builder.push_bind(*v),
            SqlValue::Interval(v) => builder.push_bind(*v),
            SqlValue::Uuid(v) => builder.push_bind(*v),
            SqlValue::TextArray(v) => builder.push_bind(v.clone()),
        };
    }
}

/// Checks `expr` against `schema` and compiles it; nothing reaches SQL unless all of it is valid.
pub fn to_sql(expr: &Expr, schema: &FilterSchema) -> Result<SqlFilter, FilterError> {
    let mut compiler = SqlCompiler {
        schema,
        parts: Vec::new(),
    };
    compiler.expr(expr)?;
    Ok(SqlFilter {
        parts: compiler.parts,
    })
}

struct SqlCompiler<'a> {
    schema: &'a FilterSchema,
    parts: Vec<SqlPart>,
}

/// The left side of a text comparison: a field's SQL, or one key of a JSONB map read as text.
#[derive(Clone, Copy)]
enum TextLhs<'a> {
    Column(&'a str),
    MapKey { map_sql: &'a str, key: &'a str },
}

impl SqlCompiler<'_> {
    fn sql(&mut self, sql: &str) {
        // Adjacent text is merged so a filter stays a handful of parts.
        match self.parts.last_mut() {
            Some(SqlPart::Sql(last)) => last.push_str(sql),
            _ => self.parts.push(SqlPart::Sql(sql.to_owned())),
        }
    }

    fn bind(&mut self, value: SqlValue) {
        self.parts.push(SqlPart::Value(value));
    }

    fn expr(&mut self, expr: &Expr) -> Result<(), FilterError> {
        match expr {
            Expr::True => self.sql("TRUE"),
            // Empty lists only come from hand-built trees; give them their logical identity
            // rather than the invalid SQL "()".
            Expr::And(terms) if terms.is_empty() => self.sql("TRUE"),
            Expr::Or(terms) if terms.is_empty() => self.sql("FALSE"),
            Expr::And(terms) => self.join(terms, " AND ")?,
            Expr::Or(terms) => self.join(terms, " OR ")?,
            Expr::Not(inner) => {
                self.sql("(NOT ");
                self.expr(inner)?;
                self.sql(")");
            }
            Expr::Restriction(restriction) => self.restriction(restriction)?,
        }
        Ok(())
    }

    fn join(&mut self, terms: &[Expr], separator: &str) -> Result<(), FilterError> {
        self.sql("(");
        for (i, term) in terms.iter().enumerate() {
            if i > 0 {
                self.sql(separator);
            }
            self.expr(term)?;
        }
        self.sql(")");
        Ok(())
    }

    fn restriction(&mut self, r: &Restriction) -> Result<(), FilterError> {
        match self.schema.resolve(&r.field) {
            None => Err(FilterError::new(
                r.field_position,
                format!(
                    "unknown field {}; you can filter on: {}",
                    quote_for_message(&r.field),
                    self.schema.accepted_fields()
                ),
            )),
            Some(ResolvedField::Column(field)) => self.column(field, r),
            Some(ResolvedField::WholeMap(map)) => self.map_has_key(map, r),
            Some(ResolvedField::MapKey(map, key)) => {
                let key_position = r.field_position + map.prefix.chars().count() + 1;
                self.map_key(map, key, key_position, r)
            }
        }
    }

    fn column(&mut self, field: &SchemaField, r: &Restriction) -> Result<(), FilterError> {
        let (field_type, lhs) = (field.field_type, field.sql);
        if r.value.prefix_wildcard && field_type != FieldType::Text {
            return Err(FilterError::new(
                r.value.position,
                format!(
                    "'{}' is a {} field; a trailing '*' (prefix match) only works on text fields",
                    field.name,
                    field_type.describe()
                ),
            ));
        }
        match field_type {
            FieldType::Text => self.text_condition(TextLhs::Column(lhs), r),
            FieldType::Enum(def) => self.enum_condition(field, def, r),
            FieldType::TextArray | FieldType::UuidArray | FieldType::EnumArray(_) => {
                require_op(r, field_type, CompareOp::MEMBERSHIP)?;
                let element = array_element(field, &r.value)?;
                self.sql("(");
                self.bind(element);
                self.sql(&format!(" = ANY({lhs}))"));
                Ok(())
            }
            _ => {
                let value = scalar_value(field, r)?;
                self.sql(&format!("({lhs} {} ", r.op.sql()));
                self.bind(value);
                self.sql(")");
                Ok(())
            }
        }
    }

    /// Text semantics: `=` exact or, with a trailing `*`, case-insensitive prefix; `:`
    /// case-insensitive substring; everything else plain SQL comparison.
    fn text_condition(&mut self, lhs: TextLhs<'_>, r: &Restriction) -> Result<(), FilterError> {
        let value = &r.value;
        let (operator, param) = if value.prefix_wildcard {
            let operator = match r.op {
                CompareOp::Eq => "ILIKE",
                CompareOp::Ne => "NOT ILIKE",
                _ => {
                    return Err(FilterError::new(
                        value.position,
                        "a trailing '*' (prefix match) only works with = and !=",
                    ));
                }
            };
            (operator, format!("{}%", escape_like(&value.text)))
        } else if r.op == CompareOp::Has {
            ("ILIKE", format!("%{}%", escape_like(&value.text)))
        } else {
            (r.op.sql(), value.text.clone())
        };
        self.sql("(");
        match lhs {
            TextLhs::Column(sql) => self.sql(sql),
            TextLhs::MapKey { map_sql, key } => {
                self.sql(&format!("({map_sql} ->> "));
                self.bind(SqlValue::Text(key.to_owned()));
                self.sql(")");
            }
        }
        self.sql(&format!(" {operator} "));
        self.bind(SqlValue::Text(param));
        self.sql(")");
        Ok(())
    }

    /// `=` and `!=` compare the bare name. An ordering comparison becomes membership in the set
    /// of names it selects (`priority >= HIGH` is `priority = ANY('{HIGH,URGENT}')`): the names
    /// reach SQL only as a bound array, an index on the column still serves, and NULL stays
    /// unmatched by both the condition and its negation.
    fn enum_condition(
        &mut self,
        field: &SchemaField,
        def: &EnumDef,
        r: &Restriction,
    ) -> Result<(), FilterError> {
        require_op(r, field.field_type, CompareOp::ORDERING)?;
        let lhs = field.sql;
        let position = def
            .position(&r.value.text)
            .ok_or_else(|| enum_error(field.name, def, &r.value))?;
        if matches!(r.op, CompareOp::Eq | CompareOp::Ne) {
            self.sql(&format!("({lhs} {} ", r.op.sql()));
            self.bind(SqlValue::Text(def.values[position].to_owned()));
            self.sql(")");
            return Ok(());
        }
        let selected = def
            .values
            .iter()
            .enumerate()
            .filter(|(i, _)| match r.op {
                CompareOp::Lt => *i < position,
                CompareOp::Le => *i <= position,
                CompareOp::Gt => *i > position,
                _ => *i >= position,
            })
            .map(|(_, name)| (*name).to_owned())
            .collect();
        self.sql(&format!("({lhs} = ANY("));
        self.bind(SqlValue::TextArray(selected));
        self.sql("))");
        Ok(())
    }

    /// `attributes:plan` — the key is present (even if its JSON value is null).
    fn map_has_key(&mut self, map: &SchemaMap, r: &Restriction) -> Result<(), FilterError> {
        if r.op != CompareOp::Has || r.value.prefix_wildcard {
            return Err(FilterError::new(
                r.op_position,
                format!(
                    "compare one entry of '{0}' at a time, e.g. {0}.plan = \"pro\", or test that an entry is set with {0}:plan",
                    map.prefix
                ),
            ));
        }
        validate_map_key(&r.value.text, r.value.position)?;
        self.sql(&format!("(({} -> ", map.sql));
        self.bind(SqlValue::Text(r.value.text.clone()));
        self.sql(") IS NOT NULL)");
        Ok(())
    }

    fn map_key(
        &mut self,
        map: &SchemaMap,
        key: &str,
        key_position: usize,
        r: &Restriction,
    ) -> Result<(), FilterError> {
        validate_map_key(key, key_position)?;
        let map_sql = map.sql;
        let value = &r.value;
        // The literal's form picks the comparison; ':' and wildcards are always textual.
        let typed = if value.quoted || r.op == CompareOp::Has {
            None
        } else if let Some(flag) = parse_bool(&value.text) {
            Some(("boolean", SqlValue::Bool(flag)))
        } else if let Some(number) = parse_integer(&value.text) {
            Some(("number", SqlValue::Int(number)))
        } else {
            parse_decimal(&value.text).map(|number| ("number", SqlValue::Float(number)))
        };
        let Some((json_type, param)) = typed else {
            return self.text_condition(TextLhs::MapKey { map_sql, key }, r);
        };
        let (cast, allowed) = match json_type {
            "boolean" => ("boolean", CompareOp::EQUALITY),
            _ => ("numeric", CompareOp::ORDERING),
        };
        if !allowed.contains(&r.op) {
            return Err(FilterError::new(
                r.op_position,
                format!(
                    "operator '{}' cannot compare '{}' with a {json_type}; use {}",
                    r.op.symbol(),
                    r.field,
                    describe_ops(allowed)
                ),
            ));
        }
        // The CASE keeps the cast from raising an error (and failing the whole query) on rows
        // where the attribute holds another JSON type; those rows simply don't match. The key is
        // bound at each use.
        self.sql(&format!("(CASE WHEN jsonb_typeof({map_sql} -> "));
        self.bind(SqlValue::Text(key.to_owned()));
        self.sql(&format!(") = '{json_type}' THEN ({map_sql} ->> "));
        self.bind(SqlValue::Text(key.to_owned()));
        self.sql(&format!(")::{cast} END {} ", r.op.sql()));
        self.bind(param);
        self.sql(")");
        Ok(())
    }
}

/// The bound value of a plain `lhs op $n` comparison, after checking the operator.
fn scalar_value(field: &SchemaField, r: &Restriction) -> Result<SqlValue, FilterError> {
    let (name, field_type, value) = (field.name, field.field_type, &r.value);
    let allowed = match field_type {
        FieldType::Bool | FieldType::Uuid => CompareOp::EQUALITY,
        _ => CompareOp::ORDERING,
    };
    require_op(r, field_type, allowed)?;
    let typed = match field_type {
        FieldType::Integer => parse_integer(&value.text)
            .map(SqlValue::Int)
            .ok_or_else(|| type_error(name, "an integer, e.g. 42", value))?,
        FieldType::Float => parse_decimal(&value.text)
            .map(SqlValue::Float)
            .ok_or_else(|| type_error(name, "a number, e.g. 4.5", value))?,
        FieldType::Bool => parse_bool(&value.text)
            .map(SqlValue::Bool)
            .ok_or_else(|| type_error(name, "true or false", value))?,
        FieldType::Timestamp => DateTime::parse_from_rfc3339(&value.text)
            .map(|time| SqlValue::Timestamp(time.with_timezone(&Utc)))
            .map_err(|_| {
                type_error(
                    name,
                    "an RFC 3339 timestamp in double quotes, e.g. \"2024-01-31T09:00:00Z\"",
                    value,
                )
            })?,
        FieldType::Date if !value.quoted => return Err(type_error(name, DATE_EXPECTED, value)),
        FieldType::Date => parse_date(&value.text)
            .map(SqlValue::Date)
            .map_err(|expected| type_error(name, expected, value))?,
        FieldType::Duration => parse_duration(&value.text)
            .map(SqlValue::Interval)
            .map_err(|expected| type_error(name, expected, value))?,
        _ => SqlValue::Uuid(parse_uuid(name, value)?),
    };
    Ok(typed)
}

/// The bound element of a list membership test.
fn array_element(field: &SchemaField, value: &Literal) -> Result<SqlValue, FilterError> {
    Ok(match field.field_type {
        FieldType::UuidArray => SqlValue::Uuid(parse_uuid(field.name, value)?),
        FieldType::EnumArray(def) => def
            .normalize(&value.text)
            .map(|bare| SqlValue::Text(bare.to_owned()))
            .ok_or_else(|| enum_error(field.name, def, value))?,
        _ => SqlValue::Text(value.text.clone()),
    })
}

fn parse_uuid(field: &str, value: &Literal) -> Result<Uuid, FilterError> {
    Uuid::parse_str(&value.text).map_err(|_| {
        type_error(
            field,
            "a UUID, e.g. \"0190f3a4-8c1e-7b52-9d3f-2a6c4e8b1f07\"",
            value,
        )
    })
}

fn require_op(
    r: &Restriction,
    field_type: FieldType,
    allowed: &[CompareOp],
) -> Result<(), FilterError> {
    if allowed.contains(&r.op) {
        return Ok(());
    }
    Err(FilterError::new(
        r.op_position,
        format!(
            "operator '{}' is not supported for {} field '{}'; use {}",
            r.op.symbol(),
            field_type.describe(),
            r.field,
            describe_ops(allowed)
        ),
    ))
}

/// "=, != or <" style list of operators.
fn describe_ops(ops: &[CompareOp]) -> String {
    let symbols: Vec<&str> = ops.iter().map(|op| op.symbol()).collect();
    match symbols.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

fn type_error(field: &str, expected: &str, value: &Literal) -> FilterError {
    FilterError::new(
        value.position,
        format!(
            "field '{field}' expects {expected}, got {}",
            quote_for_message(&value.text)
        ),
    )
}

/// Lists the bare names, which is what callers usually write; the prefixed form is implied.
fn enum_error(field: &str, def: &EnumDef, value: &Literal) -> FilterError {
    type_error(field, &format!("one of {}", def.values.join(", ")), value)
}

fn validate_map_key(key: &str, position: usize) -> Result<(), FilterError> {
    let valid = !key.is_empty()
        && key.chars().count() <= MAX_MAP_KEY_CHARS
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        return Ok(());
    }
    Err(FilterError::new(
        position,
        format!(
            "invalid key {}: keys are 1 to {MAX_MAP_KEY_CHARS} letters, digits or underscores",
            quote_for_message(key)
        ),
    ))
}

#[cfg(test)]
mod robustness;
#[cfg(test)]
mod tests;
