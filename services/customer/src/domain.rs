//! Validation and proto ↔ domain conversion for customers, done once at the edge: a request
//! that passes through here is valid, and every violation names its field.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use crm_platform::FieldViolations;
use crm_platform::error::quote;
use crm_proto::crm::common::v1::PostalAddress;
use crm_proto::crm::customer::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

pub mod consent;
mod fields;
pub mod history;
mod interaction;
mod patch;
pub mod principal;
mod state;

pub use fields::CustomerFields;
pub use interaction::NewInteraction;
pub use patch::{CustomerPatch, OUTPUT_ONLY_PATHS, UPDATABLE_PATHS, validate_mask};
pub use principal::{PRINCIPAL_KIND, PRINCIPAL_KINDS, Principal};
pub use state::{CustomerState, LifecycleStage};

/// Most tags one customer may carry.
pub const MAX_TAGS: usize = 50;
/// Most custom attributes one customer may carry.
pub const MAX_ATTRIBUTES: usize = 50;
/// Most extra contact points.
pub const MAX_CONTACT_POINTS: usize = 20;
/// Most postal addresses.
pub const MAX_ADDRESSES: usize = 10;

/// Lifecycle stages as stored (the enum's names without prefix).
pub const LIFECYCLE_STAGES: &[&str] = &[
    LifecycleStage::Subscriber.name(),
    LifecycleStage::Lead.name(),
    LifecycleStage::Opportunity.name(),
    LifecycleStage::Customer.name(),
    LifecycleStage::Churned.name(),
];

/// Customer states as stored (the enum's names without `CUSTOMER_STATE_`).
pub const CUSTOMER_STATES: &[&str] = &[
    CustomerState::Active.name(),
    CustomerState::Deleted.name(),
    CustomerState::Merged.name(),
    CustomerState::Erased.name(),
];

