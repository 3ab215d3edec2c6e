//! Page sizes and keyset pagination, as every List and Search RPC treats them.

use crate::error::ApiError;

/// The page size to use: `default` when the caller sent 0, the caller's value clamped to `max`
/// otherwise (AIP-158: larger values are coerced, not rejected). Negative values are rejected.
pub fn page_size(requested: i32, default: u32, max: u32) -> Result<u32, ApiError> {
    match requested {
        0 => Ok(default),
        n if n < 0 => Err(ApiError::invalid("page_size", "must not be negative")),
        n => Ok((n as u32).min(max)),
    }
}

/// One sort key of a keyset-paginated query: its SQL expression (trusted, written by the
/// service), the SQL type its cursor value is cast to, and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey<'a> {
    /// SQL expression, e.g. `c.create_time`.
    pub sql: &'a str,
    /// Type the cursor's text value is cast to, e.g. `timestamptz`.
    pub sql_type: &'a str,
    /// Whether the key sorts descending.
    pub descending: bool,
}

/// `ORDER BY` terms for `keys`, then `id_sql` as the tie-breaker in the last key's direction
/// (so one composite index serves the whole order).
pub fn keyset_order_by(keys: &[SortKey<'_>], id_sql: &str) -> String {
    let id_descending = keys.last().is_some_and(|k| k.descending);
    keys.iter()
        .map(|k| (k.sql, k.descending))
        .chain(std::iter::once((id_sql, id_descending)))
        .map(|(sql, desc)| format!("{sql} {}", if desc { "DESC" } else { "ASC" }))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The condition selecting rows after a cursor, in the order of [`keyset_order_by`]:
/// `(k1 > $a) OR (k1 = $a AND k2 > $b) OR … OR (all equal AND id > $id)`, each comparison turned
/// for descending keys. It uses `keys.len() + 1` parameters from `$first_param` on: the cursor's
/// values as text, in key order, then the id.
pub fn keyset_after(keys: &[SortKey<'_>], id_sql: &str, first_param: usize) -> String {
    let id_descending = keys.last().is_some_and(|k| k.descending);
    let id_key = SortKey {
        sql: id_sql,
        sql_type: "uuid",
        descending: id_descending,
    };
    let all: Vec<SortKey<'_>> = keys
        .iter()
        .copied()
        .chain(std::iter::once(id_key))
        .collect();
    let alternatives: Vec<String> = (0..all.len())
        .map(|i| {
            let mut parts: Vec<String> = all[..i]
                .iter()
                .enumerate()
                .map(|(j, k)| format!("{} = ${}::{}", k.sql, first_param + j, k.sql_type))
                .collect();
            let k = all[i];
            let op = if k.descending { "<" } else { ">" };
            parts.push(format!(
                "{} {op} ${}::{}",
                k.sql,
                first_param + i,
                k.sql_type
            ));
            format!("({})", parts.join(" AND "))
        })
        .collect();
    format!("({})", alternatives.join(" OR "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keyset_condition_expands_mixed_directions_and_ends_with_the_id() {
        let keys = [
            SortKey {
                sql: "c.name",
                sql_type: "text",
                descending: false,
            },
            SortKey {
                sql: "c.time",
                sql_type: "timestamptz",
                descending: true,
            },
        ];

        assert_eq!(
            keyset_after(&keys, "c.id", 3),
            "((c.name > $3::text) OR (c.name = $3::text AND c.time < $4::timestamptz) OR \
             (c.name = $3::text AND c.time = $4::timestamptz AND c.id < $5::uuid))"
        );
        assert_eq!(
            keyset_order_by(&keys, "c.id"),
            "c.name ASC, c.time DESC, c.id DESC"
        );
    }

    use super::*;

    #[test]
    fn zero_means_the_default_and_large_values_are_clamped() {
        assert_eq!(page_size(0, 50, 1000).unwrap(), 50);
        assert_eq!(page_size(5000, 50, 1000).unwrap(), 1000);
        assert_eq!(page_size(7, 50, 1000).unwrap(), 7);
    }

    #[test]
    fn a_negative_page_size_names_the_field() {
        let err = page_size(-1, 50, 1000).unwrap_err();
        assert!(err.to_string().contains("page_size"));
    }
}
