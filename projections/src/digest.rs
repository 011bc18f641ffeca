//! The wallet digest: one hash over every member's canonical wallet state.
//!
//! # Design
//! - **Member hash** (definition 2) = the sum mod 2^256 of the hashes of the member's wallet rows
//!   ([`crate::views::row_hash`]: BLAKE3 over the row's key and fixed-width value). The rows are a
//!   canonical form of the state (fixed widths, one row per entity), so the hash depends on the
//!   state only: not on the codec of the events, nor on the order in which events or members were
//!   written. Identity events never reach it (they change no wallet row). One command updates it
//!   in O(rows touched): subtract each changed row's old hash, add its new one. (Definition 1,
//!   BLAKE3 of the whole state's canonical JSON, cost a wallet's whole history per command; the
//!   `rows` migration records both digests of a store it moves.)
//! - **Buckets**: member `m` belongs to bucket `u16(BLAKE3(m)[0..2])`, one of 65,536. A bucket's
//!   value is the sum modulo 2^256 of its members' hashes. Addition is commutative, so the value
//!   does not depend on write order, and it updates in O(1) when one member changes (subtract the
//!   old hash, add the new). The sums are stored in `view_digest_bucket`, maintained by the hook.
//! - **Root** = BLAKE3(`"wallet-digest-v1\0"` || the 65,536 bucket values in bucket order). Reading
//!   it costs 2 MiB whatever the member count.
//! - **Finding differences**: two stores with equal roots hold equal states. When roots differ,
//!   compare the 65,536 bucket values, then only the member hashes of the differing buckets
//!   (about 250 members per bucket at 16.5M members): one changed member among 16.5M is found by
//!   reading ~2 MiB + one bucket, not 16.5M rows.
//!
//! The sum is a consistency check between two computations of state, not the tamper evidence:
//! that is the log's hash chain (`verify`). A sum of hashes can be forced to collide by someone
//! who chooses many states freely (Wagner's generalized birthday attack), so a digest match is
//! never used as proof that the log is unaltered.

use std::collections::BTreeSet;
use std::ops::Bound;

use ledger::domain::{MemberId, WalletState};
use ledger::{Hash, Snapshot};

use crate::views::tables;
use crate::ProjectionError;

/// Number of digest buckets.
pub const BUCKET_COUNT: usize = 65_536;

/// A bucket's value: the sum mod 2^256 of its members' hashes (the ledger's multiset sum).
pub use ledger::multiset::Sum256 as BucketSum;

/// The hash of one member's wallet state: the sum of its row hashes (definition 2).
pub fn member_hash(state: &WalletState) -> [u8; 32] {
    crate::views::member_hash(state)
}

/// Definition 1 of the member hash (BLAKE3 of the canonical JSON of the whole state), kept only
/// for the `rows` migration's report of a layout-1 store's digest.
pub fn member_hash_v1(state: &WalletState) -> [u8; 32] {
    let canonical =
        serde_json::to_vec(state).expect("WalletState has only string keys and integer values");
    let mut h = blake3::Hasher::new();
    h.update(b"wallet-state-v1\0");
    h.update(&canonical);
    *h.finalize().as_bytes()
}

/// The bucket a member belongs to.
pub fn bucket_of(member: &MemberId) -> u16 {
    let h = blake3::hash(member.as_str().as_bytes());
    u16::from_be_bytes([h.as_bytes()[0], h.as_bytes()[1]])
}

/// Key in `view_member_hash`.
pub fn member_hash_key(member: &MemberId) -> Vec<u8> {
    member_hash_key_in(bucket_of(member), member)
}

/// [`member_hash_key`] for a member whose bucket ([`bucket_of`]) the caller already computed.
pub fn member_hash_key_in(bucket: u16, member: &MemberId) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + member.as_str().len());
    key.extend_from_slice(&bucket.to_be_bytes());
    key.extend_from_slice(member.as_str().as_bytes());
    key
}

/// Accumulates member hashes into bucket sums in memory (for a fresh fold or a rebuild).
#[derive(Clone)]
pub struct DigestBuilder {
    buckets: Vec<BucketSum>,
}

impl Default for DigestBuilder {
    fn default() -> Self {
        DigestBuilder {
            buckets: vec![BucketSum::default(); BUCKET_COUNT],
        }
    }
}

