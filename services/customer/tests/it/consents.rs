//! RecordConsent and ListConsentHistory.

use crate::common::{
    Client, TestApp, ada, assert_error, assert_invalid, consent, principal, spawn_app, test_user,
    violated_fields,
};
use crm_proto::crm::common::v1::{Channel, PrincipalKind};
use crm_proto::crm::customer::v1 as pb;
use tonic::Code;

async fn record(
    client: &Client,
    customer_id: &str,
    consent: pb::Consent,
) -> Result<pb::Customer, tonic::Status> {
    Ok(client
        .inner
        .clone()
        .record_consent(client.request(pb::RecordConsentRequest {
            customer_id: customer_id.into(),
            consent: Some(consent),
            request_id: String::new(),
        }))
        .await?
        .into_inner()
        .customer
        .expect("RecordConsent returns the customer"))
}

async fn history(
    client: &Client,
    customer_id: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListConsentHistoryResponse, tonic::Status> {
    Ok(client
        .inner
        .clone()
        .list_consent_history(client.request(pb::ListConsentHistoryRequest {
            customer_id: customer_id.into(),
            page_size,
            page_token: page_token.into(),
        }))
        .await?
        .into_inner())
}

async fn record_with_request_id(
    client: &Client,
    customer_id: &str,
    consent: pb::Consent,
    request_id: &str,
) -> Result<pb::RecordConsentResponse, tonic::Status> {
    Ok(client
        .inner
        .clone()
        .record_consent(client.request(pb::RecordConsentRequest {
            customer_id: customer_id.into(),
            consent: Some(consent),
            request_id: request_id.into(),
        }))
        .await?
        .into_inner())
}

/// How many consent decisions are stored, for every customer.
async fn stored_consents(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM customer.consents")
        .fetch_one(&app.pool().await)
        .await
        .unwrap()
}

/// A granted email consent whose source tells it apart from others.
fn from_source(source: &str) -> pb::Consent {
    pb::Consent {
        source: source.into(),
        ..consent(Channel::Email, pb::ConsentStatus::Granted)
    }
}

fn timestamp_in(offset: chrono::Duration) -> prost_types::Timestamp {
    let t = chrono::Utc::now() + offset;
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

#[tokio::test]
async fn consent_decisions_update_the_customer_and_keep_their_history() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    for status in [pb::ConsentStatus::Granted, pb::ConsentStatus::Withdrawn] {
        record(&client, &created.id, consent(Channel::Email, status))
            .await
            .unwrap();
    }

    let customer = client.get(&created.id).await.unwrap();
    let history = history(&client, &created.id, 1, "").await.unwrap();

    assert_eq!(customer.consents.len(), 1);
    assert_eq!(
        customer.consents[0].status,
        pb::ConsentStatus::Withdrawn as i32
    );
    assert_ne!(
        customer.etag, created.etag,
        "a consent change is a change of the customer"
    );
    assert_eq!(
        history.consents[0].status,
        pb::ConsentStatus::Withdrawn as i32
    );
    assert!(
        !history.next_page_token.is_empty(),
        "the older decision is on the next page"
    );
}

#[tokio::test]
async fn the_recorded_customer_shows_the_latest_decision_per_channel() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let decisions = [
        (Channel::Email, pb::ConsentStatus::Granted),
        (Channel::Sms, pb::ConsentStatus::Granted),
        (Channel::Email, pb::ConsentStatus::Withdrawn),
    ];
    let mut responses = Vec::new();

    for (channel, status) in decisions {
        responses.push(
            record(&client, &created.id, consent(channel, status))
                .await
                .unwrap(),
        );
    }

    let current = |customer: &pb::Customer| {
        let mut pairs: Vec<(i32, i32)> = customer
            .consents
            .iter()
            .map(|c| (c.channel, c.status))
            .collect();
        pairs.sort();
        pairs
    };
    let (email, sms) = (Channel::Email as i32, Channel::Sms as i32);
    let (granted, withdrawn) = (
        pb::ConsentStatus::Granted as i32,
        pb::ConsentStatus::Withdrawn as i32,
    );
    assert_eq!(current(&responses[0]), [(email, granted)]);
    assert_eq!(current(&responses[1]), [(email, granted), (sms, granted)]);
    assert_eq!(current(&responses[2]), [(email, withdrawn), (sms, granted)]);
    let stored = client.get(&created.id).await.unwrap();
    assert_eq!(
        stored, responses[2],
        "the response is the customer as stored"
    );
    assert_eq!(responses[2].id, created.id);
}

