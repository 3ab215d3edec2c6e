//! CreateInteraction and ListInteractions.

use crate::common::{
    Client, TestApp, ada, assert_error, assert_invalid, principal, spawn_app, test_user,
    violated_fields,
};
use crm_proto::crm::common::v1::PrincipalKind;
use crm_proto::crm::customer::v1 as pb;
use tonic::Code;

/// A valid note about `customer_id`.
fn note(customer_id: &str, subject: &str) -> pb::Interaction {
    pb::Interaction {
        customer_id: customer_id.into(),
        r#type: pb::InteractionType::Note as i32,
        subject: subject.into(),
        ..Default::default()
    }
}

async fn create(
    client: &Client,
    interaction: pb::Interaction,
    request_id: &str,
) -> Result<pb::Interaction, tonic::Status> {
    Ok(client
        .inner
        .clone()
        .create_interaction(client.request(pb::CreateInteractionRequest {
            interaction: Some(interaction),
            request_id: request_id.into(),
        }))
        .await?
        .into_inner()
        .interaction
        .expect("CreateInteraction returns the interaction"))
}

async fn list(
    client: &Client,
    req: pb::ListInteractionsRequest,
) -> Result<pb::ListInteractionsResponse, tonic::Status> {
    Ok(client
        .inner
        .clone()
        .list_interactions(client.request(req))
        .await?
        .into_inner())
}

/// How many interactions are stored, for every customer.
async fn stored_interactions(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM customer.interactions")
        .fetch_one(&app.pool().await)
        .await
        .unwrap()
}

fn hours_from_now(hours: i64) -> prost_types::Timestamp {
    let t = chrono::Utc::now() + chrono::Duration::hours(hours);
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn subjects(response: &pb::ListInteractionsResponse) -> Vec<&str> {
    response
        .interactions
        .iter()
        .map(|i| i.subject.as_str())
        .collect()
}

#[tokio::test]
async fn interactions_form_a_filterable_timeline_newest_first() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    for (kind, subject, hours_ago) in [
        (pb::InteractionType::Call, "intro call", 3),
        (pb::InteractionType::Note, "likes engines", 2),
        (pb::InteractionType::Call, "follow-up", 1),
    ] {
        create(
            &client,
            pb::Interaction {
                r#type: kind as i32,
                occur_time: Some(hours_from_now(-hours_ago)),
                ..note(&created.id, subject)
            },
            "",
        )
        .await
        .unwrap();
    }

    let calls = list(
        &client,
        pb::ListInteractionsRequest {
            customer_id: created.id.clone(),
            filter: "type = CALL".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    assert_eq!(subjects(&calls), ["follow-up", "intro call"]);
    assert!(calls.next_page_token.is_empty());
}

#[tokio::test]
async fn a_created_interaction_is_returned_as_stored() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    let sent = pb::Interaction {
        r#type: pb::InteractionType::Call as i32,
        direction: pb::InteractionDirection::Inbound as i32,
        body: "asked about the analytical engine".into(),
        occur_time: Some(hours_from_now(-2)),
        duration: Some(prost_types::Duration {
            seconds: 900,
            nanos: 0,
        }),
        owner: Some(principal(PrincipalKind::User, "rep-7")),
        ..note(&customer.id, "inbound call")
    };

    let created = create(&client, sent.clone(), "").await.unwrap();

    let listed = list(
        &client,
        pb::ListInteractionsRequest {
            customer_id: customer.id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.interactions, std::slice::from_ref(&created));
    assert!(uuid::Uuid::parse_str(&created.id).is_ok());
    let audit = created.audit.clone().unwrap();
    assert_eq!(audit.creator, Some(test_user()));
    let expected = pb::Interaction {
        id: created.id.clone(),
        audit: created.audit.clone(),
        ..sent
    };
    assert_eq!(created, expected);
}

#[tokio::test]
async fn an_interaction_with_a_bad_field_is_rejected_naming_it_and_nothing_is_written() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    let valid = note(&customer.id, "call back");
    let cases = [
        (
            "missing customer id",
            pb::Interaction {
                customer_id: String::new(),
                ..valid.clone()
            },
            "interaction.customer_id",
        ),
        (
            "malformed customer id",
            pb::Interaction {
                customer_id: "customer-1".into(),
                ..valid.clone()
            },
            "interaction.customer_id",
        ),
        (
            "unset type",
            pb::Interaction {
                r#type: pb::InteractionType::Unspecified as i32,
                ..valid.clone()
            },
            "interaction.type",
        ),
        (
            "unknown type",
            pb::Interaction {
                r#type: 42,
                ..valid.clone()
            },
            "interaction.type",
        ),
        (
            "empty subject",
            pb::Interaction {
                subject: String::new(),
                ..valid.clone()
            },
            "interaction.subject",
        ),
        (
            "subject over 200 characters",
            pb::Interaction {
                subject: "s".repeat(201),
                ..valid.clone()
            },
            "interaction.subject",
        ),
        (
            "body over 10,000 characters",
            pb::Interaction {
                body: "b".repeat(10_001),
                ..valid.clone()
            },
            "interaction.body",
        ),
        (
            "owner id over 200 characters",
            pb::Interaction {
                owner: Some(principal(PrincipalKind::Team, &"o".repeat(201))),
                ..valid.clone()
            },
            "interaction.owner.id",
        ),
        (
            "an agent as owner",
            pb::Interaction {
                owner: Some(principal(PrincipalKind::Agent, "agent-1")),
                ..valid.clone()
            },
            "interaction.owner.kind",
        ),
        (
            "unknown direction",
            pb::Interaction {
                direction: 9,
                ..valid.clone()
            },
            "interaction.direction",
        ),
        (
            "occur time two days ahead",
            pb::Interaction {
                occur_time: Some(hours_from_now(48)),
                ..valid.clone()
            },
            "interaction.occur_time",
        ),
        (
            "negative duration",
            pb::Interaction {
                duration: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..valid.clone()
            },
            "interaction.duration",
        ),
        (
            "duration over 24 hours",
            pb::Interaction {
                duration: Some(prost_types::Duration {
                    seconds: 86_401,
                    nanos: 0,
                }),
                ..valid.clone()
            },
            "interaction.duration",
        ),
    ];

    for (case, bad, field) in cases {
        let status = create(&client, bad, "").await.unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(violated_fields(&status), [field], "{case}: {status:?}");
    }
    assert_eq!(stored_interactions(&app).await, 0);
}

#[tokio::test]
async fn an_interaction_at_every_limit_is_accepted() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    let at_limits = pb::Interaction {
        r#type: pb::InteractionType::Meeting as i32,
        subject: "s".repeat(200),
        body: "b".repeat(10_000),
        owner: Some(principal(PrincipalKind::User, &"o".repeat(200))),
        occur_time: Some(hours_from_now(23)),
        duration: Some(prost_types::Duration {
            seconds: 86_400,
            nanos: 0,
        }),
        ..note(&customer.id, "")
    };

    let created = create(&client, at_limits.clone(), "").await.unwrap();

    assert_eq!(
        (
            created.subject.len(),
            created.body.len(),
            created.owner.as_ref().unwrap().id.len()
        ),
        (200, 10_000, 200)
    );
    assert_eq!(created.duration, at_limits.duration);
    assert_eq!(stored_interactions(&app).await, 1);
}

