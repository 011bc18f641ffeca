//! Store files are input, not truth (issue 13 item 9): a damaged head a writer would append
//! after, and a redb engine that panicked, are refused with errors naming the file and the
//! value, never served or written past.
//!
//! - The index checkpoint (the head the writer appends after and where the log's indexed
//!   frames end) is checked against the log at open: a position past the largest, a gap, an end
//!   that is not a frame boundary, or a hash that is not the log's refuse to open.
//! - The last event's key must be its record's position (`log::read_head`).
//! - A redb engine that panicked refuses every later read and write until reopened.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use ledger::engine::redb::RedbEngine;
use ledger::log::{self, tables};
use ledger::store::{Checkpoint, META_LOG_CHECKPOINT, REDB_FILE};
use ledger::{
    Backend, Create, Engine, EngineError, ExpectedVersion, OpenError, Position, ReadError,
    Snapshot, WriteBatch,
};
use ledger_tests::{append_request, for_each_backend, new_event, stream_append, TestStore};

for_each_backend!(
    a_damaged_index_checkpoint_is_rebuilt_from_the_log_or_refused_never_trusted,
    a_last_event_key_that_is_not_its_records_position_is_refused,
);

/// The raw index engine of a closed store (no recovery, no checks), to plant a value in it.
fn raw_index(dir: &Path, backend: Backend) -> Arc<dyn Engine> {
    match backend {
        Backend::Redb => Arc::new(
            RedbEngine::open(&dir.join(REDB_FILE), false).expect("open the closed store's index"),
        ),
        #[cfg(feature = "sled")]
        Backend::Sled => Arc::new(
            ledger::engine::sled::SledEngine::open(&dir.join(ledger::store::SLED_DIR))
                .expect("open the closed store's index"),
        ),
        #[allow(unreachable_patterns)]
        other => panic!("no raw index for {other:?}"),
    }
}

fn write_checkpoint(dir: &Path, backend: Backend, checkpoint: &Checkpoint) {
    let index = raw_index(dir, backend);
    let mut batch = WriteBatch::new();
    batch.put(
        tables::META,
        META_LOG_CHECKPOINT.to_vec(),
        checkpoint.encode(),
    );
    index.commit(batch).expect("plant the checkpoint");
}

fn read_checkpoint(dir: &Path, backend: Backend) -> Checkpoint {
    let index = raw_index(dir, backend);
    let snap = index.snapshot().expect("snapshot");
    Checkpoint::read(&*snap).expect("the checkpoint parses")
}

fn a_damaged_index_checkpoint_is_rebuilt_from_the_log_or_refused_never_trusted(backend: Backend) {
    // Proves the index checkpoint is not trusted at open (issue 13 item 9): each one-field
    // damage below never opens with a head the writer would append after (a gap, an overflow, a
    // chain from a wrong hash). A checkpoint naming an event of the log with another hash is the
    // index's damage, and the index is rebuilt from the log (back to the good checkpoint); one
    // pointing past the log's frames refuses to open with `OpenError::Damaged` naming the value
    // (it may be a lost tail) and the store is untouched, so with the good checkpoint back it
    // opens and the next append lands right after the real head. Planted defects: without the checked `+ 1`
    // the u64::MAX case panicked ("attempt to add with overflow"); without the landing check
    // the off-boundary end opened; without `Store::check_head` the flipped hash opened.
    let store = TestStore::new(backend);
    {
        let ledger = store.ledger();
        for i in 0..3 {
            ledger
                .append_blocking(append_request(
                    &format!("c{i}"),
                    vec![stream_append(
                        "s",
                        ExpectedVersion::Any,
                        vec![new_event("e", b"x", i), new_event("e", b"y", i)],
                    )],
                ))
                .expect("append");
        }
    }
    let dir = store.dir();
    let good = read_checkpoint(&dir, backend);
    assert_eq!(good.head.position, Position(6));
    let mut flipped_hash = good;
    flipped_hash.head.hash.0[7] ^= 0x10;
    let cases = [
        (
            "position past the largest",
            Checkpoint {
                head: ledger::Head {
                    position: Position(u64::MAX),
                    ..good.head
                },
                ..good
            },
            "18446744073709551615",
        ),
        (
            "position after a gap",
            Checkpoint {
                head: ledger::Head {
                    position: Position(9),
                    ..good.head
                },
                ..good
            },
            "the index says 9",
        ),
        (
            "position behind the log",
            Checkpoint {
                head: ledger::Head {
                    position: Position(5),
                    ..good.head
                },
                ..good
            },
            "the index says 5",
        ),
        (
            "end inside the last frame",
            Checkpoint {
                end: ledger::segments::Location {
                    offset: good.end.offset - 1,
                    ..good.end
                },
                ..good
            },
            "not where a frame ends",
        ),
        (
            "end past the log",
            Checkpoint {
                end: ledger::segments::Location {
                    offset: good.end.offset + 4096,
                    ..good.end
                },
                ..good
            },
            "before the frames the index has indexed",
        ),
        ("one bit of the hash", flipped_hash, "hash"),
    ];
    for (case, bad, says) in cases {
        write_checkpoint(&dir, backend, &bad);
        // A checkpoint that names an event of the log with another hash (or no position at all)
        // is the index's damage: rebuilt from the log. One that points past what the log holds
        // may be a lost tail of acked events: refused, and the store left as it is.
        let rebuilt = matches!(
            case,
            "position past the largest" | "position behind the log" | "one bit of the hash"
        );
        match ledger::store::open_engine(&dir, Create::No, backend) {
            Ok(opened) if rebuilt => {
                let note = opened.index_rebuilt().unwrap_or_else(|| {
                    panic!("{case}: opened on the damaged checkpoint without rebuilding")
                });
                assert!(note.contains(says), "{case}: {note}");
                assert!(
                    note.contains("rebuilt it from the log (head 6)"),
                    "{case}: {note}"
                );
                drop(opened);
                assert_eq!(
                    read_checkpoint(&dir, backend),
                    good,
                    "{case}: rebuilt checkpoint"
                );
            }
            Err(OpenError::Damaged { path, reason }) if !rebuilt => {
                assert!(reason.contains(says), "{case}: {reason}");
                assert_eq!(path, dir.display().to_string(), "{case}");
                assert_eq!(
                    read_checkpoint(&dir, backend),
                    bad,
                    "{case}: nothing rewritten"
                );
            }
            Err(other) => panic!("{case}: expected {rebuilt:?} rebuilt, got {other}"),
            Ok(_) => panic!("{case}: a store with a checkpoint past its log opened"),
        }
    }
    write_checkpoint(&dir, backend, &good);
    let ledger = store.ledger();
    let next = ledger
        .append_blocking(append_request(
            "after",
            vec![stream_append(
                "s",
                ExpectedVersion::Any,
                vec![new_event("e", b"z", 9)],
            )],
        ))
        .expect("append after the good checkpoint is back");
    assert_eq!(next.first_position, Position(7));
    let report = ledger.verify(&mut |_| {}).expect("verify");
    assert_eq!(report.failure, None);
    assert_eq!(report.events_checked, 7);
}

