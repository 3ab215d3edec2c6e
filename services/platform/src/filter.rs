//! A subset of the [AIP-160](https://google.aip.dev/160) filter language, shared by every List
//! RPC, compiled to parameterised PostgreSQL.
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
//! Services describe what may be filtered with a [`FilterSchema`]; [`parse`] turns the caller's
//! text into an [`Expr`] and [`to_sql`] checks it against the schema and produces a
//! [`SqlFilter`]. Caller input only ever reaches PostgreSQL as bind parameters. Every error is a
//! [`FilterError`] whose message is written for the API caller.
//!
//! Comparisons follow SQL NULL semantics: a row whose field is NULL (or lacks the attribute)
//! matches neither `f = v` nor `NOT f = v`.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Longest accepted `filter` or `order_by`, in characters.
pub const MAX_FILTER_CHARS: usize = 2_000;
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

/// A parsed filter. Source positions are kept so that [`to_sql`] can point at the culprit.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The empty filter, which matches everything.
    True,
    /// All of the sub-expressions hold.
    And(Vec<Expr>),
    /// At least one of the sub-expressions holds.
    Or(Vec<Expr>),
    /// The sub-expression does not hold.
    Not(Box<Expr>),
    /// A single `field op value` comparison.
    Restriction(Restriction),
}

/// One `field op value` comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restriction {
    /// The dotted field path as written, e.g. `attributes.plan`.
    pub field: String,
    /// Character offset of the field.
    pub field_position: usize,
    /// The comparison operator.
    pub op: CompareOp,
    /// Character offset of the operator.
    pub op_position: usize,
    /// The right-hand side.
    pub value: Literal,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `:` (has): substring for text, membership for lists, key presence for maps.
    Has,
}

impl CompareOp {
    const ORDERING: &[CompareOp] = &[
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Lt,
        CompareOp::Le,
        CompareOp::Gt,
        CompareOp::Ge,
    ];
    const EQUALITY: &[CompareOp] = &[CompareOp::Eq, CompareOp::Ne];

    /// The operator as the caller writes it.
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Has => ":",
        }
    }

    fn sql(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "<>",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            // Has never reaches plain comparison; each field type translates it itself.
            CompareOp::Has => "=",
        }
    }
}

/// The right-hand side of a restriction, still untyped: its meaning depends on the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Literal {
    /// The value with escapes resolved and a trailing wildcard `*` removed.
    pub text: String,
    /// Whether the value was written in double quotes.
    pub quoted: bool,
    /// Whether a quoted value ended in an unescaped `*`, asking for a prefix match.
    pub prefix_wildcard: bool,
    /// Character offset of the value.
    pub position: usize,
}

/// The type of a filterable field, which decides the accepted operators and values.
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
    /// RFC 3339 timestamp in double quotes; `=`, `!=` and ordering.
    Timestamp,
    /// One of the listed bare names, stored as that same text; `=` and `!=` only.
    Enum(&'static [&'static str]),
    /// A text array; `:` and `=` both mean "contains".
    TextArray,
    /// A UUID; `=` and `!=` only.
    Uuid,
}

impl FieldType {
    fn describe(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Integer => "integer",
            FieldType::Float => "number",
            FieldType::Bool => "boolean",
            FieldType::Timestamp => "timestamp",
            FieldType::Enum(_) => "enum",
            FieldType::TextArray => "list",
            FieldType::Uuid => "UUID",
        }
    }
}

#[derive(Debug, Clone)]
struct SchemaField {
    name: &'static str,
    field_type: FieldType,
    sql: &'static str,
}

#[derive(Debug, Clone)]
struct SchemaMap {
    prefix: &'static str,
    sql: &'static str,
}

/// The fields a List RPC lets callers filter on, and the SQL expression behind each.
///
/// Names and SQL are `&'static str` on purpose: the SQL is spliced into the query verbatim, so it
/// must be written by the service, never derived from a request.
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

    fn resolve<'s, 'p>(&'s self, path: &'p str) -> Option<ResolvedField<'s, 'p>> {
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

    fn accepted_fields(&self) -> String {
        let names = self.fields.iter().map(|f| f.name.to_owned());
        let maps = self.maps.iter().map(|m| format!("{}.<key>", m.prefix));
        names.chain(maps).collect::<Vec<_>>().join(", ")
    }
}

enum ResolvedField<'s, 'p> {
    Column(&'s SchemaField),
    WholeMap(&'s SchemaMap),
    MapKey(&'s SchemaMap, &'p str),
}

/// A compiled filter: a boolean SQL expression and the values for its placeholders, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlFilter {
    /// SQL using `$first_param`, `$first_param + 1`, … placeholders.
    pub sql: String,
    /// One value per placeholder; `params[i]` binds to `$(first_param + i)`.
    pub params: Vec<SqlValue>,
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
    /// `UUID`
    Uuid(Uuid),
}

/// Parses a filter. Empty or all-whitespace input gives [`Expr::True`].
pub fn parse(input: &str) -> Result<Expr, FilterError> {
    let chars: Vec<char> = input.chars().collect();
    check_length(&chars, "filter")?;
    let tokens = tokenize(&chars)?;
    if tokens.is_empty() {
        return Ok(Expr::True);
    }
    let mut parser = Parser {
        tokens,
        next: 0,
        input_len: chars.len(),
        depth: 0,
        restrictions: 0,
    };
    let expr = parser.parse_and()?;
    match parser.peek() {
        None => Ok(expr),
        // parse_or stops only at the end or at a ')' it has no '(' for.
        Some(token) => Err(FilterError::new(
            token.position,
            "unexpected ')' without a matching '('",
        )),
    }
}

/// Compiles `expr` against `schema`, numbering placeholders from `$first_param` (at least 1) so
/// the filter can be appended to a query that already has parameters.
pub fn to_sql(
    expr: &Expr,
    schema: &FilterSchema,
    first_param: usize,
) -> Result<SqlFilter, FilterError> {
    debug_assert!(first_param >= 1, "PostgreSQL placeholders start at $1");
    let mut compiler = SqlCompiler {
        schema,
        next_param: first_param,
        params: Vec::new(),
    };
    let sql = compiler.expr(expr)?;
    Ok(SqlFilter {
        sql,
        params: compiler.params,
    })
}

/// One `order_by` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderTerm {
    /// The field, one of those the RPC allows.
    pub field: String,
    /// `desc` was given.
    pub descending: bool,
}