impl DigestBuilder {
    /// Adds one member's state.
    pub fn add(&mut self, member: &MemberId, state_hash: &[u8; 32]) {
        self.buckets[usize::from(bucket_of(member))].add(state_hash);
    }

    /// Adds one member's state whose bucket ([`bucket_of`]) the caller already computed: a
    /// check that also needs the bucket for other sums hashes the id once, not twice.
    pub fn add_in_bucket(&mut self, bucket: u16, state_hash: &[u8; 32]) {
        self.buckets[usize::from(bucket)].add(state_hash);
    }

    /// The bucket sums.
    pub fn buckets(&self) -> &[BucketSum] {
        &self.buckets
    }

    /// The root over all buckets.
    pub fn root(&self) -> Hash {
        root_of(&self.buckets)
    }
}

/// Root = BLAKE3("wallet-digest-v1\0" || bucket values in order).
pub fn root_of(buckets: &[BucketSum]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"wallet-digest-v1\0");
    for b in buckets {
        h.update(&b.to_bytes());
    }
    Hash(*h.finalize().as_bytes())
}

/// Reads the stored bucket sums (missing buckets are zero).
pub fn stored_buckets(snap: &dyn Snapshot) -> Result<Vec<BucketSum>, ProjectionError> {
    let mut buckets = vec![BucketSum::default(); BUCKET_COUNT];
    let entries = snap.scan(
        tables::DIGEST_BUCKETS,
        (Bound::Unbounded, Bound::Unbounded),
        BUCKET_COUNT + 1,
    )?;
    for (key, value) in entries {
        let (Ok(k), Ok(v)) = (
            <[u8; 2]>::try_from(key.as_slice()),
            <[u8; 32]>::try_from(value.as_slice()),
        ) else {
            return Err(ProjectionError::View {
                member: "(digest bucket)".into(),
                reason: format!(
                    "bucket entry has a {}-byte key and {}-byte value",
                    key.len(),
                    value.len()
                ),
            });
        };
        buckets[usize::from(u16::from_be_bytes(k))] = BucketSum::from_bytes(&v);
    }
    Ok(buckets)
}

/// The digest of the stored views.
pub fn stored_digest(snap: &dyn Snapshot) -> Result<Hash, ProjectionError> {
    Ok(root_of(&stored_buckets(snap)?))
}

/// Buckets whose sums differ between two stores' views.
pub fn differing_buckets(a: &[BucketSum], b: &[BucketSum]) -> Vec<u16> {
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| u16::try_from(i).expect("at most 65536 buckets"))
        .collect()
}

/// Member hashes stored for one bucket, sorted by member id.
pub fn bucket_members(
    snap: &dyn Snapshot,
    bucket: u16,
) -> Result<Vec<(String, [u8; 32])>, ProjectionError> {
    let start = bucket.to_be_bytes();
    let end = (u32::from(bucket) + 1).to_be_bytes();
    let upper = if bucket == u16::MAX {
        Bound::Unbounded
    } else {
        Bound::Excluded(&end[2..4])
    };
    let entries = snap.scan(
        tables::MEMBER_HASHES,
        (Bound::Included(&start[..]), upper),
        usize::MAX,
    )?;
    Ok(entries
        .into_iter()
        .filter_map(|(k, v)| {
            let member = String::from_utf8(k.get(2..)?.to_vec()).ok()?;
            Some((member, <[u8; 32]>::try_from(v.as_slice()).ok()?))
        })
        .collect())
}

/// Members with a wallet stream in the log whose bucket is one of `buckets`, in id order: a walk
/// of the stream index. Only for when differing buckets name nobody through the stored member
/// hashes (a wallet with no trace at all in the views); `check` and the gate both use it.
pub fn wallet_members_in(
    snap: &dyn Snapshot,
    buckets: &BTreeSet<u16>,
) -> Result<Vec<String>, ProjectionError> {
    let mut out = Vec::new();
    for s in ledger::log::streams(snap, "wallet-") {
        if let Some((_, m)) = ledger::domain::member_of_stream(&s?) {
            if buckets.contains(&bucket_of(&m)) {
                out.push(m.to_string());
            }
        }
    }
    Ok(out)
}
