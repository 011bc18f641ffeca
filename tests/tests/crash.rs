//! Kill -9 crash test: every append the ledger acknowledged survives a SIGKILL of the writing
//! process, with its exact bytes at its acknowledged positions, and the store reopens into a
//! verifiable, continuing hash chain.
//!
//! # What killing the process proves, and what it does not
//!
//! `Ledger::append` resolves only after the group commit holding the request wrote its frame to
//! the segment log and `fdatasync`ed it (`ledger/src/segments.rs`). The writer
//! (`src/bin/crash_writer.rs`) prints a line only after that, so every printed line is an append
//! the ledger claimed durable. SIGKILL stops the process at an arbitrary instruction: during a
//! frame's write, between the write and its sync, during the index commit after it, while other
//! callers are queued, or during open/recovery of the previous crash. Everything the process had
//! handed to the kernel stays in the page cache and reaches the file; everything still in the
//! process's memory (a user-space buffer, a half-built frame, a commit whose write calls were
//! not all made) is lost. So the test
//! catches: acks sent before the commit's writes were issued (ack-before-write, acks from the
//! wrong group), non-atomic commits (a torn batch is visible after reopen: verify fails or an
//! acked event is missing), recovery that drops or rewrites committed data, and reopen that does
//! not continue the chain (positions, versions, hashes across 200+ crashes of one store).
//!
//! It does NOT cover power loss or a kernel crash: those lose what is in the page cache but was
//! never fsynced, and a killed process never loses that. An ack sent after `write` but before
//! `fdatasync` passes this test and would still lose data on power loss. That part of the promise
//! rests on the frame's `fdatasync` before any caller is answered (the index engines commit
//! unsynced between checkpoints and are rebuilt from the log) and needs a VM/dm-flakey style
//! power-cut test to check.
//!
//! # Where the kills land (storage format 2)
//! The writer opens the store with small segments ([`CRASH_SEGMENT_BYTES`]), so a run rolls over
//! to a new segment file every few dozen events: kills land while a frame is written or synced,
//! while its (unsynced) index commit runs, while a segment file is created (temporary name,
//! zero-fill, rename, directory sync), and, one run in eight, while the writer is still opening:
//! recovery replays the previous run's unindexed tail and commits the synced index checkpoint.
//! One run in sixteen lives about one second, so that its kill lands around the writer's first
//! timed synced checkpoint ([`ledger::limits::CHECKPOINT_INTERVAL`]). The test counts the segment
//! files at the end and requires many roll-overs.
//!
//! Runs `CRASH_ITERATIONS` iterations (default 200) on one store per backend; the seed is
//! printed and can be replayed with `CRASH_SEED`.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ledger_tests::child::run_and_kill;

use ledger::{
    AppendRequest, Backend, Codec, Create, ExpectedVersion, Head, Ledger, LedgerError,
    LedgerOptions, NewEvent, OpenError, Position, StreamAppend, StreamVersion,
};
use ledger_tests::crash_content::event_content;
use ledger_tests::wallet::splitmix64;

/// Iterations when `CRASH_ITERATIONS` is not set.
const DEFAULT_ITERATIONS: u64 = 200;
/// Segment size the writer opens the store with: small, so that roll-over is frequent.
const CRASH_SEGMENT_BYTES: u64 = 64 << 10;
/// Longest wait for the writer to open the store (recovery of a large redb file included).
/// Every this many iterations (and after the last) the whole log goes through `verify`; the
/// others check the chain of the events added since the previous iteration. A full verify of a
/// 100k-event log takes ~0.3 s in the test profile, so verifying every time would make the run
/// quadratic in the iteration count.
const FULL_VERIFY_EVERY: u64 = 20;

#[test]
fn acknowledged_appends_survive_kill_9_and_reopen_continues_the_chain_redb() {
    run_crash_iterations("redb", Backend::Redb);
}

#[cfg(feature = "sled")]
#[test]
fn acknowledged_appends_survive_kill_9_and_reopen_continues_the_chain_sled() {
    run_crash_iterations("sled", Backend::Sled);
}

/// One acknowledged append as printed by the writer.
#[derive(Debug)]
struct Ack {
    command_id: String,
    first_position: u64,
    count: u32,
    /// (stream, version of the first new event, number of events), in append order.
    segments: Vec<(String, u64, u32)>,
}

