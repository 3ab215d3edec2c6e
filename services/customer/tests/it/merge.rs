//! MergeCustomers and ListMergeRecords.

use std::collections::BTreeMap;

use crate::common::{
    Client, ada, assert_error, assert_invalid, consent, principal, spawn_app, test_user,
};
use crm_proto::crm::common::v1::{Channel, PostalAddress, PrincipalKind};
use crm_proto::crm::customer::v1 as pb;
use tonic::Code;
use uuid::Uuid;

async fn merge_records(
    client: &Client,
    customer_id: &str,
) -> Result<Vec<pb::MergeRecord>, tonic::Status> {
    Ok(client
        .inner
        .clone()
        .list_merge_records(client.request(pb::ListMergeRecordsRequest {
            customer_id: customer_id.into(),
            ..Default::default()
        }))
        .await?
        .into_inner()
        .merge_records)
}

/// The stored state and `merged_into_id` of each of `ids`, read from the database (GetCustomer
/// would follow the merge).
async fn stored_states(pool: &sqlx::PgPool, ids: &[&str]) -> Vec<(String, Option<Uuid>)> {
    let mut states = Vec::new();
    for id in ids {
        states.push(
            sqlx::query_as(
                "SELECT state, merged_into_id FROM customer.customers WHERE id = $1::uuid",
            )
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap(),
        );
    }
    states
}

async fn merge_count(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM customer.merges")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Asserts that no merge happened: no merge record, and every one of `ids` still active.
async fn assert_nothing_merged(pool: &sqlx::PgPool, ids: &[&str]) {
    assert_eq!(merge_count(pool).await, 0, "a merge record was written");
    for (id, state) in ids.iter().zip(stored_states(pool, ids).await) {
        assert_eq!(state, ("ACTIVE".to_string(), None), "customer {id}");
    }
}

fn address(label: &str, locality: &str) -> pb::CustomerAddress {
    pb::CustomerAddress {
        label: label.into(),
        address: Some(PostalAddress {
            region_code: "GB".into(),
            locality: locality.into(),
            address_lines: vec!["1 Some Street".into()],
            ..Default::default()
        }),
    }
}

fn contact(kind: pb::ContactPointType, value: &str, label: &str) -> pb::ContactPoint {
    pb::ContactPoint {
        r#type: kind as i32,
        value: value.into(),
        label: label.into(),
    }
}

fn text(value: &str) -> pb::AttributeValue {
    pb::AttributeValue {
        kind: Some(pb::attribute_value::Kind::StringValue(value.into())),
    }
}

fn seconds_since_epoch() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_merged_id_resolves_to_the_survivor_which_gains_the_duplicates_data() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let mut dup = ada();
    dup.tags = vec!["newsletter".into()];
    dup.company_name = "Engines".into();
    let dup = client.create(dup).await.unwrap();

    let merged = client.merge(&survivor.id, &[&dup.id], "").await.unwrap();

    let via_old_id = client.get(&dup.id).await.unwrap();
    assert_eq!(via_old_id.id, survivor.id);
    assert_eq!(via_old_id.company_name, "Engines");
    assert_eq!(via_old_id.tags, ["vip", "newsletter"]);
    assert_eq!(Some(via_old_id), merged.customer);
    assert_eq!(
        stored_states(&app.pool().await, &[&dup.id]).await,
        [("MERGED".to_string(), Some(survivor.id.parse().unwrap()))]
    );
}

#[tokio::test]
async fn the_merge_response_carries_the_survivor_and_the_merge_record() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let first = client.create(ada()).await.unwrap();
    let second = client.create(ada()).await.unwrap();

    let response = client
        .merge(&survivor.id, &[&second.id, &first.id], "")
        .await
        .unwrap();

    let customer = response.customer.unwrap();
    assert_eq!(customer.id, survivor.id);
    assert_eq!(customer.state, pb::CustomerState::Active as i32);
    assert_ne!(customer.etag, survivor.etag);
    assert_eq!(customer, client.get(&survivor.id).await.unwrap());
    let record = response.merge_record.unwrap();
    assert!(Uuid::parse_str(&record.id).is_ok(), "{record:?}");
    assert_eq!(record.survivor_id, survivor.id);
    assert_eq!(record.merged_ids, [second.id, first.id]);
    assert_eq!(record.merger, Some(test_user()));
    let merge_time = record.merge_time.unwrap().seconds;
    assert!(
        (seconds_since_epoch() - merge_time).abs() <= 5,
        "merge_time {merge_time} is not now"
    );
}

