//! Opaque, tamper-evident keyset page tokens ([AIP-158](https://google.aip.dev/158)).
//!
//! A token is URL-safe base64 (no padding) of `payload || tag`, where `payload` is the JSON
//! `{"v":1,"q":<query fingerprint>,"c":<cursor>}` and `tag` is the first 16 bytes of
//! HMAC-SHA256(secret, payload).
//!
//! Tokens are opaque to callers but **not secret**: anyone can base64-decode one and read the
//! cursor, so cursors must hold only values the caller may already see (sort keys and ids of rows
//! it was just sent). The tag makes forged or edited tokens fail with
//! [`PageTokenError::Tampered`], and the fingerprint ties a token to the filter and order_by it
//! was issued for.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the HMAC-SHA256 tag kept in a token; 128 bits is plenty against forgery and keeps
/// tokens short.
const TAG_LEN: usize = 16;
const PAYLOAD_VERSION: u8 = 1;

/// Why a page token was refused. The `Display` text is written for the API caller, to be returned
/// as an INVALID_ARGUMENT field violation on `page_token`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    /// Not something this server produced: bad base64, too short, or an unreadable payload.
    #[error(
        "page_token is malformed; pass the next_page_token from the previous response unchanged, or start again without a page_token"
    )]
    Malformed,
    /// The tag does not match: the token was edited, or signed with another secret (for example
    /// before a key rotation).
    #[error(
        "page_token was modified or is no longer accepted by the server; start again without a page_token"
    )]
    Tampered,
    /// The token was issued for a different filter or order_by.
    #[error(
        "page_token is not valid for this filter and order_by; start again without a page_token"
    )]
    QueryChanged,
}

#[derive(Serialize)]
struct PayloadOut<'a, C> {
    v: u8,
    q: u64,
    c: &'a C,
}

#[derive(Deserialize)]
struct PayloadIn<C> {
    v: u8,
    q: u64,
    c: C,
}

/// Signs and checks page tokens with one server secret.
#[derive(Clone)]
pub struct PageTokenCodec {
    /// HMAC keyed with the secret; cloned for each token so the key schedule runs once.
    keyed_mac: HmacSha256,
}

impl std::fmt::Debug for PageTokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hand-written so the secret can never end up in logs.
        f.debug_struct("PageTokenCodec").finish_non_exhaustive()
    }
}

impl PageTokenCodec {
    /// A codec signing with `secret`, which should be at least 32 random bytes and the same on
    /// every replica, or tokens from one replica fail on another.
    pub fn new(secret: &[u8]) -> Self {
        let keyed_mac =
            HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
        Self { keyed_mac }
    }

    /// Builds the token for the page after `cursor`, tied to `query_fingerprint` (see
    /// [`query_fingerprint`]).
    ///
    /// # Panics
    ///
    /// If `cursor` cannot be serialised to JSON (e.g. a map with non-string keys), which is a
    /// programming error in the cursor type.
    pub fn encode<C: Serialize>(&self, query_fingerprint: u64, cursor: &C) -> String {
        let payload = PayloadOut {
            v: PAYLOAD_VERSION,
            q: query_fingerprint,
            c: cursor,
        };
        let mut bytes = serde_json::to_vec(&payload).expect("page token cursors serialise to JSON");
        let tag = self.tag(&bytes);
        bytes.extend_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks `token` and returns its cursor, provided it was issued by this codec's secret for
    /// the same `query_fingerprint`.
    pub fn decode<C: DeserializeOwned>(
        &self,
        token: &str,
        query_fingerprint: u64,
    ) -> Result<C, PageTokenError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| PageTokenError::Malformed)?;
        if bytes.len() <= TAG_LEN {
            return Err(PageTokenError::Malformed);
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let mut mac = self.keyed_mac.clone();
        mac.update(payload);
        // verify_truncated_left compares in constant time, so timing reveals nothing about the tag.
        mac.verify_truncated_left(tag)
            .map_err(|_| PageTokenError::Tampered)?;
        // Only a payload we signed gets this far, so a parse failure means a cursor type change
        // between releases rather than an attack; the caller just has to start again.
        let payload: PayloadIn<C> =
            serde_json::from_slice(payload).map_err(|_| PageTokenError::Malformed)?;
        if payload.v != PAYLOAD_VERSION {
            return Err(PageTokenError::Malformed);
        }
        if payload.q != query_fingerprint {
            return Err(PageTokenError::QueryChanged);
        }
        Ok(payload.c)
    }

    fn tag(&self, payload: &[u8]) -> [u8; 32] {
        let mut mac = self.keyed_mac.clone();
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }
}

