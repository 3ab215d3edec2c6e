//! Every limit the customer contract documents (customer.proto), at its edge: the largest
//! allowed value is accepted and one more is rejected, naming the field.

use std::collections::BTreeMap;

use crm_proto::crm::common::v1::PostalAddress;
use pb::attribute_value::Kind;

use super::*;

fn customer() -> pb::Customer {
    pb::Customer {
        display_name: "Ada".into(),
        ..Default::default()
    }
}

/// The fields `from_proto` names as violated (empty when the customer is valid).
fn violations(c: &pb::Customer) -> Vec<String> {
    match CustomerFields::try_from(c) {
        Ok(_) => Vec::new(),
        Err(v) => v.iter().map(|v| v.field.clone()).collect(),
    }
}

/// `n` characters that take two bytes each, so byte counts and character counts differ.
fn chars(n: usize) -> String {
    "é".repeat(n)
}

fn string_value(s: String) -> pb::AttributeValue {
    pb::AttributeValue {
        kind: Some(Kind::StringValue(s)),
    }
}

#[test]
fn text_fields_accept_their_maximum_in_characters_and_reject_one_more() {
    type Setter = fn(&mut pb::Customer, String);
    let cases: [(&str, usize, Setter); 6] = [
        ("customer.owner.id", 200, |c, s| {
            c.owner = Some(crm_proto::crm::common::v1::Principal {
                kind: crm_proto::crm::common::v1::PrincipalKind::Team as i32,
                id: s,
            })
        }),
        ("customer.display_name", 200, |c, s| c.display_name = s),
        ("customer.given_name", 100, |c, s| c.given_name = s),
        ("customer.family_name", 100, |c, s| c.family_name = s),
        ("customer.company_name", 200, |c, s| c.company_name = s),
        ("customer.source", 100, |c, s| c.source = s),
    ];
    for (field, max, set) in cases {
        let mut longest = customer();
        set(&mut longest, chars(max));
        let mut too_long = customer();
        set(&mut too_long, chars(max + 1));

        assert_eq!(
            violations(&longest),
            Vec::<String>::new(),
            "{field} at {max}"
        );
        assert_eq!(violations(&too_long), [field], "{field} at {}", max + 1);
    }
}

#[test]
fn an_email_may_have_a_64_character_local_part_and_254_characters_in_all() {
    let local = |n: usize| "a".repeat(n);
    // 64 + 1 + 189 = 254: labels of 63 characters, dot-separated, ending in ".com".
    let domain = format!(
        "{}.{}.{}.com",
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(57)
    );
    assert_eq!(domain.len(), 189);

    assert!(is_valid_email(&format!("{}@example.com", local(64))));
    assert!(!is_valid_email(&format!("{}@example.com", local(65))));
    assert!(is_valid_email(&format!("{}@{domain}", local(64))));
    let longer_domain = format!(
        "{}.{}.{}.com",
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(58)
    );
    assert!(
        !is_valid_email(&format!("{}@{longer_domain}", local(64))),
        "255 characters"
    );
    assert!(!is_valid_email("@example.com"));
    assert!(!is_valid_email("ada@localhost"));
}

#[test]
fn tags_are_fifty_characters_of_lower_case_letters_digits_dash_and_underscore_at_most_fifty() {
    let mut c = customer();
    c.tags = vec!["a".repeat(50), "x_y-9".into(), "VIP".into()];
    let fields = CustomerFields::try_from(&c).unwrap();
    assert_eq!(fields.tags, ["a".repeat(50), "x_y-9".into(), "vip".into()]);

    for bad in [
        "a".repeat(51),
        "has space".into(),
        "dot.ted".into(),
        String::new(),
    ] {
        c.tags = vec!["ok".into(), bad.clone()];
        assert_eq!(violations(&c), ["customer.tags[1]"], "{bad:?}");
    }

    c.tags = (0..50).map(|i| format!("t{i}")).collect();
    assert_eq!(violations(&c), Vec::<String>::new());
    c.tags.push("t50".into());
    assert_eq!(violations(&c), ["customer.tags"]);
}

#[test]
fn attribute_keys_are_one_to_sixty_four_of_letters_digits_and_underscore() {
    let mut c = customer();
    for good in ["a".repeat(64), "Plan_2".into()] {
        c.attributes = BTreeMap::from([(good.clone(), string_value("x".into()))]);
        assert_eq!(violations(&c), Vec::<String>::new(), "{good:?}");
    }
    for bad in ["a".repeat(65), "plan-b".into(), "pläne".into()] {
        c.attributes = BTreeMap::from([(bad.clone(), string_value("x".into()))]);
        assert_eq!(
            violations(&c),
            [format!("customer.attributes.{bad}")],
            "{bad:?}"
        );
    }
}

