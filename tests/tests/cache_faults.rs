//! The writer keeps state between group commits (the stream versions it wrote; the projection
//! hook keeps nothing, it reads the rows a command touches). This test proves that a failed
//! group commit cannot leave the writer or the views ahead of the store: faults hit at random
//! points in a stream of commands that keep touching the same few members, and after every
//! failure and at the end the stored views and digest equal a fresh fold of the log.
//!
//! Four faults, in turn, with the outcomes of storage format 2:
//! - before the frame (the group's snapshot fails): the command fails, its error says nothing
//!   was written, it is not applied, the writer goes on, and a retry applies it once;
//! - after the frame, the index commit fails without writing: the command fails, its error
//!   says the outcome is unknown (not "nothing was written") and the writer stops (every later
//!   command fails too); after reopening the command *is* applied, since its frame was durable;
//! - after the frame, the index commit is *written but reported failed* (the engine commits
//!   the batch durably, then returns an error): the same as the one before, seen from the
//!   writer; the store now holds the frame and its index entries;
//! - the frame's fdatasync fails after its write (the log's own "written but reported failed"):
//!   the same error and stop; after reopening the frame is whole or absent.
//!
//! In the three cases after the frame a retry with the same command id, after reopening,
//! settles it: answered as a duplicate when it was applied (never applied twice), applied once
//! when it was not. Every acknowledged command is applied either way.
//!
//! Planted defects this test caught (each run, seen failing, reverted): the failed commit's
//! error saying "nothing was written" (the wording before issue 13); a writer that treats a
//! failed index commit after its frame as "nothing written" and goes on instead of stopping;
//! a planner that ignores the command index (the retry is applied a second time).

use std::sync::Arc;

use ledger::{Backend, CommitHook};
use ledger_tests::faulty::faulty_store_with;
use ledger_tests::wallet::{assert_not_applied, audit, command, splitmix64};
use ledger_tests::{FaultyEngine, TestStore};
use projections::{ProjectionHook, SubmitError, WalletService};
use serde_json::json;

/// Members the commands keep coming back to, so the caches are hit on most commands.
const MEMBERS: u64 = 4;
/// Commands submitted after the wallets are opened and funded.
const COMMANDS: u64 = 400;
/// One command in this many meets a fault (the faults take turns, see [`FAULTS`]).
const FAIL_ONE_IN: u64 = 10;

/// The wallet service on a store whose index engine is faulty (reopening replays any log tail
/// through the projection hook first).
fn open(store: &TestStore, backend: Backend) -> (Arc<FaultyEngine>, WalletService) {
    let hooks: Vec<Arc<dyn CommitHook>> = vec![Arc::new(ProjectionHook)];
    let (faulty, engine) = faulty_store_with(&store.dir(), backend, &hooks);
    let service = WalletService::with_engine(engine, Vec::new()).expect("open service");
    (faulty, service)
}

#[test]
fn failed_commits_leave_views_digest_and_versions_equal_to_a_fresh_fold() {
    for backend in ledger_tests::backends() {
        run(backend);
    }
}

/// The fault a command meets, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// The group's snapshot fails: nothing of the group is written.
    Snapshot,
    /// The index commit after the durable frame fails without writing.
    IndexCommit,
    /// The index commit after the durable frame is written, synced, then reported failed.
    IndexWrittenButFailed,
    /// The frame is written, its fdatasync reported failed.
    FrameSync,
}

/// The faults in the order they take turns.
const FAULTS: [Fault; 4] = [
    Fault::Snapshot,
    Fault::IndexCommit,
    Fault::IndexWrittenButFailed,
    Fault::FrameSync,
];

/// The events the log holds under command id `id`.
fn events_of(service: &WalletService, id: &str) -> u64 {
    service
        .ledger()
        .read_all(ledger::Position(1), usize::MAX)
        .expect("read the log")
        .iter()
        .filter(|r| r.command_id == id)
        .count() as u64
}

