//! Create, Get, BatchGet, Update, Delete and Undelete: the single-customer RPCs.

use crate::common::{
    Client, TestApp, ada, assert_error, assert_invalid, consent, principal, spawn_app, test_user,
};
use crm_proto::crm::common::v1::{Channel, PrincipalKind};
use crm_proto::crm::customer::v1 as pb;
use tonic::{Code, Status};
use uuid::Uuid;

/// How many customer rows the test's database holds, in any state.
async fn stored_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM customer.customers")
        .fetch_one(&app.pool().await)
        .await
        .unwrap()
}

/// The stored state and version of one customer row, read past the cache and merge resolution.
async fn stored_state(app: &TestApp, id: &str) -> (String, i64) {
    sqlx::query_as("SELECT state, version FROM customer.customers WHERE id = $1")
        .bind(Uuid::parse_str(id).unwrap())
        .fetch_one(&app.pool().await)
        .await
        .unwrap()
}

async fn create_with_request_id(
    client: &Client,
    customer: pb::Customer,
    request_id: &str,
) -> Result<pb::CreateCustomerResponse, Status> {
    let request = client.request(pb::CreateCustomerRequest {
        customer: Some(customer),
        request_id: request_id.into(),
    });
    Ok(client
        .inner
        .clone()
        .create_customer(request)
        .await?
        .into_inner())
}

async fn batch_get(client: &Client, ids: &[String]) -> Result<Vec<pb::Customer>, Status> {
    let request = client.request(pb::BatchGetCustomersRequest { ids: ids.to_vec() });
    Ok(client
        .inner
        .clone()
        .batch_get_customers(request)
        .await?
        .into_inner()
        .customers)
}

async fn update_with_mask(
    client: &Client,
    customer: pb::Customer,
    update_mask: Option<prost_types::FieldMask>,
) -> Result<pb::Customer, Status> {
    let request = client.request(pb::UpdateCustomerRequest {
        customer: Some(customer),
        update_mask,
    });
    Ok(client
        .inner
        .clone()
        .update_customer(request)
        .await?
        .into_inner()
        .customer
        .unwrap())
}

/// Merges `duplicate` into `survivor` and returns the survivor.
async fn merge(client: &Client, survivor: &str, duplicate: &str) -> pb::Customer {
    let response = client.merge(survivor, &[duplicate], "").await.unwrap();
    let merged = response.customer.unwrap();
    assert_eq!(merged.id, survivor);
    merged
}

/// Erases a customer and returns its tombstone.
async fn erase(client: &Client, id: &str) -> pb::Customer {
    let tombstone = client.erase(id, "ticket 42").await.unwrap();
    assert_eq!(tombstone.state, pb::CustomerState::Erased as i32);
    tombstone
}

/// One customer in each state that is not ACTIVE: (state, id), made through the RPCs.
async fn inactive_customers(client: &Client) -> Vec<(&'static str, String)> {
    let deleted = client.create(ada()).await.unwrap();
    let deleted = client.delete(&deleted.id, "").await.unwrap();
    assert_eq!(deleted.state, pb::CustomerState::Deleted as i32);
    let survivor = client.create(ada()).await.unwrap();
    let merged = client.create(ada()).await.unwrap();
    merge(client, &survivor.id, &merged.id).await;
    let erased = client.create(ada()).await.unwrap();
    erase(client, &erased.id).await;
    vec![
        ("DELETED", deleted.id),
        ("MERGED", merged.id),
        ("ERASED", erased.id),
    ]
}

#[tokio::test]
async fn a_created_customer_can_be_read_back() {
    let app = spawn_app().await;
    let client = app.client().await;

    let created = client.create(ada()).await.unwrap();
    let fetched = client.get(&created.id).await.unwrap();

    assert_eq!(fetched, created);
    assert_eq!(fetched.state, pb::CustomerState::Active as i32);
    assert_eq!(fetched.lifecycle_stage, pb::LifecycleStage::Lead as i32);
    assert_eq!(fetched.audit.unwrap().creator, Some(test_user()));
}

#[tokio::test]
async fn bad_fields_are_named_and_nothing_is_written() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut bad = ada();
    bad.email = "not-an-email".into();
    bad.phone = "0151".into();
    bad.display_name = String::new();

    let status = client.create(bad).await.unwrap_err();

    assert_invalid(
        &status,
        &["customer.display_name", "customer.email", "customer.phone"],
    );
    assert_eq!(stored_count(&app).await, 0);
}

