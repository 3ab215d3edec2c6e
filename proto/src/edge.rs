//! The edge codec: every generated server and client encodes and decodes through [`EdgeCodec`]
//! (set with `codec_path` in build.rs), which is prost's codec plus a check of each request
//! against its contract before anything is decoded.
//!
//! For a message that is some method's request (so: on the server side), decoding
//! 1. walks the wire bytes once against the message's plan ([`walk`]) and rejects NUL in text,
//!    strings, bytes, repeated fields and maps over their caps (`(crm.common.v1.limits)` or the
//!    defaults in `crm/common/v1/limits.proto`), and timestamps and durations outside the
//!    protobuf range, with INVALID_ARGUMENT and a `google.rpc.BadRequest` naming each field;
//! 2. turns a prost decode error into INVALID_ARGUMENT ("the request is not a valid …"), where
//!    prost's own codec answers INTERNAL.
//!
//! Items of client streams (ImportCustomers rows) get step 2 only: their handler checks each
//! one with [`check_streamed_item`] and answers a bad item in place, where an error here would
//! end the whole stream.
//!
//! Responses (what a client decodes) are decoded as prost does, unchecked: a server's data is
//! not the caller's mistake, and caps added later must not make stored records unreadable.

mod plan;
mod walk;

use std::any::TypeId;
use std::marker::PhantomData;
use std::sync::OnceLock;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;
use tonic_types::{ErrorDetails, StatusExt};

pub use plan::{DEFAULT_MAX_BYTES, DEFAULT_MAX_CHARS, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_ITEMS};
pub use walk::MAX_VIOLATIONS;

include!(concat!(env!("OUT_DIR"), "/edge_requests.rs"));

fn plans() -> &'static plan::Plans {
    static PLANS: OnceLock<plan::Plans> = OnceLock::new();
    PLANS.get_or_init(|| {
        plan::Plans::build(crate::FILE_DESCRIPTOR_SET, &request_types())
            .expect("the descriptor set compiled into crm-proto is valid")
    })
}

/// Builds the request plans now rather than on the first call, so a server pays for it at start.
pub fn prepare() {
    plans();
}

/// Checks `bytes` as an encoded `T` against its contract's caps, as the server side of the codec
/// does, without decoding. `Ok` for a type that is no method's request. For tests and tools.
pub fn check_request<T: 'static>(bytes: &[u8]) -> Result<(), Status> {
    match plans().request(TypeId::of::<T>()) {
        Some(message) => check(message, bytes),
        None => Ok(()),
    }
}

/// Checks one item of a client stream against its contract, as the codec checks a unary
/// request. The codec leaves client-stream items to their handler (it only turns undecodable
/// bytes into INVALID_ARGUMENT), because an error from the decoder ends the whole stream while
/// a bulk RPC answers a bad item in place and goes on. Every handler of a client stream calls
/// this on each item before using it.
pub fn check_streamed_item<T: Message + 'static>(item: &T) -> Result<(), Status> {
    check_request::<T>(&item.encode_to_vec())
}

fn is_streamed_item(type_id: TypeId) -> bool {
    static STREAMED: OnceLock<Vec<TypeId>> = OnceLock::new();
    STREAMED.get_or_init(streamed_item_types).contains(&type_id)
}

fn check(message: usize, bytes: &[u8]) -> Result<(), Status> {
    let plans = plans();
    let name = &plans.messages[message].full_name;
    match walk::walk(plans, message, bytes) {
        Err(walk::Malformed(reason)) => Err(not_valid(name, reason)),
        Ok(violations) if violations.total == 0 => Ok(()),
        Ok(violations) => Err(invalid_fields(&violations)),
    }
}

fn not_valid(name: &str, reason: &str) -> Status {
    Status::invalid_argument(format!("the request is not a valid {name}: {reason}"))
}

fn invalid_fields(violations: &walk::Violations) -> Status {
    let mut message = String::from("invalid argument: ");
    let mut details = ErrorDetails::new();
    for (i, (field, description)) in violations.kept.iter().enumerate() {
        if i > 0 {
            message.push_str("; ");
        }
        message.push_str(field);
        message.push_str(": ");
        message.push_str(description);
        details.add_bad_request_violation(field.as_str(), description.as_str());
    }
    if violations.more() > 0 {
        message.push_str(&format!("; and {} more", violations.more()));
    }
    Status::with_error_details(tonic::Code::InvalidArgument, message, details)
}

/// prost's codec with the request checks above; see the module documentation.
#[derive(Debug, Clone)]
pub struct EdgeCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for EdgeCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for EdgeCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = EdgeDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        let type_id = TypeId::of::<U>();
        EdgeDecoder {
            request: plans().request(type_id),
            walk: !is_streamed_item(type_id),
            _pd: PhantomData,
        }
    }
}

/// Decodes a `U`, checking it first when it is a request.
#[derive(Debug)]
pub struct EdgeDecoder<U> {
    /// The plan of `U` when it is some method's request.
    request: Option<usize>,
    /// Whether to check `U` against its plan here; client-stream items are checked by their
    /// handler ([`check_streamed_item`]).
    walk: bool,
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for EdgeDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let Some(message) = self.request else {
            return U::decode(buf)
                .map(Some)
                .map_err(|err| Status::internal(err.to_string()));
        };
        let decoded = if !self.walk {
            U::decode(buf)
        } else if buf.chunk().len() == buf.remaining() {
            // tonic hands over each message in one contiguous buffer: walk it in place.
            check(message, buf.chunk())?;
            U::decode(buf)
        } else {
            let bytes = buf.copy_to_bytes(buf.remaining());
            check(message, &bytes)?;
            U::decode(bytes)
        };
        decoded.map(Some).map_err(|err| {
            let reason = err.to_string();
            let reason = reason
                .strip_prefix("failed to decode Protobuf message: ")
                .unwrap_or(&reason);
            not_valid(&plans().messages[message].full_name, reason)
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests;