/// A stable fingerprint of the parts of a query that a page token must not outlive, typically
/// `[filter, order_by]` (plus the parent, for nested collections).
///
/// The first 8 bytes (big-endian) of SHA-256 over the length-prefixed parts: stable across
/// processes and releases, unlike std's randomly seeded hasher, and length prefixes keep
/// `["ab", "c"]` and `["a", "bc"]` apart.
pub fn query_fingerprint(parts: &[&str]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut first_eight = [0u8; 8];
    first_eight.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first_eight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Cursor {
        display_name: String,
        id: u64,
    }

    fn cursor() -> Cursor {
        Cursor {
            display_name: "Ann Example".to_owned(),
            id: 42,
        }
    }

    fn codec() -> PageTokenCodec {
        PageTokenCodec::new(b"test secret of thirty-two bytes!")
    }

    #[test]
    fn a_token_decodes_back_to_its_cursor() {
        let codec = codec();
        let token = codec.encode(7, &cursor());

        let decoded: Cursor = codec.decode(&token, 7).unwrap();

        assert_eq!(decoded, cursor());
    }

    #[test]
    fn tokens_use_only_url_safe_characters_without_padding() {
        let token = codec().encode(7, &cursor());

        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{token}"
        );
    }

    #[test]
    fn flipping_any_bit_of_the_signed_bytes_is_detected_as_tampering() {
        let codec = codec();
        let bytes = URL_SAFE_NO_PAD.decode(codec.encode(7, &cursor())).unwrap();

        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let token = URL_SAFE_NO_PAD.encode(&flipped);

            let result = codec.decode::<Cursor>(&token, 7);

            assert_eq!(result, Err(PageTokenError::Tampered), "bit {bit}");
        }
    }

    #[test]
    fn flipping_any_bit_of_the_token_text_never_decodes() {
        let codec = codec();
        let token = codec.encode(7, &cursor()).into_bytes();

        for bit in 0..token.len() * 8 {
            let mut flipped = token.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            // Flipping the high bit makes invalid UTF-8, which a &str can't even carry.
            let Ok(text) = String::from_utf8(flipped) else {
                continue;
            };

            let result = codec.decode::<Cursor>(&text, 7);

            assert!(
                matches!(
                    result,
                    Err(PageTokenError::Tampered | PageTokenError::Malformed)
                ),
                "bit {bit}: {result:?}"
            );
        }
    }

    #[test]
    fn a_token_from_another_secret_is_tampered() {
        let token = PageTokenCodec::new(b"another secret").encode(7, &cursor());

        let result = codec().decode::<Cursor>(&token, 7);

        assert_eq!(result, Err(PageTokenError::Tampered));
    }

    #[test]
    fn a_token_for_another_query_is_refused_as_query_changed() {
        let codec = codec();
        let token = codec.encode(query_fingerprint(&["state = ACTIVE", ""]), &cursor());

        let result = codec.decode::<Cursor>(&token, query_fingerprint(&["", ""]));

        assert_eq!(result, Err(PageTokenError::QueryChanged));
    }

    #[test]
    fn garbage_is_malformed() {
        let codec = codec();
        for garbage in ["", "!!!not base64!!!", "AAAA", "abc=", "YWJj\n"] {
            let result = codec.decode::<Cursor>(garbage, 7);

            assert_eq!(result, Err(PageTokenError::Malformed), "{garbage:?}");
        }
    }

    #[test]
    fn a_correctly_signed_payload_that_is_not_a_cursor_is_malformed() {
        let codec = codec();
        let payload = br#"{"v":1,"q":7,"c":"not a cursor"}"#.to_vec();
        let mut bytes = payload.clone();
        bytes.extend_from_slice(&codec.tag(&payload)[..TAG_LEN]);

        let result = codec.decode::<Cursor>(&URL_SAFE_NO_PAD.encode(bytes), 7);

        assert_eq!(result, Err(PageTokenError::Malformed));
    }

    #[test]
    fn a_correctly_signed_payload_of_an_unknown_version_is_malformed() {
        let codec = codec();
        let payload = br#"{"v":2,"q":7,"c":{"display_name":"Ann","id":1}}"#.to_vec();
        let mut bytes = payload.clone();
        bytes.extend_from_slice(&codec.tag(&payload)[..TAG_LEN]);

        let result = codec.decode::<Cursor>(&URL_SAFE_NO_PAD.encode(bytes), 7);

        assert_eq!(result, Err(PageTokenError::Malformed));
    }

    #[test]
    fn every_error_message_tells_the_caller_to_start_again_without_a_page_token() {
        let errors = [
            PageTokenError::Malformed,
            PageTokenError::Tampered,
            PageTokenError::QueryChanged,
        ];

        for error in errors {
            let message = error.to_string();

            assert!(message.starts_with("page_token "), "{message}");
            assert!(
                message.ends_with("start again without a page_token"),
                "{message}"
            );
        }
    }

    #[test]
    fn query_fingerprint_is_stable_across_runs_and_releases() {
        // Pinned: a change here invalidates every page token in flight during a deploy.
        let fingerprint = query_fingerprint(&["lifecycle_stage = CUSTOMER", "display_name desc"]);

        assert_eq!(fingerprint, 15_577_835_188_336_782_502);
    }

    #[test]
    fn query_fingerprint_keeps_part_boundaries_apart() {
        let joined_left = query_fingerprint(&["ab", "c"]);
        let joined_right = query_fingerprint(&["a", "bc"]);

        assert_ne!(joined_left, joined_right);
    }

    #[test]
    fn debug_output_does_not_reveal_the_secret() {
        let codec = PageTokenCodec::new(b"hunter2");

        let debug = format!("{codec:?}");

        assert_eq!(debug, "PageTokenCodec { .. }");
    }
}
