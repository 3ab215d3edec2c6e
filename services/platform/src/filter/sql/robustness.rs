//! Random input never panics the parser or the compiler, and whatever compiles binds every
//! value it mentions.

use super::tests::{ID, render, schema};
use super::to_sql;
use crate::filter::{parse, parse_order_by};

/// Fragments glued at random; every field type, keyword and troublesome character.
#[rustfmt::skip]
const PIECES: &[&str] = &[
    "display_name", "tags", "attributes.", "attributes", "plan", "is_vip", "create_time",
    "lifecycle_stage", "CUSTOMER", "LIFECYCLE_STAGE_LEAD", "priority", "HIGH", "close_date",
    "\"2026-02-30\"", "\"2026-01-31\"", "wait", "90s", "1.5s", "watcher_ids", "channels",
    "owner.kind", "skills.name", ID, "AND", "OR", "NOT", "and", "(", ")", "-", "\"", "\\", "=",
    "!=", "!", "<", "<=", ">", ">=", ":", "*", "1", "-7", "1.5", "1e999", "true", " ", "  ", ".",
    ",", "'", "é", "日本", "\n", "x_y", "%", "_", "asc", "desc", "$1",
];

#[test]
fn random_garbage_never_panics_and_errors_point_inside_the_input() {
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

        let outcome = parse(&input).and_then(|expr| to_sql(&expr, &schema));
        let order_by = parse_order_by(&input, &["display_name", "create_time"]);

        match outcome {
            Ok(filter) => {
                compiled_ok += 1;
                let rendered = render(&filter);
                // Caller input never reaches the SQL text: every '$' is a placeholder.
                let placeholders = rendered.sql.matches('$').count();
                assert_eq!(placeholders, rendered.params.len(), "{input:?}");
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
