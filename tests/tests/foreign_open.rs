//! A `wallet.opened` naming another member than its stream's (`wallet-m1` opened for `m2`): only a
//! damaged log or a raw append can hold one (`decide` never writes it). Both folds must refuse it
//! the same way, or rebuild would file the wallet under `m2` while the incremental views keep it
//! under `m1`: the commit hook refuses the append (nothing written), and a log that holds one
//! (written without the hook) cannot be folded by `fold_log`, `fold_member` or rebuild, each
//! naming the position.

use ledger::domain::{DomainEvent, WalletEvent, WalletOpened};
use ledger::{AppendError, Backend, ExpectedVersion, Timestamp};
use ledger_tests::fixture::{append_request, stream_append};
use ledger_tests::wallet::{member, open_service};
use ledger_tests::TestStore;
use projections::fold::{fold_log, fold_member, AsOf, FoldOptions};

fn foreign_open() -> ledger::NewEvent {
    DomainEvent::Wallet(WalletEvent::WalletOpened(WalletOpened {
        member: member("m2"),
    }))
    .to_new_event(Timestamp(1_704_067_200_000_000))
    .expect("a wallet.opened encodes")
}

// Proves the commit hook refuses the append with a message naming the member and the stream, and
// writes nothing.
#[test]
fn the_hook_refuses_a_wallet_opened_in_another_members_stream() {
    let store = TestStore::new(Backend::Redb);
    let service = open_service(&store.dir(), Backend::Redb);
    let request = append_request(
        "foreign-open",
        vec![stream_append(
            "wallet-m1",
            ExpectedVersion::Any,
            vec![foreign_open()],
        )],
    );
    match service.ledger().append_blocking(request) {
        Err(e @ AppendError::Hook(_)) => assert!(
            e.to_string()
                .contains("wallet.opened of member m2 in stream wallet-m1"),
            "{e}"
        ),
        other => panic!("expected the hook to refuse it, got {other:?}"),
    }
    assert_eq!(service.ledger().head().position.0, 0, "nothing was written");
}

// Proves a log that holds one (appended with no hook) cannot be folded: fold_log, fold_member and
// the rebuild that opening a wallet service runs all refuse it at its position.
#[test]
fn a_log_holding_one_cannot_be_folded_by_any_fold() {
    let store = TestStore::new(Backend::Redb);
    {
        let raw = store.ledger();
        raw.append_blocking(append_request(
            "foreign-open",
            vec![stream_append(
                "wallet-m1",
                ExpectedVersion::Any,
                vec![foreign_open()],
            )],
        ))
        .expect("a ledger without hooks appends anything valid");
    }
    let engine = store.engine();
    let snap = engine.snapshot().expect("a snapshot");
    let mut progress = |_| {};
    let mut sink = |_| Ok(());
    let err = fold_log(
        &*snap,
        FoldOptions::new(AsOf::Head, &mut progress),
        &mut sink,
    )
    .expect_err("fold_log refuses it");
    assert_eq!(
        err.to_string(),
        "event at position 1 cannot be folded: wallet.opened of member m2 in stream wallet-m1"
    );
    let err = fold_member(&*snap, &member("m1"), AsOf::Head).expect_err("fold_member refuses it");
    assert!(
        err.to_string()
            .contains("wallet.opened of member m2 in stream wallet-m1"),
        "{err}"
    );
    drop(snap);
    drop(engine);
    let opened = projections::WalletService::open(&store.dir(), ledger::LedgerOptions::default());
    let err = opened.err().expect("the rebuild at open refuses it");
    assert!(
        err.to_string()
            .contains("wallet.opened of member m2 in stream wallet-m1"),
        "{err}"
    );
}
