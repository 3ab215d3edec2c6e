//! The extractor on an in-memory fixture: a well-formed block is read whole, and every way a
//! block can break its promise is caught at its line.

use super::*;

const FIXTURE: &str = r#"syntax = "proto3";

package crm.customer.v1;

// Things.
service ThingService {
  // Lists things.
  rpc ListThings(ListThingsRequest) returns (ListThingsResponse) {
    option (google.api.http) = { get: "/v1/things" };
  }
  // Searches things.
  rpc SearchThings(SearchThingsRequest) returns (SearchThingsResponse);
}

// Request of ListThings.
message ListThingsRequest {
  // Page size.
  int32 page_size = 1;
  // AIP-160 filter; see proto/README.md.
  // Filter over:
  //   display_name: text
  //   lifecycle_stage: enum LifecycleStage
  //   channel: enum crm.common.v1.Channel
  //   channels: repeated enum crm.common.v1.Channel
  //   tags: repeated text
  //   owner_ids: repeated id
  //   owner_id: id
  //   lifetime_orders: integer
  //   score: number
  //   vip: bool
  //   create_time: timestamp
  //   birth_date: date
  //   wait: duration
  //   skills.name: repeated text
  //   attributes: map
  // Example: `lifecycle_stage >= LEAD AND tags:vip`
  // Example: `channel = CHANNEL_EMAIL OR (birth_date < "2000-01-01" AND wait > 90s)`
  // Example: `skills.name:"french" AND attributes.plan = "pro" AND
  //   create_time > "2026-01-01T00:00:00Z"`.
  // Order by: create_time, display_name (default `create_time desc`)
  string filter = 3;
}

// Request of ListBadThings.
message ListBadThingsRequest {
  // Filter over:
  //   stage: enum LifecycleStage
  //   kind: enum NoSuchEnum
  //   size: float
  // Example: `stage = PROSPECT`
  // Example: `stage = LEAD AND`
  // Example: `close_date = "2026-02-30"`
  // Order by: stage (default `size desc`)
  string filter = 4;
}

// Request of SearchThings.
message SearchThingsRequest {
  // Optional filter over the same fields as ListThings.
  string filter = 2;
  // Nested messages do not hide the request.
  message Hint { string text = 1; }
}

// Request of ListSloppyThings.
message ListSloppyThingsRequest {
  // Filter over:
  //   stage: enum LifecycleStage
  //
  // Order by: stage, kind
  string filter = 1;
}

// A stored filter, not a request: not a contract of its own.
message SavedView {
  // Filter over customers as ListThings takes it.
  string filter = 1;
}
"#;

/// The 1-based line of the fixture that contains `marker`.
fn line_of(marker: &str) -> usize {
    FIXTURE
        .lines()
        .position(|line| line.contains(marker))
        .unwrap_or_else(|| panic!("{marker:?} is not in the fixture"))
        + 1
}

fn fixture_failures() -> Vec<(usize, String)> {
    let enums = Enums::from_descriptor_set();
    let extracted = extract("fixture.proto", FIXTURE);
    let mut failures: Vec<Failure> = extracted.malformed.clone();
    failures.extend(extracted.undeclared.iter().cloned());
    for block in &extracted.blocks {
        failures.extend(check_block(block, &enums));
    }
    failures.sort();
    failures.into_iter().map(|f| (f.line, f.message)).collect()
}

