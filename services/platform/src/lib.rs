//! crm-platform: the mechanisms every CRM Suite service shares, so a service crate holds only
//! its own domain.
//!
//! Startup order, as [`server::run`] drives it: [`config`] → [`telemetry`] → [`db`] pool →
//! migrations → [`cache`] → service state → serve. Shutdown: signal → health NOT_SERVING →
//! drain in-flight calls (bounded) → flush telemetry.

pub mod auth;
pub mod cache;
pub mod client;
pub mod config;
pub mod db;
pub mod erasure;
pub mod error;
pub mod feed;
pub mod filter;
pub mod idempotency;
pub mod list;
pub mod middleware;
pub mod operations;
pub mod page_token;
pub mod server;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{ApiError, FieldViolations};
