//! What a List RPC lets callers filter on: each field's name, [`FieldType`] and SQL.

/// An enum as a filter sees it: the value names in declared order and the prefix they carry on
/// the wire.
///
/// Callers may write a value bare (`OPEN`) or prefixed (`TICKET_STATUS_OPEN`); both mean the
/// bare name, which is what the column stores (as text). `<`, `<=`, `>` and `>=` compare
/// positions in [`values`](Self::values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnumDef {
    /// The proto prefix of every value name including its trailing underscore, e.g.
    /// `TICKET_STATUS_`; empty if the names carry none.
    pub prefix: &'static str,
    /// The bare value names in declared order, without the `_UNSPECIFIED` zero value.
    pub values: &'static [&'static str],
}

impl EnumDef {
    /// An enum whose proto value names are `prefix` + each of `values`.
    pub const fn new(prefix: &'static str, values: &'static [&'static str]) -> Self {
        Self { prefix, values }
    }

    /// The bare name `name` stands for, whether written bare or with the prefix.
    pub fn normalize(&self, name: &str) -> Option<&'static str> {
        self.position(name).map(|i| self.values[i])
    }

    /// Where `name` (bare or prefixed) is in the declared order.
    pub fn position(&self, name: &str) -> Option<usize> {
        let find = |bare: &str| self.values.iter().position(|v| *v == bare);
        find(name).or_else(|| {
            name.strip_prefix(self.prefix)
                .filter(|_| !self.prefix.is_empty())
                .and_then(find)
        })
    }
}

