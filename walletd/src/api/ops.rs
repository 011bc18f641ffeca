//! Health, readiness, metrics and the OpenAPI document: no key needed (a load balancer and a
//! Prometheus scraper hold none; bind walletd to a private address or filter these paths at
//! the proxy if they must not be public).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::api::AppState;

/// 200 while the process serves.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = serde_json::Value)))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// 200 while the store is open, the writer alive and no shutdown has begun; else 503.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, body = serde_json::Value), (status = 503, body = serde_json::Value)))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.service.ledger().stats();
    let stopping = *state.shutdown.borrow();
    let ready = stats.writer_alive && !stopping;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "writer_alive": stats.writer_alive,
        "shutting_down": stopping,
        "head": state.service.ledger().head().position.0,
    });
    (status, Json(body)).into_response()
}

/// Prometheus text: the HTTP layer's counters and histograms, then the writer's.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut text = state.metrics.render();
    crate::telemetry::render_writer(&state.service.ledger().stats(), &mut text);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// The OpenAPI 3.1 document, generated from the handlers.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::document())
}
