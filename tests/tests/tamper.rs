//! Tamper evidence: damage written behind the ledger's back must be found by `verify` at the
//! exact position (part a, through the engine, every backend), and damage to the redb file must
//! give an error, a verify failure or an unchanged log, never a panic (part b, on disk).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use ledger::log::{self, tables, FORMAT_VERSION, META_FORMAT_VERSION};
use ledger::store::{open_engine, REDB_FILE};
use ledger::{
    Backend, Create, Engine, ExpectedVersion, Head, Ledger, LedgerError, LedgerOptions, OpenError,
    Position, StreamVersion, VerifyReport, WriteBatch,
};
use ledger_tests::{append_request, new_event, stream_append, TestStore};

/// Generates one `#[test]` per listed function and backend, named `on_<backend>::<function>`.
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod on_redb {
            $(#[test] fn $name() { super::$name(ledger::Backend::Redb) })*
        }
        #[cfg(feature = "sled")]
        mod on_sled {
            $(#[test] fn $name() { super::$name(ledger::Backend::Sled) })*
        }
    };
}

for_each_backend!(
    every_single_byte_flip_in_an_event_record_is_found_at_its_position,
    a_deleted_event_is_a_gap_at_its_position,
    swapped_events_fail_at_the_first_of_the_two,
    a_stream_index_entry_pointing_elsewhere_fails_at_its_event,
    a_missing_stream_index_entry_fails_at_its_event,
    an_extra_stream_index_entry_fails_after_the_head,
    a_truncated_stream_index_value_is_reported_at_its_event,
    a_missing_command_entry_fails_at_the_commands_first_event,
    a_store_with_a_newer_format_version_is_refused,
);

/// Events in the log built by [`build_log`].
const LOG_EVENTS: u64 = 50;

/// Writes 50 events over 4 streams through the ledger: single- and multi-event commands and
/// one command over two streams, so that every verify check has something to check.
fn build_log(store: &TestStore) -> Head {
    let ledger = store.ledger();
    let mut written = 0u64;
    let mut i = 0u32;
    while written < LOG_EVENTS {
        let n = [1usize, 2, 3][i as usize % 3].min((LOG_EVENTS - written) as usize);
        let events = (0..n)
            .map(|j| {
                new_event(
                    "tamper.event",
                    format!("payload {i}/{j}").as_bytes(),
                    i64::from(i),
                )
            })
            .collect();
        let stream = format!("s-{}", i % 4);
        let mut streams = vec![stream_append(&stream, ExpectedVersion::Any, events)];
        if i == 7 && written + (n as u64) < LOG_EVENTS {
            streams.push(stream_append(
                "s-extra",
                ExpectedVersion::NoStream,
                vec![new_event("tamper.other", b"x", 0)],
            ));
        }
        let outcome = ledger
            .append_blocking(append_request(&format!("cmd-{i}"), streams))
            .expect("appends to a fresh test store succeed");
        written = outcome.last_position().0;
        i += 1;
    }
    let report = ledger
        .verify(&mut |_| {})
        .expect("verify reads the fresh log");
    assert_eq!(report.failure, None, "the untouched log verifies");
    assert_eq!(report.events_checked, LOG_EVENTS);
    report.head
}

fn verify(engine: &dyn Engine) -> VerifyReport {
    let snap = engine.snapshot().expect("snapshot of the tampered store");
    ledger::verify::verify(&*snap, &mut |_| {}).expect("verify reads every entry it needs")
}

/// Asserts verify fails at `position` and reports the log up to the position before it.
fn assert_fails_at(engine: &dyn Engine, position: u64, what: &str) -> String {
    let report = verify(engine);
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("{what}: verify passed over damaged data"));
    assert_eq!(
        failure.position, position,
        "{what}: reason {:?}",
        failure.reason
    );
    assert_eq!(report.events_checked, position - 1, "{what}");
    assert_eq!(report.head.position, Position(position - 1), "{what}");
    failure.reason
}

fn assert_clean(engine: &dyn Engine, head: Head) {
    let report = verify(engine);
    assert_eq!(report.failure, None, "the restored log verifies");
    assert_eq!(report.head, head);
}

fn raw_get(engine: &dyn Engine, table: &str, key: &[u8]) -> Vec<u8> {
    let snap = engine.snapshot().expect("snapshot");
    snap.get(table, key)
        .expect("get")
        .unwrap_or_else(|| panic!("{table} has no entry {key:02x?}"))
}

fn raw_put(engine: &dyn Engine, table: &'static str, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.put(table, key.to_vec(), value.to_vec());
    engine.commit(batch).expect("raw put");
}

