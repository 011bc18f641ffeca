//! Rebuild: drop every view and re-derive it from the log, in bounded memory.
//!
//! Runs on the engine directly, so no ledger writer may be running on it (the service runs it
//! before starting its ledger; the CLI holds the store lock). Steps: clear the view tables (the
//! checkpoint goes with them, so a crash mid-rebuild leaves views visibly behind the head and the
//! next open rebuilds again); fold the log partition by partition ([`crate::fold`]), writing
//! states and member hashes in chunks; then write the bucket sums and, last, the checkpoint.

use std::time::{Duration, Instant};

use ledger::log;
use ledger::{Engine, Hash, Position, WriteBatch};

use crate::digest::{self, DigestBuilder};
use crate::fold::{fold_log, AsOf, FoldOptions, FoldStats};
use crate::views::{self, tables, CHECKPOINT_KEY};
use crate::ProjectionError;

/// Members written per commit during a rebuild.
const MEMBERS_PER_COMMIT: usize = 20_000;

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
    let mut clear = WriteBatch::new();
    for table in tables::ALL {
        clear.clear(table);
    }
    engine.commit(clear)?;
    let mut builder = DigestBuilder::default();
    let mut sink = |states: std::collections::BTreeMap<_, _>| {
        let mut batch = WriteBatch::new();
        let mut in_batch = 0;
        for (member, state) in states {
            let Some(state) = state else { continue };
            let hash = digest::member_hash(&state);
            builder.add(&member, &hash);
            batch.put(
                tables::WALLETS,
                ledger::domain::MemberId::as_str(&member)
                    .as_bytes()
                    .to_vec(),
                views::encode_state(&state)?,
            );
            batch.put(
                tables::MEMBER_HASHES,
                digest::member_hash_key(&member),
                hash.to_vec(),
            );
            in_batch += 1;
            if in_batch == MEMBERS_PER_COMMIT {
                engine.commit(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        if !batch.is_empty() {
            engine.commit(batch)?;
        }
        Ok(())
    };
    // The snapshot predates the clear, and the log is append-only, so it still shows the log.
    let stats = fold_log(&*snap, FoldOptions::new(AsOf::Head, progress), &mut sink)?;
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

/// True when the views stand exactly at the log head (nothing to rebuild).
pub fn views_current(engine: &dyn Engine) -> Result<bool, ProjectionError> {
    let snap = engine.snapshot()?;
    let (head, _) = log::read_head(&*snap)?;
    Ok(views::checkpoint(&*snap)? == head.position)
}
