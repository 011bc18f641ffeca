//! The wallet service API that the wallet core service embeds: open a ledger with its views,
//! submit commands, read a member's state and statement (computed by [`crate::statement`]).
//!
//! Submitting runs the one direction of data inside the ledger's writer, in log order: the
//! writer decides the command (`decide`, pure) against the stored rows plus everything its group
//! commit decided before it, appends the events, and the projection hook folds them into the rows
//! in the same transaction. Commands on one wallet never conflict and are never retried, so a hot
//! wallet goes at group-commit speed (the way TigerBeetle's state machine applies a batch).
//!
//! `expire` without a member (SPEC 2) runs member by member: the expiry index lists the members
//! with something due, each member's expirations are one atomic append under the command id and
//! the member (the writer's [`CommandJob::part`]), and a last empty append records the command as
//! done. A replay of the id finishes what is left and writes nothing twice.
//!
//! How the whole-store `expire` walks the store, and why it always ends:
//! - it reads the expiry index in rounds of at most [`EXPIRE_ROUND`] members from a cursor that
//!   only moves forward, and expires every member of a round before reading the next; so each
//!   index entry is read once and memory is bounded by the round, not the store. (Re-reading
//!   from the start each round would list again, every round, members whose part is recorded
//!   but who still have something due: items that became due through a command with an earlier
//!   business time after their part ran. Enough of those and no round would make progress.)
//! - a member whose due items do not fit in one append ([`ledger::limits::MAX_EVENTS_PER_APPEND`])
//!   gets a chain of appends ([`ExpirePart`]): the next is queued once the previous answered with
//!   a full append, and a replay walks the recorded ones as duplicates.
//! - at most [`EXPIRE_WINDOW`] appends are queued at once, so the writer group-commits many
//!   members per fsync without the queue growing with the store.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use ledger::domain::{
    apply_identity_event, identity_stream, Command, CommandBody, DomainEvent, IdentityState,
    MemberId, Rejection, StateReader, WalletState, WalletSummary,
};
use ledger::log;
use ledger::{
    AppendError, AppendOutcome, CommandAnswer, CommandError, CommandJob, ExpirePart, Ledger,
    LedgerOptions, Snapshot, StreamVersion, Timestamp,
};

use crate::check::{self, CheckReport, ProgressFn};
use crate::fold::{self, AsOf};
use crate::hook::ProjectionHook;
use crate::statement::{self, StatementLine, StatementPage, StatementStart};
use crate::views;
use crate::{rebuild, ProjectionError};

/// Members whose expirations are queued to the writer at once by a whole-store `expire`.
const EXPIRE_WINDOW: usize = 512;
/// Members read from the expiry index per round of a whole-store `expire`.
const EXPIRE_ROUND: usize = 8_192;

/// Why a command was not applied. Nothing was written in every case but
/// `Ledger(AppendError::OutcomeUnknown)`, whose retry with the same id settles it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// A rule refused it (the message is the rule's, e.g. `member m1 has no wallet`).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The id was used before for a different command.
    #[error("id {id} already used for a different command")]
    IdReused { id: String },
    /// The ledger failed (storage, limits, closed).
    #[error(transparent)]
    Ledger(AppendError),
    /// Reading state failed.
    #[error(transparent)]
    Read(#[from] ProjectionError),
}

/// What a submitted command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// Positions of its events.
    pub outcome: AppendOutcome,
    /// True when the id had been applied before with the same content (nothing written now).
    pub duplicate: bool,
}

/// The projection hook followed by `extra`: the hooks every writer and every recovery of a
/// store with wallet views runs.
fn all_hooks(extra: Vec<Arc<dyn ledger::CommitHook>>) -> Vec<Arc<dyn ledger::CommitHook>> {
    let mut all: Vec<Arc<dyn ledger::CommitHook>> = vec![Arc::new(ProjectionHook)];
    all.extend(extra);
    all
}

/// Opens (or creates) a store with wallet views: recovery after a crash replays the log's tail
/// through the projection hook, so the views stay at the log head. Every reader and writer of a
/// wallet store opens it this way.
pub fn open_store(
    dir: &Path,
    create: ledger::Create,
    backend: ledger::Backend,
) -> Result<Arc<ledger::Store>, ledger::OpenError> {
    open_store_with(dir, create, backend, &ledger::StoreOptions::default())
}

