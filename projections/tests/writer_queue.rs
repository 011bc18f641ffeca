//! The writer's metrics and its refusal when full, through the real wallet service: what walletd
//! serves on `/metrics` and answers with 503 when the queue is full.
//!
//! The queue is filled by stalling the writer inside a commit hook ([`StallHook`]): the writer
//! runs hooks on its own thread at the start of each group commit, so while the hook waits, no
//! job leaves the queue and the test fills it exactly, with no timing involved.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use ledger::domain::{Command, MemberId};
use ledger::limits::WRITER_QUEUE_CAPACITY;
use ledger::{
    AppendError, CommandAnswer, CommandJob, CommitHook, EventRecord, GroupHook, HookError,
    Snapshot, WriteBatch,
};
use projections::{SubmitError, WalletService};

/// Only turns a hang into a failure: every wait here ends on an event.
const HANG: Duration = Duration::from_secs(120);

/// A hook that, when armed, holds the writer at the start of its next group commit until the
/// test releases it, and tells the test when the writer is held.
struct StallHook {
    armed: AtomicBool,
    held: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

struct NoWrites;

impl GroupHook for NoWrites {
    fn apply(&mut self, _: &[Arc<EventRecord>]) -> Result<(), HookError> {
        Ok(())
    }

    fn finish(self: Box<Self>, _: &mut WriteBatch) -> Result<(), HookError> {
        Ok(())
    }
}

impl CommitHook for StallHook {
    fn name(&self) -> &'static str {
        "test-stall"
    }

    fn begin<'s>(&'s self, _: &'s dyn Snapshot) -> Result<Box<dyn GroupHook + 's>, HookError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            let held = self.held.lock().expect("the test never panics holding it");
            held.send(())
                .expect("the test waits for the writer to be held");
            let release = self
                .release
                .lock()
                .expect("the test never panics holding it");
            release
                .recv_timeout(HANG)
                .expect("the test releases the writer");
        }
        Ok(Box::new(NoWrites))
    }
}

fn open_wallet(id: &str, member: &str) -> Command {
    Command::parse_json_line(&format!(
        r#"{{"id":"{id}","type":"open_wallet","member":"{member}"}}"#
    ))
    .expect("an open_wallet line parses")
}

fn service_in(dir: &std::path::Path, hooks: Vec<Arc<dyn CommitHook>>) -> WalletService {
    let engine = projections::open_store(dir, ledger::Create::IfMissing, ledger::Backend::Redb)
        .expect("a fresh temp dir opens as a store");
    WalletService::with_engine(engine, hooks).expect("the service starts on a fresh store")
}

/// Proves `Ledger::stats` counts what the writer did: 3 commands in 3 group commits (each
/// submitted after the one before answered) are 3 groups of 1, 3 commands, their events, and
/// 3 frame syncs; a duplicate is one more group and command but no frame, so no sync. Planted
/// defects it caught: counting each group's jobs twice in `commands`; not timing the frame's
/// `fdatasync` in `SegmentLog::sync_frame` (fsync_count stayed 0).
#[test]
fn stats_count_groups_commands_events_and_frame_syncs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = service_in(dir.path(), Vec::new());
    let ledger = service.ledger();
    let fresh = ledger.stats();
    assert_eq!(
        (fresh.groups, fresh.commands, fresh.appends, fresh.events),
        (0, 0, 0, 0)
    );
    assert!(fresh.writer_alive);
    assert_eq!(fresh.queue_capacity, WRITER_QUEUE_CAPACITY as u64);
    let syncs_before = fresh.fsync_count;

    let head_before = ledger.head().position.0;
    for cmd in [
        open_wallet("c1", "m1"),
        Command::parse_json_line(r#"{"id":"c2","type":"top_up","member":"m1","amount":500}"#)
            .expect("a top_up line parses"),
        open_wallet("c3", "m2"),
    ] {
        service.submit_blocking(&cmd).expect("the command applies");
    }
    let events = ledger.head().position.0 - head_before;
    let stats = ledger.stats();
    assert_eq!(stats.groups, 3);
    assert_eq!(stats.commands, 3);
    assert_eq!(stats.appends, 0);
    assert_eq!(stats.events, events);
    assert!(events >= 3, "each command appends at least one event");
    assert_eq!(stats.fsync_count - syncs_before, stats.groups);
    assert!(stats.fsync_nanos_total > 0, "a sync takes time: {stats:?}");
    // Every group held one job: all three in the first bucket (<= 1) and so in every later one.
    assert!(stats.group_size_buckets.iter().all(|&(_, n)| n == 3));
    let slow_syncs = stats.fsync_count - stats.fsync_nanos_buckets.last().expect("buckets").1;
    assert!(stats
        .fsync_nanos_buckets
        .windows(2)
        .all(|w| w[0].1 <= w[1].1));
    assert!(slow_syncs <= stats.fsync_count);
    assert_eq!(stats.queue_depth, 0);
    assert!(stats.writer_alive);

    // A replay of c1: decided as a duplicate, nothing to write, so no frame and no sync.
    let replay = service
        .submit_blocking(&open_wallet("c1", "m1"))
        .expect("a replay answers");
    assert!(replay.duplicate);
    let after = ledger.stats();
    assert_eq!((after.groups, after.commands), (4, 4));
    assert_eq!(after.events, events);
    assert_eq!(after.fsync_count, stats.fsync_count);
}

