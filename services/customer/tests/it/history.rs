//! ListCustomerFieldChanges: one entry per changed field of every write, newest first.

use prost_types::value::Kind;

use crate::common::{
    Client, ada, assert_error, assert_invalid, consent, principal, spawn_app, test_user,
};
use crm_proto::crm::common::v1::{Channel, PrincipalKind};
use crm_proto::crm::customer::v1 as pb;
use tonic::Code;

/// Every field change of a customer (newest first), following the pages.
async fn all_changes(
    client: &Client,
    customer_id: &str,
    filter: &str,
) -> Vec<pb::CustomerFieldChange> {
    let mut changes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .field_changes(pb::ListCustomerFieldChangesRequest {
                customer_id: customer_id.into(),
                page_size: 2,
                page_token,
                filter: filter.into(),
            })
            .await
            .unwrap();
        changes.extend(page.field_changes);
        if page.next_page_token.is_empty() {
            return changes;
        }
        assert!(changes.len() < 1000, "paging never ends");
        page_token = page.next_page_token;
    }
}

fn paths(changes: &[pb::CustomerFieldChange]) -> Vec<&str> {
    changes.iter().map(|c| c.path.as_str()).collect()
}

fn text(value: &Option<prost_types::Value>) -> Option<String> {
    match value.as_ref()?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        other => panic!("not a string: {other:?}"),
    }
}

/// The field `name` of a struct value.
fn field(value: &Option<prost_types::Value>, name: &str) -> Option<prost_types::Value> {
    match value.as_ref()?.kind.as_ref()? {
        Kind::StructValue(object) => object.fields.get(name).cloned(),
        other => panic!("not a struct: {other:?}"),
    }
}

#[tokio::test]
async fn creating_a_customer_records_no_field_changes() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();

    assert_eq!(all_changes(&client, &created.id, "").await, []);
}

#[tokio::test]
async fn an_update_records_each_changed_field_with_its_old_and_new_value() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut change = created.clone();
    change.email = "ada.king@example.com".into();
    change.company_name = "Analytical Engines".into();
    change.display_name = created.display_name.clone();
    change.attributes.insert(
        "tier".into(),
        pb::AttributeValue {
            kind: Some(pb::attribute_value::Kind::StringValue("gold".into())),
        },
    );

    let updated = client
        .update(
            change,
            &["email", "company_name", "display_name", "attributes.tier"],
        )
        .await
        .unwrap();
    let changes = all_changes(&client, &created.id, "").await;

    assert_eq!(
        paths(&changes),
        ["email", "company_name", "attributes.tier"]
    );
    let email = &changes[0];
    assert_eq!(text(&email.old_value), Some(created.email.clone()));
    assert_eq!(text(&email.new_value), Some("ada.king@example.com".into()));
    assert_eq!(changes[1].old_value, None, "the company was empty");
    assert_eq!(
        text(&field(&changes[2].new_value, "stringValue")),
        Some("gold".into())
    );
    for c in &changes {
        assert_eq!(c.actor, Some(test_user()));
        assert_eq!(c.version, 2);
        assert_eq!(c.change_time, updated.audit.clone().unwrap().update_time);
    }
}

#[tokio::test]
async fn a_consent_decision_is_recorded_under_consents_and_its_channel() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut inner = client.inner.clone();
    for status in [pb::ConsentStatus::Granted, pb::ConsentStatus::Withdrawn] {
        inner
            .record_consent(client.request(pb::RecordConsentRequest {
                customer_id: created.id.clone(),
                consent: Some(consent(Channel::Sms, status)),
                request_id: String::new(),
            }))
            .await
            .unwrap();
    }

    let changes = all_changes(&client, &created.id, "").await;

    assert_eq!(paths(&changes), ["consents.SMS", "consents.SMS"]);
    let status_of = |value: &Option<prost_types::Value>| text(&field(value, "status"));
    assert_eq!(
        status_of(&changes[0].new_value).as_deref(),
        Some("CONSENT_STATUS_WITHDRAWN")
    );
    assert_eq!(
        status_of(&changes[0].old_value).as_deref(),
        Some("CONSENT_STATUS_GRANTED")
    );
    assert_eq!(changes[1].old_value, None);
    assert_eq!(
        text(&field(&changes[1].new_value, "channel")).as_deref(),
        Some("CHANNEL_SMS")
    );
    assert_eq!((changes[0].version, changes[1].version), (3, 2));
}

