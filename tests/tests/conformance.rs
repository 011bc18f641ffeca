//! Conformance suite: the engine contract (`ledger::engine` module doc) and the ledger's append,
//! read, verify and subscribe contract, each written once as a function of the backend and run
//! for redb always and for sled under the `sled` feature (modules `on_redb` / `on_sled`).

use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use ledger::log::{tables, FORMAT_VERSION, META_FORMAT_VERSION};
use ledger::{
    AppendError, AppendOutcome, Backend, Engine, EventRecord, ExpectedVersion, Hash, Head, Ledger,
    Position, StreamVersion, WriteBatch,
};
use ledger_tests::for_each_backend;
use ledger_tests::{append_request, new_event, stream_append, FaultyEngine, TestStore};

for_each_backend!(
    engine_get_put_delete_round_trip,
    engine_scan_orders_by_bytes_and_honours_bounds_and_limit,
    engine_last_finds_greatest_key_in_range,
    engine_never_written_table_reads_empty,
    engine_clear_empties_one_table_only,
    engine_multi_table_batch_is_visible_as_a_whole,
    engine_reopen_after_drop_keeps_committed_data,
    engine_snapshot_sees_earlier_commits,
    ledger_append_to_one_stream_assigns_positions_and_versions,
    ledger_append_to_several_streams_is_one_atomic_append,
    ledger_expected_versions_are_enforced_with_typed_errors,
    ledger_failed_stream_in_multi_stream_append_writes_nothing,
    ledger_same_command_id_same_events_is_a_duplicate_that_writes_nothing,
    ledger_same_command_id_different_events_is_rejected_and_writes_nothing,
    ledger_rejected_command_does_not_use_up_its_id,
    ledger_limits_are_typed_invalid_errors_and_write_nothing,
    ledger_reads_return_content_in_order_with_from_and_limit,
    ledger_head_hash_is_last_record_hash_and_chain_links,
    ledger_verify_passes_on_a_good_log_with_the_right_head,
    ledger_reopen_keeps_events_versions_and_command_ids,
    ledger_reopen_right_after_drop_is_never_locked,
    ledger_head_is_current_as_soon_as_append_returns,
    ledger_subscription_catches_up_then_follows_live_without_gaps,
    ledger_subscription_ends_when_the_ledger_is_dropped,
    ledger_failed_group_commit_fails_every_append_in_it_and_changes_nothing,
    ledger_failed_index_commit_after_a_durable_frame_stops_the_writer,
);

// ---------------------------------------------------------------------------------------------
// Engine helpers

const T_A: &str = "conf_a";
const T_B: &str = "conf_b";
const T_C: &str = "conf_c";
const T_NEVER: &str = "conf_never_written";

fn commit(engine: &dyn Engine, batch: WriteBatch) {
    engine
        .commit(batch)
        .unwrap_or_else(|e| panic!("{} commit failed: {e}", engine.name()));
}

fn put(engine: &dyn Engine, table: &'static str, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.put(table, key.to_vec(), value.to_vec());
    commit(engine, batch);
}

fn get(engine: &dyn Engine, table: &str, key: &[u8]) -> Option<Vec<u8>> {
    let snap = engine.snapshot().expect("snapshot of a healthy test store");
    snap.get(table, key).expect("get on a healthy test store")
}

fn scan_keys(
    engine: &dyn Engine,
    table: &str,
    range: (Bound<&[u8]>, Bound<&[u8]>),
    limit: usize,
) -> Vec<Vec<u8>> {
    let snap = engine.snapshot().expect("snapshot of a healthy test store");
    let entries = snap
        .scan(table, range, limit)
        .expect("scan on a healthy test store");
    for (k, v) in &entries {
        assert_eq!(
            v,
            &value_for(k),
            "scan returned the wrong value for key {k:02x?}"
        );
    }
    entries.into_iter().map(|(k, _)| k).collect()
}

fn last_key(
    engine: &dyn Engine,
    table: &str,
    range: (Bound<&[u8]>, Bound<&[u8]>),
) -> Option<Vec<u8>> {
    let snap = engine.snapshot().expect("snapshot of a healthy test store");
    let last = snap
        .last(table, range)
        .expect("last on a healthy test store");
    last.map(|(k, v)| {
        assert_eq!(
            v,
            value_for(&k),
            "last returned the wrong value for key {k:02x?}"
        );
        k
    })
}

/// The value stored under a key in the ordering tests: derived from the key, so a scan that
/// pairs a key with another key's value is caught.
fn value_for(key: &[u8]) -> Vec<u8> {
    let mut v = b"v:".to_vec();
    v.extend(key.iter().rev());
    v
}

/// Keys chosen to catch length-vs-byte ordering mistakes, inserted out of order.
fn ordering_keys() -> Vec<Vec<u8>> {
    vec![
        b"b".to_vec(),
        vec![0xff],
        b"a".to_vec(),
        vec![0x01, 0x00],
        b"ab".to_vec(),
        vec![0x00],
        vec![0x01],
    ]
}

/// `ordering_keys` in byte order.
fn sorted_keys() -> Vec<Vec<u8>> {
    vec![
        vec![0x00],
        vec![0x01],
        vec![0x01, 0x00],
        b"a".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        vec![0xff],
    ]
}

fn engine_with_ordering_keys(store: &TestStore) -> Arc<dyn Engine> {
    let engine = store.engine();
    let mut batch = WriteBatch::new();
    for k in ordering_keys() {
        batch.put(T_A, k.clone(), value_for(&k));
    }
    commit(&*engine, batch);
    engine
}

fn keys(list: &[&[u8]]) -> Vec<Vec<u8>> {
    list.iter().map(|k| k.to_vec()).collect()
}

// ---------------------------------------------------------------------------------------------
// Engine suite

fn engine_get_put_delete_round_trip(backend: Backend) {
    // Proves put stores, a second put replaces, delete removes, and deleting an absent key is fine.
    let store = TestStore::new(backend);
    let engine = store.engine();
    assert_eq!(get(&*engine, T_A, b"k"), None);
    put(&*engine, T_A, b"k", b"one");
    assert_eq!(get(&*engine, T_A, b"k"), Some(b"one".to_vec()));
    put(&*engine, T_A, b"k", b"two");
    assert_eq!(get(&*engine, T_A, b"k"), Some(b"two".to_vec()));
    put(&*engine, T_A, b"empty", b"");
    assert_eq!(
        get(&*engine, T_A, b"empty"),
        Some(Vec::new()),
        "an empty value is a value"
    );

    let mut batch = WriteBatch::new();
    batch.delete(T_A, b"k".to_vec());
    batch.delete(T_A, b"never-there".to_vec());
    commit(&*engine, batch);
    assert_eq!(get(&*engine, T_A, b"k"), None);
    assert_eq!(get(&*engine, T_A, b"never-there"), None);
    assert_eq!(get(&*engine, T_A, b"empty"), Some(Vec::new()));

    // Operations in one batch apply in order: put then delete leaves nothing, and vice versa.
    let mut batch = WriteBatch::new();
    batch.put(T_A, b"x".to_vec(), b"1".to_vec());
    batch.delete(T_A, b"x".to_vec());
    batch.delete(T_A, b"y".to_vec());
    batch.put(T_A, b"y".to_vec(), b"2".to_vec());
    commit(&*engine, batch);
    assert_eq!(get(&*engine, T_A, b"x"), None);
    assert_eq!(get(&*engine, T_A, b"y"), Some(b"2".to_vec()));
}