fn run(backend: Backend) {
    let store = TestStore::new(backend);
    let (mut faulty, mut service) = open(&store, backend);
    let name = |i: u64| format!("m{i}");
    for i in 0..MEMBERS {
        for cmd in [
            json!({"id": format!("open-{i}"), "type": "open_wallet", "member": name(i)}),
            json!({"id": format!("fund-{i}"), "type": "top_up", "member": name(i),
                   "amount": 1_000_000, "at": "2019-07-01T00:00:00Z"}),
        ] {
            service
                .submit_blocking(&command(cmd))
                .expect("set-up is valid");
        }
    }
    let mut seed = 0x5eed_cafe_u64;
    let (mut acknowledged, mut failed) = (0u32, 0u32);
    let mut met = [0u32; FAULTS.len()];
    // After-frame faults whose frame was found in the log after reopening (so the retry was a
    // duplicate), and those whose frame was not (so the retry applied it).
    let (mut settled_as_duplicate, mut settled_by_applying) = (0u32, 0u32);
    for n in 0..COMMANDS {
        let fail = splitmix64(&mut seed) % FAIL_ONE_IN == 0;
        let from = splitmix64(&mut seed) % MEMBERS;
        let to = (from + 1 + splitmix64(&mut seed) % (MEMBERS - 1)) % MEMBERS;
        let amount = 1 + splitmix64(&mut seed) % 500;
        let id = format!("c{n}");
        let body = match n % 3 {
            0 => json!({"id": id, "type": "pay", "member": name(from), "amount": amount,
                        "merchant": "shop", "at": "2019-07-02T00:00:00Z"}),
            1 => json!({"id": id, "type": "transfer", "from": name(from), "to": name(to),
                        "amount": amount, "at": "2019-07-02T00:00:00Z"}),
            _ => json!({"id": id, "type": "top_up", "member": name(to), "amount": amount,
                        "at": "2019-07-02T00:00:00Z"}),
        };
        let fault = fail.then(|| FAULTS[failed as usize % FAULTS.len()]);
        match fault {
            None => {}
            Some(Fault::Snapshot) => faulty.fail_next_snapshot(),
            Some(Fault::IndexCommit) => faulty.fail_next_commit(),
            Some(Fault::IndexWrittenButFailed) => faulty.commit_then_fail_next(),
            Some(Fault::FrameSync) => service.ledger().engine().log().fail_next_sync(),
        }
        let result = service.submit_blocking(&command(body.clone()));
        let Some(fault) = fault else {
            match result {
                Ok(_) => acknowledged += 1,
                Err(e) => panic!("{backend:?}: command {id} failed without a fault: {e}"),
            }
            continue;
        };
        failed += 1;
        met[FAULTS
            .iter()
            .position(|f| *f == fault)
            .expect("a listed fault")] += 1;
        let message = match &result {
            Err(SubmitError::Ledger(e)) => e.to_string(),
            other => panic!("{backend:?}: command {id} met {fault:?}, yet: {other:?}"),
        };
        if fault == Fault::Snapshot {
            assert!(
                message.contains("nothing was written"),
                "{backend:?}: {id} failed before its frame, the error should say nothing was \
                 written: {message}"
            );
            let snap = service.ledger().snapshot().expect("snapshot");
            assert_not_applied(&*snap, &id);
            audit(&*snap, true, &format!("{backend:?} after failed {id}"));
            drop(snap);
            // The writer went on: the retry applies the command, once.
            let retry = service
                .submit_blocking(&command(body))
                .unwrap_or_else(|e| panic!("{backend:?}: retry of {id}: {e}"));
            assert!(!retry.duplicate, "{backend:?}: {id} was not applied before");
            assert_eq!(
                events_of(&service, &id),
                u64::from(retry.outcome.count),
                "{backend:?}: {id}'s events after its retry"
            );
            continue;
        }
        // After the frame: nobody can say whether the group is in the log.
        assert!(
            message.contains("unknown") && !message.contains("nothing was written"),
            "{backend:?}: {id} met {fault:?} after its frame was handed to the log; the error \
             must say the outcome is unknown, not that nothing was written: {message}"
        );
        // The writer stopped: a later command fails as well, and applies nothing.
        let probe = format!("{id}-probe");
        let later = service.submit_blocking(&command(json!({"id": probe,
            "type": "top_up", "member": name(0), "amount": 1,
            "at": "2019-07-02T00:00:00Z"})));
        assert!(
            matches!(&later, Err(SubmitError::Ledger(e)) if e.to_string().contains("stopped")),
            "{backend:?}: a command after the stop at {id} ({fault:?}): {later:?}"
        );
        drop(service);
        drop(faulty);
        (faulty, service) = open(&store, backend);
        let snap = service.ledger().snapshot().expect("snapshot");
        let entry = ledger::log::command_entry(&*snap, &id).expect("commands index");
        if fault != Fault::FrameSync {
            // The frame was synced before the index commit was tried.
            assert!(
                entry.is_some(),
                "{backend:?}: {id}'s frame was durable ({fault:?}), the reopened store lacks it"
            );
        }
        assert_not_applied(&*snap, &probe);
        audit(&*snap, true, &format!("{backend:?} reopened after {id}"));
        drop(snap);
        // The retry with the same id settles it: a duplicate if it was applied, else applied now.
        let head = service.ledger().head();
        let retry = service
            .submit_blocking(&command(body))
            .unwrap_or_else(|e| panic!("{backend:?}: retry of {id} after {fault:?}: {e}"));
        match entry {
            Some(entry) => {
                settled_as_duplicate += 1;
                assert!(
                    retry.duplicate,
                    "{backend:?}: {id} was in the log after {fault:?}, its retry applied it again"
                );
                assert_eq!(
                    (retry.outcome.first_position, retry.outcome.count),
                    (entry.first_position, entry.count),
                    "{backend:?}: the retry of {id} names other events than the stored ones"
                );
                assert_eq!(
                    service.ledger().head(),
                    head,
                    "{backend:?}: a duplicate retry of {id} moved the head"
                );
            }
            None => {
                settled_by_applying += 1;
                assert!(
                    !retry.duplicate,
                    "{backend:?}: {id} is not in the log, its retry must apply it"
                );
            }
        }
        assert_eq!(
            events_of(&service, &id),
            u64::from(retry.outcome.count),
            "{backend:?}: {id} applied other than exactly once after {fault:?} and a retry"
        );
        audit(
            &*service.ledger().snapshot().expect("snapshot"),
            true,
            &format!("{backend:?} after the retry of {id}"),
        );
    }
    for (fault, times) in FAULTS.iter().zip(met) {
        assert!(
            times >= 5,
            "{backend:?}: {fault:?} met only {times} commands"
        );
    }
    eprintln!(
        "{backend:?}: {acknowledged} acknowledged, {failed} failed ({met:?} per fault); after \
         the frame {settled_as_duplicate} retries were duplicates, {settled_by_applying} applied"
    );
    assert_eq!(acknowledged + failed, COMMANDS as u32);
    let snap = service.ledger().snapshot().expect("snapshot");
    let audited = audit(&*snap, true, &format!("{backend:?} at the end"));
    // Money is conserved: the balances are the log's top-ups and refunds minus its payments.
    let t = &audited.totals;
    assert_eq!(
        t.transfers_out, t.transfers_in,
        "{backend:?}: transfers do not net to zero"
    );
    assert_eq!(
        t.top_ups + t.refunds - t.payments,
        audited
            .states
            .values()
            .map(|s| u128::from(s.balance().0))
            .sum::<u128>(),
        "{backend:?}: balances differ from the log's totals"
    );
}
