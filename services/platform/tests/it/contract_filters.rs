//! The filter contract: every request `filter` in `proto/crm` declares its fields in the one form
//! `proto/README.md` ("Filtering") documents, directly above the field,
//!
//! ```text
//!   // Filter over:
//!   //   status: enum TicketStatus
//!   //   tags: repeated text
//!   // Example: `status = OPEN AND tags:vip`
//!   // Order by: create_time, priority (default `create_time desc`)
//!   string filter = 3;
//! ```
//!
//! and the grammar in crm-platform accepts what the declaration promises: each type is one the
//! README lists, each enum exists in the descriptor set, each `Example:` parses and compiles
//! against a schema built from the declaration, each `Order by:` default parses. An item may wrap
//! onto the next comment line only inside backticks. Prose may precede `Filter over:`; nothing may
//! follow the block. Every `…Request` filter must declare its fields; a stored filter (such as
//! `DynamicSegmentDefinition.filter`) is checked the same way when it declares them.
//!
//! Failures are collected and reported together, one `file:line: problem` per line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crm_platform::filter::{self, EnumDef, FieldType, FilterSchema};
use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

/// Packages with List RPCs; each must declare its filters.
const LIST_PACKAGES: &[&str] = &["customer", "inference", "marketing", "sales", "support"];

/// The types `proto/README.md` allows, for messages.
const README_TYPES: &str = "text, id, integer, number, bool, timestamp, date, duration, \
                            enum <Enum>, repeated text, repeated id, repeated enum <Enum>, map";

/// The block's shape, for messages.
const BLOCK_FORM: &str = "the block is `// Filter over:`, then `//   <field>: <type>` lines, then \
                          `// Example: `…`` lines, then optionally \
                          `// Order by: a, b (default `x desc`)`, directly above the field";

// --- What the extractor finds ------------------------------------------------------------------

/// One problem, at a line of a proto file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Failure {
    file: String,
    line: usize,
    message: String,
}

impl Failure {
    fn new(file: &str, line: usize, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0 means the whole file or directory.
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.message),
            line => write!(f, "{}:{line}: {}", self.file, self.message),
        }
    }
}

/// A text with the 1-based line it starts on.
#[derive(Debug, Clone)]
struct Located {
    text: String,
    line: usize,
}

/// One `//   <field>: <type>` line.
#[derive(Debug, Clone)]
struct DeclaredField {
    name: String,
    type_text: String,
    line: usize,
}

/// `// Order by: a, b (default `x desc`)`.
#[derive(Debug, Clone)]
struct OrderBy {
    fields: Vec<String>,
    default: String,
    line: usize,
}

/// A well-formed `Filter over:` block and where it is.
#[derive(Debug, Clone)]
struct FilterBlock {
    file: String,
    package: String,
    message: String,
    /// Line of `string filter = N;`.
    line: usize,
    fields: Vec<DeclaredField>,
    examples: Vec<Located>,
    order_by: Option<OrderBy>,
}

/// What one proto file holds.
#[derive(Debug, Default)]
struct Extracted {
    blocks: Vec<FilterBlock>,
    /// Blocks that are there but not in the documented form.
    malformed: Vec<Failure>,
    /// Request `filter` fields with no `Filter over:` block above them.
    undeclared: Vec<Failure>,
    /// `Filter over:` blocks, well-formed or not.
    blocks_seen: usize,
    list_rpcs: usize,
}

impl Extracted {
    fn absorb(&mut self, other: Extracted) {
        self.blocks.extend(other.blocks);
        self.malformed.extend(other.malformed);
        self.undeclared.extend(other.undeclared);
        self.blocks_seen += other.blocks_seen;
        self.list_rpcs += other.list_rpcs;
    }
}

/// Finds every `string filter = N;` in `text` and reads the comment block above it.
fn extract(file: &str, text: &str) -> Extracted {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Extracted::default();
    let mut package = String::new();
    let mut scopes: Vec<Option<String>> = Vec::new();
    for (index, raw) in lines.iter().enumerate() {
        let code = strip_comment(raw).trim();
        if let Some(name) = code
            .strip_prefix("package ")
            .and_then(|r| r.strip_suffix(';'))
        {
            package = name.trim().to_owned();
        }
        if code.starts_with("rpc List") {
            out.list_rpcs += 1;
        }
        let message = scopes.iter().rev().find_map(Clone::clone);
        if let Some(message) = message.filter(|_| is_filter_field(code)) {
            let line = index + 1;
            let comment = comment_above(&lines, index);
            let block = read_block(file, &comment);
            out.blocks_seen += usize::from(block.is_some());
            match block {
                // A stored filter (not a request field) is checked when it declares its fields.
                None if !message.ends_with("Request") => {}
                None => out.undeclared.push(Failure::new(
                    file,
                    line,
                    format!("{message}.filter has no `// Filter over:` block directly above it"),
                )),
                Some(Err(failures)) => out.malformed.extend(failures),
                Some(Ok(spec)) => out.blocks.push(FilterBlock {
                    file: file.to_owned(),
                    package: package.clone(),
                    message,
                    line,
                    ..spec
                }),
            }
        }
        track_scopes(code, &mut scopes);
    }
    out
}