#[tokio::test]
async fn an_interaction_for_an_unknown_customer_is_not_found() {
    let app = spawn_app().await;
    let client = app.client().await;
    let unknown = uuid::Uuid::now_v7().to_string();

    let status = create(&client, note(&unknown, "hello?"), "")
        .await
        .unwrap_err();

    assert_error(&status, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert_eq!(stored_interactions(&app).await, 0);
}

#[tokio::test]
async fn an_interaction_for_a_deleted_customer_is_failed_precondition() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    client.delete(&customer.id, "").await.unwrap();

    let status = create(&client, note(&customer.id, "too late"), "")
        .await
        .unwrap_err();

    assert_error(&status, Code::FailedPrecondition, "CUSTOMER_NOT_ACTIVE");
    assert_eq!(stored_interactions(&app).await, 0);
}

#[tokio::test]
async fn retrying_an_interaction_with_its_request_id_returns_the_first_one_and_stores_one() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    let interaction = note(&customer.id, "retried note");

    let first = create(&client, interaction.clone(), "note-1")
        .await
        .unwrap();
    let retry = create(&client, interaction, "note-1").await.unwrap();

    assert_eq!(retry, first);
    assert_eq!(stored_interactions(&app).await, 1);
}

#[tokio::test]
async fn reusing_an_interaction_request_id_for_another_request_is_already_exists() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    let first = create(&client, note(&customer.id, "first"), "note-1")
        .await
        .unwrap();

    let status = create(&client, note(&customer.id, "second"), "note-1")
        .await
        .unwrap_err();

    assert_error(&status, Code::AlreadyExists, "REQUEST_ID_REUSED");
    let listed = list(
        &client,
        pb::ListInteractionsRequest {
            customer_id: customer.id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.interactions, [first]);
}

#[tokio::test]
async fn interaction_pages_continue_newest_first_by_occur_time_without_overlap() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    // Created in an order unlike their occur_time, so the id order is not the answer.
    for hours_ago in [3, 1, 5, 2, 4] {
        create(
            &client,
            pb::Interaction {
                occur_time: Some(hours_from_now(-hours_ago)),
                ..note(&customer.id, &format!("{hours_ago}h ago"))
            },
            "",
        )
        .await
        .unwrap();
    }

    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(
            &client,
            pb::ListInteractionsRequest {
                customer_id: customer.id.clone(),
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        pages.push(subjects(&page).iter().map(|s| s.to_string()).collect());
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(pages.len() < 5, "paging never ends: {pages:?}");
        token = page.next_page_token;
    }

    assert_eq!(
        pages,
        [
            vec!["1h ago", "2h ago"],
            vec!["3h ago", "4h ago"],
            vec!["5h ago"]
        ]
    );
}

