//! `GET /v1/members/{m}/statement`: a member's wallet events with the running balance, a page
//! at a time, by opaque cursor (never offsets: a statement that grows between pages must not
//! shift them).
//!
//! The cursor carries where the next page starts, the stream version and the balance before
//! it, so a page costs its own lines, not the history before it (a member with a million
//! events pages as fast at the end as at the start). Because the client hands the balance back,
//! the cursor is sealed with a keyed BLAKE3 tag over the member, version and balance (key:
//! `cursor_secret` of the key file): a changed or foreign cursor is refused, so the server never
//! prints a running balance it did not compute.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use ledger::domain::MemberId;
use ledger::StreamVersion;
use projections::statement::{StatementLine, StatementStart};
use serde::Serialize;

use crate::api::reads::member;
use crate::api::{blocking, storage, AppState};
use crate::auth::Caller;
use crate::keys::Action;
use crate::problem::{Cause, Problem};

/// Lines per page when the client does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// Most lines per page: bounds the memory and time of one request.
pub const MAX_LIMIT: usize = 1_000;
/// Bytes of the cursor's tag.
const TAG_BYTES: usize = 16;

/// One statement line.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Line {
    /// Log position of the event.
    pub position: u64,
    /// Business time (RFC 3339).
    pub at: String,
    /// Event type, e.g. `wallet.paid`.
    pub event_type: String,
    /// The command that wrote it.
    pub command_id: String,
    /// Change of the balance in yen.
    pub delta_yen: i64,
    /// Balance after the event, in yen.
    pub balance_yen: u64,
}

/// A page of a statement.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatementDocument {
    /// The member.
    pub member: String,
    /// The lines, in stream order.
    pub lines: Vec<Line>,
    /// Pass as `cursor` for the next page; `null` at the end (for now: later events get a
    /// cursor again from the last page's).
    pub next_cursor: Option<String>,
}

/// A page of the member's statement.
#[utoipa::path(
    get, path = "/v1/members/{member}/statement", tag = "reads",
    params(
        ("member" = String, Path, description = "Member id"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page; absent: the first page"),
        ("limit" = Option<usize>, Query, description = "Lines per page, 1-1000 (default 100)"),
    ),
    responses(
        (status = 200, body = StatementDocument),
        (status = 400, description = "Bad cursor or limit", body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "The member has no wallet", body = crate::problem::ProblemDocument, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn statement(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(member_text): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<StatementDocument>, Problem> {
    let member = member(&caller, &member_text)?;
    caller.require(Action::ReadMember(&member))?;
    if let Some(unknown) = query.keys().find(|k| *k != "cursor" && *k != "limit") {
        return Err(caller.problem(
            Cause::Malformed,
            format!(
                "unknown query parameter `{unknown}` (this endpoint takes `cursor` and `limit`)"
            ),
        ));
    }
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                caller.problem(
                    Cause::Malformed,
                    format!("query limit `{text}`: must be a whole number from 1 to {MAX_LIMIT}"),
                )
            })?,
    };
    let secret = *state.keys.cursor_secret();
    let start = match query.get("cursor") {
        None => StatementStart::BEGIN,
        Some(text) => open_cursor(&secret, &member, text).ok_or_else(|| {
            caller.problem(
                Cause::Malformed,
                format!("query cursor: not a cursor this server issued for member {member}"),
            )
        })?,
    };
    let rid = caller.request_id.clone();
    let service = state.service.clone();
    let page = blocking(rid.clone().as_deref(), {
        let member = member.clone();
        move || {
            service
                .statement_page(&member, start, limit)
                .map_err(|e| storage(rid.as_deref(), e))
        }
    })
    .await?;
    if start == StatementStart::BEGIN && page.lines.is_empty() {
        return Err(caller.problem(Cause::NotFound, format!("member {member} has no wallet")));
    }
    Ok(Json(StatementDocument {
        member: member.to_string(),
        lines: page.lines.into_iter().map(line).collect(),
        next_cursor: page.next.map(|next| seal_cursor(&secret, &member, next)),
    }))
}

fn line(l: StatementLine) -> Line {
    Line {
        position: l.position,
        at: l.at.to_rfc3339(),
        event_type: l.event_type,
        command_id: l.command_id,
        // A delta is at most one command's amount (<= 10^8 yen) or a transfer: far inside i64.
        delta_yen: i64::try_from(l.delta_yen).unwrap_or(i64::MAX),
        balance_yen: l.balance_yen,
    }
}

fn tag(secret: &[u8; 32], member: &MemberId, version: u64, balance: u64) -> [u8; TAG_BYTES] {
    let mut hasher = blake3::Hasher::new_keyed(secret);
    hasher.update(b"walletd statement cursor v1\0");
    hasher.update(member.as_str().as_bytes());
    hasher.update(&[0]);
    hasher.update(&version.to_le_bytes());
    hasher.update(&balance.to_le_bytes());
    let mut out = [0u8; TAG_BYTES];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..TAG_BYTES]);
    out
}

/// `<version>.<balance>.<tag hex>`: opaque to clients, readable in a log.
fn seal_cursor(secret: &[u8; 32], member: &MemberId, start: StatementStart) -> String {
    let version = start.version.0;
    let balance = start.opening_balance_yen;
    let tag: String = tag(secret, member, version, balance)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{version}.{balance}.{tag}")
}

fn open_cursor(secret: &[u8; 32], member: &MemberId, text: &str) -> Option<StatementStart> {
    let mut parts = text.split('.');
    let version: u64 = parts.next()?.parse().ok()?;
    let balance: u64 = parts.next()?.parse().ok()?;
    let tag_hex = parts.next()?;
    if parts.next().is_some() || version == 0 || tag_hex.len() != TAG_BYTES * 2 {
        return None;
    }
    let expected = tag(secret, member, version, balance);
    let mut given = [0u8; TAG_BYTES];
    for (i, byte) in given.iter_mut().enumerate() {
        *byte = u8::from_str_radix(tag_hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    // Constant-time compare: the tag must not be guessable byte by byte from response times.
    let differs = expected
        .iter()
        .zip(given.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    (differs == 0).then_some(StatementStart {
        version: StreamVersion(version),
        opening_balance_yen: balance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves a sealed cursor opens for its member only, and that changing any part (the
    // balance above all) or using another secret is refused.
    #[test]
    fn a_cursor_opens_only_unchanged_for_its_member_and_secret() {
        let secret = [7u8; 32];
        let m1 = MemberId::new("m1").expect("valid");
        let m2 = MemberId::new("m2").expect("valid");
        let start = StatementStart {
            version: StreamVersion(42),
            opening_balance_yen: 5_000,
        };
        let cursor = seal_cursor(&secret, &m1, start);
        assert_eq!(open_cursor(&secret, &m1, &cursor), Some(start));
        assert_eq!(open_cursor(&secret, &m2, &cursor), None);
        assert_eq!(open_cursor(&[8u8; 32], &m1, &cursor), None);
        let forged = cursor.replacen(".5000.", ".9999999.", 1);
        assert_ne!(forged, cursor);
        assert_eq!(open_cursor(&secret, &m1, &forged), None);
        assert_eq!(open_cursor(&secret, &m1, "1.2"), None);
        assert_eq!(open_cursor(&secret, &m1, ""), None);
    }
}
