//! The [`Ledger`] handle: a single writer thread with group commit, and the read API.
//!
//! Appends from any number of callers go through a bounded queue (back-pressure: a caller waits
//! when it is full, or is refused at once with [`Ledger::try_queue_command`]) to one writer
//! thread. The writer takes every request waiting (up to the
//! limits in [`crate::limits`]), plans them against one snapshot, lets the commit hooks add their
//! writes (projections write their views here), writes the group's frame to the segment log
//! with one write and one `fdatasync`, commits the index and views (synced only at a
//! checkpoint, see [`crate::limits::CHECKPOINT_EVENTS`]: the rest is replayed from the log after
//! a crash; between checkpoints, on redb, on a thread of its own while the frame syncs, hidden
//! from readers until the sync returns and taken back if it fails, see `write_group`), and only
//! then answers each caller. If the group fails before its frame is written,
//! every caller in it gets the error and the writer re-reads the head: the log is as it was. If
//! the frame's write or sync fails, or the index commit after it, the writer stops: every caller
//! of that group gets [`AppendError::OutcomeUnknown`] (the frame may be on disk: a retry with
//! the same command id after a reopen settles it), every later one an error that nothing was
//! written, and the store must be reopened.
//!
//! The writer is an OS thread, not a tokio task, because a commit blocks on fsync; tokio
//! channels connect it to async and blocking callers alike.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use crate::append::{
    AppendError, AppendOutcome, AppendRequest, Plan, StreamAppend, StreamVersions, WriterState,
};
use crate::domain::{
    decide, decide_expire_at_most, wallet_stream, Command, CommandBody, CommandId, DomainEvent,
    MemberId, Rejection, StateReader, StreamEvents,
};
use crate::engine::{Durability, Snapshot, WriteBatch};
use crate::limits;
use crate::log::{self, ReadError};
use crate::record::EventRecord;
use crate::segments::LogError;
use crate::stats::{WriterCounters, WriterStats};
use crate::store::{self, Backend, Create, OpenError, Store};
use crate::timestamp::{Clock, SystemClock, Timestamp};
use crate::types::{ExpectedVersion, Head, Position, StreamVersion};
use crate::verify::{self, VerifyReport};

/// Plugs extra writes into the writer's transaction. Projections implement it so that views and
/// their checkpoint are committed atomically with the events they fold, and so that commands
/// are decided against them inside the writer.
pub trait CommitHook: Send + Sync + 'static {
    /// A stable name. The store records the names of the hooks its writer runs, and a recovery
    /// that must replay the log's tail refuses to do it through other hooks (the views would
    /// silently fall behind the log).
    fn name(&self) -> &'static str;

    /// Starts one group commit on the snapshot the writer plans against (the state just before
    /// the group). An error fails the whole group commit.
    fn begin<'s>(&'s self, snap: &'s dyn Snapshot) -> Result<Box<dyn GroupHook + 's>, HookError>;
}

/// Why a commit hook failed: the hook's own error, with its sources (a storage error keeps the
/// engine's). Fails the whole group commit; every caller in it gets [`AppendError::Hook`].
#[derive(Debug, thiserror::Error)]
#[error("commit hook failed: {source}")]
pub struct HookError {
    #[source]
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl HookError {
    /// Wraps the hook's error.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        HookError {
            source: source.into(),
        }
    }
}

/// A hook's part of one group commit: it sees every record the group appends, in position
/// order, as each request is planned, and writes its rows when the group is done.
pub trait GroupHook {
    /// Folds the records one request just appended (in position order) into what the hook will
    /// write. An error fails the whole group commit.
    fn apply(&mut self, records: &[Arc<EventRecord>]) -> Result<(), HookError>;

    /// The state commands are decided against: the stored rows plus everything applied so far
    /// in this group. `None`: this hook keeps no state (commands need one that does).
    fn reader(&self) -> Option<&dyn StateReader> {
        None
    }

    /// Adds the hook's writes to the group's batch. An error fails the whole group commit.
    fn finish(self: Box<Self>, batch: &mut WriteBatch) -> Result<(), HookError>;
}

/// A command for the writer to decide and append: the way commands on one wallet never conflict.
#[derive(Clone, Debug)]
pub struct CommandJob {
    /// The command.
    pub cmd: Command,
    /// Its business time (`cmd.at`, or the time it was submitted).
    pub at: Timestamp,
    /// `Some(p)`: only one append of member `p.member`'s part of an `expire` without a member
    /// (SPEC 2), recorded under its own key, [`CommandJob::part_id`]. `None`: the whole command;
    /// for an `expire` without a member that appends nothing and records the command as done.
    pub part: Option<ExpirePart>,
}

