//! Materialized views: where each member's wallet state lives, and the checkpoint.
//!
//! Tables (all written by the commit hook in the same transaction as the events they fold):
//! - `view_wallet`: member id -> view record: a tag byte ([`VIEW_TAG`]) then the
//!   [`WalletState`] in bincode 2 (serde). Only members with a wallet have a row.
//! - `view_member_hash`: bucket (u16 BE) + member id -> the member's state hash (32 bytes).
//! - `view_digest_bucket`: bucket (u16 BE) -> 256-bit sum of the bucket's member hashes.
//! - `view_checkpoint`: `position` -> u64 LE, the last log position folded into the views.
//!
//! Invariant: the checkpoint equals the log head after every commit, so a view is never ahead
//! of, behind, or double-applied relative to the log. A view behind the head (after a crashed
//! rebuild) is detected at open and rebuilt before anything is served.

use ledger::domain::{MemberId, WalletState};
use ledger::{Codec, Position, Snapshot};

use crate::ProjectionError;

/// Table names owned by the projections.
pub mod tables {
    /// member -> wallet state.
    pub const WALLETS: &str = "view_wallet";
    /// bucket ++ member -> member state hash.
    pub const MEMBER_HASHES: &str = "view_member_hash";
    /// bucket -> sum of member hashes.
    pub const DIGEST_BUCKETS: &str = "view_digest_bucket";
    /// `position` -> last folded position.
    pub const CHECKPOINT: &str = "view_checkpoint";
    /// Every projection table, for rebuild.
    pub const ALL: [&str; 4] = [WALLETS, MEMBER_HASHES, DIGEST_BUCKETS, CHECKPOINT];
}

/// First byte of a stored view: the view record layout and codec (1 = bincode 2 of WalletState).
pub const VIEW_TAG: u8 = 1;
/// Key of the checkpoint.
pub const CHECKPOINT_KEY: &[u8] = b"position";

/// Encodes a wallet state for `view_wallet`.
pub fn encode_state(state: &WalletState) -> Result<Vec<u8>, ProjectionError> {
    let body = Codec::Bincode2
        .encode(state)
        .map_err(|e| ProjectionError::View {
            member: state.member().to_string(),
            reason: e.to_string(),
        })?;
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(VIEW_TAG);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a `view_wallet` value.
pub fn decode_state(member: &str, bytes: &[u8]) -> Result<WalletState, ProjectionError> {
    let damaged = |reason: String| ProjectionError::View {
        member: member.to_owned(),
        reason,
    };
    match bytes.split_first() {
        Some((&VIEW_TAG, body)) => Codec::Bincode2
            .decode(body)
            .map_err(|e| damaged(e.to_string())),
        Some((tag, _)) => Err(damaged(format!("unknown view tag {tag}"))),
        None => Err(damaged("empty view record".into())),
    }
}

/// The stored wallet of a member (`None`: no wallet).
pub fn load_wallet(
    snap: &dyn Snapshot,
    member: &MemberId,
) -> Result<Option<WalletState>, ProjectionError> {
    match snap.get(tables::WALLETS, member.as_str().as_bytes())? {
        None => Ok(None),
        Some(bytes) => decode_state(member.as_str(), &bytes).map(Some),
    }
}

/// The last log position folded into the views (0 when none).
pub fn checkpoint(snap: &dyn Snapshot) -> Result<Position, ProjectionError> {
    match snap.get(tables::CHECKPOINT, CHECKPOINT_KEY)? {
        None => Ok(Position(0)),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(|b| Position(u64::from_le_bytes(b)))
            .map_err(|_| ProjectionError::View {
                member: "(checkpoint)".into(),
                reason: format!("checkpoint has {} bytes, expected 8", bytes.len()),
            }),
    }
}
