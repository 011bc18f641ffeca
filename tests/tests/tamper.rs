//! Tamper evidence for storage format 2: damage written behind the ledger's back must be found.
//!
//! What is on disk now: the events in segment frames (`segments/`, each frame sealed by a BLAKE3
//! checksum around BLAKE3-chained records), and in the index engine (`index.redb` or
//! `index.sled/`) only what the log rebuilds: stream index runs, command entries, frame index
//! entries and the index checkpoint.
//!
//! (a) Through an open engine, every backend: bytes of the segment files and entries of the
//! index tables are changed while a bare engine is open, and `verify` on it must name the exact
//! position. Then, for damage to the log, what the next open does.
//!
//! What `verify` reports for a record whose bytes changed: the record's position, whether or not
//! the tamperer also recomputed the frame's checksum. The record chain is checked per record, and
//! a frame whose checksum fails is served record by record (as `get` always does), so the first
//! bad record is named. The next *open* of a store with a frame whose checksum fails refuses it
//! (`OpenError::Damaged` naming the segment file and the frame's byte offset: issue 12, "a bad
//! frame in the synced part is a damaged store"); a resealed frame opens, and `verify` names the
//! position again.
//!
//! (b) On disk: damage to the index file (`index.redb`) must give an error, a verify failure, an
//! index rebuilt from the log at open (redb refused the file) or an unchanged log, never a panic
//! and never a log with another head. `index_rot.rs` covers what a flip that redb does not
//! notice does to each kind of entry.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use ledger::log::{self, tables, StreamRun, FORMAT_VERSION, META_FORMAT_VERSION};
use ledger::segments::{segment_name, Location, SEGMENTS_DIR};
use ledger::store::{open_engine, Checkpoint, META_LOG_CHECKPOINT, REDB_FILE};
use ledger::{
    Backend, Create, Engine, ExpectedVersion, Head, Ledger, LedgerError, LedgerOptions, OpenError,
    Position, StoreOptions, StreamVersion, VerifyReport, WriteBatch,
};
use ledger_tests::for_each_backend;
use ledger_tests::frames::{self, read_frame, record_ranges, reseal, write_at, FrameInfo};
use ledger_tests::{append_request, new_event, stream_append, TestStore};

for_each_backend!(
    every_single_byte_flip_in_an_event_record_is_found_at_its_position,
    a_flip_that_breaks_the_frame_checksum_is_found_at_its_position_and_refuses_the_next_open,
    a_deleted_event_is_named_at_its_frame_and_refuses_the_next_open,
    swapped_events_fail_at_the_first_of_the_two,
    a_stream_index_run_pointing_elsewhere_fails_at_its_first_event,
    a_missing_stream_index_run_fails_at_its_first_event,
    an_extra_stream_index_entry_fails_after_the_head,
    a_truncated_stream_index_value_is_reported_at_its_event,
    a_missing_command_entry_fails_at_the_commands_first_event,
    a_missing_or_redirected_frame_index_entry_is_an_error_naming_the_position,
    an_index_checkpoint_behind_the_log_is_replayed_and_a_wrong_one_refuses_to_open,
    a_store_with_a_newer_format_version_is_refused,
);

/// Events in the log built by [`build_log`].
const LOG_EVENTS: u64 = 50;
/// Segment size of the tamper stores: small, so that part (b) copies little (the first segment
/// is zero-filled to this size), and large enough for the whole 50-event log.
const SEGMENT_BYTES: u64 = 64 << 10;