/// Whether `email` looks like a deliverable address: one `@`, a non-empty local part of at most
/// 64 characters, a dotted domain of letters, digits and hyphens, 254 characters in all.
pub fn is_valid_email(email: &str) -> bool {
    if email.len() > 254 || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    if local.is_empty() || local.len() > 64 || local.contains('@') {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
}

/// Whether `phone` is in E.164 form: `+`, a non-zero digit, then 6 to 14 more digits.
pub fn is_valid_e164(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Characters of an attribute key that a field path quotes; valid keys are at most 64.
const MAX_KEY_IN_PATH: usize = 100;

fn is_valid_attribute_key(key: &str) -> bool {
    (1..=64).contains(&key.len()) && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What a contact point reaches, stored in JSON by name (`EMAIL`, `PHONE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContactKind {
    /// An email address, lower-cased.
    Email,
    /// An E.164 phone number.
    Phone,
}

impl From<ContactKind> for pb::ContactPointType {
    fn from(kind: ContactKind) -> Self {
        match kind {
            ContactKind::Email => pb::ContactPointType::Email,
            ContactKind::Phone => pb::ContactPointType::Phone,
        }
    }
}

/// A contact point as stored in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactPoint {
    /// What it reaches.
    pub kind: ContactKind,
    /// The address.
    pub value: String,
    /// Free-form label.
    pub label: String,
}

/// An address as stored in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Address {
    /// Free-form label.
    pub label: String,
    /// CLDR region code.
    pub region_code: String,
    /// Postal code.
    pub postal_code: String,
    /// State, province…
    pub administrative_area: String,
    /// City.
    pub locality: String,
    /// Street lines.
    pub address_lines: Vec<String>,
    /// Recipient.
    pub recipient: String,
}

impl From<&Address> for pb::CustomerAddress {
    fn from(a: &Address) -> Self {
        pb::CustomerAddress {
            label: a.label.clone(),
            address: Some(PostalAddress {
                region_code: a.region_code.clone(),
                postal_code: a.postal_code.clone(),
                administrative_area: a.administrative_area.clone(),
                locality: a.locality.clone(),
                address_lines: a.address_lines.clone(),
                recipient: a.recipient.clone(),
            }),
        }
    }
}

/// Custom attributes as stored: plain JSON values plus which keys hold timestamps.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes {
    /// Key → JSON value (string, number or bool; timestamps as RFC 3339 strings).
    pub values: serde_json::Map<String, Json>,
    /// Keys whose value is a timestamp.
    pub timestamp_keys: Vec<String>,
}

impl Attributes {
    /// Validates and converts proto attributes; violations are reported under `field`.
    pub fn from_proto(
        attributes: &BTreeMap<String, pb::AttributeValue>,
        field: &str,
        v: &mut FieldViolations,
    ) -> Self {
        let mut out = Attributes::default();
        if attributes.len() > MAX_ATTRIBUTES {
            v.add(field, format!("at most {MAX_ATTRIBUTES} attributes"));
        }
        for (key, value) in attributes {
            // A key longer than any valid one is named by its prefix only: it may be huge.
            let path = match key.char_indices().nth(MAX_KEY_IN_PATH) {
                None => format!("{field}.{key}"),
                Some((end, _)) => format!("{field}.{}…", &key[..end]),
            };
            if !is_valid_attribute_key(key) {
                v.add(&path, "keys must be 1..=64 characters of [A-Za-z0-9_]");
                continue;
            }
            match Self::value_from_proto(value) {
                Ok((json, is_timestamp)) => {
                    if is_timestamp {
                        out.timestamp_keys.push(key.clone());
                    }
                    out.values.insert(key.clone(), json);
                }
                Err(why) => v.add(&path, why),
            }
        }
        out
    }

    fn value_from_proto(value: &pb::AttributeValue) -> Result<(Json, bool), String> {
        use pb::attribute_value::Kind;
        match &value.kind {
            None => Err("a value must be set (string, int, double, bool or timestamp)".into()),
            Some(Kind::StringValue(s)) => {
                if s.chars().count() > 1000 {
                    Err("string values must be at most 1000 characters".into())
                } else {
                    Ok((Json::String(s.clone()), false))
                }
            }
            Some(Kind::IntValue(i)) => Ok((Json::from(*i), false)),
            Some(Kind::DoubleValue(d)) => serde_json::Number::from_f64(*d)
                .map(|n| (Json::Number(n), false))
                .ok_or_else(|| "double values must be finite".to_string()),
            Some(Kind::BoolValue(b)) => Ok((Json::Bool(*b), false)),
            Some(Kind::TimestampValue(ts)) => timestamp_from_proto(ts)
                .map(|t| (Json::String(t.to_rfc3339()), true))
                .ok_or_else(|| "not a valid timestamp".to_string()),
        }
    }

    /// Converts stored attributes back to proto values.
    pub fn to_proto(&self) -> BTreeMap<String, pb::AttributeValue> {
        use pb::attribute_value::Kind;
        self.values
            .iter()
            .map(|(key, json)| {
                let kind = match json {
                    Json::String(s) if self.timestamp_keys.contains(key) => s
                        .parse::<DateTime<Utc>>()
                        .map(|t| Kind::TimestampValue(timestamp_to_proto(t)))
                        .unwrap_or_else(|_| Kind::StringValue(s.clone())),
                    Json::String(s) => Kind::StringValue(s.clone()),
                    Json::Bool(b) => Kind::BoolValue(*b),
                    Json::Number(n) if n.is_i64() => Kind::IntValue(n.as_i64().unwrap_or(0)),
                    Json::Number(n) => Kind::DoubleValue(n.as_f64().unwrap_or(0.0)),
                    other => Kind::StringValue(other.to_string()),
                };
                (key.clone(), pb::AttributeValue { kind: Some(kind) })
            })
            .collect()
    }
}

/// A timestamp from proto, if it is a valid instant.
pub fn timestamp_from_proto(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    DateTime::from_timestamp(ts.seconds, ts.nanos as u32)
}

/// A proto timestamp for an instant.
pub fn timestamp_to_proto(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// Parses a customer id.
pub fn parse_id(field: &str, id: &str) -> Result<uuid::Uuid, FieldViolations> {
    if id.is_empty() {
        return Err(FieldViolations::single(field, "is required"));
    }
    uuid::Uuid::parse_str(id)
        .map_err(|_| FieldViolations::single(field, format!("{} is not a UUID", quote(id))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(display_name: &str) -> pb::Customer {
        pb::Customer {
            display_name: display_name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn plausible_emails_are_accepted_and_malformed_ones_rejected() {
        for good in ["ada@example.com", "a.b+tag@sub.example.co.uk", "x@b-c.de"] {
            assert!(is_valid_email(good), "{good}");
        }
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "a@-x.com",
            "a@b..com",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn e164_needs_a_plus_and_seven_to_fifteen_digits() {
        assert!(is_valid_e164("+4915112345678"));
        assert!(!is_valid_e164("015112345678"));
        assert!(!is_valid_e164("+0123456789"));
        assert!(!is_valid_e164("+12345"));
        assert!(!is_valid_e164("+49 151 1234567"));
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let mut c = customer("");
        c.email = "nope".into();
        c.phone = "123".into();
        c.tags = vec!["Bad Tag!".into()];

        let violations = CustomerFields::try_from(&c).unwrap_err();

        let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "customer.display_name",
                "customer.email",
                "customer.phone",
                "customer.tags[0]"
            ]
        );
    }

    #[test]
    fn emails_are_lower_cased_and_tags_deduplicated() {
        let mut c = customer("Ada");
        c.email = "Ada@Example.COM".into();
        c.tags = vec!["vip".into(), "VIP".into(), "b2b".into()];

        let fields = CustomerFields::try_from(&c).unwrap();

        assert_eq!(fields.email.as_deref(), Some("ada@example.com"));
        assert_eq!(fields.tags, ["vip", "b2b"]);
        assert_eq!(fields.lifecycle_stage, LifecycleStage::Lead);
    }

    #[test]
    fn attributes_keep_their_types_through_storage() {
        use pb::attribute_value::Kind;
        let mut c = customer("Ada");
        let when = timestamp_to_proto("2026-01-02T03:04:05Z".parse().unwrap());
        for (k, kind) in [
            ("plan", Kind::StringValue("pro".into())),
            ("seats", Kind::IntValue(12)),
            ("score", Kind::DoubleValue(0.5)),
            ("beta", Kind::BoolValue(true)),
            ("renewal", Kind::TimestampValue(when)),
        ] {
            c.attributes
                .insert(k.into(), pb::AttributeValue { kind: Some(kind) });
        }

        let fields = CustomerFields::try_from(&c).unwrap();

        assert_eq!(fields.attributes.to_proto(), c.attributes);
    }

    #[test]
    fn an_unknown_mask_path_is_rejected() {
        let mut stored = CustomerFields::try_from(&customer("Ada")).unwrap();
        let err = stored
            .apply_mask(&customer("Ada"), &["id".to_string()])
            .unwrap_err();
        assert_eq!(err.iter().next().unwrap().field, "update_mask.paths[0]");
    }

    #[test]
    fn the_wildcard_and_server_set_paths_are_rejected_naming_the_path() {
        for path in [
            "*",
            "id",
            "etag",
            "state",
            "audit",
            "audit.creator",
            "consents",
            "merged_into_id",
            "delete_time",
            "owner_id",
            "owner.kind",
        ] {
            let err = validate_mask(&["display_name".to_string(), path.to_string()]).unwrap_err();

            let violations: Vec<_> = err.iter().collect();
            assert_eq!(violations.len(), 1, "{path}");
            assert_eq!(violations[0].field, "update_mask.paths[1]", "{path}");
            assert!(violations[0].description.contains(path), "{path}: {err}");
        }
    }

    #[test]
    fn an_owner_is_set_and_cleared_through_its_path() {
        let mut stored = CustomerFields::try_from(&customer("Ada")).unwrap();
        let mut incoming = customer("Ada");
        incoming.owner = Some(crm_proto::crm::common::v1::Principal {
            kind: crm_proto::crm::common::v1::PrincipalKind::Team as i32,
            id: "emea-sales".into(),
        });

        stored
            .apply_mask(&incoming, &["owner".to_string()])
            .unwrap();
        let owned = stored.owner.clone();
        stored
            .apply_mask(&customer("Ada"), &["owner".to_string()])
            .unwrap();

        assert_eq!(
            owned,
            Some(Principal {
                kind: "TEAM",
                id: "emea-sales".into()
            })
        );
        assert_eq!(stored.owner, None);
    }

    #[test]
    fn unmasked_invalid_fields_are_ignored_on_update() {
        let mut stored = CustomerFields::try_from(&customer("Ada")).unwrap();
        let mut incoming = customer("Ada Lovelace");
        incoming.email = "not-an-email".into();

        stored
            .apply_mask(&incoming, &["display_name".to_string()])
            .unwrap();

        assert_eq!(stored.display_name, "Ada Lovelace");
        assert_eq!(stored.email, None);
    }

    #[test]
    fn one_attribute_can_be_removed_through_its_path() {
        let mut c = customer("Ada");
        c.attributes.insert(
            "plan".into(),
            pb::AttributeValue {
                kind: Some(pb::attribute_value::Kind::StringValue("pro".into())),
            },
        );
        let mut stored = CustomerFields::try_from(&c).unwrap();

        stored
            .apply_mask(&customer("Ada"), &["attributes.plan".to_string()])
            .unwrap();

        assert!(stored.attributes.values.is_empty());
    }
}

#[cfg(test)]
mod limit_tests;
