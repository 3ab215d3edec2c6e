//! SearchCustomers and FindDuplicateCustomers.

use std::collections::HashSet;

use crate::common::{Client, ada, assert_error, assert_invalid, spawn_app};
use crm_proto::crm::customer::v1 as pb;
use tonic::Code;

/// A valid customer called `name`, with a unique email and a phone no other test customer has.
fn named(name: &str) -> pb::Customer {
    pb::Customer {
        display_name: name.into(),
        phone: String::new(),
        tags: Vec::new(),
        ..ada()
    }
}

async fn search(
    client: &Client,
    request: pb::SearchCustomersRequest,
) -> Result<pb::SearchCustomersResponse, tonic::Status> {
    Ok(client
        .inner
        .clone()
        .search_customers(client.request(request))
        .await?
        .into_inner())
}

async fn search_for(client: &Client, query: &str) -> pb::SearchCustomersResponse {
    search(
        client,
        pb::SearchCustomersRequest {
            query: query.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|status| panic!("searching {query:?}: {status:?}"))
}

/// The ids of the results, in the order returned.
fn ids(response: &pb::SearchCustomersResponse) -> Vec<String> {
    response
        .results
        .iter()
        .map(|r| r.customer.as_ref().unwrap().id.clone())
        .collect()
}

async fn duplicates_of(
    client: &Client,
    customer_id: &str,
) -> Result<pb::FindDuplicateCustomersResponse, tonic::Status> {
    Ok(client
        .inner
        .clone()
        .find_duplicate_customers(client.request(pb::FindDuplicateCustomersRequest {
            customer_id: customer_id.into(),
            max_results: 10,
        }))
        .await?
        .into_inner())
}

#[tokio::test]
async fn search_finds_customers_by_name_prefix_and_email() {
    let app = spawn_app().await;
    let client = app.client().await;
    let grace = client.create(named("Grace Hopper")).await.unwrap();
    let ada = client.create(named("Ada Lovelace")).await.unwrap();

    let by_prefix = search_for(&client, "hopp").await;
    let by_email = search_for(&client, &ada.email).await;

    assert_eq!(ids(&by_prefix), [grace.id]);
    assert_eq!(ids(&by_email), std::slice::from_ref(&ada.id));
    assert_eq!(
        by_email.results[0].customer.as_ref().unwrap().email,
        ada.email
    );
}

#[tokio::test]
async fn search_finds_a_customer_by_phone() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut grace = named("Grace Hopper");
    grace.phone = "+442079460321".into();
    let grace = client.create(grace).await.unwrap();
    client.create(ada()).await.unwrap(); // phone +4915112345678

    let response = search_for(&client, "+442079460321").await;

    assert_eq!(ids(&response), [grace.id]);
}

#[tokio::test]
async fn search_finds_a_customer_by_company_name() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut grace = named("Grace Hopper");
    grace.company_name = "Eckert Mauchly Computer".into();
    let grace = client.create(grace).await.unwrap();
    let mut ada = named("Ada Lovelace");
    ada.company_name = "Analytical Engines".into();
    client.create(ada).await.unwrap();

    let response = search_for(&client, "mauchly").await;

    assert_eq!(ids(&response), [grace.id]);
    assert_eq!(
        response.results[0].customer.as_ref().unwrap().company_name,
        "Eckert Mauchly Computer"
    );
}

#[tokio::test]
async fn a_misspelt_name_still_finds_the_customer_by_similarity() {
    let app = spawn_app().await;
    let client = app.client().await;
    let grace = client.create(named("Grace Hopper")).await.unwrap();
    client.create(named("Ada Lovelace")).await.unwrap();

    // "hoper" is no prefix of any word, so only trigram similarity can match it.
    let response = search_for(&client, "Grace Hoper").await;

    assert_eq!(ids(&response), [grace.id]);
    assert!(response.results[0].score > 0.0, "{response:?}");
}