fn raw_delete(engine: &dyn Engine, table: &'static str, key: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.delete(table, key.to_vec());
    engine.commit(batch).expect("raw delete");
}

/// A store with the 50-event log, reopened as a bare engine (no ledger writer running).
fn tampered_store(backend: Backend) -> (TestStore, Arc<dyn Engine>, Head) {
    let store = TestStore::new(backend);
    let head = build_log(&store);
    let engine = store.engine();
    (store, engine, head)
}

fn event_at(engine: &dyn Engine, position: u64) -> ledger::EventRecord {
    let snap = engine.snapshot().expect("snapshot");
    log::read_event(&*snap, Position(position))
        .expect("read_event")
        .expect("event present")
}

// ---------------------------------------------------------------------------------------------
// (a) through the engine

fn every_single_byte_flip_in_an_event_record_is_found_at_its_position(backend: Backend) {
    // Proves the hash chain covers every byte of a record: for every event and a spread of byte
    // offsets (every 4th, shifted per event, plus the first three and last bytes), flipping one
    // bit and writing the record back makes verify fail at exactly that event's position.
    let (_store, engine, head) = tampered_store(backend);
    let originals: Vec<(Vec<u8>, Vec<u8>)> = {
        let snap = engine.snapshot().expect("snapshot");
        snap.scan(tables::EVENTS, (Bound::Unbounded, Bound::Unbounded), 1000)
            .expect("scan events")
    };
    assert_eq!(originals.len() as u64, LOG_EVENTS);
    let mut flips = 0u32;
    let mut pending_restore: Option<(Vec<u8>, Vec<u8>)> = None;
    for (index, (key, value)) in originals.iter().enumerate() {
        let position = index as u64 + 1;
        let last = value.len() - 1;
        let offsets = (0..value.len()).filter(|i| i % 4 == index % 4 || *i < 3 || *i == last);
        for offset in offsets {
            let mut damaged = value.clone();
            damaged[offset] ^= 1 << (offset % 8);
            // Restoring the previous flip and writing this one in a single batch halves the
            // number of commits; verify sees only this flip.
            let mut batch = WriteBatch::new();
            if let Some((k, v)) = pending_restore.take() {
                batch.put(tables::EVENTS, k, v);
            }
            batch.put(tables::EVENTS, key.clone(), damaged);
            engine.commit(batch).expect("raw write of a damaged record");
            pending_restore = Some((key.clone(), value.clone()));
            assert_fails_at(
                &*engine,
                position,
                &format!("flip of byte {offset} at position {position}"),
            );
            flips += 1;
        }
    }
    let (k, v) = pending_restore.expect("at least one flip was made");
    raw_put(&*engine, tables::EVENTS, &k, &v);
    assert_clean(&*engine, head);
    assert!(flips > 1_500, "only {flips} flips were tried");
}

fn a_deleted_event_is_a_gap_at_its_position(backend: Backend) {
    // Proves removing an event from the middle or the end of the log is named at its position.
    let (_store, engine, head) = tampered_store(backend);
    for position in [1, 25, LOG_EVENTS] {
        let key = log::event_key(Position(position));
        let original = raw_get(&*engine, tables::EVENTS, &key);
        raw_delete(&*engine, tables::EVENTS, &key);
        let reason = assert_fails_at(&*engine, position, &format!("delete of {position}"));
        if position < LOG_EVENTS {
            assert!(reason.contains("missing"), "reason {reason:?}");
        }
        raw_put(&*engine, tables::EVENTS, &key, &original);
    }
    assert_clean(&*engine, head);
}

fn swapped_events_fail_at_the_first_of_the_two(backend: Backend) {
    // Proves exchanging two stored records (each still intact and self-consistent) is named at
    // the earlier of the two positions.
    let (_store, engine, head) = tampered_store(backend);
    for (a, b) in [(10u64, 30u64), (1, 2), (49, 50)] {
        let ka = log::event_key(Position(a));
        let kb = log::event_key(Position(b));
        let va = raw_get(&*engine, tables::EVENTS, &ka);
        let vb = raw_get(&*engine, tables::EVENTS, &kb);
        let mut batch = WriteBatch::new();
        batch.put(tables::EVENTS, ka.to_vec(), vb.clone());
        batch.put(tables::EVENTS, kb.to_vec(), va.clone());
        engine.commit(batch).expect("swap");
        assert_fails_at(&*engine, a, &format!("swap of {a} and {b}"));
        let mut batch = WriteBatch::new();
        batch.put(tables::EVENTS, ka.to_vec(), va);
        batch.put(tables::EVENTS, kb.to_vec(), vb);
        engine.commit(batch).expect("unswap");
    }
    assert_clean(&*engine, head);
}