#[test]
fn at_most_fifty_attributes_with_string_values_of_at_most_a_thousand_characters() {
    let mut c = customer();
    c.attributes = (0..50)
        .map(|i| (format!("k{i}"), string_value(chars(1000))))
        .collect();
    assert_eq!(violations(&c), Vec::<String>::new());

    c.attributes.insert("k50".into(), string_value("x".into()));
    assert_eq!(violations(&c), ["customer.attributes"]);

    c.attributes = BTreeMap::from([("long".into(), string_value(chars(1001)))]);
    assert_eq!(violations(&c), ["customer.attributes.long"]);
}

#[test]
fn an_attribute_needs_a_finite_value_and_a_set_kind() {
    let mut c = customer();
    for (key, value) in [
        ("nan", Kind::DoubleValue(f64::NAN)),
        ("inf", Kind::DoubleValue(f64::INFINITY)),
    ] {
        c.attributes =
            BTreeMap::from([(key.to_string(), pb::AttributeValue { kind: Some(value) })]);
        assert_eq!(violations(&c), [format!("customer.attributes.{key}")]);
    }
    c.attributes = BTreeMap::from([("unset".to_string(), pb::AttributeValue { kind: None })]);
    assert_eq!(violations(&c), ["customer.attributes.unset"]);
}

#[test]
fn a_timestamp_attribute_comes_back_as_the_same_timestamp() {
    let when = prost_types::Timestamp {
        seconds: 1_764_000_000,
        nanos: 123_000_000,
    };
    let mut c = customer();
    c.attributes = BTreeMap::from([
        (
            "renewal".to_string(),
            pb::AttributeValue {
                kind: Some(Kind::TimestampValue(when)),
            },
        ),
        (
            "note".to_string(),
            string_value("2026-01-01T00:00:00Z".into()),
        ),
    ]);

    let stored = CustomerFields::try_from(&c).unwrap();
    let back = stored.attributes.to_proto();

    assert_eq!(back["renewal"].kind, Some(Kind::TimestampValue(when)));
    assert_eq!(
        back["note"].kind,
        Some(Kind::StringValue("2026-01-01T00:00:00Z".into())),
        "a string that looks like a time stays a string"
    );
}

fn contact(kind: pb::ContactPointType, value: &str) -> pb::ContactPoint {
    pb::ContactPoint {
        r#type: kind as i32,
        value: value.into(),
        label: "work".into(),
    }
}

#[test]
fn contact_points_are_checked_by_their_type_and_at_most_twenty() {
    use pb::ContactPointType::{Email, Phone, Unspecified};
    let mut c = customer();
    c.contact_points = vec![
        contact(Email, "Ada@Example.COM"),
        contact(Phone, "+4915112345678"),
    ];
    let fields = CustomerFields::try_from(&c).unwrap();
    assert_eq!(fields.contact_points[0].kind, ContactKind::Email);
    assert_eq!(fields.contact_points[0].value, "ada@example.com");
    assert_eq!(fields.contact_points[1].kind, ContactKind::Phone);

    for (point, field) in [
        (
            contact(Email, "+4915112345678"),
            "customer.contact_points[0].value",
        ),
        (
            contact(Phone, "ada@example.com"),
            "customer.contact_points[0].value",
        ),
        (
            contact(Unspecified, "ada@example.com"),
            "customer.contact_points[0].type",
        ),
    ] {
        c.contact_points = vec![point];
        assert_eq!(violations(&c), [field]);
    }

    let mut labelled = contact(Email, "ada@example.com");
    labelled.label = chars(50);
    c.contact_points = vec![labelled.clone()];
    assert_eq!(violations(&c), Vec::<String>::new());
    labelled.label = chars(51);
    c.contact_points = vec![labelled];
    assert_eq!(violations(&c), ["customer.contact_points[0].label"]);

    c.contact_points = (0..20)
        .map(|i| contact(Email, &format!("a{i}@example.com")))
        .collect();
    assert_eq!(violations(&c), Vec::<String>::new());
    c.contact_points.push(contact(Email, "a20@example.com"));
    assert_eq!(violations(&c), ["customer.contact_points"]);
}

fn address(lines: usize) -> pb::CustomerAddress {
    pb::CustomerAddress {
        label: "billing".into(),
        address: Some(PostalAddress {
            region_code: "de".into(),
            postal_code: "10115".into(),
            administrative_area: "Berlin".into(),
            locality: "Berlin".into(),
            address_lines: (0..lines).map(|i| format!("Line {i}")).collect(),
            recipient: "Ada Lovelace".into(),
        }),
    }
}