#[tokio::test]
async fn the_survivor_gains_the_duplicates_contact_points_addresses_tags_and_missing_fields() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut survivor = ada();
    survivor.phone = String::new();
    survivor.tags = vec!["vip".into()];
    survivor.contact_points = vec![contact(
        pb::ContactPointType::Phone,
        "+4930111111",
        "office",
    )];
    survivor.addresses = vec![address("billing", "London")];
    let survivor = client.create(survivor).await.unwrap();
    let mut dup = ada();
    dup.display_name = "Augusta Ada King".into();
    dup.given_name = "Augusta".into();
    dup.family_name = "King".into();
    dup.company_name = "Analytical Engines".into();
    dup.owner = Some(principal(PrincipalKind::Team, "owner-7"));
    dup.phone = "+442079460321".into();
    dup.tags = vec!["vip".into(), "newsletter".into()];
    dup.contact_points = vec![contact(
        pb::ContactPointType::Email,
        "countess@example.org",
        "private",
    )];
    dup.addresses = vec![address("shipping", "Ockham")];
    let dup = client.create(dup).await.unwrap();

    let merged = client
        .merge(&survivor.id, &[&dup.id], "")
        .await
        .unwrap()
        .customer
        .unwrap();

    assert_eq!(
        merged.display_name, "Ada Lovelace",
        "the survivor keeps its own"
    );
    assert_eq!(merged.email, survivor.email, "the survivor keeps its own");
    assert_eq!(
        (
            merged.given_name.as_str(),
            merged.family_name.as_str(),
            merged.company_name.as_str(),
            merged.owner.as_ref().map(|o| o.id.as_str()),
            merged.phone.as_str(),
        ),
        (
            "Augusta",
            "King",
            "Analytical Engines",
            Some("owner-7"),
            "+442079460321"
        )
    );
    assert_eq!(merged.tags, ["vip", "newsletter"]);
    assert_eq!(
        merged.addresses,
        [survivor.addresses[0].clone(), dup.addresses[0].clone()]
    );
    for expected in [&survivor.contact_points[0], &dup.contact_points[0]] {
        assert!(
            merged.contact_points.contains(expected),
            "{expected:?} missing from {:?}",
            merged.contact_points
        );
    }
}

#[tokio::test]
async fn the_survivor_keeps_its_own_value_for_a_conflicting_attribute_and_gains_the_others() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut survivor = ada();
    survivor.attributes = BTreeMap::from([
        ("tier".to_string(), text("gold")),
        ("region".to_string(), text("EMEA")),
    ]);
    let survivor = client.create(survivor).await.unwrap();
    let mut dup = ada();
    dup.attributes = BTreeMap::from([
        ("tier".to_string(), text("bronze")),
        (
            "employees".to_string(),
            pb::AttributeValue {
                kind: Some(pb::attribute_value::Kind::IntValue(40)),
            },
        ),
    ]);
    let dup = client.create(dup).await.unwrap();

    let merged = client
        .merge(&survivor.id, &[&dup.id], "")
        .await
        .unwrap()
        .customer
        .unwrap();

    assert_eq!(
        merged.attributes,
        BTreeMap::from([
            ("tier".to_string(), text("gold")),
            ("region".to_string(), text("EMEA")),
            ("employees".to_string(), dup.attributes["employees"].clone()),
        ])
    );
}