#[tokio::test]
async fn search_ranks_the_better_match_first() {
    let app = spawn_app().await;
    let client = app.client().await;
    // Both words, far apart: a weak match.
    let mut weak = named("Grace Smith");
    weak.company_name = "Hopper Logistics".into();
    let weak = client.create(weak).await.unwrap();
    // Both words, side by side and repeated in the name fields: the strong match.
    let mut strong = named("Grace Hopper");
    strong.given_name = "Grace".into();
    strong.family_name = "Hopper".into();
    let strong = client.create(strong).await.unwrap();

    let response = search_for(&client, "grace hopper").await;

    assert_eq!(ids(&response), [strong.id, weak.id]);
    assert!(
        response.results[0].score > response.results[1].score,
        "scores must strictly descend: {:?}",
        response.results.iter().map(|r| r.score).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_empty_blank_or_overlong_query_is_invalid() {
    let app = spawn_app().await;
    let client = app.client().await;
    client.create(named("Grace Hopper")).await.unwrap();

    for (case, query) in [
        ("empty", String::new()),
        ("whitespace only", " \t  ".to_string()),
        ("201 characters", "a".repeat(201)),
    ] {
        let status = search(
            &client,
            pb::SearchCustomersRequest {
                query,
                ..Default::default()
            },
        )
        .await
        .expect_err(case);

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_invalid(&status, &["query"]);
    }
}

#[tokio::test]
async fn a_query_of_exactly_200_characters_is_accepted() {
    let app = spawn_app().await;
    let client = app.client().await;

    let response = search(
        &client,
        pb::SearchCustomersRequest {
            query: "a".repeat(200),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    assert!(response.results.is_empty(), "{response:?}");
}

#[tokio::test]
async fn a_filter_narrows_the_search_results() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut at_navy = named("Grace Hopper");
    at_navy.company_name = "US Navy".into();
    at_navy.tags = vec!["admiral".into()];
    let at_navy = client.create(at_navy).await.unwrap();
    let mut elsewhere = named("Grace Hopper");
    elsewhere.company_name = "Remington Rand".into();
    client.create(elsewhere).await.unwrap();

    let unfiltered = search_for(&client, "grace").await;
    let filtered = search(
        &client,
        pb::SearchCustomersRequest {
            query: "grace".into(),
            filter: "tags:admiral".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    assert_eq!(unfiltered.results.len(), 2);
    assert_eq!(ids(&filtered), [at_navy.id]);
}

#[tokio::test]
async fn a_bad_search_filter_is_invalid() {
    let app = spawn_app().await;
    let client = app.client().await;
    client.create(named("Grace Hopper")).await.unwrap();

    for filter in ["no_such_field = 1", "display_name ="] {
        let status = search(
            &client,
            pb::SearchCustomersRequest {
                query: "grace".into(),
                filter: filter.into(),
                ..Default::default()
            },
        )
        .await
        .expect_err(filter);

        assert_eq!(status.code(), Code::InvalidArgument, "{filter}: {status:?}");
        assert_invalid(&status, &["filter"]);
    }
}

#[tokio::test]
async fn search_pages_cover_every_match_exactly_once() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut expected = HashSet::new();
    for name in [
        "Grace Hopper",
        "Grace Brewster",
        "Grace Murray",
        "Grace Kelly",
        "Grace Jones",
    ] {
        expected.insert(client.create(named(name)).await.unwrap().id);
    }
    client.create(named("Ada Lovelace")).await.unwrap();

    let mut seen = Vec::new();
    let mut scores = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = search(
            &client,
            pb::SearchCustomersRequest {
                query: "grace".into(),
                page_size: 2,
                page_token: page_token.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        pages += 1;
        assert!(page.results.len() <= 2, "page {pages}: {page:?}");
        seen.extend(ids(&page));
        scores.extend(page.results.iter().map(|r| r.score));
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(pages < 5, "paging does not end");
        page_token = page.next_page_token;
    }

    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 5, "a customer appeared twice: {seen:?}");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), expected);
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "scores across pages must not rise: {scores:?}"
    );
}

#[tokio::test]
async fn a_page_token_from_another_search_is_invalid() {
    let app = spawn_app().await;
    let client = app.client().await;
    for name in ["Grace Hopper", "Grace Kelly"] {
        client.create(named(name)).await.unwrap();
    }
    let first = search(
        &client,
        pb::SearchCustomersRequest {
            query: "grace".into(),
            page_size: 1,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!first.next_page_token.is_empty());

    for (case, query, filter) in [
        ("another query", "kelly", ""),
        ("another filter", "grace", "tags:vip"),
    ] {
        let status = search(
            &client,
            pb::SearchCustomersRequest {
                query: query.into(),
                filter: filter.into(),
                page_size: 1,
                page_token: first.next_page_token.clone(),
            },
        )
        .await
        .expect_err(case);

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_invalid(&status, &["page_token"]);
    }
}

#[tokio::test]
async fn search_never_returns_deleted_merged_or_erased_customers() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut inner = client.inner.clone();
    let active = client.create(named("Quokka Active")).await.unwrap();
    let deleted = client.create(named("Quokka Deleted")).await.unwrap();
    let merged = client.create(named("Quokka Merged")).await.unwrap();
    let erased = client.create(named("Quokka Erased")).await.unwrap();
    let survivor = client.create(named("Wombat Survivor")).await.unwrap();
    let deleted = inner
        .delete_customer(client.request(pb::DeleteCustomerRequest {
            id: deleted.id.clone(),
            etag: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(deleted.state, pb::CustomerState::Deleted as i32);
    let merge = inner
        .merge_customers(client.request(pb::MergeCustomersRequest {
            survivor_id: survivor.id.clone(),
            duplicate_ids: vec![merged.id.clone()],
            request_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        merge.merge_record.unwrap().merged_ids,
        std::slice::from_ref(&merged.id)
    );
    let erased = client.erase(&erased.id, "ticket 7").await.unwrap();
    assert_eq!(erased.state, pb::CustomerState::Erased as i32);

    // By words (full text) and, misspelt, by similarity: the two ways a search matches.
    for query in ["quokka", "quokkka"] {
        let response = search_for(&client, query).await;

        assert_eq!(ids(&response), std::slice::from_ref(&active.id), "{query}");
    }
}

#[tokio::test]
async fn duplicates_are_proposed_with_their_reasons() {
    let app = spawn_app().await;
    let client = app.client().await;
    let original = client.create(ada()).await.unwrap();
    let mut twin = ada();
    twin.phone = original.phone.clone();
    let twin = client.create(twin).await.unwrap();
    let mut stranger = ada();
    stranger.display_name = "Zygmunt Bauman".into();
    stranger.phone = "+4830000000".into();
    client.create(stranger).await.unwrap();

    let response = duplicates_of(&client, &original.id).await.unwrap();

    assert_eq!(response.candidates.len(), 1);
    let candidate = &response.candidates[0];
    assert_eq!(candidate.customer.as_ref().unwrap().id, twin.id);
    assert!(
        candidate.reasons.contains(&"same phone".to_string()),
        "{:?}",
        candidate.reasons
    );
    assert!(candidate.score >= 0.9);
}

#[tokio::test]
async fn a_customer_with_my_email_as_a_contact_point_is_proposed_as_the_same_email() {
    let app = spawn_app().await;
    let client = app.client().await;
    let original = client.create(named("Ada Lovelace")).await.unwrap();
    let mut other = named("Augusta King");
    other.contact_points = vec![pb::ContactPoint {
        r#type: pb::ContactPointType::Email as i32,
        value: original.email.clone(),
        label: "old".into(),
    }];
    let other = client.create(other).await.unwrap();

    let response = duplicates_of(&client, &original.id).await.unwrap();

    assert_eq!(response.candidates.len(), 1, "{response:?}");
    let candidate = &response.candidates[0];
    assert_eq!(candidate.customer.as_ref().unwrap().id, other.id);
    assert_eq!(candidate.reasons, ["same email"]);
    assert_eq!(candidate.score, 1.0);
}

#[tokio::test]
async fn a_customer_whose_email_is_one_of_my_contact_points_is_proposed_as_the_same_email() {
    let app = spawn_app().await;
    let client = app.client().await;
    let other = client.create(named("Augusta King")).await.unwrap();
    let mut original = named("Ada Lovelace");
    original.contact_points = vec![pb::ContactPoint {
        r#type: pb::ContactPointType::Email as i32,
        value: other.email.to_uppercase(),
        label: "work".into(),
    }];
    let original = client.create(original).await.unwrap();

    let response = duplicates_of(&client, &original.id).await.unwrap();

    assert_eq!(response.candidates.len(), 1, "{response:?}");
    let candidate = &response.candidates[0];
    assert_eq!(candidate.customer.as_ref().unwrap().id, other.id);
    assert_eq!(candidate.reasons, ["same email"]);
}

#[tokio::test]
async fn a_similar_name_at_the_same_company_is_proposed_as_a_duplicate() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut original = named("Ada Lovelace");
    original.company_name = "Analytical Engines".into();
    let original = client.create(original).await.unwrap();
    let mut similar = named("Ada Lovelace-King");
    similar.company_name = "Analytical Engines".into();
    let similar = client.create(similar).await.unwrap();
    let mut unrelated = named("Charles Babbage");
    unrelated.company_name = "Analytical Engines".into();
    client.create(unrelated).await.unwrap();

    let response = duplicates_of(&client, &original.id).await.unwrap();

    assert_eq!(response.candidates.len(), 1, "{response:?}");
    let candidate = &response.candidates[0];
    assert_eq!(candidate.customer.as_ref().unwrap().id, similar.id);
    assert_eq!(candidate.reasons.len(), 1, "{:?}", candidate.reasons);
    assert!(
        candidate.reasons[0].starts_with("similar name ("),
        "{:?}",
        candidate.reasons
    );
    assert!(
        (0.4..=1.0).contains(&candidate.score),
        "score {}",
        candidate.score
    );
}

#[tokio::test]
async fn a_customer_with_nothing_in_common_is_not_proposed() {
    let app = spawn_app().await;
    let client = app.client().await;
    let mut original = named("Ada Lovelace");
    original.phone = "+4915112345678".into();
    let original = client.create(original).await.unwrap();
    let mut stranger = named("Zygmunt Bauman");
    stranger.phone = "+4830000000".into();
    client.create(stranger).await.unwrap();

    let response = duplicates_of(&client, &original.id).await.unwrap();

    assert!(response.candidates.is_empty(), "{response:?}");
}

#[tokio::test]
async fn finding_duplicates_of_a_malformed_or_unknown_id_is_invalid_or_not_found() {
    let app = spawn_app().await;
    let client = app.client().await;

    let malformed = duplicates_of(&client, "nope").await.unwrap_err();
    let missing = duplicates_of(&client, &uuid::Uuid::now_v7().to_string())
        .await
        .unwrap_err();

    assert_invalid(&malformed, &["customer_id"]);
    assert_error(&missing, Code::NotFound, "CUSTOMER_NOT_FOUND");
}

#[tokio::test]
async fn finding_duplicates_of_a_deleted_customer_is_a_failed_precondition() {
    let app = spawn_app().await;
    let client = app.client().await;
    let original = client.create(ada()).await.unwrap();
    let mut twin = ada();
    twin.phone = original.phone.clone();
    client.create(twin).await.unwrap();
    client.delete(&original.id, "").await.unwrap();

    let status = duplicates_of(&client, &original.id).await.unwrap_err();

    assert_error(&status, Code::FailedPrecondition, "CUSTOMER_NOT_ACTIVE");
}

#[tokio::test]
async fn max_results_defaults_to_ten_is_clamped_to_fifty_and_must_not_be_negative() {
    let app = spawn_app().await;
    let client = app.client().await;
    let me = client.create(ada()).await.unwrap();
    for _ in 0..55 {
        client.create(ada()).await.unwrap();
    }
    let find = |max_results: i32| {
        let mut inner = client.inner.clone();
        let request = client.request(pb::FindDuplicateCustomersRequest {
            customer_id: me.id.clone(),
            max_results,
        });
        async move { inner.find_duplicate_customers(request).await }
    };

    let counts = [
        find(0).await.unwrap().into_inner().candidates.len(),
        find(3).await.unwrap().into_inner().candidates.len(),
        find(500).await.unwrap().into_inner().candidates.len(),
    ];
    let negative = find(-1).await.unwrap_err();

    assert_eq!(counts, [10, 3, 50]);
    assert_invalid(&negative, &["max_results"]);
}
