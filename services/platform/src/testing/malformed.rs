//! The malformed-input harness: every method of every served service gets, with a token holding
//! every scope, undecodable bytes, wrong wire types, NUL characters, oversized strings and
//! repeats, out-of-range numbers and timestamps, unknown enum values, malformed ids and page
//! tokens, and must answer each without INTERNAL or UNKNOWN, with a bounded answer, and keep
//! serving.
//!
//! Requests are built from the contracts' descriptors (`prost_reflect::DynamicMessage`) and sent
//! as raw bytes, so a new service is covered by being served. Each probe changes one field of a
//! plausible request (ids are fresh UUIDs, enums their first named value, timestamps an hour
//! ago), so a bad value reaches as far into the handler as a real caller's would, not only the
//! first "field is required" check.
//!
//! ```ignore
//! let app = TestApp::spawn(&[&crm_customer::module]).await;
//! let services = served_services(app.channel().await).await;
//! probe_malformed_inputs(&app, &services).await.assert_clean();
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, MethodDescriptor, Value,
};

mod plausible;

pub use plausible::plausible;

use self::plausible::{first_named, plausible_around};
use super::app::{TestApp, is_serving};
use super::auth::user_token;
use super::rpc::{Outcome, call_raw, contracts, methods_of, path_of, probe_channel};
use crate::auth::{ContractScopes, SCOPE_CHECKED_IN_HANDLER};

/// Longest status message a caller may get back, whatever it sent.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// Longest encoded `grpc-status-details-bin` a caller may get back, whatever it sent.
pub const MAX_STATUS_DETAILS: usize = 16 * 1024;

/// Largest first response message a probe may get back: no probe's answer should echo a
/// megabyte or a hundred thousand items it was sent.
pub const MAX_RESPONSE: usize = 256 * 1024;

/// The name of the probe that sends the plausible request unchanged.
const PLAUSIBLE: &str = "a plausible request";

/// The size of an oversized string.
const OVERSIZED_STRING: usize = 1 << 20;

/// The length of an oversized repeated field.
const OVERSIZED_REPEAT: usize = 100_000;

/// How deep into nested messages probes reach (a recursive message stops there).
const MAX_DEPTH: usize = 4;

/// Probes in flight at once: enough to keep both cores busy, few enough to stay within a test
/// server's pool.
const CONCURRENCY: usize = 8;

const TIMESTAMP: &str = "google.protobuf.Timestamp";
const DURATION: &str = "google.protobuf.Duration";
const FIELD_MASK: &str = "google.protobuf.FieldMask";
/// Messages whose fields are not probed one by one: free-form JSON-like values.
const OPAQUE: &[&str] = &[
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Any",
];

/// One thing a harness found wrong.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// The method's gRPC path.
    pub method: String,
    /// What was sent, e.g. `NUL in customer.email`.
    pub probe: String,
    /// What is wrong with the answer, e.g. `INTERNAL`, or what was expected.
    pub problem: String,
    /// The answer: code, message prefix and sizes.
    pub answer: String,
}

/// What a run of the harness sent and found.
#[derive(Debug, Clone, Default)]
pub struct MalformedInputReport {
    /// Methods probed.
    pub methods: usize,
    /// Probes sent.
    pub probes: usize,
    /// Everything wrong, sorted by method and probe.
    pub findings: Vec<Finding>,
    /// What each method answered to its plausible request, which every other probe changes in
    /// one field: a method that refuses it sees most probes stopped by the same check.
    pub plausible_answers: Vec<(String, String)>,
    /// How long the run took.
    pub elapsed: Duration,
}

