//! Layered configuration: built-in defaults → optional TOML file → environment.
//!
//! Environment variables win, as Kubernetes users expect: `CRM__SECTION__KEY` sets `section.key`
//! (e.g. `CRM__SERVER__LISTEN_ADDR`). The conventional `DATABASE_URL` and `REDIS_URL` are honoured
//! too, below their `CRM__…` spellings. Every key is documented on its field and in the README.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The secret used when `auth.jwt_secret` is not configured. Only for a laptop: the server logs a
/// warning at start when it is in use.
pub const DEV_JWT_SECRET: &str = "crm-suite-dev-secret-do-not-use-in-production";

/// Exit code for a configuration error (EX_CONFIG from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// The whole configuration of one `crm` process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC server settings.
    pub server: ServerConfig,
    /// PostgreSQL settings.
    pub database: DatabaseConfig,
    /// Redis settings.
    pub redis: RedisConfig,
    /// Cache behaviour.
    pub cache: CacheConfig,
    /// Token verification.
    pub auth: AuthConfig,
    /// Logs, traces and metrics.
    pub telemetry: TelemetryConfig,
    /// Where this process reaches the other services, by service name (`clients.<service>`).
    #[serde(default)]
    pub clients: std::collections::BTreeMap<String, ClientConfig>,
}

/// `clients.<service>.*`: how to call another CRM Suite service (see [`crate::client`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `clients.<service>.endpoint`: the service's gRPC address, e.g.
    /// `http://crm-customer-headless:50051` (a headless Service name, so the client balances over
    /// every pod it resolves). Unset: the service is called over loopback on this process's own
    /// server, which must serve it (all-in-one mode).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `clients.<service>.timeout_ms`: deadline of each call that sets none itself, shortened
    /// to what is left of the deadline of the call being served. Default 2000.
    #[serde(default = "default_client_timeout_ms")]
    pub timeout_ms: u64,
    /// `clients.<service>.resolve_interval_secs`: how often the endpoint's name is resolved
    /// again, so pods that joined receive calls and gone ones stop receiving them. Default 30.
    #[serde(default = "default_resolve_interval_secs")]
    pub resolve_interval_secs: u64,
    /// `clients.<service>.max_attempts`: attempts of a call to a method the caller declared
    /// idempotent when it fails with UNAVAILABLE, the first included; 1 disables retries.
    /// 1..=5. Default 3.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            timeout_ms: default_client_timeout_ms(),
            resolve_interval_secs: default_resolve_interval_secs(),
            max_attempts: default_max_attempts(),
        }
    }
}

fn default_client_timeout_ms() -> u64 {
    2000
}

fn default_resolve_interval_secs() -> u64 {
    30
}

fn default_max_attempts() -> u32 {
    3
}

/// `server.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `server.listen_addr`: where gRPC is served. Default `127.0.0.1:50051`.
    pub listen_addr: SocketAddr,
    /// `server.default_timeout_ms`: deadline of calls that send no `grpc-timeout`, and the cap on
    /// those that ask for longer. Default 10000.
    pub default_timeout_ms: u64,
    /// `server.concurrency_limit`: calls served at once across all connections; beyond it calls
    /// are shed with RESOURCE_EXHAUSTED instead of queueing. Default 512.
    pub concurrency_limit: usize,
    /// `server.shutdown_grace_secs`: how long in-flight calls may finish after SIGTERM. Default 20.
    pub shutdown_grace_secs: u64,
    /// `server.max_connection_age_secs`: HTTP/2 connections are closed (gracefully) after this
    /// long, so clients reconnect and new pods receive load. 0 disables. Default 300.
    pub max_connection_age_secs: u64,
    /// `server.page_token_secret`: key that signs page tokens. Defaults to `auth.jwt_secret`.
    pub page_token_secret: Option<SecretString>,
}

