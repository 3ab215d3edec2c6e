//! GDPR: EraseServiceCustomerData and ExportServiceCustomerData (this service's part), and the
//! suite-wide EraseCustomer and ExportCustomerData operations, which validate their request and
//! then answer UNIMPLEMENTED until they run as operations (the duplicate scan does: `scan.rs`).

use crate::common::{
    Client, ada, assert_error, assert_invalid, consent, eventually, principal, spawn_app, test_user,
};
use crm_proto::crm::common::v1::{Channel, PostalAddress, PrincipalKind};
use crm_proto::crm::customer::v1 as pb;
use tonic::Code;
use uuid::Uuid;

async fn export(
    client: &Client,
    id: &str,
) -> Result<pb::ExportServiceCustomerDataResponse, tonic::Status> {
    let request = client.request(pb::ExportServiceCustomerDataRequest { id: id.into() });
    Ok(client
        .inner
        .clone()
        .export_service_customer_data(request)
        .await?
        .into_inner())
}

async fn record_consent(
    client: &Client,
    customer_id: &str,
    channel: Channel,
    status: pb::ConsentStatus,
) {
    let customer = client
        .inner
        .clone()
        .record_consent(client.request(pb::RecordConsentRequest {
            customer_id: customer_id.into(),
            consent: Some(consent(channel, status)),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert!(
        customer
            .consents
            .iter()
            .any(|c| c.channel == channel as i32 && c.status == status as i32),
        "{customer:?}"
    );
}

/// Records an interaction `hours_ago` hours in the past.
async fn record_interaction(
    client: &Client,
    customer_id: &str,
    subject: &str,
    hours_ago: i64,
) -> pb::Interaction {
    let interaction = client
        .inner
        .clone()
        .create_interaction(client.request(pb::CreateInteractionRequest {
            interaction: Some(pb::Interaction {
                customer_id: customer_id.into(),
                r#type: pb::InteractionType::Meeting as i32,
                subject: subject.into(),
                body: format!("notes of {subject}"),
                owner: Some(principal(PrincipalKind::User, "owner-7")),
                occur_time: Some(prost_types::Timestamp {
                    seconds: seconds_since_epoch() - hours_ago * 3600,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .interaction
        .unwrap();
    assert_eq!(interaction.subject, subject);
    interaction
}

fn seconds_since_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A customer with every personal field set.
fn ada_in_full() -> pb::Customer {
    pb::Customer {
        given_name: "Augusta Ada".into(),
        family_name: "King".into(),
        company_name: "Analytical Engines".into(),
        owner: Some(principal(PrincipalKind::Team, "owner-7")),
        source: "web-signup".into(),
        attributes: [(
            "tier".to_string(),
            pb::AttributeValue {
                kind: Some(pb::attribute_value::Kind::StringValue("gold".into())),
            },
        )]
        .into(),
        contact_points: vec![pb::ContactPoint {
            r#type: pb::ContactPointType::Email as i32,
            value: "countess@example.org".into(),
            label: "private".into(),
        }],
        addresses: vec![pb::CustomerAddress {
            label: "home".into(),
            address: Some(PostalAddress {
                region_code: "GB".into(),
                locality: "Ockham".into(),
                address_lines: vec!["Ockham Park".into()],
                ..Default::default()
            }),
        }],
        ..ada()
    }
}

async fn merge(client: &Client, survivor_id: &str, duplicate_id: &str) -> pb::MergeRecord {
    let response = client
        .merge(survivor_id, &[duplicate_id], "")
        .await
        .unwrap();
    response.merge_record.unwrap()
}

#[tokio::test]
async fn erase_removes_personal_data_but_keeps_a_tombstone() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada_in_full()).await.unwrap();
    record_consent(
        &client,
        &created.id,
        Channel::Sms,
        pb::ConsentStatus::Granted,
    )
    .await;
    client.get(&created.id).await.unwrap(); // warm the caches

    let tombstone = client.erase(&created.id, "ticket 42").await.unwrap();

    assert_eq!(tombstone.id, created.id);
    assert_eq!(tombstone.state, pb::CustomerState::Erased as i32);
    let audit = tombstone.audit.clone().unwrap();
    assert_eq!(
        audit.create_time,
        created.audit.as_ref().unwrap().create_time
    );
    assert_eq!(
        (audit.creator, audit.updater),
        (Some(test_user()), Some(test_user()))
    );
    let personal = (
        tombstone.display_name.as_str(),
        tombstone.given_name.as_str(),
        tombstone.family_name.as_str(),
        tombstone.email.as_str(),
        tombstone.phone.as_str(),
        tombstone.company_name.as_str(),
        tombstone.source.as_str(),
    );
    assert_eq!(personal, ("", "", "", "", "", "", ""), "{tombstone:?}");
    assert_eq!(tombstone.owner, None, "{tombstone:?}");
    assert!(tombstone.tags.is_empty(), "{tombstone:?}");
    assert!(tombstone.attributes.is_empty(), "{tombstone:?}");
    assert!(tombstone.contact_points.is_empty(), "{tombstone:?}");
    assert!(tombstone.addresses.is_empty(), "{tombstone:?}");
    assert!(tombstone.consents.is_empty(), "{tombstone:?}");
    assert_eq!(client.get(&created.id).await.unwrap(), tombstone);
    let pool = app.pool().await;
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customer.customers WHERE email = $1 OR search_text LIKE '%lovelace%'",
    )
    .bind(&created.email)
    .fetch_one(&pool)
    .await
    .unwrap();
    let snapshots: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customer.change_events WHERE snapshot IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((leftovers, snapshots), (0, 0));
}

/// CreateCustomer under `request_id`.
async fn create_under(
    client: &Client,
    customer: pb::Customer,
    request_id: &str,
) -> Result<pb::Customer, tonic::Status> {
    let request = client.request(pb::CreateCustomerRequest {
        customer: Some(customer),
        request_id: request_id.into(),
    });
    Ok(client
        .inner
        .clone()
        .create_customer(request)
        .await?
        .into_inner()
        .customer
        .unwrap())
}

#[tokio::test]
async fn erase_forgets_stored_responses_about_the_customer_and_a_replay_does_not_resurrect_it() {
    let app = spawn_app().await;
    let client = app.client().await;
    let ids: Vec<String> = (0..4).map(|_| Uuid::now_v7().to_string()).collect();
    let original = ada_in_full();
    let created = create_under(&client, original.clone(), &ids[0])
        .await
        .unwrap();
    let duplicate = create_under(&client, ada(), &ids[1]).await.unwrap();
    client
        .merge(&created.id, &[&duplicate.id], &ids[2])
        .await
        .unwrap();
    let bystander_request = ada();
    let bystander = create_under(&client, bystander_request.clone(), &ids[3])
        .await
        .unwrap();

    client.erase(&created.id, "ticket 42").await.unwrap();

    let replay = create_under(&client, original, &ids[0]).await.unwrap_err();
    assert_error(&replay, Code::FailedPrecondition, "REQUEST_SUBJECT_ERASED");
    let merge_replay = client
        .merge(&created.id, &[&duplicate.id], &ids[2])
        .await
        .unwrap_err();
    assert_error(
        &merge_replay,
        Code::FailedPrecondition,
        "REQUEST_SUBJECT_ERASED",
    );
    assert_eq!(
        client.get(&created.id).await.unwrap().state,
        pb::CustomerState::Erased as i32,
        "the replay brought nothing back"
    );
    assert_eq!(
        create_under(&client, bystander_request, &ids[3])
            .await
            .unwrap(),
        bystander,
        "a bystander's request id still replays"
    );
    let pool = app.pool().await;
    let kept: Vec<String> = sqlx::query_scalar(
        "SELECT request_id FROM customer.request_ids WHERE response IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(kept, [ids[3].clone()]);
    let leaks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customer.request_ids, unnest($1::text[]) AS email \
         WHERE position(convert_to(email, 'UTF8') IN coalesce(response, ''::bytea)) > 0",
    )
    .bind([&created.email, &duplicate.email])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leaks, 0, "a stored response still holds an erased email");
    let customers: i64 = sqlx::query_scalar("SELECT count(*) FROM customer.customers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(customers, 3, "no customer was created by the replay");
}

/// Dead row versions left in the tables an erasure writes to.
async fn dead_row_versions(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT sum((pgstattuple('customer.' || t)).dead_tuple_count)::bigint \
         FROM unnest(ARRAY['customers', 'consents', 'field_changes', 'interactions', \
                           'request_ids', 'change_events']) AS t",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_dead_row_versions_an_erase_leaves_are_vacuumed_soon_after() {
    let app = spawn_app().await;
    let client = app.client().await;
    let pool = app.pool().await;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        .execute(&pool)
        .await
        .unwrap();
    let created = create_under(&client, ada_in_full(), &Uuid::now_v7().to_string())
        .await
        .unwrap();
    record_consent(
        &client,
        &created.id,
        Channel::Sms,
        pb::ConsentStatus::Granted,
    )
    .await;

    client.erase(&created.id, "ticket 42").await.unwrap();

    assert!(
        dead_row_versions(&pool).await > 0,
        "the erase left dead row versions (else this test shows nothing)"
    );
    eventually("the erase's dead row versions are vacuumed", || async {
        dead_row_versions(&pool).await == 0
    })
    .await;
}

#[tokio::test]
async fn erase_deletes_the_consent_history_and_interaction_contents_from_the_database() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let bystander = client.create(ada()).await.unwrap();
    for id in [&created.id, &bystander.id] {
        record_consent(&client, id, Channel::Email, pb::ConsentStatus::Granted).await;
        record_consent(&client, id, Channel::Email, pb::ConsentStatus::Withdrawn).await;
    }
    record_interaction(&client, &created.id, "kick-off", 2).await;
    record_interaction(&client, &bystander.id, "bystander call", 2).await;

    client.erase(&created.id, "ticket 42").await.unwrap();

    let pool = app.pool().await;
    let consents: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT customer_id, count(*) FROM customer.consents GROUP BY customer_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(consents, [(bystander.id.parse().unwrap(), 2)]);
    let contents = |customer_id: &str| {
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT subject, body, owner_id FROM customer.interactions WHERE customer_id = $1",
        )
        .bind(Uuid::parse_str(customer_id).unwrap())
        .fetch_all(&pool)
    };
    for (subject, body, owner_id) in contents(&created.id).await.unwrap() {
        assert!(
            !subject.contains("kick-off") && !body.contains("kick-off") && owner_id.is_empty(),
            "an erased interaction keeps its contents: {subject:?} {body:?} {owner_id:?}"
        );
    }
    assert_eq!(
        contents(&bystander.id).await.unwrap(),
        [(
            "bystander call".to_string(),
            "notes of bystander call".to_string(),
            "owner-7".to_string()
        )]
    );
}

#[tokio::test]
async fn an_erased_customer_is_absent_from_list_and_search() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut erased = ada();
    erased.company_name = "Babbage Works".into();
    let erased = client.create(erased).await.unwrap();
    let mut kept = ada();
    kept.company_name = "Babbage Works".into();
    let kept = client.create(kept).await.unwrap();
    // Seen by List and Search before the erase, so a stale cache or index would show.
    assert_eq!(
        client
            .list(Default::default())
            .await
            .unwrap()
            .customers
            .len(),
        2
    );

    client.erase(&erased.id, "ticket 42").await.unwrap();

    let listed: Vec<String> = client
        .list(Default::default())
        .await
        .unwrap()
        .customers
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&kept.id));
    let found: Vec<String> = client
        .inner
        .clone()
        .search_customers(client.request(pb::SearchCustomersRequest {
            query: "babbage".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| r.customer.unwrap().id)
        .collect();
    assert_eq!(found, [kept.id]);
}

#[tokio::test]
async fn erasing_twice_returns_the_same_tombstone() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let first = client.erase(&created.id, "ticket 42").await.unwrap();

    let second = client.erase(&created.id, "ticket 43").await.unwrap();

    assert_eq!(second, first);
    assert_eq!(second.state, pb::CustomerState::Erased as i32);
}

#[tokio::test]
async fn erasing_a_survivor_erases_the_records_merged_into_it() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let mut dup = ada();
    dup.display_name = "Augusta Ada King".into();
    let dup = client.create(dup).await.unwrap();
    let record = merge(&client, &survivor.id, &dup.id).await;
    assert_eq!(record.merged_ids, std::slice::from_ref(&dup.id));

    client.erase(&survivor.id, "ticket 42").await.unwrap();

    let stored: (String, Option<String>, Option<String>) =
        sqlx::query_as("SELECT state, display_name, email FROM customer.customers WHERE id = $1")
            .bind(Uuid::parse_str(&dup.id).unwrap())
            .fetch_one(&app.pool().await)
            .await
            .unwrap();
    assert_eq!(stored, ("ERASED".to_string(), None, None));
    let via_dup = client.get(&dup.id).await.unwrap();
    assert_eq!(via_dup.state, pb::CustomerState::Erased as i32);
    assert_eq!(
        (via_dup.display_name.as_str(), via_dup.email.as_str()),
        ("", "")
    );
}

#[tokio::test]
async fn an_empty_or_overlong_erase_reason_is_invalid_and_erases_nothing() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();

    for (case, reason) in [
        ("empty", String::new()),
        ("blank", "   ".to_string()),
        ("201 characters", "r".repeat(201)),
    ] {
        let status = client.erase(&created.id, &reason).await.expect_err(case);

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_invalid(&status, &["reason"]);
    }
    assert_eq!(client.get(&created.id).await.unwrap(), created);
}

#[tokio::test]
async fn erasing_a_malformed_or_unknown_id_is_invalid_or_not_found() {
    let app = spawn_app().await;
    let client = app.client().await;

    let malformed = client.erase("nope", "ticket 42").await.unwrap_err();
    let missing = client
        .erase(&Uuid::now_v7().to_string(), "ticket 42")
        .await
        .unwrap_err();

    assert_invalid(&malformed, &["id"]);
    assert_error(&missing, Code::NotFound, "CUSTOMER_NOT_FOUND");
}

#[tokio::test]
async fn the_gdpr_export_holds_everything_about_the_customer() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let dup = client.create(ada()).await.unwrap();
    record_consent(
        &client,
        &created.id,
        Channel::Email,
        pb::ConsentStatus::Granted,
    )
    .await;
    record_consent(
        &client,
        &created.id,
        Channel::Email,
        pb::ConsentStatus::Withdrawn,
    )
    .await;
    let older = record_interaction(&client, &created.id, "kick-off", 5).await;
    let newer = record_interaction(&client, &created.id, "follow-up", 1).await;
    let record = merge(&client, &created.id, &dup.id).await;

    let before = seconds_since_epoch();
    let export = export(&client, &created.id).await.unwrap();
    let after = seconds_since_epoch();

    assert_eq!(
        export.customer,
        Some(client.get(&created.id).await.unwrap())
    );
    let statuses: Vec<i32> = export.consent_history.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        [
            pb::ConsentStatus::Withdrawn as i32,
            pb::ConsentStatus::Granted as i32
        ],
        "newest first"
    );
    assert_eq!(export.interactions, [newer, older], "newest first");
    assert_eq!(export.merge_records, [record]);
    let history = client
        .field_changes(pb::ListCustomerFieldChangesRequest {
            customer_id: created.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .field_changes;
    let paths: Vec<&str> = export
        .field_changes
        .iter()
        .map(|c| c.path.as_str())
        .collect();
    assert_eq!(
        paths,
        ["contact_points", "consents.EMAIL", "consents.EMAIL"]
    );
    assert_eq!(
        export.field_changes, history,
        "the whole field history, newest first"
    );
    let export_time = export.export_time.unwrap().seconds;
    assert!(
        (before - 1..=after + 1).contains(&export_time),
        "export_time {export_time} is not within [{before}, {after}]"
    );
}

#[tokio::test]
async fn exporting_a_malformed_or_unknown_id_is_invalid_or_not_found() {
    let app = spawn_app().await;
    let client = app.client().await;

    let malformed = export(&client, "nope").await.unwrap_err();
    let missing = export(&client, &Uuid::now_v7().to_string())
        .await
        .unwrap_err();

    assert_invalid(&malformed, &["id"]);
    assert_error(&missing, Code::NotFound, "CUSTOMER_NOT_FOUND");
}

#[tokio::test]
async fn gdpr_calls_without_the_gdpr_scope_are_permission_denied() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let without_gdpr = app
        .client_with_scopes(&["customer.read", "customer.write"])
        .await;

    let exported = export(&without_gdpr, &created.id).await.unwrap_err();
    let erased = without_gdpr
        .erase(&created.id, "ticket 42")
        .await
        .unwrap_err();

    for status in [exported, erased] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("customer.gdpr"), "{status:?}");
    }
    assert_eq!(client.get(&created.id).await.unwrap(), created);
}

