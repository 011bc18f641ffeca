//! The [`Ledger`] handle: a single writer thread with group commit, and the read API.
//!
//! Appends from any number of callers go through a bounded queue (back-pressure: a caller waits
//! when it is full) to one writer thread. The writer takes every request waiting (up to the
//! limits in [`crate::limits`]), plans them against one snapshot, lets the commit hooks add their
//! writes (projections write their views here, in the same transaction), commits once (one
//! fsync), and only then answers each caller. If the commit fails, every caller in it gets the
//! error and the writer re-reads the head from disk: the log is as it was.
//!
//! The writer is an OS thread, not a tokio task, because a commit blocks on fsync; tokio
//! channels connect it to async and blocking callers alike.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use crate::append::{AppendError, AppendOutcome, AppendRequest, Plan, StreamVersions, WriterState};
use crate::engine::{Engine, Snapshot, WriteBatch};
use crate::limits;
use crate::log::{self, ReadError};
use crate::record::EventRecord;
use crate::store::{self, Backend, Create, OpenError};
use crate::types::{Head, Position, StreamVersion};
use crate::verify::{self, VerifyReport};

/// Plugs extra writes into the writer's transaction. Projections implement it so that views and
/// their checkpoint are committed atomically with the events they fold.
pub trait CommitHook: Send + Sync + 'static {
    /// Called once per group commit with the new records (in position order) and the snapshot
    /// the writer planned against (the state just before these records). Adds writes to `batch`.
    /// An error fails the whole group commit.
    fn on_commit(
        &self,
        snap: &dyn Snapshot,
        records: &[Arc<EventRecord>],
        batch: &mut WriteBatch,
    ) -> Result<(), String>;
}

/// How to open a ledger.
#[derive(Clone)]
pub struct LedgerOptions {
    /// May the store be created.
    pub create: Create,
    /// Backend for a new store.
    pub backend: Backend,
    /// Hooks run in every group commit, in order.
    pub hooks: Vec<Arc<dyn CommitHook>>,
}

impl Default for LedgerOptions {
    fn default() -> LedgerOptions {
        LedgerOptions {
            create: Create::IfMissing,
            backend: Backend::Redb,
            hooks: Vec::new(),
        }
    }
}

type Reply = oneshot::Sender<Result<AppendOutcome, AppendError>>;

struct Job {
    request: AppendRequest,
    reply: Reply,
}

struct Inner {
    engine: Arc<dyn Engine>,
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    head: watch::Receiver<Head>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer after it has answered everything queued.
        drop(self.sender.lock().map(|mut s| s.take()));
        if let Ok(mut w) = self.writer.lock() {
            if let Some(handle) = w.take() {
                let _ = handle.join();
            }
        }
    }
}

/// A handle to an open ledger. Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