/// `string filter = N;`, with or without a trailing comment or options.
fn is_filter_field(code: &str) -> bool {
    code.strip_prefix("string filter")
        .and_then(|rest| rest.trim_start().strip_prefix('='))
        .is_some_and(|rest| rest.trim_start().starts_with(|c: char| c.is_ascii_digit()))
}

/// The code of a line without its `//` comment (a `//` inside a string literal is kept).
fn strip_comment(line: &str) -> &str {
    let mut in_string = false;
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' => in_string = !in_string,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Pushes a scope per `{` (named if it opens a message) and pops one per `}`.
fn track_scopes(code: &str, scopes: &mut Vec<Option<String>>) {
    let message_name = code
        .strip_prefix("message ")
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '{').next())
        .map(str::to_owned);
    let mut named = message_name;
    for c in code.chars() {
        match c {
            '{' => scopes.push(named.take()),
            '}' => {
                scopes.pop();
            }
            _ => {}
        }
    }
}

/// The run of `//` lines directly above `index`, top first, as (1-based line, text after `//`).
fn comment_above<'t>(lines: &[&'t str], index: usize) -> Vec<(usize, &'t str)> {
    let mut comment = Vec::new();
    for i in (0..index).rev() {
        match lines[i].trim_start().strip_prefix("//") {
            Some(content) => comment.push((i + 1, content)),
            None => break,
        }
    }
    comment.reverse();
    comment
}

/// Reads the block in `comment`: `None` if there is no `Filter over:` line, else the block or
/// every way it departs from the documented form.
fn read_block(file: &str, comment: &[(usize, &str)]) -> Option<Result<FilterBlock, Vec<Failure>>> {
    let start = comment
        .iter()
        .position(|(_, content)| content.trim() == "Filter over:")?;
    let header_line = comment[start].0;
    let mut block = FilterBlock {
        file: file.to_owned(),
        package: String::new(),
        message: String::new(),
        line: 0,
        fields: Vec::new(),
        examples: Vec::new(),
        order_by: None,
    };
    let mut failures = Vec::new();
    for (line, item) in logical_items(&comment[start + 1..]) {
        if let Err(message) = read_item(&mut block, line, &item) {
            failures.push(Failure::new(file, line, message));
        }
    }
    if block.fields.is_empty() {
        failures.push(Failure::new(
            file,
            header_line,
            "the `Filter over:` block declares no fields",
        ));
    }
    if block.examples.is_empty() {
        failures.push(Failure::new(
            file,
            header_line,
            "the `Filter over:` block has no `// Example: `…`` line; every List and Search has at least one",
        ));
    }
    Some(if failures.is_empty() {
        Ok(block)
    } else {
        Err(failures)
    })
}

/// Joins a line with the following ones while a backtick is open, so that a long example may
/// wrap. Returns (first line, joined text after `//`).
fn logical_items(comment: &[(usize, &str)]) -> Vec<(usize, String)> {
    let mut items = Vec::new();
    let mut i = 0;
    while i < comment.len() {
        let (line, content) = comment[i];
        let mut item = content.to_owned();
        while item.matches('`').count() % 2 == 1 && i + 1 < comment.len() {
            i += 1;
            item.push(' ');
            item.push_str(comment[i].1.trim());
        }
        items.push((line, item));
        i += 1;
    }
    items
}