/// [`open_store`] with [`ledger::StoreOptions`] (segment size, the file system: the reliability
/// simulator opens wallet stores on its simulated disk this way, then starts the service with
/// [`WalletService::with_engine`]).
pub fn open_store_with(
    dir: &Path,
    create: ledger::Create,
    backend: ledger::Backend,
    options: &ledger::StoreOptions,
) -> Result<Arc<ledger::Store>, ledger::OpenError> {
    ledger::open_store_with(dir, create, backend, &all_hooks(Vec::new()), options)
}

/// A ledger with the wallet views attached.
#[derive(Clone)]
pub struct WalletService {
    ledger: Ledger,
}

impl WalletService {
    /// Opens (or creates) the store (replaying a crash's log tail into the views), rebuilds the
    /// views first if they are not at the log head (e.g. after a crash during a rebuild), and
    /// starts the writer with the projection hook.
    pub fn open(dir: &Path, options: LedgerOptions) -> Result<WalletService, ProjectionError> {
        let hooks = all_hooks(options.hooks);
        let engine =
            ledger::open_store(dir, options.create, options.backend, &hooks).map_err(|e| {
                ProjectionError::Fold {
                    reason: e.to_string(),
                }
            })?;
        WalletService::start(engine, hooks, Arc::new(ledger::SystemClock))
    }

    /// Like [`WalletService::open`] on an already open store (opened with [`open_store`], so that
    /// its recovery ran the projection hook); `hooks` run after the projection hook.
    pub fn with_engine(
        engine: Arc<ledger::Store>,
        hooks: Vec<Arc<dyn ledger::CommitHook>>,
    ) -> Result<WalletService, ProjectionError> {
        WalletService::start(engine, all_hooks(hooks), Arc::new(ledger::SystemClock))
    }

    /// [`WalletService::with_engine`] reading the wall clock from `clock` (recorded times,
    /// event ids, the business time of a command without `at`), see [`ledger::Clock`].
    pub fn with_engine_and_clock(
        engine: Arc<ledger::Store>,
        hooks: Vec<Arc<dyn ledger::CommitHook>>,
        clock: Arc<dyn ledger::Clock>,
    ) -> Result<WalletService, ProjectionError> {
        WalletService::start(engine, all_hooks(hooks), clock)
    }

    fn start(
        engine: Arc<ledger::Store>,
        hooks: Vec<Arc<dyn ledger::CommitHook>>,
        clock: Arc<dyn ledger::Clock>,
    ) -> Result<WalletService, ProjectionError> {
        if !rebuild::views_current(&*engine)? {
            rebuild::rebuild(&*engine, &mut |_| {})?;
        }
        let ledger = Ledger::with_engine_and_clock(engine, hooks, clock).map_err(|e| {
            ProjectionError::Fold {
                reason: e.to_string(),
            }
        })?;
        Ok(WalletService { ledger })
    }

    /// The underlying ledger (reads, verify, subscriptions).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Applies a command; resolves when its events are durable.
    pub async fn submit(&self, cmd: &Command) -> Result<Submitted, SubmitError> {
        let at = cmd.at.unwrap_or_else(|| self.ledger.now());
        if is_expire_all(cmd) {
            return self.expire_all(cmd, at, &mut |_| {}).await;
        }
        finish(self.ledger.submit(job(cmd, at, None)).await)
    }

    /// Queues a command behind every command queued before it and returns what to await: the
    /// writer decides commands in queue order, each against the state the ones before it left,
    /// so a caller with many commands (import) keeps their order without waiting for each
    /// one's commit. `expire` without a member cannot be queued (it runs member by member):
    /// use [`WalletService::submit`].
    pub async fn queue(&self, cmd: &Command) -> Result<Queued, SubmitError> {
        if is_expire_all(cmd) {
            return Err(SubmitError::Ledger(AppendError::Invalid {
                field: "member".into(),
                reason: "an expire of every wallet runs member by member; submit it".into(),
            }));
        }
        let at = cmd.at.unwrap_or_else(|| self.ledger.now());
        Ok(Queued(self.ledger.queue_command(job(cmd, at, None)).await?))
    }