fn engine_scan_orders_by_bytes_and_honours_bounds_and_limit(backend: Backend) {
    // Proves scan returns keys in byte order, each bound kind is respected, and limit truncates.
    let store = TestStore::new(backend);
    let engine = engine_with_ordering_keys(&store);
    let e = &*engine;
    use Bound::{Excluded as Ex, Included as In, Unbounded as Un};

    assert_eq!(scan_keys(e, T_A, (Un, Un), usize::MAX), sorted_keys());
    assert_eq!(
        scan_keys(e, T_A, (In(b"a"), Ex(b"b")), 100),
        keys(&[b"a", b"ab"])
    );
    assert_eq!(
        scan_keys(e, T_A, (Ex(b"a"), In(b"b")), 100),
        keys(&[b"ab", b"b"])
    );
    assert_eq!(
        scan_keys(e, T_A, (In(b"a"), In(b"b")), 100),
        keys(&[b"a", b"ab", b"b"])
    );
    assert_eq!(scan_keys(e, T_A, (Ex(b"a"), Ex(b"b")), 100), keys(&[b"ab"]));
    assert_eq!(
        scan_keys(e, T_A, (Un, Ex(&[0x01, 0x00])), 100),
        keys(&[&[0x00], &[0x01]])
    );
    assert_eq!(
        scan_keys(e, T_A, (Ex(&[0x01]), Un), 100),
        keys(&[&[0x01, 0x00], b"a", b"ab", b"b", &[0xff]])
    );
    // Bounds that are not stored keys.
    assert_eq!(
        scan_keys(e, T_A, (In(b"aa"), Ex(b"c")), 100),
        keys(&[b"ab", b"b"])
    );
    assert_eq!(
        scan_keys(e, T_A, (Ex(&[0xff]), Un), 100),
        Vec::<Vec<u8>>::new()
    );
    assert_eq!(
        scan_keys(e, T_A, (In(b"c"), Ex(b"d")), 100),
        Vec::<Vec<u8>>::new()
    );

    // Limit.
    assert_eq!(scan_keys(e, T_A, (Un, Un), 3), sorted_keys()[..3].to_vec());
    assert_eq!(scan_keys(e, T_A, (In(b"a"), Un), 2), keys(&[b"a", b"ab"]));
    assert_eq!(scan_keys(e, T_A, (Un, Un), 0), Vec::<Vec<u8>>::new());
    assert_eq!(scan_keys(e, T_A, (Un, Un), 7), sorted_keys());
}

fn engine_last_finds_greatest_key_in_range(backend: Backend) {
    // Proves `last` returns the greatest key inside the range for every bound kind, or None.
    let store = TestStore::new(backend);
    let engine = engine_with_ordering_keys(&store);
    let e = &*engine;
    use Bound::{Excluded as Ex, Included as In, Unbounded as Un};

    assert_eq!(last_key(e, T_A, (Un, Un)), Some(vec![0xff]));
    assert_eq!(last_key(e, T_A, (In(b"a"), Ex(b"b"))), Some(b"ab".to_vec()));
    assert_eq!(last_key(e, T_A, (In(b"a"), In(b"b"))), Some(b"b".to_vec()));
    assert_eq!(last_key(e, T_A, (Un, Ex(&[0x01]))), Some(vec![0x00]));
    assert_eq!(last_key(e, T_A, (Un, In(&[0x01]))), Some(vec![0x01]));
    assert_eq!(
        last_key(e, T_A, (In(&[0x01]), In(&[0x01]))),
        Some(vec![0x01])
    );
    assert_eq!(last_key(e, T_A, (Ex(b"b"), Ex(&[0xff]))), None);
    assert_eq!(last_key(e, T_A, (Ex(&[0xff]), Un)), None);
    // The ledger's stream-version lookup shape: prefix, 0x00 .. prefix, 0x01.
    assert_eq!(
        last_key(e, T_A, (In(&[0x01, 0x00]), Ex(&[0x01, 0x01]))),
        Some(vec![0x01, 0x00])
    );
}

fn engine_never_written_table_reads_empty(backend: Backend) {
    // Proves contract point 5: reading a table never written returns nothing, not an error.
    let store = TestStore::new(backend);
    let engine = store.engine();
    let snap = engine.snapshot().expect("snapshot of a fresh store");
    assert_eq!(
        snap.get(T_NEVER, b"k").expect("get on a missing table"),
        None
    );
    let all = snap
        .scan(T_NEVER, (Bound::Unbounded, Bound::Unbounded), 10)
        .expect("scan on a missing table");
    assert_eq!(all, Vec::new());
    let last = snap
        .last(T_NEVER, (Bound::Unbounded, Bound::Unbounded))
        .expect("last on a missing table");
    assert_eq!(last, None);
}

fn engine_clear_empties_one_table_only(backend: Backend) {
    // Proves Clear removes every entry of its table, leaves other tables alone, applies in batch
    // order (clear then put keeps the put), and clearing a never-written table is harmless.
    let store = TestStore::new(backend);
    let engine = store.engine();
    let mut batch = WriteBatch::new();
    for i in 0u8..20 {
        batch.put(T_A, vec![i], vec![i]);
        batch.put(T_B, vec![i], vec![i, i]);
    }
    commit(&*engine, batch);

    let mut batch = WriteBatch::new();
    batch.clear(T_A);
    batch.clear(T_NEVER);
    commit(&*engine, batch);
    let snap = engine.snapshot().expect("snapshot");
    let a = snap
        .scan(T_A, (Bound::Unbounded, Bound::Unbounded), 100)
        .expect("scan a");
    let b = snap
        .scan(T_B, (Bound::Unbounded, Bound::Unbounded), 100)
        .expect("scan b");
    assert_eq!(a, Vec::new(), "cleared table must be empty");
    assert_eq!(b.len(), 20, "the other table must keep its 20 entries");
    assert_eq!(b[7], (vec![7], vec![7, 7]));
    drop(snap);

    let mut batch = WriteBatch::new();
    batch.put(T_B, b"old".to_vec(), b"gone".to_vec());
    batch.clear(T_B);
    batch.put(T_B, b"new".to_vec(), b"kept".to_vec());
    commit(&*engine, batch);
    let snap = engine.snapshot().expect("snapshot");
    let b = snap
        .scan(T_B, (Bound::Unbounded, Bound::Unbounded), 100)
        .expect("scan b");
    assert_eq!(b, vec![(b"new".to_vec(), b"kept".to_vec())]);
}