#[tokio::test]
async fn a_consent_missing_a_required_field_is_rejected_naming_it_and_nothing_is_recorded() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let valid = consent(Channel::Sms, pb::ConsentStatus::Granted);
    let cases = [
        (
            "unset channel",
            pb::Consent {
                channel: Channel::Unspecified as i32,
                ..valid.clone()
            },
            vec!["consent.channel"],
        ),
        (
            "unknown channel",
            pb::Consent {
                channel: 99,
                ..valid.clone()
            },
            vec!["consent.channel"],
        ),
        (
            "unset status",
            pb::Consent {
                status: pb::ConsentStatus::Unspecified as i32,
                ..valid.clone()
            },
            vec!["consent.status"],
        ),
        (
            "unset legal basis",
            pb::Consent {
                legal_basis: pb::LegalBasis::Unspecified as i32,
                ..valid.clone()
            },
            vec!["consent.legal_basis"],
        ),
        (
            "missing source",
            pb::Consent {
                source: String::new(),
                ..valid.clone()
            },
            vec!["consent.source"],
        ),
        (
            "blank source",
            pb::Consent {
                source: "   ".into(),
                ..valid.clone()
            },
            vec!["consent.source"],
        ),
        (
            "source over 100 characters",
            pb::Consent {
                source: "s".repeat(101),
                ..valid.clone()
            },
            vec!["consent.source"],
        ),
        (
            "no legal basis and no source",
            pb::Consent {
                channel: Channel::Sms as i32,
                status: pb::ConsentStatus::Granted as i32,
                ..Default::default()
            },
            vec!["consent.legal_basis", "consent.source"],
        ),
        (
            "nothing set",
            pb::Consent::default(),
            vec![
                "consent.channel",
                "consent.status",
                "consent.legal_basis",
                "consent.source",
            ],
        ),
    ];

    for (case, bad, fields) in cases {
        let status = record(&client, &created.id, bad).await.unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(violated_fields(&status), fields, "{case}: {status:?}");
    }
    assert_eq!(stored_consents(&app).await, 0);
    let customer = client.get(&created.id).await.unwrap();
    assert_eq!(
        (customer.consents.len(), customer.etag),
        (0, created.etag),
        "a rejected consent leaves the customer unchanged"
    );
}

#[tokio::test]
async fn a_consent_captured_in_the_future_is_rejected_on_capture_time() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let future = pb::Consent {
        capture_time: Some(timestamp_in(chrono::Duration::hours(1))),
        ..consent(Channel::Email, pb::ConsentStatus::Granted)
    };

    let status = record(&client, &created.id, future).await.unwrap_err();

    assert_invalid(&status, &["consent.capture_time"]);
    assert_eq!(stored_consents(&app).await, 0);
}

#[tokio::test]
async fn a_consent_captured_in_the_past_keeps_its_capture_time() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let captured = timestamp_in(-chrono::Duration::days(3));
    let past = pb::Consent {
        capture_time: Some(captured),
        ..consent(Channel::Email, pb::ConsentStatus::Granted)
    };

    let customer = record(&client, &created.id, past).await.unwrap();

    // PostgreSQL keeps microseconds.
    let stored = customer.consents[0].capture_time.unwrap();
    assert_eq!(
        (stored.seconds, stored.nanos / 1000),
        (captured.seconds, captured.nanos / 1000)
    );
    assert!(customer.consents[0].record_time.unwrap().seconds > captured.seconds);
}

#[tokio::test]
async fn a_consent_for_a_malformed_customer_id_is_invalid_argument_on_customer_id() {
    let app = spawn_app().await;
    let client = app.client().await;

    let status = record(
        &client,
        "not-a-uuid",
        consent(Channel::Email, pb::ConsentStatus::Granted),
    )
    .await
    .unwrap_err();

    assert_invalid(&status, &["customer_id"]);
    assert_eq!(stored_consents(&app).await, 0);
}

#[tokio::test]
async fn a_consent_for_an_unknown_customer_is_not_found() {
    let app = spawn_app().await;
    let client = app.client().await;
    let unknown = uuid::Uuid::now_v7().to_string();

    let status = record(
        &client,
        &unknown,
        consent(Channel::Email, pb::ConsentStatus::Granted),
    )
    .await
    .unwrap_err();

    assert_error(&status, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert_eq!(stored_consents(&app).await, 0);
}

#[tokio::test]
async fn a_consent_for_a_deleted_customer_is_failed_precondition() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let deleted = client.delete(&created.id, "").await.unwrap();

    let status = record(
        &client,
        &created.id,
        consent(Channel::Email, pb::ConsentStatus::Granted),
    )
    .await
    .unwrap_err();

    assert_error(&status, Code::FailedPrecondition, "CUSTOMER_NOT_ACTIVE");
    assert_eq!(stored_consents(&app).await, 0);
    let after = client.get(&created.id).await.unwrap();
    assert_eq!(
        (after.state, after.etag),
        (pb::CustomerState::Deleted as i32, deleted.etag)
    );
}

#[tokio::test]
async fn consent_history_pages_continue_newest_first_without_overlap() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    for i in 0..5 {
        record(&client, &created.id, from_source(&format!("form-{i}")))
            .await
            .unwrap();
    }

    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = history(&client, &created.id, 2, &token).await.unwrap();
        pages.push(
            page.consents
                .iter()
                .map(|c| c.source.clone())
                .collect::<Vec<_>>(),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(pages.len() < 5, "paging never ends: {pages:?}");
        token = page.next_page_token;
    }

    assert_eq!(
        pages,
        [
            vec!["form-4", "form-3"],
            vec!["form-2", "form-1"],
            vec!["form-0"]
        ]
    );
}

