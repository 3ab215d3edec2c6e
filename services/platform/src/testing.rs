//! The test kit every service's integration tests are built on (cargo feature `testing`).
//!
//! A test gets its own PostgreSQL database (dropped when the test ends) and a real server
//! running any set of service modules on an ephemeral port, over the real Redis; it talks to
//! that server through typed clients whose interceptor adds a bearer token. Without a
//! reachable PostgreSQL or Redis a test fails, naming the variable to set; it never skips.
//!
//! ```ignore
//! use crm_platform::testing::{TestApp, user_token};
//! let app = TestApp::spawn(&[&crm_customer::module]).await;
//! let mut customers = app
//!     .typed_client(user_token(&["customer.read"]), CustomerServiceClient::with_interceptor)
//!     .await;
//! ```

mod app;
mod assertions;
mod auth;
mod auth_matrix;
mod backends;
mod database;
mod malformed;
mod outage;
mod rpc;
mod wait;

pub use app::{ModuleFactory, TestApp, config, config_from, health_of, is_serving, wait_serving};
pub use assertions::{assert_error, assert_invalid, error_reason, violated_fields};
pub use auth::{
    AUDIENCE, AuthorizedChannel, BearerAuth, ISSUER, JWT_SECRET, SUBJECT, principal, service_token,
    signed, test_user, user_token,
};
pub use auth_matrix::{AuthMatrixReport, auth_matrix};
pub use backends::{
    admin_url, postgres_addr, redis_addr, redis_connection, redis_connection_at, redis_url,
    unique_prefix, via,
};
pub use database::{TestDatabase, fresh_database, pool};
pub use malformed::{
    Finding, MAX_RESPONSE, MAX_STATUS_DETAILS, MAX_STATUS_MESSAGE, MalformedInputReport,
    every_scope, every_scope_token, probe_malformed_inputs,
};
pub use outage::Outage;
pub use rpc::{Outcome, call_raw, contracts, methods_of, path_of, served_services};
pub use wait::{WAIT, eventually, within};