fn engine_multi_table_batch_is_visible_as_a_whole(backend: Backend) {
    // Proves one batch spanning three tables (puts and a delete) is visible in full after commit.
    let store = TestStore::new(backend);
    let engine = store.engine();
    put(&*engine, T_C, b"doomed", b"x");

    let mut batch = WriteBatch::new();
    for i in 0u8..50 {
        batch.put(T_A, vec![b'a', i], vec![i]);
        batch.put(T_B, vec![b'b', i], vec![i]);
    }
    batch.delete(T_C, b"doomed".to_vec());
    batch.put(T_C, b"born".to_vec(), b"y".to_vec());
    commit(&*engine, batch);

    let snap = engine.snapshot().expect("snapshot");
    let a = snap
        .scan(T_A, (Bound::Unbounded, Bound::Unbounded), 1000)
        .expect("scan a");
    let b = snap
        .scan(T_B, (Bound::Unbounded, Bound::Unbounded), 1000)
        .expect("scan b");
    let c = snap
        .scan(T_C, (Bound::Unbounded, Bound::Unbounded), 1000)
        .expect("scan c");
    assert_eq!(a.len(), 50);
    assert_eq!(b.len(), 50);
    assert_eq!(a[49], (vec![b'a', 49], vec![49]));
    assert_eq!(b[0], (vec![b'b', 0], vec![0]));
    assert_eq!(c, vec![(b"born".to_vec(), b"y".to_vec())]);
}

fn engine_reopen_after_drop_keeps_committed_data(backend: Backend) {
    // Proves contract point 2 as far as a process can see it: committed batches survive closing
    // and reopening the store, including deletes and clears, and the format version is kept.
    let store = TestStore::new(backend);
    {
        let engine = store.engine();
        let mut batch = WriteBatch::new();
        for i in 0u8..10 {
            batch.put(T_A, vec![i], vec![i; 3]);
        }
        batch.put(T_B, b"b".to_vec(), b"bee".to_vec());
        batch.put(T_C, b"c".to_vec(), b"sea".to_vec());
        commit(&*engine, batch);
        let mut batch = WriteBatch::new();
        batch.delete(T_A, vec![3]);
        batch.clear(T_C);
        commit(&*engine, batch);
    }
    let engine = store.engine();
    let snap = engine.snapshot().expect("snapshot after reopen");
    let a = snap
        .scan(T_A, (Bound::Unbounded, Bound::Unbounded), 100)
        .expect("scan a");
    let expected: Vec<(Vec<u8>, Vec<u8>)> = (0u8..10)
        .filter(|&i| i != 3)
        .map(|i| (vec![i], vec![i; 3]))
        .collect();
    assert_eq!(a, expected);
    assert_eq!(snap.get(T_B, b"b").expect("get b"), Some(b"bee".to_vec()));
    assert_eq!(snap.get(T_C, b"c").expect("get c"), None);
    assert_eq!(
        snap.get(tables::META, META_FORMAT_VERSION)
            .expect("get format"),
        Some(FORMAT_VERSION.to_le_bytes().to_vec())
    );
}

fn engine_snapshot_sees_earlier_commits(backend: Backend) {
    // Proves contract point 3: a snapshot sees every batch committed before it; on redb it also
    // does not see batches committed after it (sled reads live data, as documented).
    let store = TestStore::new(backend);
    let engine = store.engine();
    put(&*engine, T_A, b"first", b"1");
    let early = engine.snapshot().expect("early snapshot");
    assert_eq!(early.get(T_A, b"first").expect("get"), Some(b"1".to_vec()));
    put(&*engine, T_A, b"second", b"2");
    let late = engine.snapshot().expect("late snapshot");
    assert_eq!(late.get(T_A, b"first").expect("get"), Some(b"1".to_vec()));
    assert_eq!(late.get(T_A, b"second").expect("get"), Some(b"2".to_vec()));
    if backend == Backend::Redb {
        assert_eq!(
            early.get(T_A, b"second").expect("get"),
            None,
            "redb snapshots are isolated"
        );
        let keys = early
            .scan(T_A, (Bound::Unbounded, Bound::Unbounded), 10)
            .expect("scan");
        assert_eq!(keys, vec![(b"first".to_vec(), b"1".to_vec())]);
    }
}

// ---------------------------------------------------------------------------------------------
// Ledger helpers

fn ev(event_type: &str, payload: &[u8]) -> ledger::NewEvent {
    new_event(event_type, payload, 0)
}

fn one(
    command_id: &str,
    stream: &str,
    expected: ExpectedVersion,
    payloads: &[&[u8]],
) -> ledger::AppendRequest {
    let events = payloads.iter().map(|p| ev("test.event", p)).collect();
    append_request(command_id, vec![stream_append(stream, expected, events)])
}

fn ok(ledger: &Ledger, request: ledger::AppendRequest) -> AppendOutcome {
    let id = request.command_id.clone();
    ledger
        .append_blocking(request)
        .unwrap_or_else(|e| panic!("append {id} should succeed: {e}"))
}

fn err(ledger: &Ledger, request: ledger::AppendRequest) -> AppendError {
    let id = request.command_id.clone();
    match ledger.append_blocking(request) {
        Ok(outcome) => panic!("append {id} should fail, got {outcome:?}"),
        Err(e) => e,
    }
}

fn outcome(first: u64, count: u32, duplicate: bool) -> AppendOutcome {
    AppendOutcome {
        first_position: Position(first),
        count,
        duplicate,
    }
}

fn all(ledger: &Ledger) -> Vec<EventRecord> {
    ledger
        .read_all(Position(1), usize::MAX)
        .expect("read_all on a healthy store")
}

fn stream(ledger: &Ledger, stream: &str) -> Vec<EventRecord> {
    ledger
        .read_stream(stream, StreamVersion(1), usize::MAX)
        .expect("read_stream on a healthy store")
}

/// (position, stream, version, command id, payload) of each record, for compact comparisons.
fn summary(records: &[EventRecord]) -> Vec<(u64, String, u64, String, Vec<u8>)> {
    records
        .iter()
        .map(|r| {
            (
                r.position.0,
                r.stream.clone(),
                r.version.0,
                r.command_id.clone(),
                r.payload.clone(),
            )
        })
        .collect()
}

fn row(p: u64, s: &str, v: u64, c: &str, payload: &[u8]) -> (u64, String, u64, String, Vec<u8>) {
    (p, s.to_owned(), v, c.to_owned(), payload.to_vec())
}

/// The head as stored in the log (last event's position and hash), read through a snapshot.
/// Tests compare with this rather than `Ledger::head()` so that only
/// `ledger_head_is_current_as_soon_as_append_returns` fails for the head-publication race.
fn durable_head(ledger: &Ledger) -> Head {
    let snap = ledger.snapshot().expect("snapshot of a healthy store");
    ledger::log::read_head(&*snap)
        .expect("read_head on a healthy store")
        .0
}

fn assert_verifies(ledger: &Ledger, events: u64) {
    let report = ledger
        .verify(&mut |_| {})
        .expect("verify reads a healthy store");
    assert_eq!(report.failure, None, "verify must pass");
    assert_eq!(report.events_checked, events);
    assert_eq!(
        report.head,
        durable_head(ledger),
        "verify's head must equal the log's head"
    );
}

fn assert_invalid(e: AppendError, want_field: &str) {
    match e {
        AppendError::Invalid { field, reason } => {
            assert_eq!(field, want_field, "reason was {reason:?}");
            assert!(!reason.is_empty(), "an Invalid error must say why");
        }
        other => panic!("expected Invalid on {want_field}, got {other:?}"),
    }
}