/// Calls one of the three operations with `id` (and a reason where it takes one).
async fn start_operation(client: &Client, method: &str, id: &str, reason: &str) -> tonic::Status {
    let mut inner = client.inner.clone();
    let outcome = match method {
        "EraseCustomer" => inner
            .erase_customer(client.request(pb::EraseCustomerRequest {
                id: id.into(),
                reason: reason.into(),
                request_id: String::new(),
            }))
            .await
            .map(drop),
        "ExportCustomerData" => inner
            .export_customer_data(client.request(pb::ExportCustomerDataRequest {
                id: id.into(),
                request_id: String::new(),
            }))
            .await
            .map(drop),
        other => panic!("no operation {other}"),
    };
    outcome.expect_err("no operation runs yet")
}

#[tokio::test]
async fn erase_and_export_operations_are_unimplemented_until_the_runner_is_deployed() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();

    for method in ["EraseCustomer", "ExportCustomerData"] {
        let status = start_operation(&client, method, &created.id, "ticket 42").await;

        assert_eq!(status.code(), Code::Unimplemented, "{method}: {status:?}");
        assert!(
            status.message().contains(
                "runs as a long-running operation; the operations runner is not deployed yet"
            ),
            "{method}: {status:?}"
        );
    }
    assert_eq!(
        client.get(&created.id).await.unwrap(),
        created,
        "nothing erased"
    );
}

#[tokio::test]
async fn erase_and_export_operations_validate_their_request_first() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let unknown = Uuid::now_v7().to_string();

    for method in ["EraseCustomer", "ExportCustomerData"] {
        let malformed = start_operation(&client, method, "nope", "ticket 42").await;
        let missing = start_operation(&client, method, &unknown, "ticket 42").await;

        assert_invalid(&malformed, &["id"]);
        assert_error(&missing, Code::NotFound, "CUSTOMER_NOT_FOUND");
    }
    let no_reason = start_operation(&client, "EraseCustomer", &created.id, " ").await;
    let nothing = start_operation(&client, "EraseCustomer", "", "").await;
    assert_invalid(&no_reason, &["reason"]);
    assert_invalid(&nothing, &["id", "reason"]);
}
