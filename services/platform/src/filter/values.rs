//! Literal text → typed values, stricter than `str::parse` so that only what the grammar
//! documents is accepted. Each parser returns `None` or, where the caller deserves to know which
//! rule was broken, the phrase an error message completes ("field 'x' expects …").

use chrono::{NaiveDate, TimeDelta};

/// What a date value must look like, for error messages.
pub(super) const DATE_EXPECTED: &str = "a date in double quotes, e.g. \"2026-01-31\"";
/// What a duration value must look like, for error messages.
pub(super) const DURATION_EXPECTED: &str =
    "a duration in seconds with an 's' suffix, e.g. 90s or \"1.5s\"";

/// Most fractional digits of a duration: PostgreSQL intervals hold microseconds.
const MAX_DURATION_FRACTION_DIGITS: usize = 6;

pub(super) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `-?[0-9]+` within i64 range; stricter than `str::parse`, which also takes a leading `+`.
pub(super) fn parse_integer(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !all_digits(digits) {
        return None;
    }
    text.parse().ok()
}

/// `-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?`, finite. `str::parse` alone would also accept `inf`
/// and `NaN`.
pub(super) fn parse_decimal(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
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

/// Exactly `YYYY-MM-DD` naming a real day of years 1 to 9999 (the range of `google.type.Date`).
/// The error is the phrase for "expects …".
pub(super) fn parse_date(text: &str) -> Result<NaiveDate, &'static str> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && [&text[..4], &text[5..7], &text[8..]]
            .iter()
            .all(|part| all_digits(part));
    if !shaped {
        return Err(DATE_EXPECTED);
    }
    // The slices are ASCII digits, so these parses cannot fail.
    let year: i32 = text[..4].parse().map_err(|_| DATE_EXPECTED)?;
    let month: u32 = text[5..7].parse().map_err(|_| DATE_EXPECTED)?;
    let day: u32 = text[8..].parse().map_err(|_| DATE_EXPECTED)?;
    NaiveDate::from_ymd_opt(year, month, day)
        .filter(|_| year >= 1)
        .ok_or("a real calendar date (year 1 to 9999, month 01 to 12, a day the month has)")
}

/// `-?[0-9]+(\.[0-9]{1,6})?s`: seconds with an `s` suffix, to the microsecond, small enough for
/// a PostgreSQL interval to carry. The error is the phrase for "expects …".
pub(super) fn parse_duration(text: &str) -> Result<TimeDelta, &'static str> {
    let Some(number) = text.strip_suffix('s') else {
        return Err(DURATION_EXPECTED);
    };
    let (negative, unsigned) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number),
    };
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, "0"));
    if !all_digits(whole) || !all_digits(fraction) {
        return Err(DURATION_EXPECTED);
    }
    if fraction.len() > MAX_DURATION_FRACTION_DIGITS {
        return Err("a duration with at most 6 decimal places (microseconds), e.g. 1.5s");
    }
    let too_long = "a duration of less than 290 years";
    let fraction_micros: i64 = format!("{fraction:0<6}").parse().map_err(|_| too_long)?;
    let micros = whole
        .parse::<i64>()
        .ok()
        .and_then(|seconds| seconds.checked_mul(1_000_000))
        .and_then(|micros| micros.checked_add(fraction_micros))
        .ok_or(too_long)?;
    let delta = TimeDelta::microseconds(if negative { -micros } else { micros });
    // sqlx encodes an interval through nanoseconds; refuse what it could not.
    delta.num_nanoseconds().ok_or(too_long)?;
    Ok(delta)
}

/// Escapes LIKE metacharacters with a backslash, PostgreSQL's default LIKE escape character
/// (so no ESCAPE clause is needed, and none whose meaning depends on
/// standard_conforming_strings).
pub(super) fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_plain_optionally_negative_digits() {
        assert_eq!(parse_integer("-42"), Some(-42));
        assert_eq!(parse_integer("+42"), None);
        assert_eq!(parse_integer("1.0"), None);
        assert_eq!(parse_integer("99999999999999999999"), None);
    }

    #[test]
    fn decimals_are_finite_and_written_out() {
        assert_eq!(parse_decimal("3.25"), Some(3.25));
        assert_eq!(parse_decimal("1e3"), Some(1000.0));
        assert_eq!(parse_decimal("inf"), None);
        assert_eq!(parse_decimal("1e999"), None);
        assert_eq!(parse_decimal(".5"), None);
    }

    #[test]
    fn dates_must_be_exactly_year_month_day() {
        assert_eq!(
            parse_date("2026-01-31"),
            Ok(NaiveDate::from_ymd_opt(2026, 1, 31).unwrap())
        );
        for shapeless in [
            "2026-1-31",
            "26-01-31",
            "2026/01/31",
            "2026-01-31T00:00:00Z",
            "",
        ] {
            assert_eq!(parse_date(shapeless), Err(DATE_EXPECTED), "{shapeless}");
        }
    }

    #[test]
    fn dates_must_name_a_real_day() {
        for impossible in [
            "2026-02-30",
            "2025-02-29",
            "2026-13-01",
            "2026-00-10",
            "0000-01-01",
        ] {
            let error = parse_date(impossible).unwrap_err();

            assert!(error.starts_with("a real calendar date"), "{impossible}");
        }
        assert!(parse_date("2024-02-29").is_ok());
    }

    #[test]
    fn durations_are_seconds_with_an_s_suffix() {
        assert_eq!(parse_duration("90s"), Ok(TimeDelta::seconds(90)));
        assert_eq!(parse_duration("1.5s"), Ok(TimeDelta::milliseconds(1_500)));
        assert_eq!(parse_duration("0.000001s"), Ok(TimeDelta::microseconds(1)));
        assert_eq!(parse_duration("-2s"), Ok(TimeDelta::seconds(-2)));
    }

    #[test]
    fn durations_reject_other_units_and_shapes() {
        for bad in ["90", "90m", "1h", "s", ".5s", "1.s", "1e3s", "+5s", "1 s"] {
            assert_eq!(parse_duration(bad), Err(DURATION_EXPECTED), "{bad}");
        }
    }

    #[test]
    fn durations_stop_at_microseconds_and_at_what_an_interval_can_carry() {
        let too_precise = parse_duration("1.0000001s").unwrap_err();
        let too_long = parse_duration("10000000000s").unwrap_err();

        assert!(too_precise.contains("microseconds"), "{too_precise}");
        assert!(too_long.contains("290 years"), "{too_long}");
    }

    #[test]
    fn like_metacharacters_are_escaped() {
        assert_eq!(escape_like(r"50%_off\"), r"50\%\_off\\");
    }
}
