//! Calls to any served method with raw protobuf bytes, and the served methods as the contracts'
//! descriptor set describes them: what the malformed-input harness and the auth matrix share.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes};
use prost_reflect::{DescriptorPool, MethodDescriptor};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use super::wait::WAIT;

/// The suite's contracts as a reflection pool (decoded once per test binary).
pub fn contracts() -> &'static DescriptorPool {
    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(crm_proto::FILE_DESCRIPTOR_SET)
            .expect("the contracts' descriptor set decodes")
    });
    &POOL
}

/// Every method of `services` (fully qualified gRPC names), in contract order. Fails the test
/// naming a service the contracts do not describe.
pub fn methods_of(services: &[&str]) -> Vec<MethodDescriptor> {
    services
        .iter()
        .flat_map(|name| {
            contracts()
                .get_service_by_name(name)
                .unwrap_or_else(|| panic!("the contracts describe no service {name}"))
                .methods()
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The gRPC path of `method`, `/package.Service/Method`.
pub fn path_of(method: &MethodDescriptor) -> String {
    format!("/{}/{}", method.parent_service().full_name(), method.name())
}

/// The business services the server at `channel` serves, as its reflection lists them (health
/// and reflection left out), sorted: what a harness should cover, whether a module serves it
/// itself or through the platform (as `google.longrunning.Operations`).
pub async fn served_services(channel: Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("the server answers reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("a reflection answer")
        .expect("one reflection answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("reflection did not list services: {answer:?}");
    };
    let mut names: Vec<String> = list
        .service
        .into_iter()
        .map(|s| s.name)
        .filter(|name| !name.starts_with("grpc.health.") && !name.starts_with("grpc.reflection."))
        .collect();
    names.sort();
    names
}

/// A connection to the server at `addr` for one probe: its own, so an answer that breaks a
/// connection is reported for the probe that caused it and not for the probes beside it, and
/// with room for oversized headers, so a status message of a megabyte is measured rather than
/// refused by the client.
pub async fn probe_channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("an http URL")
        .connect_timeout(WAIT)
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .connect()
        .await
        .expect("connecting to the test server")
}

/// The headers a probe's client accepts: far above what any answer should carry.
const MAX_HEADER_LIST: u32 = 64 << 20;

/// What one call with raw bytes came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The call ended with this status (OK included, for a stream that ended without a message).
    Status(tonic::Status),
    /// The first response message arrived, encoded.
    Message(Bytes),
    /// A server stream stayed open without a message or a status for the whole wait: it was
    /// accepted and is waiting for events.
    Open,
    /// Nothing came back in [`WAIT`] from a method that must answer.
    NoAnswer,
}

impl Outcome {
    /// The status code, when the call ended with one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Outcome::Status(status) => Some(status.code()),
            _ => None,
        }
    }

    /// A short description for failure reports: the code, the message's first 80 characters,
    /// and the sizes.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Status(status) => {
                let message: String = status.message().chars().take(80).collect();
                format!(
                    "{:?} {message:?} (message {} B, details {} B)",
                    status.code(),
                    status.message().len(),
                    status.details().len()
                )
            }
            Outcome::Message(body) => format!("a response of {} B", body.len()),
            Outcome::Open => "an open stream".into(),
            Outcome::NoAnswer => format!("no answer in {WAIT:?}"),
        }
    }
}

/// How long a server stream may stay silent before it counts as open (accepted and waiting).
const OPEN_STREAM_WAIT: Duration = Duration::from_millis(1500);

/// Calls `method` on `channel` with `body` as its one request message (the first and only
/// message of a client stream) and `authorization` as that header, and returns the status or
/// the size of the first response message. Unary answers must come within [`WAIT`]; a server
/// stream that sends nothing for a while counts as [`Outcome::Open`].
pub async fn call_raw(
    channel: Channel,
    method: &MethodDescriptor,
    authorization: Option<&str>,
    body: Bytes,
) -> Outcome {
    let path = path_of(method)
        .parse::<http::uri::PathAndQuery>()
        .expect("a method path is a valid URI path");
    let mut request = tonic::Request::new(tokio_stream::once(body));
    if let Some(value) = authorization {
        match value.parse() {
            Ok(value) => {
                request.metadata_mut().insert("authorization", value);
            }
            Err(_) => panic!("not a valid header value: {value:?}"),
        }
    }
    // Big answers are measured, not refused by the client.
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("channel not ready: {e}")))?;
        let response = grpc.streaming(request, path, RawCodec).await?;
        let mut stream = response.into_inner();
        match stream.message().await? {
            Some(message) => Ok(Outcome::Message(message)),
            None => Ok(Outcome::Status(tonic::Status::ok(""))),
        }
    };
    let wait = if method.is_server_streaming() {
        OPEN_STREAM_WAIT
    } else {
        WAIT
    };
    match tokio::time::timeout(wait, call).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(status)) => Outcome::Status(status),
        Err(_) if method.is_server_streaming() => Outcome::Open,
        Err(_) => Outcome::NoAnswer,
    }
}

/// A codec that sends and receives message bytes as they are.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