/// One append of one member's part of an `expire` without a member.
///
/// A member's part is one atomic append when its due lots and coupons fit in one
/// ([`limits::MAX_EVENTS_PER_APPEND`]), which is every member but one with a huge history. Such
/// a member gets a chain of appends: chunk 0 expires the first `MAX_EVENTS_PER_APPEND` due items
/// (earliest `expires_at` first), chunk 1 is decided against the state after chunk 0, and so on;
/// a chunk with fewer events than the limit is the member's last. The caller queues chunk `k + 1`
/// only after chunk `k` answered with a full append (see `projections::WalletService`), so a
/// replay walks the recorded chunks as duplicates and continues where the chain stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpirePart {
    /// The member whose due items this append expires.
    pub member: MemberId,
    /// Which append of the member's part: 0 first.
    pub chunk: u32,
}

impl ExpirePart {
    /// The first (and usually only) append of `member`'s part.
    pub fn first(member: MemberId) -> ExpirePart {
        ExpirePart { member, chunk: 0 }
    }

    /// The append after this one, for a member whose due items did not fit in this one.
    pub fn next(&self) -> ExpirePart {
        ExpirePart {
            member: self.member.clone(),
            chunk: self.chunk.saturating_add(1),
        }
    }
}

impl CommandJob {
    /// The command id its events and index entry carry: the client's id, or for one member's part
    /// of a whole-store `expire`, `<id>` U+001F `<member>`, and for the chunks after the member's
    /// first append `<id>` U+001F `<member>` U+001F `<chunk>` (no client id has a control
    /// character and no member id a U+001F, so a part's id never meets a client's or another
    /// part's). At most [`limits::MAX_RECORD_COMMAND_ID_BYTES`] when the client id is at most
    /// [`limits::MAX_COMMAND_ID_BYTES`].
    pub fn part_id(&self) -> String {
        let prefix = || CommandJob::parts_prefix(&self.cmd.id);
        match &self.part {
            None => self.cmd.id.as_str().to_owned(),
            Some(ExpirePart { member, chunk: 0 }) => format!("{}{member}", prefix()),
            Some(ExpirePart { member, chunk }) => format!("{}{member}\u{1f}{chunk}", prefix()),
        }
    }

    /// What the id of every part of the whole-store `expire` `id` starts with: `<id>` U+001F.
    pub fn parts_prefix(id: &CommandId) -> String {
        format!("{id}\u{1f}")
    }
}