/// Parses an [AIP-132](https://google.aip.dev/132#ordering) `order_by` such as
/// `"display_name desc, create_time"`: comma-separated fields from `allowed`, each optionally
/// followed by `asc` or `desc` (any case; ascending by default), none repeated. Empty input gives
/// an empty list.
pub fn parse_order_by(input: &str, allowed: &[&str]) -> Result<Vec<OrderTerm>, FilterError> {
    let chars: Vec<char> = input.chars().collect();
    check_length(&chars, "order_by")?;
    if chars.iter().all(|c| c.is_whitespace()) {
        return Ok(Vec::new());
    }
    let mut terms = Vec::new();
    let mut seen = HashSet::new();
    let mut words: Vec<(usize, String)> = Vec::new();
    let mut i = 0;
    loop {
        if i == chars.len() || chars[i] == ',' {
            let term = order_term(&words, i, allowed)?;
            if !seen.insert(term.field.clone()) {
                return Err(FilterError::new(
                    words[0].0,
                    format!("'{}' appears more than once in order_by", term.field),
                ));
            }
            terms.push(term);
            words.clear();
            if i == chars.len() {
                return Ok(terms);
            }
            i += 1;
        } else if chars[i].is_whitespace() {
            i += 1;
        } else {
            let start = i;
            while i < chars.len() && chars[i] != ',' && !chars[i].is_whitespace() {
                i += 1;
            }
            words.push((start, chars[start..i].iter().collect()));
        }
    }
}

fn order_term(
    words: &[(usize, String)],
    end_position: usize,
    allowed: &[&str],
) -> Result<OrderTerm, FilterError> {
    let Some((field_position, field)) = words.first() else {
        return Err(FilterError::new(
            end_position,
            "expected a field name; separate fields with single commas, e.g. \"display_name desc, create_time\"",
        ));
    };
    if !allowed.contains(&field.as_str()) {
        let message = if allowed.is_empty() {
            "this method does not support order_by".to_owned()
        } else {
            format!(
                "cannot order by {}; allowed fields are: {}",
                quote_for_message(field),
                allowed.join(", ")
            )
        };
        return Err(FilterError::new(*field_position, message));
    }
    let descending = match words.get(1) {
        None => false,
        Some((_, direction)) if direction.eq_ignore_ascii_case("asc") => false,
        Some((_, direction)) if direction.eq_ignore_ascii_case("desc") => true,
        Some((position, direction)) => {
            return Err(FilterError::new(
                *position,
                format!(
                    "expected asc or desc after '{field}', found {}",
                    quote_for_message(direction)
                ),
            ));
        }
    };
    if let Some((position, extra)) = words.get(2) {
        return Err(FilterError::new(
            *position,
            format!(
                "unexpected {} after '{field} {}'; separate fields with commas",
                quote_for_message(extra),
                words[1].1
            ),
        ));
    }
    Ok(OrderTerm {
        field: field.clone(),
        descending,
    })
}

fn check_length(chars: &[char], what: &str) -> Result<(), FilterError> {
    if chars.len() > MAX_FILTER_CHARS {
        return Err(FilterError::new(
            MAX_FILTER_CHARS,
            format!(
                "{what} is too long: {} characters, at most {MAX_FILTER_CHARS} are allowed",
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

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum TokenKind {
    LParen,
    RParen,
    Minus,
    Op(CompareOp),
    Word(String),
    Quoted { text: String, prefix_wildcard: bool },
}

#[derive(Debug, Clone)]
struct Token {
    kind: TokenKind,
    position: usize,
    /// Offset just past the token; lets the parser tell `-5` from `- 5`.
    end: usize,
}

impl Token {
    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(&self.kind, TokenKind::Word(w) if w == keyword)
    }

    fn describe(&self) -> String {
        match &self.kind {
            TokenKind::LParen => "'('".to_owned(),
            TokenKind::RParen => "')'".to_owned(),
            TokenKind::Minus => "'-'".to_owned(),
            TokenKind::Op(op) => format!("'{}'", op.symbol()),
            TokenKind::Word(word) => quote_for_message(word),
            TokenKind::Quoted { .. } => "a quoted string".to_owned(),
        }
    }
}

fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, '(' | ')' | '=' | '!' | '<' | '>' | ':' | '"')
}

fn tokenize(chars: &[char]) -> Result<Vec<Token>, FilterError> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let c = chars[i];
        let kind = match c {
            _ if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => TokenKind::LParen,
            ')' => TokenKind::RParen,
            '-' => TokenKind::Minus,
            ':' => TokenKind::Op(CompareOp::Has),
            '=' => TokenKind::Op(CompareOp::Eq),
            '!' if chars.get(i + 1) == Some(&'=') => {
                i += 1;
                TokenKind::Op(CompareOp::Ne)
            }
            '!' => {
                return Err(FilterError::new(
                    start,
                    "unexpected '!'; use != for \"not equal\" or NOT to negate a condition",
                ));
            }
            '<' | '>' => {
                let or_equal = chars.get(i + 1) == Some(&'=');
                if or_equal {
                    i += 1;
                }
                TokenKind::Op(match (c, or_equal) {
                    ('<', false) => CompareOp::Lt,
                    ('<', true) => CompareOp::Le,
                    (_, false) => CompareOp::Gt,
                    (_, true) => CompareOp::Ge,
                })
            }
            '"' => {
                let (kind, end) = lex_quoted(chars, start)?;
                i = end;
                tokens.push(Token {
                    kind,
                    position: start,
                    end,
                });
                continue;
            }
            '\'' => {
                return Err(FilterError::new(
                    start,
                    "strings must be in double quotes, e.g. display_name = \"Ann\"",
                ));
            }
            _ => {
                while i < chars.len() && is_word_char(chars[i]) {
                    if chars[i] == '*' {
                        return Err(FilterError::new(
                            i,
                            "'*' is only allowed at the end of a quoted value, for a prefix match such as display_name = \"Ann*\"",
                        ));
                    }
                    i += 1;
                }
                tokens.push(Token {
                    kind: TokenKind::Word(chars[start..i].iter().collect()),
                    position: start,
                    end: i,
                });
                continue;
            }
        };
        i += 1;
        tokens.push(Token {
            kind,
            position: start,
            end: i,
        });
    }
    Ok(tokens)
}

