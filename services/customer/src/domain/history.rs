//! Field history: which fields of a customer a write changed, with each value before and after
//! in its proto3 JSON form (as `google.protobuf.Value` on the wire, `jsonb` in the database).
//! Paths are update-mask paths; custom attributes are one path per key (`attributes.tier`) and
//! consents one per channel (`consents.EMAIL`).

use std::collections::BTreeSet;

use chrono::{DateTime, SecondsFormat, Utc};
use crm_proto::crm::customer::v1 as pb;
use serde_json::{Map, Value as Json, json};

use super::patch::UPDATABLE_PATHS;
use super::{Address, Attributes, ContactPoint, CustomerFields, timestamp_from_proto};

/// One changed field: its path and its values before and after (`None`: the field was empty).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    /// Update-mask path, e.g. `email`, `attributes.tier`, `consents.EMAIL`.
    pub path: String,
    /// The value before, in proto3 JSON form.
    pub old_value: Option<Json>,
    /// The value after.
    pub new_value: Option<Json>,
}

/// Every field that differs between `old` and `new`, one change per path, in the order of the
/// update-mask paths (attributes one per key).
pub fn diff(old: &CustomerFields, new: &CustomerFields) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    for path in UPDATABLE_PATHS {
        if *path == "attributes" {
            diff_attributes(&old.attributes, &new.attributes, &mut changes);
            continue;
        }
        let (before, after) = (field_json(old, path), field_json(new, path));
        if before != after {
            changes.push(FieldChange {
                path: (*path).to_string(),
                old_value: before,
                new_value: after,
            });
        }
    }
    changes
}

fn diff_attributes(old: &Attributes, new: &Attributes, changes: &mut Vec<FieldChange>) {
    let keys: BTreeSet<&String> = old.values.keys().chain(new.values.keys()).collect();
    for key in keys {
        let (before, after) = (attribute_json(old, key), attribute_json(new, key));
        if before != after {
            changes.push(FieldChange {
                path: format!("attributes.{key}"),
                old_value: before,
                new_value: after,
            });
        }
    }
}

fn text(value: &Option<String>) -> Option<Json> {
    value.as_ref().filter(|s| !s.is_empty()).map(|s| json!(s))
}

/// The proto3 JSON form of one plain field; `None` when it is empty.
fn field_json(f: &CustomerFields, path: &str) -> Option<Json> {
    match path {
        "display_name" => (!f.display_name.is_empty()).then(|| json!(f.display_name)),
        "email" => text(&f.email),
        "given_name" => text(&f.given_name),
        "family_name" => text(&f.family_name),
        "phone" => text(&f.phone),
        "company_name" => text(&f.company_name),
        "lifecycle_stage" => Some(json!(
            pb::LifecycleStage::from(f.lifecycle_stage).as_str_name()
        )),
        "owner" => f.owner.as_ref().map(|o| o.to_json()),
        "tags" => (!f.tags.is_empty()).then(|| json!(f.tags)),
        "contact_points" => list(&f.contact_points, contact_point_json),
        "addresses" => list(&f.addresses, address_json),
        "source" => text(&f.source),
        _ => None,
    }
}

fn list<T>(items: &[T], to_json: fn(&T) -> Json) -> Option<Json> {
    (!items.is_empty()).then(|| Json::Array(items.iter().map(to_json).collect()))
}

/// Adds `key: value` unless the value is proto3's default (empty), as proto3 JSON omits those.
fn put(object: &mut Map<String, Json>, key: &str, value: Json) {
    let empty = match &value {
        Json::String(s) => s.is_empty(),
        Json::Array(a) => a.is_empty(),
        _ => false,
    };
    if !empty {
        object.insert(key.to_string(), value);
    }
}

fn contact_point_json(cp: &ContactPoint) -> Json {
    let mut object = Map::new();
    put(
        &mut object,
        "type",
        json!(pb::ContactPointType::from(cp.kind).as_str_name()),
    );
    put(&mut object, "value", json!(cp.value));
    put(&mut object, "label", json!(cp.label));
    Json::Object(object)
}

fn address_json(a: &Address) -> Json {
    let mut postal = Map::new();
    put(&mut postal, "regionCode", json!(a.region_code));
    put(&mut postal, "postalCode", json!(a.postal_code));
    put(
        &mut postal,
        "administrativeArea",
        json!(a.administrative_area),
    );
    put(&mut postal, "locality", json!(a.locality));
    put(&mut postal, "addressLines", json!(a.address_lines));
    put(&mut postal, "recipient", json!(a.recipient));
    let mut object = Map::new();
    put(&mut object, "label", json!(a.label));
    object.insert("address".into(), Json::Object(postal));
    Json::Object(object)
}