/// Writes 50 events over 4 streams through the ledger: single- and multi-event commands and
/// one command over two streams, so that every verify check has something to check. One frame
/// per command (the appends are sequential).
fn build_log(store: &TestStore) -> Head {
    let engine = ledger::open_store_with(
        &store.dir(),
        Create::IfMissing,
        store.backend,
        &[],
        &StoreOptions::with_segment_bytes(SEGMENT_BYTES),
    )
    .expect("create the tamper store");
    let ledger = Ledger::with_engine(engine, Vec::new()).expect("ledger on the tamper store");
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

/// Asserts verify stops with a read error (never a pass) whose message contains `needle`.
fn assert_read_error(engine: &dyn Engine, needle: &str, what: &str) {
    let snap = engine.snapshot().expect("snapshot of the tampered store");
    match ledger::verify::verify(&*snap, &mut |_| {}) {
        Err(e) => assert!(
            e.to_string().contains(needle),
            "{what}: error {e} does not name {needle:?}"
        ),
        Ok(report) => panic!("{what}: expected a read error, verify gave {report:?}"),
    }
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
fn tampered_store(backend: Backend) -> (TestStore, Arc<ledger::Store>, Head) {
    let store = TestStore::new(backend);
    let head = build_log(&store);
    let engine = store.engine();
    (store, engine, head)
}

/// The index engine of the store in `dir` alone, without the segments (as a repair tool would
/// open it when the store refuses to open).
fn index_engine(dir: &Path, backend: Backend) -> Arc<dyn Engine> {
    match backend {
        Backend::Redb => Arc::new(
            ledger::engine::redb::RedbEngine::open(&dir.join(REDB_FILE), false)
                .expect("open the redb index"),
        ),
        #[cfg(feature = "sled")]
        Backend::Sled => Arc::new(
            ledger::engine::sled::SledEngine::open(&dir.join(ledger::store::SLED_DIR))
                .expect("open the sled index"),
        ),
    }
}

fn event_at(engine: &dyn Engine, position: u64) -> ledger::EventRecord {
    let snap = engine.snapshot().expect("snapshot");
    log::read_event(&*snap, Position(position))
        .expect("read_event")
        .expect("event present")
}

/// The stream index run holding the event at `position`: its key and its value.
fn run_of(engine: &dyn Engine, position: u64) -> (Vec<u8>, StreamRun) {
    let record = event_at(engine, position);
    let key = log::stream_key(&record.stream, record.version);
    let snap = engine.snapshot().expect("snapshot");
    let (k, v) = snap
        .last(
            tables::STREAM_INDEX,
            (Bound::Unbounded, Bound::Included(&key[..])),
        )
        .expect("stream index read")
        .expect("a run holds the event");
    let run = StreamRun::decode(&v).expect("a healthy run");
    assert!(
        run.first_position.0 <= position && position < run.first_position.0 + u64::from(run.count),
        "the run found does not hold {position}"
    );
    (k, run)
}

/// Asserts that opening the store in `dir` is refused as damaged, naming the segment file of
/// `frame` and (when `exact`) the frame's byte offset.
fn assert_open_refused_naming(dir: &Path, backend: Backend, frame: &FrameInfo, exact: bool) {
    let what = format!("the damaged frame at {}", frame.location);
    match open_engine(dir, Create::No, backend) {
        Err(OpenError::Damaged { reason, .. }) => {
            let file = segment_name(frame.location.segment);
            let byte = format!("byte {}:", frame.location.offset);
            assert!(
                reason.contains(&file) && (!exact || reason.contains(&byte)),
                "{what}: the refusal {reason:?} does not name it"
            );
        }
        Err(other) => panic!("{what}: expected OpenError::Damaged, got {other:?}"),
        Ok(_) => panic!("{what}: the store opened"),
    }
}

/// The frame holding `position`, its bytes, and the byte range of the record in them.
fn record_in_frame(dir: &Path, position: u64) -> (FrameInfo, Vec<u8>, std::ops::Range<usize>) {
    let frame = frames::frame_of(dir, position);
    let bytes = read_frame(dir, &frame);
    let range = record_ranges(&bytes)[(position - frame.header.first_position) as usize].clone();
    (frame, bytes, range)
}

// ---------------------------------------------------------------------------------------------
// (a) through an open engine

fn every_single_byte_flip_in_an_event_record_is_found_at_its_position(backend: Backend) {
    // Proves the hash chain covers every byte of a record: for every event and a spread of byte
    // offsets (every 4th, shifted per event, plus the first three and last bytes), flipping one
    // bit of the record inside its frame, with the frame's checksum recomputed as a tamperer who
    // knows the format would, makes verify fail at exactly that event's position.
    let (store, engine, head) = tampered_store(backend);
    let dir = store.dir();
    let mut flips = 0u32;
    for position in 1..=LOG_EVENTS {
        let (frame, original, range) = record_in_frame(&dir, position);
        let (index, len) = (position as usize - 1, range.len());
        let offsets = (0..len).filter(|i| i % 4 == index % 4 || *i < 3 || *i == len - 1);
        for offset in offsets {
            let mut damaged = original.clone();
            damaged[range.start + offset] ^= 1 << (offset % 8);
            reseal(&mut damaged);
            write_at(
                &dir,
                frame.location.segment,
                frame.location.offset,
                &damaged,
            );
            assert_fails_at(
                &*engine,
                position,
                &format!("flip of byte {offset} at position {position}"),
            );
            flips += 1;
        }
        write_at(
            &dir,
            frame.location.segment,
            frame.location.offset,
            &original,
        );
    }
    assert_clean(&*engine, head);
    assert!(flips > 1_500, "only {flips} flips were tried");
}

fn a_flip_that_breaks_the_frame_checksum_is_found_at_its_position_and_refuses_the_next_open(
    backend: Backend,
) {
    // Proves a naive flip (the frame's checksum no longer holds) is still named by verify at the
    // record's position on an open engine, and that the next open refuses the store, naming the
    // segment file and the frame's byte offset; nothing is truncated: restoring the byte makes
    // the same store open and verify again.
    let (store, engine, head) = tampered_store(backend);
    let dir = store.dir();
    for position in [1u64, 2, 24, 25, LOG_EVENTS] {
        let (frame, original, range) = record_in_frame(&dir, position);
        for offset in [range.start, range.start + range.len() / 2, range.end - 1] {
            let mut damaged = original.clone();
            damaged[offset] ^= 0x20;
            write_at(
                &dir,
                frame.location.segment,
                frame.location.offset,
                &damaged,
            );
            assert_fails_at(
                &*engine,
                position,
                &format!("naive flip at frame byte {offset}, position {position}"),
            );
            write_at(
                &dir,
                frame.location.segment,
                frame.location.offset,
                &original,
            );
        }
    }
    assert_clean(&*engine, head);
    drop(engine);
    let (frame, original, range) = record_in_frame(&dir, 25);
    let mut damaged = original.clone();
    damaged[range.end - 1] ^= 0x20;
    write_at(
        &dir,
        frame.location.segment,
        frame.location.offset,
        &damaged,
    );
    assert_open_refused_naming(&dir, backend, &frame, true);
    write_at(
        &dir,
        frame.location.segment,
        frame.location.offset,
        &original,
    );
    assert_clean(&*store.engine(), head);
}

/// Rewrites `frame` without its record `i`, resealed, and zeroes the bytes it no longer covers:
/// an event deleted by a tamperer who knows the format.
fn delete_record(dir: &Path, frame: &FrameInfo, i: usize) {
    let bytes = read_frame(dir, frame);
    let ranges = record_ranges(&bytes);
    let commands_end = 48 + frame.header.commands_bytes as usize;
    let mut records: Vec<&[u8]> = ranges.iter().map(|r| &bytes[r.clone()]).collect();
    records.remove(i);
    let mut payload = bytes[48..commands_end].to_vec();
    let mut offset = 0u32;
    for r in &records {
        payload.extend_from_slice(&offset.to_le_bytes());
        offset += r.len() as u32;
    }
    for r in &records {
        payload.extend_from_slice(r);
    }
    let mut out = bytes[..48].to_vec();
    out[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[16..20].copy_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    reseal(&mut out);
    out.resize(bytes.len(), 0);
    write_at(dir, frame.location.segment, frame.location.offset, &out);
}

fn a_deleted_event_is_named_at_its_frame_and_refuses_the_next_open(backend: Backend) {
    // Proves removing an event from its frame (the frame rewritten shorter and resealed) is
    // found. On an open engine, reading the log stops with an error naming the first position of
    // the frame that held it (the frame no longer matches its frame index entry). Before format 2
    // this was a verify failure "position p is missing"; now the frame, not the event, is what
    // the index vouches for, so the position named is the frame's first. The next open refuses
    // the store, naming the segment file (the log breaks inside the indexed part). Restoring the
    // frame restores the store.
    for position in [1u64, 25, LOG_EVENTS] {
        let (store, engine, head) = tampered_store(backend);
        let dir = store.dir();
        let frame = frames::frame_of(&dir, position);
        let original = read_frame(&dir, &frame);
        delete_record(
            &dir,
            &frame,
            (position - frame.header.first_position) as usize,
        );
        assert_read_error(
            &*engine,
            &format!("event at position {}", frame.header.first_position),
            &format!("delete of {position}"),
        );
        drop(engine);
        assert_open_refused_naming(&dir, backend, &frame, false);
        write_at(
            &dir,
            frame.location.segment,
            frame.location.offset,
            &original,
        );
        assert_clean(&*store.engine(), head);
    }
}

/// Exchanges the records of events `a` and `b` (of equal length) in their frames, resealed.
fn swap_records(dir: &Path, a: u64, b: u64) {
    let (fa, mut ba, ra) = record_in_frame(dir, a);
    let (fb, mut bb, rb) = record_in_frame(dir, b);
    assert_eq!(ra.len(), rb.len(), "records {a} and {b} differ in length");
    if fa == fb {
        let tmp = ba[ra.clone()].to_vec();
        ba.copy_within(rb.clone(), ra.start);
        ba[rb].copy_from_slice(&tmp);
    } else {
        let tmp = ba[ra.clone()].to_vec();
        ba[ra].copy_from_slice(&bb[rb.clone()]);
        bb[rb].copy_from_slice(&tmp);
        reseal(&mut bb);
        write_at(dir, fb.location.segment, fb.location.offset, &bb);
    }
    reseal(&mut ba);
    write_at(dir, fa.location.segment, fa.location.offset, &ba);
}

fn swapped_events_fail_at_the_first_of_the_two(backend: Backend) {
    // Proves exchanging two records (each intact and self-consistent, their frames resealed),
    // within one frame or across frames, is named at the earlier of the two positions, on an
    // open engine and after reopening (the frames check, so the store opens; the chain does not).
    let (store, engine, head) = tampered_store(backend);
    let dir = store.dir();
    let len_of = |p: u64| record_in_frame(&dir, p).2.len();
    let within = frames::frames(&dir)
        .into_iter()
        .find(|f| f.header.events == 3)
        .expect("a 3-event frame");
    let p = within.header.first_position;
    let across = (1..=LOG_EVENTS)
        .flat_map(|a| (a + 1..=LOG_EVENTS).map(move |b| (a, b)))
        .filter(|&(a, b)| frames::frame_of(&dir, a) != frames::frame_of(&dir, b))
        .find(|&(a, b)| len_of(a) == len_of(b))
        .expect("two records of equal length in different frames");
    for (a, b) in [(p, p + 1), (p, p + 2), across] {
        swap_records(&dir, a, b);
        assert_fails_at(&*engine, a, &format!("swap of {a} and {b}"));
        swap_records(&dir, a, b);
        assert_clean(&*engine, head);
    }
    let (a, b) = across;
    swap_records(&dir, a, b);
    drop(engine);
    let engine = store.engine();
    assert_fails_at(&*engine, a, &format!("swap of {a} and {b} after reopen"));
    swap_records(&dir, a, b);
    assert_clean(&*engine, head);
}

fn a_stream_index_run_pointing_elsewhere_fails_at_its_first_event(backend: Backend) {
    // Proves a stream index run (one entry per run of a stream's events in one append) moved to
    // another position is named at the first event the run should point to.
    let (_store, engine, head) = tampered_store(backend);
    for position in [1u64, 20, LOG_EVENTS] {
        let (key, run) = run_of(&*engine, position);
        let first = run.first_position.0;
        let elsewhere = if first == 1 { 2 } else { first - 1 };
        let moved = StreamRun {
            first_position: Position(elsewhere),
            ..run
        };
        raw_put(&*engine, tables::STREAM_INDEX, &key, &moved.encode());
        assert_fails_at(
            &*engine,
            first,
            &format!("run of {position} moved {first} -> {elsewhere}"),
        );
        raw_put(&*engine, tables::STREAM_INDEX, &key, &run.encode());
    }
    assert_clean(&*engine, head);
}

fn a_missing_stream_index_run_fails_at_its_first_event(backend: Backend) {
    // Proves a deleted stream index run is named at the position of its first event.
    let (_store, engine, head) = tampered_store(backend);
    let (key, run) = run_of(&*engine, 20);
    raw_delete(&*engine, tables::STREAM_INDEX, &key);
    assert_fails_at(&*engine, run.first_position.0, "deleted run");
    raw_put(&*engine, tables::STREAM_INDEX, &key, &run.encode());
    assert_clean(&*engine, head);
}

fn an_extra_stream_index_entry_fails_after_the_head(backend: Backend) {
    // Proves an index entry that points at no event (here: a version past the stream's end) is
    // found by the entry count and reported at head + 1.
    let (_store, engine, head) = tampered_store(backend);
    let key = log::stream_key("s-1", StreamVersion(999));
    let extra = StreamRun {
        first_position: Position(20),
        count: 1,
    };
    raw_put(&*engine, tables::STREAM_INDEX, &key, &extra.encode());
    let reason = assert_fails_at(&*engine, LOG_EVENTS + 1, "extra index entry");
    assert!(reason.contains("stream index"), "reason {reason:?}");
    raw_delete(&*engine, tables::STREAM_INDEX, &key);
    assert_clean(&*engine, head);
}

fn a_truncated_stream_index_value_is_reported_at_its_event(backend: Backend) {
    // Proves a damaged (7-byte) stream index value is a verify failure named at the first event
    // of its run, like any other damage, so `verify` can exit 1 naming the first bad position
    // (SPEC 3), rather than a read error that aborts the pass without a position.
    let (_store, engine, head) = tampered_store(backend);
    let (key, run) = run_of(&*engine, 20);
    let original = run.encode();
    raw_put(&*engine, tables::STREAM_INDEX, &key, &original[..7]);
    let snap = engine.snapshot().expect("snapshot");
    let result = ledger::verify::verify(&*snap, &mut |_| {});
    drop(snap);
    match result {
        Ok(report) => {
            let failure = report
                .failure
                .expect("verify passed over a damaged index entry");
            assert_eq!(
                failure.position, run.first_position.0,
                "reason {:?}",
                failure.reason
            );
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

fn a_missing_or_redirected_frame_index_entry_is_an_error_naming_the_position(backend: Backend) {
    // Proves the frame index (where each frame is) is never trusted blindly: a deleted entry, or
    // one pointing at another frame, stops verify with an error naming the first position the
    // entry serves, never serves another frame's records as these positions, and never lets
    // verify pass. (A frame index entry is not an event: this is a read error, not a verify
    // failure at a position.)
    let (store, engine, head) = tampered_store(backend);
    let all = frames::frames(&store.dir());
    for target in [&all[0], &all[all.len() / 2], &all[all.len() - 1]] {
        let first = target.header.first_position;
        let key = first.to_be_bytes();
        let original = raw_get(&*engine, tables::FRAMES, &key);
        raw_delete(&*engine, tables::FRAMES, &key);
        assert_read_error(
            &*engine,
            &format!("event at position {first}"),
            &format!("deleted frame entry {first}"),
        );
        let other = all.iter().find(|f| f != &target).expect("another frame");
        let mut redirected = original.clone();
        redirected[0..4].copy_from_slice(&other.location.segment.to_le_bytes());
        redirected[4..12].copy_from_slice(&other.location.offset.to_le_bytes());
        raw_put(&*engine, tables::FRAMES, &key, &redirected);
        assert_read_error(
            &*engine,
            &format!("event at position {first}"),
            &format!("frame entry {first} -> {}", other.location),
        );
        raw_put(&*engine, tables::FRAMES, &key, &original);
    }
    assert_clean(&*engine, head);
}

fn an_index_checkpoint_behind_the_log_is_replayed_and_a_wrong_one_refuses_to_open(
    backend: Backend,
) {
    // Proves the index checkpoint is only where recovery starts, never a way to lose or invent
    // events: set back to an earlier frame boundary, the next open replays the frames after it
    // and the log verifies with the same head and the checkpoint back at the end; pointing at
    // the end with an earlier head, or past the end of the log, or cut short, the store refuses
    // to open (OpenError::Damaged), and putting the right checkpoint back opens it unchanged.
    let (store, engine, head) = tampered_store(backend);
    let dir = store.dir();
    let all = frames::frames(&dir);
    let original = raw_get(&*engine, tables::META, META_LOG_CHECKPOINT);
    let saved = Checkpoint::decode(&original).expect("a healthy checkpoint");
    assert_eq!(saved.head, head);
    let tenth = &all[9];
    let back_head = tenth.header.first_position + u64::from(tenth.header.events) - 1;
    let back = Checkpoint {
        head: Head {
            position: Position(back_head),
            hash: event_at(&*engine, back_head).hash,
        },
        end: all[10].location,
    };
    raw_put(&*engine, tables::META, META_LOG_CHECKPOINT, &back.encode());
    drop(engine);
    let engine = store.engine();
    assert_clean(&*engine, head);
    assert_eq!(
        raw_get(&*engine, tables::META, META_LOG_CHECKPOINT),
        original,
        "the replay brought the checkpoint back to the end of the log"
    );
    drop(engine);
    let past_end = Location {
        segment: saved.end.segment,
        offset: saved.end.offset + 4096,
    };
    let wrong = [
        (
            "at the end with an earlier head",
            Checkpoint {
                head: back.head,
                ..saved
            }
            .encode(),
        ),
        (
            "past the end of the log",
            Checkpoint {
                end: past_end,
                ..saved
            }
            .encode(),
        ),
        ("cut short", original[..51].to_vec()),
    ];
    for (what, bytes) in wrong {
        let index = index_engine(&dir, backend);
        raw_put(&*index, tables::META, META_LOG_CHECKPOINT, &bytes);
        drop(index);
        match open_engine(&dir, Create::No, backend) {
            Err(OpenError::Damaged { .. }) => {}
            Err(other) => panic!("checkpoint {what}: expected Damaged, got {other:?}"),
            Ok(_) => panic!("checkpoint {what}: the store opened"),
        }
        let index = index_engine(&dir, backend);
        raw_put(&*index, tables::META, META_LOG_CHECKPOINT, &original);
        drop(index);
        assert_clean(&*store.engine(), head);
    }
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
// (b) on disk: the redb index file, beside intact segments

/// What reopening and verifying a damaged file gave.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Attempt {
    OpenRefused,
    ReadError,
    VerifyFailed,
    /// The open found the index damaged, moved it aside and rebuilt it from the log; verify
    /// then passed with the original head.
    Rebuilt,
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
            if engine.index_rebuilt().is_some() {
                Attempt::Rebuilt
            } else {
                Attempt::Unchanged
            }
        }
    }
}

/// Writes `bytes` as the redb index file of a fresh store directory beside a copy of the
/// intact segment files in `segments`, and runs `reopen_and_verify` under `catch_unwind`; `Err`
/// carries the panic message.
fn attempt(bytes: &[u8], segments: &Path, head: Head) -> Result<Attempt, String> {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("store");
    std::fs::create_dir_all(dir.join(SEGMENTS_DIR)).expect("create store dir");
    for entry in std::fs::read_dir(segments).expect("list the segments") {
        let entry = entry.expect("a segment entry");
        std::fs::copy(entry.path(), dir.join(SEGMENTS_DIR).join(entry.file_name()))
            .expect("copy a segment file");
    }
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
    segments: &Path,
    head: Head,
) -> BTreeMap<Attempt, u32> {
    let mut tally = BTreeMap::new();
    let mut panics = Vec::new();
    for (offset, bytes) in variants {
        match attempt(&bytes, segments, head) {
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
    // Proves that flipping one byte of the closed redb index file (every 97th offset, the
    // middle, and the first bytes of the file), beside intact segments, never makes opening or
    // verifying panic, and never makes the log verify with a different head. (The events are in
    // the segments now, so most flips hit rebuildable data: an error, a verify failure, or, when
    // the flip hits unused space or what recovery replays, the unchanged log.)
    let (store, original, head) = closed_redb_store();
    let segments = store.dir().join(SEGMENTS_DIR);
    assert!(
        attempt(&original, &segments, head) == Ok(Attempt::Unchanged),
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
    let tally = run_attempts("byte flips", variants, &segments, head);
    let noticed: u32 = tally
        .iter()
        .filter(|(k, _)| **k != Attempt::Unchanged)
        .map(|(_, n)| n)
        .sum();
    assert!(noticed > 0, "no flip was noticed at all: {tally:?}");
}

#[test]
fn redb_file_truncations_give_an_error_a_failure_or_an_unchanged_log_never_a_panic() {
    // Proves that a redb index file cut short at many lengths (every 4 KiB page boundary and a
    // spread of odd lengths), beside intact segments, gives an error, a failure or the unchanged
    // log, never a panic or a silently shorter log.
    let (store, original, head) = closed_redb_store();
    let segments = store.dir().join(SEGMENTS_DIR);
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
    run_attempts("truncations", variants, &segments, head);
}

#[test]
fn a_file_that_is_not_a_store_is_refused_with_an_error() {
    // Proves random bytes named index.redb are refused as "not a store" (or damaged), not
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

#[test]
fn a_creation_killed_at_any_step_leaves_no_store_and_the_next_create_starts_clean() {
    // A creation writes `creating` first and removes it last. Whatever a kill left between the
    // two (the marker alone, the marker and an index, or a whole empty store still marked) is no
    // store to a reader (Missing, as CI once found: "the segments directory has no segment
    // file"), and the next create clears it and makes a working store.
    use ledger::store::CREATING_FILE;
    let tmp = tempfile::tempdir().expect("temp dir");
    let whole = tmp.path().join("whole");
    drop(open_engine(&whole, Create::IfMissing, Backend::Redb).expect("create a store"));
    assert!(
        !whole.join(CREATING_FILE).exists(),
        "a finished creation kept its marker"
    );
    let leftovers: [(&str, &[&str]); 3] = [
        ("marker only", &[]),
        ("marker and index", &[REDB_FILE]),
        ("marker, index and segments", &[REDB_FILE, SEGMENTS_DIR]),
    ];
    for (case, files) in leftovers {
        let dir = tmp.path().join(case.replace([' ', ','], "-"));
        std::fs::create_dir(&dir).expect("create dir");
        std::fs::write(dir.join(CREATING_FILE), b"").expect("write marker");
        for name in files {
            let from = whole.join(name);
            if from.is_dir() {
                std::fs::create_dir(dir.join(name)).expect("mkdir");
                for entry in std::fs::read_dir(&from).expect("list") {
                    let entry = entry.expect("entry");
                    std::fs::copy(entry.path(), dir.join(name).join(entry.file_name()))
                        .expect("copy");
                }
            } else {
                std::fs::copy(&from, dir.join(name)).expect("copy");
            }
        }
        match open_engine(&dir, Create::No, Backend::Redb) {
            Err(OpenError::Missing { .. }) => {}
            Err(other) => panic!("{case}: expected Missing, got {other}"),
            Ok(_) => panic!("{case}: a half-created store opened as a store"),
        }
        let engine = open_engine(&dir, Create::IfMissing, Backend::Redb)
            .unwrap_or_else(|e| panic!("{case}: create after an interrupted creation: {e}"));
        assert!(!dir.join(CREATING_FILE).exists(), "{case}: marker kept");
        let ledger = Ledger::with_engine(engine, Vec::new()).expect("a ledger");
        ledger
            .append_blocking(append_request(
                "after-recreation",
                vec![stream_append(
                    "s",
                    ExpectedVersion::Any,
                    vec![new_event("t", b"x", 0)],
                )],
            ))
            .unwrap_or_else(|e| panic!("{case}: append after the re-creation: {e}"));
        drop(ledger);
        let reopened = open_engine(&dir, Create::No, Backend::Redb)
            .unwrap_or_else(|e| panic!("{case}: reopen: {e}"));
        assert_eq!(
            log::read_head(&*Engine::snapshot(&*reopened).expect("snapshot"))
                .expect("head")
                .0
                .position,
            Position(1),
            "{case}: the event appended after the re-creation"
        );
    }
}
