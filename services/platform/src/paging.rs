//! Page sizes, as every List and Search RPC treats them.

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

#[cfg(test)]
mod tests {
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