fn assert_wrong_version(
    e: AppendError,
    want_stream: &str,
    want_expected: ExpectedVersion,
    want_actual: u64,
) {
    match e {
        AppendError::WrongExpectedVersion {
            stream,
            expected,
            actual,
        } => {
            assert_eq!(stream, want_stream);
            assert_eq!(expected, want_expected);
            assert_eq!(actual, StreamVersion(want_actual));
        }
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts in the test environment")
}

// ---------------------------------------------------------------------------------------------
// Ledger suite

fn ledger_append_to_one_stream_assigns_positions_and_versions(backend: Backend) {
    // Proves appends to one stream get gap-free positions from 1 and versions from 1, and the
    // stored envelope carries what was appended.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    assert_eq!(
        durable_head(&ledger),
        Head::default(),
        "an empty log has head 0 / genesis"
    );
    let o1 = ok(
        &ledger,
        one("c1", "s-1", ExpectedVersion::NoStream, &[b"a", b"b", b"c"]),
    );
    assert_eq!(o1, outcome(1, 3, false));
    assert_eq!(o1.last_position(), Position(3));
    let o2 = ok(
        &ledger,
        one(
            "c2",
            "s-1",
            ExpectedVersion::Exact(StreamVersion(3)),
            &[b"d"],
        ),
    );
    assert_eq!(o2, outcome(4, 1, false));
    assert_eq!(durable_head(&ledger).position, Position(4));
    assert_eq!(
        ledger.stream_version("s-1").expect("version"),
        StreamVersion(4)
    );

    let records = stream(&ledger, "s-1");
    assert_eq!(
        summary(&records),
        vec![
            row(1, "s-1", 1, "c1", b"a"),
            row(2, "s-1", 2, "c1", b"b"),
            row(3, "s-1", 3, "c1", b"c"),
            row(4, "s-1", 4, "c2", b"d"),
        ]
    );
    let r = &records[0];
    assert_eq!(r.event_type, "test.event");
    assert_eq!(r.schema_version, 1);
    assert_eq!(r.codec, ledger::Codec::DEFAULT);
    assert_eq!(r.at, ev("x", b"").at);
    assert_eq!(r.prev_hash, Hash::GENESIS);
    assert!(
        records.windows(2).all(|w| w[0].event_id < w[1].event_id),
        "event ids strictly increase with position"
    );
}

fn ledger_append_to_several_streams_is_one_atomic_append(backend: Backend) {
    // Proves one request over three streams gets contiguous positions in request order, one
    // command id, and each stream's versions start from its own current version.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    ok(
        &ledger,
        one("pre", "s-b", ExpectedVersion::NoStream, &[b"b1"]),
    );
    let request = append_request(
        "multi",
        vec![
            stream_append(
                "s-a",
                ExpectedVersion::NoStream,
                vec![ev("t", b"a1"), ev("t", b"a2")],
            ),
            stream_append(
                "s-b",
                ExpectedVersion::Exact(StreamVersion(1)),
                vec![ev("t", b"b2")],
            ),
            stream_append("s-c", ExpectedVersion::Any, vec![ev("t", b"c1")]),
        ],
    );
    assert_eq!(ok(&ledger, request), outcome(2, 4, false));
    assert_eq!(
        summary(&all(&ledger)),
        vec![
            row(1, "s-b", 1, "pre", b"b1"),
            row(2, "s-a", 1, "multi", b"a1"),
            row(3, "s-a", 2, "multi", b"a2"),
            row(4, "s-b", 2, "multi", b"b2"),
            row(5, "s-c", 1, "multi", b"c1"),
        ]
    );
    assert_eq!(
        ledger.stream_version("s-a").expect("version"),
        StreamVersion(2)
    );
    assert_eq!(
        ledger.stream_version("s-b").expect("version"),
        StreamVersion(2)
    );
    assert_eq!(
        ledger.stream_version("s-c").expect("version"),
        StreamVersion(1)
    );
    assert_verifies(&ledger, 5);
}

fn ledger_expected_versions_are_enforced_with_typed_errors(backend: Backend) {
    // Proves Any / NoStream / Exact each accept exactly the right stream state and otherwise
    // give WrongExpectedVersion naming the stream, the expectation and the actual version.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    use ExpectedVersion::{Any, Exact, NoStream};

    assert_eq!(
        ok(&ledger, one("c1", "s-1", Any, &[b"1"])),
        outcome(1, 1, false)
    );
    assert_eq!(
        ok(&ledger, one("c2", "s-1", Any, &[b"2"])),
        outcome(2, 1, false)
    );
    assert_wrong_version(
        err(&ledger, one("c3", "s-1", NoStream, &[b"x"])),
        "s-1",
        NoStream,
        2,
    );
    let e = err(&ledger, one("c4", "s-1", Exact(StreamVersion(1)), &[b"x"]));
    assert_wrong_version(e, "s-1", Exact(StreamVersion(1)), 2);
    let e = err(&ledger, one("c5", "s-1", Exact(StreamVersion(3)), &[b"x"]));
    assert_wrong_version(e, "s-1", Exact(StreamVersion(3)), 2);
    let e = err(
        &ledger,
        one("c6", "s-new", Exact(StreamVersion(1)), &[b"x"]),
    );
    assert_wrong_version(e, "s-new", Exact(StreamVersion(1)), 0);
    // Exact(0) on an empty stream is the same promise as NoStream.
    assert_eq!(
        ok(
            &ledger,
            one("c7", "s-new", Exact(StreamVersion(0)), &[b"n1"])
        ),
        outcome(3, 1, false)
    );
    assert_eq!(
        ok(&ledger, one("c8", "s-1", Exact(StreamVersion(2)), &[b"3"])),
        outcome(4, 1, false)
    );
    assert_eq!(
        ok(&ledger, one("c9", "s-2", NoStream, &[b"1"])),
        outcome(5, 1, false)
    );
    assert_eq!(
        durable_head(&ledger).position,
        Position(5),
        "refused appends wrote nothing"
    );
    assert_verifies(&ledger, 5);
}

fn ledger_failed_stream_in_multi_stream_append_writes_nothing(backend: Backend) {
    // Proves atomicity across streams: when the second stream's expectation fails, the first
    // stream gets nothing, and the error names the failing stream.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    ok(
        &ledger,
        one("pre", "s-b", ExpectedVersion::NoStream, &[b"b1"]),
    );
    let head = durable_head(&ledger);
    let request = append_request(
        "multi",
        vec![
            stream_append("s-a", ExpectedVersion::NoStream, vec![ev("t", b"a1")]),
            stream_append("s-b", ExpectedVersion::NoStream, vec![ev("t", b"b2")]),
        ],
    );
    assert_wrong_version(err(&ledger, request), "s-b", ExpectedVersion::NoStream, 1);
    assert_eq!(durable_head(&ledger), head);
    assert_eq!(stream(&ledger, "s-a"), Vec::new());
    assert_eq!(
        ledger.stream_version("s-a").expect("version"),
        StreamVersion(0)
    );
    assert_eq!(all(&ledger).len(), 1);
}