impl MalformedInputReport {
    /// Fails the test listing every finding, one a line, when there is any.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert!(self.findings.is_empty(), "{}", self.render());
    }

    /// The findings as lines, with a summary line first.
    pub fn render(&self) -> String {
        let mut text = format!(
            "{} of {} malformed-input probes over {} methods answered wrongly (run took {:?}):\n",
            self.findings.len(),
            self.probes,
            self.methods,
            self.elapsed
        );
        for f in &self.findings {
            let _ = writeln!(
                text,
                "  {} | {} | {} | {}",
                f.method, f.probe, f.problem, f.answer
            );
        }
        text.push_str("What each method answered to its plausible request:\n");
        for (method, answer) in &self.plausible_answers {
            let _ = writeln!(text, "  {method} | {answer}");
        }
        text
    }
}

/// Sends every probe to every method of `services` on `app`'s server and reports each answer
/// that is INTERNAL, UNKNOWN, oversized, or missing, and whether the server still reports
/// SERVING at the end.
pub async fn probe_malformed_inputs(app: &TestApp, services: &[&str]) -> MalformedInputReport {
    let started = std::time::Instant::now();
    let token = every_scope_token(services);
    let authorization = format!("Bearer {token}");
    let methods = methods_of(services);
    let existing = existing_resources(app, &methods, &authorization).await;
    let probes: Vec<(MethodDescriptor, String, Bytes)> = methods
        .iter()
        .enumerate()
        .flat_map(|(i, method)| {
            probes_for(&method.input(), existing.get(i).map(String::as_str))
                .into_iter()
                .map(move |(probe, body)| (method.clone(), probe, body))
        })
        .collect();
    let sent = probes.len();
    let answers: Vec<(String, String, Outcome)> = futures::stream::iter(probes)
        .map(|(method, probe, body)| {
            let authorization = authorization.clone();
            async move {
                let channel = probe_channel(app.addr).await;
                let outcome = call_raw(channel, &method, Some(&authorization), body).await;
                (path_of(&method), probe, outcome)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut findings = Vec::new();
    let mut plausible_answers = Vec::new();
    for (method, probe, outcome) in answers {
        if probe == PLAUSIBLE {
            plausible_answers.push((method.clone(), outcome.describe()));
        }
        for problem in problems_of(&outcome) {
            findings.push(Finding {
                method: method.clone(),
                probe: probe.clone(),
                problem,
                answer: outcome.describe(),
            });
        }
    }
    plausible_answers.sort();
    if !is_serving(app.addr).await {
        findings.push(Finding {
            method: "(server)".into(),
            probe: "health check after every probe".into(),
            problem: "not SERVING".into(),
            answer: "the server stopped serving".into(),
        });
    }
    findings.sort();
    MalformedInputReport {
        methods: methods.len(),
        probes: sent,
        findings,
        plausible_answers,
        elapsed: started.elapsed(),
    }
}

/// Ids of resources the server created, one for each of `methods`, so each method's probes
/// name a resource that exists (and a destructive probe of one method does not take another's
/// away): made with the plausible request of the first unary `Create…` method that succeeds,
/// read from the `id` of its answer or of a message in it. None when no such method exists.
async fn existing_resources(
    app: &TestApp,
    methods: &[MethodDescriptor],
    authorization: &str,
) -> Vec<String> {
    let creators = methods.iter().filter(|m| {
        m.name().starts_with("Create") && !m.is_client_streaming() && !m.is_server_streaming()
    });
    for create in creators {
        let ids: Vec<String> = futures::stream::iter(0..methods.len())
            .map(|_| async {
                let body = encode(&plausible(&create.input(), 0));
                let channel = probe_channel(app.addr).await;
                match call_raw(channel, create, Some(authorization), body).await {
                    Outcome::Message(answer) => DynamicMessage::decode(create.output(), answer)
                        .ok()
                        .and_then(|message| id_in(&message, 0)),
                    _ => None,
                }
            })
            .buffer_unordered(CONCURRENCY)
            .filter_map(|id| async move { id })
            .collect()
            .await;
        if ids.len() == methods.len() {
            return ids;
        }
    }
    Vec::new()
}

/// The `id` of `message`, or of the first message field holding one.
fn id_in(message: &DynamicMessage, depth: usize) -> Option<String> {
    if let Some(id) = message.get_field_by_name("id")
        && let Some(id) = id.as_str()
        && !id.is_empty()
    {
        return Some(id.to_string());
    }
    if depth >= 2 {
        return None;
    }
    message
        .fields()
        .filter_map(|(_, value)| value.as_message())
        .find_map(|inner| id_in(inner, depth + 1))
}

/// A live token holding [`every_scope`] of `services`.
pub fn every_scope_token(services: &[&str]) -> String {
    let scopes = every_scope(services);
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    user_token(&scopes)
}

/// Every scope that a method of `services` declares, and `<owner>.read`/`.write` for each
/// owner, so the services that check scopes in their handlers admit the token too; sorted.
pub fn every_scope(services: &[&str]) -> Vec<String> {
    let contract: Vec<&str> = services
        .iter()
        .copied()
        .filter(|s| !SCOPE_CHECKED_IN_HANDLER.contains(s))
        .collect();
    let scopes = ContractScopes::for_services(&contract)
        .unwrap_or_else(|e| panic!("the served services' scopes: {e}"));
    let mut all: BTreeSet<String> = scopes.scopes().into_iter().map(str::to_string).collect();
    let owners: BTreeSet<String> = all
        .iter()
        .filter_map(|s| s.split_once('.').map(|(owner, _)| owner.to_string()))
        .collect();
    for owner in owners {
        all.insert(format!("{owner}.read"));
        all.insert(format!("{owner}.write"));
    }
    all.into_iter().collect()
}

/// What is wrong with `outcome`, if anything.
fn problems_of(outcome: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    match outcome {
        Outcome::Status(status) => {
            match status.code() {
                tonic::Code::Internal => problems.push("INTERNAL".to_string()),
                tonic::Code::Unknown => problems.push("UNKNOWN".to_string()),
                _ => {}
            }
            if status.message().len() > MAX_STATUS_MESSAGE {
                problems.push(format!("status message over {MAX_STATUS_MESSAGE} B"));
            }
            if status.details().len() > MAX_STATUS_DETAILS {
                problems.push(format!("status details over {MAX_STATUS_DETAILS} B"));
            }
        }
        Outcome::Message(body) if body.len() > MAX_RESPONSE => {
            problems.push(format!("response over {MAX_RESPONSE} B"));
        }
        Outcome::Message(_) | Outcome::Open => {}
        Outcome::NoAnswer => problems.push("no answer".to_string()),
    }
    problems
}

/// Every probe of a method whose request is `input`, around a plausible request naming
/// `existing` in its id fields: a name and the encoded request.
pub fn probes_for(input: &MessageDescriptor, existing: Option<&str>) -> Vec<(String, Bytes)> {
    let mut probes: Vec<(String, Bytes)> = vec![
        (
            "undecodable: truncated length".into(),
            Bytes::from_static(&[0x0a, 0xff]),
        ),
        (
            "undecodable: overlong varint".into(),
            Bytes::from_static(&[0xff; 11]),
        ),
        (
            "undecodable: length past the end".into(),
            Bytes::from_static(&[0x0a, 0x7f, 0x01]),
        ),
        ("an empty request".into(), Bytes::new()),
        (PLAUSIBLE.into(), encode(&plausible_around(input, existing))),
    ];
    for field in input.fields() {
        probes.push((
            format!("wrong wire type for {}", field.name()),
            wrong_wire_type(&field),
        ));
    }
    for slot in slots(input) {
        for (what, value) in bad_values(&slot) {
            let mut message = plausible_around(input, existing);
            apply(&mut message, &slot.steps, value);
            probes.push((format!("{what} in {}", slot.label), encode(&message)));
        }
    }
    probes
}

fn encode(message: &DynamicMessage) -> Bytes {
    Bytes::from(message.encode_to_vec())
}

/// A field set with a wire type its type does not have.
fn wrong_wire_type(field: &FieldDescriptor) -> Bytes {
    let length_delimited = field.is_list()
        || field.is_map()
        || matches!(field.kind(), Kind::String | Kind::Bytes | Kind::Message(_));
    let tag = u64::from(field.number()) << 3;
    let mut bytes = Vec::new();
    if length_delimited && !(field.is_list() && is_varint(&field.kind())) {
        // A varint where a length-delimited value belongs.
        prost::encoding::encode_varint(tag, &mut bytes);
        bytes.push(0x01);
    } else if field.is_list() {
        // A packed varint list accepts varints too; 32-bit fixed is wrong for it.
        prost::encoding::encode_varint(tag | 5, &mut bytes);
        bytes.extend_from_slice(&[0, 0, 0, 0]);
    } else {
        // A length-delimited value where a scalar belongs.
        prost::encoding::encode_varint(tag | 2, &mut bytes);
        bytes.extend_from_slice(&[0x01, 0x00]);
    }
    Bytes::from(bytes)
}

fn is_varint(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Sint32
            | Kind::Sint64
            | Kind::Bool
            | Kind::Enum(_)
    )
}

/// How a probe reaches into a field on its way to the value it changes.
#[derive(Debug, Clone)]
enum Reach {
    /// The field's value itself (for a repeated field: the whole list or map).
    Whole,
    /// The first element of a repeated field.
    Element,
    /// The key of a map's one entry.
    MapKey,
    /// The value of a map's one entry.
    MapValue,
}

#[derive(Debug, Clone)]
struct Step {
    field: FieldDescriptor,
    into: Reach,
}

/// What a probe changes: a leaf value somewhere in the request.
#[derive(Debug, Clone)]
struct Slot {
    steps: Vec<Step>,
    /// Where, as a caller would name it: `customer.addresses[0].address.locality`.
    label: String,
    /// The leaf's type.
    kind: Leaf,
    /// The leaf field's own name (`id`, `page_token`, …), for name-driven probes.
    name: String,
}

#[derive(Debug, Clone)]
enum Leaf {
    Scalar(Kind),
    Timestamp,
    Duration,
    /// A whole repeated field or map, of this element kind.
    Repeated(FieldDescriptor),
}

/// Every leaf of `input` a probe changes, depth-first.
fn slots(input: &MessageDescriptor) -> Vec<Slot> {
    let mut found = Vec::new();
    let mut path = vec![input.full_name().to_string()];
    walk(input, &[], "", &mut path, &mut found);
    found
}

fn walk(
    message: &MessageDescriptor,
    steps: &[Step],
    label: &str,
    path: &mut Vec<String>,
    found: &mut Vec<Slot>,
) {
    for field in message.fields() {
        let here = if label.is_empty() {
            field.name().to_string()
        } else {
            format!("{label}.{}", field.name())
        };
        let step = |into| {
            let mut steps = steps.to_vec();
            steps.push(Step {
                field: field.clone(),
                into,
            });
            steps
        };
        if field.is_map() {
            found.push(Slot {
                steps: step(Reach::Whole),
                label: here.clone(),
                kind: Leaf::Repeated(field.clone()),
                name: field.name().into(),
            });
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let (key, value) = (entry.map_entry_key_field(), entry.map_entry_value_field());
            found.push(Slot {
                steps: step(Reach::MapKey),
                label: format!("{here}<key>"),
                kind: Leaf::Scalar(key.kind()),
                name: key.name().into(),
            });
            descend(
                &value,
                step(Reach::MapValue),
                &format!("{here}[\"probe\"]"),
                path,
                found,
            );
            continue;
        }
        if field.is_list() {
            found.push(Slot {
                steps: step(Reach::Whole),
                label: here.clone(),
                kind: Leaf::Repeated(field.clone()),
                name: field.name().into(),
            });
            descend(
                &field,
                step(Reach::Element),
                &format!("{here}[0]"),
                path,
                found,
            );
            continue;
        }
        descend(&field, step(Reach::Whole), &here, path, found);
    }
}

/// Adds the slots of one value of `field`, reached by `steps`.
fn descend(
    field: &FieldDescriptor,
    steps: Vec<Step>,
    label: &str,
    path: &mut Vec<String>,
    found: &mut Vec<Slot>,
) {
    let name = field.name().to_string();
    let kind = match field.kind() {
        Kind::Message(m) if m.full_name() == TIMESTAMP => Leaf::Timestamp,
        Kind::Message(m) if m.full_name() == DURATION => Leaf::Duration,
        Kind::Message(m) => {
            let full = m.full_name().to_string();
            if OPAQUE.contains(&full.as_str()) || path.len() > MAX_DEPTH || path.contains(&full) {
                return;
            }
            path.push(full);
            walk(&m, &steps, label, path, found);
            path.pop();
            return;
        }
        other => Leaf::Scalar(other),
    };
    found.push(Slot {
        steps,
        label: label.to_string(),
        kind,
        name,
    });
}

/// The bad values a probe puts in `slot`, each with its name.
fn bad_values(slot: &Slot) -> Vec<(String, Value)> {
    let mut values: Vec<(String, Value)> = Vec::new();
    let mut add = |what: &str, value: Value| values.push((what.to_string(), value));
    match &slot.kind {
        Leaf::Scalar(Kind::String) => {
            add("NUL", Value::String("probe\u{0}nul".into()));
            add("a 1 MB string", Value::String("x".repeat(OVERSIZED_STRING)));
            if is_id(&slot.name) {
                add("a malformed id", Value::String("not-a-uuid".into()));
                add("an empty id", Value::String(String::new()));
                add(
                    "the nil UUID",
                    Value::String("00000000-0000-0000-0000-000000000000".into()),
                );
            }
            if slot.name.ends_with("page_token") || slot.name.ends_with("resume_token") {
                add("a garbage token", Value::String("not-a-token".into()));
                add(
                    "a base64 token",
                    Value::String("AAAAAAAAAAAAAAAAAAAAAAAA".into()),
                );
                add("a token of symbols", Value::String("%%%%//==".into()));
                add("a long base64 token", Value::String("QUJD".repeat(200)));
            }
            if slot.name == "filter" {
                for bad in ["((", "display_name = ", "no_such_field = 1", "a = 'x' AND"] {
                    add(&format!("the filter {bad:?}"), Value::String(bad.into()));
                }
            }
            if slot.name == "order_by" {
                for bad in ["no_such_field desc", ",,,", "display_name sideways"] {
                    add(&format!("the order {bad:?}"), Value::String(bad.into()));
                }
            }
        }
        Leaf::Scalar(Kind::Bytes) => {
            add(
                "1 MB of bytes",
                Value::Bytes(Bytes::from(vec![0xff; OVERSIZED_STRING])),
            );
        }
        Leaf::Scalar(Kind::Int32 | Kind::Sint32 | Kind::Sfixed32) => {
            add("i32::MIN", Value::I32(i32::MIN));
            add("i32::MAX", Value::I32(i32::MAX));
            add("-1", Value::I32(-1));
        }
        Leaf::Scalar(Kind::Int64 | Kind::Sint64 | Kind::Sfixed64) => {
            add("i64::MIN", Value::I64(i64::MIN));
            add("i64::MAX", Value::I64(i64::MAX));
            add("-1", Value::I64(-1));
        }
        Leaf::Scalar(Kind::Uint32 | Kind::Fixed32) => add("u32::MAX", Value::U32(u32::MAX)),
        Leaf::Scalar(Kind::Uint64 | Kind::Fixed64) => add("u64::MAX", Value::U64(u64::MAX)),
        Leaf::Scalar(Kind::Double) => {
            add("NaN", Value::F64(f64::NAN));
            add("infinity", Value::F64(f64::INFINITY));
            add("-infinity", Value::F64(f64::NEG_INFINITY));
            add("f64::MAX", Value::F64(f64::MAX));
        }
        Leaf::Scalar(Kind::Float) => {
            add("NaN", Value::F32(f32::NAN));
            add("infinity", Value::F32(f32::INFINITY));
        }
        Leaf::Scalar(Kind::Enum(_)) => {
            add("an unknown enum value", Value::EnumNumber(999));
            add("a negative enum value", Value::EnumNumber(-1));
        }
        Leaf::Scalar(Kind::Bool | Kind::Message(_)) => {}
        Leaf::Timestamp => {
            let timestamp = contracts()
                .get_message_by_name(TIMESTAMP)
                .expect("the contracts import google.protobuf.Timestamp");
            for (what, seconds, nanos) in [
                ("a timestamp in year 0", -62_167_219_200, 0),
                ("a timestamp in year 10000", 253_402_300_800, 0),
                ("a timestamp at i64::MIN seconds", i64::MIN, 0),
                ("a timestamp with negative nanos", 1_700_000_000, -1),
                (
                    "a timestamp with nanos over a second",
                    1_700_000_000,
                    1_000_000_000,
                ),
            ] {
                add(what, seconds_nanos(&timestamp, seconds, nanos));
            }
        }
        Leaf::Duration => {
            let duration = contracts()
                .get_message_by_name(DURATION)
                .expect("the contracts import google.protobuf.Duration");
            for (what, seconds, nanos) in [
                ("a duration of i64::MAX seconds", i64::MAX, 0),
                ("a negative duration", -3600, 0),
                ("a duration with signs that differ", 60, -1),
                ("a duration with nanos over a second", 1, 2_000_000_000),
            ] {
                add(what, seconds_nanos(&duration, seconds, nanos));
            }
        }
        Leaf::Repeated(field) => add(
            &format!("{OVERSIZED_REPEAT} items"),
            oversized_repeat(field),
        ),
    }
    values
}

fn seconds_nanos(descriptor: &MessageDescriptor, seconds: i64, nanos: i32) -> Value {
    let mut message = DynamicMessage::new(descriptor.clone());
    message.set_field_by_name("seconds", Value::I64(seconds));
    message.set_field_by_name("nanos", Value::I32(nanos));
    Value::Message(message)
}

/// A repeated field or map with [`OVERSIZED_REPEAT`] small items: short strings (bad as ids),
/// empty messages, the first named value of an enum.
fn oversized_repeat(field: &FieldDescriptor) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            unreachable!("a map field's kind is its entry message");
        };
        let (key, value) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let map: HashMap<MapKey, Value> = (0..OVERSIZED_REPEAT)
            .filter_map(|i| {
                let key = match key.kind() {
                    Kind::String => MapKey::String(format!("k{i}")),
                    Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(i as i32),
                    Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(i as i64),
                    Kind::Uint32 | Kind::Fixed32 => MapKey::U32(i as u32),
                    Kind::Uint64 | Kind::Fixed64 => MapKey::U64(i as u64),
                    _ => return None,
                };
                Some((key, Value::default_value(&value.kind())))
            })
            .collect();
        return Value::Map(map);
    }
    let item = match field.kind() {
        Kind::String => Value::String("x".into()),
        Kind::Enum(e) => Value::EnumNumber(first_named(&e)),
        kind => Value::default_value(&kind),
    };
    Value::List(vec![item; OVERSIZED_REPEAT])
}

