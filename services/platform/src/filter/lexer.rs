//! Characters → tokens: parentheses, `-`, operators, bare words and double-quoted strings.
//!
//! A bare word runs until whitespace, a parenthesis, an operator character or a quote, so dotted
//! paths (`owner.kind`), UUIDs, dates, durations (`1.5s`) and negative numbers' digits are each
//! one word; what a word means is decided later, by the parser and the field's type.

use super::parser::CompareOp;
use super::{FilterError, quote_for_message};

#[derive(Debug, Clone, PartialEq)]
pub(super) enum TokenKind {
    LParen,
    RParen,
    Minus,
    Op(CompareOp),
    Word(String),
    Quoted { text: String, prefix_wildcard: bool },
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub(super) kind: TokenKind,
    pub(super) position: usize,
    /// Offset just past the token; lets the parser tell `-5` from `- 5`.
    pub(super) end: usize,
}

impl Token {
    pub(super) fn is_keyword(&self, keyword: &str) -> bool {
        matches!(&self.kind, TokenKind::Word(w) if w == keyword)
    }

    pub(super) fn describe(&self) -> String {
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

/// Splits `chars` into tokens; whitespace only separates.
pub(super) fn tokenize(chars: &[char]) -> Result<Vec<Token>, FilterError> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let (kind, end) = match chars[i] {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => (TokenKind::LParen, start + 1),
            ')' => (TokenKind::RParen, start + 1),
            '-' => (TokenKind::Minus, start + 1),
            '"' => lex_quoted(chars, start)?,
            '\'' => {
                return Err(FilterError::new(
                    start,
                    "strings must be in double quotes, e.g. display_name = \"Ann\"",
                ));
            }
            ':' | '=' | '!' | '<' | '>' => lex_operator(chars, start)?,
            _ => lex_word(chars, start)?,
        };
        tokens.push(Token {
            kind,
            position: start,
            end,
        });
        i = end;
    }
    Ok(tokens)
}

/// Lexes the operator starting at `start`; returns it and the offset after it.
fn lex_operator(chars: &[char], start: usize) -> Result<(TokenKind, usize), FilterError> {
    let or_equal = chars.get(start + 1) == Some(&'=');
    let (op, len) = match (chars[start], or_equal) {
        (':', _) => (CompareOp::Has, 1),
        ('=', _) => (CompareOp::Eq, 1),
        ('!', true) => (CompareOp::Ne, 2),
        ('<', false) => (CompareOp::Lt, 1),
        ('<', true) => (CompareOp::Le, 2),
        ('>', false) => (CompareOp::Gt, 1),
        ('>', true) => (CompareOp::Ge, 2),
        _ => {
            return Err(FilterError::new(
                start,
                "unexpected '!'; use != for \"not equal\" or NOT to negate a condition",
            ));
        }
    };
    Ok((TokenKind::Op(op), start + len))
}

/// Lexes the bare word starting at `start`; returns it and the offset after it.
fn lex_word(chars: &[char], start: usize) -> Result<(TokenKind, usize), FilterError> {
    let mut i = start;
    while i < chars.len() && is_word_char(chars[i]) {
        if chars[i] == '*' {
            return Err(FilterError::new(
                i,
                "'*' is only allowed at the end of a quoted value, for a prefix match such as display_name = \"Ann*\"",
            ));
        }
        i += 1;
    }
    Ok((TokenKind::Word(chars[start..i].iter().collect()), i))
}

/// Lexes the string whose opening quote is at `start`; returns it and the offset after it.
fn lex_quoted(chars: &[char], start: usize) -> Result<(TokenKind, usize), FilterError> {
    let unterminated = || {
        FilterError::new(
            start,
            "unterminated string: the '\"' here has no closing '\"'",
        )
    };
    let mut text = String::new();
    let mut ends_with_bare_star = false;
    let mut i = start + 1;
    loop {
        let c = *chars.get(i).ok_or_else(unterminated)?;
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
                    None => return Err(unterminated()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(input: &str) -> Result<Vec<TokenKind>, FilterError> {
        let chars: Vec<char> = input.chars().collect();
        Ok(tokenize(&chars)?.into_iter().map(|t| t.kind).collect())
    }

    fn lex_error(input: &str) -> FilterError {
        lex(input).expect_err("input should not lex")
    }

    fn word(text: &str) -> TokenKind {
        TokenKind::Word(text.to_owned())
    }

    #[test]
    fn operators_are_lexed_with_or_without_spaces() {
        let tokens = lex("a=1 b!=2 c<3 d<=4 e>5 f>=6 g:7").unwrap();

        let ops: Vec<_> = tokens
            .iter()
            .filter_map(|t| match t {
                TokenKind::Op(op) => Some(op.symbol()),
                _ => None,
            })
            .collect();
        assert_eq!(ops, ["=", "!=", "<", "<=", ">", ">=", ":"]);
    }

    #[test]
    fn dotted_paths_uuids_dates_and_durations_are_single_words() {
        let tokens =
            lex("owner.kind skills.name 0190f3a4-8c1e-7b52-9d3f-2a6c4e8b1f07 1.5s").unwrap();

        assert_eq!(
            tokens,
            [
                word("owner.kind"),
                word("skills.name"),
                word("0190f3a4-8c1e-7b52-9d3f-2a6c4e8b1f07"),
                word("1.5s"),
            ]
        );
    }

    #[test]
    fn a_leading_minus_is_its_own_token() {
        let tokens = lex("-a (b)").unwrap();

        assert_eq!(
            tokens,
            [
                TokenKind::Minus,
                word("a"),
                TokenKind::LParen,
                word("b"),
                TokenKind::RParen
            ]
        );
    }

    #[test]
    fn quoted_strings_resolve_backslash_escapes() {
        let tokens = lex(r#""say \"hi\"\\ \n\t\*""#).unwrap();

        assert_eq!(
            tokens,
            [TokenKind::Quoted {
                text: "say \"hi\"\\ \n\t*".to_owned(),
                prefix_wildcard: false,
            }]
        );
    }

    #[test]
    fn a_trailing_bare_star_asks_for_a_prefix_match() {
        let tokens = lex(r#""Ann*""#).unwrap();

        assert_eq!(
            tokens,
            [TokenKind::Quoted {
                text: "Ann".to_owned(),
                prefix_wildcard: true,
            }]
        );
    }

    #[test]
    fn an_unterminated_string_points_at_its_opening_quote() {
        let error = lex_error("display_name = \"Ann");

        assert_eq!(error.position, 15);
        assert!(
            error.message.starts_with("unterminated string"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_unknown_escape_points_at_the_backslash() {
        let error = lex_error(r#"display_name = "a\qb""#);

        assert_eq!(error.position, 17);
        assert!(
            error.message.starts_with("unknown escape sequence"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_lone_exclamation_mark_suggests_not_equal() {
        let error = lex_error("a ! 1");

        assert_eq!(error.position, 2);
        assert!(error.message.contains("use != "), "{}", error.message);
    }

    #[test]
    fn a_wildcard_in_a_bare_word_is_rejected() {
        let error = lex_error("display_name = Ann*");

        assert_eq!(error.position, 18);
        assert!(error.message.contains("quoted value"), "{}", error.message);
    }

    #[test]
    fn single_quotes_are_rejected_with_a_hint() {
        let error = lex_error("display_name = 'Ann'");

        assert_eq!(error.position, 15);
        assert!(error.message.contains("double quotes"), "{}", error.message);
    }
}