#[tokio::test]
async fn a_malformed_or_tampered_consent_history_token_is_invalid_argument_on_page_token() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let other = client.create(ada()).await.unwrap();
    for id in [&created.id, &other.id] {
        for i in 0..2 {
            record(&client, id, from_source(&format!("form-{i}")))
                .await
                .unwrap();
        }
    }
    let token = history(&client, &created.id, 1, "")
        .await
        .unwrap()
        .next_page_token;
    let others_token = history(&client, &other.id, 1, "")
        .await
        .unwrap()
        .next_page_token;
    let mut tampered = token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let cases = [
        ("not base64", "!!not a token!!".to_string()),
        ("too short", "AAAA".to_string()),
        ("one character changed", tampered),
        ("issued for another customer", others_token),
    ];

    for (case, bad) in cases {
        let status = history(&client, &created.id, 1, &bad).await.unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(
            violated_fields(&status),
            ["page_token"],
            "{case}: {status:?}"
        );
    }
    let second = history(&client, &created.id, 1, &token).await.unwrap();
    assert_eq!(second.consents[0].source, "form-0", "the real token works");
}

#[tokio::test]
async fn consent_history_of_a_malformed_id_is_invalid_argument_on_customer_id() {
    let app = spawn_app().await;
    let client = app.client().await;

    let status = history(&client, "12345", 0, "").await.unwrap_err();

    assert_invalid(&status, &["customer_id"]);
}

#[tokio::test]
async fn consent_history_of_an_unknown_customer_is_not_found() {
    let app = spawn_app().await;
    let client = app.client().await;

    let status = history(&client, &uuid::Uuid::now_v7().to_string(), 0, "")
        .await
        .unwrap_err();

    assert_error(&status, Code::NotFound, "CUSTOMER_NOT_FOUND");
}

#[tokio::test]
async fn in_app_is_a_consent_channel_like_the_others() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();

    let customer = record(
        &client,
        &created.id,
        consent(Channel::InApp, pb::ConsentStatus::Granted),
    )
    .await
    .unwrap();

    assert_eq!(customer.consents.len(), 1);
    assert_eq!(customer.consents[0].channel, Channel::InApp as i32);
    let history = history(&client, &created.id, 0, "").await.unwrap();
    assert_eq!(history.consents[0].channel, Channel::InApp as i32);
}

#[tokio::test]
async fn the_recorder_is_the_callers_principal_a_user_or_a_service() {
    let app = spawn_app().await;
    let person = app.client().await;
    let service = app.service_client("marketing").await;
    let created = person.create(ada()).await.unwrap();

    let by_person = record(
        &person,
        &created.id,
        consent(Channel::Email, pb::ConsentStatus::Granted),
    )
    .await
    .unwrap();
    let by_service = record(
        &service,
        &created.id,
        consent(Channel::Sms, pb::ConsentStatus::Withdrawn),
    )
    .await
    .unwrap();

    let recorder = |customer: &pb::Customer, channel: Channel| {
        customer
            .consents
            .iter()
            .find(|c| c.channel == channel as i32)
            .and_then(|c| c.recorder.clone())
    };
    assert_eq!(recorder(&by_person, Channel::Email), Some(test_user()));
    assert_eq!(
        recorder(&by_service, Channel::Sms),
        Some(principal(PrincipalKind::Service, "marketing"))
    );
    assert_eq!(
        by_service.audit.unwrap().updater,
        Some(principal(PrincipalKind::Service, "marketing"))
    );
}

#[tokio::test]
async fn a_repeated_request_id_records_the_consent_once_and_returns_the_first_response() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let decision = consent(Channel::Email, pb::ConsentStatus::Granted);

    let first = record_with_request_id(&client, &created.id, decision.clone(), "unsubscribe-7")
        .await
        .unwrap();
    let again = record_with_request_id(&client, &created.id, decision, "unsubscribe-7")
        .await
        .unwrap();

    assert_eq!(again, first);
    assert_eq!(stored_consents(&app).await, 1);
    assert_eq!(
        client.get(&created.id).await.unwrap(),
        first.customer.unwrap()
    );
}

#[tokio::test]
async fn a_request_id_reused_for_another_consent_is_rejected_and_nothing_is_recorded() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    record_with_request_id(
        &client,
        &created.id,
        consent(Channel::Email, pb::ConsentStatus::Granted),
        "unsubscribe-8",
    )
    .await
    .unwrap();

    let status = record_with_request_id(
        &client,
        &created.id,
        consent(Channel::Email, pb::ConsentStatus::Withdrawn),
        "unsubscribe-8",
    )
    .await
    .unwrap_err();
    let too_long = record_with_request_id(
        &client,
        &created.id,
        consent(Channel::Email, pb::ConsentStatus::Withdrawn),
        &"r".repeat(101),
    )
    .await
    .unwrap_err();

    assert_error(&status, Code::AlreadyExists, "REQUEST_ID_REUSED");
    assert_invalid(&too_long, &["request_id"]);
    assert_eq!(stored_consents(&app).await, 1);
}
