//! A fresh PostgreSQL database per test, dropped when the test ends.

use super::backends::admin_url;

/// A database `crm_test_<uuid>` of its own, dropped (its connections closed first) when this
/// value is dropped.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates a fresh, empty database on the test server.
    pub async fn create() -> Self {
        let name = format!("crm_test_{}", uuid::Uuid::now_v7().simple());
        let admin = admin_pool().await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("creating the test database");
        admin.close().await;
        let url = with_database(&admin_url(), &name);
        Self { name, url }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keeps the database until the test ends, then drops it; returns its URL.
    ///
    /// The database is handed to a task of the test's runtime that never finishes: a runtime
    /// drops its tasks when it shuts down, which `#[tokio::test]` does when the test returns or
    /// panics, so whatever the test does with the URL, the database outlives every use of it.
    pub fn until_the_test_ends(self) -> String {
        let url = self.url.clone();
        tokio::spawn(async move {
            let _kept = self;
            std::future::pending::<()>().await;
        });
        url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any async context we could await in (often during a runtime's
        // shutdown), so the DROP runs to completion on a thread and runtime of its own.
        let name = std::mem::take(&mut self.name);
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = sqlx::PgPool::connect(&admin_url()).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&admin)
                    .await?;
                admin.close().await;
                Ok::<_, anyhow::Error>(())
            })
        })
        .join();
        // Never panic here: this may run while a failing test unwinds. A database left behind
        // is dropped by the test runner's sweep of `crm_test_*`.
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("dropping test database {}: {err:#}", self.url),
            Err(_) => eprintln!("dropping test database {}: the thread panicked", self.url),
        }
    }
}

/// Creates a fresh, empty database `crm_test_<uuid>`, kept until the test ends and then
/// dropped, and returns its URL.
pub async fn fresh_database() -> String {
    TestDatabase::create().await.until_the_test_ends()
}

/// A pool on `url`, failing the test when it cannot connect.
pub async fn pool(url: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test database (DATABASE_URL): {e}"))
}

/// A connection to the admin database: the one place a test learns that PostgreSQL is missing.
async fn admin_pool() -> sqlx::PgPool {
    sqlx::PgPool::connect(&admin_url())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL at {} (set DATABASE_URL, or run scripts/test): {e}",
                admin_url()
            )
        })
}

/// `url` naming `database` instead of its own.
fn with_database(url: &str, database: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("DATABASE_URL has a database path");
    format!("{base}/{database}")
}
