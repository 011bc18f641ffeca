//! Reads: a member's wallet (at the head from the views, or as of a moment folded from the
//! log), the digest and the head. Wallet reads check the view rows against the member hash
//! (a damaged view is a 500, never an answer).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use ledger::domain::MemberId;
use projections::{AsOf, WalletJson};
use serde::Serialize;

use crate::api::{blocking, storage, AppState};
use crate::auth::Caller;
use crate::keys::Action;
use crate::problem::{Cause, Problem};

/// A member id from the path, or 400 naming the rule.
pub fn member(caller: &Caller, text: &str) -> Result<MemberId, Problem> {
    MemberId::new(text).map_err(|e| caller.problem(Cause::Malformed, format!("member id {e}")))
}

/// The member's wallet in the `show --json` shape.
#[utoipa::path(
    get, path = "/v1/members/{member}/wallet", tag = "reads",
    params(
        ("member" = String, Path, description = "Member id"),
        ("as_of" = Option<String>, Query, description = "RFC 3339 business time, or @N (log position); default: the head"),
    ),
    responses(
        (status = 200, description = "The wallet: {member, balance, miles, badges, coupons{active, redeemed, expired}, held, holds}", body = serde_json::Value),
        (status = 404, description = "The member has no wallet", body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn wallet(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(member_text): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<WalletJson>, Problem> {
    let member = member(&caller, &member_text)?;
    caller.require(Action::ReadMember(&member))?;
    let as_of = match query.get("as_of") {
        None => AsOf::Head,
        Some(text) => AsOf::parse(text)
            .map_err(|e| caller.problem(Cause::Malformed, format!("query as_of: {e}")))?,
    };
    if let Some(unknown) = query.keys().find(|k| *k != "as_of") {
        return Err(caller.problem(
            Cause::Malformed,
            format!("unknown query parameter `{unknown}` (this endpoint takes `as_of`)"),
        ));
    }
    let rid = caller.request_id.clone();
    let found = match as_of {
        // At the head: one member's view rows, a few B-tree pages that are in the page cache
        // while the service runs, read in tens of microseconds. Read here, not on the blocking
        // pool: the hand-off (a thread woken, then this task woken back) cost more than the
        // read itself and kept `GET wallet` at about half its rate (BENCHMARKS.md, issue 14).
        AsOf::Head => state
            .service
            .wallet(&member)
            .map_err(|e| storage(rid.as_deref(), e))?,
        // As of a moment: a fold of the member's log, as long as its history; off the threads
        // serving other requests.
        other => {
            let service = state.service.clone();
            let member = member.clone();
            let rid2 = rid.clone();
            blocking(rid.as_deref(), move || {
                service
                    .wallet_as_of(&member, other)
                    .map_err(|e| storage(rid2.as_deref(), e))
            })
            .await?
        }
    };
    match found {
        Some(state) => Ok(Json(WalletJson::of(&state))),
        None => Err(caller.problem(Cause::NotFound, format!("member {member} has no wallet"))),
    }
}

/// The digest over every member's wallet, with the head it was taken at.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DigestDocument {
    /// Hex BLAKE3 root (SPEC section 1), as `migrate-tool digest` prints it.
    pub digest: String,
    /// Log position the digest covers.
    pub head: u64,
}

/// The digest of the stored views.
#[utoipa::path(get, path = "/v1/digest", tag = "reads",
    responses((status = 200, body = DigestDocument)), security(("bearer" = [])))]
pub async fn digest(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<DigestDocument>, Problem> {
    caller.require(Action::ReadSummary)?;
    let rid = caller.request_id.clone();
    let service = state.service.clone();
    blocking(rid.clone().as_deref(), move || {
        let fail = |e: &dyn std::fmt::Display| storage(rid.as_deref(), e);
        let snap = service.ledger().snapshot().map_err(|e| fail(&e))?;
        let head = ledger::log::read_head(&*snap).map_err(|e| fail(&e))?.0;
        let digest = projections::digest::stored_digest(&*snap).map_err(|e| fail(&e))?;
        Ok(Json(DigestDocument {
            digest: digest.to_hex(),
            head: head.position.0,
        }))
    })
    .await
}

/// The log head, as `migrate-tool head` prints it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct HeadDocument {
    /// Position of the last durable event (0 for an empty log).
    pub position: u64,
    /// Its hash (hex).
    pub hash: String,
    /// `POSITION:HASH`, the anchor `migrate-tool verify --since` takes.
    pub anchor: String,
}

/// The log head.
#[utoipa::path(get, path = "/v1/head", tag = "reads",
    responses((status = 200, body = HeadDocument)), security(("bearer" = [])))]
pub async fn head(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<HeadDocument>, Problem> {
    caller.require(Action::ReadSummary)?;
    let head = state.service.ledger().head();
    let hash = head.hash.to_hex();
    Ok(Json(HeadDocument {
        position: head.position.0,
        anchor: format!("{}:{hash}", head.position.0),
        hash,
    }))
}