fn ledger_same_command_id_same_events_is_a_duplicate_that_writes_nothing(backend: Backend) {
    // Proves a retry (same id, same events, even with another expectation) returns the original
    // positions with duplicate = true and writes nothing.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    ok(&ledger, one("c0", "s-0", ExpectedVersion::Any, &[b"z"]));
    let first = ok(
        &ledger,
        one("c1", "s-1", ExpectedVersion::NoStream, &[b"a", b"b"]),
    );
    assert_eq!(first, outcome(2, 2, false));
    ok(&ledger, one("c2", "s-1", ExpectedVersion::Any, &[b"c"]));
    let head = durable_head(&ledger);
    let before = all(&ledger);

    let retry = ok(
        &ledger,
        one("c1", "s-1", ExpectedVersion::NoStream, &[b"a", b"b"]),
    );
    assert_eq!(retry, outcome(2, 2, true));
    // The fingerprint ignores expected versions: a retry with a now-stale expectation is still
    // recognised as the same command.
    let retry = ok(
        &ledger,
        one(
            "c1",
            "s-1",
            ExpectedVersion::Exact(StreamVersion(9)),
            &[b"a", b"b"],
        ),
    );
    assert_eq!(retry, outcome(2, 2, true));
    assert_eq!(durable_head(&ledger), head, "a duplicate moves no head");
    assert_eq!(all(&ledger), before, "a duplicate writes no event");
    assert_verifies(&ledger, 4);
}

fn ledger_same_command_id_different_events_is_rejected_and_writes_nothing(backend: Backend) {
    // Proves reusing an id for other content (payload, stream, event count or business time)
    // is CommandIdReused naming the id, and writes nothing.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    ok(&ledger, one("c1", "s-1", ExpectedVersion::Any, &[b"a"]));
    let head = durable_head(&ledger);
    let before = all(&ledger);
    let mut later = one("c1", "s-1", ExpectedVersion::Any, &[b"a"]);
    later.streams[0].events[0].at = ledger::Timestamp(later.streams[0].events[0].at.0 + 1);
    let variants = vec![
        one("c1", "s-1", ExpectedVersion::Any, &[b"A"]),
        one("c1", "s-2", ExpectedVersion::Any, &[b"a"]),
        one("c1", "s-1", ExpectedVersion::Any, &[b"a", b"a"]),
        later,
    ];
    for request in variants {
        match err(&ledger, request) {
            AppendError::CommandIdReused { command_id } => assert_eq!(command_id, "c1"),
            other => panic!("expected CommandIdReused, got {other:?}"),
        }
    }
    assert_eq!(durable_head(&ledger), head);
    assert_eq!(all(&ledger), before);
    assert_eq!(stream(&ledger, "s-2"), Vec::new());
}

fn ledger_rejected_command_does_not_use_up_its_id(backend: Backend) {
    // Proves SPEC 2: a refused command writes nothing and its id can be used again, even for
    // different content.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    ok(&ledger, one("c0", "s-1", ExpectedVersion::Any, &[b"a"]));
    let e = err(
        &ledger,
        one("c1", "s-1", ExpectedVersion::NoStream, &[b"x"]),
    );
    assert_wrong_version(e, "s-1", ExpectedVersion::NoStream, 1);
    let fixed = ok(
        &ledger,
        one(
            "c1",
            "s-1",
            ExpectedVersion::Exact(StreamVersion(1)),
            &[b"y"],
        ),
    );
    assert_eq!(fixed, outcome(2, 1, false));
    assert_eq!(
        summary(&stream(&ledger, "s-1"))[1],
        row(2, "s-1", 2, "c1", b"y")
    );
}

fn ledger_limits_are_typed_invalid_errors_and_write_nothing(backend: Backend) {
    // Proves every limit gives AppendError::Invalid naming the field, writes nothing, and that
    // values exactly at a limit are accepted.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    let max_payload = vec![7u8; ledger::limits::MAX_PAYLOAD_BYTES];
    let big = vec![7u8; ledger::limits::MAX_PAYLOAD_BYTES + 1];
    let too_many: Vec<&[u8]> = vec![b"x"; ledger::limits::MAX_EVENTS_PER_APPEND + 1];
    let long_stream = "s".repeat(ledger::limits::MAX_STREAM_ID_BYTES + 1);
    let long_id = "c".repeat(ledger::limits::MAX_COMMAND_ID_BYTES + 1);

    assert_invalid(
        err(&ledger, one("c1", "s-1", ExpectedVersion::Any, &too_many)),
        "events",
    );
    assert_invalid(
        err(
            &ledger,
            one("c1", "s-1", ExpectedVersion::Any, &[b"ok", &big]),
        ),
        "streams[0].events[1].payload",
    );
    for bad in [
        "",
        "has space",
        "slash/no",
        "nul\0",
        "é",
        long_stream.as_str(),
    ] {
        assert_invalid(
            err(&ledger, one("c1", bad, ExpectedVersion::Any, &[b"x"])),
            "streams[0].stream",
        );
    }
    assert_invalid(
        err(&ledger, one("", "s-1", ExpectedVersion::Any, &[b"x"])),
        "command_id",
    );
    assert_invalid(
        err(&ledger, one(&long_id, "s-1", ExpectedVersion::Any, &[b"x"])),
        "command_id",
    );
    assert_invalid(
        err(&ledger, one("c\n1", "s-1", ExpectedVersion::Any, &[b"x"])),
        "command_id",
    );
    let twice = append_request(
        "c1",
        vec![
            stream_append("s-1", ExpectedVersion::Any, vec![ev("t", b"1")]),
            stream_append("s-1", ExpectedVersion::Any, vec![ev("t", b"2")]),
        ],
    );
    assert_invalid(err(&ledger, twice), "streams[1].stream");
    let mut bad_type = one("c1", "s-1", ExpectedVersion::Any, &[b"x"]);
    bad_type.streams[0].events[0].event_type = String::new();
    assert_invalid(err(&ledger, bad_type), "streams[0].events[0].event_type");
    assert_eq!(
        durable_head(&ledger),
        Head::default(),
        "refused appends wrote nothing"
    );
    assert_eq!(all(&ledger), Vec::new());

    // At the limits: accepted. The id "c1" was never used by the refusals above.
    let at_limit_id = "c".repeat(ledger::limits::MAX_COMMAND_ID_BYTES);
    let at_limit_stream = format!(
        "A-z.0_9:{}",
        "s".repeat(ledger::limits::MAX_STREAM_ID_BYTES - 8)
    );
    assert_eq!(
        ok(
            &ledger,
            one(
                "c1",
                &at_limit_stream,
                ExpectedVersion::Any,
                &[&max_payload]
            )
        ),
        outcome(1, 1, false)
    );
    assert_eq!(
        ok(
            &ledger,
            one(&at_limit_id, "s-1", ExpectedVersion::Any, &[b"x"])
        ),
        outcome(2, 1, false)
    );
    let records = all(&ledger);
    assert_eq!(records[0].payload.len(), ledger::limits::MAX_PAYLOAD_BYTES);
    assert_eq!(records[0].stream, at_limit_stream);
    assert_eq!(records[1].command_id, at_limit_id);
    assert_verifies(&ledger, 2);
}