/// The type of a filterable field, which decides the accepted operators and values and how the
/// field's SQL expression is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// `=` exact (or prefix with a trailing `*`), `!=`, ordering, `:` case-insensitive substring.
    Text,
    /// 64-bit integer; `=`, `!=` and ordering.
    Integer,
    /// Floating-point number; `=`, `!=` and ordering.
    Float,
    /// `true` or `false`; `=` and `!=` only.
    Bool,
    /// RFC 3339 timestamp in double quotes; `=`, `!=` and ordering. The SQL is a `TIMESTAMPTZ`.
    Timestamp,
    /// A calendar date in double quotes, `"YYYY-MM-DD"` (`google.type.Date`); `=`, `!=` and
    /// ordering. The SQL is a `DATE`; the value is bound as one.
    Date,
    /// Elapsed time (`google.protobuf.Duration`) written as seconds with an `s` suffix, quoted or
    /// bare: `"90s"`, `3600s`, `1.5s`, at most microsecond precision; `=`, `!=` and ordering.
    ///
    /// The SQL must be an `INTERVAL`; the value is bound as an `INTERVAL` (whole microseconds),
    /// so an indexed interval column is compared directly. A column that stores seconds is
    /// declared as `make_interval(secs => t.col)`.
    Duration,
    /// One of the enum's names, bare or prefixed, stored as the bare name in a text column; `=`
    /// and `!=`, and `<`, `<=`, `>`, `>=` in the enum's declared order.
    Enum(&'static EnumDef),
    /// A text array (`repeated text`); `:` and `=` both mean "contains".
    TextArray,
    /// A UUID (`id`), quoted or bare; `=` and `!=` only.
    Uuid,
    /// A UUID array (`repeated id`); `:` and `=` both mean "contains".
    UuidArray,
    /// A text array of enum names (`repeated enum`), stored bare; `:` and `=` both mean
    /// "contains", and the value may be written bare or prefixed.
    EnumArray(&'static EnumDef),
}

impl FieldType {
    /// How error messages call the type.
    pub(super) fn describe(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Integer => "integer",
            FieldType::Float => "number",
            FieldType::Bool => "boolean",
            FieldType::Timestamp => "timestamp",
            FieldType::Date => "date",
            FieldType::Duration => "duration",
            FieldType::Enum(_) => "enum",
            FieldType::TextArray | FieldType::UuidArray | FieldType::EnumArray(_) => "list",
            FieldType::Uuid => "UUID",
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct SchemaField {
    pub(super) name: &'static str,
    pub(super) field_type: FieldType,
    pub(super) sql: &'static str,
}

#[derive(Debug, Clone)]
pub(super) struct SchemaMap {
    pub(super) prefix: &'static str,
    pub(super) sql: &'static str,
}

/// The fields a List RPC lets callers filter on, and the SQL expression behind each.
///
/// Names and SQL are `&'static str` on purpose: the SQL is spliced into the query verbatim, so it
/// must be written by the service, never derived from a request. A message path such as
/// `owner.kind` is declared as a field whose name contains the dot.
#[derive(Debug, Clone, Default)]
pub struct FilterSchema {
    fields: Vec<SchemaField>,
    maps: Vec<SchemaMap>,
}

impl FilterSchema {
    /// An empty schema; add fields with [`field`](Self::field) and
    /// [`map_field`](Self::map_field).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a field `name` of type `field_type`, backed by the SQL expression `sql`.
    ///
    /// # Panics
    ///
    /// If `name` is already in the schema (a programming error).
    pub fn field(mut self, name: &'static str, field_type: FieldType, sql: &'static str) -> Self {
        self.assert_new_name(name);
        self.fields.push(SchemaField {
            name,
            field_type,
            sql,
        });
        self
    }

    /// Adds a JSONB map field: `prefix.<key>` looks up `<key>` in the JSONB expression `sql`, and
    /// `prefix:<key>` tests whether the key is present.
    ///
    /// Quoted and bare-word values compare as text; bare numbers compare numerically and `true`
    /// / `false` as booleans, matching only values stored as JSON numbers and booleans.
    ///
    /// # Panics
    ///
    /// If `prefix` is already in the schema (a programming error).
    pub fn map_field(mut self, prefix: &'static str, sql: &'static str) -> Self {
        self.assert_new_name(prefix);
        self.maps.push(SchemaMap { prefix, sql });
        self
    }

    fn assert_new_name(&self, name: &str) {
        let taken = self.fields.iter().any(|f| f.name == name)
            || self.maps.iter().any(|m| m.prefix == name);
        assert!(!taken, "filter field {name:?} is declared twice");
    }

    /// What `path` names: a declared field (dotted or not) first, else a map or one of its keys.
    pub(super) fn resolve<'s, 'p>(&'s self, path: &'p str) -> Option<ResolvedField<'s, 'p>> {
        if let Some(field) = self.fields.iter().find(|f| f.name == path) {
            return Some(ResolvedField::Column(field));
        }
        self.maps.iter().find_map(|map| {
            if path == map.prefix {
                Some(ResolvedField::WholeMap(map))
            } else {
                path.strip_prefix(map.prefix)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .map(|key| ResolvedField::MapKey(map, key))
            }
        })
    }

    /// The accepted field names, for an "unknown field" message.
    pub(super) fn accepted_fields(&self) -> String {
        let names = self.fields.iter().map(|f| f.name.to_owned());
        let maps = self.maps.iter().map(|m| format!("{}.<key>", m.prefix));
        names.chain(maps).collect::<Vec<_>>().join(", ")
    }
}

pub(super) enum ResolvedField<'s, 'p> {
    Column(&'s SchemaField),
    WholeMap(&'s SchemaMap),
    MapKey(&'s SchemaMap, &'p str),
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: EnumDef = EnumDef::new("TICKET_STATUS_", &["OPEN", "PENDING", "CLOSED"]);

    #[test]
    fn enum_names_normalize_from_bare_or_prefixed_form() {
        assert_eq!(STATUS.normalize("OPEN"), Some("OPEN"));
        assert_eq!(STATUS.normalize("TICKET_STATUS_PENDING"), Some("PENDING"));
        assert_eq!(STATUS.position("CLOSED"), Some(2));
    }

    #[test]
    fn enum_names_must_match_exactly() {
        assert_eq!(STATUS.normalize("open"), None);
        assert_eq!(STATUS.normalize("TICKET_STATUS_"), None);
        assert_eq!(STATUS.normalize("STATUS_OPEN"), None);
        assert_eq!(STATUS.normalize("TICKET_STATUS_UNSPECIFIED"), None);
    }

    #[test]
    fn an_enum_without_a_prefix_accepts_only_bare_names() {
        const PLAIN: EnumDef = EnumDef::new("", &["A", "B"]);

        assert_eq!(PLAIN.normalize("B"), Some("B"));
        assert_eq!(PLAIN.normalize("X"), None);
    }

    #[test]
    fn dotted_fields_resolve_before_maps() {
        let schema = FilterSchema::new()
            .field("owner.kind", FieldType::Text, "c.owner_kind")
            .map_field("owner", "c.owner");

        assert!(matches!(
            schema.resolve("owner.kind"),
            Some(ResolvedField::Column(f)) if f.sql == "c.owner_kind"
        ));
        assert!(matches!(
            schema.resolve("owner.id"),
            Some(ResolvedField::MapKey(_, "id"))
        ));
        assert!(schema.resolve("owners").is_none());
    }

    #[test]
    #[should_panic(expected = "declared twice")]
    fn declaring_a_field_twice_is_a_programming_error() {
        let _ = FilterSchema::new()
            .field("tags", FieldType::TextArray, "c.tags")
            .map_field("tags", "c.tag_map");
    }
}
