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
use crate::views::{self, tables};
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
    rebuild_in_passes(engine, progress, crate::fold::DEFAULT_MEMBERS_PER_PASS)
}

/// [`rebuild`] with at most `members_per_pass` members folded per pass over the log. More
/// than one pass is what a store of tens of millions of members needs; tests force it on
/// small stores, because the side rows are then derived by a pass of their own.
pub fn rebuild_in_passes(
    engine: &dyn Engine,
    progress: &mut dyn FnMut(u64),
    members_per_pass: usize,
) -> Result<RebuildReport, ProjectionError> {
    let started = Instant::now();
    let snap = engine.snapshot()?;
    let (head, _) = log::read_head(&*snap)?;
    let digest_before = digest::stored_digest(&*snap)?;
    let hooks_recorded = snap
        .get(log::tables::META, ledger::store::META_HOOKS)?
        .is_some_and(|names| !names.is_empty());
    // A live read snapshot keeps every page freed by later commits from being reused: holding it
    // through the rebuild made the file grow by gigabytes at 16.5M members.
    drop(snap);
    let mut clear = WriteBatch::new();
    for table in tables::ALL {
        clear.clear(table);
    }
    engine.commit(clear)?;
    // No writer runs during a rebuild and the log is append-only, so the scanner's own
    // snapshots show the same log as `snap`; reading up to `head` only makes that explicit.
    let as_of = AsOf::Position(head.position);
    // The side rows come from the fold's own read of the log when its first pass covered every
    // member (one pass: up to a few million members); else from a pass of their own.
    let mut side = crate::side_check::Derived::default();
    let mut tap =
        |record: &ledger::record::RecordView<'_>| views::write_side_rows(&mut side, record);
    let mut options = FoldOptions::new(as_of, progress);
    options.members_per_pass = members_per_pass;
    options.tap = Some(&mut tap);
    let (stats, builder) = fold_and_write(engine, options)?;
    let side_batch = if stats.passes == 1 {
        let mut batch = WriteBatch::new();
        side.into_batch(&mut batch);
        batch
    } else {
        side_rows(engine, head.position)?
    };
    engine.commit(side_batch)?;
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
    views::put_checkpoint(&mut last, head.position);
    if !hooks_recorded {
        // The views now stand as the views hook keeps them, so the store says its writer runs
        // it (a store filled by a hook-free writer, like `demo`, rebuilt after): an open that
        // runs no hooks then never rebuilds a damaged index without its views.
        last.put(
            log::tables::META,
            ledger::store::META_HOOKS.to_vec(),
            crate::hook::ProjectionHook::NAME.as_bytes().to_vec(),
        );
    }
    engine.commit(last)?;
    Ok(RebuildReport {
        digest_before,
        digest_after: builder.root(),
        head: head.position,
        stats,
        elapsed: started.elapsed(),
    })
}

/// The security, device, policy and compensation rows (SPEC section 7) of the log up to
/// `head`, folded by the commit hook's own [`views::write_side_rows`] in log order, so rebuild
/// gives exactly the rows the commits wrote. Used when the fold took more than one pass (its
/// first pass, which feeds the same function otherwise, was dropped): these rows depend on
/// identity and wallet events together in log order, which the per-member partitioned fold
/// does not see. Held in memory until the one commit: they grow with the members who had a
/// credential event, the devices they logged in from and the compensations, not with the log.
fn side_rows(engine: &dyn Engine, head: Position) -> Result<WriteBatch, ProjectionError> {
    let snap = engine.snapshot()?;
    // The side tables were cleared with the others: derived in memory, with no store under the
    // rows, so a payment of a member without a security row costs a map lookup, not a B-tree read.
    let mut rows = crate::side_check::Derived::default();
    crate::fold::visit_records(
        &*snap,
        &mut |record| {
            if record.position > head {
                return Ok(std::ops::ControlFlow::Break(()));
            }
            views::write_side_rows(&mut rows, record)?;
            Ok(std::ops::ControlFlow::Continue(()))
        },
        &mut |_| {},
    )?;
    let mut batch = WriteBatch::new();
    rows.into_batch(&mut batch);
    Ok(batch)
}

/// One commit's worth of rows, prepared off the committing thread.
struct Prepared {
    batch: WriteBatch,
    hashes: Vec<(MemberId, [u8; 32])>,
}

/// What the fold hands the writer: one chunk of a partition's states, sorted by member.
type States = BTreeMap<MemberId, Option<WalletState>>;

/// Chunks of states the writer may hold (one being committed, one being prepared): the fold runs
/// that far ahead of the writes and no further, which bounds memory, and bounds what is still
/// being committed while the next pass's scan holds its snapshot to two chunks.
const CHUNKS_IN_FLIGHT: usize = 2;

