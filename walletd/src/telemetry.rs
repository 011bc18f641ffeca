//! Logs and metrics.
//!
//! Logs: `tracing`, JSON lines when stderr is not a terminal (a log shipper parses them), text
//! otherwise; every line of a request carries its `request_id` (the span's field), the same id
//! the response's `X-Request-Id` and any problem document's `instance` carry.
//!
//! Metrics: the HTTP layer counts requests by route and status and times them (Prometheus
//! histograms); the writer's own figures (group-commit sizes, fsync time, queue depth) come
//! from [`ledger::WriterStats`] at scrape time, rendered here, so the ledger needs no metrics
//! dependency.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of the request latency histogram, in seconds: from a cached read to a long check.
const LATENCY_BUCKETS_SECONDS: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    4.096,
];

/// Starts the log output. Safe to call more than once (later calls change nothing).
pub fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// The process's Prometheus recorder (one per process: the `metrics` macros write to a global).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("walletd_http_request_duration_seconds".into()),
                    &LATENCY_BUCKETS_SECONDS,
                )
                .expect("the bucket list is non-empty")
                .install_recorder()
                .expect("walletd installs the only metrics recorder of its process")
        })
        .clone()
}

/// Counts and times every routed request by method, route template and status.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("walletd_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("walletd_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Appends the writer's figures in Prometheus text format.
pub fn render_writer(stats: &ledger::WriterStats, out: &mut String) {
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        "walletd_writer_groups_total",
        "Group commits the writer ran, each a batch of jobs from its queue; a group of only duplicates or refusals writes no frame and syncs nothing (see walletd_writer_fsync_seconds).",
        stats.groups,
    );
    counter(
        "walletd_writer_commands_total",
        "Commands decided by the writer.",
        stats.commands,
    );
    counter(
        "walletd_writer_events_total",
        "Events written.",
        stats.events,
    );
    histogram(
        out,
        "walletd_writer_group_size",
        "Jobs (commands and appends) per group commit.",
        &stats
            .group_size_buckets
            .map(|(bound, count)| (bound as f64, count)),
        (stats.commands + stats.appends) as f64,
        stats.groups,
    );
    histogram(
        out,
        "walletd_writer_fsync_seconds",
        "Duration of the event log's fdatasync per frame.",
        &stats
            .fsync_nanos_buckets
            .map(|(bound, count)| (bound as f64 / 1e9, count)),
        stats.fsync_seconds_total(),
        stats.fsync_count,
    );
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "walletd_writer_queue_depth",
        "Jobs waiting for the writer.",
        stats.queue_depth,
    );
    gauge(
        "walletd_writer_queue_capacity",
        "Jobs the writer's queue holds before commands get 503 busy.",
        stats.queue_capacity,
    );
    gauge(
        "walletd_writer_alive",
        "1 while the writer accepts work.",
        u64::from(stats.writer_alive),
    );
}

/// A Prometheus histogram from cumulative `(upper bound, count)` buckets.
fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    buckets: &[(f64, u64)],
    sum: f64,
    count: u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, cumulative) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
}
