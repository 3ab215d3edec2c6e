//! One pass over a request's wire bytes, driven by its [`Plans`], that finds what the contract
//! forbids before prost decodes anything: NUL in text, strings, bytes, repeated fields and maps
//! over their caps, timestamps and durations outside the protobuf range.
//!
//! It allocates nothing per field: the path of the field being read is a stack of borrowed names
//! and indices, turned into text only for a violation, and repeated fields are counted in one
//! buffer shared by every nesting level. Anything the walker cannot make sense of (a wire type
//! the field does not have, an unknown field) is left to prost, which rejects or skips it.

use std::fmt::Write as _;

use super::plan::{FieldKind, FieldPlan, Plans};

/// Violations kept in full; beyond this only a count is kept ("and N more").
pub const MAX_VIOLATIONS: usize = 20;
/// Characters of a map key quoted in a field path.
const MAX_KEY_CHARS: usize = 64;
/// Nesting deeper than prost's recursion limit is left for prost to reject.
const MAX_DEPTH: usize = 100;

const TIMESTAMP_MIN_SECONDS: i64 = -62_135_596_800; // 0001-01-01T00:00:00Z
const TIMESTAMP_MAX_SECONDS: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
const DURATION_MAX_SECONDS: i64 = 315_576_000_000; // 10,000 years

/// What the walk found wrong, in wire order: at most [`MAX_VIOLATIONS`] kept, all counted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Violations {
    /// `(field path, description)`, the first [`MAX_VIOLATIONS`].
    pub kept: Vec<(String, String)>,
    /// How many there were in all.
    pub total: usize,
}

impl Violations {
    /// How many were found but not kept.
    pub fn more(&self) -> usize {
        self.total - self.kept.len()
    }
}

/// Why the bytes are not a protobuf message at all.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