#[test]
fn addresses_need_a_region_code_and_are_bounded_in_lines_labels_and_number() {
    let mut c = customer();
    c.addresses = vec![address(5)];
    let fields = CustomerFields::try_from(&c).unwrap();
    let mut expected = address(5);
    expected.address.as_mut().unwrap().region_code = "DE".into();
    assert_eq!(pb::CustomerAddress::from(&fields.addresses[0]), expected);

    c.addresses = vec![address(6)];
    assert_eq!(
        violations(&c),
        ["customer.addresses[0].address.address_lines"]
    );

    let mut long_line = address(1);
    long_line.address.as_mut().unwrap().address_lines = vec![chars(200)];
    c.addresses = vec![long_line.clone()];
    assert_eq!(violations(&c), Vec::<String>::new());
    long_line.address.as_mut().unwrap().address_lines = vec![chars(201)];
    c.addresses = vec![long_line];
    assert_eq!(
        violations(&c),
        ["customer.addresses[0].address.address_lines[0]"]
    );

    let mut long_label = address(1);
    long_label.label = chars(51);
    c.addresses = vec![long_label];
    assert_eq!(violations(&c), ["customer.addresses[0].label"]);

    for region in ["", "DEU", "D1"] {
        let mut bad = address(1);
        bad.address.as_mut().unwrap().region_code = region.into();
        c.addresses = vec![bad];
        assert_eq!(
            violations(&c),
            ["customer.addresses[0].address.region_code"],
            "{region:?}"
        );
    }

    c.addresses = (0..10).map(|_| address(1)).collect();
    assert_eq!(violations(&c), Vec::<String>::new());
    c.addresses.push(address(1));
    assert_eq!(violations(&c), ["customer.addresses"]);
}

fn paths(paths: &[&str]) -> Vec<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

#[test]
fn the_whole_attribute_map_and_single_attribute_paths_are_updatable() {
    let mut stored = CustomerFields::try_from(&customer()).unwrap();
    let mut incoming = customer();
    incoming.attributes = BTreeMap::from([
        ("plan".to_string(), string_value("pro".into())),
        ("seats".to_string(), string_value("5".into())),
    ]);

    stored
        .apply_mask(&incoming, &paths(&["attributes.plan"]))
        .unwrap();
    assert_eq!(
        stored.attributes.values.keys().collect::<Vec<_>>(),
        ["plan"]
    );

    stored
        .apply_mask(&incoming, &paths(&["attributes"]))
        .unwrap();
    assert_eq!(
        stored.attributes.values.keys().collect::<Vec<_>>(),
        ["plan", "seats"]
    );

    let err = stored
        .apply_mask(
            &incoming,
            &paths(&["attributes.bad-key", "tags", "nonsense"]),
        )
        .unwrap_err();
    let fields: Vec<_> = err.iter().map(|v| v.field.clone()).collect();
    assert_eq!(fields, ["update_mask.paths[0]", "update_mask.paths[2]"]);
}

#[test]
fn a_violation_inside_a_masked_list_field_is_reported() {
    let mut stored = CustomerFields::try_from(&customer()).unwrap();
    let mut incoming = customer();
    incoming.contact_points = vec![contact(pb::ContactPointType::Email, "not-an-email")];
    incoming.tags = vec!["Bad Tag".into()];

    let err = stored
        .apply_mask(&incoming, &paths(&["contact_points", "tags"]))
        .unwrap_err();

    let fields: Vec<_> = err.iter().map(|v| v.field.clone()).collect();
    assert_eq!(
        fields,
        ["customer.tags[0]", "customer.contact_points[0].value"]
    );
    assert!(stored.contact_points.is_empty(), "nothing applied");
}

#[test]
fn an_attribute_path_keeps_the_timestamp_kind_of_the_value_it_sets() {
    let when = prost_types::Timestamp {
        seconds: 1_764_000_000,
        nanos: 0,
    };
    let mut stored = CustomerFields::try_from(&customer()).unwrap();
    let mut incoming = customer();
    incoming.attributes = BTreeMap::from([(
        "renewal".to_string(),
        pb::AttributeValue {
            kind: Some(Kind::TimestampValue(when)),
        },
    )]);
    stored
        .apply_mask(&incoming, &paths(&["attributes.renewal"]))
        .unwrap();
    assert_eq!(
        stored.attributes.to_proto()["renewal"].kind,
        Some(Kind::TimestampValue(when))
    );

    incoming.attributes = BTreeMap::from([("renewal".to_string(), string_value("soon".into()))]);
    stored
        .apply_mask(&incoming, &paths(&["attributes.renewal"]))
        .unwrap();

    assert_eq!(
        stored.attributes.to_proto()["renewal"].kind,
        Some(Kind::StringValue("soon".into()))
    );
    assert!(stored.attributes.timestamp_keys.is_empty());
}

#[test]
fn attribute_paths_may_fill_the_map_to_fifty_but_not_beyond() {
    let mut c = customer();
    c.attributes = (0..49)
        .map(|i| (format!("k{i}"), string_value("x".into())))
        .collect();
    let mut stored = CustomerFields::try_from(&c).unwrap();
    let mut incoming = customer();
    incoming.attributes = BTreeMap::from([
        ("k49".to_string(), string_value("x".into())),
        ("k50".to_string(), string_value("x".into())),
    ]);

    stored
        .apply_mask(&incoming, &paths(&["attributes.k49"]))
        .unwrap();
    let err = stored
        .apply_mask(&incoming, &paths(&["attributes.k50"]))
        .unwrap_err();

    let fields: Vec<_> = err.iter().map(|v| v.field.clone()).collect();
    assert_eq!(fields, ["customer.attributes"]);
}
