use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

use super::walk::{Malformed, Violations, walk};
use super::*;
use crate::crm::common::v1 as common;
use crate::crm::customer::v1 as pb;

/// The violations of `message` as `(field, description)` pairs, or the reason it is malformed.
fn violations<T: Message + 'static>(message: &T) -> Violations {
    violations_of::<T>(&message.encode_to_vec()).expect("well-formed")
}

fn violations_of<T: 'static>(bytes: &[u8]) -> Result<Violations, Malformed> {
    let plans = plans();
    let index = plans
        .request(TypeId::of::<T>())
        .expect("a request type has a plan");
    walk(plans, index, bytes)
}

fn fields(violations: &Violations) -> Vec<&str> {
    violations.kept.iter().map(|(f, _)| f.as_str()).collect()
}

fn customer() -> pb::Customer {
    pb::Customer {
        display_name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
        tags: vec!["vip".into(), "beta".into()],
        addresses: vec![pb::CustomerAddress {
            label: "home".into(),
            address: Some(common::PostalAddress {
                region_code: "GB".into(),
                locality: "London".into(),
                address_lines: vec!["12 St James's Square".into()],
                ..Default::default()
            }),
        }],
        attributes: [(
            "tier".to_string(),
            pb::AttributeValue {
                kind: Some(pb::attribute_value::Kind::StringValue("gold".into())),
            },
        )]
        .into(),
        ..Default::default()
    }
}

fn create(customer: pb::Customer) -> pb::CreateCustomerRequest {
    pb::CreateCustomerRequest {
        customer: Some(customer),
        ..Default::default()
    }
}

fn timestamp(seconds: i64, nanos: i32) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos }
}

fn watch_from(start: prost_types::Timestamp) -> pb::WatchCustomerChangesRequest {
    pb::WatchCustomerChangesRequest {
        start_time: Some(start),
        ..Default::default()
    }
}

#[test]
fn a_valid_request_has_no_violations() {
    assert_eq!(violations(&create(customer())), Violations::default());
}

#[test]
fn a_nul_in_a_nested_field_is_named_by_its_full_path() {
    let mut c = customer();
    c.addresses.push(c.addresses[0].clone());
    c.addresses[1].address.as_mut().unwrap().address_lines = vec!["a".into(), "b\0c".into()];

    let found = violations(&create(c));

    assert_eq!(
        fields(&found),
        ["customer.addresses[1].address.address_lines[1]"]
    );
    assert!(found.kept[0].1.contains("NUL"), "{:?}", found.kept[0]);
}

#[test]
fn a_string_over_the_default_cap_is_counted_in_characters_not_bytes() {
    let mut at_cap = customer();
    // 1,024 two-byte characters: 2,048 bytes, still within 1,024 characters.
    at_cap.display_name = "é".repeat(DEFAULT_MAX_CHARS as usize);
    let mut over = customer();
    over.display_name = "a".repeat(DEFAULT_MAX_CHARS as usize + 1);

    assert_eq!(violations(&create(at_cap)).total, 0);
    let found = violations(&create(over));
    assert_eq!(fields(&found), ["customer.display_name"]);
    assert_eq!(found.kept[0].1, "at most 1,024 characters (got 1,025)");
}

#[test]
fn a_declared_cap_replaces_the_default() {
    let interaction = |body: String| pb::CreateInteractionRequest {
        interaction: Some(pb::Interaction {
            body,
            ..Default::default()
        }),
        ..Default::default()
    };

    assert_eq!(violations(&interaction("b".repeat(10_000))).total, 0);
    let found = violations(&interaction("b".repeat(10_001)));
    assert_eq!(fields(&found), ["interaction.body"]);
    assert_eq!(found.kept[0].1, "at most 10,000 characters (got 10,001)");
}

