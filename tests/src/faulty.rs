//! A test [`Engine`] that wraps a real one and can hold or fail commits on demand.
//!
//! Two controls, both one-shot and race-free with respect to the ledger's single writer:
//! - [`FaultyEngine::hold_commits`] makes commits wait at a gate until
//!   [`FaultyEngine::release_commits`]; while the writer waits there, further appends pile up in
//!   its queue and all land in its next group commit.
//! - [`FaultyEngine::fail_next_commit`] makes the next commit that *starts* after the call return
//!   [`EngineError::Injected`] without touching the wrapped engine.
//!
//! The wrapper records what each failed batch contained, so a test can prove how many appends
//! were in the commit that failed instead of assuming it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ledger::engine::WriteOp;
use ledger::log::tables;
use ledger::{Engine, EngineError, Snapshot, WriteBatch};

/// Longest a commit waits at a closed gate before failing the test, so a mistake in a test
/// cannot hang the suite.
const GATE_TIMEOUT: Duration = Duration::from_secs(30);

/// See the module doc.
pub struct FaultyEngine {
    /// The engine that does the real work.
    inner: Arc<dyn Engine>,
    /// Armed by `fail_next_commit`, consumed by the next commit that starts.
    fail_next: AtomicBool,
    /// True while commits must wait; the condvar wakes them on release.
    gate: (Mutex<bool>, Condvar),
    /// Commits that have started (entered `commit`), failed or not.
    commits_started: AtomicU64,
    /// Commits that reached the wrapped engine and succeeded.
    commits_ok: AtomicU64,
    /// For each injected failure: the command ids written by the failed batch, in batch order.
    failed_batches: Mutex<Vec<Vec<String>>>,
}

impl FaultyEngine {
    /// Wraps `inner`; with no control armed it behaves exactly like `inner`.
    pub fn new(inner: Arc<dyn Engine>) -> Arc<FaultyEngine> {
        Arc::new(FaultyEngine {
            inner,
            fail_next: AtomicBool::new(false),
            gate: (Mutex::new(false), Condvar::new()),
            commits_started: AtomicU64::new(0),
            commits_ok: AtomicU64::new(0),
            failed_batches: Mutex::new(Vec::new()),
        })
    }

    /// The next commit that starts fails with [`EngineError::Injected`] and writes nothing.
    pub fn fail_next_commit(&self) {
        self.fail_next.store(true, Ordering::SeqCst);
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

    /// Waits until at least `n` commits have started, or panics after `timeout`.
    pub fn wait_for_commits_started(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.commits_started() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} commits started within {timeout:?}",
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
        self.inner.snapshot()
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), EngineError> {
        // Decide before waiting: a failure armed while this commit waits belongs to the next one.
        let fail = self.fail_next.swap(false, Ordering::SeqCst);
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
        self.inner.commit(batch)?;
        self.commits_ok.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A store in `dir` whose index engine is a [`FaultyEngine`] around the real one: faults hit the
/// index and view commits (after a group's frame is durable), never the segment log.
pub fn faulty_store(
    dir: &std::path::Path,
    backend: ledger::Backend,
) -> (Arc<FaultyEngine>, Arc<ledger::Store>) {
    let plain = ledger::store::open_engine(dir, ledger::Create::IfMissing, backend)
        .unwrap_or_else(|e| panic!("opening a {backend:?} test store failed: {e}"));
    let faulty = FaultyEngine::new(Arc::clone(plain.index()));
    drop(plain);
    let store = ledger::Store::with_index(dir, faulty.clone(), false, &[])
        .unwrap_or_else(|e| panic!("reopening the store on the faulty engine failed: {e}"));
    (faulty, store)
}