#[derive(Debug, Clone, Copy)]
enum Seg<'p, 'a> {
    Field(&'p str),
    Index(&'p str, u32),
    Key(&'p str, &'a [u8]),
}

struct Walker<'p, 'a> {
    plans: &'p Plans,
    path: Vec<Seg<'p, 'a>>,
    counts: Vec<u32>,
    violations: Violations,
}

/// Walks `bytes` as the message `message` of `plans`.
pub fn walk(plans: &Plans, message: usize, bytes: &[u8]) -> Result<Violations, Malformed> {
    let mut walker = Walker {
        plans,
        path: Vec::new(),
        counts: Vec::new(),
        violations: Violations::default(),
    };
    walker.message(message, bytes, 0)?;
    Ok(walker.violations)
}

impl<'p, 'a> Walker<'p, 'a> {
    fn message(
        &mut self,
        message: usize,
        mut buf: &'a [u8],
        depth: usize,
    ) -> Result<(), Malformed> {
        let plans: &'p Plans = self.plans;
        let plan = &plans.messages[message];
        let base = self.counts.len();
        self.counts.resize(base + plan.repeated_slots, 0);
        while !buf.is_empty() {
            let key = varint(&mut buf)?;
            let number =
                u32::try_from(key >> 3).map_err(|_| Malformed("field number too large"))?;
            if number == 0 {
                return Err(Malformed("field number 0"));
            }
            let field = plans.field(message, number);
            match key & 7 {
                0 => {
                    varint(&mut buf)?;
                    self.count_scalar(field, base, FieldKind::Varint, 1);
                }
                1 => {
                    take(&mut buf, 8)?;
                    self.count_scalar(field, base, FieldKind::Fixed64, 1);
                }
                5 => {
                    take(&mut buf, 4)?;
                    self.count_scalar(field, base, FieldKind::Fixed32, 1);
                }
                2 => {
                    let len = varint(&mut buf)?;
                    let len = usize::try_from(len).map_err(|_| Malformed("length too large"))?;
                    let data = take(&mut buf, len)?;
                    if let Some(field) = field {
                        self.delimited(field, base, data, depth)?;
                    }
                }
                _ => return Err(Malformed("a wire type proto3 does not use")),
            }
        }
        for field in &plan.fields {
            let Some(repeated) = field.repeated else {
                continue;
            };
            let count = self.counts[base + repeated.slot];
            if count > repeated.max_items {
                let what = if repeated.is_map { "entries" } else { "items" };
                self.violate(
                    Seg::Field(&field.name),
                    format_args!(
                        "at most {} {what} (got {})",
                        thousands(repeated.max_items),
                        thousands(count)
                    ),
                );
            }
        }
        self.counts.truncate(base);
        Ok(())
    }

    /// Counts one or more scalars of a repeated field; a wire type the field does not have is
    /// prost's to reject.
    fn count_scalar(&mut self, field: Option<&FieldPlan>, base: usize, wire: FieldKind, n: u32) {
        if let Some(field) = field
            && field.kind == wire
            && let Some(repeated) = field.repeated
        {
            let count = &mut self.counts[base + repeated.slot];
            *count = count.saturating_add(n);
        }
    }

    fn delimited(
        &mut self,
        field: &'p FieldPlan,
        base: usize,
        data: &'a [u8],
        depth: usize,
    ) -> Result<(), Malformed> {
        // The element's position, counted before it is checked so that violations name it.
        let index = match field.repeated {
            Some(repeated) => {
                let count = &mut self.counts[base + repeated.slot];
                let index = *count;
                match field.kind {
                    // Packed scalars: the count is of the elements inside.
                    FieldKind::Varint => {
                        let n = data.iter().filter(|&&b| b & 0x80 == 0).count();
                        *count = count.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                        return Ok(());
                    }
                    FieldKind::Fixed32 | FieldKind::Fixed64 => {
                        let width = if field.kind == FieldKind::Fixed32 {
                            4
                        } else {
                            8
                        };
                        let n = data.len() / width;
                        *count = count.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                        return Ok(());
                    }
                    _ => *count = count.saturating_add(1),
                }
                Some(index)
            }
            None => None,
        };
        let seg = match (index, field.kind) {
            (Some(_), FieldKind::MapEntry(_)) => Seg::Key(&field.name, map_key(data)),
            (Some(i), _) => Seg::Index(&field.name, i),
            (None, _) => Seg::Field(&field.name),
        };
        match field.kind {
            FieldKind::Str(max_chars) => {
                if data.contains(&0) {
                    self.violate(
                        seg,
                        format_args!("must not contain NUL characters (U+0000)"),
                    );
                }
                // A string is never shorter in bytes than in characters, so most need no count.
                if data.len() > max_chars as usize {
                    let chars = data.iter().filter(|&&b| b & 0xC0 != 0x80).count();
                    if chars > max_chars as usize {
                        self.violate(
                            seg,
                            format_args!(
                                "at most {} characters (got {})",
                                thousands(max_chars),
                                thousands(u32::try_from(chars).unwrap_or(u32::MAX))
                            ),
                        );
                    }
                }
            }
            FieldKind::Bytes(max) => {
                if data.len() > max as usize {
                    self.violate(
                        seg,
                        format_args!(
                            "at most {} bytes (got {})",
                            thousands(max),
                            thousands(u32::try_from(data.len()).unwrap_or(u32::MAX))
                        ),
                    );
                }
            }
            FieldKind::Message(m) | FieldKind::MapEntry(m) => {
                if depth < MAX_DEPTH {
                    self.path.push(seg);
                    let walked = self.message(m, data, depth + 1);
                    self.path.pop();
                    walked?;
                }
            }
            FieldKind::Timestamp => {
                let (seconds, nanos) = seconds_and_nanos(data)?;
                if !(TIMESTAMP_MIN_SECONDS..=TIMESTAMP_MAX_SECONDS).contains(&seconds) {
                    self.violate(
                        seg,
                        format_args!(
                            "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
                        ),
                    );
                } else if !(0..1_000_000_000).contains(&nanos) {
                    self.violate(seg, format_args!("nanos must be in 0..=999,999,999"));
                }
            }
            FieldKind::Duration => {
                let (seconds, nanos) = seconds_and_nanos(data)?;
                if !(-DURATION_MAX_SECONDS..=DURATION_MAX_SECONDS).contains(&seconds) {
                    self.violate(
                        seg,
                        format_args!("must be within ±315,576,000,000 seconds (10,000 years)"),
                    );
                } else if !(-999_999_999..=999_999_999).contains(&nanos)
                    || (seconds > 0 && nanos < 0)
                    || (seconds < 0 && nanos > 0)
                {
                    self.violate(
                        seg,
                        format_args!(
                            "nanos must be in -999,999,999..=999,999,999 with the sign of seconds"
                        ),
                    );
                }
            }
            // A scalar field sent length-delimited but not repeated: prost rejects it.
            FieldKind::Varint | FieldKind::Fixed32 | FieldKind::Fixed64 => {}
        }
        Ok(())
    }

    fn violate(&mut self, last: Seg<'p, 'a>, description: std::fmt::Arguments<'_>) {
        self.violations.total += 1;
        if self.violations.kept.len() >= MAX_VIOLATIONS {
            return;
        }
        let mut path = String::new();
        let mut after_key = false;
        for seg in self.path.iter().chain(std::iter::once(&last)) {
            // A map entry is named by its key, as the services name it (`attributes.tier`), not
            // by the entry's own `key`/`value` fields.
            if std::mem::take(&mut after_key) && matches!(seg, Seg::Field("key" | "value")) {
                continue;
            }
            after_key = matches!(seg, Seg::Key(..));
            if !path.is_empty() {
                path.push('.');
            }
            match seg {
                Seg::Field(name) => path.push_str(name),
                Seg::Index(name, i) => {
                    let _ = write!(path, "{name}[{i}]");
                }
                Seg::Key(name, key) => {
                    path.push_str(name);
                    path.push('.');
                    push_key(&mut path, key);
                }
            }
        }
        self.violations.kept.push((path, description.to_string()));
    }
}

/// A map entry's key (field 1) as bytes, for naming it in paths; empty when absent or not text.
fn map_key(mut entry: &[u8]) -> &[u8] {
    while !entry.is_empty() {
        let Ok(key) = varint(&mut entry) else {
            return &[];
        };
        let skipped = match key & 7 {
            0 => varint(&mut entry).map(|_| &[][..]),
            1 => take(&mut entry, 8),
            5 => take(&mut entry, 4),
            2 => varint(&mut entry).and_then(|len| take(&mut entry, len as usize)),
            _ => return &[],
        };
        match skipped {
            Ok(data) if key == (1 << 3 | 2) => return data,
            Ok(_) => {}
            Err(_) => return &[],
        }
    }
    &[]
}

/// Appends a map key, at most [`MAX_KEY_CHARS`] characters of it, so a huge key never makes a
/// huge path.
fn push_key(path: &mut String, key: &[u8]) {
    let text = String::from_utf8_lossy(key);
    let mut chars = text.chars();
    path.extend(
        chars
            .by_ref()
            .take(MAX_KEY_CHARS)
            .map(|c| if c == '\0' { '\u{FFFD}' } else { c }),
    );
    if chars.next().is_some() {
        path.push('…');
    }
}

/// `seconds` (field 1) and `nanos` (field 2) of a Timestamp or Duration; the last of each wins, as
/// in prost.
fn seconds_and_nanos(mut buf: &[u8]) -> Result<(i64, i64), Malformed> {
    let (mut seconds, mut nanos) = (0_i64, 0_i64);
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match key & 7 {
            0 => {
                let value = varint(&mut buf)?;
                match key >> 3 {
                    1 => seconds = value as i64,
                    // int32 on the wire: negative values are sign-extended to 64 bits.
                    2 => nanos = i64::from(value as i32),
                    _ => {}
                }
            }
            1 => {
                take(&mut buf, 8)?;
            }
            5 => {
                take(&mut buf, 4)?;
            }
            2 => {
                let len = varint(&mut buf)?;
                take(&mut buf, len as usize)?;
            }
            _ => return Err(Malformed("a wire type proto3 does not use")),
        }
    }
    Ok((seconds, nanos))
}

fn varint(buf: &mut &[u8]) -> Result<u64, Malformed> {
    let bytes: &[u8] = buf;
    let mut value = 0_u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            *buf = &bytes[i + 1..];
            return Ok(value);
        }
    }
    Err(Malformed("a varint is truncated or longer than 10 bytes"))
}

fn take<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], Malformed> {
    if buf.len() < len {
        return Err(Malformed("a field runs past the end of the message"));
    }
    let bytes: &'a [u8] = buf;
    let (head, tail) = bytes.split_at(len);
    *buf = tail;
    Ok(head)
}

/// `1,024`-style numbers, as the contracts write them.
pub(crate) fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