impl Ack {
    fn parse(line: &str) -> Ack {
        let fields: Vec<&str> = line.split(' ').collect();
        assert!(
            fields.len() >= 5 && fields[0] == "ack",
            "bad writer line {line:?}"
        );
        let num = |s: &str| -> u64 {
            s.parse()
                .unwrap_or_else(|_| panic!("bad number {s:?} in {line:?}"))
        };
        let segments: Vec<(String, u64, u32)> = fields[4..]
            .iter()
            .map(|seg| {
                let parts: Vec<&str> = seg.split(':').collect();
                assert_eq!(parts.len(), 3, "bad segment {seg:?} in {line:?}");
                let n = u32::try_from(num(parts[2])).expect("segment counts are at most 4");
                (parts[0].to_owned(), num(parts[1]), n)
            })
            .collect();
        let ack = Ack {
            command_id: fields[1].to_owned(),
            first_position: num(fields[2]),
            count: u32::try_from(num(fields[3])).expect("counts are small"),
            segments,
        };
        let total: u32 = ack.segments.iter().map(|s| s.2).sum();
        assert_eq!(total, ack.count, "segments do not add up in {line:?}");
        ack
    }

    fn last_position(&self) -> u64 {
        self.first_position + u64::from(self.count) - 1
    }

    /// The request the writer sent (expected versions as `Any`: they are not part of the
    /// idempotency fingerprint).
    fn request(&self) -> AppendRequest {
        let mut index = 0u32;
        let streams = self
            .segments
            .iter()
            .map(|(stream, _, n)| StreamAppend {
                stream: stream.clone(),
                expected: ExpectedVersion::Any,
                events: (0..*n)
                    .map(|_| {
                        index += 1;
                        let (event_type, at, payload) = event_content(&self.command_id, index - 1);
                        NewEvent {
                            event_type,
                            schema_version: 1,
                            codec: Codec::Bincode2,
                            payload,
                            at,
                        }
                    })
                    .collect(),
            })
            .collect();
        AppendRequest {
            command_id: self.command_id.clone(),
            fingerprint: None,
            streams,
        }
    }
}

fn run_crash_iterations(name: &str, backend: Backend) {
    let iterations: u64 = std::env::var("CRASH_ITERATIONS")
        .ok()
        .map(|v| v.parse().expect("CRASH_ITERATIONS must be a number"))
        .unwrap_or(DEFAULT_ITERATIONS);
    let base_seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .map(|v| v.parse().expect("CRASH_SEED must be a u64"))
        .unwrap_or_else(|| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("the clock is after 1970");
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        });
    eprintln!(
        "crash test {name}: {iterations} iterations, seed {base_seed} \
         (reproduce: CRASH_SEED={base_seed} CRASH_ITERATIONS={iterations})"
    );
    let store = tempfile::tempdir().expect("a temp dir for the store");
    let logs = tempfile::tempdir().expect("a temp dir for writer stderr");
    let mut rng = base_seed;
    let mut previous = Head::default();
    let mut acks_total = 0u64;
    let mut early_kills = 0u64;
    // Runs whose writer had to wait for the lock the test's own (dropped) handle still held.
    let mut lock_waits = 0u64;
    let started = Instant::now();
    for iteration in 0..iterations {
        // Distinct seed per run: command ids never repeat on this store.
        let run_seed = base_seed.wrapping_add(iteration);
        let stderr_path = logs.path().join(format!("stderr-{iteration}"));
        // One kill in eight lands while the writer is still opening (recovering) the store.
        // Never in the first run: the store must exist before a kill can find it half-open.
        let early = splitmix64(&mut rng) % 8 == 0 && iteration > 0;
        let around_checkpoint = !early && splitmix64(&mut rng) % 16 == 0;
        let delay = if early {
            Duration::from_micros(splitmix64(&mut rng) % 6_000)
        } else if around_checkpoint {
            let interval = ledger::limits::CHECKPOINT_INTERVAL.as_micros() as u64;
            Duration::from_micros(interval - 20_000 + splitmix64(&mut rng) % 120_000)
        } else {
            Duration::from_micros(5_000 + splitmix64(&mut rng) % 75_000)
        };
        let lines = run_and_kill(
            Path::new(env!("CARGO_BIN_EXE_crash_writer")),
            [
                store.path().as_os_str(),
                OsStr::new(name),
                OsStr::new(&run_seed.to_string()),
                OsStr::new(&CRASH_SEGMENT_BYTES.to_string()),
            ],
            &stderr_path,
            early,
            delay,
        );
        if early && !lines.iter().any(|l| l.starts_with("ready")) {
            early_kills += 1;
        }
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        if stderr.contains("store was locked") {
            lock_waits += 1;
        }
        let acks: Vec<Ack> = lines
            .iter()
            .filter(|l| l.starts_with("ack "))
            .map(|l| Ack::parse(l))
            .collect();
        acks_total += acks.len() as u64;
        let context =
            format!("{name} iteration {iteration} (seed {base_seed}, run seed {run_seed})");
        let full =
            iteration % FULL_VERIFY_EVERY == FULL_VERIFY_EVERY - 1 || iteration + 1 == iterations;
        previous = check_store(store.path(), backend, &acks, previous, full, &context);
    }
    eprintln!(
        "crash test {name}: {iterations} kills ({early_kills} before the store was open), \
         {acks_total} acknowledged appends checked, {lock_waits} opens waited for the store lock, \
         final head {}, {:.1} s",
        previous.position,
        started.elapsed().as_secs_f64()
    );
    assert!(
        acks_total >= iterations,
        "only {acks_total} acks in {iterations} runs: the test barely exercised the writer"
    );
    let segments = std::fs::read_dir(store.path().join(ledger::segments::SEGMENTS_DIR))
        .expect("list the segment files")
        .count() as u64;
    eprintln!("crash test {name}: {segments} segment files");
    assert!(
        segments >= iterations / 4,
        "only {segments} segment files after {iterations} runs: roll-over was barely exercised"
    );
}

