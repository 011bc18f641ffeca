//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and
//! the response types' schemas, so it cannot drift from the code that answers.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "walletd",
        description = "The wallet ledger's core service: commands with idempotency keys, wallets, statements, the live event feed, and the operator checks. Errors are RFC 9457 problem documents. See docs/walletd.md.",
    ),
    paths(
        api::commands::submit,
        api::reads::wallet,
        api::statement::statement,
        api::reads::digest,
        api::reads::head,
        api::events::feed,
        api::operator::check,
        api::operator::export,
        api::operator::gate,
        api::ops::healthz,
        api::ops::readyz,
        api::ops::metrics,
    ),
    components(schemas(crate::problem::ProblemDocument)),
    modifiers(&BearerKeys),
)]
struct ApiDoc;

struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key made by `walletd keys add`"))
                    .build(),
            ),
        );
    }
}

/// The document served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the document is OpenAPI 3.1 and lists every API route the router serves (a
    // handler added without its annotation would be missing here), each keyed route with the
    // bearer security requirement.
    #[test]
    fn the_document_is_openapi_3_1_and_lists_every_route() {
        let doc = serde_json::to_value(document()).expect("serializes");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        for (path, method, keyed) in [
            ("/v1/commands", "post", true),
            ("/v1/members/{member}/wallet", "get", true),
            ("/v1/members/{member}/statement", "get", true),
            ("/v1/digest", "get", true),
            ("/v1/head", "get", true),
            ("/v1/events", "get", true),
            ("/v1/check", "get", true),
            ("/v1/export", "get", true),
            ("/v1/gate", "post", true),
            ("/healthz", "get", false),
            ("/readyz", "get", false),
            ("/metrics", "get", false),
        ] {
            let op = &paths[path][method];
            assert!(op.is_object(), "{method} {path} missing from the document");
            assert_eq!(op["security"].is_array(), keyed, "{method} {path} security");
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        assert!(doc["components"]["schemas"]["ProblemDocument"].is_object());
        assert!(doc["components"]["schemas"]["CommandAccepted"].is_object());
    }
}
