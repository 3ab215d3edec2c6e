//! `crm seed`: realistic demo customers, generated deterministically so re-running tops up to the
//! requested count instead of duplicating.

use anyhow::Context as _;
use crm_customer::domain::{
    Address, Attributes, ContactKind, ContactPoint, CustomerFields, LifecycleStage, Principal,
};
use crm_platform::config::Config;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

const GIVEN: &[&str] = &[
    "Ada",
    "Alan",
    "Grace",
    "Linus",
    "Margaret",
    "Dennis",
    "Barbara",
    "Ken",
    "Frances",
    "Edsger",
    "Hedy",
    "Tim",
    "Radia",
    "Donald",
    "Sophie",
    "John",
    "Mary",
    "Niklaus",
    "Katherine",
    "Guido",
    "Anita",
    "Bjarne",
    "Shafi",
    "Leslie",
    "Lynn",
    "Vint",
    "Adele",
    "James",
    "Annie",
    "Robert",
];
const FAMILY: &[&str] = &[
    "Lovelace",
    "Turing",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Ritchie",
    "Liskov",
    "Thompson",
    "Allen",
    "Dijkstra",
    "Lamarr",
    "Berners-Lee",
    "Perlman",
    "Knuth",
    "Wilson",
    "Smith",
    "Jackson",
    "Wirth",
    "Johnson",
    "van Rossum",
    "Borg",
    "Stroustrup",
    "Goldwasser",
    "Lamport",
    "Conway",
    "Cerf",
    "Goldberg",
    "Gosling",
    "Easley",
    "Tarjan",
];
const COMPANIES: &[&str] = &[
    "Acme GmbH",
    "Globex Ltd",
    "Initech",
    "Umbrella BV",
    "Stark Industries",
    "Wayne Enterprises",
    "Hooli",
    "Vandelay Import",
    "Soylent AG",
    "Tyrell Corp",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("DE", "Berlin", "10115"),
    ("DE", "Hamburg", "20095"),
    ("FR", "Paris", "75001"),
    ("GB", "London", "EC1A 1BB"),
    ("US", "Austin", "73301"),
    ("NL", "Utrecht", "3511"),
];
const TAGS: &[&str] = &[
    "vip",
    "newsletter",
    "b2b",
    "b2c",
    "trial",
    "partner",
    "churn-risk",
];
// Customers appear twice: most demo records are paying ones.
const STAGES: &[LifecycleStage] = &[
    LifecycleStage::Subscriber,
    LifecycleStage::Lead,
    LifecycleStage::Opportunity,
    LifecycleStage::Customer,
    LifecycleStage::Customer,
    LifecycleStage::Churned,
];
const PLANS: &[&str] = &["free", "starter", "pro", "enterprise"];

/// The demo customer number `i`: the same every run.
pub fn demo_customer(i: u32) -> CustomerFields {
    let mut rng = StdRng::seed_from_u64(i as u64);
    let given = GIVEN[rng.random_range(0..GIVEN.len())];
    let family = FAMILY[rng.random_range(0..FAMILY.len())];
    let company = (rng.random_bool(0.6)).then(|| COMPANIES[rng.random_range(0..COMPANIES.len())]);
    let (region, city, postal) = CITIES[rng.random_range(0..CITIES.len())];
    let slug = |s: &str| s.to_lowercase().replace([' ', '-'], "");
    let email = format!("{}.{}.{i}@example.com", slug(given), slug(family));
    let mut tags: Vec<String> = Vec::new();
    for _ in 0..rng.random_range(0..3) {
        let tag = TAGS[rng.random_range(0..TAGS.len())].to_string();
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    let mut values = serde_json::Map::new();
    values.insert(
        "plan".into(),
        PLANS[rng.random_range(0..PLANS.len())].into(),
    );
    values.insert("seats".into(), rng.random_range(1..500).into());
    values.insert("nps".into(), rng.random_range(-100..=100).into());
    CustomerFields {
        display_name: format!("{given} {family}"),
        email: Some(email),
        given_name: Some(given.to_string()),
        family_name: Some(family.to_string()),
        phone: Some(format!("+49151{:08}", i)),
        company_name: company.map(str::to_string),
        lifecycle_stage: STAGES[rng.random_range(0..STAGES.len())],
        owner: Some(Principal {
            kind: "USER",
            id: format!("rep-{}", rng.random_range(1..=12)),
        }),
        source: Some("seed".into()),
        tags,
        attributes: Attributes {
            values,
            timestamp_keys: Vec::new(),
        },
        contact_points: if rng.random_bool(0.2) {
            vec![ContactPoint {
                kind: ContactKind::Email,
                value: format!("{}.{i}@work.example.com", slug(family)),
                label: "work".into(),
            }]
        } else {
            Vec::new()
        },
        addresses: vec![Address {
            label: "billing".into(),
            region_code: region.into(),
            postal_code: postal.into(),
            locality: city.into(),
            address_lines: vec![format!("{} Main Street", rng.random_range(1..200))],
            ..Default::default()
        }],
    }
}

/// Tops the demo customers up to `target`.
pub async fn run(config: &Config, target: u32) -> anyhow::Result<()> {
    let database = crm_customer::database(config)?;
    database.migrate().await?;
    let existing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM customer.customers WHERE source = 'seed'")
            .fetch_one(&database.pool)
            .await
            .context("counting demo customers")?;
    let start = existing.max(0) as u32;
    if start >= target {
        println!("{existing} demo customers already present");
        return Ok(());
    }
    let bar = ProgressBar::new((target - start) as u64).with_style(
        ProgressStyle::with_template(
            "seeding customers {bar:40} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .context("progress template")?,
    );
    // The seed is written by a service, not a person.
    let seeder = Principal {
        kind: "SERVICE",
        id: "seed".into(),
    };
    let mut i = start;
    while i < target {
        let mut tx = database.pool.begin().await?;
        let batch_end = (i + 1000).min(target);
        for n in i..batch_end {
            crm_customer::store::insert(&mut tx, Uuid::now_v7(), &demo_customer(n), &seeder)
                .await
                .map_err(|e| anyhow::anyhow!("inserting demo customer {n}: {e}"))?;
        }
        tx.commit().await?;
        bar.inc((batch_end - i) as u64);
        i = batch_end;
    }
    bar.finish();
    println!("seeded {} demo customers ({target} in all)", target - start);
    Ok(())
}
