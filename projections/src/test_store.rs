//! Test-only stores for the unit tests of `check` and `gate`: small, built through the real
//! wallet service, so the views are exactly what the hook writes.

use std::path::Path;
use std::sync::Arc;

use ledger::domain::Command;
use ledger::{Backend, Create};

use crate::WalletService;

/// The commands of `migrate-tool/tests/data/setup.jsonl`: m1 with a top-up, a payment, miles, a
/// badge and a redeemed coupon; m2 with an empty wallet; m1 registered (an identity event).
pub const SETUP: [&str; 9] = [
    r#"{"id":"s1","type":"open_wallet","member":"m1","at":"2019-07-01T10:00:00+09:00"}"#,
    r#"{"id":"s2","type":"top_up","member":"m1","amount":5000,"at":"2019-07-01T10:01:00+09:00"}"#,
    r#"{"id":"s3","type":"pay","member":"m1","amount":700,"merchant":"7-Eleven Shinjuku","at":"2019-07-01T10:02:00+09:00"}"#,
    r#"{"id":"s4","type":"earn_miles","member":"m1","miles":100,"expires_at":"2019-08-01T00:00:00+09:00","at":"2019-07-01T10:03:00+09:00"}"#,
    r#"{"id":"s5","type":"award_badge","member":"m1","badge":"first-purchase","at":"2019-07-01T10:04:00+09:00"}"#,
    r#"{"id":"s6","type":"issue_coupon","member":"m1","coupon":"cp-1","value":100,"expires_at":"2019-07-10T00:00:00+09:00","at":"2019-07-01T10:05:00+09:00"}"#,
    r#"{"id":"s7","type":"redeem_coupon","member":"m1","coupon":"cp-1","at":"2019-07-02T10:00:00+09:00"}"#,
    r#"{"id":"s8","type":"open_wallet","member":"m2","at":"2019-07-01T11:00:00+09:00"}"#,
    r#"{"id":"s9","type":"register","member":"m1","login":"m1@example.jp","at":"2019-07-01T09:00:00+09:00"}"#,
];

/// An identity command on [`SETUP`]'s store: m1 is registered, so it appends one event.
pub const RESET_M1: &str = r#"{"id":"r1","type":"reset_password","member":"m1"}"#;

/// A wallet command on [`SETUP`]'s store: credits m2 five yen.
pub const TOP_UP_M2: &str = r#"{"id":"t9","type":"top_up","member":"m2","amount":5}"#;

/// Opens (creating) a redb store in `dir` and submits `lines` through the wallet service; the
/// service is stopped before returning, so the engine has no writer.
pub fn store_with(dir: &Path, lines: &[&str]) -> Arc<ledger::Store> {
    let engine = crate::open_store(dir, Create::IfMissing, Backend::Redb)
        .expect("a fresh temp dir opens as a store");
    let service = WalletService::with_engine(Arc::clone(&engine), Vec::new())
        .expect("the service starts on a fresh store");
    for line in lines {
        let cmd = Command::parse_json_line(line).expect("test commands parse");
        service
            .submit_blocking(&cmd)
            .unwrap_or_else(|e| panic!("test command {line} is applied: {e}"));
    }
    drop(service);
    engine
}

/// [`store_with`] the [`SETUP`] commands.
pub fn setup(dir: &Path) -> Arc<ledger::Store> {
    store_with(dir, &SETUP)
}
