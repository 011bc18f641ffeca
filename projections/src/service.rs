//! The wallet service API that the wallet core service embeds: open a ledger with its views,
//! submit commands, read a member's state and statement.
//!
//! Submitting runs the one direction of data: read the states the command needs (from the views,
//! at a stream version read in the same snapshot) -> `decide` (pure) -> append with those versions
//! as expected versions -> the projection hook folds the events in the same transaction. A
//! version conflict (someone else appended to one of the streams in between) retries from fresh
//! state, so `transfer` stays atomic and correct under concurrency.

use std::path::Path;
use std::sync::Arc;

use ledger::domain::{
    apply_identity_event, decide, decide_expire, identity_stream, wallet_stream, Command,
    CommandBody, DecideInput, DomainEvent, IdentityState, MemberId, Rejection, StreamEvents,
    StreamKind, WalletEvent, WalletState,
};
use ledger::engine::TableChunks;
use ledger::log;
use ledger::{
    AppendError, AppendOutcome, AppendRequest, Codec, ExpectedVersion, Ledger, LedgerOptions,
    NewEvent, Snapshot, StreamAppend, StreamVersion, Timestamp,
};

use crate::fold::{self, AsOf};
use crate::hook::CachedProjectionHook;
use crate::views::{self, tables};
use crate::{rebuild, ProjectionError};

/// Retries of a command whose streams moved between read and append.
const MAX_CONFLICT_RETRIES: usize = 1_000;
/// Members read per chunk when `expire` runs over every wallet.
const EXPIRE_SCAN_CHUNK: usize = 4_096;

/// Why a command was not applied. Nothing was written in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// A rule refused it (the message is the rule's, e.g. `member m1 has no wallet`).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The id was used before for a different command.
    #[error("id {id} already used for a different command")]
    IdReused { id: String },
    /// The command would append more events than one atomic append may hold.
    #[error("{0}")]
    TooLarge(String),
    /// The streams kept moving; retried too often.
    #[error("command {id} conflicted {retries} times with concurrent writers; try again")]
    Contention { id: String, retries: usize },
    /// The ledger failed (storage, closed).
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

/// One line of a member's statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementLine {
    /// Log position of the event.
    pub position: u64,
    /// Business time.
    pub at: Timestamp,
    /// Event type, e.g. `wallet.paid`.
    pub event_type: String,
    /// Command that produced it.
    pub command_id: String,
    /// Change of the balance in yen (negative for payments and transfers out).
    pub delta_yen: i128,
    /// Balance after the event.
    pub balance_yen: u64,
}

/// A ledger with the wallet views attached.
#[derive(Clone)]
pub struct WalletService {
    ledger: Ledger,
}

impl WalletService {
    /// Opens (or creates) the store, rebuilds the views first if they are not at the log head
    /// (e.g. after a crash during a rebuild), and starts the writer with the projection hook.
    pub fn open(dir: &Path, options: LedgerOptions) -> Result<WalletService, ProjectionError> {
        let engine =
            ledger::store::open_engine(dir, options.create, options.backend).map_err(|e| {
                ProjectionError::Fold {
                    reason: e.to_string(),
                }
            })?;
        WalletService::with_engine(engine, options.hooks)
    }

    /// Like [`WalletService::open`] on an already open engine; `hooks` run after the projection hook.
    pub fn with_engine(
        engine: Arc<dyn ledger::Engine>,
        hooks: Vec<Arc<dyn ledger::CommitHook>>,
    ) -> Result<WalletService, ProjectionError> {
        if !rebuild::views_current(&*engine)? {
            rebuild::rebuild(&*engine, &mut |_| {})?;
        }
        let mut all: Vec<Arc<dyn ledger::CommitHook>> = vec![Arc::new(CachedProjectionHook::new())];
        all.extend(hooks);
        let ledger = Ledger::with_engine(engine, all).map_err(|e| ProjectionError::Fold {
            reason: e.to_string(),
        })?;
        Ok(WalletService { ledger })
    }

    /// The underlying ledger (reads, verify, subscriptions).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Applies a command; resolves when its events are durable.
    pub async fn submit(&self, cmd: &Command) -> Result<Submitted, SubmitError> {
        let at = cmd.at.unwrap_or_else(Timestamp::now);
        for _ in 0..MAX_CONFLICT_RETRIES {
            let Some(request) = self.prepare(cmd, at)? else {
                return self.duplicate(cmd);
            };
            match self.ledger.append(request).await {
                Err(AppendError::WrongExpectedVersion { .. }) => continue,
                other => return finish(cmd, other),
            }
        }
        Err(contention(cmd))
    }

