//! Model-based test of the ledger: random sequences of appends (expected versions right and
//! wrong, reused command ids with the same or different content), reads and reopens run against
//! the real ledger and against a `BTreeMap` model; every outcome must be the model's.
//!
//! Appends also come in *groups*: several requests the writer must plan into one group commit,
//! so planning against what earlier requests of the same group wrote is compared with the
//! model too (a request expecting the version an earlier one in the group produced, an
//! expected-version conflict with it, the same command id twice in one group with the same or
//! different content). How a group is forced, without timing: the index engine is a
//! [`ledger_tests::FaultyEngine`]; the test holds the writer inside the commit of a "gate"
//! append, puts the group's requests into the writer's queue in order
//! ([`ledger_tests::queue::enqueue`]), and releases it; the writer's next group takes them all.
//! The committed batches the engine saw prove it: the group's new command ids are exactly one
//! commit's. The model is sequential: a group must answer as the same requests one by one would.
//!
//! Planted defects this test caught (each run, seen failing, reverted): the planner forgetting
//! command ids recorded earlier in the same group (`Plan::known_command` reading only the
//! snapshot: an id twice in one group is appended twice); the planner forgetting versions
//! written earlier in the group (`Plan::current_version` reading only committed state).
//!
//! Cases: 64 by default; set `PROPTEST_CASES` to run more. Failure persistence is off so the
//! suite writes no regression files into the source tree; a failure prints its minimal case.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::{
    AppendError, AppendOutcome, AppendRequest, Backend, Create, EventRecord, ExpectedVersion,
    Ledger, NewEvent, OpenError, Position, StreamVersion,
};
use ledger_tests::queue::enqueue;
use ledger_tests::{new_event, stream_append, FaultyEngine, TestStore};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError};

/// Streams the generated operations touch: few, so that conflicts and reuse are common.
const STREAMS: [&str; 5] = ["m-0", "m-1", "m-2", "m-3", "m-4"];
/// Event types the generated events use.
const EVENT_TYPES: [&str; 2] = ["model.one", "model.two"];
/// Cases when `PROPTEST_CASES` is not set: enough to cover the operation mix, fast in CI.
const DEFAULT_CASES: u32 = 64;

// ---------------------------------------------------------------------------------------------
// Generated operations

/// How a stream part states its expected version; resolved against the model when run.
#[derive(Clone, Debug)]
enum Expect {
    Any,
    NoStream,
    /// Exact(the stream's current version).
    Right,
    /// Exact(current version + delta): always wrong.
    Wrong(u64),
}

/// One event: (event type index, payload, business time offset in microseconds).
type GenEvent = (usize, Vec<u8>, i64);

#[derive(Clone, Debug)]
struct Part {
    stream: usize,
    expect: Expect,
    events: Vec<GenEvent>,
}

#[derive(Clone, Debug)]
enum CommandId {
    /// An id never used before.
    Fresh,
    /// An id tried before (successfully or not). `same`: resend that attempt's content.
    Reuse { pick: Index, same: bool },
    /// The id of the attempt just before (in a group: the previous request of the same group,
    /// so the same id twice in one group commit). `same`: resend that attempt's content.
    Last { same: bool },
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        id: CommandId,
        parts: Vec<Part>,
    },
    ReadStream {
        stream: usize,
        from: u64,
        limit: usize,
    },
    ReadAll {
        from: u64,
        limit: usize,
    },
    Reopen,
    /// Appends the writer must plan into one group commit, in this order.
    Group(Vec<(CommandId, Vec<Part>)>),
}

fn gen_event() -> impl Strategy<Value = GenEvent> {
    (
        0..EVENT_TYPES.len(),
        prop::collection::vec(0u8..4, 0..3),
        0i64..2,
    )
}