fn ledger_reads_return_content_in_order_with_from_and_limit(backend: Backend) {
    // Proves read_all and read_stream return records in position / version order, start at
    // `from` (inclusive), stop at `limit`, and are empty past the end or for unknown streams.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    for i in 0..10u8 {
        let s = if i % 3 == 0 { "s-x" } else { "s-y" };
        ok(
            &ledger,
            one(&format!("c{i}"), s, ExpectedVersion::Any, &[&[i]]),
        );
    }
    let everything = all(&ledger);
    assert_eq!(
        everything.iter().map(|r| r.position.0).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        everything.iter().map(|r| r.payload[0]).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );

    let middle = ledger.read_all(Position(4), 3).expect("read_all");
    assert_eq!(middle, everything[3..6].to_vec());
    assert_eq!(
        ledger.read_all(Position(0), 2).expect("read_all"),
        everything[..2].to_vec()
    );
    assert_eq!(
        ledger.read_all(Position(11), 5).expect("read_all"),
        Vec::new()
    );
    assert_eq!(
        ledger.read_all(Position(1), 0).expect("read_all"),
        Vec::new()
    );

    let x = stream(&ledger, "s-x");
    assert_eq!(
        x.iter()
            .map(|r| (r.version.0, r.position.0, r.payload[0]))
            .collect::<Vec<_>>(),
        vec![(1, 1, 0), (2, 4, 3), (3, 7, 6), (4, 10, 9)]
    );
    let y_from = ledger
        .read_stream("s-y", StreamVersion(3), 2)
        .expect("read_stream");
    assert_eq!(
        y_from
            .iter()
            .map(|r| (r.version.0, r.position.0))
            .collect::<Vec<_>>(),
        vec![(3, 5), (4, 6)]
    );
    assert_eq!(
        ledger
            .read_stream("s-y", StreamVersion(0), 1)
            .expect("read")[0]
            .version,
        StreamVersion(1)
    );
    assert_eq!(
        ledger
            .read_stream("s-y", StreamVersion(7), 10)
            .expect("read"),
        Vec::new()
    );
    assert_eq!(
        ledger
            .read_stream("s-none", StreamVersion(1), 10)
            .expect("read"),
        Vec::new()
    );
    // A stream whose id is a prefix of another must not see the other's events.
    ok(&ledger, one("p1", "s", ExpectedVersion::Any, &[b"p"]));
    assert_eq!(
        summary(&stream(&ledger, "s")),
        vec![row(11, "s", 1, "p1", b"p")]
    );
}

fn ledger_head_hash_is_last_record_hash_and_chain_links(backend: Backend) {
    // Proves the head names the last record and its hash, and every record's prev_hash is the
    // previous record's hash (genesis for position 1).
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    for i in 0..6u8 {
        ok(
            &ledger,
            one(
                &format!("c{i}"),
                "s-1",
                ExpectedVersion::Any,
                &[&[i], &[i, i]],
            ),
        );
        let records = all(&ledger);
        let last = records.last().expect("just appended");
        assert_eq!(
            durable_head(&ledger),
            Head {
                position: last.position,
                hash: last.hash
            }
        );
    }
    let records = all(&ledger);
    assert_eq!(records[0].prev_hash, Hash::GENESIS);
    for w in records.windows(2) {
        assert_eq!(
            w[1].prev_hash, w[0].hash,
            "link at position {}",
            w[1].position
        );
    }
    for r in &records {
        assert_eq!(r.compute_hash(), r.hash, "hash of position {}", r.position);
    }
}

fn ledger_verify_passes_on_a_good_log_with_the_right_head(backend: Backend) {
    // Proves verify passes on a log written through the ledger, including an empty log, a
    // multi-stream command and a command with no events, and reports the ledger's head.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    assert_verifies(&ledger, 0);
    ok(
        &ledger,
        one("c1", "s-1", ExpectedVersion::Any, &[b"a", b"b"]),
    );
    ok(
        &ledger,
        append_request(
            "empty",
            vec![stream_append("s-1", ExpectedVersion::Any, vec![])],
        ),
    );
    ok(
        &ledger,
        append_request(
            "c2",
            vec![
                stream_append("s-2", ExpectedVersion::Any, vec![ev("t", b"1")]),
                stream_append(
                    "s-1",
                    ExpectedVersion::Any,
                    vec![ev("t", b"2"), ev("t", b"3")],
                ),
            ],
        ),
    );
    assert_verifies(&ledger, 5);
    let mut seen = Vec::new();
    let report = ledger.verify(&mut |n| seen.push(n)).expect("verify");
    assert_eq!(report.head.position, Position(5));
    assert_eq!(
        seen.last().copied(),
        Some(5),
        "progress reports the events checked"
    );
}