/// Proves `WalletService::try_submit` refuses at once with `AppendError::Busy` when the writer's
/// queue is full, writes nothing of the refused command, and applies it once there is room;
/// and that `stats()` shows the full queue. Planted defect it caught: `try_queue_command`
/// answering a full queue with `Closed` (the variant and message assertions fail).
#[test]
fn try_submit_refuses_a_full_queue_with_busy_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (held_tx, held_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let stall = Arc::new(StallHook {
        armed: AtomicBool::new(true),
        held: Mutex::new(held_tx),
        release: Mutex::new(release_rx),
    });
    let service = service_in(dir.path(), vec![stall as Arc<dyn CommitHook>]);
    // Declared after the service, so dropped before it when an assertion fails: the stalled
    // writer is then released (the channel closes) instead of holding the service's drop.
    let release_tx = release_tx;
    let ledger = service.ledger();
    let job = |cmd: Command| CommandJob {
        cmd,
        at: ledger.now(),
        part: None,
    };

    // The first command takes the writer into the stalled group commit.
    let mut answers: Vec<CommandAnswer> = vec![ledger
        .try_queue_command(job(open_wallet("q0", "w0")))
        .expect("an empty queue takes a command")];
    held_rx
        .recv_timeout(HANG)
        .expect("the writer reaches the hook");
    for i in 1..=WRITER_QUEUE_CAPACITY {
        let answer = ledger
            .try_queue_command(job(open_wallet(&format!("q{i}"), &format!("w{i}"))))
            .unwrap_or_else(|e| panic!("queue slot {i} of {WRITER_QUEUE_CAPACITY} is free: {e}"));
        answers.push(answer);
    }
    let full = ledger.stats();
    assert_eq!(full.queue_depth, WRITER_QUEUE_CAPACITY as u64);
    assert_eq!(full.queue_capacity, WRITER_QUEUE_CAPACITY as u64);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime for the async submit");
    let refused = open_wallet("refused-1", "refused");
    match runtime.block_on(service.try_submit(&refused)) {
        Err(SubmitError::Ledger(e @ AppendError::Busy { waiting })) => {
            assert_eq!(waiting, WRITER_QUEUE_CAPACITY as u64);
            assert_eq!(
                e.to_string(),
                format!("the writer's queue is full ({WRITER_QUEUE_CAPACITY} commands waiting); retry later")
            );
        }
        other => panic!("a full queue must refuse with Busy, got {other:?}"),
    }

    release_tx
        .send(())
        .expect("the writer waits for the release");
    for (i, answer) in answers.into_iter().enumerate() {
        answer
            .wait_blocking()
            .unwrap_or_else(|e| panic!("queued command q{i} applies: {e}"));
    }
    let snap = ledger.snapshot().expect("snapshot");
    assert!(ledger::log::command_entry(&*snap, "refused-1")
        .expect("command index reads")
        .is_none());
    let member = MemberId::new("refused").expect("a valid member id");
    assert!(service.wallet(&member).expect("reads").is_none());
    assert!(
        ledger::log::command_entry(&*snap, &format!("q{WRITER_QUEUE_CAPACITY}"))
            .expect("command index reads")
            .is_some()
    );
    drop(snap);

    // With room again, the same command applies once.
    let applied = runtime
        .block_on(service.try_submit(&refused))
        .expect("the queue has room now");
    assert!(!applied.duplicate);
    assert!(service.wallet(&member).expect("reads").is_some());
}