/// Adds one item (field line, example or order by) to `block`, in the documented order.
fn read_item(block: &mut FilterBlock, line: usize, item: &str) -> Result<(), String> {
    if block.order_by.is_some() {
        return Err(format!(
            "unexpected {:?} after `Order by:`; {BLOCK_FORM}",
            item.trim()
        ));
    }
    if let Some(rest) = item.strip_prefix(" Example:") {
        let text = backticked(rest.trim(), ".").ok_or_else(|| {
            format!(
                "expected one example in backticks, e.g. // Example: `status = OPEN`; found {:?}",
                rest.trim()
            )
        })?;
        block.examples.push(Located { text, line });
        return Ok(());
    }
    if let Some(rest) = item.strip_prefix(" Order by:") {
        block.order_by = Some(read_order_by(rest, line)?);
        return Ok(());
    }
    if item.starts_with("   ") && item.contains(':') {
        if !block.examples.is_empty() {
            return Err(format!(
                "field line {:?} after an `Example:`; {BLOCK_FORM}",
                item.trim()
            ));
        }
        block.fields.push(read_field(item, line)?);
        return Ok(());
    }
    Err(format!("unexpected line {:?}; {BLOCK_FORM}", item.trim()))
}

/// `text` as `` `inner` `` followed by nothing or `tail`; the inner text has no backtick.
fn backticked(text: &str, tail: &str) -> Option<String> {
    let inner = text.strip_prefix('`')?;
    let (inner, after) = inner.split_once('`')?;
    (after.is_empty() || after == tail).then(|| inner.to_owned())
}

fn read_field(item: &str, line: usize) -> Result<DeclaredField, String> {
    let (name, type_text) = item.trim().split_once(':').unwrap_or_default();
    let name = name.trim().strip_suffix(".<key>").unwrap_or(name.trim());
    let valid_name = !name.is_empty()
        && name.split('.').all(|part| {
            part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
    if !valid_name {
        return Err(format!(
            "{name:?} is not a field path (lower_snake_case names joined by dots)"
        ));
    }
    Ok(DeclaredField {
        name: name.to_owned(),
        type_text: type_text.trim().to_owned(),
        line,
    })
}

fn read_order_by(rest: &str, line: usize) -> Result<OrderBy, String> {
    let malformed = || {
        format!(
            "expected `// Order by: a, b (default `x desc`)`, found {:?}",
            rest.trim()
        )
    };
    let (fields, default) = rest.split_once("(default").ok_or_else(malformed)?;
    let default = default.trim();
    let default = default
        .strip_suffix(')')
        .or_else(|| default.strip_suffix(").").map(str::trim_end))
        .and_then(|d| backticked(d.trim(), ""))
        .ok_or_else(malformed)?;
    let fields: Vec<String> = fields.split(',').map(|f| f.trim().to_owned()).collect();
    if fields.iter().any(String::is_empty) {
        return Err(malformed());
    }
    Ok(OrderBy {
        fields,
        default,
        line,
    })
}

// --- Checking a block against the grammar ------------------------------------------------------

/// Every enum in the descriptor set, by full name without the leading dot.
struct Enums(HashMap<String, EnumDescriptorProto>);

impl Enums {
    fn from_descriptor_set() -> Self {
        let set = FileDescriptorSet::decode(crm_proto::FILE_DESCRIPTOR_SET)
            .expect("crm_proto::FILE_DESCRIPTOR_SET decodes");
        let mut enums = HashMap::new();
        for file in &set.file {
            let package = file.package();
            for e in &file.enum_type {
                enums.insert(format!("{package}.{}", e.name()), e.clone());
            }
            for message in &file.message_type {
                collect_nested(
                    &format!("{package}.{}", message.name()),
                    message,
                    &mut enums,
                );
            }
        }
        Self(enums)
    }

    /// The enum `name` means in `package` (bare: that package; dotted: fully qualified), as the
    /// filter sees it: its prefix and bare value names.
    fn resolve(&self, name: &str, package: &str) -> Result<&'static EnumDef, String> {
        let full = if name.contains('.') {
            name.trim_start_matches('.').to_owned()
        } else {
            format!("{package}.{name}")
        };
        let Some(descriptor) = self.0.get(&full) else {
            return Err(format!(
                "enum {full} does not exist (a bare name is looked up in {package}; name another package's enum in full, e.g. crm.common.v1.Channel)"
            ));
        };
        enum_def(&full, descriptor)
    }
}

fn collect_nested(
    scope: &str,
    message: &DescriptorProto,
    out: &mut HashMap<String, EnumDescriptorProto>,
) {
    for e in &message.enum_type {
        out.insert(format!("{scope}.{}", e.name()), e.clone());
    }
    for nested in &message.nested_type {
        collect_nested(&format!("{scope}.{}", nested.name()), nested, out);
    }
}

/// The enum's values minus the prefix its name gives (`TicketStatus` → `TICKET_STATUS_`),
/// without the zero `_UNSPECIFIED` value.
fn enum_def(full: &str, descriptor: &EnumDescriptorProto) -> Result<&'static EnumDef, String> {
    let prefix = format!("{}_", screaming_snake(descriptor.name()));
    let mut values = Vec::new();
    for value in &descriptor.value {
        if value.number() == 0 && value.name().ends_with("_UNSPECIFIED") {
            continue;
        }
        let Some(bare) = value.name().strip_prefix(&prefix) else {
            return Err(format!(
                "value {} of enum {full} does not start with {prefix}",
                value.name()
            ));
        };
        values.push(leak(bare.to_owned()));
    }
    let values: &'static [&'static str] = Box::leak(values.into_boxed_slice());
    Ok(Box::leak(Box::new(EnumDef::new(leak(prefix), values))))
}

