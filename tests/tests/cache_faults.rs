//! The writer keeps state between group commits (the stream versions it wrote; the projection
//! hook keeps nothing, it reads the rows a command touches). This test proves that a failed
//! group commit cannot leave the writer or the views ahead of the store: faults hit at random
//! points in a stream of commands that keep touching the same few members, and after every
//! failure and at the end the stored views and digest equal a fresh fold of the log.
//!
//! Two faults, with the two outcomes of storage format 2:
//! - before the frame (the group's snapshot fails): the command fails, is not applied, and the
//!   writer goes on;
//! - after the frame (the index commit fails): the command fails and the writer stops (every
//!   later command fails too); after reopening, the command *is* applied, since its frame was
//!   durable, and the views replayed from the log equal a fresh fold.
//!
//! Every acknowledged command is applied either way.

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
/// One command in this many meets a fault (every other fault is after the frame).
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
    let (mut acknowledged, mut failed, mut stops) = (0u32, 0u32, 0u32);
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
        // Alternate: odd faults before the frame, even ones after it.
        let after_frame = fail && failed % 2 == 1;
        if fail && after_frame {
            faulty.fail_next_commit();
        } else if fail {
            faulty.fail_next_snapshot();
        }
        match service.submit_blocking(&command(body)) {
            Ok(_) => {
                assert!(
                    !fail,
                    "{backend:?}: command {id} was acknowledged by a failed commit"
                );
                acknowledged += 1;
            }
            Err(SubmitError::Ledger(e)) => {
                assert!(
                    fail,
                    "{backend:?}: command {id} failed without a fault: {e}"
                );
                failed += 1;
                if after_frame {
                    // The writer stopped: a later command fails as well, and applies nothing.
                    let probe = format!("{id}-probe");
                    let later = service.submit_blocking(&command(json!({"id": probe,
                        "type": "top_up", "member": name(0), "amount": 1,
                        "at": "2019-07-02T00:00:00Z"})));
                    assert!(
                        matches!(&later, Err(SubmitError::Ledger(e)) if e.to_string().contains("stopped")),
                        "{backend:?}: a command after the stop at {id}: {later:?}"
                    );
                    drop(service);
                    drop(faulty);
                    (faulty, service) = open(&store, backend);
                    stops += 1;
                    let snap = service.ledger().snapshot().expect("snapshot");
                    assert!(
                        ledger::log::command_entry(&*snap, &id)
                            .expect("commands index")
                            .is_some(),
                        "{backend:?}: {id}'s frame was durable, the reopened store lacks it"
                    );
                    assert_not_applied(&*snap, &probe);
                    audit(&*snap, true, &format!("{backend:?} reopened after {id}"));
                } else {
                    let snap = service.ledger().snapshot().expect("snapshot");
                    assert_not_applied(&*snap, &id);
                    audit(&*snap, true, &format!("{backend:?} after failed {id}"));
                }
            }
            Err(other) => panic!("{backend:?}: command {id}: unexpected error {other}"),
        }
    }
    assert!(failed > 10, "{backend:?}: only {failed} commits failed");
    assert!(
        stops > 5,
        "{backend:?}: only {stops} faults after the frame"
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