    /// [`WalletService::submit`] for callers outside an async runtime.
    pub fn submit_blocking(&self, cmd: &Command) -> Result<Submitted, SubmitError> {
        let at = cmd.at.unwrap_or_else(|| self.ledger.now());
        if is_expire_all(cmd) {
            return self.expire_all_blocking(cmd, at, &mut |_| {});
        }
        finish(self.ledger.submit_blocking(job(cmd, at, None)))
    }

    /// `expire` without a member over the whole store, calling `progress` with the number of
    /// members done so far. See the module doc.
    pub async fn expire_all(
        &self,
        cmd: &Command,
        at: Timestamp,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Submitted, SubmitError> {
        let mut run = ExpireRun::start(self, cmd)?;
        while run.next_round(self)? {
            loop {
                if let Some(part) = run.next_to_queue() {
                    let answer = self
                        .ledger
                        .queue_command(job(cmd, at, Some(part.clone())))
                        .await?;
                    run.queued(part, answer);
                } else if let Some((part, answer)) = run.oldest() {
                    run.answered(part, finish(answer.await)?, progress);
                } else {
                    break;
                }
            }
        }
        Ok(run.answer(finish(self.ledger.submit(job(cmd, at, None)).await)?))
    }

    /// [`WalletService::expire_all`] for callers outside an async runtime: the same run, on a
    /// runtime of its own (the writer's channels work from any runtime). Must not be called from
    /// inside one.
    pub fn expire_all_blocking(
        &self,
        cmd: &Command,
        at: Timestamp,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Submitted, SubmitError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| {
                SubmitError::Read(ProjectionError::Fold {
                    reason: format!("cannot start a runtime for the expire: {e}"),
                })
            })?;
        runtime.block_on(self.expire_all(cmd, at, progress))
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, ProjectionError> {
        Ok(self.ledger.snapshot()?)
    }

    /// The member's current wallet (from the view), `None` if the member has no wallet. The
    /// rows are checked against the member hash: a damaged view is an error, never an answer.
    pub fn wallet(&self, member: &MemberId) -> Result<Option<WalletState>, ProjectionError> {
        let snap = self.snapshot()?;
        views::read_consistent(&*snap, || views::load_wallet_verified(&*snap, member))
    }

    /// The member's wallet summary (balance, miles, counts): one row decoded, but every row of
    /// the member read and checked against its member hash, so a damaged view is an error.
    pub fn summary(&self, member: &MemberId) -> Result<Option<WalletSummary>, ProjectionError> {
        let snap = self.snapshot()?;
        views::read_consistent(&*snap, || views::verify_member_rows(&*snap, member))?;
        views::Rows::new(&*snap)
            .summary(member)
            .map_err(|e| ProjectionError::View {
                member: member.to_string(),
                reason: e.reason,
            })
    }

    /// The member's wallet as of a business time or log position, folded from the log.
    pub fn wallet_as_of(
        &self,
        member: &MemberId,
        as_of: AsOf,
    ) -> Result<Option<WalletState>, ProjectionError> {
        fold::fold_member(&*self.snapshot()?, member, as_of)
    }

    /// Checks the invariants of SPEC section 4 on one snapshot of this service's store (see
    /// [`crate::check`]): a service can prove itself without the CLI. Commands submitted
    /// meanwhile are not seen; the report is of the moment the snapshot was taken.
    pub fn check(&self, progress: &ProgressFn<'_>) -> Result<CheckReport, ProjectionError> {
        check::check_snapshot(&*self.snapshot()?, progress)
    }

    /// The member's wallet events with the running balance (see [`crate::statement`]).
    pub fn statement(&self, member: &MemberId) -> Result<Vec<StatementLine>, ProjectionError> {
        let mut lines = Vec::new();
        self.statement_each(member, &mut |line| {
            lines.push(line);
            Ok(())
        })?;
        Ok(lines)
    }

    /// The member's wallet events with the running balance, one at a time in stream order, on
    /// one snapshot: memory stays the same whatever the history (the balance is carried from
    /// line to line; no wallet state is built). See [`statement::statement_each`].
    pub fn statement_each(
        &self,
        member: &MemberId,
        each: &mut dyn FnMut(StatementLine) -> Result<(), ProjectionError>,
    ) -> Result<(), ProjectionError> {
        statement::statement_each(&*self.snapshot()?, member, each)
    }

    /// At most `limit` lines of the member's statement from `start`, on one snapshot, and where
    /// the next page starts. See [`statement::statement_page`].
    pub fn statement_page(
        &self,
        member: &MemberId,
        start: StatementStart,
        limit: usize,
    ) -> Result<StatementPage, ProjectionError> {
        statement::statement_page(&*self.snapshot()?, member, start, limit)
    }

    /// [`WalletService::submit`] that does not wait for room in the writer's queue: when it is
    /// full, fails at once with `SubmitError::Ledger(AppendError::Busy)` and nothing is written
    /// (a service answers "retry later"); otherwise queues the command and resolves when its
    /// events are durable. An `expire` without a member cannot be queued as one job (it runs
    /// member by member): it takes [`WalletService::submit`]'s path, waiting for room.
    pub async fn try_submit(&self, cmd: &Command) -> Result<Submitted, SubmitError> {
        let at = cmd.at.unwrap_or_else(|| self.ledger.now());
        if is_expire_all(cmd) {
            return self.expire_all(cmd, at, &mut |_| {}).await;
        }
        let answer = self.ledger.try_queue_command(job(cmd, at, None))?;
        finish(answer.await)
    }
}

/// A command queued by [`WalletService::queue`].
pub struct Queued(ledger::CommandAnswer);

impl Queued {
    /// Waits for the command's outcome (durable when it is `Ok`).
    pub async fn outcome(self) -> Result<Submitted, SubmitError> {
        finish(self.0.await)
    }
}

/// A whole-store `expire` in progress: the rounds over the expiry index, the member appends
/// waiting to be queued and queued, and what was done so far.
struct ExpireRun {
    /// The command's `as_of`; `None`: nothing to walk (already recorded as done, or not an
    /// `expire` without a member): only the final answer from the writer is left.
    as_of: Option<Timestamp>,
    /// Where the next round reads the expiry index; `None` once a round reached its end.
    cursor: Option<Vec<u8>>,
    /// Appends of this round not queued yet, in member id order; a member's next chunk goes
    /// to the front.
    todo: VecDeque<ExpirePart>,
    /// Queued appends, oldest first, with what to wait on. At most [`EXPIRE_WINDOW`].
    waiting: VecDeque<(ExpirePart, CommandAnswer)>,
    /// Members whose part is answered in full (a member listed by two rounds counts twice).
    done: u64,
    /// Position of the first event this run appended.
    first: Option<ledger::Position>,
    /// Events this run appended.
    events: u32,
}

impl ExpireRun {
    /// Starts a run of `cmd`: nothing to walk when its completion is recorded (a replay: the
    /// writer answers it) or when a part of it was recorded with other content (the writer's
    /// answer is then `id .. already used for a different command`, before anything is written).
    fn start(service: &WalletService, cmd: &Command) -> Result<ExpireRun, SubmitError> {
        let mut run = ExpireRun {
            as_of: None,
            cursor: Some(Vec::new()),
            todo: VecDeque::new(),
            waiting: VecDeque::new(),
            done: 0,
            first: None,
            events: 0,
        };
        let CommandBody::Expire {
            as_of,
            member: None,
        } = &cmd.body
        else {
            return Ok(run);
        };
        let snap = service.snapshot()?;
        let id = cmd.id.as_str();
        if log::command_entry(&*snap, id)
            .map_err(ProjectionError::from)?
            .is_some()
        {
            return Ok(run);
        }
        let part = log::first_command_with_prefix(&*snap, &CommandJob::parts_prefix(&cmd.id))
            .map_err(ProjectionError::from)?;
        if part.is_some_and(|(_, entry)| entry.fingerprint != cmd.fingerprint()) {
            return Err(SubmitError::IdReused { id: id.to_owned() });
        }
        run.as_of = Some(*as_of);
        Ok(run)
    }

