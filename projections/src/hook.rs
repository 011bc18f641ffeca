//! The commit hook that keeps views, member hashes, digest buckets and the checkpoint in the
//! same transaction as the events they fold.
//!
//! Per group commit: check that the views are exactly at the log head the batch builds on
//! (checkpoint == first new position - 1), fold each wallet event into its member's state
//! (loaded once per batch from the view), then write each changed state, its member hash, the
//! changed bucket sums and the new checkpoint. Identity events change nothing but the checkpoint.
//!
//! [`CachedProjectionHook`] (the one [`crate::WalletService`] runs) writes exactly the same, but
//! keeps the states, member hashes and bucket sums it wrote for the next group commit, so a member
//! or bucket touched again is neither read from the store nor decoded nor hashed a second time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

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
    bucket: u16,
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

/// What the hook knows of the views as of checkpoint `at`: the states and member hashes of
/// recently changed members and the recently changed bucket sums, so that the next group commit
/// neither reads nor decodes nor re-hashes them. Kept by [`CachedProjectionHook`] between group
/// commits; it is trusted only when the snapshot's checkpoint is still `at` (a group whose
/// commit failed leaves the checkpoint behind, so its cache entries are dropped unread).
#[derive(Default)]
struct HookCache {
    at: Option<u64>,
    members: HashMap<MemberId, Cached>,
    buckets: HashMap<u16, BucketSum>,
}

/// A member's state as stored in the views, with its member hash and bucket.
struct Cached {
    state: Option<WalletState>,
    hash: Option<[u8; 32]>,
    bucket: u16,
}

impl HookCache {
    /// Most members kept between group commits; past it the cache starts again from empty.
    const MAX_MEMBERS: usize = 65_536;

    fn clear(&mut self) {
        self.at = None;
        self.members.clear();
        self.buckets.clear();
    }
}

/// [`ProjectionHook`] that also keeps, between group commits, what it wrote last (see
/// `HookCache`): the same writes, less reading. Used by [`crate::WalletService`].
#[derive(Default)]
pub struct CachedProjectionHook {
    cache: Mutex<HookCache>,
}

impl CachedProjectionHook {
    /// A hook with an empty cache.
    pub fn new() -> CachedProjectionHook {
        CachedProjectionHook::default()
    }
}

impl CommitHook for CachedProjectionHook {
    fn on_commit(
        &self,
        snap: &dyn Snapshot,
        records: &[Arc<EventRecord>],
        batch: &mut WriteBatch,
    ) -> Result<(), String> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let result = fold(snap, records, batch, &mut cache);
        if result.is_err() {
            cache.clear();
        }
        result.map_err(|e| e.to_string())
    }
}

fn fold(
    snap: &dyn Snapshot,
    records: &[Arc<EventRecord>],
    batch: &mut WriteBatch,
    cache: &mut HookCache,
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
    if cache.at != Some(at.0) || cache.members.len() > HookCache::MAX_MEMBERS {
        cache.clear();
    }
    // Invalid until this group's writes are complete.
    cache.at = None;
    let mut changed: BTreeMap<MemberId, Changed> = BTreeMap::new();
    for record in records {
        let Some((member, event)) = wallet_event_of(record)? else {
            continue;
        };
        let entry = match changed.entry(member) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let change = match cache.members.remove(e.key()) {
                    Some(c) => Changed {
                        state: c.state,
                        old_hash: c.hash,
                        bucket: c.bucket,
                    },
                    None => {
                        let state = views::load_wallet(snap, e.key())?;
                        let old_hash = state.as_ref().map(digest::member_hash);
                        Changed {
                            state,
                            old_hash,
                            bucket: digest::bucket_of(e.key()),
                        }
                    }
                };
                e.insert(change)
            }
        };
        apply_wallet_event(&mut entry.state, &event).map_err(|e| ProjectionError::Event {
            position: record.position.0,
            reason: e.to_string(),
        })?;
    }
    write_changes(snap, changed, batch, cache)?;
    batch.put(
        tables::CHECKPOINT,
        CHECKPOINT_KEY.to_vec(),
        last.position.0.to_le_bytes().to_vec(),
    );
    cache.at = Some(last.position.0);
    Ok(())
}

impl ProjectionHook {
    fn fold(
        snap: &dyn Snapshot,
        records: &[Arc<EventRecord>],
        batch: &mut WriteBatch,
    ) -> Result<(), ProjectionError> {
        fold(snap, records, batch, &mut HookCache::default())
    }
}

fn write_changes(
    snap: &dyn Snapshot,
    changed: BTreeMap<MemberId, Changed>,
    batch: &mut WriteBatch,
    cache: &mut HookCache,
) -> Result<(), ProjectionError> {
    let mut buckets: BTreeMap<u16, BucketSum> = BTreeMap::new();
    for (member, change) in changed {
        let bucket = change.bucket;
        let sum = match buckets.entry(bucket) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(match cache.buckets.get(&bucket) {
                    Some(sum) => *sum,
                    None => stored_bucket(snap, bucket)?,
                })
            }
        };
        if let Some(old) = change.old_hash {
            sum.sub(&old);
        }
        let key = member.as_str().as_bytes().to_vec();
        let hash_key = digest::member_hash_key_in(bucket, &member);
        let hash = match &change.state {
            Some(state) => {
                let hash = digest::member_hash(state);
                sum.add(&hash);
                batch.put(tables::WALLETS, key, views::encode_state(state)?);
                batch.put(tables::MEMBER_HASHES, hash_key, hash.to_vec());
                Some(hash)
            }
            None => {
                batch.delete(tables::WALLETS, key);
                batch.delete(tables::MEMBER_HASHES, hash_key);
                None
            }
        };
        cache.members.insert(
            member,
            Cached {
                state: change.state,
                hash,
                bucket,
            },
        );
    }
    for (bucket, sum) in buckets {
        batch.put(
            tables::DIGEST_BUCKETS,
            bucket.to_be_bytes().to_vec(),
            sum.to_bytes().to_vec(),
        );
        cache.buckets.insert(bucket, sum);
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
