//! Requests checked at the edge, before a handler runs: bytes that are no protobuf message, NUL
//! in text, timestamps outside years 1..=9999, and strings and lists over their contract caps
//! are INVALID_ARGUMENT naming the field, answered with a small error, and change nothing.

use std::marker::PhantomData;

use crm_platform::testing::{BearerAuth, user_token};
use futures::StreamExt;
use prost::Message;
use prost::bytes::{Buf, BufMut};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::common::*;
use crm_proto::crm::common::v1 as common;
use crm_proto::crm::customer::v1 as pb;

const SERVICE: &str = "/crm.customer.v1.CustomerService/";

/// Sends and receives raw message bytes, to put on the wire what no typed client would.
#[derive(Debug, Default, Clone)]
struct RawCodec(PhantomData<()>);

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        self.clone()
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.clone()
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn raw_client(app: &TestApp) -> tonic::client::Grpc<tonic::transport::Channel> {
    tonic::client::Grpc::new(app.channel().await)
}

fn authorized<T>(message: T) -> tonic::Request<T> {
    BearerAuth::new(user_token(&["customer.read", "customer.write"])).request(message)
}

/// Calls the unary `method` with `bytes` as its request.
async fn call_raw(app: &TestApp, method: &str, bytes: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = raw_client(app).await;
    grpc.ready().await.unwrap();
    let path = format!("{SERVICE}{method}").parse().unwrap();
    grpc.unary(authorized(bytes), path, RawCodec::default())
        .await
        .map(tonic::Response::into_inner)
}

/// Sends `rows` as an ImportCustomers stream; the answers before the stream ended, and how it
/// ended.
async fn import_raw(
    app: &TestApp,
    rows: Vec<Vec<u8>>,
) -> (Vec<pb::ImportCustomersResponse>, Result<(), tonic::Status>) {
    let mut grpc = raw_client(app).await;
    grpc.ready().await.unwrap();
    let path = format!("{SERVICE}ImportCustomers").parse().unwrap();
    let response = grpc
        .streaming(
            authorized(futures::stream::iter(rows)),
            path,
            RawCodec::default(),
        )
        .await;
    let mut stream = match response {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut answers = Vec::new();
    while let Some(answer) = within(stream.next()).await {
        match answer {
            Ok(bytes) => answers.push(pb::ImportCustomersResponse::decode(&bytes[..]).unwrap()),
            Err(status) => return (answers, Err(status)),
        }
    }
    (answers, Ok(()))
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM customer.{table}"))
        .fetch_one(&app.pool().await)
        .await
        .unwrap()
}

fn timestamp(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

/// What a caller receives for an error: its message and details, in bytes.
fn answer_size(status: &tonic::Status) -> usize {
    status.message().len() + status.details().len()
}

#[tokio::test]
async fn undecodable_bytes_are_invalid_argument_naming_the_request_type() {
    let app = spawn_app().await;
    // A length-delimited field 1 that claims 5 bytes and has one; then a bare 0xFF.
    let truncated = vec![0x0A, 0x05, b'a'];

    for (method, request) in [
        ("CreateCustomer", "CreateCustomerRequest"),
        ("GetCustomer", "GetCustomerRequest"),
        ("MergeCustomers", "MergeCustomersRequest"),
    ] {
        for bytes in [truncated.clone(), vec![0xFF]] {
            let status = call_raw(&app, method, bytes).await.unwrap_err();

            assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
            assert!(
                status.message().starts_with(&format!(
                    "the request is not a valid crm.customer.v1.{request}"
                )),
                "{method}: {}",
                status.message()
            );
        }
    }
    assert_eq!(count(&app, "customers").await, 0);
}

#[tokio::test]
async fn invalid_utf8_in_a_string_is_invalid_argument() {
    let app = spawn_app().await;
    // GetCustomerRequest.id = 0xC3 0x28: not UTF-8, which prost refuses to decode.
    let status = call_raw(&app, "GetCustomer", vec![0x0A, 0x02, 0xC3, 0x28])
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn an_undecodable_message_in_an_import_stream_ends_it_with_invalid_argument() {
    let app = spawn_app().await;

    let (answers, ended) = import_raw(&app, vec![vec![0x12, 0x7F, 0x01]]).await;

    let status = ended.expect_err("the import ends with an error");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("crm.customer.v1.ImportCustomersRequest"),
        "{}",
        status.message()
    );
    assert!(answers.is_empty(), "{answers:?}");
    assert_eq!(count(&app, "customers").await, 0);
}

#[tokio::test]
async fn a_nul_in_a_nested_field_is_invalid_argument_naming_it() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut customer = ada();
    customer.addresses = vec![pb::CustomerAddress {
        label: "home".into(),
        address: Some(common::PostalAddress {
            region_code: "GB".into(),
            locality: "Lon\0don".into(),
            ..Default::default()
        }),
    }];

    let status = client.create(customer).await.unwrap_err();

    assert_invalid(&status, &["customer.addresses[0].address.locality"]);
    assert_eq!(count(&app, "customers").await, 0);
}

#[tokio::test]
async fn timestamps_in_year_0_or_year_10000_are_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    let client = app.client().await;
    let existing = client.create(ada()).await.unwrap();
    let year_0 = -62_135_596_800 - 1;
    let year_10000 = 253_402_300_800;

    for seconds in [year_0, year_10000] {
        let status = client
            .inner
            .clone()
            .create_interaction(client.request(pb::CreateInteractionRequest {
                interaction: Some(pb::Interaction {
                    customer_id: existing.id.clone(),
                    r#type: pb::InteractionType::Note as i32,
                    subject: "called".into(),
                    occur_time: Some(timestamp(seconds)),
                    ..Default::default()
                }),
                request_id: String::new(),
            }))
            .await
            .unwrap_err();
        assert_invalid(&status, &["interaction.occur_time"]);

        let mut customer = ada();
        customer.attributes.insert(
            "since".into(),
            pb::AttributeValue {
                kind: Some(pb::attribute_value::Kind::TimestampValue(timestamp(
                    seconds,
                ))),
            },
        );
        let status = client.create(customer).await.unwrap_err();
        assert_invalid(&status, &["customer.attributes.since.timestamp_value"]);
    }
    assert_eq!(count(&app, "interactions").await, 0);
    assert_eq!(count(&app, "customers").await, 1);
}