/// Why a ledger could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The store could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The log could not be read at start-up.
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl Ledger {
    /// Opens the store in `dir`.
    pub fn open(dir: &Path, options: LedgerOptions) -> Result<Ledger, LedgerError> {
        let engine = store::open_engine(dir, options.create, options.backend)?;
        Ledger::with_engine(engine, options.hooks)
    }

    /// Starts a ledger on an already open engine (tests use this to wrap engines).
    pub fn with_engine(
        engine: Arc<dyn Engine>,
        hooks: Vec<Arc<dyn CommitHook>>,
    ) -> Result<Ledger, LedgerError> {
        let state = load_state(&*engine)?;
        let (sender, receiver) = mpsc::channel(limits::WRITER_QUEUE_CAPACITY);
        let (head_tx, head_rx) = watch::channel(state.head);
        let writer_engine = Arc::clone(&engine);
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || run_writer(&*writer_engine, receiver, state, &hooks, &head_tx))
            .map_err(|e| {
                LedgerError::Open(OpenError::Io {
                    path: "ledger writer thread".into(),
                    reason: e.to_string(),
                })
            })?;
        Ok(Ledger {
            inner: Arc::new(Inner {
                engine,
                sender: Mutex::new(Some(sender)),
                head: head_rx,
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<Job>, AppendError> {
        self.inner
            .sender
            .lock()
            .map_err(|_| AppendError::Closed)?
            .clone()
            .ok_or(AppendError::Closed)
    }

    /// Appends atomically; resolves once the events are durable (or the append was refused).
    pub async fn append(&self, mut request: AppendRequest) -> Result<AppendOutcome, AppendError> {
        request.validate()?;
        // Hash the payloads here, on the caller's thread, not on the single writer thread.
        request.fingerprint = Some(request.effective_fingerprint());
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(Job { request, reply })
            .await
            .map_err(|_| AppendError::Closed)?;
        answer.await.map_err(|_| AppendError::Closed)?
    }

    /// [`Ledger::append`] for code outside an async runtime. Must not be called from inside one.
    pub fn append_blocking(
        &self,
        mut request: AppendRequest,
    ) -> Result<AppendOutcome, AppendError> {
        request.validate()?;
        request.fingerprint = Some(request.effective_fingerprint());
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .blocking_send(Job { request, reply })
            .map_err(|_| AppendError::Closed)?;
        answer.blocking_recv().map_err(|_| AppendError::Closed)?
    }

    /// The engine, for readers that need a snapshot across several reads.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.inner.engine
    }

    /// A consistent read view.
    pub fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, ReadError> {
        Ok(self.inner.engine.snapshot()?)
    }

    /// The last durable event's position and hash.
    pub fn head(&self) -> Head {
        *self.inner.head.borrow()
    }

    /// Up to `limit` events from position `from` on.
    pub fn read_all(&self, from: Position, limit: usize) -> Result<Vec<EventRecord>, ReadError> {
        log::read_all(&*self.snapshot()?, from, limit)
    }

    /// Up to `limit` events of a stream from version `from` on.
    pub fn read_stream(
        &self,
        stream: &str,
        from: StreamVersion,
        limit: usize,
    ) -> Result<Vec<EventRecord>, ReadError> {
        log::read_stream(&*self.snapshot()?, stream, from, limit)
    }

    /// A stream's current version (0 if it has no events).
    pub fn stream_version(&self, stream: &str) -> Result<StreamVersion, ReadError> {
        log::stream_version(&*self.snapshot()?, stream)
    }

    /// Verifies the whole log (see [`crate::verify`]).
    pub fn verify(&self, progress: &mut dyn FnMut(u64)) -> Result<VerifyReport, ReadError> {
        verify::verify(&*self.snapshot()?, progress)
    }

    /// Follows the log from `from` (inclusive): first the stored events, then new ones live.
    pub fn subscribe(&self, from: Position) -> Subscription {
        Subscription {
            ledger: Arc::downgrade(&self.inner),
            next: Position(from.0.max(1)),
            buffer: std::collections::VecDeque::new(),
            head: self.inner.head.clone(),
        }
    }
}

/// A catch-up-then-live reader of the log, in position order, without gaps or duplicates:
/// it always reads from the durable log by position, and waits on the head when caught up.
pub struct Subscription {
    /// Weak, so that a subscription does not keep the writer (and the store lock) alive.
    ledger: std::sync::Weak<Inner>,
    next: Position,
    buffer: std::collections::VecDeque<EventRecord>,
    head: watch::Receiver<Head>,
}

/// Events fetched per read while catching up.
const SUBSCRIPTION_CHUNK: usize = 1_024;

impl Subscription {
    /// The next event; waits for one when caught up. `None` once the ledger is closed.
    pub async fn next(&mut self) -> Option<Result<EventRecord, ReadError>> {
        loop {
            if let Some(record) = self.buffer.pop_front() {
                self.next = record.position.next();
                return Some(Ok(record));
            }
            if self.head.borrow_and_update().position >= self.next {
                let ledger = Ledger {
                    inner: self.ledger.upgrade()?,
                };
                match ledger.read_all(self.next, SUBSCRIPTION_CHUNK) {
                    Ok(records) => self.buffer.extend(records),
                    Err(e) => return Some(Err(e)),
                }
                continue;
            }
            if self.head.changed().await.is_err() {
                return None;
            }
        }
    }
}

fn load_state(engine: &dyn Engine) -> Result<WriterState, ReadError> {
    let snap = engine.snapshot()?;
    let (head, last) = log::read_head(&*snap)?;
    Ok(WriterState {
        head,
        last_event_id: last.map(|r| r.event_id),
    })
}

fn run_writer(
    engine: &dyn Engine,
    mut receiver: mpsc::Receiver<Job>,
    mut state: WriterState,
    hooks: &[Arc<dyn CommitHook>],
    head_tx: &watch::Sender<Head>,
) {
    let mut versions = StreamVersions::default();
    // How many callers are likely in flight: the largest recent group, halved per group so
    // that a lone caller after a burst waits for a few commits at most. The callers answered
    // by a commit are the ones most likely to come straight back, so the next group waits a
    // little for them (see `gather`).
    let mut in_flight = 0usize;
    while let Some(first) = receiver.blocking_recv() {
        let jobs = gather(&mut receiver, first, in_flight);
        in_flight = jobs.len().max(in_flight / 2);
        state = group_commit(engine, state, &mut versions, jobs, hooks, head_tx);
    }
}

/// Collects one group commit: `first`, everything already queued, and, while the group is
/// smaller than `in_flight` (the recent group size), whatever arrives within
/// [`limits::GROUP_GATHER_WAIT`].
///
/// Why wait at all: one fdatasync costs the same for 1 event as for 64, and a commit started
/// the moment the previous one returned holds only the callers that missed that one (groups
/// settle at about half the writers). Why only then, and so briefly: a lone writer
/// (`in_flight` 1) never waits, and the wait is bounded well below one fdatasync. (A wait of a
/// quarter of the last commit, up to 2 ms, filled groups of 64 but doubled append-1's p99 at 64
/// writers without raising its throughput, so the bound stays short.)
fn gather(receiver: &mut mpsc::Receiver<Job>, first: Job, in_flight: usize) -> Vec<Job> {
    fn events_of(job: &Job) -> usize {
        job.request.streams.iter().map(|s| s.events.len()).sum()
    }
    let mut events = events_of(&first);
    let mut jobs = vec![first];
    let deadline = std::time::Instant::now() + limits::GROUP_GATHER_WAIT;
    while jobs.len() < limits::MAX_APPENDS_PER_COMMIT && events < limits::MAX_EVENTS_PER_COMMIT {
        match receiver.try_recv() {
            Ok(job) => {
                events += events_of(&job);
                jobs.push(job);
            }
            Err(mpsc::error::TryRecvError::Empty)
                if jobs.len() < in_flight && std::time::Instant::now() < deadline =>
            {
                // Let the callers' threads run (this box may have fewer cores than threads).
                std::thread::yield_now();
            }
            Err(_) => break,
        }
    }
    debug_assert!(!jobs.is_empty());
    jobs
}

/// Plans, hooks and commits one group; answers every job. Returns the writer state after it.
fn group_commit(
    engine: &dyn Engine,
    state: WriterState,
    versions: &mut StreamVersions,
    jobs: Vec<Job>,
    hooks: &[Arc<dyn CommitHook>],
    head_tx: &watch::Sender<Head>,
) -> WriterState {
    let snap = match engine.snapshot() {
        Ok(s) => s,
        Err(e) => {
            let err = AppendError::from(e);
            for job in jobs {
                let _ = job.reply.send(Err(err.clone()));
            }
            return state;
        }
    };
    let mut plan = Plan::new(&*snap, state, versions);
    let mut pending: Vec<(Reply, AppendOutcome)> = Vec::with_capacity(jobs.len());
    for job in jobs {
        match plan.add(job.request) {
            Ok(outcome) => pending.push((job.reply, outcome)),
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }
    let result = run_hooks(&*snap, &mut plan, hooks).and_then(|()| {
        if plan.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut plan.batch);
        engine.commit(batch).map_err(AppendError::from)
    });
    let planned = plan.state;
    let written = std::mem::take(&mut plan.versions);
    drop(plan);
    drop(snap);
    match result {
        Ok(()) => {
            // Publish the new head before any caller hears back, so a caller that reads
            // `head()` after its append returns always sees its own events.
            head_tx.send_replace(planned.head);
            versions.merge(written);
            for (reply, outcome) in pending {
                let _ = reply.send(Ok(outcome));
            }
            planned
        }
        Err(err) => {
            for (reply, _) in pending {
                let _ = reply.send(Err(err.clone()));
            }
            // The commit did not happen: the durable state is the truth, not our plan.
            versions.clear();
            let state = load_state(engine).unwrap_or(state);
            head_tx.send_replace(state.head);
            state
        }
    }
}

fn run_hooks(
    snap: &dyn Snapshot,
    plan: &mut Plan<'_>,
    hooks: &[Arc<dyn CommitHook>],
) -> Result<(), AppendError> {
    if plan.records.is_empty() {
        return Ok(());
    }
    for hook in hooks {
        hook.on_commit(snap, &plan.records, &mut plan.batch)
            .map_err(|reason| AppendError::Storage {
                reason: format!("commit hook failed: {reason}"),
            })?;
    }
    Ok(())
}
