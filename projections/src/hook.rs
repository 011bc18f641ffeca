//! The commit hook that keeps views, member hashes, digest buckets and the checkpoint in the
//! same transaction as the events they fold.
//!
//! Per group commit: check that the views are exactly at the log head the batch builds on
//! (checkpoint == first new position - 1), fold each wallet event into its member's state
//! (loaded once per batch from the view), then write each changed state, its member hash, the
//! changed bucket sums and the new checkpoint. Identity events change nothing but the checkpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use ledger::domain::{
    apply_wallet_event, member_of_stream, DomainEvent, MemberId, StreamKind, WalletState,
};
use ledger::record::RecordView;
use ledger::{CommitHook, EventRecord, Snapshot, WriteBatch};

use crate::digest::{self, BucketSum};
use crate::views::{self, tables, CHECKPOINT_KEY};
use crate::ProjectionError;

/// Plug this into [`ledger::LedgerOptions::hooks`] to maintain the wallet views.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProjectionHook;

struct Changed {
    state: Option<WalletState>,
    old_hash: Option<[u8; 32]>,
}

/// Decodes a record as a wallet event of `member`, or `None` for identity and other streams.
pub fn wallet_event_of(
    record: &EventRecord,
) -> Result<Option<(MemberId, ledger::domain::WalletEvent)>, ProjectionError> {
    let Some((StreamKind::Wallet, member)) = member_of_stream(&record.stream) else {
        return Ok(None);
    };
    decode_wallet_event(&record.as_view()).map(|event| Some((member, event)))
}

/// Decodes the payload of a record known to be in a wallet stream; an identity event there is
/// an error.
pub fn decode_wallet_event(
    record: &RecordView<'_>,
) -> Result<ledger::domain::WalletEvent, ProjectionError> {
    let event = DomainEvent::decode(
        record.event_type,
        record.schema_version,
        record.codec,
        record.payload,
    )
    .map_err(|e| ProjectionError::Event {
        position: record.position.0,
        reason: e.to_string(),
    })?;
    match event {
        DomainEvent::Wallet(e) => Ok(e),
        DomainEvent::Identity(_) => Err(ProjectionError::Event {
            position: record.position.0,
            reason: format!("identity event {} in wallet stream", record.event_type),
        }),
    }
}

impl ProjectionHook {
    fn fold(
        snap: &dyn Snapshot,
        records: &[Arc<EventRecord>],
        batch: &mut WriteBatch,
    ) -> Result<(), ProjectionError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(());
        };
        let at = views::checkpoint(snap)?;
        if at.0 + 1 != first.position.0 {
            return Err(ProjectionError::Behind {
                checkpoint: at.0,
                head: first.position.0 - 1,
            });
        }
        let mut changed: BTreeMap<MemberId, Changed> = BTreeMap::new();
        for record in records {
            let Some((member, event)) = wallet_event_of(record)? else {
                continue;
            };
            if !changed.contains_key(&member) {
                let state = views::load_wallet(snap, &member)?;
                let old_hash = state.as_ref().map(digest::member_hash);
                changed.insert(member.clone(), Changed { state, old_hash });
            }
            let entry = changed.get_mut(&member).expect("inserted just above");
            apply_wallet_event(&mut entry.state, &event).map_err(|e| ProjectionError::Event {
                position: record.position.0,
                reason: e.to_string(),
            })?;
        }
        write_changes(snap, changed, batch)?;
        batch.put(
            tables::CHECKPOINT,
            CHECKPOINT_KEY.to_vec(),
            last.position.0.to_le_bytes().to_vec(),
        );
        Ok(())
    }
}

fn write_changes(
    snap: &dyn Snapshot,
    changed: BTreeMap<MemberId, Changed>,
    batch: &mut WriteBatch,
) -> Result<(), ProjectionError> {
    let mut buckets: BTreeMap<u16, BucketSum> = BTreeMap::new();
    for (member, change) in changed {
        let bucket = digest::bucket_of(&member);
        let sum = match buckets.entry(bucket) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(stored_bucket(snap, bucket)?),
        };
        if let Some(old) = change.old_hash {
            sum.sub(&old);
        }
        let key = member.as_str().as_bytes().to_vec();
        match change.state {
            Some(state) => {
                let hash = digest::member_hash(&state);
                sum.add(&hash);
                batch.put(tables::WALLETS, key, views::encode_state(&state)?);
                batch.put(
                    tables::MEMBER_HASHES,
                    digest::member_hash_key(&member),
                    hash.to_vec(),
                );
            }
            None => {
                batch.delete(tables::WALLETS, key);
                batch.delete(tables::MEMBER_HASHES, digest::member_hash_key(&member));
            }
        }
    }
    for (bucket, sum) in buckets {
        batch.put(
            tables::DIGEST_BUCKETS,
            bucket.to_be_bytes().to_vec(),
            sum.to_bytes().to_vec(),
        );
    }
    Ok(())
}

fn stored_bucket(snap: &dyn Snapshot, bucket: u16) -> Result<BucketSum, ProjectionError> {
    let stored = snap.get(tables::DIGEST_BUCKETS, &bucket.to_be_bytes())?;
    match stored.as_deref().map(<[u8; 32]>::try_from) {
        None => Ok(BucketSum::default()),
        Some(Ok(bytes)) => Ok(BucketSum::from_bytes(&bytes)),
        Some(Err(_)) => Err(ProjectionError::View {
            member: format!("(digest bucket {bucket})"),
            reason: "bucket value is not 32 bytes".into(),
        }),
    }
}

impl CommitHook for ProjectionHook {
    fn on_commit(
        &self,
        snap: &dyn Snapshot,
        records: &[Arc<EventRecord>],
        batch: &mut WriteBatch,
    ) -> Result<(), String> {
        ProjectionHook::fold(snap, records, batch).map_err(|e| e.to_string())
    }
}