    /// [`WalletService::submit`] for callers outside an async runtime.
    pub fn submit_blocking(&self, cmd: &Command) -> Result<Submitted, SubmitError> {
        let at = cmd.at.unwrap_or_else(Timestamp::now);
        for _ in 0..MAX_CONFLICT_RETRIES {
            let Some(request) = self.prepare(cmd, at)? else {
                return self.duplicate(cmd);
            };
            match self.ledger.append_blocking(request) {
                Err(AppendError::WrongExpectedVersion { .. }) => continue,
                other => return finish(cmd, other),
            }
        }
        Err(contention(cmd))
    }

    fn duplicate(&self, cmd: &Command) -> Result<Submitted, SubmitError> {
        let snap = self.snapshot()?;
        match log::command_entry(&*snap, cmd.id.as_str()).map_err(ProjectionError::from)? {
            Some(entry) if entry.fingerprint == cmd.fingerprint() => Ok(Submitted {
                outcome: AppendOutcome {
                    first_position: entry.first_position,
                    count: entry.count,
                    duplicate: true,
                },
                duplicate: true,
            }),
            _ => Err(SubmitError::IdReused {
                id: cmd.id.as_str().to_owned(),
            }),
        }
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, ProjectionError> {
        Ok(self.ledger.snapshot()?)
    }

    /// Reads states and decides. `None`: the id is already used (answered by `duplicate`).
    fn prepare(&self, cmd: &Command, at: Timestamp) -> Result<Option<AppendRequest>, SubmitError> {
        let snap = self.snapshot()?;
        if log::command_entry(&*snap, cmd.id.as_str())
            .map_err(ProjectionError::from)?
            .is_some()
        {
            return Ok(None);
        }
        let decided = match &cmd.body {
            CommandBody::Expire {
                as_of,
                member: None,
            } => expire_all(&*snap, *as_of),
            _ => decide_with_states(&*snap, cmd, at),
        };
        drop(snap);
        let decided = match decided {
            Ok(d) => d,
            // A backend without read snapshots (sled) may have shown state that already holds
            // this very command, applied concurrently: then it is a duplicate, not a rejection.
            Err(SubmitError::Rejected(rejection)) => {
                let fresh = self.snapshot()?;
                if log::command_entry(&*fresh, cmd.id.as_str())
                    .map_err(ProjectionError::from)?
                    .is_some()
                {
                    return Ok(None);
                }
                return Err(SubmitError::Rejected(rejection));
            }
            Err(e) => return Err(e),
        };
        let mut streams = Vec::with_capacity(decided.len());
        let total: usize = decided.iter().map(|(s, _)| s.events.len()).sum();
        if total > ledger::limits::MAX_EVENTS_PER_APPEND {
            return Err(SubmitError::TooLarge(format!(
                "command {} would append {total} events, more than the {} one atomic command may hold; name a member",
                cmd.id,
                ledger::limits::MAX_EVENTS_PER_APPEND
            )));
        }
        for (decision, version) in decided {
            let events = decision
                .events
                .iter()
                .map(|e| new_event(e, at))
                .collect::<Result<Vec<_>, _>>()?;
            let expected = if version.0 == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(version)
            };
            streams.push(StreamAppend {
                stream: decision.stream,
                expected,
                events,
            });
        }
        Ok(Some(AppendRequest {
            command_id: cmd.id.as_str().to_owned(),
            fingerprint: Some(cmd.fingerprint()),
            streams,
        }))
    }

    /// The member's current wallet (from the view), `None` if the member has no wallet.
    pub fn wallet(&self, member: &MemberId) -> Result<Option<WalletState>, ProjectionError> {
        views::load_wallet(&*self.snapshot()?, member)
    }

    /// The member's wallet as of a business time or log position, folded from the log.
    pub fn wallet_as_of(
        &self,
        member: &MemberId,
        as_of: AsOf,
    ) -> Result<Option<WalletState>, ProjectionError> {
        fold::fold_member(&*self.snapshot()?, member, as_of)
    }

    /// The member's wallet events with the running balance.
    pub fn statement(&self, member: &MemberId) -> Result<Vec<StatementLine>, ProjectionError> {
        let snap = self.snapshot()?;
        let stream = wallet_stream(member);
        let mut state: Option<WalletState> = None;
        let mut lines = Vec::new();
        let mut from = StreamVersion(1);
        loop {
            let records = log::read_stream(&*snap, &stream, from, 4_096)?;
            let Some(last) = records.last() else { break };
            from = StreamVersion(last.version.0 + 1);
            for record in &records {
                let Some((_, event)) = crate::hook::wallet_event_of(record)? else {
                    continue;
                };
                let before = state.as_ref().map_or(0, |s| s.balance().0);
                ledger::domain::apply_wallet_event(&mut state, &event).map_err(|e| {
                    ProjectionError::Event {
                        position: record.position.0,
                        reason: e.to_string(),
                    }
                })?;
                let after = state.as_ref().map_or(0, |s| s.balance().0);
                lines.push(StatementLine {
                    position: record.position.0,
                    at: record.at,
                    event_type: record.event_type.clone(),
                    command_id: record.command_id.clone(),
                    delta_yen: i128::from(after) - i128::from(before),
                    balance_yen: after,
                });
            }
        }
        Ok(lines)
    }
}