#[tokio::test]
async fn a_megabyte_id_mask_path_or_attribute_key_gets_an_error_under_a_kilobyte() {
    let app = spawn_app().await;
    let client = app.client().await;
    let existing = client.create(ada()).await.unwrap();
    let huge = "x".repeat(1_000_000);

    let get = client.get(&huge).await.unwrap_err();
    // Under the edge cap, the service's own check answers, quoting a prefix only.
    let long = client.get(&"y".repeat(1_000)).await.unwrap_err();
    let mut masked = existing.clone();
    masked.display_name = "Ada".into();
    let mask = client.update(masked, &[huge.as_str()]).await.unwrap_err();
    let mut keyed = ada();
    keyed
        .attributes
        .insert(huge.clone(), pb::AttributeValue::default());
    let key = client.create(keyed).await.unwrap_err();

    for (case, status) in [
        ("get", &get),
        ("long id", &long),
        ("mask", &mask),
        ("key", &key),
    ] {
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            answer_size(status) < 1_024,
            "{case}: {} bytes",
            answer_size(status)
        );
    }
    assert_invalid(&get, &["id"]);
    assert_invalid(&long, &["id"]);
    assert_invalid(&mask, &["update_mask.paths[0]"]);
    assert_eq!(violated_fields(&key).len(), 1, "{key:?}");
    assert_eq!(count(&app, "customers").await, 1);
    assert_eq!(client.get(&existing.id).await.unwrap(), existing);
}

#[tokio::test]
async fn merging_100k_bad_ids_is_answered_in_under_16_kilobytes() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let bad: Vec<String> = (0..100_000).map(|i| format!("not-a-uuid-{i}")).collect();
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();

    let status = client.merge(&survivor.id, &bad, "").await.unwrap_err();

    assert_invalid(&status, &["duplicate_ids"]);
    assert!(
        answer_size(&status) < 16 * 1_024,
        "{} bytes",
        answer_size(&status)
    );
    assert_eq!(count(&app, "merges").await, 0);
}

#[tokio::test]
async fn a_four_megabyte_address_is_rejected() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut customer = ada();
    customer.addresses = vec![pb::CustomerAddress {
        label: "home".into(),
        address: Some(common::PostalAddress {
            region_code: "GB".into(),
            address_lines: vec!["z".repeat(3_900_000)],
            ..Default::default()
        }),
    }];

    let status = client.create(customer).await.unwrap_err();

    assert_invalid(&status, &["customer.addresses[0].address.address_lines[0]"]);
    assert!(
        answer_size(&status) < 1_024,
        "{} bytes",
        answer_size(&status)
    );
    assert_eq!(count(&app, "customers").await, 0);
}

#[tokio::test]
async fn rows_over_the_contract_caps_are_answered_in_place_and_the_import_goes_on() {
    let app = spawn_app().await;
    let oversized_ref = pb::ImportCustomersRequest {
        row_ref: "r".repeat(1_000_000),
        customer: Some(ada()),
        request_id: String::new(),
    };
    let mut nul = ada();
    nul.display_name = "Ada\0Lovelace".into();
    nul.email = "nul@example.com".into();
    let nul_row = pb::ImportCustomersRequest {
        row_ref: "nul".into(),
        customer: Some(nul),
        request_id: String::new(),
    };
    let good = pb::ImportCustomersRequest {
        row_ref: "good".into(),
        customer: Some(ada()),
        request_id: String::new(),
    };

    let (answers, ended) = import_raw(
        &app,
        vec![
            oversized_ref.encode_to_vec(),
            nul_row.encode_to_vec(),
            good.encode_to_vec(),
        ],
    )
    .await;

    ended.expect("a bad row does not end the import");
    let results: Vec<common::ItemResult> = answers
        .into_iter()
        .filter_map(|answer| match answer.kind {
            Some(pb::import_customers_response::Kind::Result(result)) => Some(result),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 3, "{results:?}");
    let refused = |result: &common::ItemResult, field: &str| {
        let status = result.status.clone().expect("a status");
        assert_eq!(status.code, Code::InvalidArgument as i32, "{status:?}");
        assert!(status.message.contains(field), "{}", status.message);
        assert!(
            status.encoded_len() < 1_024,
            "{} bytes",
            status.encoded_len()
        );
    };
    refused(&results[0], "row_ref");
    assert!(
        results[0].r#ref.is_empty(),
        "an oversized ref is not echoed"
    );
    refused(&results[1], "customer.display_name");
    assert_eq!(results[1].r#ref, "nul");
    assert_eq!(results[2].r#ref, "good");
    assert!(!results[2].id.is_empty(), "{:?}", results[2]);
    assert_eq!(count(&app, "customers").await, 1);
}