/// `database.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `database.url` (or `DATABASE_URL`): PostgreSQL URL. Default
    /// `postgres://postgres@127.0.0.1:5432/crm`.
    pub url: SecretString,
    /// `database.migrate_url`: where `crm migrate` (and `database.migrate_on_start`) connect
    /// instead of `database.url`: an admin that may `SET ROLE` to each schema's owner (with
    /// `CREATEROLE` for `crm migrate --create-roles`), or the owner role itself. Unset or
    /// empty: `database.url`.
    #[serde(default)]
    pub migrate_url: Option<SecretString>,
    /// `database.max_connections`: pool size per service. Default 10.
    pub max_connections: u32,
    /// `database.acquire_timeout_ms`: how long a call waits for a pooled connection before
    /// failing with UNAVAILABLE. Default 2000.
    pub acquire_timeout_ms: u64,
    /// `database.migrate_on_start`: run migrations when serving starts (otherwise `crm migrate`
    /// must have run). Default false.
    pub migrate_on_start: bool,
}

/// `redis.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis.url` (or `REDIS_URL`): Redis URL; empty disables the Redis tier. Default
    /// `redis://127.0.0.1:6379`.
    pub url: SecretString,
    /// `redis.timeout_ms`: per-command timeout; a slower Redis counts as down for that call.
    /// Default 250.
    pub timeout_ms: u64,
    /// `redis.key_prefix`: first part of every key and of the invalidation channel, so several
    /// deployments (or test runs) can share one Redis without seeing each other's entries or
    /// waiting for each other's acknowledgements. 1..=64 characters of `[A-Za-z0-9_-]`.
    /// Default `crm`.
    pub key_prefix: String,
}

/// `cache.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `cache.ttl_secs`: lifetime of a cached entry. Default 300.
    pub ttl_secs: u64,
    /// `cache.ttl_jitter_pct`: each entry's TTL is shortened by a random 0..=N percent so entries
    /// filled together do not expire together. Default 10.
    pub ttl_jitter_pct: u8,
    /// `cache.local_capacity`: entries in the in-process tier per service. 0 disables it.
    /// Default 50000.
    pub local_capacity: u64,
}

/// `auth.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `auth.jwt_secret`: HS256 key for bearer tokens (at least 32 bytes). Unset: a dev key,
    /// with a warning.
    pub jwt_secret: Option<SecretString>,
    /// `auth.issuer`: required `iss` claim. Default `crm-suite`.
    pub issuer: String,
    /// `auth.audience`: required `aud` claim. Default `crm-suite`.
    pub audience: String,
}

/// `telemetry.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `telemetry.log_format`: `json`, `pretty`, or `auto` (pretty on a terminal). Default auto.
    pub log_format: LogFormat,
    /// `telemetry.log_level`: tracing filter directive, e.g. `info,crm_customer=debug`.
    /// `RUST_LOG` overrides it. Default `info`.
    pub log_level: String,
    /// `telemetry.otlp_endpoint`: OTLP/gRPC collector, e.g. `http://otel-collector:4317`. Unset:
    /// traces are not exported.
    pub otlp_endpoint: Option<String>,
    /// `telemetry.sample_ratio`: share of new traces sampled (parent decisions are followed).
    /// Default 1.0.
    pub sample_ratio: f64,
    /// `telemetry.metrics_addr`: where Prometheus metrics are served (`/metrics`); empty
    /// disables. Default `127.0.0.1:9090`.
    pub metrics_addr: Option<String>,
    /// `telemetry.service_name`: `service.name` of exported traces. Default `crm`.
    pub service_name: String,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable, coloured.
    Pretty,
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn key(key: &str, why: impl std::fmt::Display) -> Self {
        Self(format!("{key}: {why}"))
    }
}

const DEFAULTS: &[(&str, &str)] = &[
    ("server.listen_addr", "127.0.0.1:50051"),
    ("server.default_timeout_ms", "10000"),
    ("server.concurrency_limit", "512"),
    ("server.shutdown_grace_secs", "20"),
    ("server.max_connection_age_secs", "300"),
    ("database.url", "postgres://postgres@127.0.0.1:5432/crm"),
    ("database.max_connections", "10"),
    ("database.acquire_timeout_ms", "2000"),
    ("database.migrate_on_start", "false"),
    ("redis.url", "redis://127.0.0.1:6379"),
    ("redis.timeout_ms", "250"),
    ("redis.key_prefix", "crm"),
    ("cache.ttl_secs", "300"),
    ("cache.ttl_jitter_pct", "10"),
    ("cache.local_capacity", "50000"),
    ("auth.issuer", "crm-suite"),
    ("auth.audience", "crm-suite"),
    ("telemetry.log_format", "auto"),
    ("telemetry.log_level", "info"),
    ("telemetry.sample_ratio", "1.0"),
    ("telemetry.metrics_addr", "127.0.0.1:9090"),
    ("telemetry.service_name", "crm"),
];

