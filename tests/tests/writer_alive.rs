//! `Ledger::stats().writer_alive` turns false when the writer stops after a failed frame sync:
//! what walletd's `/readyz` reports, so an orchestrator stops sending traffic to a service whose
//! store must be reopened. The failed `fdatasync` is injected (`fail_next_sync`, feature
//! `fault-injection`), exactly as `cache_faults.rs` does.

use ledger::domain::Command;
use ledger::AppendError;
use projections::{SubmitError, WalletService};

fn top_up(id: &str) -> Command {
    Command::parse_json_line(&format!(
        r#"{{"id":"{id}","type":"top_up","member":"m1","amount":100}}"#
    ))
    .expect("a top_up line parses")
}

/// Proves the writer reports itself alive while it commits and not alive once a frame's sync
/// failed (the writer stops; every later command is refused), and that the failed group counts
/// as a group but not as durable events. Planted defects it caught: not clearing `alive` when
/// the writer stops (`writer_alive` stayed true); clearing it only after the failed group's
/// callers were answered (the caller's read of `stats` raced the writer: 5 failures in 6 runs).
#[test]
fn writer_alive_turns_false_after_a_failed_frame_sync() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = WalletService::open(dir.path(), ledger::LedgerOptions::default())
        .expect("the service opens a fresh store");
    let open = Command::parse_json_line(r#"{"id":"o1","type":"open_wallet","member":"m1"}"#)
        .expect("an open_wallet line parses");
    service.submit_blocking(&open).expect("the wallet opens");
    service
        .submit_blocking(&top_up("t1"))
        .expect("the top-up applies");
    let before = service.ledger().stats();
    assert!(before.writer_alive);
    assert_eq!((before.groups, before.commands), (2, 2));

    service.ledger().engine().log().fail_next_sync();
    match service.submit_blocking(&top_up("t2")) {
        Err(SubmitError::Ledger(AppendError::OutcomeUnknown { .. })) => {}
        other => panic!("a failed frame sync must leave the outcome unknown, got {other:?}"),
    }
    let after = service.ledger().stats();
    assert!(!after.writer_alive, "the writer stopped: {after:?}");
    assert_eq!((after.groups, after.commands), (3, 3));
    assert_eq!(
        after.events, before.events,
        "nothing of the failed group is durable"
    );

    // The stopped writer refuses everything after, and stays not alive.
    assert!(service.submit_blocking(&top_up("t3")).is_err());
    assert!(!service.ledger().stats().writer_alive);
}
