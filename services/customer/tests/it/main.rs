//! The customer service's integration tests: one binary (one link on a 2-core machine), a module
//! per behaviour. Every test runs the real service against real PostgreSQL and Redis.

mod auth;
mod bulk;
mod common;
mod concurrency;
mod consents;
mod consumer;
mod customers;
mod edge;
mod feed;
mod feed_migration;
mod gdpr;
mod history;
mod interactions;
mod listing;
mod merge;
mod owners;
mod request_ids;
mod resilience;
mod scan;
mod search;
