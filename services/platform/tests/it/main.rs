//! The platform's mechanisms tested directly against the real PostgreSQL and Redis: one binary,
//! a module per mechanism. Each test makes its own database and its own Redis key prefix, so
//! tests run in parallel; without PostgreSQL or Redis they fail, naming the variable to set.

mod cache;
mod client;
mod contract_filters;
mod db;
mod feed;
mod filter_sql;
mod fixture;
mod idempotency;
mod list;
mod operations;
mod scopes;
mod serving;
mod support;
mod testkit;