/// Why a command was not applied. Nothing was written in every case but
/// [`AppendError::OutcomeUnknown`] (see there).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// A rule refused it (the message is the rule's, e.g. `member m1 has no wallet`).
    #[error(transparent)]
    Rejected(Rejection),
    /// The id was used before for a different command.
    #[error("id {id} already used for a different command")]
    IdReused {
        /// The command id.
        id: String,
    },
    /// The ledger could not append it (storage, limits, closed).
    #[error(transparent)]
    Append(#[from] AppendError),
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

/// What a caller waits on: the outcome of a raw append or of a command.
enum Reply {
    Append(oneshot::Sender<Result<AppendOutcome, AppendError>>),
    Command(oneshot::Sender<Result<AppendOutcome, CommandError>>),
}

impl Reply {
    fn ok(self, outcome: AppendOutcome) {
        // A caller that stopped waiting has nothing to hear.
        let _ = match self {
            Reply::Append(tx) => tx.send(Ok(outcome)).is_ok(),
            Reply::Command(tx) => tx.send(Ok(outcome)).is_ok(),
        };
    }

    fn fail(self, error: CommandError) {
        let _ = match (self, error) {
            (Reply::Append(tx), CommandError::Append(e)) => tx.send(Err(e)).is_ok(),
            (Reply::Append(tx), other) => tx
                .send(Err(AppendError::Storage {
                    reason: other.to_string(),
                }))
                .is_ok(),
            (Reply::Command(tx), e) => tx.send(Err(e)).is_ok(),
        };
    }
}

enum Work {
    Append(AppendRequest),
    Command(CommandJob),
}

struct Job {
    work: Work,
    reply: Reply,
}

struct Inner {
    engine: Arc<Store>,
    clock: Arc<dyn Clock>,
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    head: watch::Receiver<Head>,
    writer: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<WriterCounters>,
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
    /// The index could not be written at start-up.
    #[error(transparent)]
    Engine(#[from] crate::EngineError),
}

impl Ledger {
    /// Opens the store in `dir`.
    pub fn open(dir: &Path, options: LedgerOptions) -> Result<Ledger, LedgerError> {
        let engine = store::open_store(dir, options.create, options.backend, &options.hooks)?;
        Ledger::with_engine(engine, options.hooks)
    }

    /// Starts a ledger on an already open store (opened with the same `hooks`, so that its
    /// recovery replayed the log's tail through them).
    pub fn with_engine(
        engine: Arc<Store>,
        hooks: Vec<Arc<dyn CommitHook>>,
    ) -> Result<Ledger, LedgerError> {
        Ledger::with_engine_and_clock(engine, hooks, Arc::new(SystemClock))
    }

    /// [`Ledger::with_engine`] reading the wall clock from `clock` (recorded times, event ids,
    /// the default business time of commands): tests step it back to prove nothing depends on
    /// it moving forward (see [`Clock`]).
    pub fn with_engine_and_clock(
        engine: Arc<Store>,
        hooks: Vec<Arc<dyn CommitHook>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Ledger, LedgerError> {
        store::record_hooks(&engine, &hooks)?;
        let state = load_state(&engine)?;
        let (sender, receiver) = mpsc::channel(limits::WRITER_QUEUE_CAPACITY);
        let (head_tx, head_rx) = watch::channel(state.head);
        let writer_engine = Arc::clone(&engine);
        let writer_clock = Arc::clone(&clock);
        let counters = Arc::new(WriterCounters::new());
        let writer_counters = Arc::clone(&counters);
        let writer = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                run_writer(
                    &writer_engine,
                    receiver,
                    state,
                    &hooks,
                    &head_tx,
                    &*writer_clock,
                    &writer_counters,
                )
            })
            .map_err(|e| {
                LedgerError::Open(OpenError::Io {
                    path: "ledger writer thread".into(),
                    reason: e.to_string(),
                })
            })?;
        Ok(Ledger {
            inner: Arc::new(Inner {
                engine,
                clock,
                sender: Mutex::new(Some(sender)),
                head: head_rx,
                writer: Mutex::new(Some(writer)),
                counters,
            }),
        })
    }

    /// The current time on this ledger's clock (see [`Clock`]).
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
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
            .send(Job {
                work: Work::Append(request),
                reply: Reply::Append(reply),
            })
            .await
            .map_err(|_| AppendError::Closed)?;
        answer.await.map_err(|_| AppendError::Closed)?
    }

    /// Hands a command to the writer, which decides it against the hooks' state in log order
    /// and appends its events; resolves once they are durable (or the command was refused).
    /// Commands on one wallet never conflict: the writer decides each after the one before.
    pub async fn submit(&self, job: CommandJob) -> Result<AppendOutcome, CommandError> {
        self.queue_command(job).await?.await
    }

    /// Queues a command and returns at once with what to wait on: a caller with many
    /// independent commands (the parts of a whole-store `expire`) keeps several in one group.
    pub async fn queue_command(&self, job: CommandJob) -> Result<CommandAnswer, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .send(Job {
                work: Work::Command(job),
                reply: Reply::Command(reply),
            })
            .await
            .map_err(|_| AppendError::Closed)?;
        Ok(CommandAnswer(answer))
    }

    /// [`Ledger::queue_command`] without waiting for room: when the writer's queue is full
    /// ([`limits::WRITER_QUEUE_CAPACITY`] jobs waiting) it fails at once with
    /// [`AppendError::Busy`] and nothing is queued or written, so a service can answer "retry
    /// later" (HTTP 503) instead of holding the request. Callable from any thread, in or out of
    /// an async runtime.
    pub fn try_queue_command(&self, job: CommandJob) -> Result<CommandAnswer, CommandError> {
        let (reply, answer) = oneshot::channel();
        let sender = self.sender()?;
        match sender.try_send(Job {
            work: Work::Command(job),
            reply: Reply::Command(reply),
        }) {
            Ok(()) => Ok(CommandAnswer(answer)),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(CommandError::Append(AppendError::Busy {
                    waiting: (sender.max_capacity() - sender.capacity()) as u64,
                }))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(CommandError::Append(AppendError::Closed))
            }
        }
    }

    /// The writer's counters, the log's frame syncs and the queue, for metrics (see
    /// [`WriterStats`] for what each counts). Reads atomics only: never waits on the writer.
    pub fn stats(&self) -> WriterStats {
        let c = &*self.inner.counters;
        let syncs = self.inner.engine.log().sync_stats();
        let sender = self.sender().ok();
        let (queue_depth, queue_capacity) = match &sender {
            Some(s) => (
                (s.max_capacity() - s.capacity()) as u64,
                s.max_capacity() as u64,
            ),
            None => (0, limits::WRITER_QUEUE_CAPACITY as u64),
        };
        WriterStats {
            groups: c.group_size.count(),
            commands: c.commands.load(Ordering::Relaxed),
            appends: c.appends.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
            group_size_buckets: c.group_size.cumulative(),
            fsync_count: syncs.count,
            fsync_nanos_total: syncs.nanos_total,
            fsync_nanos_buckets: syncs.nanos_buckets,
            queue_depth,
            queue_capacity,
            writer_alive: sender.is_some() && c.alive.load(Ordering::Relaxed),
        }
    }

    /// [`Ledger::submit`] for code outside an async runtime. Must not be called from inside one.
    pub fn submit_blocking(&self, job: CommandJob) -> Result<AppendOutcome, CommandError> {
        self.queue_command_blocking(job)?.wait_blocking()
    }

    /// [`Ledger::queue_command`] for code outside an async runtime.
    pub fn queue_command_blocking(&self, job: CommandJob) -> Result<CommandAnswer, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.sender()?
            .blocking_send(Job {
                work: Work::Command(job),
                reply: Reply::Command(reply),
            })
            .map_err(|_| AppendError::Closed)?;
        Ok(CommandAnswer(answer))
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
            .blocking_send(Job {
                work: Work::Append(request),
                reply: Reply::Append(reply),
            })
            .map_err(|_| AppendError::Closed)?;
        answer.blocking_recv().map_err(|_| AppendError::Closed)?
    }

    /// The store, for readers that need a snapshot across several reads.
    pub fn engine(&self) -> &Arc<Store> {
        &self.inner.engine
    }

    /// A consistent read view.
    pub fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, ReadError> {
        Ok(crate::Engine::snapshot(&*self.inner.engine)?)
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
        log::visible_stream_version(&*self.snapshot()?, stream)
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

/// The answer to a queued command: await it, or [`CommandAnswer::wait_blocking`].
pub struct CommandAnswer(oneshot::Receiver<Result<AppendOutcome, CommandError>>);

impl std::future::Future for CommandAnswer {
    type Output = Result<AppendOutcome, CommandError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(CommandError::Append(AppendError::Closed))))
    }
}

