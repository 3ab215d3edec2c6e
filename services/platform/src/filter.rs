//! A subset of the [AIP-160](https://google.aip.dev/160) filter language, shared by every List
//! RPC, compiled to parameterised PostgreSQL. `proto/README.md` ("Filtering") is the normative
//! description; this module implements exactly that.
//!
//! ```text
//! expression  = or_group { ["AND"] or_group }     (adjacent groups mean AND)
//! or_group    = term { "OR" term }
//! term        = ("NOT" | "-") term | "(" expression ")" | restriction
//! restriction = field ("=" | "!=" | "<" | "<=" | ">" | ">=" | ":") value
//! field       = identifier { "." identifier }
//! value       = "double-quoted string" | bare_word | integer | decimal | true | false
//! ```
//!
//! As in AIP-160 (and so in every CRM Suite List), OR binds tighter than AND: `a AND b OR c`
//! means `a AND (b OR c)`. Parentheses make the intent explicit and are recommended.
//!
//! A value means what its field's [`FieldType`] says: text, integer, number, bool, timestamp
//! (quoted RFC 3339), date (quoted `"YYYY-MM-DD"`), duration (`"90s"`, `1.5s`), UUID, an enum
//! name (bare `OPEN` or prefixed `TICKET_STATUS_OPEN`, ordered by declaration), a list of text,
//! UUIDs or enum names (`:` is membership), or one key of a JSONB map (`attributes.plan`).
//! Message paths such as `owner.kind` are plain field names that contain dots.
//!
//! Services describe what may be filtered with a [`FilterSchema`]; [`parse`] turns the caller's
//! text into an [`Expr`] and [`to_sql`] checks it against the schema and produces a
//! [`SqlFilter`], which pushes itself into a `sqlx::QueryBuilder` with `push_bind`. Caller input
//! only ever reaches PostgreSQL as bind parameters. Every error is a
//! [`FilterError`] whose message is written for the API caller and names the position.
//!
//! Comparisons follow SQL NULL semantics: a row whose field is NULL (or lacks the attribute)
//! matches neither `f = v` nor `NOT f = v`.
//!
//! Layout: `lexer` (characters → tokens), `parser` (tokens → [`Expr`]), `schema` (what may be
//! filtered), `values` (literal text → typed values), `sql` (expression → SQL) and `order_by`
//! (AIP-132 ordering); each file carries the tests of what it does.

mod lexer;
mod order_by;
mod parser;
mod schema;
mod sql;
mod values;

pub use order_by::{OrderTerm, parse_order_by};
pub use parser::{CompareOp, Expr, Literal, Restriction, parse};
pub use schema::{EnumDef, FieldType, FilterSchema};
pub use sql::{SqlFilter, SqlValue, to_sql};

/// Longest accepted `filter`, in characters (a dynamic segment's stored filter must fit too).
pub const MAX_FILTER_CHARS: usize = 4_000;
/// Longest accepted `order_by`, in characters: a few dozen fields, far more than any List
/// declares, while keeping junk input small.
pub const MAX_ORDER_BY_CHARS: usize = 2_000;
/// Deepest accepted nesting; every `(`, `NOT` and `-` adds one level.
pub const MAX_NESTING_DEPTH: usize = 16;
/// Most restrictions (`field op value`) in one filter.
pub const MAX_RESTRICTIONS: usize = 50;
/// Longest accepted key of a map field such as `attributes.<key>`.
pub const MAX_MAP_KEY_CHARS: usize = 64;

/// Values longer than this are shortened when quoted back in error messages.
const MAX_QUOTED_VALUE_CHARS: usize = 40;

/// A filter or order_by the caller got wrong, meant to be returned as the description of a
/// `google.rpc.BadRequest` field violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at position {position}: {message}")]
pub struct FilterError {
    /// 0-based character (not byte) offset into the caller's input.
    pub position: usize,
    /// What is wrong and, where possible, how to fix it. Never contains SQL.
    pub message: String,
}

impl FilterError {
    fn new(position: usize, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }
}

/// Rejects input longer than `max` characters, pointing just past the last accepted one.
fn check_length(chars: &[char], what: &str, max: usize) -> Result<(), FilterError> {
    if chars.len() > max {
        return Err(FilterError::new(
            max,
            format!(
                "{what} is too long: {} characters, at most {max} are allowed",
                chars.len()
            ),
        ));
    }
    Ok(())
}

/// Quotes caller input for an error message, shortened so one bad value can't bloat the error.
fn quote_for_message(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED_VALUE_CHARS {
        format!("'{text}'")
    } else {
        let head: String = text.chars().take(MAX_QUOTED_VALUE_CHARS).collect();
        format!("'{head}…'")
    }
}
