//! One member's wallet as of a moment, folded from that member's own stream.
//!
//! Why apart from the partition driver: an as-of read of one member (`show --as-of`, the gate's
//! named members, `check`'s recomputation of one member) must not cost a scan of the whole log.
//!
//! Invariants kept: reads only the member's wallet stream, in stream order, in chunks of
//! chunks (`ledger::log::stream_events`); includes exactly the events [`AsOf::includes`] includes; folds with the
//! domain's `apply_wallet_event`, so its answer equals that member's state from
//! [`fold_log`](super::fold_log).

use ledger::domain::{apply_wallet_event, MemberId, WalletState};
use ledger::{log, EventRecord, ReadError, Snapshot};

use super::AsOf;
use crate::hook::wallet_event_of;
use crate::ProjectionError;

/// One member's wallet as of a moment, folded from its own stream (no other member is read).
pub fn fold_member(
    snap: &dyn Snapshot,
    member: &MemberId,
    as_of: AsOf,
) -> Result<Option<WalletState>, ProjectionError> {
    let stream = ledger::domain::wallet_stream(member);
    fold_wallet_records(
        log::stream_events(snap, &stream, ledger::StreamVersion(1)),
        as_of,
    )
}

/// Folds one member's wallet stream, given in stream order, as of a moment: the fold of
/// [`fold_member`], for any source of those records (the stream index, or the segment files
/// read beside a writer, filtered to the member's wallet stream).
pub fn fold_wallet_records(
    records: impl Iterator<Item = Result<EventRecord, ReadError>>,
    as_of: AsOf,
) -> Result<Option<WalletState>, ProjectionError> {
    let mut state = None;
    for record in records {
        let record = record?;
        if !as_of.includes(&record) {
            continue;
        }
        if let Some((_, event)) = wallet_event_of(&record)? {
            apply_wallet_event(&mut state, &event).map_err(|e| ProjectionError::Event {
                position: record.position.0,
                reason: e.to_string(),
            })?;
        }
    }
    Ok(state)
}