impl CommandAnswer {
    /// Waits outside an async runtime.
    pub fn wait_blocking(self) -> Result<AppendOutcome, CommandError> {
        self.0
            .blocking_recv()
            .unwrap_or(Err(CommandError::Append(AppendError::Closed)))
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
    /// The next event; waits for one when caught up. `None` once the ledger is closed. Must be
    /// awaited inside a tokio runtime (its reads run on the blocking pool).
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
                // The read touches the index and the segment files: run it on the blocking
                // pool, so that many subscribers catching up (an HTTP event feed) never stall
                // the runtime's threads serving everything else.
                let from = self.next;
                let read =
                    tokio::task::spawn_blocking(move || ledger.read_all(from, SUBSCRIPTION_CHUNK))
                        .await;
                match read {
                    Ok(Ok(records)) => self.buffer.extend(records),
                    Ok(Err(e)) => return Some(Err(e)),
                    Err(join) => {
                        return Some(Err(ReadError::Engine(crate::EngineError::Io {
                            operation: "a subscription's read",
                            reason: join.to_string(),
                        })))
                    }
                }
                continue;
            }
            if self.head.changed().await.is_err() {
                return None;
            }
        }
    }
}

fn load_state(engine: &Store) -> Result<WriterState, ReadError> {
    let snap = crate::Engine::snapshot(engine)?;
    let (head, last) = log::read_head(&*snap)?;
    Ok(WriterState {
        head,
        last_event_id: last.map(|r| r.event_id),
    })
}

