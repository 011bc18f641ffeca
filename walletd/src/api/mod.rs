//! The handlers and the router. Each handler authenticates ([`Caller`]), checks the scope,
//! parses with the ledger's own parsers (one decoder: the import format's), and answers JSON or
//! a [`Problem`]. Reads whose length depends on the data (a statement page, an as-of fold, a
//! check, the digest) run on the blocking pool, so they never stall the threads serving other
//! requests; a wallet at the head (one member's rows) is read in place, where the hand-off would
//! cost more than the read.

pub mod commands;
pub mod events;
pub mod operator;
pub mod ops;
pub mod reads;
pub mod statement;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use projections::WalletService;
use tokio::sync::watch;

use crate::auth::RateLimiter;
use crate::config::Config;
use crate::keys::Keys;
use crate::problem::{Cause, Problem};

/// What every handler shares.
pub struct AppState {
    /// The embedded service: writer, views, log.
    pub service: WalletService,
    /// The accepted keys.
    pub keys: Keys,
    /// Per-key rate limits.
    pub limiter: RateLimiter,
    /// The resolved configuration.
    pub config: Config,
    /// Becomes true when shutdown starts: event feeds end, readiness fails.
    pub shutdown: watch::Receiver<bool>,
    /// The log's tail, encoded once for every live event feed.
    pub tail: Arc<crate::feed::Tail>,
    /// The Prometheus text renderer.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// The routes. Streams (the event feed, the export) are not under the request timeout: they
/// last as long as the client reads.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = state.config.request_timeout;
    let timed = Router::new()
        .route("/v1/commands", post(commands::submit))
        .route("/v1/members/{member}/wallet", get(reads::wallet))
        .route("/v1/members/{member}/statement", get(statement::statement))
        .route("/v1/digest", get(reads::digest))
        .route("/v1/head", get(reads::head))
        .route("/v1/check", get(operator::check))
        .route("/v1/gate", post(operator::gate))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/console", get(crate::console::page))
        .route("/console/", get(crate::console::page))
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(timed_out))
                .layer(tower::timeout::TimeoutLayer::new(timeout)),
        );
    let streams = Router::new()
        .route("/v1/events", get(events::feed))
        .route("/v1/export", get(operator::export));
    timed
        .merge(streams)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The answer when a request outlasts the request timeout (the only error the timeout layer
/// makes). A command that timed out may still be applied: retry it with the same key.
async fn timed_out(headers: axum::http::HeaderMap, error: tower::BoxError) -> Problem {
    Problem::new(
        Cause::Timeout,
        format!(
            "the request did not finish within the request timeout ({error}); a command may still be applied: send it again with the same Idempotency-Key to learn its outcome"
        ),
    )
    .at(request_id(&headers))
    .retry_after(1)
}

async fn not_found(uri: axum::http::Uri, headers: axum::http::HeaderMap) -> Problem {
    Problem::new(Cause::NotFound, format!("no route {}", uri.path())).at(request_id(&headers))
}

async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Problem {
    Problem::new(
        Cause::MethodNotAllowed,
        format!("{} does not answer {method}", uri.path()),
    )
    .at(request_id(&headers))
}

fn request_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(crate::auth::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
}

/// Runs a store read on the blocking pool; a panic or a cancelled task is a storage problem.
pub async fn blocking<T: Send + 'static>(
    request_id: Option<&str>,
    work: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        tracing::error!(error = %e, "a blocking read failed");
        Problem::new(Cause::Storage, format!("the read failed: {e}")).at(request_id)
    })?
}

/// A storage error: logged with the request id, answered 500 with the message.
pub fn storage(request_id: Option<&str>, error: impl std::fmt::Display) -> Problem {
    tracing::error!(request_id, error = %error, "storage failure");
    Problem::new(Cause::Storage, error.to_string()).at(request_id)
}
