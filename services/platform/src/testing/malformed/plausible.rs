//! Plausible requests: what a real caller might send, which each probe changes in one field.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};

use super::{DURATION, FIELD_MASK, MAX_DEPTH, OPAQUE, TIMESTAMP, is_id};
use crate::testing::rpc::contracts;

/// `google.api.FieldBehavior.OUTPUT_ONLY`.
const OUTPUT_ONLY: i32 = 3;

/// A request a real caller might send: ids are fresh UUIDs, enums their first named value,
/// text short and plain, timestamps an hour ago, a field mask names one plain text field;
/// output-only fields, maps and all but the first member of each oneof are left unset.
pub fn plausible(descriptor: &MessageDescriptor, depth: usize) -> DynamicMessage {
    fill(descriptor, depth, None)
}

/// As [`plausible`], with `existing` in every id field but request ids (in an output-only `id`
/// too: an update names its resource there).
pub(super) fn plausible_around(
    descriptor: &MessageDescriptor,
    existing: Option<&str>,
) -> DynamicMessage {
    fill(descriptor, 0, existing)
}

fn fill(descriptor: &MessageDescriptor, depth: usize, existing: Option<&str>) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    match descriptor.full_name() {
        TIMESTAMP => {
            let hour_ago = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64 - 3600);
            message.set_field_by_name("seconds", Value::I64(hour_ago));
            return message;
        }
        DURATION => {
            message.set_field_by_name("seconds", Value::I64(60));
            return message;
        }
        name if OPAQUE.contains(&name) || name == FIELD_MASK || depth > MAX_DEPTH => {
            return message;
        }
        _ => {}
    }
    let mut oneofs = BTreeSet::new();
    for field in descriptor.fields() {
        let names_existing = existing.is_some() && field.name() == "id";
        if field.is_map() || (is_output_only(&field) && !names_existing) {
            continue;
        }
        if let Some(oneof) = field.containing_oneof()
            && !oneofs.insert(oneof.full_name().to_string())
        {
            continue;
        }
        let value = match field.kind() {
            Kind::Message(inner) if inner.full_name() == descriptor.full_name() => continue,
            Kind::Message(inner) if inner.full_name() == FIELD_MASK => {
                let mut mask = DynamicMessage::new(inner.clone());
                let paths = mask_path(descriptor)
                    .map(Value::String)
                    .into_iter()
                    .collect();
                mask.set_field_by_name("paths", Value::List(paths));
                Value::Message(mask)
            }
            Kind::Message(inner) => Value::Message(fill(&inner, depth + 1, existing)),
            Kind::String => Value::String(plausible_text(field.name(), existing)),
            Kind::Enum(e) => Value::EnumNumber(first_named(&e)),
            Kind::Bytes => Value::Bytes(Bytes::from_static(b"probe")),
            Kind::Bool => Value::Bool(false),
            Kind::Double => Value::F64(0.5),
            Kind::Float => Value::F32(0.5),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(10),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(10),
            Kind::Uint32 | Kind::Fixed32 => Value::U32(10),
            Kind::Uint64 | Kind::Fixed64 => Value::U64(10),
        };
        if field.is_list() {
            message.set_field(&field, Value::List(vec![value]));
        } else {
            message.set_field(&field, value);
        }
    }
    message
}

/// A path an update mask beside the resource in `request` may name: the resource's first plain
/// text field (not its id, etag or an output-only field).
fn mask_path(request: &MessageDescriptor) -> Option<String> {
    let resource = request.fields().find_map(|f| match f.kind() {
        Kind::Message(m) if m.full_name() != FIELD_MASK && !f.is_list() => Some(m),
        _ => None,
    })?;
    resource
        .fields()
        .find(|f| {
            matches!(f.kind(), Kind::String)
                && !f.is_list()
                && !is_id(f.name())
                && f.name() != "etag"
                && !is_output_only(f)
        })
        .map(|f| f.name().to_string())
}

fn plausible_text(name: &str, existing: Option<&str>) -> String {
    match name {
        "request_id" => uuid::Uuid::now_v7().to_string(),
        _ if is_id(name) && name != "name" => existing
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        // A contact point's value: its type is the first named one, email.
        // Unique, as a store may refuse a second customer with the same address.
        _ if name.contains("email") || name == "value" => {
            format!("probe-{}@example.com", uuid::Uuid::now_v7().simple())
        }
        "phone" => "+14155550100".into(),
        "region_code" => "US".into(),
        "currency_code" => "USD".into(),
        "time_zone" => "UTC".into(),
        "language_code" => "en".into(),
        _ if name.ends_with("token")
            || name == "etag"
            || name == "filter"
            || name == "order_by" =>
        {
            String::new()
        }
        _ => "probe".into(),
    }
}

/// The first enum value that is not the zero `_UNSPECIFIED` one (zero when there is none).
pub(super) fn first_named(e: &prost_reflect::EnumDescriptor) -> i32 {
    e.values()
        .map(|v| v.number())
        .find(|n| *n != 0)
        .unwrap_or(0)
}

fn is_output_only(field: &FieldDescriptor) -> bool {
    let Some(behavior) = contracts().get_extension_by_name("google.api.field_behavior") else {
        return false;
    };
    let options = field.options();
    let value = options.get_extension(&behavior);
    value
        .as_list()
        .is_some_and(|list| list.iter().any(|v| v.as_enum_number() == Some(OUTPUT_ONLY)))
}