/// The key of a map's one entry when a probe changes its value: not the empty or zero default,
/// which a service may refuse before it looks at the value.
fn plausible_key(kind: &Kind) -> MapKey {
    match kind {
        Kind::String => MapKey::String("probe".into()),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => MapKey::I32(1),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => MapKey::I64(1),
        Kind::Uint32 | Kind::Fixed32 => MapKey::U32(1),
        Kind::Uint64 | Kind::Fixed64 => MapKey::U64(1),
        _ => MapKey::default_value(kind),
    }
}

/// Whether a field named `name` holds an id or a resource name.
fn is_id(name: &str) -> bool {
    name == "id"
        || name.ends_with("_id")
        || name == "ids"
        || name.ends_with("_ids")
        || name == "name"
}

/// Puts `value` where `steps` lead in `message`, creating what is missing on the way (the first
/// element of a list, the one entry of a map).
fn apply(message: &mut DynamicMessage, steps: &[Step], value: Value) {
    let Some((step, rest)) = steps.split_first() else {
        return;
    };
    let field = &step.field;
    let slot = message.get_field_mut(field);
    let target = match step.into {
        Reach::Whole => slot,
        Reach::Element => {
            let list = slot.as_list_mut().expect("a repeated field holds a list");
            if list.is_empty() {
                list.push(Value::default_value(&field.kind()));
            }
            &mut list[0]
        }
        Reach::MapKey | Reach::MapValue => {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("a map field's kind is its entry message");
            };
            let (key_field, value_field) =
                (entry.map_entry_key_field(), entry.map_entry_value_field());
            let map = slot.as_map_mut().expect("a map field holds a map");
            map.clear();
            if matches!(step.into, Reach::MapKey) {
                if let Some(key) = value.into_map_key() {
                    map.insert(key, Value::default_value(&value_field.kind()));
                }
                return;
            }
            map.entry(plausible_key(&key_field.kind()))
                .or_insert_with(|| Value::default_value(&value_field.kind()))
        }
    };
    if rest.is_empty() {
        *target = value;
    } else {
        let inner = target
            .as_message_mut()
            .expect("a step that is not the last one leads into a message");
        apply(inner, rest, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer_request() -> MessageDescriptor {
        contracts()
            .get_message_by_name("crm.customer.v1.CreateCustomerRequest")
            .unwrap()
    }

    #[test]
    fn slots_reach_nested_repeated_and_map_fields() {
        let labels: Vec<String> = slots(&customer_request())
            .into_iter()
            .map(|s| s.label)
            .collect();

        for expected in [
            "request_id",
            "customer.display_name",
            "customer.addresses[0].address.address_lines[0]",
            "customer.attributes<key>",
            "customer.attributes[\"probe\"].string_value",
            "customer.attributes[\"probe\"].timestamp_value",
            "customer.tags",
        ] {
            assert!(
                labels.iter().any(|l| l == expected),
                "{expected} in {labels:?}"
            );
        }
    }

    #[test]
    fn a_probe_changes_the_field_it_names_and_nothing_else_of_the_plausible_request() {
        let input = customer_request();
        let slot = slots(&input)
            .into_iter()
            .find(|s| s.label == "customer.addresses[0].address.locality")
            .unwrap();
        let mut message = plausible(&input, 0);

        apply(&mut message, &slot.steps, Value::String("a\u{0}b".into()));

        let request: crm_proto::crm::customer::v1::CreateCustomerRequest =
            message.transcode_to().unwrap();
        let customer = request.customer.unwrap();
        assert_eq!(
            customer.addresses[0].address.as_ref().unwrap().locality,
            "a\u{0}b"
        );
        assert_eq!(customer.display_name, "probe");
        assert!(uuid::Uuid::parse_str(&request.request_id).is_ok());
    }

    #[test]
    fn a_plausible_request_leaves_output_only_fields_unset() {
        let request: crm_proto::crm::customer::v1::CreateCustomerRequest =
            plausible(&customer_request(), 0).transcode_to().unwrap();

        let customer = request.customer.unwrap();
        assert_eq!(customer.id, "");
        assert!(customer.audit.is_none());
        assert!(
            customer.email.ends_with("@example.com"),
            "{}",
            customer.email
        );
    }

    #[test]
    fn wrong_wire_types_do_not_decode() {
        for field in customer_request().fields() {
            let bytes = wrong_wire_type(&field);

            let decoded = crm_proto::crm::customer::v1::CreateCustomerRequest::decode(bytes);

            assert!(decoded.is_err(), "{}", field.name());
        }
    }

    #[test]
    fn every_method_of_the_customer_service_gets_probes() {
        for method in methods_of(&["crm.customer.v1.CustomerService"]) {
            let probes = probes_for(&method.input(), None);

            assert!(probes.len() > 5, "{}", method.name());
        }
    }
}