fn ledger_head_is_current_as_soon_as_append_returns(backend: Backend) {
    // Proves read-your-writes for `Ledger::head()` ("the last durable event"): once append has
    // returned an outcome, head() is at least that outcome's last position.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    let mut stale = Vec::new();
    for i in 0..200u32 {
        let request = one(&format!("c{i}"), "s-1", ExpectedVersion::Any, &[b"x"]);
        let done = ok(&ledger, request);
        let seen = ledger.head().position;
        if seen < done.last_position() {
            stale.push((done.last_position().0, seen.0));
        }
    }
    assert!(
        stale.is_empty(),
        "{} of 200 appends returned before head() showed them; first (appended up to, head() \
         said): {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
}

fn ledger_reopen_right_after_drop_is_never_locked(backend: Backend) {
    // Proves that dropping the last Ledger handle releases the store: reopening right away in
    // the same process never fails with OpenError::Locked ("in use by another process").
    let store = TestStore::new(backend);
    let mut locked = Vec::new();
    for cycle in 0..300u32 {
        let options = ledger::LedgerOptions {
            create: ledger::Create::IfMissing,
            backend,
            hooks: Vec::new(),
        };
        match Ledger::open(&store.dir(), options) {
            Ok(ledger) => {
                let request = one(&format!("c{cycle}"), "s-1", ExpectedVersion::Any, &[b"x"]);
                assert_eq!(
                    ok(&ledger, request).first_position.0,
                    u64::from(cycle) + 1 - locked.len() as u64
                );
            }
            Err(ledger::LedgerError::Open(ledger::OpenError::Locked { .. })) => locked.push(cycle),
            Err(other) => panic!("cycle {cycle}: {other}"),
        }
    }
    assert!(
        locked.is_empty(),
        "reopen after drop was refused as Locked in cycles {locked:?}"
    );
}

fn ledger_reopen_keeps_events_versions_and_command_ids(backend: Backend) {
    // Proves the ledger's durable state survives close and reopen: head, events, stream
    // versions, and command ids (a retry after reopen is still a duplicate).
    let store = TestStore::new(backend);
    let (head, records) = {
        let ledger = store.ledger();
        ok(
            &ledger,
            one("c1", "s-1", ExpectedVersion::NoStream, &[b"a", b"b"]),
        );
        ok(
            &ledger,
            one("c2", "s-2", ExpectedVersion::NoStream, &[b"c"]),
        );
        (durable_head(&ledger), all(&ledger))
    };
    let ledger = store.ledger();
    assert_eq!(
        ledger.head(),
        head,
        "a reopened ledger starts at the stored head"
    );
    assert_eq!(all(&ledger), records);
    assert_eq!(
        ledger.stream_version("s-1").expect("version"),
        StreamVersion(2)
    );
    let retry = ok(
        &ledger,
        one("c1", "s-1", ExpectedVersion::NoStream, &[b"a", b"b"]),
    );
    assert_eq!(retry, outcome(1, 2, true));
    let next = ok(
        &ledger,
        one(
            "c3",
            "s-1",
            ExpectedVersion::Exact(StreamVersion(2)),
            &[b"d"],
        ),
    );
    assert_eq!(next, outcome(4, 1, false));
    assert_eq!(
        all(&ledger)[3].prev_hash,
        head.hash,
        "the chain continues across reopen"
    );
    assert_verifies(&ledger, 4);
}

fn ledger_subscription_catches_up_then_follows_live_without_gaps(backend: Backend) {
    // Proves a subscription from position 1 first delivers the stored events, then events
    // appended afterwards (also concurrently), in position order with no gap or duplicate.
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    ok(
        &ledger,
        one("c1", "s-1", ExpectedVersion::Any, &[b"1", b"2"]),
    );
    ok(&ledger, one("c2", "s-2", ExpectedVersion::Any, &[b"3"]));
    ok(
        &ledger,
        one("c3", "s-1", ExpectedVersion::Any, &[b"4", b"5"]),
    );
    let rt = runtime();
    rt.block_on(async {
        let mut sub = ledger.subscribe(Position(1));
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(next_event(&mut sub).await);
        }
        assert_eq!(
            got,
            all(&ledger),
            "catch-up delivers exactly the stored events"
        );

        let writer = ledger.clone();
        let live = tokio::spawn(async move {
            for i in 0..8u8 {
                let payloads: Vec<&[u8]> = if i % 2 == 0 {
                    vec![b"a"]
                } else {
                    vec![b"b", b"c"]
                };
                let request = one(
                    &format!("live{i}"),
                    "s-live",
                    ExpectedVersion::Any,
                    &payloads,
                );
                writer.append(request).await.expect("live append");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let burst: Vec<_> = (0..8u8)
                .map(|i| {
                    let writer = writer.clone();
                    let request = one(
                        &format!("burst{i}"),
                        &format!("s-b{i}"),
                        ExpectedVersion::Any,
                        &[&[i]],
                    );
                    tokio::spawn(async move { writer.append(request).await.expect("burst append") })
                })
                .collect();
            for task in burst {
                task.await.expect("burst task");
            }
        });
        // 8 live commands of 1 or 2 events (12 events) and 8 single-event bursts.
        for _ in 0..20 {
            got.push(next_event(&mut sub).await);
        }
        live.await.expect("live writer task");
        let positions: Vec<u64> = got.iter().map(|r| r.position.0).collect();
        assert_eq!(positions, (1..=25).collect::<Vec<_>>());
        assert_eq!(got, all(&ledger), "the subscription saw exactly the log");
        let extra = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
        assert!(
            extra.is_err(),
            "nothing past the head may be delivered: {extra:?}"
        );

        let mut from_middle = ledger.subscribe(Position(24));
        assert_eq!(next_event(&mut from_middle).await.position, Position(24));
        assert_eq!(next_event(&mut from_middle).await.position, Position(25));
        let mut from_zero = ledger.subscribe(Position(0));
        assert_eq!(next_event(&mut from_zero).await.position, Position(1));
    });
}

/// Longest a test waits for a subscription's next item. Only turns a subscription that never
/// delivers into a failure instead of a hang; no speed is asserted (a loaded machine may be slow).
const SUBSCRIPTION_CAP: Duration = Duration::from_secs(120);

async fn next_event(sub: &mut ledger::Subscription) -> EventRecord {
    match tokio::time::timeout(SUBSCRIPTION_CAP, sub.next()).await {
        Ok(Some(Ok(record))) => record,
        Ok(Some(Err(e))) => panic!("subscription read failed: {e}"),
        Ok(None) => panic!("subscription ended while the ledger is open"),
        Err(_) => panic!("subscription delivered nothing after {SUBSCRIPTION_CAP:?}"),
    }
}

fn ledger_subscription_ends_when_the_ledger_is_dropped(backend: Backend) {
    // Proves the documented end of a subscription (`Subscription::next`: "None once the ledger
    // is closed"): after every Ledger handle the caller holds is dropped, a caught-up
    // subscription returns None instead of waiting forever (and keeping the store locked).
    let store = TestStore::new(backend);
    let ledger = store.ledger();
    ok(&ledger, one("c1", "s-1", ExpectedVersion::Any, &[b"1"]));
    let rt = runtime();
    rt.block_on(async {
        let mut sub = ledger.subscribe(Position(1));
        assert_eq!(next_event(&mut sub).await.position, Position(1));
        drop(ledger);
        let end = tokio::time::timeout(SUBSCRIPTION_CAP, sub.next()).await;
        match end {
            Ok(None) => {}
            Ok(Some(other)) => panic!("expected the end of the subscription, got {other:?}"),
            Err(_) => panic!(
                "subscription still waiting {SUBSCRIPTION_CAP:?} after the last Ledger handle was dropped: \
                 it holds its own Ledger clone, so the writer never stops and next() never \
                 returns None"
            ),
        }
    });
}

/// Holds the writer inside the index commit of a `gate` append (the third event of `s-a`), arms
/// `arm` while it waits, queues six `doomed` appends (one after the gate on `s-a`, five on new
/// streams of two events each) so that they are planned into the writer's next group, then
/// releases the gate. Returns the outcome of each doomed append, in order.
fn doomed_group(
    ledger: &Ledger,
    faulty: &FaultyEngine,
    arm: impl FnOnce(),
) -> Vec<(String, Result<AppendOutcome, AppendError>)> {
    ok(
        ledger,
        one("base", "s-a", ExpectedVersion::NoStream, &[b"0", b"1"]),
    );
    runtime().block_on(async {
        faulty.hold_commits();
        let started = faulty.commits_started();
        let gate = {
            let l = ledger.clone();
            tokio::spawn(async move {
                l.append(one(
                    "gate",
                    "s-a",
                    ExpectedVersion::Exact(StreamVersion(2)),
                    &[b"2"],
                ))
                .await
            })
        };
        faulty.wait_for_commits_started(started + 1);
        arm();
        let doomed_ids: Vec<String> = (0..6).map(|i| format!("doomed{i}")).collect();
        // Each is in the writer's queue, in this order, when `enqueue` returns (see
        // `ledger_tests::queue`): no sleep that a loaded machine could outlast.
        let doomed: Vec<_> = doomed_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let l = ledger.clone();
                let request = if i == 0 {
                    // Depends on `gate` having committed: proves planning saw the gate's events.
                    one(id, "s-a", ExpectedVersion::Exact(StreamVersion(3)), &[b"d"])
                } else {
                    one(
                        id,
                        &format!("s-d{i}"),
                        ExpectedVersion::NoStream,
                        &[b"d", b"e"],
                    )
                };
                ledger_tests::queue::enqueue(async move { l.append(request).await })
            })
            .collect();
        faulty.release_commits();
        let gate = gate
            .await
            .expect("gate task")
            .expect("the held commit succeeds");
        assert_eq!(gate, outcome(3, 1, false));
        let mut out = Vec::new();
        for (id, queued) in doomed_ids.into_iter().zip(doomed) {
            out.push((id, queued.await));
        }
        out
    })
}

fn after_gate() -> Vec<(u64, String, u64, String, Vec<u8>)> {
    vec![
        row(1, "s-a", 1, "base", b"0"),
        row(2, "s-a", 2, "base", b"1"),
        row(3, "s-a", 3, "gate", b"2"),
    ]
}

