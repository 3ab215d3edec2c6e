//! The test kit's own promises that other tests rely on without seeing them.

use crm_platform::testing::{admin_url, fresh_database, pool};

/// Whether a database of `name` exists on the test server.
fn database_exists(name: &str) -> bool {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&pool(&admin_url()).await)
            .await
            .unwrap()
    })
}

// A plain #[test] with a runtime of its own: the database must outlive the test's body and
// be gone once its runtime (what #[tokio::test] drops when a test ends) is dropped.
#[test]
fn a_fresh_database_lasts_until_the_test_ends_and_is_dropped_then() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = runtime.block_on(async {
        let url = fresh_database().await;
        pool(&url).await.close().await;
        url
    });
    let name = url.rsplit('/').next().unwrap().to_string();

    let during = database_exists(&name);
    drop(runtime);
    let after = database_exists(&name);

    assert!(during, "{name} was dropped before the test ended");
    assert!(!after, "{name} was left behind");
}
