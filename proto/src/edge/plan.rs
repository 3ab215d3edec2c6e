//! What the walker knows about each message: its fields by number, with their caps resolved from
//! `(crm.common.v1.limits)` and the defaults, built once from the descriptor set.

use std::any::TypeId;
use std::collections::HashMap;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

/// Characters of a string field that declares no `max_length`.
pub const DEFAULT_MAX_CHARS: u32 = 1_024;
/// Bytes of a bytes field that declares no `max_length`.
pub const DEFAULT_MAX_BYTES: u32 = 1_048_576;
/// Elements of a repeated field that declares no `max_items`.
pub const DEFAULT_MAX_ITEMS: u32 = 1_000;
/// Entries of a map field that declares no `max_items`.
pub const DEFAULT_MAX_ENTRIES: u32 = 100;

/// Packages vendored as they are published, whose messages get no default caps: the Open
/// Inference Protocol carries tensors of any length, bounded only by the message size.
const UNCAPPED_PACKAGES: &[&str] = &["inference"];

const NO_CAP: u32 = u32::MAX;

/// Every message of the descriptor set, and which of them are requests.
#[derive(Debug)]
pub(crate) struct Plans {
    pub(crate) messages: Vec<MessagePlan>,
    by_name: HashMap<String, usize>,
    by_type: HashMap<TypeId, usize>,
}

#[derive(Debug)]
pub(crate) struct MessagePlan {
    pub(crate) full_name: String,
    /// Sorted by number.
    pub(crate) fields: Vec<FieldPlan>,
    /// How many of the fields are repeated (each gets a counter while the message is walked).
    pub(crate) repeated_slots: usize,
}

#[derive(Debug)]
pub(crate) struct FieldPlan {
    pub(crate) number: u32,
    pub(crate) name: String,
    pub(crate) kind: FieldKind,
    /// For a repeated field or map: its counter and the most elements allowed.
    pub(crate) repeated: Option<Repeated>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Repeated {
    pub(crate) slot: usize,
    pub(crate) max_items: u32,
    pub(crate) is_map: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    /// UTF-8 text, at most this many characters.
    Str(u32),
    /// Raw bytes, at most this many.
    Bytes(u32),
    /// A nested message, by index into [`Plans::messages`].
    Message(usize),
    /// A map entry message (key 1, value 2), by index.
    MapEntry(usize),
    /// `google.protobuf.Timestamp`.
    Timestamp,
    /// `google.protobuf.Duration`.
    Duration,
    /// Varint-encoded scalars (integers, bool, enum).
    Varint,
    /// 4-byte scalars.
    Fixed32,
    /// 8-byte scalars.
    Fixed64,
}

impl Plans {
    /// Plans for every message in `descriptor_set`; `requests` names the Rust type of each
    /// message that is some method's request.
    pub(crate) fn build(
        descriptor_set: &[u8],
        requests: &[(TypeId, &'static str)],
    ) -> Result<Self, prost_reflect::DescriptorError> {
        let pool = DescriptorPool::decode(descriptor_set)?;
        let limits = pool.get_extension_by_name("crm.common.v1.limits");
        let messages: Vec<MessageDescriptor> = pool.all_messages().collect();
        let by_name: HashMap<String, usize> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.full_name().to_string(), i))
            .collect();
        let plans = messages
            .iter()
            .map(|message| {
                let uncapped = UNCAPPED_PACKAGES.contains(&message.package_name());
                let mut repeated_slots = 0;
                let mut fields: Vec<FieldPlan> = message
                    .fields()
                    .map(|field| {
                        let (max_length, max_items) = declared_caps(&field, limits.as_ref());
                        let kind = field_kind(&field, &by_name, max_length, uncapped);
                        let repeated = (field.is_list() || field.is_map()).then(|| {
                            repeated_slots += 1;
                            let default = match (uncapped, field.is_map()) {
                                (true, _) => NO_CAP,
                                (false, true) => DEFAULT_MAX_ENTRIES,
                                (false, false) => DEFAULT_MAX_ITEMS,
                            };
                            Repeated {
                                slot: repeated_slots - 1,
                                max_items: max_items.unwrap_or(default),
                                is_map: field.is_map(),
                            }
                        });
                        FieldPlan {
                            number: field.number(),
                            name: field.name().to_string(),
                            kind,
                            repeated,
                        }
                    })
                    .collect();
                fields.sort_by_key(|f| f.number);
                MessagePlan {
                    full_name: message.full_name().to_string(),
                    fields,
                    repeated_slots,
                }
            })
            .collect();
        let by_type = requests
            .iter()
            .filter_map(|(type_id, name)| by_name.get(*name).map(|&i| (*type_id, i)))
            .collect();
        Ok(Self {
            messages: plans,
            by_name,
            by_type,
        })
    }

    /// The plan of the request type `type_id`, if it is one.
    pub(crate) fn request(&self, type_id: TypeId) -> Option<usize> {
        self.by_type.get(&type_id).copied()
    }

    /// The plan of the message named `full_name`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn by_name(&self, full_name: &str) -> Option<usize> {
        self.by_name.get(full_name).copied()
    }

    /// The plan's field with `number`.
    pub(crate) fn field(&self, message: usize, number: u32) -> Option<&FieldPlan> {
        let fields = &self.messages[message].fields;
        fields
            .binary_search_by_key(&number, |f| f.number)
            .ok()
            .map(|i| &fields[i])
    }
}

/// `(max_length, max_items)` as the field declares them; 0 or absent means the default.
fn declared_caps(
    field: &FieldDescriptor,
    limits: Option<&prost_reflect::ExtensionDescriptor>,
) -> (Option<u32>, Option<u32>) {
    let Some(limits) = limits else {
        return (None, None);
    };
    let options = field.options();
    if !options.has_extension(limits) {
        return (None, None);
    }
    let value = options.get_extension(limits);
    let Some(message) = value.as_message() else {
        return (None, None);
    };
    let read = |name: &str| {
        message
            .get_field_by_name(name)
            .and_then(|v| v.as_u32())
            .filter(|&v| v > 0)
    };
    (read("max_length"), read("max_items"))
}

fn field_kind(
    field: &FieldDescriptor,
    by_name: &HashMap<String, usize>,
    max_length: Option<u32>,
    uncapped: bool,
) -> FieldKind {
    let default = |cap: u32| max_length.unwrap_or(if uncapped { NO_CAP } else { cap });
    let index = |m: &MessageDescriptor| by_name[m.full_name()];
    match field.kind() {
        Kind::String => FieldKind::Str(default(DEFAULT_MAX_CHARS)),
        Kind::Bytes => FieldKind::Bytes(default(DEFAULT_MAX_BYTES)),
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => FieldKind::Timestamp,
        Kind::Message(m) if m.full_name() == "google.protobuf.Duration" => FieldKind::Duration,
        Kind::Message(m) if m.is_map_entry() => FieldKind::MapEntry(index(&m)),
        Kind::Message(m) => FieldKind::Message(index(&m)),
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => FieldKind::Fixed64,
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => FieldKind::Fixed32,
        Kind::Int32
        | Kind::Int64
        | Kind::Uint32
        | Kind::Uint64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Bool
        | Kind::Enum(_) => FieldKind::Varint,
    }
}
