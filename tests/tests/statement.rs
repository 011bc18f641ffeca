//! The statement: every wallet event of a member in stream order with the change of the balance
//! and the balance after it, its position and its command id, read as a stream (the balance is
//! carried from line to line; no wallet state is built, so a long history costs no memory).
//! Asserted line by line against a hand-computed statement, and its last balance against the
//! stored wallet.

use ledger::Backend;
use ledger_tests::wallet::{at_secs, command, member, open_service};
use ledger_tests::TestStore;
use serde_json::json;

// Proves each money event moves the running balance by its amount (in: top-up, refund,
// transfer in; out: pay, transfer out), the other wallet events show a zero change, identity
// events and other members' events are not listed, and the last balance is the wallet's.
#[test]
fn statement_lists_every_wallet_event_with_its_change_and_running_balance() {
    let store = TestStore::new(Backend::Redb);
    let service = open_service(&store.dir(), Backend::Redb);
    let t = |s: i64| at_secs(s).to_rfc3339();
    let cmds = [
        json!({"id":"r1","type":"register","member":"m1","login":"m1@example.jp","at":t(0)}),
        json!({"id":"o1","type":"open_wallet","member":"m1","at":t(1)}),
        json!({"id":"o2","type":"open_wallet","member":"m2","at":t(2)}),
        json!({"id":"u1","type":"top_up","member":"m1","amount":5000,"at":t(3)}),
        json!({"id":"p1","type":"pay","member":"m1","amount":700,"merchant":"7-Eleven","at":t(4)}),
        json!({"id":"f1","type":"refund","member":"m1","payment":"p1","amount":200,"at":t(5)}),
        json!({"id":"x1","type":"transfer","from":"m1","to":"m2","amount":1000,"at":t(6)}),
        json!({"id":"u2","type":"top_up","member":"m2","amount":300,"at":t(7)}),
        json!({"id":"x2","type":"transfer","from":"m2","to":"m1","amount":250,"at":t(8)}),
        json!({"id":"e1","type":"earn_miles","member":"m1","miles":40,"expires_at":t(100),"at":t(9)}),
        json!({"id":"c1","type":"change_password","member":"m1","at":t(10)}),
        json!({"id":"b1","type":"award_badge","member":"m1","badge":"commuter","at":t(11)}),
    ];
    for c in cmds {
        service
            .submit_blocking(&command(c.clone()))
            .unwrap_or_else(|e| panic!("{c} failed: {e}"));
    }
    let lines = service.statement(&member("m1")).expect("the statement");
    let got: Vec<(&str, &str, i128, u64)> = lines
        .iter()
        .map(|l| {
            (
                l.event_type.as_str(),
                l.command_id.as_str(),
                l.delta_yen,
                l.balance_yen,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("wallet.opened", "o1", 0, 0),
            ("wallet.topped_up", "u1", 5000, 5000),
            ("wallet.paid", "p1", -700, 4300),
            ("wallet.refunded", "f1", 200, 4500),
            ("wallet.transferred_out", "x1", -1000, 3500),
            ("wallet.transferred_in", "x2", 250, 3750),
            ("wallet.miles_earned", "e1", 0, 3750),
            ("wallet.badge_awarded", "b1", 0, 3750),
        ]
    );
    assert!(
        lines.windows(2).all(|w| w[0].position < w[1].position),
        "positions increase"
    );
    assert_eq!(lines[2].at, at_secs(4), "business time of the payment");
    let wallet = service.wallet(&member("m1")).unwrap().unwrap();
    assert_eq!(lines.last().unwrap().balance_yen, wallet.balance().0);
    assert!(
        service.statement(&member("nobody")).unwrap().is_empty(),
        "a member without a wallet has an empty statement"
    );
}
