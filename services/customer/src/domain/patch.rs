//! UpdateCustomer's mask: which paths it may name, and the patch a valid request makes, checked
//! before the stored customer is read and applied once it is locked.

use crm_platform::FieldViolations;
use crm_platform::error::quote;
use crm_proto::crm::customer::v1 as pb;

use super::{Attributes, CustomerFields, MAX_ATTRIBUTES, is_valid_attribute_key};

/// Paths UpdateCustomer accepts in its mask (besides `attributes.<key>`).
pub const UPDATABLE_PATHS: &[&str] = &[
    "display_name",
    "email",
    "given_name",
    "family_name",
    "phone",
    "company_name",
    "lifecycle_stage",
    "owner",
    "tags",
    "attributes",
    "contact_points",
    "addresses",
    "source",
];

/// Paths the server sets (OUTPUT_ONLY) or that never change (IMMUTABLE): an update mask naming
/// one of them, or a field inside one, is rejected.
pub const OUTPUT_ONLY_PATHS: &[&str] = &[
    "id",
    "etag",
    "state",
    "audit",
    "consents",
    "merged_into_id",
    "delete_time",
];

/// Checks an UpdateCustomer mask before anything is read: it must name at least one field, and
/// only fields an update may change. Violations name the path by its index.
pub fn validate_mask(paths: &[String]) -> Result<(), FieldViolations> {
    let mut v = FieldViolations::new();
    if paths.is_empty() {
        v.add("update_mask", "name at least one field to update");
        return Err(v);
    }
    for (i, path) in paths.iter().enumerate() {
        let field = format!("update_mask.paths[{i}]");
        let root = path.split('.').next().unwrap_or_default();
        if path == "*" {
            v.add(
                field,
                "\"*\" (every field) is not accepted: name each field to change",
            );
        } else if OUTPUT_ONLY_PATHS.contains(&root) {
            v.add(
                field,
                format!("{} is set by the server and cannot be updated", quote(path)),
            );
        } else if !UPDATABLE_PATHS.contains(&path.as_str())
            && !path
                .strip_prefix("attributes.")
                .is_some_and(is_valid_attribute_key)
        {
            v.add(
                field,
                format!(
                    "{} is not updatable; use one of {} or attributes.<key>",
                    quote(path),
                    UPDATABLE_PATHS.join(", ")
                ),
            );
        }
    }
    if v.is_empty() { Ok(()) } else { Err(v) }
}

/// An UpdateCustomer request checked without the stored customer: a valid mask and valid values
/// for the masked fields, ready to apply once the row is locked.
#[derive(Debug, Clone)]
pub struct CustomerPatch {
    paths: Vec<String>,
    validated: CustomerFields,
}

impl CustomerPatch {
    /// Validates the mask, then the masked fields of `incoming` (unmasked fields are ignored,
    /// even if invalid, as AIP-134 says).
    pub fn new(incoming: &pb::Customer, paths: &[String]) -> Result<Self, FieldViolations> {
        validate_mask(paths)?;
        let mut all = FieldViolations::new();
        let validated = CustomerFields::collect(incoming, &mut all);
        let mut v = FieldViolations::new();
        for violation in all.iter() {
            let field = violation.field.trim_start_matches("customer.");
            let masked = paths.iter().any(|p| {
                field == p
                    || field.starts_with(&format!("{p}."))
                    || field.starts_with(&format!("{p}["))
            });
            if masked {
                v.add(&violation.field, &violation.description);
            }
        }
        if !v.is_empty() {
            return Err(v);
        }
        let mut paths = paths.to_vec();
        paths.dedup();
        Ok(Self { paths, validated })
    }

    /// Applies the patch onto `stored`; fails when the result breaks a whole-record rule.
    pub fn apply(&self, stored: &mut CustomerFields) -> Result<(), FieldViolations> {
        let validated = &self.validated;
        for path in &self.paths {
            match path.as_str() {
                "display_name" => stored.display_name = validated.display_name.clone(),
                "email" => stored.email = validated.email.clone(),
                "given_name" => stored.given_name = validated.given_name.clone(),
                "family_name" => stored.family_name = validated.family_name.clone(),
                "phone" => stored.phone = validated.phone.clone(),
                "company_name" => stored.company_name = validated.company_name.clone(),
                "lifecycle_stage" => stored.lifecycle_stage = validated.lifecycle_stage,
                "owner" => stored.owner = validated.owner.clone(),
                "source" => stored.source = validated.source.clone(),
                "tags" => stored.tags = validated.tags.clone(),
                "attributes" => stored.attributes = validated.attributes.clone(),
                "contact_points" => stored.contact_points = validated.contact_points.clone(),
                "addresses" => stored.addresses = validated.addresses.clone(),
                other => {
                    let key = other.trim_start_matches("attributes.");
                    stored.attributes.set(key, &validated.attributes);
                }
            }
        }
        let mut v = FieldViolations::new();
        if stored.display_name.is_empty() {
            v.add("customer.display_name", "is required");
        }
        if stored.attributes.values.len() > MAX_ATTRIBUTES {
            v.add(
                "customer.attributes",
                format!("at most {MAX_ATTRIBUTES} attributes"),
            );
        }
        if v.is_empty() { Ok(()) } else { Err(v) }
    }
}

impl Attributes {
    /// Sets `key` to its value in `from`, or removes it when `from` lacks it.
    fn set(&mut self, key: &str, from: &Attributes) {
        self.timestamp_keys.retain(|k| k != key);
        match from.values.get(key) {
            Some(value) => {
                self.values.insert(key.to_string(), value.clone());
                if from.timestamp_keys.iter().any(|k| k == key) {
                    self.timestamp_keys.push(key.to_string());
                }
            }
            None => {
                self.values.remove(key);
            }
        }
    }
}