impl ClientConfig {
    fn validate(&self, service: &str) -> Result<(), ConfigError> {
        let key = |name: &str| format!("clients.{service}.{name}");
        if let Some(endpoint) = &self.endpoint
            && !endpoint.starts_with("http://")
        {
            return Err(ConfigError::key(
                &key("endpoint"),
                "must start with http:// (TLS between services belongs to the mesh)",
            ));
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::key(&key("timeout_ms"), "must be at least 1"));
        }
        if self.resolve_interval_secs == 0 {
            return Err(ConfigError::key(
                &key("resolve_interval_secs"),
                "must be at least 1",
            ));
        }
        if !(1..=5).contains(&self.max_attempts) {
            return Err(ConfigError::key(
                &key("max_attempts"),
                "must be within 1..=5",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Loads the configuration from the defaults, the optional file, and the process
    /// environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads the configuration with an explicit environment, so tests need not touch the
    /// process's.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut builder = config::Config::builder();
        for (key, value) in DEFAULTS {
            builder = builder
                .set_default(*key, *value)
                .map_err(|e| ConfigError::key(key, e))?;
        }
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path).required(true));
        }
        // The conventional names sit below the CRM__ ones: an explicit CRM__DATABASE__URL is the
        // more specific statement of intent.
        let env_value = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        for (conventional, key, specific) in [
            ("DATABASE_URL", "database.url", "CRM__DATABASE__URL"),
            ("REDIS_URL", "redis.url", "CRM__REDIS__URL"),
        ] {
            if let Some(value) = env_value(conventional).filter(|_| env_value(specific).is_none()) {
                builder = builder
                    .set_override(key, value)
                    .map_err(|e| ConfigError::key(key, e))?;
            }
        }
        let crm_env: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("CRM__"))
            .cloned()
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("CRM")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(crm_env)),
        );
        let merged = builder.build().map_err(|e| ConfigError(e.to_string()))?;
        let mut config: Config = merged
            .try_deserialize()
            .map_err(|e| ConfigError(e.to_string()))?;
        if config
            .database
            .migrate_url
            .as_ref()
            .is_some_and(|url| url.expose_secret().is_empty())
        {
            config.database.migrate_url = None;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let db_url = self.database.url.expose_secret();
        if !(db_url.starts_with("postgres://") || db_url.starts_with("postgresql://")) {
            return Err(ConfigError::key(
                "database.url",
                "must start with postgres:// or postgresql://",
            ));
        }
        if let Some(url) = &self.database.migrate_url
            && !(url.expose_secret().starts_with("postgres://")
                || url.expose_secret().starts_with("postgresql://"))
        {
            return Err(ConfigError::key(
                "database.migrate_url",
                "must be empty or start with postgres:// or postgresql://",
            ));
        }
        let redis_url = self.redis.url.expose_secret();
        if !(redis_url.is_empty()
            || redis_url.starts_with("redis://")
            || redis_url.starts_with("rediss://"))
        {
            return Err(ConfigError::key(
                "redis.url",
                "must be empty or start with redis:// or rediss://",
            ));
        }
        let prefix = &self.redis.key_prefix;
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ConfigError::key(
                "redis.key_prefix",
                "must be 1..=64 characters of A-Z, a-z, 0-9, '_' or '-'",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::key(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        if self.server.concurrency_limit == 0 {
            return Err(ConfigError::key(
                "server.concurrency_limit",
                "must be at least 1",
            ));
        }
        if self.server.default_timeout_ms == 0 {
            return Err(ConfigError::key(
                "server.default_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.cache.ttl_jitter_pct > 50 {
            return Err(ConfigError::key(
                "cache.ttl_jitter_pct",
                "must be at most 50",
            ));
        }
        if let Some(secret) = &self.auth.jwt_secret
            && secret.expose_secret().len() < 32
        {
            return Err(ConfigError::key(
                "auth.jwt_secret",
                "must be at least 32 bytes",
            ));
        }
        for (service, client) in &self.clients {
            client.validate(service)?;
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return Err(ConfigError::key(
                "telemetry.sample_ratio",
                "must be within 0.0..=1.0",
            ));
        }
        if let Some(addr) = self.metrics_addr()
            && addr.is_err()
        {
            return Err(ConfigError::key(
                "telemetry.metrics_addr",
                "must be host:port, e.g. 0.0.0.0:9090",
            ));
        }
        Ok(())
    }

    /// The metrics listener, if enabled.
    pub fn metrics_addr(&self) -> Option<Result<SocketAddr, std::net::AddrParseError>> {
        self.telemetry
            .metrics_addr
            .as_deref()
            .filter(|a| !a.is_empty())
            .map(str::parse)
    }

    /// The key that signs and verifies bearer tokens, and whether it is the dev default.
    pub fn jwt_secret(&self) -> (&str, bool) {
        match &self.auth.jwt_secret {
            Some(secret) => (secret.expose_secret(), false),
            None => (DEV_JWT_SECRET, true),
        }
    }

    /// The key that signs page tokens.
    pub fn page_token_secret(&self) -> &str {
        match &self.server.page_token_secret {
            Some(secret) => secret.expose_secret(),
            None => self.jwt_secret().0,
        }
    }

    /// The default call deadline.
    pub fn default_timeout(&self) -> Duration {
        Duration::from_millis(self.server.default_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_listen_on_loopback_50051() {
        let config = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(config.server.listen_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(config.database.max_connections, 10);
        assert!(
            config.jwt_secret().1,
            "no secret configured means the dev secret"
        );
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let config = Config::load_from(
            None,
            env(&[
                ("CRM__SERVER__LISTEN_ADDR", "0.0.0.0:6000"),
                ("CRM__DATABASE__MAX_CONNECTIONS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server.listen_addr.to_string(), "0.0.0.0:6000");
        assert_eq!(config.database.max_connections, 3);
    }

    #[test]
    fn crm_spelling_wins_over_conventional_database_url() {
        let config = Config::load_from(
            None,
            env(&[
                ("DATABASE_URL", "postgres://a@h/conventional"),
                ("CRM__DATABASE__URL", "postgres://a@h/specific"),
            ]),
        )
        .unwrap();
        assert_eq!(
            config.database.url.expose_secret(),
            "postgres://a@h/specific"
        );
    }

    #[test]
    fn migrations_connect_to_database_url_unless_migrate_url_is_set() {
        let unset = Config::load_from(None, env(&[])).unwrap();
        let empty = Config::load_from(None, env(&[("CRM__DATABASE__MIGRATE_URL", "")])).unwrap();
        let set = Config::load_from(
            None,
            env(&[("CRM__DATABASE__MIGRATE_URL", "postgres://admin@h/crm")]),
        )
        .unwrap();
        let bad = Config::load_from(
            None,
            env(&[("CRM__DATABASE__MIGRATE_URL", "mysql://h/crm")]),
        )
        .unwrap_err();

        assert!(unset.database.migrate_url.is_none());
        assert!(empty.database.migrate_url.is_none());
        assert_eq!(
            set.database.migrate_url.unwrap().expose_secret(),
            "postgres://admin@h/crm"
        );
        assert!(bad.to_string().contains("database.migrate_url"), "{bad}");
    }

    #[test]
    fn conventional_redis_url_is_honoured() {
        let config = Config::load_from(None, env(&[("REDIS_URL", "redis://cache:6380")])).unwrap();
        assert_eq!(config.redis.url.expose_secret(), "redis://cache:6380");
    }

    #[test]
    fn client_endpoints_come_from_the_environment() {
        let config = Config::load_from(
            None,
            env(&[(
                "CRM__CLIENTS__CUSTOMER__ENDPOINT",
                "http://crm-customer-headless:50051",
            )]),
        )
        .unwrap();
        assert_eq!(
            config.clients["customer"].endpoint.as_deref(),
            Some("http://crm-customer-headless:50051")
        );
        assert_eq!(config.clients["customer"].timeout_ms, 2000);
        assert_eq!(config.clients["customer"].resolve_interval_secs, 30);
        assert_eq!(config.clients["customer"].max_attempts, 3);
    }

    #[test]
    fn a_client_needs_no_endpoint_to_be_tuned() {
        let config =
            Config::load_from(None, env(&[("CRM__CLIENTS__CUSTOMER__TIMEOUT_MS", "500")])).unwrap();

        assert_eq!(config.clients["customer"].endpoint, None);
        assert_eq!(config.clients["customer"].timeout_ms, 500);
    }

    #[test]
    fn bad_client_keys_are_named() {
        for (var, value, key) in [
            (
                "CRM__CLIENTS__SALES__ENDPOINT",
                "sales:50051",
                "clients.sales.endpoint",
            ),
            (
                "CRM__CLIENTS__SALES__ENDPOINT",
                "https://sales:443",
                "clients.sales.endpoint",
            ),
            (
                "CRM__CLIENTS__SALES__MAX_ATTEMPTS",
                "6",
                "clients.sales.max_attempts",
            ),
            (
                "CRM__CLIENTS__SALES__MAX_ATTEMPTS",
                "0",
                "clients.sales.max_attempts",
            ),
            (
                "CRM__CLIENTS__SALES__TIMEOUT_MS",
                "0",
                "clients.sales.timeout_ms",
            ),
            (
                "CRM__CLIENTS__SALES__RESOLVE_INTERVAL_SECS",
                "0",
                "clients.sales.resolve_interval_secs",
            ),
        ] {
            let err = Config::load_from(None, env(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn a_bad_number_names_its_key() {
        let err = Config::load_from(None, env(&[("CRM__SERVER__CONCURRENCY_LIMIT", "lots")]))
            .unwrap_err();
        assert!(
            err.to_string().contains("server.concurrency_limit"),
            "{err}"
        );
    }

    #[test]
    fn a_redis_key_prefix_with_a_separator_or_space_names_its_key() {
        for bad in ["", "a:b", "has space", &"x".repeat(65)] {
            let err = Config::load_from(None, env(&[("CRM__REDIS__KEY_PREFIX", bad)])).unwrap_err();
            assert!(
                err.to_string().contains("redis.key_prefix"),
                "{bad:?}: {err}"
            );
        }
        let config =
            Config::load_from(None, env(&[("CRM__REDIS__KEY_PREFIX", "staging-2")])).unwrap();
        assert_eq!(config.redis.key_prefix, "staging-2");
    }

    #[test]
    fn a_bad_listen_addr_names_its_key() {
        let err =
            Config::load_from(None, env(&[("CRM__SERVER__LISTEN_ADDR", "nowhere")])).unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn a_short_jwt_secret_is_rejected() {
        let err = Config::load_from(None, env(&[("CRM__AUTH__JWT_SECRET", "short")])).unwrap_err();
        assert!(err.to_string().contains("auth.jwt_secret"), "{err}");
    }

    #[test]
    fn a_file_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("crm-config-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("crm.toml");
        std::fs::write(
            &path,
            "[server]\nconcurrency_limit = 7\nshutdown_grace_secs = 3\n",
        )
        .unwrap();
        let config = Config::load_from(
            Some(&path),
            env(&[("CRM__SERVER__SHUTDOWN_GRACE_SECS", "9")]),
        )
        .unwrap();
        assert_eq!(config.server.concurrency_limit, 7);
        assert_eq!(config.server.shutdown_grace_secs, 9);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unknown_key_in_a_file_is_rejected() {
        let dir = std::env::temp_dir().join(format!("crm-config-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("crm.toml");
        std::fs::write(&path, "[server]\nlisten_adress = \"0.0.0.0:1\"\n").unwrap();
        let err = Config::load_from(Some(&path), env(&[])).unwrap_err();
        assert!(err.to_string().contains("listen_adress"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
