//! Every error answer: an RFC 9457 `application/problem+json` document with a stable `type`
//! per cause, so a client in any language branches on `type` (never on the wording of
//! `detail`), and an `instance` naming the request id that every log line of the request carries.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Where the problem types live; `type` is this plus the cause.
pub const TYPE_BASE: &str = "https://wallet-ledger.dev/problems/";

/// The causes, each with its status and title. The names are part of the API: never renamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Bad JSON, unknown type or field, wrong JSON type, out of range, a bad header or query.
    Malformed,
    /// No key, or a key that is not ours.
    Unauthorized,
    /// A valid key outside its scope.
    Forbidden,
    /// Unknown member, no wallet, no such route.
    NotFound,
    /// The method is not one the route answers.
    MethodNotAllowed,
    /// The body is over the limit.
    BodyTooLarge,
    /// A rule of SPEC section 2 refused the command.
    Rejected,
    /// The idempotency key was used for another command.
    IdReused,
    /// The key's rate limit is spent.
    RateLimited,
    /// Storage failed; logged with the request id.
    Storage,
    /// The writer's queue is full; retry after the given seconds.
    Busy,
    /// The commit's fdatasync failed: the command may or may not be durable; retry with the
    /// same idempotency key to settle it.
    OutcomeUnknown,
    /// The request took longer than the request timeout.
    Timeout,
    /// The store is closed or the server is shutting down.
    Unavailable,
}

impl Cause {
    /// Status, the `type` suffix, and the title.
    pub fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Cause::Malformed => (StatusCode::BAD_REQUEST, "malformed", "Malformed request"),
            Cause::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Missing or unknown API key",
            ),
            Cause::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Outside the key's scope",
            ),
            Cause::NotFound => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            Cause::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Cause::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
            ),
            Cause::Rejected => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "rejected",
                "Command rejected by a rule",
            ),
            Cause::IdReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "id-reused",
                "Idempotency key used for a different command",
            ),
            Cause::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Rate limit exceeded",
            ),
            Cause::Storage => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage",
                "Storage failure",
            ),
            Cause::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy", "Writer queue full"),
            Cause::OutcomeUnknown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome-unknown",
                "Outcome unknown: retry with the same Idempotency-Key",
            ),
            Cause::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "Request timed out",
            ),
            Cause::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
        }
    }
}

/// An error answer.
#[derive(Clone, Debug)]
pub struct Problem {
    /// Why.
    pub cause: Cause,
    /// The specific message (the SPEC's message for a rule or a bad field).
    pub detail: String,
    /// The request id, when known.
    pub instance: Option<String>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after_secs: Option<u64>,
    /// The rule that refused, for `rejected` (a stable label, see `Rejection::kind`).
    pub rule: Option<&'static str>,
}

/// The document's fields, in RFC 9457 order; `rule` is our extension member.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProblemDocument {
    /// `https://wallet-ledger.dev/problems/<cause>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// A short summary of the cause.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What exactly went wrong, naming the field or rule and the value.
    pub detail: String,
    /// The request id (also in the `X-Request-Id` header and every log line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// For `rejected`: the rule, e.g. `insufficient_balance`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl Problem {
    /// A problem of `cause` with `detail`.
    pub fn new(cause: Cause, detail: impl Into<String>) -> Problem {
        Problem {
            cause,
            detail: detail.into(),
            instance: None,
            retry_after_secs: None,
            rule: None,
        }
    }

    /// Names the request.
    pub fn at(mut self, request_id: Option<&str>) -> Problem {
        self.instance = request_id.map(str::to_owned);
        self
    }

    /// Adds `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Problem {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The document.
    pub fn document(&self) -> ProblemDocument {
        let (status, suffix, title) = self.cause.parts();
        ProblemDocument {
            type_uri: format!("{TYPE_BASE}{suffix}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: self.detail.clone(),
            instance: self.instance.clone(),
            rule: self.rule.map(str::to_owned),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let (status, _, _) = self.cause.parts();
        let body = serde_json::to_vec(&self.document())
            .expect("a problem document holds only strings and integers");
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(self.cause);
        response
    }
}