fn a_stream_index_entry_pointing_elsewhere_fails_at_its_event(backend: Backend) {
    // Proves a stream index entry redirected to another position is named at the event it
    // should point to.
    let (_store, engine, head) = tampered_store(backend);
    for position in [1u64, 20, LOG_EVENTS] {
        let record = event_at(&*engine, position);
        let key = log::stream_key(&record.stream, record.version);
        let original = raw_get(&*engine, tables::STREAM_INDEX, &key);
        assert_eq!(original, position.to_le_bytes().to_vec());
        let elsewhere = if position == 1 { 2u64 } else { position - 1 };
        raw_put(
            &*engine,
            tables::STREAM_INDEX,
            &key,
            &elsewhere.to_le_bytes(),
        );
        assert_fails_at(
            &*engine,
            position,
            &format!("index of {position} -> {elsewhere}"),
        );
        raw_put(&*engine, tables::STREAM_INDEX, &key, &original);
    }
    assert_clean(&*engine, head);
}

fn a_missing_stream_index_entry_fails_at_its_event(backend: Backend) {
    // Proves a deleted stream index entry is named at its event's position.
    let (_store, engine, head) = tampered_store(backend);
    let record = event_at(&*engine, 20);
    let key = log::stream_key(&record.stream, record.version);
    let original = raw_get(&*engine, tables::STREAM_INDEX, &key);
    raw_delete(&*engine, tables::STREAM_INDEX, &key);
    assert_fails_at(&*engine, 20, "deleted index entry");
    raw_put(&*engine, tables::STREAM_INDEX, &key, &original);
    assert_clean(&*engine, head);
}

fn an_extra_stream_index_entry_fails_after_the_head(backend: Backend) {
    // Proves an index entry that points at no event (here: a version past the stream's end) is
    // found by the entry count and reported at head + 1.
    let (_store, engine, head) = tampered_store(backend);
    let key = log::stream_key("s-1", StreamVersion(999));
    raw_put(&*engine, tables::STREAM_INDEX, &key, &20u64.to_le_bytes());
    let reason = assert_fails_at(&*engine, LOG_EVENTS + 1, "extra index entry");
    assert!(reason.contains("stream index"), "reason {reason:?}");
    raw_delete(&*engine, tables::STREAM_INDEX, &key);
    assert_clean(&*engine, head);
}

fn a_truncated_stream_index_value_is_reported_at_its_event(backend: Backend) {
    // Proves a damaged (7-byte) stream index value is a verify failure named at its event, like
    // any other damage, so `verify` can exit 1 naming the first bad position (SPEC 3), rather
    // than a read error that aborts the pass without a position.
    let (_store, engine, head) = tampered_store(backend);
    let record = event_at(&*engine, 20);
    let key = log::stream_key(&record.stream, record.version);
    let original = raw_get(&*engine, tables::STREAM_INDEX, &key);
    raw_put(&*engine, tables::STREAM_INDEX, &key, &original[..7]);
    let snap = engine.snapshot().expect("snapshot");
    let result = ledger::verify::verify(&*snap, &mut |_| {});
    drop(snap);
    match result {
        Ok(report) => {
            let failure = report
                .failure
                .expect("verify passed over a damaged index entry");
            assert_eq!(failure.position, 20, "reason {:?}", failure.reason);
        }
        Err(e) => panic!("verify aborted without naming a position: {e}"),
    }
    raw_put(&*engine, tables::STREAM_INDEX, &key, &original);
    assert_clean(&*engine, head);
}

fn a_missing_command_entry_fails_at_the_commands_first_event(backend: Backend) {
    // Proves the command index is checked: removing a command's entry is named at the
    // position of that command's first event.
    let (_store, engine, head) = tampered_store(backend);
    let record = event_at(&*engine, 20);
    let entry = raw_get(&*engine, tables::COMMANDS, record.command_id.as_bytes());
    let first = u64::from_le_bytes(entry[..8].try_into().expect("8-byte prefix"));
    assert!(
        first <= 20,
        "command {} starts at {first}",
        record.command_id
    );
    raw_delete(&*engine, tables::COMMANDS, record.command_id.as_bytes());
    assert_fails_at(&*engine, first, "deleted command entry");
    raw_put(
        &*engine,
        tables::COMMANDS,
        record.command_id.as_bytes(),
        &entry,
    );
    assert_clean(&*engine, head);
}