fn finish(
    cmd: &Command,
    result: Result<AppendOutcome, AppendError>,
) -> Result<Submitted, SubmitError> {
    match result {
        Ok(outcome) => Ok(Submitted {
            outcome,
            duplicate: outcome.duplicate,
        }),
        Err(AppendError::CommandIdReused { .. }) => Err(SubmitError::IdReused {
            id: cmd.id.as_str().to_owned(),
        }),
        Err(e) => Err(SubmitError::Ledger(e)),
    }
}

fn contention(cmd: &Command) -> SubmitError {
    SubmitError::Contention {
        id: cmd.id.as_str().to_owned(),
        retries: MAX_CONFLICT_RETRIES,
    }
}

fn new_event(event: &DomainEvent, at: Timestamp) -> Result<NewEvent, SubmitError> {
    let payload = event.encode(Codec::DEFAULT).map_err(|e| {
        SubmitError::Read(ProjectionError::Fold {
            reason: format!("cannot encode {}: {e}", event.event_type()),
        })
    })?;
    Ok(NewEvent {
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        codec: Codec::DEFAULT,
        payload,
        at,
    })
}

/// The identity state of a member, folded from its (short) identity stream.
pub fn load_identity(
    snap: &dyn Snapshot,
    member: &MemberId,
) -> Result<Option<IdentityState>, ProjectionError> {
    let stream = identity_stream(member);
    let mut state = None;
    let mut from = StreamVersion(1);
    loop {
        let records = log::read_stream(snap, &stream, from, 4_096)?;
        let Some(last) = records.last() else {
            return Ok(state);
        };
        from = StreamVersion(last.version.0 + 1);
        for r in &records {
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
    }
}

type Decided = Vec<(StreamEvents, StreamVersion)>;

fn decide_with_states(
    snap: &dyn Snapshot,
    cmd: &Command,
    at: Timestamp,
) -> Result<Decided, SubmitError> {
    let refs = cmd.stream_refs();
    let mut wallets: Vec<(MemberId, Option<WalletState>)> = Vec::new();
    let mut identities: Vec<(MemberId, Option<IdentityState>)> = Vec::new();
    let mut versions = Vec::new();
    for r in &refs {
        versions.push((
            r.name(),
            log::stream_version(snap, &r.name()).map_err(ProjectionError::from)?,
        ));
        match r.kind {
            StreamKind::Wallet => {
                wallets.push((r.member.clone(), views::load_wallet(snap, &r.member)?))
            }
            StreamKind::Identity => {
                identities.push((r.member.clone(), load_identity(snap, &r.member)?))
            }
        }
    }
    let mut input = DecideInput::new();
    for (m, s) in &wallets {
        input = input.with_wallet(m.clone(), s.as_ref());
    }
    for (m, s) in &identities {
        input = input.with_identity(m.clone(), s.as_ref());
    }
    let decided = decide(cmd, at, &input)?;
    Ok(decided
        .into_iter()
        .map(|d| {
            let version = versions
                .iter()
                .find(|(name, _)| *name == d.stream)
                .map_or(StreamVersion(0), |(_, v)| *v);
            (d, version)
        })
        .collect())
}

/// `expire` without a member: every wallet, one atomic append (bounded by the append limit).
fn expire_all(snap: &dyn Snapshot, as_of: Timestamp) -> Result<Decided, SubmitError> {
    let mut out = Vec::new();
    for rows in TableChunks::new(snap, tables::WALLETS, EXPIRE_SCAN_CHUNK) {
        for (key, value) in &rows.map_err(ProjectionError::from)? {
            let member = String::from_utf8_lossy(key);
            let state = views::decode_state(&member, value)?;
            let events: Vec<WalletEvent> = decide_expire(&state, as_of);
            if events.is_empty() {
                continue;
            }
            let stream = wallet_stream(state.member());
            let version = log::stream_version(snap, &stream).map_err(ProjectionError::from)?;
            out.push((
                StreamEvents {
                    stream,
                    events: events.into_iter().map(DomainEvent::Wallet).collect(),
                },
                version,
            ));
        }
    }
    Ok(out)
}
