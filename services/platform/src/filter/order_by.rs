//! [AIP-132](https://google.aip.dev/132#ordering) `order_by`: `field [asc|desc]`, comma
//! separated, from the fields a List declares.

use std::collections::HashSet;

use super::{FilterError, MAX_ORDER_BY_CHARS, check_length, quote_for_message};

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
/// an empty list. At most [`MAX_ORDER_BY_CHARS`] characters.
pub fn parse_order_by(input: &str, allowed: &[&str]) -> Result<Vec<OrderTerm>, FilterError> {
    let chars: Vec<char> = input.chars().collect();
    check_length(&chars, "order_by", MAX_ORDER_BY_CHARS)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn order_by_keeps_its_own_2000_character_limit() {
        let padded = |len: usize| format!("create_time{}", " ".repeat(len - 11));

        assert!(parse_order_by(&padded(MAX_ORDER_BY_CHARS), ORDERABLE).is_ok());
        let error = parse_order_by(&padded(MAX_ORDER_BY_CHARS + 1), ORDERABLE).unwrap_err();
        assert_eq!(error.position, 2_000);
        assert_eq!(
            error.message,
            "order_by is too long: 2001 characters, at most 2000 are allowed"
        );
    }
}
