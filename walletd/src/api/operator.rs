//! Operator endpoints: the checks an operator runs with `migrate-tool`, answered by the
//! service that holds the store (the views are the writer's; another process cannot open
//! them while walletd runs). Each answers the same document as the CLI's `--json`, from the
//! same function in `projections`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use projections::{ProjectionError, WalletJson, WalletService};

use crate::api::{blocking, storage, AppState};
use crate::auth::Caller;
use crate::keys::Action;
use crate::problem::Problem;

/// Lines buffered between the store reader and the connection: the export streams with
/// bounded memory whatever the member count, and a slow client slows the reader.
const EXPORT_BUFFER_LINES: usize = 256;

/// The SPEC section 4 report (`migrate-tool check --json`).
#[utoipa::path(get, path = "/v1/check", tag = "operator",
    responses((status = 200, description = "The `check --json` document; `ok` false when an invariant fails", body = serde_json::Value)),
    security(("bearer" = [])))]
pub async fn check(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, Problem> {
    operator_report(&state, caller, |service| {
        Ok(projections::check::report_json(&service.check(&|_| {})?))
    })
    .await
}

/// The pre-deploy gate of this binary's projection code (`migrate-tool gate --json`).
#[utoipa::path(post, path = "/v1/gate", tag = "operator",
    responses((status = 200, description = "The `gate --json` document; `ok` false when the stored views differ from this build's fold", body = serde_json::Value)),
    security(("bearer" = [])))]
pub async fn gate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, Problem> {
    operator_report(&state, caller, |service| {
        let snap = service.ledger().snapshot()?;
        let run = projections::gate::predeploy_report(&*snap)?;
        Ok(projections::gate::predeploy_json(&run))
    })
    .await
}

/// An operator's whole-store report (check, gate): only with the operate scope, computed on a
/// blocking thread (it reads the whole store), a failure to read answered as a storage problem.
async fn operator_report(
    state: &AppState,
    caller: Caller,
    report: impl FnOnce(&WalletService) -> Result<serde_json::Value, ProjectionError> + Send + 'static,
) -> Result<Json<serde_json::Value>, Problem> {
    caller.require(Action::Operate)?;
    let rid = caller.request_id.clone();
    let service = state.service.clone();
    blocking(rid.clone().as_deref(), move || {
        report(&service)
            .map(Json)
            .map_err(|e| storage(rid.as_deref(), e))
    })
    .await
}

/// Every wallet as JSON lines (`migrate-tool export`), streamed.
#[utoipa::path(get, path = "/v1/export", tag = "operator",
    responses((status = 200, description = "application/x-ndjson: one `show --json` line per member with a wallet, sorted by member id", content_type = "application/x-ndjson", body = String)),
    security(("bearer" = [])))]
pub async fn export(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Response, Problem> {
    caller.require(Action::Operate)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(EXPORT_BUFFER_LINES);
    let service = state.service.clone();
    let rid = caller.request_id.clone();
    tokio::task::spawn_blocking(move || {
        let result = service
            .ledger()
            .snapshot()
            .map_err(|e| e.to_string())
            .and_then(|snap| {
                projections::views::for_each_shown(&*snap, &mut |shown| {
                    let mut line = WalletJson::of_shown(&shown).to_line();
                    line.push('\n');
                    tx.blocking_send(Ok(Bytes::from(line))).map_err(|_| {
                        projections::ProjectionError::Fold {
                            reason: "the client went away".into(),
                        }
                    })
                })
                .map_err(|e| e.to_string())
            });
        if let Err(reason) = result {
            // The status line is sent already: the error aborts the body (the connection is
            // cut before the chunked encoding ends), so no client takes a partial export for
            // a whole one.
            tracing::error!(request_id = rid.as_deref(), error = %reason, "the export stopped");
            let _ = tx.blocking_send(Err(std::io::Error::other(reason)));
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (line, rx))
    });
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}
