//! What the platform's integration tests share: the test kit (`crm_platform::testing`) and the
//! process's metrics recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub use crm_platform::testing::{
    Outage, admin_url, config_from as config, eventually, fresh_database, pool, redis_addr,
    redis_connection, redis_url, unique_prefix, within,
};

/// The process's Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("installing the metrics recorder")
    })
}

/// The sum of every series of the counter `name` whose labels include all of `labels`
/// (`key="value"` strings).
pub fn counter(name: &str, labels: &[&str]) -> u64 {
    metrics()
        .render()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|l| rest.contains(l)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum::<f64>() as u64
}