/// A snapshot whose `events` table answers `last` under a key with one bit flipped, as a
/// damaged B-tree page of a format-1 store would: the record is the real last one.
struct FlippedLastKey<'a>(Box<dyn Snapshot + 'a>);

impl Snapshot for FlippedLastKey<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.0.get(table, key)
    }

    fn scan(
        &self,
        table: &str,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        limit: usize,
    ) -> Result<Vec<ledger::engine::Entry>, EngineError> {
        self.0.scan(table, range, limit)
    }

    fn last(
        &self,
        table: &str,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> Result<Option<ledger::engine::Entry>, EngineError> {
        let found = self.0.last(table, range)?;
        Ok(found.map(|(mut key, value)| {
            if table == tables::EVENTS {
                key[5] ^= 0x01; // position + 2^16
            }
            (key, value)
        }))
    }
}

fn a_last_event_key_that_is_not_its_records_position_is_refused(backend: Backend) {
    // Proves `log::read_head` checks the last event's key against its record (issue 13 item
    // 9): a key with a flipped bit is `ReadError::DamagedEntry` naming both positions, never a
    // head 65,536 positions past the log that a writer would append after. Planted defect:
    // the check removed; read_head returned position 65,538 and this failed.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    ledger
        .append_blocking(append_request(
            "c",
            vec![stream_append(
                "s",
                ExpectedVersion::Any,
                vec![new_event("e", b"x", 0), new_event("e", b"y", 1)],
            )],
        ))
        .expect("append");
    let real = ledger.engine().snapshot().expect("snapshot");
    let (head, _) = log::read_head(&*real).expect("the real head");
    assert_eq!(head.position, Position(2));
    let damaged = FlippedLastKey(ledger.engine().snapshot().expect("snapshot"));
    match log::read_head(&damaged) {
        Err(ReadError::DamagedEntry { reason, .. }) => assert!(
            reason.contains("position 65538") && reason.contains("says 2"),
            "{reason}"
        ),
        other => panic!("expected ReadError::DamagedEntry, got {other:?}"),
    }
}

// Proves a redb engine is poisoned by a caught panic (issue 13 item 9): the panicking commit
// fails as corruption, every later commit and snapshot of that handle is refused saying why
// (none of the later writes lands), and a reopen serves exactly what was committed before the
// panic and accepts writes again. Planted defect: `poison` not recording the panic; the second
// commit then succeeded and this failed.
#[test]
fn a_redb_engine_refuses_every_read_and_write_after_a_caught_panic_until_reopened() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("index.redb");
    let put = |key: &[u8]| {
        let mut batch = WriteBatch::new();
        batch.put(tables::META, key.to_vec(), b"v".to_vec());
        batch
    };
    let engine = RedbEngine::open(&path, true).expect("create");
    engine
        .commit(put(b"before"))
        .expect("a commit before the panic");
    engine.panic_in_next_commit();
    match engine.commit(put(b"panicking")) {
        Err(EngineError::Corrupted { reason, .. }) => {
            assert!(
                reason.contains("redb panicked while committing"),
                "{reason}"
            )
        }
        other => panic!("expected the panic as corruption, got {other:?}"),
    }
    match engine.commit(put(b"after")) {
        Err(EngineError::Corrupted { reason, .. }) => assert!(
            reason.contains("refuses every read and write until the store is reopened"),
            "{reason}"
        ),
        other => panic!("a commit after the panic: expected a refusal, got {other:?}"),
    }
    match engine.snapshot() {
        Err(EngineError::Corrupted { reason, .. }) => {
            assert!(reason.contains("redb panicked earlier"), "{reason}")
        }
        Err(other) => panic!("a read after the panic: expected a refusal, got {other}"),
        Ok(_) => panic!("a read after the panic was served"),
    }
    drop(engine);
    let engine = RedbEngine::open(&path, false).expect("reopen");
    let snap = engine.snapshot().expect("a read after the reopen");
    let value = |key: &[u8]| snap.get(tables::META, key).expect("get");
    assert_eq!(value(b"before"), Some(b"v".to_vec()));
    assert_eq!(value(b"panicking"), None);
    assert_eq!(value(b"after"), None);
    drop(snap);
    engine
        .commit(put(b"again"))
        .expect("writes after the reopen");
}