fn gen_part() -> impl Strategy<Value = Part> {
    let expect = prop_oneof![
        2 => Just(Expect::Any),
        2 => Just(Expect::NoStream),
        4 => Just(Expect::Right),
        2 => (1u64..3).prop_map(Expect::Wrong),
    ];
    let events = prop_oneof![
        1 => Just(Vec::new()),
        6 => prop::collection::vec(gen_event(), 1..4),
    ];
    (0..STREAMS.len(), expect, events).prop_map(|(stream, expect, events)| Part {
        stream,
        expect,
        events,
    })
}

fn gen_id() -> impl Strategy<Value = CommandId> {
    prop_oneof![
        6 => Just(CommandId::Fresh),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(pick, same)| CommandId::Reuse { pick, same }),
        1 => any::<bool>().prop_map(|same| CommandId::Last { same }),
    ]
}

fn gen_parts() -> impl Strategy<Value = Vec<Part>> {
    prop::collection::vec(gen_part(), 1..4).prop_map(|mut parts| {
        // One append names a stream at most once (a second mention is a validation error,
        // which the conformance suite covers); keep the first mention.
        let mut seen = [false; STREAMS.len()];
        parts.retain(|p| !std::mem::replace(&mut seen[p.stream], true));
        parts
    })
}

fn gen_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (gen_id(), gen_parts()).prop_map(|(id, parts)| Op::Append { id, parts }),
        4 => prop::collection::vec((gen_id(), gen_parts()), 2..7).prop_map(Op::Group),
        2 => (0..STREAMS.len(), 0u64..8, 0usize..10)
            .prop_map(|(stream, from, limit)| Op::ReadStream { stream, from, limit }),
        2 => (0u64..40, 0usize..50).prop_map(|(from, limit)| Op::ReadAll { from, limit }),
        1 => Just(Op::Reopen),
    ]
}

// ---------------------------------------------------------------------------------------------
// The model

/// The part of a request that identifies it for idempotency: streams and events, in order
/// (not the expected versions, which a retry may state differently).
type Content = Vec<(String, Vec<NewEvent>)>;

/// What the model stores per event: everything a caller chose, plus position and version.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelEvent {
    position: u64,
    stream: String,
    version: u64,
    command_id: String,
    event: NewEvent,
}

#[derive(Default)]
struct Model {
    events: Vec<ModelEvent>,
    versions: BTreeMap<String, u64>,
    /// Successful commands: content and outcome.
    commands: BTreeMap<String, (Content, AppendOutcome)>,
    /// Every attempted (id, content), successful or not, for `CommandId::Reuse`.
    tried: Vec<(String, Content)>,
    fresh_ids: u64,
}

/// An append's result in comparable form.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ok(AppendOutcome),
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        actual: StreamVersion,
    },
    CommandIdReused(String),
    Other(String),
}

impl From<Result<AppendOutcome, AppendError>> for Outcome {
    fn from(r: Result<AppendOutcome, AppendError>) -> Outcome {
        match r {
            Ok(o) => Outcome::Ok(o),
            Err(AppendError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            }) => Outcome::WrongExpectedVersion {
                stream,
                expected,
                actual,
            },
            Err(AppendError::CommandIdReused { command_id }) => {
                Outcome::CommandIdReused(command_id)
            }
            Err(other) => Outcome::Other(other.to_string()),
        }
    }
}

impl Model {
    fn version(&self, stream: &str) -> u64 {
        self.versions.get(stream).copied().unwrap_or(0)
    }

    fn resolve(&self, stream: &str, expect: &Expect) -> ExpectedVersion {
        let current = self.version(stream);
        match expect {
            Expect::Any => ExpectedVersion::Any,
            Expect::NoStream => ExpectedVersion::NoStream,
            Expect::Right => ExpectedVersion::Exact(StreamVersion(current)),
            Expect::Wrong(delta) => ExpectedVersion::Exact(StreamVersion(current + delta)),
        }
    }