#[tokio::test]
async fn a_request_id_over_100_characters_is_invalid_and_nothing_is_written() {
    let app = spawn_app().await;
    let client = app.client().await;

    let too_long = create_with_request_id(&client, ada(), &"r".repeat(101))
        .await
        .unwrap_err();
    let rows_after_rejection = stored_count(&app).await;
    let longest = create_with_request_id(&client, ada(), &"r".repeat(100)).await;

    assert_invalid(&too_long, &["request_id"]);
    assert_eq!(rows_after_rejection, 0);
    assert!(longest.is_ok(), "100 characters are allowed: {longest:?}");
}

#[tokio::test]
async fn output_only_fields_sent_on_create_are_ignored() {
    let app = spawn_app().await;
    let client = app.client().await;
    let long_ago = prost_types::Timestamp {
        seconds: 946_684_800, // 2000-01-01
        nanos: 0,
    };
    let sent_id = Uuid::now_v7().to_string();
    let mut customer = ada();
    customer.id = sent_id.clone();
    customer.etag = "\"99\"".into();
    customer.state = pb::CustomerState::Deleted as i32;
    customer.consents = vec![consent(Channel::Email, pb::ConsentStatus::Granted)];
    customer.delete_time = Some(long_ago);
    customer.merged_into_id = Uuid::now_v7().to_string();
    customer.audit = Some(crm_proto::crm::common::v1::AuditInfo {
        create_time: Some(long_ago),
        update_time: Some(long_ago),
        creator: Some(principal(PrincipalKind::User, "mallory")),
        updater: Some(principal(PrincipalKind::User, "mallory")),
    });

    let created = client.create(customer).await.unwrap();

    assert_ne!(created.id, sent_id);
    assert_ne!(created.etag, "\"99\"");
    assert_eq!(created.state, pb::CustomerState::Active as i32);
    assert!(created.consents.is_empty(), "{:?}", created.consents);
    assert_eq!(created.delete_time, None);
    assert_eq!(created.merged_into_id, "");
    let audit = created.audit.clone().unwrap();
    assert_eq!(
        (audit.creator, audit.updater),
        (Some(test_user()), Some(test_user()))
    );
    assert!(audit.create_time.unwrap().seconds > long_ago.seconds);
    assert_eq!(client.get(&created.id).await.unwrap(), created);
    assert_error(
        &client.get(&sent_id).await.unwrap_err(),
        Code::NotFound,
        "CUSTOMER_NOT_FOUND",
    );
    let consents: i64 = sqlx::query_scalar("SELECT count(*) FROM customer.consents")
        .fetch_one(&app.pool().await)
        .await
        .unwrap();
    assert_eq!(consents, 0);
}

#[tokio::test]
async fn an_unknown_or_malformed_id_is_not_found_or_invalid() {
    let app = spawn_app().await;
    let client = app.client().await;

    let missing = client.get(&Uuid::now_v7().to_string()).await.unwrap_err();
    let malformed = client.get("nope").await.unwrap_err();

    assert_error(&missing, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert_invalid(&malformed, &["id"]);
}

#[tokio::test]
async fn a_soft_deleted_customer_is_returned_with_state_deleted_and_its_delete_time() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    client.get(&created.id).await.unwrap(); // warm the cache, which the delete must update
    let deleted = client.delete(&created.id, "").await.unwrap();

    let fetched = client.get(&created.id).await.unwrap();

    assert_eq!(fetched.id, created.id);
    assert_eq!(fetched.state, pb::CustomerState::Deleted as i32);
    assert!(fetched.delete_time.is_some(), "{fetched:?}");
    assert_eq!(fetched.email, created.email);
    assert_eq!(fetched, deleted);
}

#[tokio::test]
async fn a_second_active_customer_with_the_same_email_already_exists() {
    let app = spawn_app().await;
    let client = app.client().await;
    let first = client.create(ada()).await.unwrap();
    let mut second = ada();
    second.email = first.email.to_uppercase();

    let status = client.create(second).await.unwrap_err();

    assert_error(&status, Code::AlreadyExists, "EMAIL_ALREADY_EXISTS");
    assert!(
        !status.message().contains("customers_active_email_key"),
        "{}",
        status.message()
    );
    assert_eq!(stored_count(&app).await, 1);
}