/// Reopens the store and checks every acknowledged append, the chain (the new part, or all of
/// it when `full`), and continuity with the head seen after the previous crash. Returns the head.
fn check_store(
    store: &Path,
    backend: Backend,
    acks: &[Ack],
    previous: Head,
    full: bool,
    context: &str,
) -> Head {
    let options = LedgerOptions {
        create: Create::No,
        backend,
        ..LedgerOptions::default()
    };
    let ledger = open_retrying_lock(store, options)
        .unwrap_or_else(|e| panic!("{context}: reopen after kill failed: {e}"));
    let head = ledger.head();
    assert!(
        head.position >= previous.position,
        "{context}: the log shrank from {} to {}",
        previous.position,
        head.position
    );
    if previous.position.0 > 0 {
        let kept = ledger
            .read_all(previous.position, 1)
            .unwrap_or_else(|e| panic!("{context}: read previous head: {e}"));
        assert_eq!(
            kept.first().map(|r| r.hash),
            Some(previous.hash),
            "{context}: the event at the previous head {} changed",
            previous.position
        );
    }
    if full {
        let report = ledger
            .verify(&mut |_| {})
            .unwrap_or_else(|e| panic!("{context}: verify could not read the log: {e}"));
        assert_eq!(report.failure, None, "{context}: verify failed");
        assert_eq!(
            report.head, head,
            "{context}: verify and the ledger disagree on the head"
        );
    } else {
        check_chain_since(&ledger, previous, head, context);
    }
    for ack in acks {
        check_ack(&ledger, ack, head, context);
    }
    if let Some(last) = acks.last() {
        // A retry of an acknowledged command after the crash is recognised, not re-applied.
        let outcome = ledger
            .append_blocking(last.request())
            .unwrap_or_else(|e| panic!("{context}: retry of {} failed: {e}", last.command_id));
        assert!(
            outcome.duplicate,
            "{context}: retry of {} appended again",
            last.command_id
        );
        assert_eq!(
            outcome.first_position,
            Position(last.first_position),
            "{context}"
        );
        assert_eq!(outcome.count, last.count, "{context}");
        assert_eq!(ledger.head(), head, "{context}: a duplicate moved the head");
    }
    head
}