/// `TicketStatus` → `TICKET_STATUS`, `CSATScore` → `CSAT_SCORE`, `Oauth2Grant` → `OAUTH2_GRANT`.
fn screaming_snake(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1);
        let starts_word = c.is_ascii_uppercase()
            && previous.is_some_and(|p| {
                p.is_ascii_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_ascii_uppercase() && next.is_some_and(char::is_ascii_lowercase))
            });
        if starts_word {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// What a declared type becomes in a [`FilterSchema`].
enum Declared {
    Field(FieldType),
    Map,
}

fn declared_type(type_text: &str, package: &str, enums: &Enums) -> Result<Declared, String> {
    let field_type = match type_text {
        "text" => FieldType::Text,
        "id" => FieldType::Uuid,
        "integer" => FieldType::Integer,
        "number" => FieldType::Float,
        "bool" => FieldType::Bool,
        "timestamp" => FieldType::Timestamp,
        "date" => FieldType::Date,
        "duration" => FieldType::Duration,
        "repeated text" => FieldType::TextArray,
        "repeated id" => FieldType::UuidArray,
        "map" => return Ok(Declared::Map),
        _ => {
            if let Some(name) = type_text.strip_prefix("repeated enum ") {
                FieldType::EnumArray(enums.resolve(name.trim(), package)?)
            } else if let Some(name) = type_text.strip_prefix("enum ") {
                FieldType::Enum(enums.resolve(name.trim(), package)?)
            } else {
                return Err(format!(
                    "unknown type {type_text:?}; the types are {README_TYPES}"
                ));
            }
        }
    };
    Ok(Declared::Field(field_type))
}

/// Every way `block` breaks its own promise: types, enums, examples, order by.
fn check_block(block: &FilterBlock, enums: &Enums) -> Vec<Failure> {
    let fail = |line: usize, message: String| Failure::new(&block.file, line, message);
    let mut failures = Vec::new();
    let mut schema = FilterSchema::new();
    let mut seen = HashSet::new();
    for (i, field) in block.fields.iter().enumerate() {
        if !seen.insert(field.name.as_str()) {
            failures.push(fail(
                field.line,
                format!("field {} is declared twice", field.name),
            ));
            continue;
        }
        let (name, sql) = (leak(field.name.clone()), leak(format!("c{i}")));
        match declared_type(&field.type_text, &block.package, enums) {
            Ok(Declared::Field(field_type)) => schema = schema.field(name, field_type, sql),
            Ok(Declared::Map) => schema = schema.map_field(name, sql),
            Err(message) => {
                failures.push(fail(field.line, format!("field {}: {message}", field.name)))
            }
        }
    }
    for example in &block.examples {
        let compiled = filter::parse(&example.text).and_then(|expr| filter::to_sql(&expr, &schema));
        if let Err(error) = compiled {
            failures.push(fail(
                example.line,
                format!(
                    "{}: example `{}` is rejected: {error}",
                    block.message, example.text
                ),
            ));
        }
    }
    if let Some(order_by) = &block.order_by {
        let allowed: Vec<&str> = order_by.fields.iter().map(String::as_str).collect();
        let listed = filter::parse_order_by(&order_by.fields.join(", "), &allowed);
        let default = filter::parse_order_by(&order_by.default, &allowed);
        if let Err(error) = listed {
            failures.push(fail(
                order_by.line,
                format!("`Order by:` fields are rejected: {error}"),
            ));
        }
        if let Err(error) = default {
            failures.push(fail(
                order_by.line,
                format!(
                    "`Order by:` default `{}` is rejected: {error}",
                    order_by.default
                ),
            ));
        }
    }
    failures
}

// --- Walking proto/crm -------------------------------------------------------------------------

fn proto_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/crm")
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect_protos(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
}

/// What each package directory under `proto/crm` holds, by directory name.
fn extract_all() -> BTreeMap<String, Extracted> {
    let root = proto_root();
    let mut files = Vec::new();
    collect_protos(&root, &mut files);
    files.sort();
    let mut packages: BTreeMap<String, Extracted> = BTreeMap::new();
    for path in files {
        let relative = path.strip_prefix(&root).expect("under proto/crm");
        let package_dir = relative
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        let display = format!("proto/crm/{}", relative.display());
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {display}: {e}"));
        packages
            .entry(package_dir)
            .or_default()
            .absorb(extract(&display, &text));
    }
    packages
}

/// Fails once, listing every failure in file and line order under the documented form.
fn report(what: &str, mut failures: Vec<Failure>) {
    failures.sort();
    let listed: Vec<String> = failures.iter().map(ToString::to_string).collect();
    assert!(
        failures.is_empty(),
        "{} {what} ({BLOCK_FORM}; see proto/README.md, Filtering; types: {README_TYPES}):\n{}\n",
        failures.len(),
        listed.join("\n")
    );
}

#[test]
fn every_filter_block_is_well_formed_and_its_examples_compile() {
    let enums = Enums::from_descriptor_set();
    let packages = extract_all();

    let mut failures = Vec::new();
    for extracted in packages.values() {
        failures.extend(extracted.malformed.iter().cloned());
        for block in &extracted.blocks {
            failures.extend(check_block(block, &enums));
        }
    }

    report("problems in `Filter over:` blocks", failures);
}

#[test]
fn every_package_with_list_rpcs_declares_every_request_filter() {
    let packages = extract_all();

    let mut failures: Vec<Failure> = packages
        .values()
        .flat_map(|extracted| extracted.undeclared.iter().cloned())
        .collect();
    for package in LIST_PACKAGES {
        let here = format!("proto/crm/{package}");
        match packages.get(*package) {
            None => failures.push(Failure::new(&here, 0, "package directory is missing")),
            Some(extracted) if extracted.blocks_seen == 0 => failures.push(Failure::new(
                &here,
                0,
                format!(
                    "no `// Filter over:` block in the package, which has {} List RPCs",
                    extracted.list_rpcs
                ),
            )),
            Some(_) => {}
        }
    }
    for (package, extracted) in &packages {
        if extracted.list_rpcs > 0 && !LIST_PACKAGES.contains(&package.as_str()) {
            let here = format!("proto/crm/{package}");
            let message = "package has List RPCs but is missing from LIST_PACKAGES in this test";
            failures.push(Failure::new(&here, 0, message));
        }
    }

    report(
        "request filters without a `Filter over:` declaration",
        failures,
    );
}

/// A field's declared type with enums fully qualified, so declarations in two packages compare.
fn qualified_type(type_text: &str, package: &str) -> String {
    let (prefix, name) = match type_text.rsplit_once(' ') {
        Some((prefix, name)) if prefix.ends_with("enum") => (prefix, name),
        _ => return type_text.to_owned(),
    };
    if name.contains('.') {
        type_text.to_owned()
    } else {
        format!("{prefix} {package}.{name}")
    }
}

#[test]
fn a_segment_filter_over_customer_fields_only_is_a_valid_list_customers_filter() {
    let packages = extract_all();
    let block = |package: &str, message: &str| {
        packages[package]
            .blocks
            .iter()
            .find(|b| b.message == message)
            .unwrap_or_else(|| panic!("no `Filter over:` block on {message}.filter"))
            .clone()
    };
    let customers = block("customer", "ListCustomersRequest");
    let segment = block("marketing", "DynamicSegmentDefinition");
    let customer_types: HashMap<&str, String> = customers
        .fields
        .iter()
        .map(|f| {
            (
                f.name.as_str(),
                qualified_type(&f.type_text, &customers.package),
            )
        })
        .collect();

    let mut failures = Vec::new();
    for field in segment
        .fields
        .iter()
        .filter(|f| !f.name.starts_with("purchases."))
    {
        let declared = qualified_type(&field.type_text, &segment.package);
        match customer_types.get(field.name.as_str()) {
            Some(listed) if *listed == declared => {}
            Some(listed) => failures.push(Failure::new(
                &segment.file,
                field.line,
                format!(
                    "`{}` is `{declared}` here but `{listed}` in ListCustomers",
                    field.name
                ),
            )),
            None => failures.push(Failure::new(
                &segment.file,
                field.line,
                format!("`{}` is not a ListCustomers filter field", field.name),
            )),
        }
    }
    report(
        "segment customer fields that ListCustomers does not accept",
        failures,
    );
}

mod extractor;