#[tokio::test]
async fn a_deleted_customers_email_can_be_used_by_a_new_customer() {
    let app = spawn_app().await;
    let client = app.client().await;
    let old = client.create(ada()).await.unwrap();
    client.delete(&old.id, "").await.unwrap();
    let mut new = ada();
    new.email = old.email.clone();

    let created = client.create(new).await.unwrap();

    assert_ne!(created.id, old.id);
    assert_eq!(created.email, old.email);
    assert_eq!(created.state, pb::CustomerState::Active as i32);
    let old_now = client.get(&old.id).await.unwrap();
    assert_eq!(
        (old_now.state, old_now.email),
        (pb::CustomerState::Deleted as i32, old.email)
    );
    assert_eq!(stored_count(&app).await, 2);
}

#[tokio::test]
async fn a_stale_etag_is_aborted_and_overwrites_nothing() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut first = created.clone();
    first.display_name = "Countess of Lovelace".into();
    let current = client.update(first, &["display_name"]).await.unwrap();

    let mut stale = created.clone();
    stale.display_name = "Lost Update".into();
    let status = client.update(stale, &["display_name"]).await.unwrap_err();

    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(client.get(&created.id).await.unwrap(), current);
}

#[tokio::test]
async fn update_changes_only_the_masked_fields() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut change = created.clone();
    change.company_name = "Analytical Engines Ltd".into();
    change.display_name = "ignored because unmasked".into();

    let updated = client.update(change, &["company_name"]).await.unwrap();

    assert_eq!(updated.company_name, "Analytical Engines Ltd");
    assert_eq!(updated.display_name, "Ada Lovelace");
    assert_ne!(updated.etag, created.etag);
}

#[tokio::test]
async fn an_empty_or_missing_update_mask_is_invalid_and_nothing_is_written() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut change = created.clone();
    change.display_name = "Nobody asked".into();

    for (case, mask) in [
        ("missing mask", None),
        ("empty mask", Some(prost_types::FieldMask { paths: vec![] })),
    ] {
        let status = update_with_mask(&client, change.clone(), mask)
            .await
            .unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(
            crate::common::violated_fields(&status),
            ["update_mask"],
            "{case}"
        );
    }
    assert_eq!(client.get(&created.id).await.unwrap(), created);
}

#[tokio::test]
async fn an_unknown_update_mask_path_is_named_by_its_index_and_nothing_is_written() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut change = created.clone();
    change.display_name = "Nobody asked".into();

    for unknown in [
        "shoe_size",
        "*",
        "id",
        "etag",
        "state",
        "audit",
        "audit.updater",
        "consents",
        "merged_into_id",
        "delete_time",
        "owner_id",
        "attributes.bad-key",
    ] {
        let status = client
            .update(change.clone(), &["display_name", unknown])
            .await
            .unwrap_err();

        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{unknown}: {status:?}"
        );
        assert_eq!(
            crate::common::violated_fields(&status),
            ["update_mask.paths[1]"],
            "{unknown}"
        );
    }
    assert_eq!(client.get(&created.id).await.unwrap(), created);
}

#[tokio::test]
async fn a_bad_update_mask_is_invalid_argument_even_for_an_unknown_customer() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut unknown = ada();
    unknown.id = Uuid::now_v7().to_string();

    let wildcard = client.update(unknown.clone(), &["*"]).await.unwrap_err();
    let output_only = client
        .update(unknown.clone(), &["display_name", "state"])
        .await
        .unwrap_err();
    let empty = client.update(unknown, &[]).await.unwrap_err();

    assert_invalid(&wildcard, &["update_mask.paths[0]"]);
    assert!(wildcard.message().contains("\"*\""), "{wildcard:?}");
    assert_invalid(&output_only, &["update_mask.paths[1]"]);
    assert!(
        output_only.message().contains("\"state\""),
        "{output_only:?}"
    );
    assert_invalid(&empty, &["update_mask"]);
}