    /// Turns a generated append into a concrete request, using the model for ids and versions.
    fn request(&mut self, id: &CommandId, parts: &[Part]) -> AppendRequest {
        let generated: Content = parts
            .iter()
            .map(|p| {
                let events = p
                    .events
                    .iter()
                    .map(|(t, payload, at)| new_event(EVENT_TYPES[*t], payload, *at))
                    .collect();
                (STREAMS[p.stream].to_owned(), events)
            })
            .collect();
        let earlier = match id {
            CommandId::Reuse { pick, .. } if !self.tried.is_empty() => {
                Some(&self.tried[pick.index(self.tried.len())])
            }
            CommandId::Last { .. } => self.tried.last(),
            _ => None,
        };
        let (command_id, content) = match (id, earlier) {
            (CommandId::Reuse { same, .. } | CommandId::Last { same }, Some((id, old))) => {
                let content = if *same { old.clone() } else { generated };
                (id.clone(), content)
            }
            _ => {
                self.fresh_ids += 1;
                (format!("cmd-{}", self.fresh_ids), generated)
            }
        };
        // Expectations come from the parts in order, cycling when reused content has more
        // streams than this op generated.
        let streams = content
            .into_iter()
            .enumerate()
            .map(|(i, (stream, events))| {
                let expected = self.resolve(&stream, &parts[i % parts.len()].expect);
                stream_append(&stream, expected, events)
            })
            .collect();
        ledger_tests::append_request(&command_id, streams)
    }

    fn append(&mut self, request: &AppendRequest) -> Outcome {
        let content: Content = request
            .streams
            .iter()
            .map(|s| (s.stream.clone(), s.events.clone()))
            .collect();
        self.tried
            .push((request.command_id.clone(), content.clone()));
        if let Some((stored, outcome)) = self.commands.get(&request.command_id) {
            if *stored == content {
                return Outcome::Ok(AppendOutcome {
                    duplicate: true,
                    ..*outcome
                });
            }
            return Outcome::CommandIdReused(request.command_id.clone());
        }
        for s in &request.streams {
            let actual = self.version(&s.stream);
            let fits = match s.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => actual == 0,
                ExpectedVersion::Exact(v) => v.0 == actual,
            };
            if !fits {
                return Outcome::WrongExpectedVersion {
                    stream: s.stream.clone(),
                    expected: s.expected,
                    actual: StreamVersion(actual),
                };
            }
        }
        let first = self.events.len() as u64 + 1;
        for s in &request.streams {
            for e in &s.events {
                let version = self.version(&s.stream) + 1;
                self.versions.insert(s.stream.clone(), version);
                self.events.push(ModelEvent {
                    position: self.events.len() as u64 + 1,
                    stream: s.stream.clone(),
                    version,
                    command_id: request.command_id.clone(),
                    event: e.clone(),
                });
            }
        }
        let outcome = AppendOutcome {
            first_position: Position(first),
            count: u32::try_from(self.events.len() as u64 + 1 - first)
                .expect("a generated append has at most 9 events"),
            duplicate: false,
        };
        self.commands
            .insert(request.command_id.clone(), (content, outcome));
        Outcome::Ok(outcome)
    }

    fn read_all(&self, from: u64, limit: usize) -> Vec<ModelEvent> {
        let skip = from.max(1) as usize - 1;
        self.events.iter().skip(skip).take(limit).cloned().collect()
    }

    fn read_stream(&self, stream: &str, from: u64, limit: usize) -> Vec<ModelEvent> {
        self.events
            .iter()
            .filter(|e| e.stream == stream && e.version >= from)
            .take(limit)
            .cloned()
            .collect()
    }
}