/// Lexes the string whose opening quote is at `start`; returns it and the offset after it.
fn lex_quoted(chars: &[char], start: usize) -> Result<(TokenKind, usize), FilterError> {
    let mut text = String::new();
    let mut ends_with_bare_star = false;
    let mut i = start + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(FilterError::new(
                start,
                "unterminated string: the '\"' here has no closing '\"'",
            ));
        };
        match c {
            '"' => break,
            '\\' => {
                let unescaped = match chars.get(i + 1) {
                    Some('"') => '"',
                    Some('\\') => '\\',
                    Some('n') => '\n',
                    Some('t') => '\t',
                    // An escaped star is literal, so values may end in '*' without a prefix match.
                    Some('*') => '*',
                    Some(_) => {
                        return Err(FilterError::new(
                            i,
                            "unknown escape sequence; inside strings use \\\", \\\\, \\n, \\t or \\*",
                        ));
                    }
                    None => {
                        return Err(FilterError::new(
                            start,
                            "unterminated string: the '\"' here has no closing '\"'",
                        ));
                    }
                };
                text.push(unescaped);
                ends_with_bare_star = false;
                i += 2;
            }
            _ => {
                text.push(c);
                ends_with_bare_star = c == '*';
                i += 1;
            }
        }
    }
    if ends_with_bare_star {
        text.pop();
    }
    let kind = TokenKind::Quoted {
        text,
        prefix_wildcard: ends_with_bare_star,
    };
    Ok((kind, i + 1))
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser {
    tokens: Vec<Token>,
    next: usize,
    input_len: usize,
    depth: usize,
    restrictions: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn advance(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.next).cloned();
        if token.is_some() {
            self.next += 1;
        }
        token
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.peek().is_some_and(|t| t.is_keyword(keyword));
        if found {
            self.next += 1;
        }
        found
    }

    /// Position of the next token, or the end of the input.
    fn next_position(&self) -> usize {
        self.peek().map_or(self.input_len, |t| t.position)
    }

    /// " after 'AND'" and the like, naming the token before the current one.
    fn after_previous(&self) -> String {
        match self.next.checked_sub(1).and_then(|i| self.tokens.get(i)) {
            Some(previous) => format!(" after {}", previous.describe()),
            None => String::new(),
        }
    }

    fn parse_or(&mut self) -> Result<Expr, FilterError> {
        let mut terms = vec![self.parse_unary()?];
        while self.eat_keyword("OR") {
            terms.push(self.parse_unary()?);
        }
        Ok(unwrap_single(terms, Expr::Or))
    }

    fn parse_and(&mut self) -> Result<Expr, FilterError> {
        let mut terms = vec![self.parse_or()?];
        loop {
            let explicit_and = self.eat_keyword("AND");
            let starts_term = self.peek().is_some_and(|t| {
                !matches!(t.kind, TokenKind::RParen) && !t.is_keyword("OR") && !t.is_keyword("AND")
            });
            // Without AND, anything that can start a term is an implicit AND (AIP-160); with AND,
            // parse_unary reports whatever is missing.
            if explicit_and || starts_term {
                terms.push(self.parse_or()?);
            } else {
                return Ok(unwrap_single(terms, Expr::And));
            }
        }
    }

    fn parse_unary(&mut self) -> Result<Expr, FilterError> {
        let Some(token) = self.peek().cloned() else {
            return Err(FilterError::new(
                self.input_len,
                format!("expected a condition{}", self.after_previous()),
            ));
        };
        match token.kind {
            TokenKind::Minus => self.parse_negation(&token),
            TokenKind::Word(ref w) if w == "NOT" => self.parse_negation(&token),
            TokenKind::LParen => {
                self.enter_nesting(&token)?;
                self.next += 1;
                if self.peek().is_some_and(|t| t.kind == TokenKind::RParen) {
                    return Err(FilterError::new(
                        self.next_position(),
                        "empty parentheses; put a condition between '(' and ')'",
                    ));
                }
                let inner = self.parse_and()?;
                match self.advance() {
                    Some(Token {
                        kind: TokenKind::RParen,
                        ..
                    }) => {}
                    _ => {
                        return Err(FilterError::new(
                            self.input_len,
                            format!(
                                "expected ')' to close the '(' at position {}",
                                token.position
                            ),
                        ));
                    }
                }
                self.depth -= 1;
                Ok(inner)
            }
            _ => self.parse_restriction(),
        }
    }

    fn parse_negation(&mut self, operator: &Token) -> Result<Expr, FilterError> {
        self.enter_nesting(operator)?;
        self.next += 1;
        let inner = self.parse_unary()?;
        self.depth -= 1;
        Ok(Expr::Not(Box::new(inner)))
    }

    fn enter_nesting(&mut self, token: &Token) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_NESTING_DEPTH {
            return Err(FilterError::new(
                token.position,
                format!(
                    "filter is nested too deeply: at most {MAX_NESTING_DEPTH} levels of parentheses and NOT are allowed"
                ),
            ));
        }
        Ok(())
    }

    fn parse_restriction(&mut self) -> Result<Expr, FilterError> {
        let after = self.after_previous();
        let Some(field_token) = self.advance() else {
            return Err(FilterError::new(
                self.input_len,
                format!("expected a condition{after}"),
            ));
        };
        let field = match &field_token.kind {
            TokenKind::Word(w) if w == "AND" || w == "OR" => {
                return Err(FilterError::new(
                    field_token.position,
                    format!("expected a condition{after}, found '{w}'"),
                ));
            }
            TokenKind::RParen => {
                return Err(FilterError::new(
                    field_token.position,
                    format!("expected a condition{after}, found ')'"),
                ));
            }
            TokenKind::Word(w) if w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => {
                w.clone()
            }
            TokenKind::Quoted { .. } => {
                return Err(FilterError::new(
                    field_token.position,
                    "expected a field name, found a quoted string; free-text search is not supported, compare a field instead, e.g. display_name:\"Ann\"",
                ));
            }
            TokenKind::Op(op) => {
                return Err(FilterError::new(
                    field_token.position,
                    format!("expected a field name before '{}'", op.symbol()),
                ));
            }
            _ => {
                return Err(FilterError::new(
                    field_token.position,
                    format!("expected a field name, found {}", field_token.describe()),
                ));
            }
        };

        self.restrictions += 1;
        if self.restrictions > MAX_RESTRICTIONS {
            return Err(FilterError::new(
                field_token.position,
                format!("filter has too many conditions: at most {MAX_RESTRICTIONS} are allowed"),
            ));
        }

        let op_position = self.next_position();
        let op = match self.peek().map(|t| &t.kind) {
            Some(TokenKind::Op(op)) => *op,
            _ if ["AND", "OR", "NOT"]
                .iter()
                .any(|k| field.eq_ignore_ascii_case(k)) =>
            {
                return Err(FilterError::new(
                    field_token.position,
                    format!("'{field}' is not an operator; write AND, OR and NOT in upper case"),
                ));
            }
            _ => {
                return Err(FilterError::new(
                    op_position,
                    format!("expected an operator (=, !=, <, <=, >, >=, :) after '{field}'"),
                ));
            }
        };
        self.next += 1;
        let value = self.parse_value(op)?;
        Ok(Expr::Restriction(Restriction {
            field,
            field_position: field_token.position,
            op,
            op_position,
            value,
        }))
    }

    fn parse_value(&mut self, op: CompareOp) -> Result<Literal, FilterError> {
        let expected = format!("expected a value after '{}'", op.symbol());
        let Some(token) = self.advance() else {
            return Err(FilterError::new(self.input_len, expected));
        };
        match token.kind {
            TokenKind::Quoted {
                text,
                prefix_wildcard,
            } => Ok(Literal {
                text,
                quoted: true,
                prefix_wildcard,
                position: token.position,
            }),
            TokenKind::Word(word) if matches!(word.as_str(), "AND" | "OR" | "NOT") => {
                Err(FilterError::new(
                    token.position,
                    format!(
                        "{expected}, found '{word}'; write \"{word}\" in quotes to mean the text"
                    ),
                ))
            }
            TokenKind::Word(word) => Ok(Literal {
                text: word,
                quoted: false,
                prefix_wildcard: false,
                position: token.position,
            }),
            // A minus directly followed by a word is a negative number such as `-5`.
            TokenKind::Minus => match self.peek().cloned() {
                Some(Token {
                    kind: TokenKind::Word(word),
                    position,
                    ..
                }) if position == token.end => {
                    self.next += 1;
                    Ok(Literal {
                        text: format!("-{word}"),
                        quoted: false,
                        prefix_wildcard: false,
                        position: token.position,
                    })
                }
                _ => Err(FilterError::new(token.position, expected)),
            },
            _ => Err(FilterError::new(token.position, expected)),
        }
    }
}