#[test]
fn the_extractor_reads_a_well_formed_block_with_a_wrapped_example() {
    let extracted = extract("fixture.proto", FIXTURE);

    let block = &extracted.blocks[0];
    assert_eq!(block.message, "ListThingsRequest");
    assert_eq!(block.package, "crm.customer.v1");
    assert_eq!(block.line, line_of("string filter = 3;"));
    assert_eq!(block.fields.len(), 15);
    assert_eq!(block.fields[13].name, "skills.name");
    assert_eq!(block.fields[13].type_text, "repeated text");
    assert_eq!(
        block.examples[2].text,
        "skills.name:\"french\" AND attributes.plan = \"pro\" AND create_time > \"2026-01-01T00:00:00Z\""
    );
    assert_eq!(block.examples[2].line, line_of("// Example: `skills.name"));
    let order_by = block.order_by.as_ref().unwrap();
    assert_eq!(order_by.fields, ["create_time", "display_name"]);
    assert_eq!(order_by.default, "create_time desc");
    assert_eq!((extracted.list_rpcs, extracted.blocks_seen), (1, 3));
}

#[test]
fn the_extractor_accepts_the_well_formed_block_and_catches_every_broken_promise() {
    let failures = fixture_failures();

    let expected = [
        (
            line_of("kind: enum NoSuchEnum"),
            "enum crm.customer.v1.NoSuchEnum does not exist",
        ),
        (line_of("size: float"), "field size: unknown type \"float\""),
        (
            line_of("`stage = PROSPECT`"),
            "example `stage = PROSPECT` is rejected: at position 8: field 'stage' expects one of SUBSCRIBER, LEAD, OPPORTUNITY, CUSTOMER, CHURNED",
        ),
        (
            line_of("`stage = LEAD AND`"),
            "is rejected: at position 16: expected a condition after 'AND'",
        ),
        (
            line_of("`close_date = "),
            "is rejected: at position 0: unknown field 'close_date'",
        ),
        (
            line_of("(default `size desc`)"),
            "`Order by:` default `size desc` is rejected: at position 0: cannot order by 'size'",
        ),
        (
            line_of("string filter = 2;"),
            "SearchThingsRequest.filter has no `// Filter over:` block",
        ),
        (
            line_of("Request of ListSloppyThings") + 2,
            "the `Filter over:` block has no `// Example: `…`` line",
        ),
        (line_of("Order by: stage, kind") - 1, "unexpected line \"\""),
        (
            line_of("Order by: stage, kind"),
            "expected `// Order by: a, b (default `x desc`)`, found \"stage, kind\"",
        ),
    ];
    for (line, fragment) in &expected {
        assert!(
            failures
                .iter()
                .any(|(l, m)| l == line && m.contains(fragment)),
            "no failure at line {line} containing {fragment:?}; got {failures:#?}"
        );
    }
    assert_eq!(failures.len(), expected.len(), "{failures:#?}");
}

#[test]
fn failures_name_the_file_and_line() {
    let failure = Failure::new("proto/crm/support/v1/support_service.proto", 446, "problem");

    assert_eq!(
        failure.to_string(),
        "proto/crm/support/v1/support_service.proto:446: problem"
    );
}

#[test]
fn enum_prefixes_come_from_the_enum_name_in_screaming_snake_case() {
    assert_eq!(screaming_snake("TicketStatus"), "TICKET_STATUS");
    assert_eq!(screaming_snake("CSATScore"), "CSAT_SCORE");
    assert_eq!(screaming_snake("Oauth2Grant"), "OAUTH2_GRANT");
    assert_eq!(screaming_snake("Channel"), "CHANNEL");
}

#[test]
fn enums_resolve_bare_in_the_package_or_fully_qualified() {
    let enums = Enums::from_descriptor_set();

    let stage = enums.resolve("LifecycleStage", "crm.customer.v1").unwrap();
    let channel = enums
        .resolve("crm.common.v1.Channel", "crm.sales.v1")
        .unwrap();

    assert_eq!(stage.prefix, "LIFECYCLE_STAGE_");
    assert_eq!(
        stage.values,
        ["SUBSCRIBER", "LEAD", "OPPORTUNITY", "CUSTOMER", "CHURNED"]
    );
    assert_eq!(channel.prefix, "CHANNEL_");
    assert!(enums.resolve("LifecycleStage", "crm.sales.v1").is_err());
}