#[tokio::test]
async fn an_invalid_masked_value_is_named_and_nothing_is_written() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut change = created.clone();
    change.email = "not-an-email".into();
    change.display_name = "Valid But Not Written".into();

    let status = client
        .update(change, &["display_name", "email"])
        .await
        .unwrap_err();

    assert_invalid(&status, &["customer.email"]);
    assert_eq!(client.get(&created.id).await.unwrap(), created);
    assert_eq!(stored_state(&app, &created.id).await.1, 1);
}

#[tokio::test]
async fn updating_an_unknown_customer_is_not_found() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut unknown = ada();
    unknown.id = Uuid::now_v7().to_string();

    let status = client
        .update(unknown.clone(), &["display_name"])
        .await
        .unwrap_err();

    assert_error(&status, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert!(
        status.message().contains(&unknown.id),
        "{}",
        status.message()
    );
    assert_eq!(stored_count(&app).await, 0);
}

#[tokio::test]
async fn updating_a_deleted_merged_or_erased_customer_is_not_active() {
    let app = spawn_app().await;
    let client = app.client().await;

    for (state, id) in inactive_customers(&client).await {
        let before = stored_state(&app, &id).await;
        let change = pb::Customer {
            id: id.clone(),
            display_name: "Back From The Dead".into(),
            ..Default::default()
        };

        let status = client.update(change, &["display_name"]).await.unwrap_err();

        assert_eq!(
            (status.code(), crate::common::error_reason(&status).as_str()),
            (Code::FailedPrecondition, "CUSTOMER_NOT_ACTIVE"),
            "{state}: {status:?}"
        );
        assert_eq!(stored_state(&app, &id).await, before, "{state}");
        assert_eq!(before.0, state);
    }
}

#[tokio::test]
async fn an_email_of_another_active_customer_cannot_be_taken_by_update() {
    let app = spawn_app().await;
    let client = app.client().await;
    let other = client.create(ada()).await.unwrap();
    let created = client.create(ada()).await.unwrap();
    let mut change = created.clone();
    change.email = other.email.clone();

    let status = client.update(change, &["email"]).await.unwrap_err();

    assert_error(&status, Code::AlreadyExists, "EMAIL_ALREADY_EXISTS");
    assert_eq!(client.get(&created.id).await.unwrap(), created);
    assert_eq!(client.get(&other.id).await.unwrap(), other);
}

#[tokio::test]
async fn an_attribute_path_sets_one_key_and_removes_it_when_absent_from_the_request() {
    use pb::attribute_value::Kind;
    let value = |kind| pb::AttributeValue { kind: Some(kind) };
    let app = spawn_app().await;
    let client = app.client().await;
    let mut customer = ada();
    customer
        .attributes
        .insert("plan".into(), value(Kind::StringValue("pro".into())));
    customer
        .attributes
        .insert("seats".into(), value(Kind::IntValue(40)));
    let created = client.create(customer).await.unwrap();

    let mut set_plan = created.clone();
    set_plan.attributes.clear();
    set_plan
        .attributes
        .insert("plan".into(), value(Kind::StringValue("enterprise".into())));
    set_plan
        .attributes
        .insert("seats".into(), value(Kind::IntValue(99)));
    let after_set = client.update(set_plan, &["attributes.plan"]).await.unwrap();
    let mut remove_seats = after_set.clone();
    remove_seats.attributes.clear();
    let after_remove = client
        .update(remove_seats, &["attributes.seats"])
        .await
        .unwrap();

    assert_eq!(
        after_set.attributes,
        [
            (
                "plan".to_string(),
                value(Kind::StringValue("enterprise".into()))
            ),
            ("seats".to_string(), value(Kind::IntValue(40))),
        ]
        .into(),
        "only the masked key changes"
    );
    assert_eq!(
        after_remove.attributes,
        [(
            "plan".to_string(),
            value(Kind::StringValue("enterprise".into()))
        )]
        .into(),
        "a masked key absent from the request is removed"
    );
    assert_eq!(client.get(&created.id).await.unwrap(), after_remove);
}