    /// Reads the next round of members with something due into `todo`; false when done.
    fn next_round(&mut self, service: &WalletService) -> Result<bool, SubmitError> {
        debug_assert!(self.todo.is_empty() && self.waiting.is_empty());
        let (Some(as_of), Some(from)) = (self.as_of, self.cursor.take()) else {
            return Ok(false);
        };
        let round = views::due_members(&*service.snapshot()?, as_of, &from, EXPIRE_ROUND)?;
        debug_assert!(round.next.as_ref().is_none_or(|next| *next > from));
        self.cursor = round.next;
        self.todo = round
            .members
            .into_iter()
            .map(|(member, _)| ExpirePart::first(member))
            .collect();
        Ok(!self.todo.is_empty())
    }

    /// The next append to queue, if the window has room.
    fn next_to_queue(&mut self) -> Option<ExpirePart> {
        if self.waiting.len() >= EXPIRE_WINDOW {
            return None;
        }
        self.todo.pop_front()
    }

    fn queued(&mut self, part: ExpirePart, answer: CommandAnswer) {
        self.waiting.push_back((part, answer));
        debug_assert!(self.waiting.len() <= EXPIRE_WINDOW);
    }

    /// The oldest queued append, to wait for.
    fn oldest(&mut self) -> Option<(ExpirePart, CommandAnswer)> {
        self.waiting.pop_front()
    }