#[tokio::test]
async fn a_duplicates_different_email_and_phone_become_contact_points_of_the_survivor() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let mut dup = ada();
    dup.phone = "+442079460321".into();
    let dup = client.create(dup).await.unwrap();

    let merged = client
        .merge(&survivor.id, &[&dup.id], "")
        .await
        .unwrap()
        .customer
        .unwrap();

    assert_eq!(
        (merged.email.as_str(), merged.phone.as_str()),
        (survivor.email.as_str(), survivor.phone.as_str())
    );
    let mut points: Vec<(i32, String)> = merged
        .contact_points
        .iter()
        .map(|cp| (cp.r#type, cp.value.clone()))
        .collect();
    points.sort();
    assert_eq!(
        points,
        [
            (pb::ContactPointType::Email as i32, dup.email.clone()),
            (pb::ContactPointType::Phone as i32, dup.phone.clone()),
        ]
    );
}

#[tokio::test]
async fn the_survivor_gains_the_duplicates_interactions_and_consent_history() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut inner = client.inner.clone();
    let survivor = client.create(ada()).await.unwrap();
    let dup = client.create(ada()).await.unwrap();
    for (id, channel) in [(&survivor.id, Channel::Email), (&dup.id, Channel::Sms)] {
        let recorded = inner
            .record_consent(client.request(pb::RecordConsentRequest {
                customer_id: id.clone(),
                consent: Some(consent(channel, pb::ConsentStatus::Granted)),
                request_id: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .customer
            .unwrap();
        assert_eq!(recorded.consents.len(), 1);
    }
    let interaction = inner
        .create_interaction(client.request(pb::CreateInteractionRequest {
            interaction: Some(pb::Interaction {
                customer_id: dup.id.clone(),
                r#type: pb::InteractionType::Call as i32,
                subject: "asked about engines".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .interaction
        .unwrap();

    let merged = client
        .merge(&survivor.id, &[&dup.id], "")
        .await
        .unwrap()
        .customer
        .unwrap();

    let mut channels: Vec<i32> = merged.consents.iter().map(|c| c.channel).collect();
    channels.sort();
    assert_eq!(channels, [Channel::Email as i32, Channel::Sms as i32]);
    let history = inner
        .list_consent_history(client.request(pb::ListConsentHistoryRequest {
            customer_id: survivor.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .consents;
    assert_eq!(history.len(), 2, "{history:?}");
    let timeline = inner
        .list_interactions(client.request(pb::ListInteractionsRequest {
            customer_id: survivor.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .interactions;
    assert_eq!(timeline.len(), 1, "{timeline:?}");
    assert_eq!(timeline[0].id, interaction.id);
    assert_eq!(timeline[0].customer_id, survivor.id);
    assert_eq!(timeline[0].subject, "asked about engines");
}

#[tokio::test]
async fn a_replayed_request_id_returns_the_first_merge_and_merges_nothing_again() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let dup = client.create(ada()).await.unwrap();
    let request_id = Uuid::now_v7().to_string();
    let first = client
        .merge(&survivor.id, &[&dup.id], &request_id)
        .await
        .unwrap();

    let replayed = client
        .merge(&survivor.id, &[&dup.id], &request_id)
        .await
        .unwrap();

    assert_eq!(replayed, first);
    let pool = app.pool().await;
    assert_eq!(merge_count(&pool).await, 1);
    assert_eq!(
        client.get(&survivor.id).await.unwrap().etag,
        first.customer.unwrap().etag,
        "the survivor was written again"
    );
    assert_eq!(
        merge_records(&client, &survivor.id).await.unwrap(),
        [first.merge_record.unwrap()]
    );
}

#[tokio::test]
async fn a_request_id_reused_for_another_merge_already_exists() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let dup = client.create(ada()).await.unwrap();
    let other = client.create(ada()).await.unwrap();
    let request_id = Uuid::now_v7().to_string();
    client
        .merge(&survivor.id, &[&dup.id], &request_id)
        .await
        .unwrap();

    let status = client
        .merge(&survivor.id, &[&other.id], &request_id)
        .await
        .unwrap_err();

    assert_error(&status, Code::AlreadyExists, "REQUEST_ID_REUSED");
    let pool = app.pool().await;
    assert_eq!(merge_count(&pool).await, 1);
    assert_eq!(
        stored_states(&pool, &[&other.id]).await,
        [("ACTIVE".to_string(), None)]
    );
}

#[tokio::test]
async fn a_bad_list_of_duplicates_is_invalid_and_merges_nothing() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let dup = client.create(ada()).await.unwrap();
    let too_many: Vec<String> = (0..21).map(|_| Uuid::now_v7().to_string()).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();

    for (case, duplicates, field) in [
        (
            "repeated id",
            vec![dup.id.as_str(), dup.id.as_str()],
            "duplicate_ids[1]",
        ),
        (
            "the survivor itself",
            vec![survivor.id.as_str()],
            "duplicate_ids[0]",
        ),
        (
            "the survivor among others",
            vec![dup.id.as_str(), survivor.id.as_str()],
            "duplicate_ids[1]",
        ),
        ("more than 20", too_many, "duplicate_ids"),
        ("none", vec![], "duplicate_ids"),
    ] {
        let status = client
            .merge(&survivor.id, &duplicates, "")
            .await
            .expect_err(case);

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_invalid(&status, &[field]);
    }
    assert_nothing_merged(&app.pool().await, &[&survivor.id, &dup.id]).await;
}

#[tokio::test]
async fn malformed_ids_are_invalid_naming_their_field() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let dup = client.create(ada()).await.unwrap();

    for (case, survivor_id, duplicates, field) in [
        ("survivor", "nope", vec![dup.id.as_str()], "survivor_id"),
        ("empty survivor", "", vec![dup.id.as_str()], "survivor_id"),
        (
            "duplicate",
            survivor.id.as_str(),
            vec![dup.id.as_str(), "nope"],
            "duplicate_ids[1]",
        ),
    ] {
        let status = client
            .merge(survivor_id, &duplicates, "")
            .await
            .expect_err(case);

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_invalid(&status, &[field]);
    }
    assert_nothing_merged(&app.pool().await, &[&survivor.id, &dup.id]).await;
}

#[tokio::test]
async fn an_unknown_customer_is_not_found_and_nothing_is_merged() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let dup = client.create(ada()).await.unwrap();
    let unknown = Uuid::now_v7().to_string();

    for (case, survivor_id, duplicates) in [
        (
            "unknown duplicate",
            survivor.id.as_str(),
            vec![dup.id.as_str(), unknown.as_str()],
        ),
        ("unknown survivor", unknown.as_str(), vec![dup.id.as_str()]),
    ] {
        let status = client
            .merge(survivor_id, &duplicates, "")
            .await
            .expect_err(case);

        assert_error(&status, Code::NotFound, "CUSTOMER_NOT_FOUND");
    }
    assert_nothing_merged(&app.pool().await, &[&survivor.id, &dup.id]).await;
}

#[tokio::test]
async fn a_deleted_duplicate_or_survivor_is_not_active_and_nothing_is_merged() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let dup = client.create(ada()).await.unwrap();
    let deleted = client.create(ada()).await.unwrap();
    let deleted = client.delete(&deleted.id, "").await.unwrap();
    assert_eq!(deleted.state, pb::CustomerState::Deleted as i32);

    for (case, survivor_id, duplicates) in [
        (
            "deleted duplicate",
            survivor.id.as_str(),
            vec![dup.id.as_str(), deleted.id.as_str()],
        ),
        (
            "deleted survivor",
            deleted.id.as_str(),
            vec![dup.id.as_str()],
        ),
    ] {
        let status = client
            .merge(survivor_id, &duplicates, "")
            .await
            .expect_err(case);

        assert_error(&status, Code::FailedPrecondition, "CUSTOMER_NOT_ACTIVE");
    }
    let pool = app.pool().await;
    assert_nothing_merged(&pool, &[&survivor.id, &dup.id]).await;
    assert_eq!(
        stored_states(&pool, &[&deleted.id]).await,
        [("DELETED".to_string(), None)]
    );
}

#[tokio::test]
async fn merge_records_are_listed_oldest_first() {
    let app = spawn_app().await;
    let client = app.client().await;
    let survivor = client.create(ada()).await.unwrap();
    let older = client.create(ada()).await.unwrap();
    let newer = client.create(ada()).await.unwrap();
    let first = client
        .merge(&survivor.id, &[&older.id], "merge-1")
        .await
        .unwrap()
        .merge_record
        .unwrap();
    let second = client
        .merge(&survivor.id, &[&newer.id], "merge-2")
        .await
        .unwrap()
        .merge_record
        .unwrap();

    let records = merge_records(&client, &survivor.id).await.unwrap();

    assert_eq!(records, [first, second]);
    assert_eq!(records[0].merged_ids, std::slice::from_ref(&older.id));
    assert_eq!(records[1].merged_ids, std::slice::from_ref(&newer.id));
}

#[tokio::test]
async fn listing_merge_records_of_a_malformed_or_unknown_id_is_invalid_or_not_found() {
    let app = spawn_app().await;
    let client = app.client().await;

    let malformed = merge_records(&client, "nope").await.unwrap_err();
    let missing = merge_records(&client, &Uuid::now_v7().to_string())
        .await
        .unwrap_err();

    assert_invalid(&malformed, &["customer_id"]);
    assert_error(&missing, Code::NotFound, "CUSTOMER_NOT_FOUND");
}

/// Every merge record a request lists, following the pages (of `page_size`).
async fn all_merge_records(client: &Client, request: pb::ListMergeRecordsRequest) -> Vec<String> {
    let mut ids = Vec::new();
    let mut request = request;
    loop {
        let page = client.merge_records(request.clone()).await.unwrap();
        assert!(page.merge_records.len() <= request.page_size.max(1) as usize);
        ids.extend(page.merge_records.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        assert!(ids.len() < 1000, "paging never ends");
        request.page_token = page.next_page_token;
    }
}

/// Five merges: three into one survivor, two into another. Returns (survivors, records in
/// merge order).
async fn five_merges(client: &Client) -> ([String; 2], Vec<pb::MergeRecord>) {
    let first = client.create(ada()).await.unwrap().id;
    let second = client.create(ada()).await.unwrap().id;
    let mut records = Vec::new();
    for survivor in [&first, &second, &first, &second, &first] {
        let duplicate = client.create(ada()).await.unwrap().id;
        let merged = client.merge(survivor, &[&duplicate], "").await.unwrap();
        records.push(merged.merge_record.unwrap());
    }
    ([first, second], records)
}

#[tokio::test]
async fn without_a_customer_every_merge_is_listed_page_by_page_oldest_first() {
    let app = spawn_app().await;
    let client = app.client().await;
    let ([first, _], records) = five_merges(&client).await;
    let ids = |picked: &[usize]| -> Vec<String> {
        picked.iter().map(|i| records[*i].id.clone()).collect()
    };

    let all = all_merge_records(
        &client,
        pb::ListMergeRecordsRequest {
            page_size: 2,
            ..Default::default()
        },
    )
    .await;
    let of_first = all_merge_records(
        &client,
        pb::ListMergeRecordsRequest {
            customer_id: first,
            page_size: 2,
            ..Default::default()
        },
    )
    .await;

    assert_eq!(all, ids(&[0, 1, 2, 3, 4]));
    assert_eq!(of_first, ids(&[0, 2, 4]));
}

#[tokio::test]
async fn merge_records_filter_on_survivor_merged_ids_and_merge_time() {
    let app = spawn_app().await;
    let client = app.client().await;
    let ([_, second], records) = five_merges(&client).await;
    let ids = |picked: &[usize]| -> Vec<String> {
        picked.iter().map(|i| records[*i].id.clone()).collect()
    };
    let time = |i: usize| {
        let t = records[i].merge_time.unwrap();
        chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };

    for (filter, expected) in [
        (format!("survivor_id = \"{second}\""), ids(&[1, 3])),
        (
            format!("merged_ids:\"{}\"", records[2].merged_ids[0]),
            ids(&[2]),
        ),
        (format!("merge_time > \"{}\"", time(2)), ids(&[3, 4])),
        (
            format!(
                "merge_time <= \"{}\" AND survivor_id != \"{second}\"",
                time(2)
            ),
            ids(&[0, 2]),
        ),
    ] {
        let listed = all_merge_records(
            &client,
            pb::ListMergeRecordsRequest {
                filter: filter.clone(),
                page_size: 1,
                ..Default::default()
            },
        )
        .await;

        assert_eq!(listed, expected, "{filter}");
    }
}

#[tokio::test]
async fn a_merge_record_page_token_is_tied_to_its_query_and_bad_requests_are_named() {
    let app = spawn_app().await;
    let client = app.client().await;
    let ([first, _], _) = five_merges(&client).await;
    let page = client
        .merge_records(pb::ListMergeRecordsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap();

    let other_customer = client
        .merge_records(pb::ListMergeRecordsRequest {
            customer_id: first,
            page_size: 1,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let bad_filter = client
        .merge_records(pb::ListMergeRecordsRequest {
            filter: "merge_time > 5".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let negative = client
        .merge_records(pb::ListMergeRecordsRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert_invalid(&other_customer, &["page_token"]);
    assert_invalid(&bad_filter, &["filter"]);
    assert_invalid(&negative, &["page_size"]);
}