#[tokio::test]
async fn the_etag_changes_on_every_write_and_a_current_etag_is_accepted() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut etags = vec![created.etag.clone()];

    let mut change = created.clone();
    change.company_name = "Analytical Engines Ltd".into();
    let updated = client.update(change, &["company_name"]).await.unwrap();
    etags.push(updated.etag.clone());
    let mut change = updated.clone();
    change.given_name = "Ada".into();
    let updated = client.update(change, &["given_name"]).await.unwrap();
    etags.push(updated.etag.clone());
    let deleted = client.delete(&created.id, &updated.etag).await.unwrap();
    etags.push(deleted.etag.clone());
    let restored = client.undelete(&created.id, &deleted.etag).await.unwrap();
    etags.push(restored.etag.clone());

    let distinct: std::collections::HashSet<_> = etags.iter().collect();
    assert_eq!(distinct.len(), etags.len(), "{etags:?}");
    assert_eq!(
        (restored.company_name.as_str(), restored.given_name.as_str()),
        ("Analytical Engines Ltd", "Ada")
    );
    assert_eq!(client.get(&created.id).await.unwrap(), restored);
}

#[tokio::test]
async fn the_same_request_id_sent_concurrently_creates_one_customer() {
    let app = spawn_app().await;
    let client = app.client().await;
    let request = pb::CreateCustomerRequest {
        customer: Some(ada()),
        request_id: Uuid::now_v7().to_string(),
    };

    let calls = (0..8).map(|_| {
        let client = client.clone();
        let request = request.clone();
        async move {
            client
                .inner
                .clone()
                .create_customer(client.request(request))
                .await
                .map(|r| r.into_inner())
        }
    });
    let responses = futures::future::join_all(calls).await;

    let first = responses[0].as_ref().unwrap();
    for response in &responses {
        assert_eq!(
            response.as_ref().unwrap(),
            first,
            "every retry gets the same response"
        );
    }
    assert_eq!(stored_count(&app).await, 1);
}

#[tokio::test]
async fn a_replayed_request_id_returns_the_identical_customer() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = ada();
    let request_id = Uuid::now_v7().to_string();

    let first = create_with_request_id(&client, customer.clone(), &request_id)
        .await
        .unwrap();
    let replay = create_with_request_id(&client, customer, &request_id)
        .await
        .unwrap();

    let (first, replay) = (first.customer.unwrap(), replay.customer.unwrap());
    assert_eq!((&replay.id, &replay.etag), (&first.id, &first.etag));
    assert_eq!(replay, first);
    assert_eq!(stored_count(&app).await, 1);
}

#[tokio::test]
async fn a_request_id_reused_for_another_request_is_rejected() {
    let app = spawn_app().await;
    let client = app.client().await;
    let request_id = Uuid::now_v7().to_string();
    let first = create_with_request_id(&client, ada(), &request_id)
        .await
        .unwrap();

    let status = create_with_request_id(&client, ada(), &request_id)
        .await
        .unwrap_err();

    assert_error(&status, Code::AlreadyExists, "REQUEST_ID_REUSED");
    assert_eq!(stored_count(&app).await, 1);
    let only = first.customer.unwrap();
    assert_eq!(client.get(&only.id).await.unwrap(), only);
}

#[tokio::test]
async fn delete_returns_the_customer_deleted_and_hides_it_from_list() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let kept = client.create(ada()).await.unwrap();

    let deleted = client.delete(&created.id, &created.etag).await.unwrap();
    let listed = client.list(Default::default()).await.unwrap().customers;

    assert_eq!(deleted.id, created.id);
    assert_eq!(deleted.state, pb::CustomerState::Deleted as i32);
    assert!(deleted.delete_time.is_some(), "{deleted:?}");
    assert_eq!(deleted.email, created.email);
    assert_eq!(listed.iter().map(|c| &c.id).collect::<Vec<_>>(), [&kept.id]);
}

