//! `POST /v1/commands`: one SPEC section 2 command per request; the `Idempotency-Key` header is
//! its id, scoped by the key's owner (`<owner>:<Idempotency-Key>`), so two clients can never
//! collide and a retry after a timeout or a crash is answered, never applied twice.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ledger::domain::{Command, CommandBody, CommandId, Rejection};
use ledger::AppendError;
use projections::SubmitError;
use serde::Serialize;

use crate::api::AppState;
use crate::auth::Caller;
use crate::keys::Action;
use crate::problem::{Cause, Problem};

/// The header carrying the client's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header marking a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// Longest idempotency key: with the owner name (48) and `:` it fits a 128-character id.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 64;

/// What a command did.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CommandAccepted {
    /// The ledger's command id: `<key name>:<Idempotency-Key>`.
    pub id: String,
    /// The command type.
    #[serde(rename = "type")]
    pub command_type: String,
    /// Log position of its first event.
    pub first_position: u64,
    /// Log position of its last event (`first_position - 1` when it wrote none).
    pub last_position: u64,
    /// Number of events.
    pub events: u32,
    /// True when this key was applied before with the same body: nothing was written now, and
    /// the positions are the original ones.
    pub duplicate: bool,
}

/// Applies one command.
#[utoipa::path(
    post, path = "/v1/commands", tag = "commands",
    params(("Idempotency-Key" = String, Header, description = "1-64 characters [A-Za-z0-9._-]; becomes the command id `<key name>:<key>`")),
    request_body(content = serde_json::Value, description = "A SPEC section 2 command without `id`, e.g. {\"type\":\"top_up\",\"member\":\"m1\",\"amount\":5000}"),
    responses(
        (status = 200, description = "Applied (or replayed: header Idempotent-Replayed: true)", body = CommandAccepted),
        (status = 400, description = "Malformed", body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown key", body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "Outside the key's scope", body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "Unknown member", body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "Rejected by a rule, or the key was used for another command", body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "Writer queue full, or outcome unknown", body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let key = idempotency_key(&caller, &headers)?;
    let id = CommandId::new(format!("{}:{key}", caller.principal.name))
        .map_err(|e| caller.problem(Cause::Malformed, format!("Idempotency-Key: {e}")))?;
    let limit = state.config.body_limit_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        caller.problem(
            Cause::BodyTooLarge,
            format!("the request body is over the limit of {limit} bytes"),
        )
    })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| caller.problem(Cause::Malformed, format!("the body is not UTF-8: {e}")))?;
    // The ledger's parser words this for an import line ("empty line"); a request has a body.
    if text.trim().is_empty() {
        return Err(caller.problem(
            Cause::Malformed,
            "the request body is empty: send one command as a JSON object",
        ));
    }
    let mut command = Command::parse_request_body(text, &id).map_err(|e| {
        metrics::counter!("walletd_commands_rejected_total", "reason" => "malformed").increment(1);
        caller.problem(Cause::Malformed, e.to_string())
    })?;
    caller.require(Action::Command(&command.body))?;
    scope_references(&caller, &mut command)?;
    let command_type = command.body.type_name();
    match state.service.try_submit(&command).await {
        Ok(submitted) => {
            let outcome = submitted.outcome;
            let accepted = CommandAccepted {
                id: id.as_str().to_owned(),
                command_type: command_type.to_owned(),
                first_position: outcome.first_position.0,
                last_position: outcome.last_position().0,
                events: outcome.count,
                duplicate: submitted.duplicate,
            };
            metrics::counter!("walletd_commands_total", "type" => command_type, "duplicate" => if submitted.duplicate { "true" } else { "false" }).increment(1);
            let mut response = Json(accepted).into_response();
            if submitted.duplicate {
                response
                    .headers_mut()
                    .insert(REPLAYED, HeaderValue::from_static("true"));
            }
            Ok(response)
        }
        Err(e) => Err(refusal(&caller, e)),
    }
}

/// The `Idempotency-Key` header, checked: required, 1-64 characters of `[A-Za-z0-9._-]` (no
/// `:`, which separates the owner in the command id).
fn idempotency_key(caller: &Caller, headers: &HeaderMap) -> Result<String, Problem> {
    let value = headers.get(IDEMPOTENCY_KEY).ok_or_else(|| {
        caller.problem(
            Cause::Malformed,
            "missing Idempotency-Key header: every command needs one (it becomes the command id)",
        )
    })?;
    let key = value.to_str().unwrap_or("");
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS || !key.chars().all(ok) {
        return Err(caller.problem(
            Cause::Malformed,
            format!(
                "Idempotency-Key {:?}: must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} characters of [A-Za-z0-9._-]",
                String::from_utf8_lossy(value.as_bytes())
            ),
        ));
    }
    Ok(key.to_owned())
}

/// Ids a body refers to are the caller's own idempotency keys, scoped like the command's id; a
/// value with `:` is a full command id (another owner's command, as statements show it).
fn scope_references(caller: &Caller, command: &mut Command) -> Result<(), Problem> {
    if let CommandBody::Refund { payment, .. } = &mut command.body {
        if !payment.as_str().contains(':') {
            *payment = CommandId::new(format!("{}:{}", caller.principal.name, payment.as_str()))
                .map_err(|e| caller.problem(Cause::Malformed, format!("field \"payment\": {e}")))?;
        }
    }
    Ok(())
}

/// The problem for a refused command, counted by reason.
fn refusal(caller: &Caller, error: SubmitError) -> Problem {
    let (problem, reason) = match error {
        SubmitError::Rejected(rejection) => {
            let kind = rejection.kind();
            let cause = match rejection {
                Rejection::NoWallet { .. } | Rejection::NotRegistered { .. } => Cause::NotFound,
                Rejection::Unreadable { .. } => {
                    return crate::api::storage(caller.request_id.as_deref(), rejection)
                }
                _ => Cause::Rejected,
            };
            let mut problem = caller.problem(cause, rejection.to_string());
            problem.rule = Some(kind);
            (problem, kind)
        }
        SubmitError::IdReused { id } => (
            caller.problem(
                Cause::IdReused,
                format!("id {id} already used for a different command"),
            ),
            "id_reused",
        ),
        SubmitError::Ledger(AppendError::OutcomeUnknown { reason }) => (
            caller.problem(Cause::OutcomeUnknown, reason),
            "outcome_unknown",
        ),
        SubmitError::Ledger(AppendError::Invalid { field, reason }) => (
            caller.problem(Cause::Malformed, format!("field \"{field}\": {reason}")),
            "malformed",
        ),
        SubmitError::Ledger(e @ AppendError::Busy { .. }) => (
            caller.problem(Cause::Busy, e.to_string()).retry_after(1),
            "busy",
        ),
        SubmitError::Ledger(AppendError::Closed) => (
            caller.problem(Cause::Unavailable, "the store is closed"),
            "closed",
        ),
        other => {
            return crate::api::storage(caller.request_id.as_deref(), other);
        }
    };
    metrics::counter!("walletd_commands_rejected_total", "reason" => reason).increment(1);
    problem
}
