//! A test [`Engine`] that wraps a real one and can hold or fail commits on demand.
//!
//! It wraps the *index engine* of a store (format 2): the segment log is not behind it. So a
//! failed commit here is the index commit that follows a durable frame (the writer stops), and a
//! failed snapshot is a failure before the group's frame is written (the group fails and the
//! writer goes on). The log's own fault, a failed `fdatasync`, is
//! `SegmentLog::fail_next_sync` (feature `fault-injection` of the ledger crate).
//!
//! Four controls, each one-shot and race-free with respect to the ledger's single writer:
//! - [`FaultyEngine::hold_commits`] makes commits wait at a gate until
//!   [`FaultyEngine::release_commits`]; while the writer waits there, further appends pile up in
//!   its queue and all land in its next group commit.
//! - [`FaultyEngine::fail_next_commit`] makes the next commit that *starts* after the call return
//!   [`EngineError::Injected`] without touching the wrapped engine.
//! - [`FaultyEngine::fail_next_snapshot`] makes the next snapshot return
//!   [`EngineError::Injected`]: the writer takes one at the start of every group, before its
//!   frame is built.
//! - [`FaultyEngine::commit_then_fail_next`] makes the next commit that starts go through to the
//!   wrapped engine, synced, and *then* return [`EngineError::Injected`]: the batch is durable
//!   but the writer is told it failed ("written but reported failed", as a disk that loses the
//!   acknowledgement of a completed write, or an fsync error reported after the data landed).
//!
//! The wrapper records what each failed batch and each committed batch contained, so a test can
//! prove how many appends were in one commit instead of assuming it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ledger::engine::WriteOp;
use ledger::log::tables;
use ledger::{Durability, Engine, EngineError, Snapshot, WriteBatch};

/// Longest a commit waits at a closed gate before failing the test. Not a bound on how fast
/// anything must be: it only turns a test that forgot to release the gate into a failure
/// instead of a hang, so it is generous enough for a machine loaded by other work.
const GATE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest [`FaultyEngine::wait_for_commits_started`] waits for the writer to reach a commit:
/// again only a cap that turns a hang into a failure, never a speed requirement.
const WAIT_CAP: Duration = Duration::from_secs(120);

/// See the module doc.
pub struct FaultyEngine {
    /// The engine that does the real work.
    inner: Arc<dyn Engine>,
    /// Armed by `fail_next_commit`, consumed by the next commit that starts.
    fail_next: AtomicBool,
    /// Armed by `commit_then_fail_next`, consumed by the next commit that starts.
    commit_then_fail: AtomicBool,
    /// Armed by `fail_next_snapshot`, consumed by the next snapshot.
    fail_next_snapshot: AtomicBool,
    /// Snapshots failed by injection.
    snapshots_failed: AtomicU64,
    /// True while commits must wait; the condvar wakes them on release.
    gate: (Mutex<bool>, Condvar),
    /// Commits that have started (entered `commit`), failed or not.
    commits_started: AtomicU64,
    /// Commits that reached the wrapped engine and succeeded.
    commits_ok: AtomicU64,
    /// For each injected failure: the command ids written by the failed batch, in batch order.
    failed_batches: Mutex<Vec<Vec<String>>>,
    /// For each batch the wrapped engine committed (including those then reported failed by
    /// `commit_then_fail_next`): the command ids it indexed, in batch order. Empty for a
    /// batch that records no command (a checkpoint, a guard marker).
    committed_batches: Mutex<Vec<Vec<String>>>,
}

impl FaultyEngine {
    /// Wraps `inner`; with no control armed it behaves exactly like `inner`.
    pub fn new(inner: Arc<dyn Engine>) -> Arc<FaultyEngine> {
        Arc::new(FaultyEngine {
            inner,
            fail_next: AtomicBool::new(false),
            commit_then_fail: AtomicBool::new(false),
            fail_next_snapshot: AtomicBool::new(false),
            snapshots_failed: AtomicU64::new(0),
            gate: (Mutex::new(false), Condvar::new()),
            commits_started: AtomicU64::new(0),
            commits_ok: AtomicU64::new(0),
            failed_batches: Mutex::new(Vec::new()),
            committed_batches: Mutex::new(Vec::new()),
        })
    }

    /// The next commit that starts fails with [`EngineError::Injected`] and writes nothing.
    pub fn fail_next_commit(&self) {
        self.fail_next.store(true, Ordering::SeqCst);
    }

    /// The next commit that starts is committed by the wrapped engine, synced, and then
    /// reported as failed with [`EngineError::Injected`]: written but reported failed.
    pub fn commit_then_fail_next(&self) {
        self.commit_then_fail.store(true, Ordering::SeqCst);
    }

    /// The next snapshot fails with [`EngineError::Injected`].
    pub fn fail_next_snapshot(&self) {
        self.fail_next_snapshot.store(true, Ordering::SeqCst);
    }

    /// Number of snapshots failed by injection.
    pub fn snapshots_failed(&self) -> u64 {
        self.snapshots_failed.load(Ordering::SeqCst)
    }

    /// Commits from now on wait at the gate (after deciding whether they fail).
    pub fn hold_commits(&self) {
        *self
            .gate
            .0
            .lock()
            .expect("gate lock is never poisoned: no panics while held") = true;
    }

    /// Opens the gate and wakes every waiting commit.
    pub fn release_commits(&self) {
        *self
            .gate
            .0
            .lock()
            .expect("gate lock is never poisoned: no panics while held") = false;
        self.gate.1.notify_all();
    }