/// When the writer syncs the index: a checkpoint every [`limits::CHECKPOINT_EVENTS`] events or
/// [`limits::CHECKPOINT_INTERVAL`], whichever comes first, which bounds the log tail a reopen
/// after a crash replays.
struct Checkpoints {
    events: u64,
    since: std::time::Instant,
}

impl Checkpoints {
    fn new() -> Checkpoints {
        Checkpoints {
            events: 0,
            since: std::time::Instant::now(),
        }
    }

    /// The durability of the index commit of a group of `events`.
    fn next(&mut self, events: u32) -> Durability {
        self.events += u64::from(events);
        if self.events >= limits::CHECKPOINT_EVENTS
            || self.since.elapsed() >= limits::CHECKPOINT_INTERVAL
        {
            *self = Checkpoints::new();
            Durability::Synced
        } else {
            Durability::Unsynced
        }
    }
}

/// The writer's helper thread: commits a group's index writes while the writer's thread waits
/// for the group's frame's `fdatasync` (see [`write_group`]).
struct Indexer {
    jobs: std::sync::mpsc::Sender<WriteBatch>,
    done: std::sync::mpsc::Receiver<Result<(), crate::engine::EngineError>>,
}

impl Indexer {
    /// Starts the thread in `scope`; `None` if it cannot start (the writer then commits the
    /// index itself, after each frame's sync).
    fn start<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        engine: &'scope Store,
    ) -> Option<Indexer> {
        let (jobs, batches) = std::sync::mpsc::channel::<WriteBatch>();
        let (results, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ledger-indexer".into())
            .spawn_scoped(scope, move || {
                for batch in batches {
                    if results.send(engine.commit_index_undoable(batch)).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Indexer { jobs, done })
    }

    /// Hands `batch` to the thread, or gives it back if the thread is gone.
    fn start_commit(&self, batch: WriteBatch) -> Result<(), WriteBatch> {
        self.jobs.send(batch).map_err(|e| e.0)
    }

    /// The result of the commit handed over last.
    fn finish_commit(&self) -> Result<(), crate::engine::EngineError> {
        self.done.recv().unwrap_or_else(|_| {
            Err(crate::engine::EngineError::Io {
                operation: "index commit",
                reason: "the writer's indexer thread ended".into(),
            })
        })
    }
}

fn run_writer(
    engine: &Store,
    receiver: mpsc::Receiver<Job>,
    state: WriterState,
    hooks: &[Arc<dyn CommitHook>],
    head_tx: &watch::Sender<Head>,
    clock: &dyn Clock,
    counters: &WriterCounters,
) {
    std::thread::scope(|scope| {
        let indexer = Indexer::start(scope, engine);
        let context = WriterContext {
            engine,
            hooks,
            head_tx,
            clock,
            counters,
            indexer: indexer.as_ref(),
        };
        write_until_closed(&context, receiver, state);
    });
}

/// What the writer loop runs with.
struct WriterContext<'w> {
    engine: &'w Store,
    hooks: &'w [Arc<dyn CommitHook>],
    head_tx: &'w watch::Sender<Head>,
    clock: &'w dyn Clock,
    counters: &'w WriterCounters,
    indexer: Option<&'w Indexer>,
}

fn write_until_closed(
    context: &WriterContext<'_>,
    mut receiver: mpsc::Receiver<Job>,
    mut state: WriterState,
) {
    let WriterContext {
        engine,
        hooks,
        head_tx,
        clock,
        counters,
        indexer,
    } = *context;
    let mut versions = StreamVersions::default();
    let mut checkpoints = Checkpoints::new();
    let mut stopped: Option<String> = None;
    // How many callers are likely in flight: the largest recent group, halved per group so
    // that a lone caller after a burst waits for a few commits at most. The callers answered
    // by a commit are the ones most likely to come straight back, so the next group waits a
    // little for them (see `gather`).
    let mut in_flight = 0usize;
    while let Some(first) = receiver.blocking_recv() {
        let jobs = gather(&mut receiver, first, in_flight);
        in_flight = jobs.len().max(in_flight / 2);
        count_jobs(counters, &jobs);
        if let Some(reason) = &stopped {
            let err = AppendError::Storage {
                reason: format!(
                    "nothing was written: the writer stopped: {reason}; reopen the store"
                ),
            };
            for job in jobs {
                job.reply.fail(CommandError::Append(err.clone()));
            }
            continue;
        }
        let mut writer = Writer {
            engine,
            clock,
            counters,
            versions: &mut versions,
            checkpoints: &mut checkpoints,
            hooks,
            head_tx,
            indexer,
        };
        match writer.group_commit(state, jobs) {
            Ok(next) => state = next,
            Err(reason) => stopped = Some(reason),
        }
    }
    counters.alive.store(false, Ordering::Relaxed);
    // The last checkpoint: a clean shutdown leaves no tail to replay.
    if stopped.is_none() {
        let _ = engine.commit_index(WriteBatch::new(), Durability::Synced);
    }
}

/// Counts a group the writer took: its size and its jobs by kind.
fn count_jobs(counters: &WriterCounters, jobs: &[Job]) {
    let commands = jobs
        .iter()
        .filter(|j| matches!(j.work, Work::Command(_)))
        .count() as u64;
    counters.group_size.observe(jobs.len() as u64);
    counters.commands.fetch_add(commands, Ordering::Relaxed);
    counters
        .appends
        .fetch_add(jobs.len() as u64 - commands, Ordering::Relaxed);
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
        match &job.work {
            Work::Append(request) => request.streams.iter().map(|s| s.events.len()).sum(),
            // Decided later; most commands append one or two events.
            Work::Command(_) => 1,
        }
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

/// What the writer keeps between groups.
struct Writer<'w> {
    engine: &'w Store,
    clock: &'w dyn Clock,
    counters: &'w WriterCounters,
    versions: &'w mut StreamVersions,
    checkpoints: &'w mut Checkpoints,
    indexer: Option<&'w Indexer>,
    hooks: &'w [Arc<dyn CommitHook>],
    head_tx: &'w watch::Sender<Head>,
}

/// How a group's write ended.
enum Written {
    /// Frame durable and indexed.
    Done,
    /// Nothing of the group was written; the writer goes on.
    Failed(AppendError),
    /// The frame's write or sync failed, or its index commit: the writer stops.
    Stop(AppendError, String),
}

impl Writer<'_> {
    /// Plans, decides, hooks and writes one group; answers every job. Returns the writer state
    /// after it, or why the writer must stop.
    fn group_commit(&mut self, state: WriterState, jobs: Vec<Job>) -> Result<WriterState, String> {
        let engine = self.engine;
        let fail_all = |jobs: Vec<Job>, err: AppendError| {
            for job in jobs {
                job.reply.fail(CommandError::Append(err.clone()));
            }
        };
        let snap = match crate::Engine::snapshot(engine) {
            Ok(s) => s,
            Err(e) => {
                fail_all(jobs, AppendError::from(e));
                return Ok(state);
            }
        };
        let mut groups = Vec::with_capacity(self.hooks.len());
        for hook in self.hooks {
            match hook.begin(&*snap) {
                Ok(group) => groups.push(group),
                Err(reason) => {
                    drop(groups);
                    fail_all(jobs, hook_failed(reason));
                    return Ok(state);
                }
            }
        }
        let mut plan = Plan::new(&*snap, state, self.versions, self.clock.now());
        let mut pending: Vec<(Reply, AppendOutcome)> = Vec::with_capacity(jobs.len());
        let mut failed: Option<AppendError> = None;
        for job in jobs {
            if failed.is_some() {
                pending.push((job.reply, AppendOutcome::default()));
                continue;
            }
            let before = plan.records.len();
            let outcome = match job.work {
                Work::Append(request) => plan.add(request).map_err(CommandError::Append),
                Work::Command(command) => plan_command(&mut plan, &groups, command),
            };
            match outcome {
                Ok(outcome) => {
                    let new = &plan.records[before..];
                    if !new.is_empty() {
                        failed = groups
                            .iter_mut()
                            .try_for_each(|g| g.apply(new))
                            .err()
                            .map(hook_failed);
                    }
                    pending.push((job.reply, outcome));
                }
                Err(e) => job.reply.fail(e),
            }
        }
        let written = match failed {
            Some(err) => {
                drop(groups);
                Written::Failed(err)
            }
            None => match finish_groups(groups, &mut plan.batch) {
                Err(err) => Written::Failed(err),
                Ok(()) => write_group(self.engine, self.checkpoints, self.indexer, &mut plan),
            },
        };
        let planned = plan.state;
        let written_versions = std::mem::take(&mut plan.versions);
        drop(plan);
        drop(snap);
        match written {
            Written::Done => {
                let events = planned.head.position.0 - state.head.position.0;
                self.counters.events.fetch_add(events, Ordering::Relaxed);
                // Publish the new head before any caller hears back, so a caller that reads
                // `head()` after its append returns always sees its own events.
                self.head_tx.send_replace(planned.head);
                self.versions.merge(written_versions);
                for (reply, outcome) in pending {
                    reply.ok(outcome);
                }
                Ok(planned)
            }
            Written::Failed(err) => {
                for (reply, _) in pending {
                    reply.fail(CommandError::Append(err.clone()));
                }
                // Nothing was written: the durable state is the truth, not our plan.
                self.versions.clear();
                let state = load_state(engine).unwrap_or(state);
                self.head_tx.send_replace(state.head);
                Ok(state)
            }
            Written::Stop(err, reason) => {
                // Before any caller hears of the failure, so a caller that then reads
                // `Ledger::stats` sees the writer stopped.
                self.counters.alive.store(false, Ordering::Relaxed);
                for (reply, _) in pending {
                    reply.fail(CommandError::Append(err.clone()));
                }
                Err(reason)
            }
        }
    }
}

