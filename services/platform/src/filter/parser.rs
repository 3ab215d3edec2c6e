//! Tokens → [`Expr`]: precedence (OR binds tighter than AND, as in AIP-160), implicit AND,
//! negation, parentheses, and the nesting and restriction limits.

use super::lexer::{Token, TokenKind, tokenize};
use super::{FilterError, MAX_FILTER_CHARS, MAX_NESTING_DEPTH, MAX_RESTRICTIONS, check_length};

/// A parsed filter. Source positions are kept so that [`to_sql`](super::to_sql) can point at
/// the culprit.
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
    /// The dotted field path as written, e.g. `attributes.plan` or `owner.kind`.
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
    pub(super) const ORDERING: &[CompareOp] = &[
        CompareOp::Eq,
        CompareOp::Ne,
        CompareOp::Lt,
        CompareOp::Le,
        CompareOp::Gt,
        CompareOp::Ge,
    ];
    pub(super) const EQUALITY: &[CompareOp] = &[CompareOp::Eq, CompareOp::Ne];
    pub(super) const MEMBERSHIP: &[CompareOp] = &[CompareOp::Has, CompareOp::Eq];

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

    pub(super) fn sql(self) -> &'static str {
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

/// Parses a filter. Empty or all-whitespace input gives [`Expr::True`].
pub fn parse(input: &str) -> Result<Expr, FilterError> {
    let chars: Vec<char> = input.chars().collect();
    check_length(&chars, "filter", MAX_FILTER_CHARS)?;
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
        // parse_and stops only at the end or at a ')' it has no '(' for.
        Some(token) => Err(FilterError::new(
            token.position,
            "unexpected ')' without a matching '('",
        )),
    }
}

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
            TokenKind::LParen => self.parse_parenthesised(&token),
            _ => self.parse_restriction(),
        }
    }

    fn parse_parenthesised(&mut self, open: &Token) -> Result<Expr, FilterError> {
        self.enter_nesting(open)?;
        self.next += 1;
        if self.peek().is_some_and(|t| t.kind == TokenKind::RParen) {
            return Err(FilterError::new(
                self.next_position(),
                "empty parentheses; put a condition between '(' and ')'",
            ));
        }
        let inner = self.parse_and()?;
        if !self.advance().is_some_and(|t| t.kind == TokenKind::RParen) {
            return Err(FilterError::new(
                self.input_len,
                format!(
                    "expected ')' to close the '(' at position {}",
                    open.position
                ),
            ));
        }
        self.depth -= 1;
        Ok(inner)
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
        let (field, field_position) = self.parse_field()?;
        self.restrictions += 1;
        if self.restrictions > MAX_RESTRICTIONS {
            return Err(FilterError::new(
                field_position,
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
                    field_position,
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
            field_position,
            op,
            op_position,
            value,
        }))
    }

    /// The field name that starts a restriction: a word beginning with a letter or `_`; dotted
    /// paths (`owner.kind`, `attributes.plan`) are one word, resolved later by the schema.
    fn parse_field(&mut self) -> Result<(String, usize), FilterError> {
        let after = self.after_previous();
        let Some(token) = self.advance() else {
            return Err(FilterError::new(
                self.input_len,
                format!("expected a condition{after}"),
            ));
        };
        let message = match &token.kind {
            TokenKind::Word(w) if w == "AND" || w == "OR" => {
                format!("expected a condition{after}, found '{w}'")
            }
            TokenKind::RParen => format!("expected a condition{after}, found ')'"),
            TokenKind::Word(w) if w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => {
                return Ok((w.clone(), token.position));
            }
            TokenKind::Quoted { .. } => "expected a field name, found a quoted string; free-text search is not supported, compare a field instead, e.g. display_name:\"Ann\"".to_owned(),
            TokenKind::Op(op) => format!("expected a field name before '{}'", op.symbol()),
            _ => format!("expected a field name, found {}", token.describe()),
        };
        Err(FilterError::new(token.position, message))
    }

    fn parse_value(&mut self, op: CompareOp) -> Result<Literal, FilterError> {
        let expected = format!("expected a value after '{}'", op.symbol());
        let Some(token) = self.advance() else {
            return Err(FilterError::new(self.input_len, expected));
        };
        let literal = |text, quoted, prefix_wildcard| Literal {
            text,
            quoted,
            prefix_wildcard,
            position: token.position,
        };
        match &token.kind {
            TokenKind::Quoted {
                text,
                prefix_wildcard,
            } => Ok(literal(text.clone(), true, *prefix_wildcard)),
            TokenKind::Word(word) if matches!(word.as_str(), "AND" | "OR" | "NOT") => {
                Err(FilterError::new(
                    token.position,
                    format!(
                        "{expected}, found '{word}'; write \"{word}\" in quotes to mean the text"
                    ),
                ))
            }
            TokenKind::Word(word) => Ok(literal(word.clone(), false, false)),
            // A minus directly followed by a word is a negative number such as `-5` or `-1.5s`.
            TokenKind::Minus => match self.peek() {
                Some(Token {
                    kind: TokenKind::Word(word),
                    position,
                    ..
                }) if *position == token.end => {
                    let text = format!("-{word}");
                    self.next += 1;
                    Ok(literal(text, false, false))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The AST without source positions, to compare shapes.
    fn shape(expr: &Expr) -> String {
        let list = |terms: &[Expr]| terms.iter().map(shape).collect::<Vec<_>>().join(", ");
        match expr {
            Expr::True => "TRUE".to_owned(),
            Expr::And(terms) => format!("and({})", list(terms)),
            Expr::Or(terms) => format!("or({})", list(terms)),
            Expr::Not(inner) => format!("not({})", shape(inner)),
            Expr::Restriction(r) => format!("{}{}{}", r.field, r.op.symbol(), r.value.text),
        }
    }

    fn parse_error(filter: &str) -> FilterError {
        parse(filter).expect_err("filter should not parse")
    }

    // --- Structure ----------------------------------------------------------------------------

    #[test]
    fn empty_or_blank_input_matches_everything() {
        let parsed = [parse("").unwrap(), parse(" \t\n ").unwrap()];

        assert_eq!(parsed, [Expr::True, Expr::True]);
    }

    #[test]
    fn or_binds_tighter_than_and_as_in_aip_160() {
        let expr = parse("a = 1 OR b = 2 AND c = 3").unwrap();

        assert_eq!(shape(&expr), "and(or(a=1, b=2), c=3)");
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
        let expr = parse("(a = 1 OR b = 2) AND NOT (c:d OR (e >= 2))").unwrap();

        assert_eq!(shape(&expr), "and(or(a=1, b=2), not(or(c:d, e>=2)))");
    }

    #[test]
    fn dotted_message_paths_are_field_names() {
        let expr =
            parse("owner.kind = TEAM skills.name:\"french\" amount.currency_code = EUR").unwrap();

        assert_eq!(
            shape(&expr),
            "and(owner.kind=TEAM, skills.name:french, amount.currency_code=EUR)"
        );
    }

    #[test]
    fn a_minus_directly_before_a_word_makes_it_negative() {
        let expr = parse("lifetime_orders >= -5 wait < -1.5s").unwrap();

        assert_eq!(shape(&expr), "and(lifetime_orders>=-5, wait<-1.5s)");
    }

    #[test]
    fn quoted_values_remember_that_they_were_quoted() {
        let Expr::Restriction(r) = parse("d = \"2026-01-31\"").unwrap() else {
            panic!("expected a restriction");
        };

        assert!(r.value.quoted);
        assert_eq!(r.value.position, 4);
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
    fn a_field_must_start_with_a_letter_or_underscore() {
        let error = parse_error("a = 1 AND 9lives = 2");

        assert_eq!(error.position, 10);
        assert_eq!(error.message, "expected a field name, found '9lives'");
    }

    #[test]
    fn lower_case_keywords_get_a_hint() {
        let error = parse_error("a = 1 and b = 2");

        assert_eq!(error.position, 6);
        assert!(error.message.contains("upper case"), "{}", error.message);
    }

    // --- Limits -------------------------------------------------------------------------------

    #[test]
    fn a_filter_of_exactly_4000_characters_is_accepted() {
        let longest = format!("display_name = \"{}\"", "x".repeat(4_000 - 17));

        assert_eq!(longest.chars().count(), 4_000);
        assert_eq!(MAX_FILTER_CHARS, 4_000);
        assert!(parse(&longest).is_ok());
    }

    #[test]
    fn a_filter_of_4001_characters_is_rejected_at_position_4000() {
        let too_long = format!("display_name = \"{}\" ", "x".repeat(4_000 - 17));

        let error = parse_error(&too_long);

        assert_eq!(error.position, 4_000);
        assert_eq!(
            error.message,
            "filter is too long: 4001 characters, at most 4000 are allowed"
        );
    }

    #[test]
    fn the_length_limit_counts_characters_not_bytes() {
        let longest = format!("display_name = \"{}\"", "é".repeat(4_000 - 17));

        assert!(longest.len() > 4_000);
        assert!(parse(&longest).is_ok());
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
}
