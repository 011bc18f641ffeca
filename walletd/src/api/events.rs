//! `GET /v1/events`: the log as server-sent events, catch-up then live.
//!
//! Each SSE `id` is the event's log position, so a client that reconnects with
//! `Last-Event-ID: P` resumes at P + 1: positions have no gaps and the feed reads the durable
//! log by position (catching up itself, then from the shared tail, [`crate::feed`]), so it
//! never skips or repeats an event and never shows one that is not durable. The feed ends when the server shuts down (the client
//! reconnects elsewhere with its last id).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use ledger::Position;
use tokio::sync::watch;

use crate::api::AppState;
use crate::auth::Caller;
use crate::keys::Action;
use crate::problem::{Cause, Problem};

/// How often an idle feed sends a comment, so proxies and clients see it alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The live event feed.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(
        ("from" = Option<u64>, Query, description = "First log position (default 1)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this position (wins over `from`)"),
    ),
    responses((status = 200, description = "text/event-stream: `id` = position, `event` = event type, `data` = the event as `log --json` shows it", content_type = "text/event-stream", body = String)),
    security(("bearer" = []))
)]
pub async fn feed(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    caller.require(Action::ReadEvents)?;
    let from = start(&caller, &headers, &query)?;
    let subscriber = state.tail.subscriber(state.service.ledger().clone(), from);
    let shutdown = state.shutdown.clone();
    metrics::gauge!("walletd_event_subscribers").increment(1.0);
    let events = stream::unfold(
        Some((subscriber, shutdown, Counted)),
        |current| async move {
            let (mut subscriber, mut shutdown, guard) = current?;
            if *shutdown.borrow() {
                return None;
            }
            let next = tokio::select! {
                next = subscriber.next() => Some(next),
                _ = wait_for_shutdown(&mut shutdown) => None,
            };
            match next? {
                Ok(frame) => {
                    let event = Event::default()
                        .id(frame.position.to_string())
                        .event(&*frame.event_type)
                        .data(&*frame.data);
                    Some((Ok(event), Some((subscriber, shutdown, guard))))
                }
                Err(e) => {
                    tracing::error!(error = %e, "the event feed ended");
                    let event = Event::default().event("error").data(e.to_string());
                    // The error ends the feed: the client reconnects with its last id.
                    Some((Ok(event), None))
                }
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// Counts a subscriber for as long as its stream lives.
struct Counted;

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::gauge!("walletd_event_subscribers").decrement(1.0);
    }
}

async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender means the server is gone: that is a shutdown too.
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// The first position: after `Last-Event-ID` if sent, else `from`, else 1.
fn start(
    caller: &Caller,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Position, Problem> {
    if let Some(unknown) = query.keys().find(|k| *k != "from") {
        return Err(caller.problem(
            Cause::Malformed,
            format!("unknown query parameter `{unknown}` (this endpoint takes `from`)"),
        ));
    }
    if let Some(value) = headers.get("last-event-id") {
        let last = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                caller.problem(
                    Cause::Malformed,
                    "Last-Event-ID must be a log position (a whole number) sent by this feed",
                )
            })?;
        return Ok(Position(last.saturating_add(1)));
    }
    match query.get("from") {
        None => Ok(Position(1)),
        Some(text) => text
            .parse::<u64>()
            .map(|n| Position(n.max(1)))
            .map_err(|_| {
                caller.problem(
                    Cause::Malformed,
                    format!("query from `{text}`: must be a log position (a whole number)"),
                )
            }),
    }
}