    /// Counts an answered append. A full one may leave more of the member due: its next chunk
    /// is queued next (only now, so that the writer decides it after this one is committed).
    fn answered(
        &mut self,
        part: ExpirePart,
        answer: Submitted,
        progress: &mut (dyn FnMut(u64) + Send),
    ) {
        if !answer.duplicate && answer.outcome.count > 0 {
            self.first.get_or_insert(answer.outcome.first_position);
            self.events = self.events.saturating_add(answer.outcome.count);
        }
        let full = usize::try_from(answer.outcome.count)
            .is_ok_and(|count| count >= ledger::limits::MAX_EVENTS_PER_APPEND);
        if full {
            self.todo.push_front(part.next());
            return;
        }
        self.done += 1;
        progress(self.done);
    }

    /// The command's answer: the completion's, or, when this run appended events, where they
    /// start and how many there are (they are spread over one append per member).
    fn answer(&self, completion: Submitted) -> Submitted {
        match (completion.duplicate, self.first) {
            (false, Some(first)) => Submitted {
                outcome: AppendOutcome {
                    first_position: first,
                    count: self.events,
                    duplicate: false,
                },
                duplicate: false,
            },
            _ => completion,
        }
    }
}

fn is_expire_all(cmd: &Command) -> bool {
    matches!(cmd.body, CommandBody::Expire { member: None, .. })
}

fn job(cmd: &Command, at: Timestamp, part: Option<ExpirePart>) -> CommandJob {
    CommandJob {
        cmd: cmd.clone(),
        at,
        part,
    }
}

impl From<CommandError> for SubmitError {
    fn from(e: CommandError) -> SubmitError {
        match e {
            CommandError::Rejected(r) => SubmitError::Rejected(r),
            CommandError::IdReused { id } => SubmitError::IdReused { id },
            CommandError::Append(a) => SubmitError::Ledger(a),
            other => SubmitError::Ledger(AppendError::Storage {
                reason: other.to_string(),
            }),
        }
    }
}

fn finish(result: Result<AppendOutcome, CommandError>) -> Result<Submitted, SubmitError> {
    let outcome = result?;
    Ok(Submitted {
        outcome,
        duplicate: outcome.duplicate,
    })
}

/// The identity state of a member, folded from its (short) identity stream.
pub fn load_identity(
    snap: &dyn Snapshot,
    member: &MemberId,
) -> Result<Option<IdentityState>, ProjectionError> {
    let stream = identity_stream(member);
    let mut state = None;
    for r in log::stream_events(snap, &stream, StreamVersion(1)) {
        let r = r?;
        let event = DomainEvent::decode(&r.event_type, r.schema_version, r.codec, &r.payload)
            .map_err(|e| ProjectionError::Event {
                position: r.position.0,
                reason: e.to_string(),
            })?;
        if let DomainEvent::Identity(e) = event {
            apply_identity_event(&mut state, &e).map_err(|e| ProjectionError::Event {
                position: r.position.0,
                reason: e.to_string(),
            })?;
        }
    }
    Ok(state)
}