fn ledger_failed_group_commit_fails_every_append_in_it_and_changes_nothing(backend: Backend) {
    // Proves the writer's failure path before a frame is written (here the group's snapshot
    // fails, as a hook's `begin` or any planning error would): every append planned into the
    // group gets AppendError::Storage, the head and the log are unchanged, their command ids are
    // not used up, the writer goes on, and the next append lands at the right position.
    let store = TestStore::new(backend);
    let (faulty, engine) = ledger_tests::faulty::faulty_store(&store.dir(), backend);
    let ledger = Ledger::with_engine(engine, Vec::new()).expect("ledger on the faulty engine");
    let segment_end = || ledger.engine().log().end();
    let doomed = doomed_group(&ledger, &faulty, || faulty.fail_next_snapshot());
    assert_eq!(faulty.snapshots_failed(), 1, "exactly one snapshot failed");
    for (id, result) in &doomed {
        match result {
            Err(AppendError::Storage { reason }) => {
                assert!(reason.contains("injected"), "{id}: reason {reason:?}")
            }
            other => panic!("{id}: expected AppendError::Storage, got {other:?}"),
        }
    }
    let end_after_failure = segment_end();
    assert_eq!(
        summary(&all(&ledger)),
        after_gate(),
        "no doomed event is stored"
    );
    let head = durable_head(&ledger);
    assert_eq!(head.position, Position(3));
    assert_eq!(head.hash, all(&ledger)[2].hash);
    assert_verifies(&ledger, 3);
    for i in 1..6 {
        assert_eq!(
            ledger.stream_version(&format!("s-d{i}")).expect("version"),
            StreamVersion(0)
        );
    }
    // The writer recovered: the next append and a retry of a doomed id land right after the head,
    // in the very bytes where the doomed group would have gone (nothing of it reached the log).
    assert_eq!(
        ok(
            &ledger,
            one(
                "after",
                "s-a",
                ExpectedVersion::Exact(StreamVersion(3)),
                &[b"3"]
            )
        ),
        outcome(4, 1, false)
    );
    let frames = ledger_frames(&ledger);
    assert_eq!(
        frames.last().map(|f| f.0),
        Some(end_after_failure),
        "the next frame starts where the log ended before the failed group"
    );
    assert_eq!(
        ok(
            &ledger,
            one("doomed1", "s-d1", ExpectedVersion::NoStream, &[b"d", b"e"])
        ),
        outcome(5, 2, false)
    );
    assert_eq!(all(&ledger)[3].prev_hash, head.hash);
    assert_verifies(&ledger, 6);
}

/// Every frame of the ledger's log, read from the segment files: (location, first position,
/// events).
fn ledger_frames(ledger: &Ledger) -> Vec<(ledger::segments::Location, u64, u32)> {
    let dir = ledger.engine().dir().join(ledger::segments::SEGMENTS_DIR);
    ledger::segments::FrameReader::open(&dir)
        .expect("open the segments read-only")
        .map(|f| {
            let f = f.expect("a healthy frame");
            (f.location, f.header.first_position, f.header.events)
        })
        .collect()
}

fn ledger_failed_index_commit_after_a_durable_frame_stops_the_writer(backend: Backend) {
    // Proves the writer's failure path after a frame is durable (issue 12 item 4): the group's
    // index commit fails, so every caller of that group and every later caller gets an error and
    // nothing is acknowledged; reopening the store finds every event of the group (its frame was
    // synced) and indexes it, with a chain that verifies and a writer that goes on after it.
    let store = TestStore::new(backend);
    let (faulty, engine) = ledger_tests::faulty::faulty_store(&store.dir(), backend);
    let ledger = Ledger::with_engine(engine, Vec::new()).expect("ledger on the faulty engine");
    let doomed = doomed_group(&ledger, &faulty, || faulty.fail_next_commit());
    for (id, result) in &doomed {
        // The frame is durable, so "nothing was written" would be false: the outcome is
        // reported unknown, to be settled by a retry with the same id (done below).
        match result {
            Err(e @ AppendError::OutcomeUnknown { reason }) => assert!(
                reason.contains("injected")
                    && reason.contains("reopen")
                    && e.to_string().contains("retry with the same command id")
                    && !e.to_string().contains("nothing was written"),
                "{id}: {e}"
            ),
            other => panic!("{id}: expected AppendError::OutcomeUnknown, got {other:?}"),
        }
    }
    let mut failed = faulty.failed_batches();
    assert_eq!(failed.len(), 1, "exactly one commit failed");
    failed[0].sort();
    let ids: Vec<String> = doomed.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(failed[0], ids, "the failed commit held every doomed append");
    // Stopped: a later append, even a valid one, is refused and writes nothing.
    let frames_before = ledger_frames(&ledger);
    match ledger.append_blocking(one("later", "s-later", ExpectedVersion::NoStream, &[b"l"])) {
        Err(AppendError::Storage { reason }) => {
            assert!(reason.contains("stopped"), "reason {reason:?}")
        }
        other => panic!("an append after the stop: expected Storage, got {other:?}"),
    }
    assert_eq!(
        ledger_frames(&ledger),
        frames_before,
        "nothing written after the stop"
    );
    // The index never took the group: readers of this handle still see the gate's head.
    assert_eq!(durable_head(&ledger).position, Position(3));
    drop(ledger);
    // The faulty wrapper holds the index engine (and its file lock) too.
    drop(faulty);

    // Reopen on the plain engine: recovery replays the durable frame past the checkpoint.
    let ledger = store.ledger();
    let records = all(&ledger);
    assert_eq!(records.len(), 14, "base 2 + gate 1 + doomed 1 + 5 x 2");
    assert_eq!(summary(&records[..3]), after_gate());
    let mut doomed_rows: Vec<(String, String, u64, Vec<u8>)> = records[3..]
        .iter()
        .map(|r| {
            (
                r.command_id.clone(),
                r.stream.clone(),
                r.version.0,
                r.payload.clone(),
            )
        })
        .collect();
    doomed_rows.sort();
    let mut expected = vec![("doomed0".to_owned(), "s-a".to_owned(), 4, b"d".to_vec())];
    for i in 1..6 {
        expected.push((format!("doomed{i}"), format!("s-d{i}"), 1, b"d".to_vec()));
        expected.push((format!("doomed{i}"), format!("s-d{i}"), 2, b"e".to_vec()));
    }
    expected.sort();
    assert_eq!(
        doomed_rows, expected,
        "every event of the stopped group is kept"
    );
    assert_verifies(&ledger, 14);
    assert_eq!(
        ledger.stream_version("s-later").expect("version"),
        StreamVersion(0)
    );
    // A retry of a doomed id is a duplicate (it was durable), and the writer goes on.
    let retry = ok(
        &ledger,
        one("doomed3", "s-d3", ExpectedVersion::NoStream, &[b"d", b"e"]),
    );
    assert!(retry.duplicate, "retry of a durable command: {retry:?}");
    assert_eq!(
        ok(
            &ledger,
            one("later", "s-later", ExpectedVersion::NoStream, &[b"l"])
        ),
        outcome(15, 1, false)
    );
    assert_verifies(&ledger, 15);
}
