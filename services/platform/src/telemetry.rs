//! Logs, traces and metrics.
//!
//! `tracing` writes logs (JSON or pretty); when `telemetry.otlp_endpoint` is set, spans are also
//! exported over OTLP/gRPC with a parent-based sampler; W3C trace context is the propagator for
//! incoming and outgoing calls; Prometheus metrics are served over HTTP on
//! `telemetry.metrics_addr`.

use std::io::IsTerminal;

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{Config, LogFormat};

/// Latency buckets in seconds: fine-grained below 10 ms where healthy calls sit, coarse above.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Keeps exporters alive; [`TelemetryGuard::shutdown`] flushes pending spans.
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Flushes and stops the trace exporter. Called last during shutdown.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(err) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {err}");
        }
    }
}

/// Sets up logging, tracing export and the metrics endpoint for the process. Call once, inside
/// the tokio runtime.
pub fn init(config: &Config) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.telemetry.log_level))
        .context("telemetry.log_level is not a valid filter directive")?;
    let pretty = match config.telemetry.log_format {
        LogFormat::Pretty => true,
        LogFormat::Json => false,
        LogFormat::Auto => std::io::stderr().is_terminal(),
    };
    let fmt_layer = if pretty {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    };

    let mut tracer_provider = None;
    let otel_layer = match config
        .telemetry
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.is_empty())
    {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .context("telemetry.otlp_endpoint: cannot build the OTLP exporter")?;
            let resource = Resource::builder()
                .with_service_name(config.telemetry.service_name.clone())
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    config.telemetry.sample_ratio,
                ))))
                .with_resource(resource)
                .build();
            let tracer = provider.tracer("crm");
            opentelemetry::global::set_tracer_provider(provider.clone());
            tracer_provider = Some(provider);
            Some(tracing_opentelemetry::layer().with_tracer(tracer))
        }
        None => None,
    };

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .context("a global tracing subscriber was already installed")?;

    if let Some(addr) = config.metrics_addr() {
        let addr = addr.context("telemetry.metrics_addr")?;
        PrometheusBuilder::new()
            .with_http_listener(addr)
            .set_buckets_for_metric(Matcher::Suffix("seconds".into()), LATENCY_BUCKETS)
            .context("latency buckets")?
            .install()
            .with_context(|| format!("telemetry.metrics_addr: cannot serve metrics on {addr}"))?;
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    }
    Ok(TelemetryGuard { tracer_provider })
}