#[test]
fn a_repeated_field_over_its_cap_is_named_once_with_its_count() {
    let request = pb::MergeCustomersRequest {
        duplicate_ids: vec!["x".into(); 100_000],
        ..Default::default()
    };

    let found = violations(&request);

    assert_eq!(fields(&found), ["duplicate_ids"]);
    assert_eq!(found.kept[0].1, "at most 1,000 items (got 100,000)");
}

#[test]
fn a_map_over_its_cap_is_named_and_a_bad_value_is_named_by_its_key() {
    let mut c = customer();
    for i in 0..=DEFAULT_MAX_ENTRIES {
        c.attributes.insert(
            format!("k{i}"),
            pb::AttributeValue {
                kind: Some(pb::attribute_value::Kind::IntValue(1)),
            },
        );
    }
    c.attributes.insert(
        "tier".into(),
        pb::AttributeValue {
            kind: Some(pb::attribute_value::Kind::StringValue("go\0ld".into())),
        },
    );

    let found = violations(&create(c));

    assert_eq!(
        fields(&found),
        [
            "customer.attributes.tier.string_value",
            "customer.attributes"
        ]
    );
    assert_eq!(found.kept[1].1, "at most 100 entries (got 102)");
}

#[test]
fn a_huge_map_key_is_quoted_only_by_its_prefix() {
    let mut c = customer();
    c.attributes.insert(
        format!("{}\0", "k".repeat(1_000_000)),
        pb::AttributeValue::default(),
    );

    let found = violations(&create(c));

    assert_eq!(found.total, 2, "{found:?}");
    assert!(found.kept.iter().all(|(f, _)| f.len() < 120), "{found:?}");
}

#[test]
fn packed_repeated_scalars_are_counted_element_by_element() {
    let request = pb::WatchCustomerChangesRequest {
        change_types: vec![1; DEFAULT_MAX_ITEMS as usize + 1],
        ..Default::default()
    };
    let at_cap = pb::WatchCustomerChangesRequest {
        change_types: vec![300; DEFAULT_MAX_ITEMS as usize],
        ..Default::default()
    };

    assert_eq!(fields(&violations(&request)), ["change_types"]);
    assert_eq!(violations(&at_cap).total, 0);
}

#[test]
fn timestamps_outside_years_1_to_9999_are_rejected() {
    let year_1 = -62_135_596_800;
    let year_10000 = 253_402_300_800;

    assert_eq!(violations(&watch_from(timestamp(year_1, 0))).total, 0);
    assert_eq!(
        violations(&watch_from(timestamp(year_10000 - 1, 999_999_999))).total,
        0
    );
    for bad in [
        timestamp(year_1 - 1, 0),
        timestamp(year_10000, 0),
        timestamp(i64::MIN, 0),
        timestamp(0, -1),
        timestamp(0, 1_000_000_000),
    ] {
        assert_eq!(
            fields(&violations(&watch_from(bad))),
            ["start_time"],
            "{bad:?}"
        );
    }
}

#[test]
fn durations_outside_the_protobuf_range_are_rejected() {
    let with = |seconds, nanos| pb::CreateInteractionRequest {
        interaction: Some(pb::Interaction {
            duration: Some(prost_types::Duration { seconds, nanos }),
            ..Default::default()
        }),
        ..Default::default()
    };

    assert_eq!(violations(&with(315_576_000_000, 0)).total, 0);
    assert_eq!(violations(&with(-5, -5)).total, 0);
    for (seconds, nanos) in [(315_576_000_001, 0), (5, -5), (0, 1_000_000_000)] {
        assert_eq!(
            fields(&violations(&with(seconds, nanos))),
            ["interaction.duration"],
            "{seconds} {nanos}"
        );
    }
}

#[test]
fn unknown_fields_are_left_to_prost() {
    let mut bytes = create(customer()).encode_to_vec();
    // Field 999, length-delimited, holding NUL bytes: not in the contract, so not checked.
    prost::encoding::bytes::encode(999, &vec![0_u8; 5_000], &mut bytes);

    assert_eq!(
        violations_of::<pb::CreateCustomerRequest>(&bytes),
        Ok(Violations::default())
    );
}