#[tokio::test]
async fn a_merge_records_the_fields_the_survivor_gained() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let duplicate = client
        .create(pb::Customer {
            company_name: "Analytical Engines".into(),
            given_name: "Ada".into(),
            ..ada()
        })
        .await
        .unwrap();

    client
        .merge(&survivor.id, &[&duplicate.id], "")
        .await
        .unwrap();
    let changes = all_changes(&client, &survivor.id, "").await;

    assert_eq!(
        paths(&changes),
        ["given_name", "company_name", "contact_points"]
    );
    assert_eq!(
        text(&changes[1].new_value),
        Some("Analytical Engines".into())
    );
    assert!(changes.iter().all(|c| c.version == 2));
}

#[tokio::test]
async fn field_changes_filter_on_path_actor_and_change_time() {
    let app = spawn_app().await;
    let person = app.client().await;
    let service = app.service_client("sync").await;
    let created = person.create(ada()).await.unwrap();
    let renamed = person
        .update(
            pb::Customer {
                display_name: "Ada King".into(),
                ..created.clone()
            },
            &["display_name"],
        )
        .await
        .unwrap();
    let between = renamed.audit.clone().unwrap().update_time.unwrap();
    service
        .update(
            pb::Customer {
                email: "ada.king@example.com".into(),
                display_name: "Ada Byron".into(),
                ..renamed.clone()
            },
            &["email", "display_name"],
        )
        .await
        .unwrap();
    let after_first = chrono::DateTime::from_timestamp(between.seconds, between.nanos as u32)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);

    let cases = [
        ("", vec!["display_name", "email", "display_name"]),
        (
            "path = \"display_name\"",
            vec!["display_name", "display_name"],
        ),
        ("actor.kind = SERVICE", vec!["display_name", "email"]),
        ("actor.id = \"test\"", vec!["display_name"]),
        (
            &*format!("change_time > \"{after_first}\""),
            vec!["display_name", "email"],
        ),
    ];
    for (filter, expected) in cases {
        let changes = all_changes(&person, &created.id, filter).await;

        assert_eq!(paths(&changes), expected, "{filter}");
    }
    let by_service = all_changes(&person, &created.id, "actor.kind = SERVICE").await;
    assert_eq!(
        by_service[0].actor,
        Some(principal(PrincipalKind::Service, "sync"))
    );
}

#[tokio::test]
async fn a_field_change_page_token_is_tied_to_its_customer_and_filter() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut current = created.clone();
    for i in 0..3 {
        current = client
            .update(
                pb::Customer {
                    display_name: format!("Ada {i}"),
                    ..current.clone()
                },
                &["display_name"],
            )
            .await
            .unwrap();
    }
    let request = |filter: &str, page_token: &str| pb::ListCustomerFieldChangesRequest {
        customer_id: created.id.clone(),
        page_size: 1,
        page_token: page_token.into(),
        filter: filter.into(),
    };
    let first = client.field_changes(request("", "")).await.unwrap();

    let other_filter = client
        .field_changes(request("path = \"display_name\"", &first.next_page_token))
        .await
        .unwrap_err();
    let bad_filter = client
        .field_changes(request("colour = RED", ""))
        .await
        .unwrap_err();
    let negative = client
        .field_changes(pb::ListCustomerFieldChangesRequest {
            page_size: -1,
            ..request("", "")
        })
        .await
        .unwrap_err();

    assert_eq!(first.field_changes.len(), 1);
    assert!(!first.next_page_token.is_empty());
    assert_invalid(&other_filter, &["page_token"]);
    assert_invalid(&bad_filter, &["filter"]);
    assert_invalid(&negative, &["page_size"]);
}

#[tokio::test]
async fn field_changes_of_an_unknown_or_malformed_customer_are_not_found_or_invalid() {
    let app = spawn_app().await;
    let client = app.client().await;
    let request = |customer_id: &str| pb::ListCustomerFieldChangesRequest {
        customer_id: customer_id.into(),
        ..Default::default()
    };

    let unknown = client
        .field_changes(request(&uuid::Uuid::now_v7().to_string()))
        .await
        .unwrap_err();
    let malformed = client.field_changes(request("nope")).await.unwrap_err();

    assert_error(&unknown, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert_invalid(&malformed, &["customer_id"]);
}

#[tokio::test]
async fn erasing_a_customer_erases_its_field_history() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    client
        .update(
            pb::Customer {
                email: "ada.king@example.com".into(),
                ..created.clone()
            },
            &["email"],
        )
        .await
        .unwrap();

    client.erase(&created.id, "ticket 42").await.unwrap();

    assert_eq!(all_changes(&client, &created.id, "").await, []);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM customer.field_changes")
        .fetch_one(&app.pool().await)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}