/// Avoids a one-element And/Or wrapper around a lone term.
fn unwrap_single(mut terms: Vec<Expr>, combine: fn(Vec<Expr>) -> Expr) -> Expr {
    if terms.len() == 1 {
        terms.remove(0)
    } else {
        combine(terms)
    }
}

// ---------------------------------------------------------------------------------------------
// SQL generation

struct SqlCompiler<'a> {
    schema: &'a FilterSchema,
    next_param: usize,
    params: Vec<SqlValue>,
}

impl SqlCompiler<'_> {
    fn bind(&mut self, value: SqlValue) -> String {
        let placeholder = format!("${}", self.next_param);
        self.next_param += 1;
        self.params.push(value);
        placeholder
    }

    fn expr(&mut self, expr: &Expr) -> Result<String, FilterError> {
        Ok(match expr {
            Expr::True => "TRUE".to_owned(),
            // Empty lists only come from hand-built trees; give them their logical identity
            // rather than the invalid SQL "()".
            Expr::And(terms) if terms.is_empty() => "TRUE".to_owned(),
            Expr::Or(terms) if terms.is_empty() => "FALSE".to_owned(),
            Expr::And(terms) => self.join(terms, " AND ")?,
            Expr::Or(terms) => self.join(terms, " OR ")?,
            Expr::Not(inner) => format!("(NOT {})", self.expr(inner)?),
            Expr::Restriction(restriction) => self.restriction(restriction)?,
        })
    }

    fn join(&mut self, terms: &[Expr], separator: &str) -> Result<String, FilterError> {
        let parts = terms
            .iter()
            .map(|term| self.expr(term))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(format!("({})", parts.join(separator)))
    }

    fn restriction(&mut self, r: &Restriction) -> Result<String, FilterError> {
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

    fn column(&mut self, field: &SchemaField, r: &Restriction) -> Result<String, FilterError> {
        let (name, field_type, lhs) = (field.name, field.field_type, field.sql);
        if r.value.prefix_wildcard && field_type != FieldType::Text {
            return Err(FilterError::new(
                r.value.position,
                format!(
                    "'{name}' is a {} field; a trailing '*' (prefix match) only works on text fields",
                    field_type.describe()
                ),
            ));
        }
        let value = &r.value;
        let param = match field_type {
            FieldType::Text => return self.text_condition(lhs, r),
            FieldType::TextArray => {
                require_op(r, field_type, &[CompareOp::Has, CompareOp::Eq])?;
                let param = self.bind(SqlValue::Text(value.text.clone()));
                return Ok(format!("({param} = ANY({lhs}))"));
            }
            FieldType::Integer => {
                require_op(r, field_type, CompareOp::ORDERING)?;
                let number = parse_integer(&value.text)
                    .ok_or_else(|| type_error(name, "an integer, e.g. 42", value))?;
                SqlValue::Int(number)
            }
            FieldType::Float => {
                require_op(r, field_type, CompareOp::ORDERING)?;
                let number = parse_decimal(&value.text)
                    .ok_or_else(|| type_error(name, "a number, e.g. 4.5", value))?;
                SqlValue::Float(number)
            }
            FieldType::Bool => {
                require_op(r, field_type, CompareOp::EQUALITY)?;
                let flag = parse_bool(&value.text)
                    .ok_or_else(|| type_error(name, "true or false", value))?;
                SqlValue::Bool(flag)
            }
            FieldType::Timestamp => {
                require_op(r, field_type, CompareOp::ORDERING)?;
                let time = DateTime::parse_from_rfc3339(&value.text)
                    .map_err(|_| {
                        type_error(
                            name,
                            "an RFC 3339 timestamp in double quotes, e.g. \"2024-01-31T09:00:00Z\"",
                            value,
                        )
                    })?
                    .with_timezone(&Utc);
                SqlValue::Timestamp(time)
            }
            FieldType::Enum(allowed) => {
                require_op(r, field_type, CompareOp::EQUALITY)?;
                if !allowed.contains(&value.text.as_str()) {
                    let expected = format!("one of {}", allowed.join(", "));
                    return Err(type_error(name, &expected, value));
                }
                SqlValue::Text(value.text.clone())
            }
            FieldType::Uuid => {
                require_op(r, field_type, CompareOp::EQUALITY)?;
                let id = Uuid::parse_str(&value.text).map_err(|_| {
                    type_error(
                        name,
                        "a UUID, e.g. \"0190f3a4-8c1e-7b52-9d3f-2a6c4e8b1f07\"",
                        value,
                    )
                })?;
                SqlValue::Uuid(id)
            }
        };
        let placeholder = self.bind(param);
        Ok(format!("({lhs} {} {placeholder})", r.op.sql()))
    }

    /// Text semantics: `=` exact or, with a trailing `*`, case-insensitive prefix; `:`
    /// case-insensitive substring; everything else plain SQL comparison.
    fn text_condition(&mut self, lhs: &str, r: &Restriction) -> Result<String, FilterError> {
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
        let placeholder = self.bind(SqlValue::Text(param));
        Ok(format!("({lhs} {operator} {placeholder})"))
    }

    /// `attributes:plan` — the key is present (even if its JSON value is null).
    fn map_has_key(&mut self, map: &SchemaMap, r: &Restriction) -> Result<String, FilterError> {
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
        let key = self.bind(SqlValue::Text(r.value.text.clone()));
        Ok(format!("(({} -> {key}) IS NOT NULL)", map.sql))
    }

    fn map_key(
        &mut self,
        map: &SchemaMap,
        key: &str,
        key_position: usize,
        r: &Restriction,
    ) -> Result<String, FilterError> {
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
        let key_param = self.bind(SqlValue::Text(key.to_owned()));
        let Some((json_type, param)) = typed else {
            return self.text_condition(&format!("({map_sql} ->> {key_param})"), r);
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
        let value_param = self.bind(param);
        // The CASE keeps the cast from raising an error (and failing the whole query) on rows
        // where the attribute holds another JSON type; those rows simply don't match.
        Ok(format!(
            "(CASE WHEN jsonb_typeof({map_sql} -> {key_param}) = '{json_type}' THEN ({map_sql} ->> {key_param})::{cast} END {} {value_param})",
            r.op.sql()
        ))
    }
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

/// Escapes LIKE metacharacters with a backslash, PostgreSQL's default LIKE escape character
/// (so no ESCAPE clause is needed, and none whose meaning depends on
/// standard_conforming_strings).
fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `-?[0-9]+` within i64 range; stricter than `str::parse`, which also takes a leading `+`.
fn parse_integer(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?`, finite. `str::parse` alone would also accept `inf`
/// and `NaN`.
fn parse_decimal(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((whole, fraction)) => all_digits(whole) && all_digits(fraction),
        None => all_digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| all_digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    if !mantissa_ok || !exponent_ok {
        return None;
    }
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAGES: &[&str] = &["LEAD", "CUSTOMER", "CHURNED"];

    fn schema() -> FilterSchema {
        FilterSchema::new()
            .field("display_name", FieldType::Text, "c.display_name")
            .field("lifetime_orders", FieldType::Integer, "c.lifetime_orders")
            .field("score", FieldType::Float, "c.score")
            .field("is_vip", FieldType::Bool, "c.is_vip")
            .field("create_time", FieldType::Timestamp, "c.create_time")
            .field(
                "lifecycle_stage",
                FieldType::Enum(STAGES),
                "c.lifecycle_stage",
            )
            .field("tags", FieldType::TextArray, "c.tags")
            .field("owner_id", FieldType::Uuid, "c.owner_id")
            .map_field("attributes", "c.custom_attributes")
    }

    fn compile(filter: &str) -> Result<SqlFilter, FilterError> {
        to_sql(&parse(filter)?, &schema(), 1)
    }

    fn text(value: &str) -> SqlValue {
        SqlValue::Text(value.to_owned())
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

    /// The AST without source positions, to compare shapes.
    fn shape(expr: &Expr) -> String {
        match expr {
            Expr::True => "TRUE".to_owned(),
            Expr::And(terms) => format!(
                "and({})",
                terms.iter().map(shape).collect::<Vec<_>>().join(", ")
            ),
            Expr::Or(terms) => format!(
                "or({})",
                terms.iter().map(shape).collect::<Vec<_>>().join(", ")
            ),
            Expr::Not(inner) => format!("not({})", shape(inner)),
            Expr::Restriction(r) => format!("{}{}{}", r.field, r.op.symbol(), r.value.text),
        }
    }

    fn parse_error(filter: &str) -> FilterError {
        parse(filter).expect_err("filter should not parse")
    }

    fn compile_error(filter: &str) -> FilterError {
        compile(filter).expect_err("filter should not compile")
    }

    // --- Parsing ------------------------------------------------------------------------------

    #[test]
    fn empty_or_blank_input_matches_everything() {
        let parsed = [parse("").unwrap(), parse(" \t\n ").unwrap()];

        assert_eq!(parsed, [Expr::True, Expr::True]);
        let compiled = to_sql(&Expr::True, &schema(), 1).unwrap();
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
    fn adjacent_restrictions_are_joined_with_an_implicit_and() {
        let expr = parse("a = 1 b = 2 OR c = 3").unwrap();

        assert_eq!(shape(&expr), "and(a=1, or(b=2, c=3))");
    }

    #[test]
    fn not_and_minus_both_negate_the_following_term() {
        let expr = parse("NOT a = 1 -b = 2").unwrap();

        assert_eq!(shape(&expr), "and(not(a=1), not(b=2))");
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
    fn positions_count_characters_not_bytes() {
        let error = parse_error("display_name = \"Zoë\" AND");

        assert_eq!(error.position, 24);
    }

    // --- Syntax errors ------------------------------------------------------------------------

    #[test]
    fn errors_display_their_position_first() {
        let error = parse_error("display_name =");

        assert_eq!(
            error.to_string(),
            "at position 14: expected a value after '='"
        );
    }

    #[test]
    fn a_missing_operator_is_reported_after_the_field() {
        let error = parse_error("display_name \"Ann\"");

        assert_eq!(error.position, 13);
        assert_eq!(
            error.message,
            "expected an operator (=, !=, <, <=, >, >=, :) after 'display_name'"
        );
    }

    #[test]
    fn a_keyword_in_value_position_asks_for_quotes() {
        let error = parse_error("display_name = AND");

        assert_eq!(error.position, 15);
        assert!(
            error.message.contains("write \"AND\" in quotes"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_unterminated_string_points_at_its_opening_quote() {
        let error = parse_error("display_name = \"Ann");

        assert_eq!(error.position, 15);
        assert!(
            error.message.starts_with("unterminated string"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_unknown_escape_points_at_the_backslash() {
        let error = parse_error(r#"display_name = "a\qb""#);

        assert_eq!(error.position, 17);
        assert!(
            error.message.starts_with("unknown escape sequence"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_unmatched_closing_parenthesis_is_reported() {
        let error = parse_error("a = 1)");

        assert_eq!(error.position, 5);
        assert_eq!(error.message, "unexpected ')' without a matching '('");
    }

    #[test]
    fn an_unclosed_parenthesis_is_reported_at_the_end() {
        let error = parse_error("(a = 1 OR b = 2");

        assert_eq!(error.position, 15);
        assert_eq!(error.message, "expected ')' to close the '(' at position 0");
    }

    #[test]
    fn empty_parentheses_are_rejected() {
        let error = parse_error("a = 1 AND ()");

        assert_eq!(error.position, 11);
        assert!(
            error.message.starts_with("empty parentheses"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_dangling_keyword_needs_a_condition_after_it() {
        let error = parse_error("a = 1 AND");

        assert_eq!(error.position, 9);
        assert_eq!(error.message, "expected a condition after 'AND'");
    }

    #[test]
    fn a_closing_parenthesis_right_after_a_keyword_is_reported() {
        let error = parse_error("(a = 1 OR)");

        assert_eq!(error.position, 9);
        assert_eq!(error.message, "expected a condition after 'OR', found ')'");
    }

    #[test]
    fn a_leading_keyword_needs_a_condition_before_it() {
        let error = parse_error("OR a = 1");

        assert_eq!(error.position, 0);
        assert_eq!(error.message, "expected a condition, found 'OR'");
    }

    #[test]
    fn a_lone_exclamation_mark_suggests_not_equal() {
        let error = parse_error("a ! 1");

        assert_eq!(error.position, 2);
        assert!(error.message.contains("use != "), "{}", error.message);
    }

    #[test]
    fn a_quoted_string_cannot_stand_alone_as_a_condition() {
        let error = parse_error("\"Ann\"");

        assert_eq!(error.position, 0);
        assert!(
            error.message.contains("free-text search is not supported"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_operator_without_a_field_is_reported() {
        let error = parse_error("= 5");

        assert_eq!(error.position, 0);
        assert_eq!(error.message, "expected a field name before '='");
    }

    #[test]
    fn a_wildcard_in_a_bare_word_is_rejected() {
        let error = parse_error("display_name = Ann*");

        assert_eq!(error.position, 18);
        assert!(error.message.contains("quoted value"), "{}", error.message);
    }

    #[test]
    fn single_quotes_are_rejected_with_a_hint() {
        let error = parse_error("display_name = 'Ann'");

        assert_eq!(error.position, 15);
        assert!(error.message.contains("double quotes"), "{}", error.message);
    }

    #[test]
    fn lower_case_keywords_get_a_hint() {
        let error = parse_error("a = 1 and b = 2");

        assert_eq!(error.position, 6);
        assert!(error.message.contains("upper case"), "{}", error.message);
    }

    // --- Limits -------------------------------------------------------------------------------

    #[test]
    fn input_of_the_maximum_length_is_accepted_and_longer_is_rejected() {
        let longest = format!("display_name = \"{}\"", "x".repeat(MAX_FILTER_CHARS - 17));
        let too_long = format!("{longest} ");

        assert!(parse(&longest).is_ok());
        let error = parse_error(&too_long);
        assert_eq!(error.position, MAX_FILTER_CHARS);
        assert_eq!(
            error.message,
            "filter is too long: 2001 characters, at most 2000 are allowed"
        );
    }

    #[test]
    fn nesting_beyond_the_limit_is_rejected_at_the_offending_parenthesis() {
        let nested = |depth: usize| format!("{}a = 1{}", "(".repeat(depth), ")".repeat(depth));

        assert!(parse(&nested(MAX_NESTING_DEPTH)).is_ok());
        let error = parse_error(&nested(MAX_NESTING_DEPTH + 1));
        assert_eq!(error.position, MAX_NESTING_DEPTH);
        assert!(
            error.message.contains("nested too deeply"),
            "{}",
            error.message
        );
    }

    #[test]
    fn negations_count_towards_the_nesting_limit() {
        let negated = "NOT ".repeat(MAX_NESTING_DEPTH + 1) + "a = 1";

        let error = parse_error(&negated);

        assert_eq!(error.position, 4 * MAX_NESTING_DEPTH);
    }

    #[test]
    fn more_restrictions_than_the_limit_are_rejected_at_the_first_extra_one() {
        let conditions = |n: usize| vec!["a = 1"; n].join(" AND ");

        assert!(parse(&conditions(MAX_RESTRICTIONS)).is_ok());
        let error = parse_error(&conditions(MAX_RESTRICTIONS + 1));
        assert_eq!(error.position, MAX_RESTRICTIONS * "a = 1 AND ".len());
        assert!(error.message.contains("at most 50"), "{}", error.message);
    }

    // --- Fields and types ---------------------------------------------------------------------

    #[test]
    fn an_unknown_field_is_reported_at_the_field_with_the_accepted_fields() {
        let error = compile_error("is_vip = true AND colour = red");

        assert_eq!(error.position, 18);
        assert_eq!(
            error.message,
            "unknown field 'colour'; you can filter on: display_name, lifetime_orders, score, \
             is_vip, create_time, lifecycle_stage, tags, owner_id, attributes.<key>"
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
        ];

        for filter in bad_filters {
            let message = compile_error(filter).message;

            assert!(!message.contains("c."), "{filter}: {message}");
            assert!(!message.contains('$'), "{filter}: {message}");
        }
    }

    #[test]
    fn text_fields_compare_exactly_and_order_as_text() {
        let compiled =
            compile("display_name = Ann display_name != \"Bo\" display_name >= M").unwrap();

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
    fn enum_fields_accept_listed_names_as_stored_text() {
        let compiled =
            compile("lifecycle_stage = CUSTOMER OR lifecycle_stage != \"LEAD\"").unwrap();

        assert_eq!(
            compiled.sql,
            "((c.lifecycle_stage = $1) OR (c.lifecycle_stage <> $2))"
        );
        assert_eq!(compiled.params, [text("CUSTOMER"), text("LEAD")]);
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
    fn uuid_fields_parse_uuids_and_reject_other_text() {
        let id = "0190f3a4-8c1e-7b52-9d3f-2a6c4e8b1f07";
        let compiled = compile(&format!("owner_id = {id}")).unwrap();
        let error = compile_error("owner_id = \"me\"");

        assert_eq!(
            compiled.params,
            [SqlValue::Uuid(Uuid::parse_str(id).unwrap())]
        );
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

    #[test]
    fn placeholders_are_numbered_from_the_first_param() {
        let expr = parse("display_name = Ann AND lifetime_orders = 3").unwrap();

        let compiled = to_sql(&expr, &schema(), 4).unwrap();

        assert_eq!(
            compiled.sql,
            "((c.display_name = $4) AND (c.lifetime_orders = $5))"
        );
    }

    #[test]
    fn hand_built_empty_groups_compile_to_their_identity() {
        let expr = Expr::Or(vec![Expr::And(vec![]), Expr::Or(vec![])]);

        let compiled = to_sql(&expr, &schema(), 1).unwrap();

        assert_eq!(compiled.sql, "(TRUE OR FALSE)");
    }

    #[test]
    fn a_hand_built_expression_compiles_like_a_parsed_one() {
        let expr = Expr::Not(Box::new(restriction("is_vip", CompareOp::Eq, "true")));

        let compiled = to_sql(&expr, &schema(), 1).unwrap();

        assert_eq!(compiled.sql, "(NOT (c.is_vip = $1))");
    }

    // --- Map fields ---------------------------------------------------------------------------

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
             THEN (c.custom_attributes ->> $1)::numeric END > $2)"
        );
        assert_eq!(compiled.params, [text("seats"), SqlValue::Int(10)]);
    }

    #[test]
    fn attribute_booleans_compare_as_booleans_and_quoted_ones_as_text() {
        let boolean = compile("attributes.trial = false").unwrap();
        let quoted = compile("attributes.trial = \"false\"").unwrap();

        assert_eq!(
            boolean.sql,
            "(CASE WHEN jsonb_typeof(c.custom_attributes -> $1) = 'boolean' \
             THEN (c.custom_attributes ->> $1)::boolean END = $2)"
        );
        assert_eq!(boolean.params, [text("trial"), SqlValue::Bool(false)]);
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

    // --- order_by -----------------------------------------------------------------------------

    const ORDERABLE: &[&str] = &["display_name", "create_time", "lifetime_orders"];

    #[test]
    fn order_by_reads_fields_with_optional_case_insensitive_directions() {
        let terms = parse_order_by(
            " display_name DESC,create_time ,lifetime_orders asc",
            ORDERABLE,
        )
        .unwrap();

        let expected = [
            ("display_name", true),
            ("create_time", false),
            ("lifetime_orders", false),
        ];
        let actual: Vec<_> = terms
            .iter()
            .map(|t| (t.field.as_str(), t.descending))
            .collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn an_empty_order_by_gives_no_terms() {
        let terms = parse_order_by("  ", ORDERABLE).unwrap();

        assert!(terms.is_empty());
    }

    #[test]
    fn order_by_rejects_fields_that_are_not_allowed_listing_the_allowed_ones() {
        let error = parse_order_by("create_time, email desc", ORDERABLE).unwrap_err();

        assert_eq!(error.position, 13);
        assert_eq!(
            error.message,
            "cannot order by 'email'; allowed fields are: display_name, create_time, lifetime_orders"
        );
    }

    #[test]
    fn order_by_rejects_a_repeated_field() {
        let error = parse_order_by("create_time, create_time desc", ORDERABLE).unwrap_err();

        assert_eq!(error.position, 13);
        assert_eq!(
            error.message,
            "'create_time' appears more than once in order_by"
        );
    }

    #[test]
    fn order_by_rejects_an_unknown_direction() {
        let error = parse_order_by("create_time descending", ORDERABLE).unwrap_err();

        assert_eq!(error.position, 12);
        assert_eq!(
            error.message,
            "expected asc or desc after 'create_time', found 'descending'"
        );
    }

    #[test]
    fn order_by_rejects_empty_items() {
        let doubled_comma = parse_order_by("create_time,,display_name", ORDERABLE).unwrap_err();
        let trailing_comma = parse_order_by("create_time,", ORDERABLE).unwrap_err();

        assert_eq!(doubled_comma.position, 12);
        assert_eq!(trailing_comma.position, 12);
        assert!(doubled_comma.message.starts_with("expected a field name"));
    }

    #[test]
    fn order_by_rejects_words_after_the_direction() {
        let error = parse_order_by("create_time desc display_name", ORDERABLE).unwrap_err();

        assert_eq!(error.position, 17);
        assert!(
            error.message.contains("separate fields with commas"),
            "{}",
            error.message
        );
    }

    #[test]
    fn order_by_is_not_supported_when_nothing_is_allowed() {
        let error = parse_order_by("create_time", &[]).unwrap_err();

        assert_eq!(error.message, "this method does not support order_by");
    }

    // --- Robustness ---------------------------------------------------------------------------

    #[test]
    fn random_garbage_never_panics_and_errors_point_inside_the_input() {
        const PIECES: &[&str] = &[
            "display_name",
            "tags",
            "attributes.",
            "attributes",
            "plan",
            "is_vip",
            "create_time",
            "lifecycle_stage",
            "CUSTOMER",
            "AND",
            "OR",
            "NOT",
            "and",
            "(",
            ")",
            "-",
            "\"",
            "\\",
            "=",
            "!=",
            "!",
            "<",
            "<=",
            ">",
            ">=",
            ":",
            "*",
            "1",
            "-7",
            "1.5",
            "1e999",
            "true",
            " ",
            "  ",
            ".",
            ",",
            "'",
            "é",
            "日本",
            "\n",
            "x_y",
            "%",
            "_",
            "asc",
            "desc",
            "$1",
        ];
        // xorshift64*: deterministic, so a failure is reproducible.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let schema = schema();
        let mut compiled_ok = 0;

        for _ in 0..20_000 {
            let piece_count = next() % 24;
            let input: String = (0..piece_count)
                .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                .collect();
            let input_chars = input.chars().count();

            let outcome = parse(&input).and_then(|expr| to_sql(&expr, &schema, 1));
            let order_by = parse_order_by(&input, &["display_name", "create_time"]);

            match outcome {
                Ok(filter) => {
                    compiled_ok += 1;
                    let placeholders = filter.sql.matches('$').count();
                    assert!(placeholders >= filter.params.len(), "{input:?}");
                }
                Err(error) => assert!(error.position <= input_chars, "{input:?}: {error}"),
            }
            if let Err(error) = order_by {
                assert!(error.position <= input_chars, "{input:?}: {error}");
            }
        }
        // Guard against a generator so broken that nothing ever parses.
        assert!(compiled_ok > 0);
    }
}