    /// Number of commits that have started.
    pub fn commits_started(&self) -> u64 {
        self.commits_started.load(Ordering::SeqCst)
    }

    /// Number of commits the wrapped engine accepted.
    pub fn commits_ok(&self) -> u64 {
        self.commits_ok.load(Ordering::SeqCst)
    }

    /// Command ids of every batch that failed by injection, one list per failed commit.
    pub fn failed_batches(&self) -> Vec<Vec<String>> {
        self.failed_batches
            .lock()
            .expect("failed_batches lock is never poisoned: no panics while held")
            .clone()
    }

    /// Command ids of every batch the wrapped engine committed that recorded at least one
    /// command, one list per commit, in commit order.
    pub fn committed_batches(&self) -> Vec<Vec<String>> {
        self.committed_batches
            .lock()
            .expect("committed_batches lock is never poisoned: no panics while held")
            .iter()
            .filter(|ids| !ids.is_empty())
            .cloned()
            .collect()
    }

    /// Waits until at least `n` commits have started. Waits on the event itself; the cap
    /// ([`WAIT_CAP`]) only turns a writer that never gets there into a failure, not a hang.
    pub fn wait_for_commits_started(&self, n: u64) {
        let deadline = Instant::now() + WAIT_CAP;
        while self.commits_started() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} commits started after {WAIT_CAP:?}: the writer is stuck",
                self.commits_started()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_at_gate(&self) {
        let (lock, cvar) = &self.gate;
        let closed = lock
            .lock()
            .expect("gate lock is never poisoned: no panics while held");
        let (closed, timeout) = cvar
            .wait_timeout_while(closed, GATE_TIMEOUT, |closed| *closed)
            .expect("gate lock is never poisoned: no panics while held");
        assert!(
            !timeout.timed_out() || !*closed,
            "a commit waited {GATE_TIMEOUT:?} at a gate the test never released"
        );
    }
}

fn command_ids(batch: &WriteBatch) -> Vec<String> {
    batch
        .ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Put { table, key, .. } if *table == tables::COMMANDS => {
                Some(String::from_utf8_lossy(key).into_owned())
            }
            _ => None,
        })
        .collect()
}

impl Engine for FaultyEngine {
    fn name(&self) -> &'static str {
        "faulty"
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, EngineError> {
        if self.fail_next_snapshot.swap(false, Ordering::SeqCst) {
            self.snapshots_failed.fetch_add(1, Ordering::SeqCst);
            return Err(EngineError::Injected("test failure of a snapshot".into()));
        }
        self.inner.snapshot()
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), EngineError> {
        self.commit_with(batch, Durability::Synced)
    }

    /// Forwards the durability, so the writer's unsynced index commits stay unsynced (the
    /// trait's default would sync every one).
    fn commit_with(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        // Decide before waiting: a failure armed while this commit waits belongs to the next one.
        let fail = self.fail_next.swap(false, Ordering::SeqCst);
        let fail_after = !fail && self.commit_then_fail.swap(false, Ordering::SeqCst);
        self.commits_started.fetch_add(1, Ordering::SeqCst);
        self.wait_at_gate();
        if fail {
            self.failed_batches
                .lock()
                .expect("failed_batches lock is never poisoned: no panics while held")
                .push(command_ids(&batch));
            return Err(EngineError::Injected(format!(
                "test failure of a batch of {} operations",
                batch.len()
            )));
        }
        let ids = command_ids(&batch);
        if fail_after {
            // Durable first, as a write whose completion was lost: synced whatever was asked.
            self.inner.commit_with(batch, Durability::Synced)?;
            self.committed_batches
                .lock()
                .expect("committed_batches lock is never poisoned: no panics while held")
                .push(ids.clone());
            self.failed_batches
                .lock()
                .expect("failed_batches lock is never poisoned: no panics while held")
                .push(ids);
            return Err(EngineError::Injected(
                "test failure reported after the batch was committed and synced".into(),
            ));
        }
        self.inner.commit_with(batch, durability)?;
        self.committed_batches
            .lock()
            .expect("committed_batches lock is never poisoned: no panics while held")
            .push(ids);
        self.commits_ok.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A store in `dir` whose index engine is a [`FaultyEngine`] around the real one, with no
/// hooks: faults hit the index engine, never the segment log.
pub fn faulty_store(
    dir: &std::path::Path,
    backend: ledger::Backend,
) -> (Arc<FaultyEngine>, Arc<ledger::Store>) {
    faulty_store_with(dir, backend, &[])
}

/// [`faulty_store`] for a store whose writer runs `hooks` (a wallet store: the projection
/// hook): opening replays any unindexed log tail through them, before the faulty engine is
/// put in front of the index.
pub fn faulty_store_with(
    dir: &std::path::Path,
    backend: ledger::Backend,
    hooks: &[Arc<dyn ledger::CommitHook>],
) -> (Arc<FaultyEngine>, Arc<ledger::Store>) {
    let plain = ledger::open_store(dir, ledger::Create::IfMissing, backend, hooks)
        .unwrap_or_else(|e| panic!("opening a {backend:?} test store failed: {e}"));
    let faulty = FaultyEngine::new(Arc::clone(plain.index()));
    drop(plain);
    let store = ledger::Store::with_index(dir, faulty.clone(), false, hooks)
        .unwrap_or_else(|e| panic!("reopening the store on the faulty engine failed: {e}"));
    (faulty, store)
}