#[test]
fn violations_are_kept_up_to_the_cap_and_counted_beyond_it() {
    let mut c = customer();
    c.tags = vec!["a\0".into(); 30];
    let bytes = create(c).encode_to_vec();

    let found = violations_of::<pb::CreateCustomerRequest>(&bytes).unwrap();
    let status = check_request::<pb::CreateCustomerRequest>(&bytes).unwrap_err();

    assert_eq!(found.kept.len(), MAX_VIOLATIONS);
    assert_eq!(found.total, 30);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().ends_with("; and 10 more"),
        "{}",
        status.message()
    );
    assert_eq!(
        status
            .get_details_bad_request()
            .unwrap()
            .field_violations
            .len(),
        MAX_VIOLATIONS
    );
}

#[test]
fn truncated_bytes_are_malformed() {
    let bytes = create(customer()).encode_to_vec();

    assert!(violations_of::<pb::CreateCustomerRequest>(&bytes[..bytes.len() - 3]).is_err());
    assert!(violations_of::<pb::GetCustomerRequest>(&[0xFF; 11]).is_err());
    let status = check_request::<pb::GetCustomerRequest>(&[0x0A, 0x05, b'a']).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("the request is not a valid crm.customer.v1.GetCustomerRequest: "),
        "{}",
        status.message()
    );
}

#[test]
fn responses_are_not_checked() {
    let response = pb::GetCustomerResponse {
        customer: Some(pb::Customer {
            display_name: "a\0".repeat(10_000),
            ..Default::default()
        }),
    };

    assert!(check_request::<pb::GetCustomerResponse>(&response.encode_to_vec()).is_ok());
}

#[test]
fn client_stream_items_are_left_to_their_handler_which_checks_them_the_same_way() {
    let mut bad = customer();
    bad.display_name = "Ada\0".into();
    let row = pb::ImportCustomersRequest {
        row_ref: "r".repeat(5_000),
        customer: Some(bad),
        request_id: String::new(),
    };
    let encoded = row.encode_to_vec();

    let decoder =
        EdgeCodec::<pb::ImportCustomersResponse, pb::ImportCustomersRequest>::default().decoder();
    assert!(
        !decoder.walk,
        "ImportCustomers rows are checked by the handler"
    );
    let status = check_streamed_item(&row).unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(fields, ["row_ref", "customer.display_name"]);
    assert_eq!(
        check_request::<pb::ImportCustomersRequest>(&encoded)
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    let unary = EdgeCodec::<pb::GetCustomerResponse, pb::GetCustomerRequest>::default().decoder();
    assert!(unary.walk, "a unary request is checked by the codec");
}

#[test]
fn every_request_type_has_a_plan() {
    let plans = plans();
    for (type_id, name) in request_types() {
        assert!(plans.request(type_id).is_some(), "{name}");
        assert!(plans.by_name(name).is_some(), "{name}");
    }
}

#[test]
#[ignore = "a measurement, not a check: cargo test -p crm-proto --release -- --ignored --nocapture"]
fn measure_the_walk() {
    let get = pb::GetCustomerRequest {
        id: "0190b5e2-7c4d-7a1e-9f3b-2d4c6e8a0b1c".into(),
    }
    .encode_to_vec();
    let create = create(customer()).encode_to_vec();
    let started = std::time::Instant::now();
    let _ = plans();
    println!("plans built in {:?}", started.elapsed());
    for (name, bytes, check) in [
        (
            "GetCustomerRequest",
            &get,
            check_request::<pb::GetCustomerRequest> as fn(&[u8]) -> _,
        ),
        (
            "CreateCustomerRequest",
            &create,
            check_request::<pb::CreateCustomerRequest>,
        ),
    ] {
        let rounds = 1_000_000;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            assert!(check(std::hint::black_box(bytes)).is_ok());
        }
        println!(
            "{name} ({} bytes): {:?} per check",
            bytes.len(),
            started.elapsed() / rounds
        );
    }
}