/// The proto3 JSON form of one attribute's `AttributeValue` (`{"stringValue": "gold"}`).
fn attribute_json(attributes: &Attributes, key: &str) -> Option<Json> {
    let value = attributes.values.get(key)?;
    let is_timestamp = attributes.timestamp_keys.iter().any(|k| k == key);
    Some(match value {
        Json::String(s) if is_timestamp => match s.parse::<DateTime<Utc>>() {
            Ok(t) => json!({ "timestampValue": rfc3339(t) }),
            Err(_) => json!({ "stringValue": s }),
        },
        Json::String(s) => json!({ "stringValue": s }),
        Json::Bool(b) => json!({ "boolValue": b }),
        // proto3 JSON writes int64 as a string.
        Json::Number(n) if n.is_i64() => json!({ "intValue": n.to_string() }),
        Json::Number(n) => json!({ "doubleValue": n }),
        other => json!({ "stringValue": other.to_string() }),
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn timestamp_json(ts: &Option<prost_types::Timestamp>) -> Json {
    ts.as_ref()
        .and_then(timestamp_from_proto)
        .map(|t| json!(rfc3339(t)))
        .unwrap_or(Json::Null)
}

/// The proto3 JSON form of a consent decision, as `consents.<CHANNEL>` history keeps it.
pub fn consent_json(c: &pb::Consent) -> Json {
    let name = |value: Option<&str>| json!(value.unwrap_or_default());
    let mut object = Map::new();
    put(
        &mut object,
        "channel",
        name(
            crm_proto::crm::common::v1::Channel::try_from(c.channel)
                .ok()
                .map(|c| c.as_str_name()),
        ),
    );
    put(
        &mut object,
        "status",
        name(
            pb::ConsentStatus::try_from(c.status)
                .ok()
                .map(|s| s.as_str_name()),
        ),
    );
    put(
        &mut object,
        "legalBasis",
        name(
            pb::LegalBasis::try_from(c.legal_basis)
                .ok()
                .map(|b| b.as_str_name()),
        ),
    );
    put(&mut object, "source", json!(c.source));
    object.insert("captureTime".into(), timestamp_json(&c.capture_time));
    object.insert("recordTime".into(), timestamp_json(&c.record_time));
    if let Some(recorder) = &c.recorder {
        let recorder = super::Principal::stored(
            super::principal::kind_name(recorder.kind).unwrap_or("USER"),
            &recorder.id,
        );
        object.insert("recorder".into(), recorder.to_json());
    }
    Json::Object(object)
}

/// A JSON value as `google.protobuf.Value`.
pub fn to_value(json: &Json) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        Json::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{LifecycleStage, Principal};

    fn fields() -> CustomerFields {
        CustomerFields {
            display_name: "Ada".into(),
            lifecycle_stage: LifecycleStage::Lead,
            ..Default::default()
        }
    }

    #[test]
    fn an_unchanged_customer_has_no_changes() {
        assert_eq!(diff(&fields(), &fields()), []);
    }

    #[test]
    fn each_changed_field_is_one_change_with_its_json_values() {
        let old = fields();
        let mut new = fields();
        new.email = Some("ada@example.com".into());
        new.lifecycle_stage = LifecycleStage::Customer;
        new.owner = Some(Principal {
            kind: "TEAM",
            id: "emea".into(),
        });

        let changes = diff(&old, &new);

        assert_eq!(
            changes,
            [
                FieldChange {
                    path: "email".into(),
                    old_value: None,
                    new_value: Some(json!("ada@example.com")),
                },
                FieldChange {
                    path: "lifecycle_stage".into(),
                    old_value: Some(json!("LIFECYCLE_STAGE_LEAD")),
                    new_value: Some(json!("LIFECYCLE_STAGE_CUSTOMER")),
                },
                FieldChange {
                    path: "owner".into(),
                    old_value: None,
                    new_value: Some(json!({"kind": "PRINCIPAL_KIND_TEAM", "id": "emea"})),
                },
            ]
        );
    }

    #[test]
    fn attributes_change_one_path_per_key() {
        let mut old = fields();
        old.attributes.values.insert("tier".into(), json!("gold"));
        old.attributes.values.insert("seats".into(), json!(3));
        let mut new = fields();
        new.attributes.values.insert("tier".into(), json!("gold"));
        new.attributes.values.insert("beta".into(), json!(true));

        let paths: Vec<(String, Option<Json>, Option<Json>)> = diff(&old, &new)
            .into_iter()
            .map(|c| (c.path, c.old_value, c.new_value))
            .collect();

        assert_eq!(
            paths,
            [
                (
                    "attributes.beta".to_string(),
                    None,
                    Some(json!({"boolValue": true}))
                ),
                (
                    "attributes.seats".to_string(),
                    Some(json!({"intValue": "3"})),
                    None
                ),
            ]
        );
    }

    #[test]
    fn json_values_become_protobuf_values() {
        let value = to_value(&json!({"a": [1, "x", null, false]}));

        let prost_types::value::Kind::StructValue(object) = value.kind.unwrap() else {
            panic!("a struct");
        };
        let prost_types::value::Kind::ListValue(list) = object.fields["a"].kind.clone().unwrap()
        else {
            panic!("a list");
        };
        assert_eq!(list.values.len(), 4);
    }
}
