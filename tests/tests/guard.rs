//! The rollback guard of gated bulk operations (`ledger::store::Guard`): a gate that refuses,
//! a dry run, and a process that dies mid-operation all leave the store exactly as it was.

use std::sync::Arc;

use ledger::store::{self, Backend, Create, Guard};
use ledger::verify::verify;
use ledger::{Engine, ExpectedVersion, Head, Ledger};
use ledger_tests::{append_request, new_event, stream_append, TestStore};

fn append_n(ledger: &Ledger, prefix: &str, n: usize) {
    for i in 0..n {
        let req = append_request(
            &format!("{prefix}-{i}"),
            vec![stream_append(
                &format!("s-{}", i % 3),
                ExpectedVersion::Any,
                vec![new_event("test.e", format!("{prefix}{i}").as_bytes(), 0)],
            )],
        );
        ledger
            .append_blocking(req)
            .expect("append to a healthy test ledger");
    }
}

fn head_of(dir: &std::path::Path) -> Head {
    let engine = store::open_engine(dir, Create::No, Backend::Redb).expect("store reopens");
    let snap = engine.snapshot().expect("snapshot");
    let report = verify(&*snap, &mut |_| {}).expect("verify runs");
    assert_eq!(report.failure, None, "the log must verify after the guard");
    report.head
}

#[test]
fn roll_back_restores_the_exact_head_and_keep_keeps_the_work() {
    // Proves: everything appended under a guard disappears on roll_back (same head hash),
    // and stays on keep.
    let store = TestStore::new(Backend::Redb);
    let engine = store.engine();
    let ledger = Ledger::with_engine(Arc::clone(&engine), Vec::new()).expect("ledger starts");
    append_n(&ledger, "before", 10);
    drop(ledger);
    drop(engine);
    let before = head_of(&store.dir());

    let engine = store.engine();
    let guard = Guard::begin(&engine)
        .expect("guard")
        .expect("redb has rollback points");
    let ledger = Ledger::with_engine(Arc::clone(&engine), Vec::new()).expect("ledger starts");
    append_n(&ledger, "under-guard", 25);
    drop(ledger);
    guard.roll_back().expect("roll back");
    assert!(engine.rollback_points().expect("list").is_empty());
    drop(engine);
    assert_eq!(head_of(&store.dir()), before);

    let engine = store.engine();
    let guard = Guard::begin(&engine)
        .expect("guard")
        .expect("redb has rollback points");
    let ledger = Ledger::with_engine(Arc::clone(&engine), Vec::new()).expect("ledger starts");
    append_n(&ledger, "kept", 5);
    drop(ledger);
    guard.keep().expect("keep");
    drop(engine);
    assert_eq!(head_of(&store.dir()).position.0, before.position.0 + 5);
}

#[test]
fn an_unfinished_guard_is_rolled_back_by_the_next_open() {
    // Proves: a process that dies between Guard::begin and keep/roll_back (the guard is simply
    // never resolved, as after kill -9) leaves a marker that the next open rolls back.
    let store = TestStore::new(Backend::Redb);
    let ledger = store.ledger();
    append_n(&ledger, "before", 7);
    drop(ledger);
    let before = head_of(&store.dir());

    let engine = store.engine();
    let guard = Guard::begin(&engine)
        .expect("guard")
        .expect("redb has rollback points");
    let ledger = Ledger::with_engine(Arc::clone(&engine), Vec::new()).expect("ledger starts");
    append_n(&ledger, "lost", 40);
    drop(ledger);
    guard.abandon();
    drop(engine);

    assert_eq!(head_of(&store.dir()), before);
    let engine = store.engine();
    assert!(engine.rollback_points().expect("list").is_empty());
    assert_eq!(
        engine
            .snapshot()
            .expect("snapshot")
            .get(ledger::log::tables::META, store::META_GUARD)
            .expect("read meta"),
        None,
        "the marker is cleared after recovery"
    );
}