#[tokio::test]
async fn a_deleted_customer_is_hidden_from_search() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut grace = ada();
    grace.display_name = "Grace Hopper".into();
    let grace = client.create(grace).await.unwrap();
    let search = || {
        let client = client.clone();
        async move {
            client
                .inner
                .clone()
                .search_customers(client.request(pb::SearchCustomersRequest {
                    query: "hopper".into(),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
                .results
                .into_iter()
                .map(|r| r.customer.unwrap().id)
                .collect::<Vec<_>>()
        }
    };
    let before = search().await;

    client.delete(&grace.id, "").await.unwrap();
    let after = search().await;

    assert_eq!(before, [grace.id], "found while active");
    assert!(after.is_empty(), "hidden once deleted: {after:?}");
}

#[tokio::test]
async fn deleting_or_undeleting_an_unknown_customer_is_not_found() {
    let app = spawn_app().await;
    let client = app.client().await;
    let unknown = Uuid::now_v7().to_string();

    let deleting = client.delete(&unknown, "").await.unwrap_err();
    let undeleting = client.undelete(&unknown, "").await.unwrap_err();

    for (call, status) in [("delete", deleting), ("undelete", undeleting)] {
        assert_eq!(
            (status.code(), crate::common::error_reason(&status).as_str()),
            (Code::NotFound, "CUSTOMER_NOT_FOUND"),
            "{call}: {status:?}"
        );
        assert!(status.message().contains(&unknown), "{call}: {status:?}");
    }
    assert_eq!(stored_count(&app).await, 0);
}

#[tokio::test]
async fn delete_with_a_stale_etag_is_aborted_and_changes_nothing() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let mut change = created.clone();
    change.company_name = "Analytical Engines Ltd".into();
    let current = client.update(change, &["company_name"]).await.unwrap();

    let status = client.delete(&created.id, &created.etag).await.unwrap_err();

    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(client.get(&created.id).await.unwrap(), current);
    assert_eq!(
        stored_state(&app, &created.id).await,
        ("ACTIVE".to_string(), 2)
    );
}

#[tokio::test]
async fn deleting_a_deleted_merged_or_erased_customer_is_not_active() {
    let app = spawn_app().await;
    let client = app.client().await;

    for (state, id) in inactive_customers(&client).await {
        let before = stored_state(&app, &id).await;

        let status = client.delete(&id, "").await.unwrap_err();

        assert_eq!(
            (status.code(), crate::common::error_reason(&status).as_str()),
            (Code::FailedPrecondition, "CUSTOMER_NOT_ACTIVE"),
            "{state}: {status:?}"
        );
        assert_eq!(stored_state(&app, &id).await, before, "{state}");
        assert_eq!(before.0, state);
    }
}

#[tokio::test]
async fn undelete_returns_the_customer_active_again_and_lists_it() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let deleted = client.delete(&created.id, "").await.unwrap();

    let restored = client.undelete(&created.id, &deleted.etag).await.unwrap();
    let listed = client.list(Default::default()).await.unwrap().customers;

    assert_eq!(restored.id, created.id);
    assert_eq!(restored.state, pb::CustomerState::Active as i32);
    assert_eq!(restored.delete_time, None);
    assert_eq!(restored.email, created.email);
    assert_eq!(client.get(&created.id).await.unwrap(), restored);
    assert_eq!(listed, [restored]);
}

#[tokio::test]
async fn undelete_with_a_stale_etag_is_aborted_and_the_customer_stays_deleted() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();
    let deleted = client.delete(&created.id, "").await.unwrap();

    let status = client
        .undelete(&created.id, &created.etag)
        .await
        .unwrap_err();

    assert_error(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(client.get(&created.id).await.unwrap(), deleted);
}

#[tokio::test]
async fn undeleting_a_customer_that_is_not_deleted_fails_as_not_deleted() {
    let app = spawn_app().await;
    let client = app.client().await;
    let active = client.create(ada()).await.unwrap();
    let mut cases: Vec<(&str, String)> = vec![("ACTIVE", active.id)];
    cases.extend(
        inactive_customers(&client)
            .await
            .into_iter()
            .filter(|(state, _)| *state != "DELETED"),
    );

    for (state, id) in cases {
        let before = stored_state(&app, &id).await;

        let status = client.undelete(&id, "").await.unwrap_err();

        assert_eq!(
            (status.code(), crate::common::error_reason(&status).as_str()),
            (Code::FailedPrecondition, "CUSTOMER_NOT_DELETED"),
            "{state}: {status:?}"
        );
        assert_eq!(stored_state(&app, &id).await, before, "{state}");
        assert_eq!(before.0, state);
    }
}

