//! The operator command line on a member with a long history: 100,000 payments, 10,000 miles
//! lots and 10,000 coupons, imported through `import` (one member's lines, in file order, which
//! used to go one group commit each and bricked the wallet at its 35,326th payment). Every
//! operator step works on it and says the right thing: `show`, `export`, `check`, `digest`,
//! `reset-credentials --all` (wallet untouched), `rebuild` (same digest), a `redeem_miles` that
//! takes the earliest lot, a refund of the very first payment, and `expire` of the store.

use std::path::Path;

use serde_json::{json, Value};

mod common;
use common::{run_with as run, Run};

/// Payments, lots and coupons of the member.
const PAYMENTS: u64 = 100_000;
const LOTS: u64 = 10_000;
const COUPONS: u64 = 10_000;

fn ok(store: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let r = run(store, args, stdin);
    assert_eq!(
        r.code, 0,
        "{args:?} failed\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    r
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Business time `s` seconds after 2024-01-01T00:00:00Z.
fn t(s: u64) -> String {
    let base = 1_704_067_200u64;
    let secs = base + s;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// The member's history as import lines: registered, opened, funded, then payments with a lot
/// and a coupon every tenth. Lot `k` expires at `t(2_000_000 + (LOTS - k) * 10)`: the last lot
/// earned expires first; even coupons expire at `t(150_000)`, odd ones far later.
fn history() -> Vec<u8> {
    let mut out = Vec::new();
    let mut line = |v: Value| {
        out.extend_from_slice(v.to_string().as_bytes());
        out.push(b'\n');
    };
    line(
        json!({"id":"reg","type":"register","member":"whale","login":"whale@example.jp","at":t(0)}),
    );
    line(json!({"id":"open","type":"open_wallet","member":"whale","at":t(1)}));
    line(json!({"id":"fund","type":"top_up","member":"whale","amount":100_000_000,"at":t(2)}));
    let (mut lot, mut coupon) = (0u64, 0u64);
    for p in 1..=PAYMENTS {
        let at = t(10 + p);
        line(
            json!({"id":format!("p{p:06}"),"type":"pay","member":"whale","amount":100 + p % 50,
                    "merchant":"7-Eleven","at":at}),
        );
        if p % 10 == 0 && lot < LOTS {
            lot += 1;
            line(
                json!({"id":format!("e{lot}"),"type":"earn_miles","member":"whale","miles":10,
                        "expires_at":t(2_000_000 + (LOTS - lot) * 10),"at":at}),
            );
        }
        if p % 10 == 5 && coupon < COUPONS {
            coupon += 1;
            let expires = if coupon % 2 == 0 { 150_000 } else { 3_000_000 };
            line(
                json!({"id":format!("c{coupon}"),"type":"issue_coupon","member":"whale",
                        "coupon":format!("cp{coupon}"),"value":100,"expires_at":t(expires),"at":at}),
            );
        }
    }
    assert_eq!((lot, coupon), (LOTS, COUPONS));
    out
}

// Proves every operator step works on a member with 100,000 payments, 10,000 lots and 10,000
// coupons, with the values SPEC gives: see the module doc.
#[test]
fn every_operator_step_works_on_a_member_with_a_long_history() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let store = tmp.path().join("store");
    let lines = PAYMENTS + LOTS + COUPONS + 3;
    let r = ok(&store, &["import", "-"], Some(&history()));
    assert_eq!(
        r.stdout,
        format!("applied {lines}, duplicate 0, rejected 0\n")
    );

    let paid: u64 = (1..=PAYMENTS).map(|p| 100 + p % 50).sum();
    let shown = json(&ok(&store, &["show", "whale", "--json"], None).stdout);
    assert_eq!(shown["balance"], 100_000_000 - paid);
    assert_eq!(shown["miles"], LOTS * 10);
    assert_eq!(
        shown["coupons"]["active"].as_array().unwrap().len() as u64,
        COUPONS
    );
    let export = ok(&store, &["export"], None).stdout;
    assert_eq!(export.lines().count(), 1);
    assert_eq!(json(export.trim()), shown, "export shows what show shows");

    // The first payment is refundable, however long ago; the earliest-expiring lot is the last
    // one earned (lot 10,000), so a redemption takes it first.
    let more = format!(
        "{}\n{}\n",
        json!({"id":"refund-1","type":"refund","member":"whale","payment":"p000001","amount":101,"at":t(1_999_000)}),
        json!({"id":"redeem-1","type":"redeem_miles","member":"whale","miles":15,"at":t(1_999_000)}),
    );
    let r = ok(&store, &["import", "-"], Some(more.as_bytes()));
    assert_eq!(r.stdout, "applied 2, duplicate 0, rejected 0\n");
    let log = json(
        &ok(
            &store,
            &["log", "--stream", "wallet-whale", "--from", "1", "--json"],
            None,
        )
        .stdout,
    );
    let redeemed = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["command_id"] == "redeem-1")
        .expect("the redemption is in the log")
        .clone();
    assert_eq!(
        redeemed["payload"]["consumed"],
        json!([[10_000, 10], [9_999, 5]]),
        "{redeemed}"
    );

    let check = json(&ok(&store, &["check", "--json"], None).stdout);
    assert_eq!(check["ok"], true, "{check}");
    let digest = ok(&store, &["digest"], None).stdout;

    let reset = json(&ok(&store, &["reset-credentials", "--all", "--json"], None).stdout);
    assert_eq!(reset["ok"], true, "{reset}");
    assert_eq!(
        ok(&store, &["digest"], None).stdout,
        digest,
        "a reset changes no wallet"
    );

    let rebuilt = ok(&store, &["rebuild"], None).stdout;
    assert!(rebuilt.contains(digest.trim()), "{rebuilt}");
    assert_eq!(ok(&store, &["digest"], None).stdout, digest);

    // Coupons with even numbers expire at t(150_000); every lot expires after t(2_000_000).
    let expired = json(&ok(&store, &["expire", "--as-of", &t(150_000), "--json"], None).stdout);
    assert_eq!(expired["events_appended"], COUPONS / 2, "{expired}");
    assert_eq!(expired["due_items_before"], COUPONS / 2, "{expired}");
    let shown = json(&ok(&store, &["show", "whale", "--json"], None).stdout);
    assert_eq!(
        shown["coupons"]["expired"].as_array().unwrap().len() as u64,
        COUPONS / 2
    );
    assert_eq!(shown["balance"], 100_000_000 - paid + 101);
    assert_eq!(shown["miles"], LOTS * 10 - 15);
    let check = json(&ok(&store, &["check", "--json"], None).stdout);
    assert_eq!(check["ok"], true, "{check}");
}
