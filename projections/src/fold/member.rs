//! One member's wallet as of a moment, folded from that member's own stream.
//!
//! Why apart from the partition driver: an as-of read of one member (`show --as-of`, the gate's
//! named members, `check`'s recomputation of one member) must not cost a scan of the whole log.
//!
//! Invariants kept: reads only the member's wallet stream, in stream order, in chunks of
//! `CHUNK_EVENTS`; includes exactly the events [`AsOf::includes`] includes; folds with the
//! domain's `apply_wallet_event`, so its answer equals that member's state from
//! [`fold_log`](super::fold_log).

use ledger::domain::{apply_wallet_event, MemberId, WalletState};
use ledger::{log, Snapshot};

use super::{AsOf, CHUNK_EVENTS};
use crate::hook::wallet_event_of;
use crate::ProjectionError;

/// One member's wallet as of a moment, folded from its own stream (no other member is read).
pub fn fold_member(
    snap: &dyn Snapshot,
    member: &MemberId,
    as_of: AsOf,
) -> Result<Option<WalletState>, ProjectionError> {
    let stream = ledger::domain::wallet_stream(member);
    let mut state = None;
    let mut from = ledger::StreamVersion(1);
    loop {
        let records = log::read_stream(snap, &stream, from, CHUNK_EVENTS)?;
        let Some(last) = records.last() else {
            return Ok(state);
        };
        from = ledger::StreamVersion(last.version.0 + 1);
        for record in &records {
            if !as_of.includes(record) {
                continue;
            }
            if let Some((_, event)) = wallet_event_of(record)? {
                apply_wallet_event(&mut state, &event).map_err(|e| ProjectionError::Event {
                    position: record.position.0,
                    reason: e.to_string(),
                })?;
            }
        }
    }
}