/// Writes the group's frame (one write, one fdatasync) and its index and view writes.
///
/// Between checkpoints, on an index engine that can take a commit back (redb), the index commit
/// runs on the indexer thread while this thread waits for the frame's `fdatasync` (it costs
/// CPU, the sync costs waiting), and new snapshots are held back until both are done, so a
/// reader never sees a group whose frame is not durable. If the sync then fails, the commit is
/// taken back durably (redb would otherwise make it durable when it closes); if that fails too,
/// the store refuses reads until it is reopened. A synced checkpoint commits after the frame's
/// sync, so the durable index never vouches for a frame the disk may not have.
fn write_group(
    engine: &Store,
    checkpoints: &mut Checkpoints,
    indexer: Option<&Indexer>,
    plan: &mut Plan<'_>,
) -> Written {
    if plan.frame.is_empty() {
        debug_assert!(plan.batch.is_empty(), "hooks write only for events");
        return Written::Done;
    }
    let bytes = plan.frame.encode();
    let events = plan.frame.events();
    let first = plan.state.head.position.0 + 1 - u64::from(events);
    let durability = checkpoints.next(events);
    let overlap = indexer.filter(|_| durability == Durability::Unsynced && engine.index_undoable());
    let mut hooks_writes = Some(std::mem::take(&mut plan.batch));
    // The group's index writes once the frame's place is known: handed to the indexer, or kept
    // here to commit after the sync.
    let mut handed_over = false;
    let mut kept: Option<WriteBatch> = None;
    let hidden = overlap.map(|_| engine.hide_new_commits());
    let appended = engine.log().append_with(&bytes, first, &mut |at| {
        let mut batch = hooks_writes.take().expect("the frame is written once");
        let place = store::FramePlace {
            at,
            first_position: first,
            events,
            len: bytes.len() as u64,
        };
        store::index_frame(
            &mut batch,
            place,
            &plan.recorded,
            &plan.records,
            plan.state.head,
        );
        match overlap {
            Some(indexer) => match indexer.start_commit(batch) {
                Ok(()) => handed_over = true,
                Err(batch) => kept = Some(batch),
            },
            None => kept = Some(batch),
        }
    });
    let overlapped = if handed_over {
        overlap.map(Indexer::finish_commit)
    } else {
        None
    };
    if let Err(e) = appended {
        return match e {
            LogError::Stopped { reason } => {
                // The group's index commit ran beside the failed sync: take it back, or the
                // index engine could make it durable when it closes and vouch for a frame the
                // disk may not have (found by the reliability simulator). If that fails too,
                // nobody reads the store until it is reopened.
                if let Some(Ok(())) = overlapped {
                    if let Err(e) = engine.undo_index_commit() {
                        engine.refuse_reads(format!(
                            "a frame's fdatasync failed ({reason}) and its index commit could not be taken back ({e})"
                        ));
                    }
                }
                drop(hidden);
                let err = AppendError::OutcomeUnknown {
                    reason: format!(
                        "the event log could not make this group durable ({reason}); nothing of it was acknowledged and the writer stopped"
                    ),
                };
                Written::Stop(err, reason)
            }
            other => Written::Failed(AppendError::Storage {
                reason: other.to_string(),
            }),
        };
    }
    let committed = match overlapped {
        Some(result) => {
            engine.keep_index_commit();
            result
        }
        None => engine.commit_index(kept.take().expect("the frame was written"), durability),
    };
    drop(hidden);
    if let Err(e) = committed {
        let reason = format!(
                "the index commit of store {} after a durable frame failed ({e}); the events are in the log and a reopen indexes them",
                engine.dir().display()
            );
        engine.log().stop(reason.clone());
        return Written::Stop(
            AppendError::OutcomeUnknown {
                reason: reason.clone(),
            },
            reason,
        );
    }
    Written::Done
}

