//! The auditor console: one static page compiled into the binary (no build step, no files to
//! deploy). It calls the same API with a key the auditor pastes in (kept in the tab's
//! sessionStorage, never sent anywhere but this server).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The page.
pub const PAGE: &str = include_str!("../console/index.html");

/// `GET /console`.
pub async fn page() -> Response {
    let mut response = PAGE.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page runs only its own inline script and talks only to this server.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        ),
    );
    response
}