fn a_store_with_a_newer_format_version_is_refused(backend: Backend) {
    // Proves a store whose format version is newer than this build's is refused with
    // OpenError::NewerFormat carrying both versions, by open_engine and by Ledger::open.
    let store = TestStore::new(backend);
    build_log(&store);
    {
        let engine = store.engine();
        raw_put(
            &*engine,
            tables::META,
            META_FORMAT_VERSION,
            &99u32.to_le_bytes(),
        );
    }
    match open_engine(&store.dir(), Create::No, backend) {
        Err(OpenError::NewerFormat {
            path,
            found,
            supported,
        }) => {
            assert_eq!(found, 99);
            assert_eq!(supported, FORMAT_VERSION);
            assert_eq!(path, store.dir().display().to_string());
        }
        Err(other) => panic!("expected NewerFormat, got {other:?}"),
        Ok(_) => panic!("expected NewerFormat, the store opened"),
    }
    let options = LedgerOptions {
        create: Create::IfMissing,
        backend,
        hooks: Vec::new(),
    };
    match Ledger::open(&store.dir(), options) {
        Err(LedgerError::Open(OpenError::NewerFormat { found: 99, .. })) => {}
        Err(other) => panic!("expected NewerFormat, got {other:?}"),
        Ok(_) => panic!("expected NewerFormat, the ledger opened"),
    }
}

// ---------------------------------------------------------------------------------------------
// (b) on disk, redb

/// What reopening and verifying a damaged file gave.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Attempt {
    OpenRefused,
    ReadError,
    VerifyFailed,
    /// Verify passed with the original head: the damage hit unused space.
    Unchanged,
}

/// Opens the store in `dir` and verifies it. Panics (the caller catches them) only if the
/// damage went unnoticed: verify passing with a head other than the original.
fn reopen_and_verify(dir: &Path, head: Head) -> Attempt {
    let engine = match open_engine(dir, Create::No, Backend::Redb) {
        Ok(engine) => engine,
        Err(_) => return Attempt::OpenRefused,
    };
    let snap = match engine.snapshot() {
        Ok(snap) => snap,
        Err(_) => return Attempt::ReadError,
    };
    match ledger::verify::verify(&*snap, &mut |_| {}) {
        Err(_) => Attempt::ReadError,
        Ok(report) if report.failure.is_some() => Attempt::VerifyFailed,
        Ok(report) => {
            assert_eq!(
                report.head, head,
                "verify passed on a damaged file with another head"
            );
            Attempt::Unchanged
        }
    }
}

/// Writes `bytes` as the redb file of a fresh store directory and runs `reopen_and_verify`
/// under `catch_unwind`; `Err` carries the panic message.
fn attempt(bytes: &[u8], head: Head) -> Result<Attempt, String> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("store");
    std::fs::create_dir(&dir).expect("create store dir");
    std::fs::write(dir.join(REDB_FILE), bytes).expect("write damaged file");
    catch_unwind(AssertUnwindSafe(|| reopen_and_verify(&dir, head))).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into())
    })
}

/// `TAMPER_OFFSET=N` runs only offset (or cut length) N, to reproduce one failure with a
/// backtrace.
fn only_offset() -> Option<usize> {
    std::env::var("TAMPER_OFFSET").ok()?.parse().ok()
}

fn closed_redb_store() -> (TestStore, Vec<u8>, Head) {
    let store = TestStore::new(Backend::Redb);
    let head = build_log(&store);
    let bytes = std::fs::read(store.dir().join(REDB_FILE)).expect("read the closed redb file");
    (store, bytes, head)
}

fn run_attempts(
    name: &str,
    variants: impl Iterator<Item = (usize, Vec<u8>)>,
    head: Head,
) -> BTreeMap<Attempt, u32> {
    let mut tally = BTreeMap::new();
    let mut panics = Vec::new();
    for (offset, bytes) in variants {
        match attempt(&bytes, head) {
            Ok(outcome) => *tally.entry(outcome).or_insert(0) += 1,
            Err(message) => panics.push((offset, message)),
        }
    }
    eprintln!("{name}: {tally:?}, {} panics", panics.len());
    assert!(
        panics.is_empty(),
        "{name}: {} attempts panicked (offset, message), first: {:?}",
        panics.len(),
        &panics[..panics.len().min(5)]
    );
    tally
}