/// Folds the log and writes every state, its member hash and its digest bucket contribution.
/// Three threads besides the log scanner: the caller folds and hands out chunks of states; one
/// thread computes member hashes (canonical JSON + BLAKE3) and view encodings; one commits (the
/// states in commits of [`MEMBERS_PER_COMMIT`], then the chunk's member hashes sorted by key),
/// so emitting a pass's states, hashing and the engine's writes overlap.
fn fold_and_write(
    engine: &dyn Engine,
    options: FoldOptions<'_>,
) -> Result<(FoldStats, DigestBuilder), ProjectionError> {
    std::thread::scope(|scope| {
        let (states_tx, states_rx) = std::sync::mpsc::sync_channel::<States>(1);
        // `None`: the end of a chunk.
        let (rows_tx, rows_rx) =
            std::sync::mpsc::sync_channel::<Result<Option<Prepared>, ProjectionError>>(1);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let preparer = scope.spawn(move || {
            for states in states_rx {
                let mut members = states.into_iter().filter_map(|(m, s)| Some((m, s?)));
                loop {
                    let prepared = match prepare_rows(members.by_ref().take(MEMBERS_PER_COMMIT)) {
                        Ok(p) if p.hashes.is_empty() => Ok(None),
                        other => other.map(Some),
                    };
                    let end = !matches!(prepared, Ok(Some(_)));
                    // A closed channel means the committing side failed and stopped.
                    if rows_tx.send(prepared).is_err() {
                        return;
                    }
                    if end {
                        break;
                    }
                }
            }
        });
        let committer = scope.spawn(move || -> Result<DigestBuilder, ProjectionError> {
            let mut builder = DigestBuilder::default();
            let mut hash_rows: Vec<(Vec<u8>, [u8; 32])> = Vec::new();
            for prepared in rows_rx {
                match prepared? {
                    Some(prepared) => {
                        for (member, hash) in &prepared.hashes {
                            builder.add(member, hash);
                            hash_rows.push((digest::member_hash_key(member), *hash));
                        }
                        engine.commit(prepared.batch)?;
                    }
                    None => {
                        write_member_hashes(engine, std::mem::take(&mut hash_rows))?;
                        let _ = done_tx.send(());
                    }
                }
            }
            Ok(builder)
        });
        let mut in_flight = 0usize;
        let stopped = || ProjectionError::Fold {
            reason: "the view writer stopped".into(),
        };
        let mut sink = move |states: States| {
            if in_flight == CHUNKS_IN_FLIGHT {
                done_rx.recv().map_err(|_| stopped())?;
                in_flight -= 1;
            }
            states_tx.send(states).map_err(|_| stopped())?;
            in_flight += 1;
            Ok(())
        };
        let folded = fold_log_pipelined(engine, options, &mut sink);
        // Closes the writer's input: it finishes what it holds and stops.
        drop(sink);
        if let Err(panic) = preparer.join() {
            std::panic::resume_unwind(panic);
        }
        let written = match committer.join() {
            Ok(written) => written,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        // A writer error comes first: it is what stopped the fold, if the fold stopped.
        let builder = written?;
        Ok((folded?, builder))
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

/// A member's hash and rows.
type Row = ([u8; 32], Vec<(Vec<u8>, Vec<u8>)>);

/// Below this many members a commit's rows are prepared on one thread.
const PARALLEL_PREPARE_MIN: usize = 512;

/// One commit's rows: each member's rows and index entries in member order, and its member hash.
/// The hashes and encodings (the costly part: BLAKE3 of every row) of the second half of the
/// members are computed on a second thread; the rows and their order are the same either way.
fn prepare_rows(
    members: impl Iterator<Item = (MemberId, WalletState)>,
) -> Result<Prepared, ProjectionError> {
    let members: Vec<(MemberId, WalletState)> = members.collect();
    let rows = |part: &[(MemberId, WalletState)]| -> Vec<Row> {
        part.iter()
            .map(|(_, state)| {
                let rows: Vec<(Vec<u8>, Vec<u8>)> = views::rows_of(state).collect();
                let mut hash = digest::BucketSum::default();
                for (key, value) in &rows {
                    hash.add(&views::row_hash(key, value));
                }
                (hash.to_bytes(), rows)
            })
            .collect()
    };
    let computed = if members.len() < PARALLEL_PREPARE_MIN {
        rows(&members)
    } else {
        let (first, second) = members.split_at(members.len() / 2);
        std::thread::scope(|scope| {
            let second = scope.spawn(|| rows(second));
            let mut all = rows(first);
            match second.join() {
                Ok(rest) => all.extend(rest),
                Err(panic) => std::panic::resume_unwind(panic),
            }
            all
        })
    };
    let mut batch = WriteBatch::new();
    let mut hashes = Vec::with_capacity(members.len());
    for ((member, state), (hash, rows)) in members.into_iter().zip(computed) {
        for (key, value) in rows {
            batch.put(tables::ROWS, key, value);
        }
        for (table, key) in views::index_entries_of(&state) {
            batch.put(table, key, Vec::new());
        }
        hashes.push((member, hash));
    }
    Ok(Prepared { batch, hashes })
}

/// True when the views stand exactly at the log head (nothing to rebuild). Views of an older
/// layout are an error ([`ProjectionError::Layout`]): they move by migration, not by a rebuild
/// nobody asked for.
pub fn views_current(engine: &dyn Engine) -> Result<bool, ProjectionError> {
    let snap = engine.snapshot()?;
    views::require_layout(&*snap)?;
    let (head, _) = log::read_head(&*snap)?;
    Ok(views::checkpoint(&*snap)? == head.position)
}