#[tokio::test]
async fn interactions_filter_by_type_direction_and_occur_time() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    let other = client.create(ada()).await.unwrap();
    for (kind, direction, hours_ago, subject) in [
        (
            pb::InteractionType::Call,
            pb::InteractionDirection::Inbound,
            30,
            "old inbound call",
        ),
        (
            pb::InteractionType::Email,
            pb::InteractionDirection::Outbound,
            20,
            "outbound email",
        ),
        (
            pb::InteractionType::Call,
            pb::InteractionDirection::Outbound,
            10,
            "outbound call",
        ),
        (
            pb::InteractionType::Note,
            pb::InteractionDirection::Unspecified,
            1,
            "note",
        ),
    ] {
        create(
            &client,
            pb::Interaction {
                r#type: kind as i32,
                direction: direction as i32,
                occur_time: Some(hours_from_now(-hours_ago)),
                ..note(&customer.id, subject)
            },
            "",
        )
        .await
        .unwrap();
    }
    create(
        &client,
        pb::Interaction {
            r#type: pb::InteractionType::Call as i32,
            ..note(&other.id, "someone else's call")
        },
        "",
    )
    .await
    .unwrap();
    let fifteen_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(15))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let cases = [
        (
            "type = CALL".to_string(),
            vec!["outbound call", "old inbound call"],
        ),
        (
            "direction = OUTBOUND".to_string(),
            vec!["outbound call", "outbound email"],
        ),
        (
            "type = CALL AND direction = INBOUND".to_string(),
            vec!["old inbound call"],
        ),
        ("direction = NONE".to_string(), vec!["note"]),
        (
            format!("occur_time < \"{fifteen_hours_ago}\""),
            vec!["outbound email", "old inbound call"],
        ),
        (
            format!("occur_time >= \"{fifteen_hours_ago}\" AND -type = NOTE"),
            vec!["outbound call"],
        ),
    ];

    for (filter, expected) in cases {
        let page = list(
            &client,
            pb::ListInteractionsRequest {
                customer_id: customer.id.clone(),
                filter: filter.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();

        assert_eq!(subjects(&page), expected, "filter {filter}");
    }
}

#[tokio::test]
async fn an_interaction_sent_without_a_direction_has_direction_none() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();

    let created = create(&client, note(&customer.id, "a note"), "")
        .await
        .unwrap();
    let listed = list(
        &client,
        pb::ListInteractionsRequest {
            customer_id: customer.id.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    assert_eq!(created.direction, pb::InteractionDirection::None as i32);
    assert_eq!(listed.interactions, [created]);
}

#[tokio::test]
async fn a_bad_interaction_filter_is_invalid_argument_on_filter() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    let cases = [
        ("unknown field", "colour = RED"),
        ("field of another list", "email = \"a@b.c\""),
        ("unknown enum value", "type = FAX"),
        ("missing value", "type ="),
        ("timestamp expected", "occur_time > 5"),
        ("unbalanced parenthesis", "(type = CALL"),
    ];

    for (case, filter) in cases {
        let status = list(
            &client,
            pb::ListInteractionsRequest {
                customer_id: customer.id.clone(),
                filter: filter.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(violated_fields(&status), ["filter"], "{case}: {status:?}");
    }
}

#[tokio::test]
async fn a_bad_interaction_page_token_is_invalid_argument_on_page_token() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    for subject in ["one", "two"] {
        create(
            &client,
            pb::Interaction {
                r#type: pb::InteractionType::Call as i32,
                ..note(&customer.id, subject)
            },
            "",
        )
        .await
        .unwrap();
    }
    let first_page = |filter: &str| pb::ListInteractionsRequest {
        customer_id: customer.id.clone(),
        page_size: 1,
        filter: filter.into(),
        ..Default::default()
    };
    let token = list(&client, first_page("")).await.unwrap().next_page_token;
    let mut tampered = token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let cases = [
        ("not base64", first_page(""), "%%%".to_string()),
        ("one character changed", first_page(""), tampered),
        (
            "issued for another filter",
            first_page("type = CALL"),
            token.clone(),
        ),
    ];

    for (case, request, bad) in cases {
        let status = list(
            &client,
            pb::ListInteractionsRequest {
                page_token: bad,
                ..request
            },
        )
        .await
        .unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(
            violated_fields(&status),
            ["page_token"],
            "{case}: {status:?}"
        );
    }
    let second = list(
        &client,
        pb::ListInteractionsRequest {
            page_token: token,
            ..first_page("")
        },
    )
    .await
    .unwrap();
    assert_eq!(subjects(&second).len(), 1, "the real token works");
}

#[tokio::test]
async fn interactions_of_an_unknown_customer_are_not_found() {
    let app = spawn_app().await;
    let client = app.client().await;

    let status = list(
        &client,
        pb::ListInteractionsRequest {
            customer_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();

    assert_error(&status, Code::NotFound, "CUSTOMER_NOT_FOUND");
}

#[tokio::test]
async fn interactions_of_a_malformed_id_are_invalid_argument_on_customer_id() {
    let app = spawn_app().await;
    let client = app.client().await;

    let status = list(
        &client,
        pb::ListInteractionsRequest {
            customer_id: "nope".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();

    assert_invalid(&status, &["customer_id"]);
}