#[test]
fn redb_file_byte_flips_give_an_error_a_failure_or_an_unchanged_log_never_a_panic() {
    // Proves that flipping one byte of the closed redb file (every 97th offset, the middle, and
    // the first bytes of the file) never makes opening or verifying panic, and never makes a
    // damaged log verify with a different head.
    let (_store, original, head) = closed_redb_store();
    assert!(
        attempt(&original, head) == Ok(Attempt::Unchanged),
        "the untouched copy verifies"
    );
    let len = original.len();
    let mut offsets: Vec<usize> = (0..len).step_by(97).collect();
    offsets.extend([len / 2, len / 2 + 1, 1, 2, 3, len - 1]);
    offsets.extend(0..64);
    offsets.sort_unstable();
    offsets.dedup();
    if let Some(only) = only_offset() {
        offsets = vec![only];
    }
    let variants = offsets.into_iter().map(|offset| {
        let mut bytes = original.clone();
        bytes[offset] ^= 0xff;
        (offset, bytes)
    });
    let tally = run_attempts("byte flips", variants, head);
    let noticed: u32 = tally
        .iter()
        .filter(|(k, _)| **k != Attempt::Unchanged)
        .map(|(_, n)| n)
        .sum();
    assert!(noticed > 0, "no flip was noticed at all: {tally:?}");
}

#[test]
fn redb_file_truncations_give_an_error_a_failure_or_an_unchanged_log_never_a_panic() {
    // Proves that a redb file cut short at many lengths (every 4 KiB page boundary and a spread
    // of odd lengths) gives an error or a failure, never a panic or a silently shorter log.
    let (_store, original, head) = closed_redb_store();
    let len = original.len();
    let mut cuts: Vec<usize> = (0..len).step_by(4096).collect();
    cuts.extend((0..len).step_by(7919));
    cuts.extend([1, 7, 511, len - 1]);
    cuts.sort_unstable();
    cuts.dedup();
    if let Some(only) = only_offset() {
        cuts = vec![only];
    }
    let variants = cuts.into_iter().map(|cut| (cut, original[..cut].to_vec()));
    run_attempts("truncations", variants, head);
}

#[test]
fn a_file_that_is_not_a_store_is_refused_with_an_error() {
    // Proves random bytes named ledger.redb are refused as "not a store" (or damaged), not
    // treated as an empty store and not reported as a plain I/O error.
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("store");
    std::fs::create_dir(&dir).expect("create store dir");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(dir.join(REDB_FILE), &noise).expect("write noise");
    let result = catch_unwind(AssertUnwindSafe(|| {
        open_engine(&dir, Create::No, Backend::Redb)
    }))
    .expect("opening noise must not panic");
    match result {
        Err(OpenError::NotAStore { path, .. }) | Err(OpenError::Damaged { path, .. }) => {
            assert_eq!(path, dir.display().to_string())
        }
        Err(other) => panic!("expected NotAStore or Damaged, got {other:?}"),
        Ok(_) => panic!("random bytes opened as a store"),
    }
    let kept = std::fs::read(dir.join(REDB_FILE)).expect("file still there");
    assert_eq!(kept, noise, "a refused file is left untouched");

    // A plain file where the store directory should be.
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"hello").expect("write file");
    match open_engine(&file, Create::IfMissing, Backend::Redb) {
        Err(OpenError::NotAStore { .. }) => {}
        Err(other) => panic!("expected NotAStore, got {other:?}"),
        Ok(_) => panic!("a plain file opened as a store"),
    }
}

#[test]
fn opening_a_missing_store_without_create_is_missing_and_creates_nothing() {
    // Proves Create::No on an absent directory (or an empty one) is OpenError::Missing naming
    // the path, and leaves nothing behind.
    let tmp = tempfile::tempdir().expect("temp dir");
    let absent = tmp.path().join("absent");
    match open_engine(&absent, Create::No, Backend::Redb) {
        Err(OpenError::Missing { path }) => assert_eq!(path, absent.display().to_string()),
        Err(other) => panic!("expected Missing, got {other:?}"),
        Ok(_) => panic!("an absent store opened"),
    }
    assert!(!absent.exists(), "Create::No created {}", absent.display());

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("create empty dir");
    match open_engine(&empty, Create::No, Backend::Redb) {
        Err(OpenError::Missing { path }) => assert_eq!(path, empty.display().to_string()),
        Err(other) => panic!("expected Missing, got {other:?}"),
        Ok(_) => panic!("an empty directory opened as a store"),
    }
    let entries = std::fs::read_dir(&empty).expect("read dir").count();
    assert_eq!(entries, 0, "Create::No wrote into the empty directory");
}
