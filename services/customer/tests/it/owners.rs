//! Principals: customer and interaction owners (USER or TEAM), the callers named in audit
//! fields, consents and merges (USER or SERVICE, from the token), filters on owners, and rows
//! written before principals existed.

use crate::common::{
    Client, ada, assert_invalid, config, fresh_database, principal, redis_url, spawn_app,
    spawn_with, test_user, within,
};
use crm_proto::crm::common::v1::{Channel, Principal, PrincipalKind};
use crm_proto::crm::customer::v1 as pb;
use futures::StreamExt;
use uuid::Uuid;

fn team(id: &str) -> Option<Principal> {
    Some(principal(PrincipalKind::Team, id))
}

fn user(id: &str) -> Option<Principal> {
    Some(principal(PrincipalKind::User, id))
}

/// A customer owned by `owner`.
fn owned_by(owner: Option<Principal>) -> pb::Customer {
    pb::Customer { owner, ..ada() }
}

/// The ids ListCustomers, SearchCustomers and ExportCustomers return for `filter`, each sorted.
async fn matching(client: &Client, filter: &str) -> [Vec<String>; 3] {
    let mut inner = client.inner.clone();
    let listed = client
        .list(pb::ListCustomersRequest {
            filter: filter.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .customers;
    let searched = inner
        .search_customers(client.request(pb::SearchCustomersRequest {
            query: "ada".into(),
            filter: filter.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .results;
    let exported: Vec<_> = within(
        inner
            .export_customers(client.request(pb::ExportCustomersRequest {
                filter: filter.into(),
                resume_token: String::new(),
                as_of_time: None,
            }))
            .await
            .unwrap()
            .into_inner()
            .map(|r| r.unwrap().customer.unwrap().id)
            .collect(),
    )
    .await;
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    [
        sorted(listed.into_iter().map(|c| c.id).collect()),
        sorted(
            searched
                .into_iter()
                .map(|r| r.customer.unwrap().id)
                .collect(),
        ),
        sorted(exported),
    ]
}

#[tokio::test]
async fn an_owner_is_a_user_or_a_team_and_reads_back_as_sent() {
    let app = spawn_app().await;
    let client = app.client().await;

    let by_user = client.create(owned_by(user("alice"))).await.unwrap();
    let by_team = client.create(owned_by(team("emea-sales"))).await.unwrap();
    let unowned = client.create(owned_by(None)).await.unwrap();

    assert_eq!(by_user.owner, user("alice"));
    assert_eq!(by_team.owner, team("emea-sales"));
    assert_eq!(unowned.owner, None);
    assert_eq!(client.get(&by_team.id).await.unwrap(), by_team);
}

#[tokio::test]
async fn an_owner_of_another_kind_or_without_an_id_is_invalid_naming_the_field() {
    let app = spawn_app().await;
    let client = app.client().await;
    let cases = [
        (
            principal(PrincipalKind::Agent, "agent-7"),
            "customer.owner.kind",
        ),
        (
            principal(PrincipalKind::Service, "sales"),
            "customer.owner.kind",
        ),
        (
            principal(PrincipalKind::Unspecified, "alice"),
            "customer.owner.kind",
        ),
        (principal(PrincipalKind::User, ""), "customer.owner.id"),
        (
            principal(PrincipalKind::Team, &"t".repeat(201)),
            "customer.owner.id",
        ),
    ];
    let created = client.create(ada()).await.unwrap();

    for (owner, field) in cases {
        let on_create = client.create(owned_by(Some(owner.clone()))).await;
        let on_update = client
            .update(
                pb::Customer {
                    owner: Some(owner.clone()),
                    ..created.clone()
                },
                &["owner"],
            )
            .await;

        assert_invalid(&on_create.unwrap_err(), &[field]);
        assert_invalid(&on_update.unwrap_err(), &[field]);
    }
    assert_eq!(client.get(&created.id).await.unwrap(), created);
}

#[tokio::test]
async fn the_owner_changes_through_the_owner_path_only() {
    let app = spawn_app().await;
    let client = app.client().await;
    let created = client.create(owned_by(user("alice"))).await.unwrap();

    let untouched = client
        .update(
            pb::Customer {
                owner: team("emea-sales"),
                display_name: "Ada King".into(),
                ..created.clone()
            },
            &["display_name"],
        )
        .await
        .unwrap();
    let moved = client
        .update(
            pb::Customer {
                owner: team("emea-sales"),
                ..untouched.clone()
            },
            &["owner"],
        )
        .await
        .unwrap();
    let cleared = client
        .update(
            pb::Customer {
                owner: None,
                ..moved.clone()
            },
            &["owner"],
        )
        .await
        .unwrap();

    assert_eq!(untouched.owner, user("alice"));
    assert_eq!(moved.owner, team("emea-sales"));
    assert_eq!(cleared.owner, None);
}

#[tokio::test]
async fn lists_searches_and_exports_filter_on_owner_kind_and_owner_id() {
    let app = spawn_app().await;
    let client = app.client().await;
    let alice = client.create(owned_by(user("alice"))).await.unwrap();
    let emea = client.create(owned_by(team("emea-sales"))).await.unwrap();
    let apac = client.create(owned_by(team("apac-sales"))).await.unwrap();
    client.create(owned_by(None)).await.unwrap();
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };

    for (filter, expected) in [
        ("owner.kind = USER", vec![alice.id.clone()]),
        (
            "owner.kind = TEAM",
            sorted(vec![emea.id.clone(), apac.id.clone()]),
        ),
        (
            "owner.kind = TEAM AND owner.id = \"emea-sales\"",
            vec![emea.id.clone()],
        ),
        ("owner.id = \"alice\"", vec![alice.id.clone()]),
        ("owner.kind = AGENT", vec![]),
    ] {
        let [listed, searched, exported] = matching(&client, filter).await;

        assert_eq!(listed, expected, "ListCustomers {filter}");
        assert_eq!(searched, expected, "SearchCustomers {filter}");
        assert_eq!(exported, expected, "ExportCustomers {filter}");
    }
    let status = client
        .list(pb::ListCustomersRequest {
            filter: "owner_id = \"alice\"".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(&status, &["filter"]);
}

#[tokio::test]
async fn interactions_filter_on_their_owner() {
    let app = spawn_app().await;
    let client = app.client().await;
    let customer = client.create(ada()).await.unwrap();
    let mut inner = client.inner.clone();
    for (subject, owner) in [
        ("alice's call", user("alice")),
        ("the team's meeting", team("emea-sales")),
        ("nobody's note", None),
    ] {
        inner
            .create_interaction(client.request(pb::CreateInteractionRequest {
                interaction: Some(pb::Interaction {
                    customer_id: customer.id.clone(),
                    r#type: pb::InteractionType::Note as i32,
                    subject: subject.into(),
                    owner,
                    ..Default::default()
                }),
                request_id: String::new(),
            }))
            .await
            .unwrap();
    }

    for (filter, expected) in [
        ("owner.kind = TEAM", vec!["the team's meeting"]),
        ("owner.id = \"alice\"", vec!["alice's call"]),
        (
            "owner.kind = USER OR owner.kind = TEAM",
            vec!["the team's meeting", "alice's call"],
        ),
    ] {
        let page = inner
            .list_interactions(client.request(pb::ListInteractionsRequest {
                customer_id: customer.id.clone(),
                filter: filter.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();

        let subjects: Vec<&str> = page
            .interactions
            .iter()
            .map(|i| i.subject.as_str())
            .collect();
        assert_eq!(subjects, expected, "{filter}");
    }
}

#[tokio::test]
async fn a_service_token_is_named_as_a_service_in_audit_fields_and_merge_records() {
    let app = spawn_app().await;
    let person = app.client().await;
    let service = app.service_client("sales").await;
    let sales = principal(PrincipalKind::Service, "sales");

    let created = service.create(ada()).await.unwrap();
    let duplicate = person.create(ada()).await.unwrap();
    let updated = person
        .update(
            pb::Customer {
                display_name: "Ada King".into(),
                ..created.clone()
            },
            &["display_name"],
        )
        .await
        .unwrap();
    let merged = service
        .merge(&created.id, &[&duplicate.id], "")
        .await
        .unwrap();

    let audit = created.audit.unwrap();
    assert_eq!(
        (audit.creator, audit.updater),
        (Some(sales.clone()), Some(sales.clone()))
    );
    let audit = updated.audit.unwrap();
    assert_eq!(
        (audit.creator, audit.updater),
        (Some(sales.clone()), Some(test_user()))
    );
    assert_eq!(merged.merge_record.unwrap().merger, Some(sales.clone()));
    assert_eq!(merged.customer.unwrap().audit.unwrap().updater, Some(sales));
}

/// The customer schema as the first migration left it, with rows in the old shapes: owners as
/// bare ids, authors as bare subjects, consent channels named CONSENT_CHANNEL_*, interactions
/// without a direction.
async fn database_before_principals() -> (String, Uuid) {
    let url = fresh_database().await;
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let pool = sqlx::PgPool::connect_with(options.options([("search_path", "customer")]))
        .await
        .unwrap();
    sqlx::query("CREATE SCHEMA customer")
        .execute(&pool)
        .await
        .unwrap();
    let only_first = std::env::temp_dir().join(format!("crm-migrations-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&only_first).unwrap();
    let first = "0001_customers.sql";
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/0001_customers.sql");
    std::fs::copy(source, only_first.join(first)).unwrap();
    sqlx::migrate::Migrator::new(only_first.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    std::fs::remove_dir_all(&only_first).unwrap();
    let id = Uuid::now_v7();
    for statement in [
        "INSERT INTO customer.customers (id, display_name, owner_id, created_by, updated_by) \
         VALUES ($1, 'Old Ada', 'rep-7', 'alice', 'bob')",
        "INSERT INTO customer.consents (customer_id, channel, status, legal_basis, source, \
           capture_time, recorded_by) \
         VALUES ($1, 'CONSENT_CHANNEL_EMAIL', 'CONSENT_STATUS_GRANTED', 'LEGAL_BASIS_CONSENT', \
           'form', now(), 'carol')",
        "INSERT INTO customer.interactions (id, customer_id, type, direction, subject, \
           occur_time, owner_id, created_by) \
         VALUES (gen_random_uuid(), $1, 'NOTE', 'UNSPECIFIED', 'old note', now(), 'rep-7', 'dave')",
    ] {
        sqlx::query(statement)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    (url, id)
}

#[tokio::test]
async fn rows_written_before_principals_read_as_users_with_shared_channels_and_direction_none() {
    let (url, id) = database_before_principals().await;

    let app = spawn_with(config(&url, &redis_url(), &[])).await;
    let client = app.client().await;
    let customer = client.get(&id.to_string()).await.unwrap();
    let interactions = client
        .inner
        .clone()
        .list_interactions(client.request(pb::ListInteractionsRequest {
            customer_id: id.to_string(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .interactions;

    assert_eq!(customer.owner, user("rep-7"));
    let audit = customer.audit.unwrap();
    assert_eq!((audit.creator, audit.updater), (user("alice"), user("bob")));
    assert_eq!(customer.consents.len(), 1);
    assert_eq!(customer.consents[0].channel, Channel::Email as i32);
    assert_eq!(customer.consents[0].recorder, user("carol"));
    assert_eq!(interactions.len(), 1);
    assert_eq!(
        interactions[0].direction,
        pb::InteractionDirection::None as i32
    );
    assert_eq!(interactions[0].owner, user("rep-7"));
    assert_eq!(interactions[0].audit.clone().unwrap().creator, user("dave"));
}