/// A stored record in the model's terms (drops what the ledger chooses: ids, times, hashes).
fn as_model(r: &EventRecord) -> ModelEvent {
    ModelEvent {
        position: r.position.0,
        stream: r.stream.clone(),
        version: r.version.0,
        command_id: r.command_id.clone(),
        event: NewEvent {
            event_type: r.event_type.clone(),
            schema_version: r.schema_version,
            codec: r.codec,
            payload: r.payload.clone(),
            at: r.at,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Running a case

/// Longest [`open`] retries a store still locked by the handle just dropped: a cap that turns
/// a lock never released into a failure, not a speed bound (a loaded machine is slow to release).
const LOCK_CAP: Duration = Duration::from_secs(120);

/// Opens the ledger on a [`FaultyEngine`] around the store's index (nothing is armed but the
/// gate of [`Op::Group`]). sled 0.34 releases its file lock some time after the last handle is
/// dropped (sled issue #1234), so a reopen right after a drop can see `Locked`; this test is
/// about agreement with the model, so it retries until the lock is released. The conformance
/// test `ledger_reopen_right_after_drop_is_never_locked` reports that behaviour on its own.
fn open(store: &TestStore) -> (Arc<FaultyEngine>, Ledger) {
    let deadline = Instant::now() + LOCK_CAP;
    let plain = loop {
        match ledger::open_store(&store.dir(), Create::IfMissing, store.backend, &[]) {
            Ok(plain) => break plain,
            Err(OpenError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("opening the {:?} model ledger failed: {e}", store.backend),
        }
    };
    let faulty = FaultyEngine::new(Arc::clone(plain.index()));
    drop(plain);
    let engine = ledger::Store::with_index(&store.dir(), faulty.clone(), false, &[])
        .unwrap_or_else(|e| panic!("reopening the model store on the faulty engine: {e}"));
    let ledger = Ledger::with_engine(engine, Vec::new())
        .unwrap_or_else(|e| panic!("starting the model ledger: {e}"));
    (faulty, ledger)
}

fn durable_head_position(ledger: &Ledger) -> Result<u64, TestCaseError> {
    let snap = ledger
        .snapshot()
        .map_err(|e| TestCaseError::fail(format!("snapshot: {e}")))?;
    let (head, _) = ledger::log::read_head(&*snap)
        .map_err(|e| TestCaseError::fail(format!("read_head: {e}")))?;
    Ok(head.position.0)
}

fn run_case(backend: Backend, ops: &[Op]) -> Result<(), TestCaseError> {
    let store = TestStore::new(backend);
    let (mut faulty, mut ledger) = open(&store);
    let mut model = Model::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| TestCaseError::fail(format!("a tokio runtime: {e}")))?;
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Append { id, parts } => {
                let request = model.request(id, parts);
                let want = model.append(&request);
                let got = Outcome::from(ledger.append_blocking(request.clone()));
                prop_assert_eq!(got, want, "step {}: append {:?}", step, request);
            }
            Op::ReadStream {
                stream,
                from,
                limit,
            } => {
                let got = ledger
                    .read_stream(STREAMS[*stream], StreamVersion(*from), *limit)
                    .map_err(|e| TestCaseError::fail(format!("step {step}: read_stream: {e}")))?;
                let got: Vec<ModelEvent> = got.iter().map(as_model).collect();
                let want = model.read_stream(STREAMS[*stream], *from, *limit);
                prop_assert_eq!(got, want, "step {}: {:?}", step, op);
            }
            Op::ReadAll { from, limit } => {
                let got = ledger
                    .read_all(Position(*from), *limit)
                    .map_err(|e| TestCaseError::fail(format!("step {step}: read_all: {e}")))?;
                let got: Vec<ModelEvent> = got.iter().map(as_model).collect();
                prop_assert_eq!(
                    got,
                    model.read_all(*from, *limit),
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::Group(requests) => {
                run_group(&runtime, &ledger, &faulty, &mut model, step, requests)?;
            }
            Op::Reopen => {
                drop(ledger);
                drop(faulty);
                (faulty, ledger) = open(&store);
                prop_assert_eq!(
                    ledger.head().position.0,
                    model.events.len() as u64,
                    "step {}: head after reopen",
                    step
                );
            }
        }
        prop_assert_eq!(
            durable_head_position(&ledger)?,
            model.events.len() as u64,
            "step {}: head",
            step
        );
        for (i, stream) in STREAMS.iter().enumerate() {
            let got = ledger
                .stream_version(stream)
                .map_err(|e| TestCaseError::fail(format!("stream_version: {e}")))?;
            prop_assert_eq!(
                got.0,
                model.version(stream),
                "step {}: version of stream {}",
                step,
                i
            );
        }
    }
    let all = ledger
        .read_all(Position(1), usize::MAX)
        .map_err(|e| TestCaseError::fail(format!("final read_all: {e}")))?;
    let got: Vec<ModelEvent> = all.iter().map(as_model).collect();
    prop_assert_eq!(&got, &model.events, "final log");
    let report = ledger
        .verify(&mut |_| {})
        .map_err(|e| TestCaseError::fail(format!("verify: {e}")))?;
    prop_assert_eq!(report.failure, None, "verify");
    prop_assert_eq!(report.events_checked, model.events.len() as u64);
    if let Some(last) = all.last() {
        prop_assert_eq!(
            report.head.hash,
            last.hash,
            "verify head hash is the last record's"
        );
    }
    Ok(())
}

/// Runs [`Op::Group`]: holds the writer in the commit of a gate append, queues the group's
/// requests in order, releases the writer, and compares each answer with the model's (which
/// runs them one by one). Then proves they were one group commit.
fn run_group(
    runtime: &tokio::runtime::Runtime,
    ledger: &Ledger,
    faulty: &FaultyEngine,
    model: &mut Model,
    step: usize,
    requests: &[(CommandId, Vec<Part>)],
) -> Result<(), TestCaseError> {
    faulty.hold_commits();
    let started = faulty.commits_started();
    // The gate is a modelled append like any other: a fresh id, one event on its own stream.
    model.fresh_ids += 1;
    let gate = ledger_tests::append_request(
        &format!("gate-{}", model.fresh_ids),
        vec![stream_append(
            "gate",
            ExpectedVersion::Any,
            vec![new_event("model.gate", b"g", 0)],
        )],
    );
    let gate_want = model.append(&gate);
    let gate_answer = enqueue({
        let l = ledger.clone();
        async move { l.append(gate).await }
    });
    // The writer is inside the gate's commit: whatever is queued now is its next group.
    faulty.wait_for_commits_started(started + 1);
    let mut queued = Vec::with_capacity(requests.len());
    for (id, parts) in requests {
        let request = model.request(id, parts);
        let want = model.append(&request);
        let answer = enqueue({
            let l = ledger.clone();
            let request = request.clone();
            async move { l.append(request).await }
        });
        queued.push((request, want, answer));
    }
    faulty.release_commits();
    let got = Outcome::from(runtime.block_on(gate_answer));
    prop_assert_eq!(got, gate_want, "step {}: the group's gate", step);
    // The group's requests that the model says write: their ids, in order, must be exactly
    // the command ids of the one commit after the gate's.
    let mut written = Vec::new();
    for (i, (request, want, answer)) in queued.into_iter().enumerate() {
        if let Outcome::Ok(o) = &want {
            if !o.duplicate {
                written.push(request.command_id.clone());
            }
        }
        let got = Outcome::from(runtime.block_on(answer));
        prop_assert_eq!(
            got,
            want,
            "step {}: request {} of a group commit: {:?}",
            step,
            i,
            request
        );
    }
    let batches = faulty.committed_batches();
    let last = batches.last().cloned().unwrap_or_default();
    if written.is_empty() {
        prop_assert!(
            last.len() == 1 && last[0].starts_with("gate-"),
            "step {}: the group wrote nothing, yet the last commit was {:?}",
            step,
            last
        );
    } else {
        prop_assert_eq!(
            &last,
            &written,
            "step {}: the group's appends were not one group commit",
            step
        );
    }
    Ok(())
}

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(gen_op(), 1..40)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ledger_on_redb_matches_the_model(ops in ops()) {
        // Proves every append outcome, read, stream version and head of the redb-backed ledger
        // equals the in-memory model's, across reopens, and that the result verifies.
        run_case(Backend::Redb, &ops)?;
    }
}

#[cfg(feature = "sled")]
proptest! {
    #![proptest_config(config())]

    #[test]
    fn ledger_on_sled_matches_the_model(ops in ops()) {
        // Proves the same agreement with the model for the sled-backed ledger.
        run_case(Backend::Sled, &ops)?;
    }
}