fn hook_failed(error: HookError) -> AppendError {
    AppendError::Hook(Arc::new(error))
}

fn finish_groups(
    groups: Vec<Box<dyn GroupHook + '_>>,
    batch: &mut WriteBatch,
) -> Result<(), AppendError> {
    for group in groups {
        group.finish(batch).map_err(hook_failed)?;
    }
    Ok(())
}

/// Decides a command against the hooks' state as of everything planned before it in this
/// group, and plans its events. A replayed id is answered from the command index, undecided.
fn plan_command(
    plan: &mut Plan<'_>,
    groups: &[Box<dyn GroupHook + '_>],
    job: CommandJob,
) -> Result<AppendOutcome, CommandError> {
    // `Command` counts its id's length in characters; the log keeps at most 128 bytes of a
    // client's id (a one-byte length on disk, see `record.rs`), so a longer one is refused here,
    // as `AppendRequest::validate` refuses it for a raw append, before anything is planned.
    let client_id_bytes = job.cmd.id.as_str().len();
    if client_id_bytes > limits::MAX_COMMAND_ID_BYTES {
        return Err(CommandError::Append(AppendError::invalid(
            "command_id",
            format!("length {client_id_bytes} is outside 1..=128 bytes"),
        )));
    }
    let id = job.part_id();
    debug_assert!(id.len() <= limits::MAX_RECORD_COMMAND_ID_BYTES);
    let fingerprint = job.cmd.fingerprint();
    if let Some(entry) = plan.known_command(&id).map_err(AppendError::from)? {
        if entry.fingerprint != fingerprint {
            return Err(CommandError::IdReused {
                id: job.cmd.id.as_str().to_owned(),
            });
        }
        return Ok(AppendOutcome {
            first_position: entry.first_position,
            count: entry.count,
            duplicate: true,
        });
    }
    let rows = groups
        .iter()
        .find_map(|g| g.reader())
        .ok_or_else(|| AppendError::Storage {
            reason: "no commit hook keeps the state commands are decided against".into(),
        })?;
    let decided = match &job.part {
        None => decide(&job.cmd, job.at, rows),
        Some(part) => decide_expire_part(&job.cmd, &part.member, rows),
    }
    .map_err(|rejection| match rejection {
        Rejection::Unreadable { reason } => CommandError::Append(AppendError::Storage { reason }),
        other => CommandError::Rejected(other),
    })?;
    let mut streams = Vec::with_capacity(decided.len());
    for decision in decided {
        let events = decision
            .events
            .iter()
            .map(|e| e.to_new_event(job.at))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AppendError::Storage {
                reason: format!("cannot encode an event of command {}: {e}", job.cmd.id),
            })?;
        streams.push(StreamAppend {
            stream: decision.stream,
            // The writer decided against the current rows, so any version is the right one.
            expected: ExpectedVersion::Any,
            events,
        });
    }
    let request = AppendRequest {
        command_id: id,
        fingerprint: Some(fingerprint),
        streams,
    };
    request.validate_streams()?;
    Ok(plan.add(request)?)
}

/// One append of a member's part of an `expire` without a member: that member's due lots and
/// coupons, at most as many as one append may hold (see [`ExpirePart`]).
fn decide_expire_part(
    cmd: &Command,
    member: &MemberId,
    rows: &dyn StateReader,
) -> Result<Vec<StreamEvents>, Rejection> {
    let CommandBody::Expire {
        as_of,
        member: None,
    } = &cmd.body
    else {
        return Err(Rejection::Unreadable {
            reason: format!(
                "command {} has a part for member {member} but is not an expire without a member",
                cmd.id
            ),
        });
    };
    let events = decide_expire_at_most(rows, member, *as_of, limits::MAX_EVENTS_PER_APPEND)?;
    if events.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![StreamEvents {
        stream: wallet_stream(member),
        events: events.into_iter().map(DomainEvent::Wallet).collect(),
    }])
}