/// Opens the store; retries for a while when it is locked. The killed writer is reaped and holds
/// nothing, but with sled our own handle from the previous iteration may: sled 0.34 releases its
/// file lock only when the last internal reference to the file goes (threadpool jobs and
/// epoch-deferred frees outlive `Db::drop`). redb releases it on drop and never retries here.
fn open_retrying_lock(store: &Path, options: LedgerOptions) -> Result<Ledger, LedgerError> {
    let started = Instant::now();
    loop {
        match Ledger::open(store, options.clone()) {
            // The cap only turns a lock that is never released into a failure; under load the
            // release can take long, so it is generous.
            Err(LedgerError::Open(OpenError::Locked { .. }))
                if started.elapsed() < Duration::from_secs(120) =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// The events after `previous` up to `head`: positions without gaps, each `prev_hash` the hash
/// before it, each hash recomputing, and whole commands only (a run of one command id is as long
/// as its command index entry says), which is what a torn commit would break.
fn check_chain_since(ledger: &Ledger, previous: Head, head: Head, context: &str) {
    let mut prev_hash = previous.hash;
    let mut position = previous.position.next();
    let mut command: Option<(String, u32)> = None;
    let snap = ledger.snapshot().expect("snapshot");
    while position <= head.position {
        let chunk = ledger
            .read_all(position, 4_096)
            .unwrap_or_else(|e| panic!("{context}: read from {position}: {e}"));
        assert!(
            !chunk.is_empty(),
            "{context}: position {position} is missing"
        );
        for r in chunk {
            let here = format!("{context}: position {position}");
            assert_eq!(r.position, position, "{here}");
            assert_eq!(r.prev_hash, prev_hash, "{here}: previous-hash link broken");
            assert_eq!(r.compute_hash(), r.hash, "{here}: hash does not recompute");
            match &mut command {
                Some((id, remaining)) if *remaining > 0 => {
                    assert_eq!(&r.command_id, id, "{here}: command {id} is torn");
                    *remaining -= 1;
                }
                _ => {
                    let entry = ledger::log::command_entry(&*snap, &r.command_id)
                        .unwrap_or_else(|e| panic!("{here}: command index: {e}"))
                        .unwrap_or_else(|| panic!("{here}: {} not indexed", r.command_id));
                    assert_eq!(entry.first_position, position, "{here}: {}", r.command_id);
                    command = Some((r.command_id.clone(), entry.count - 1));
                }
            }
            prev_hash = r.hash;
            position = position.next();
        }
    }
    if let Some((id, remaining)) = command {
        assert_eq!(
            remaining, 0,
            "{context}: command {id} lacks its last events"
        );
    }
    assert_eq!(
        prev_hash, head.hash,
        "{context}: head hash is not the last event's"
    );
}

fn check_ack(ledger: &Ledger, ack: &Ack, head: Head, context: &str) {
    let id = &ack.command_id;
    assert!(
        head.position.0 >= ack.last_position(),
        "{context}: {id} was acknowledged up to position {} but the head is {}",
        ack.last_position(),
        head.position
    );
    let records = ledger
        .read_all(Position(ack.first_position), ack.count as usize)
        .unwrap_or_else(|e| panic!("{context}: read {id}: {e}"));
    assert_eq!(
        records.len(),
        ack.count as usize,
        "{context}: {id} events missing"
    );
    let mut records = records.iter();
    let mut index = 0u32;
    let mut position = ack.first_position;
    for (stream, first_version, n) in &ack.segments {
        for v in 0..u64::from(*n) {
            let r = records.next().expect("length checked above");
            let (event_type, at, payload) = event_content(id, index);
            let at_pos = format!("{context}: {id} event {index} at position {position}");
            assert_eq!(r.position, Position(position), "{at_pos}");
            assert_eq!(&r.command_id, id, "{at_pos}");
            assert_eq!(&r.stream, stream, "{at_pos}");
            assert_eq!(r.version, StreamVersion(first_version + v), "{at_pos}");
            assert_eq!(r.event_type, event_type, "{at_pos}");
            assert_eq!(r.schema_version, 1, "{at_pos}");
            assert_eq!(r.codec, Codec::Bincode2, "{at_pos}");
            assert_eq!(r.at, at, "{at_pos}");
            assert!(r.payload == payload, "{at_pos}: payload bytes differ");
            index += 1;
            position += 1;
        }
    }
    let snap = ledger.snapshot().expect("snapshot");
    let entry = ledger::log::command_entry(&*snap, id)
        .unwrap_or_else(|e| panic!("{context}: command index read for {id}: {e}"))
        .unwrap_or_else(|| panic!("{context}: {id} is not in the command index"));
    assert_eq!(
        entry.first_position,
        Position(ack.first_position),
        "{context}: {id}"
    );
    assert_eq!(entry.count, ack.count, "{context}: {id}");
}
