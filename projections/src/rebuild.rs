//! Rebuild: drop every view and re-derive it from the log, in bounded memory.
//!
//! Runs on the engine directly, so no ledger writer may be running on it (the service runs it
//! before starting its ledger; the CLI holds the store lock). Steps: clear the view tables (the
//! checkpoint goes with them, so a crash mid-rebuild leaves views visibly behind the head and the
//! next open rebuilds again); fold the log partition by partition ([`crate::fold`]), writing
//! states and member hashes in chunks; then write the bucket sums and, last, the checkpoint.
//!
//! Both the fold and the writing use two threads (a rebuild owns the engine): the log is
//! scanned on one while the other folds, and member hashes are computed on one while the other
//! commits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ledger::domain::{MemberId, WalletState};
use ledger::log;
use ledger::{Engine, Hash, Position, WriteBatch};

use crate::digest::{self, DigestBuilder};
use crate::fold::{fold_log_pipelined, AsOf, FoldOptions, FoldStats};
use crate::views::{self, tables, CHECKPOINT_KEY};
use crate::ProjectionError;

/// Members written per commit during a rebuild.
const MEMBERS_PER_COMMIT: usize = 20_000;
/// Member hash rows written per commit during a rebuild (sorted by key, see
/// [`write_member_hashes`]).
const MEMBER_HASHES_PER_COMMIT: usize = 100_000;

/// What a rebuild did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuildReport {
    /// Digest of the views before (as stored).
    pub digest_before: Hash,
    /// Digest of the rebuilt views.
    pub digest_after: Hash,
    /// Log head the views now stand at.
    pub head: Position,
    /// Fold statistics.
    pub stats: FoldStats,
    /// Wall time.
    pub elapsed: Duration,
}

/// Drops and re-derives every view from the log.
pub fn rebuild(
    engine: &dyn Engine,
    progress: &mut dyn FnMut(u64),
) -> Result<RebuildReport, ProjectionError> {
    let started = Instant::now();
    let snap = engine.snapshot()?;
    let (head, _) = log::read_head(&*snap)?;
    let digest_before = digest::stored_digest(&*snap)?;
    // A live read snapshot keeps every page freed by later commits from being reused: holding it
    // through the rebuild made the file grow by gigabytes at 16.5M members.
    drop(snap);
    let mut clear = WriteBatch::new();
    for table in tables::ALL {
        clear.clear(table);
    }
    engine.commit(clear)?;
    let mut builder = DigestBuilder::default();
    let mut sink = |states: BTreeMap<MemberId, Option<WalletState>>| {
        write_states(engine, states, &mut builder)
    };
    // No writer runs during a rebuild and the log is append-only, so the scanner's own
    // snapshots show the same log as `snap`; reading up to `head` only makes that explicit.
    let as_of = AsOf::Position(head.position);
    let stats = fold_log_pipelined(engine, FoldOptions::new(as_of, progress), &mut sink)?;
    let mut last = WriteBatch::new();
    for (i, sum) in builder.buckets().iter().enumerate() {
        if *sum != digest::BucketSum::default() {
            let bucket = u16::try_from(i).expect("at most 65536 buckets");
            last.put(
                tables::DIGEST_BUCKETS,
                bucket.to_be_bytes().to_vec(),
                sum.to_bytes().to_vec(),
            );
        }
    }
    last.put(
        tables::CHECKPOINT,
        CHECKPOINT_KEY.to_vec(),
        head.position.0.to_le_bytes().to_vec(),
    );
    engine.commit(last)?;
    Ok(RebuildReport {
        digest_before,
        digest_after: builder.root(),
        head: head.position,
        stats,
        elapsed: started.elapsed(),
    })
}

/// One commit's worth of rows, prepared off the committing thread.
struct Prepared {
    batch: WriteBatch,
    hashes: Vec<(MemberId, [u8; 32])>,
}

/// Writes one partition's states and adds their hashes to `builder`. Two threads: one computes
/// member hashes (canonical JSON + BLAKE3) and view encodings, the caller's thread commits, so
/// hashing overlaps the engine's writes and fsyncs.
fn write_states(
    engine: &dyn Engine,
    states: BTreeMap<MemberId, Option<WalletState>>,
    builder: &mut DigestBuilder,
) -> Result<(), ProjectionError> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared, ProjectionError>>(1);
        scope.spawn(move || {
            let mut members = states.into_iter().filter_map(|(m, s)| Some((m, s?)));
            loop {
                let prepared = prepare_rows(members.by_ref().take(MEMBERS_PER_COMMIT));
                let last = !matches!(&prepared, Ok(p) if !p.hashes.is_empty());
                // A closed channel means the committing side failed and stopped.
                if tx.send(prepared).is_err() || last {
                    return;
                }
            }
        });
        let mut hash_rows: Vec<(Vec<u8>, [u8; 32])> = Vec::new();
        for prepared in rx {
            let prepared = prepared?;
            if prepared.hashes.is_empty() {
                break;
            }
            for (member, hash) in &prepared.hashes {
                builder.add(member, hash);
                hash_rows.push((digest::member_hash_key(member), *hash));
            }
            engine.commit(prepared.batch)?;
        }
        write_member_hashes(engine, hash_rows)
    })
}

/// Writes member hash rows in key order. Their keys start with the member's digest bucket, so
/// in member order they land all over the table: 20,000 of them touched ~18,000 pages per commit
/// (copy-on-write) at 16.5M members. Sorted, each commit touches a contiguous key range.
fn write_member_hashes(
    engine: &dyn Engine,
    mut rows: Vec<(Vec<u8>, [u8; 32])>,
) -> Result<(), ProjectionError> {
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for chunk in rows.chunks(MEMBER_HASHES_PER_COMMIT) {
        let mut batch = WriteBatch::new();
        for (key, hash) in chunk {
            batch.put(tables::MEMBER_HASHES, key.clone(), hash.to_vec());
        }
        engine.commit(batch)?;
    }
    Ok(())
}

fn prepare_rows(
    members: impl Iterator<Item = (MemberId, WalletState)>,
) -> Result<Prepared, ProjectionError> {
    let mut batch = WriteBatch::new();
    let mut hashes = Vec::new();
    for (member, state) in members {
        let hash = digest::member_hash(&state);
        batch.put(
            tables::WALLETS,
            member.as_str().as_bytes().to_vec(),
            views::encode_state(&state)?,
        );
        hashes.push((member, hash));
    }
    Ok(Prepared { batch, hashes })
}

/// True when the views stand exactly at the log head (nothing to rebuild).
pub fn views_current(engine: &dyn Engine) -> Result<bool, ProjectionError> {
    let snap = engine.snapshot()?;
    let (head, _) = log::read_head(&*snap)?;
    Ok(views::checkpoint(&*snap)? == head.position)
}