#[tokio::test]
async fn undelete_fails_when_an_active_customer_took_the_email_meanwhile() {
    let app = spawn_app().await;
    let client = app.client().await;
    let old = client.create(ada()).await.unwrap();
    let deleted = client.delete(&old.id, "").await.unwrap();
    let mut taker = ada();
    taker.email = old.email.clone();
    let taker = client.create(taker).await.unwrap();

    let status = client.undelete(&old.id, "").await.unwrap_err();

    assert_error(&status, Code::AlreadyExists, "EMAIL_ALREADY_EXISTS");
    assert_eq!(client.get(&old.id).await.unwrap(), deleted);
    assert_eq!(stored_state(&app, &old.id).await.0, "DELETED");
    assert_eq!(client.get(&taker.id).await.unwrap(), taker);
}

#[tokio::test]
async fn batch_get_returns_customers_in_request_order() {
    let app = spawn_app().await;
    let client = app.client().await;
    let a = client.create(ada()).await.unwrap();
    let b = client.create(ada()).await.unwrap();

    let customers = batch_get(&client, &[b.id.clone(), a.id.clone()])
        .await
        .unwrap();

    assert_eq!(customers, [b, a]);
}

#[tokio::test]
async fn batch_get_answers_a_repeated_id_once_per_occurrence_in_request_order() {
    let app = spawn_app().await;
    let client = app.client().await;
    let a = client.create(ada()).await.unwrap();
    let b = client.create(ada()).await.unwrap();

    let customers = batch_get(
        &client,
        &[a.id.clone(), b.id.clone(), a.id.clone(), a.id.clone()],
    )
    .await
    .unwrap();

    assert_eq!(customers, [a.clone(), b, a.clone(), a]);
}

#[tokio::test]
async fn batch_get_resolves_a_merged_id_to_the_survivor() {
    let app = spawn_app().await;
    let client = app.client().await;
    let other = client.create(ada()).await.unwrap();
    let survivor = client.create(ada()).await.unwrap();
    let duplicate = client.create(ada()).await.unwrap();
    let merged = merge(&client, &survivor.id, &duplicate.id).await;

    let customers = batch_get(&client, &[duplicate.id.clone(), other.id.clone()])
        .await
        .unwrap();

    assert_eq!(customers, [merged, other]);
}

#[tokio::test]
async fn batch_get_needs_one_to_a_hundred_ids() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();

    for (case, count) in [("no ids", 0), ("101 ids", 101)] {
        let status = batch_get(&client, &vec![created.id.clone(); count])
            .await
            .unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(crate::common::violated_fields(&status), ["ids"], "{case}");
    }
}

#[tokio::test]
async fn a_malformed_id_in_a_batch_is_named_by_its_index() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(ada()).await.unwrap();

    let status = batch_get(
        &client,
        &[
            created.id.clone(),
            "nope".into(),
            created.id.clone(),
            String::new(),
        ],
    )
    .await
    .unwrap_err();

    assert_invalid(&status, &["ids[1]", "ids[3]"]);
}

#[tokio::test]
async fn an_unknown_id_fails_the_whole_batch_with_not_found_naming_it() {
    use tonic_types::StatusExt;
    let app = spawn_app().await;
    let client = app.client().await;
    let known = client.create(ada()).await.unwrap();
    let unknown = Uuid::now_v7().to_string();

    let status = batch_get(&client, &[known.id.clone(), unknown.clone(), known.id])
        .await
        .unwrap_err();

    assert_error(&status, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert!(status.message().contains(&unknown), "{}", status.message());
    let metadata = status.get_details_error_info().unwrap().metadata;
    assert_eq!(metadata.get("id"), Some(&unknown));
}

#[tokio::test]
async fn extreme_finite_double_attributes_are_stored_and_read_back_exactly() {
    // PostgreSQL prints a jsonb number in full (f64::MAX as 309 digits); reading that back
    // must give the same double, not a decode failure answered as INTERNAL.
    use pb::attribute_value::Kind;
    let app = spawn_app().await;
    let client = app.client().await;
    let extremes = [
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        -f64::MIN_POSITIVE,
        5e-324,
    ];
    let mut customer = ada();
    for (i, d) in extremes.iter().enumerate() {
        customer.attributes.insert(
            format!("extreme_{i}"),
            pb::AttributeValue {
                kind: Some(Kind::DoubleValue(*d)),
            },
        );
    }

    let created = client.create(customer.clone()).await.unwrap();

    assert_eq!(created.attributes, customer.attributes);
    assert_eq!(client.get(&created.id).await.unwrap(), created);
}
