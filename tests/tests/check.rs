//! The library's `check` (SPEC section 4, `projections::check`, run by `WalletService::check`)
//! against the independent audit of `ledger_tests::wallet::audit`, which re-derives the same
//! invariants its own way (whole maps in memory, one lookup per member):
//!
//! - on stores built from random commands of every SPEC section 2 type (many of them rejected
//!   by a rule), at several points of the sequence, the two agree: the audit passes and the
//!   check holds every invariant, with the same head, digest and member count; the two-thread
//!   `check_engine` gives the same report as the service's one-snapshot check;
//! - a damaged wallet row planted in one random member (its value changed behind the hook's
//!   back) fails `views-match-log`, the detail names exactly that member, the other invariants
//!   still hold, and the audit fails too.
//!
//! Every backend of the build (sled with the `sled` feature). Seeds come from `CHECK_SEED` (else
//! the clock) and are printed, so a failure can be replayed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use ledger::{Backend, Create, Engine, WriteBatch};
use ledger_tests::wallet::{at_secs, audit, command, seed_from_env, splitmix64, stored_views};
use ledger_tests::{backends, TestStore};
use projections::check::{self, no_progress, CheckReport, VIEWS_MATCH_LOG};
use projections::views::{self, tables};
use projections::{SubmitError, WalletService};
use serde_json::{json, Value};

/// Members that may get a wallet.
const MEMBERS: u64 = 8;
/// Commands per store, and how often the two are compared along the way.
const COMMANDS: u64 = 240;
const COMPARE_EVERY: u64 = 60;
/// Stores (seeds) per run.
const STORES: u64 = 4;

/// A deterministic random source for one store.
struct Dice(u64);

impl Dice {
    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        splitmix64(&mut self.0) % n
    }

    fn member(&mut self) -> String {
        format!("m{}", self.below(MEMBERS))
    }
}

/// Command `i` of a random sequence: every SPEC section 2 type, with amounts and references
/// chosen so that some are applied and some broken rules are rejected. Business time advances a
/// minute per command; expiries fall before and after it.
fn random_command(dice: &mut Dice, i: u64) -> Value {
    let id = format!("c{i}");
    let at = at_secs(i as i64 * 60);
    let later = |dice: &mut Dice| at_secs((i as i64 + dice.below(40) as i64 - 10) * 60);
    let m = dice.member();
    let mut cmd = match dice.below(15) {
        0 | 1 => json!({"type": "open_wallet", "member": m}),
        2 | 3 => json!({"type": "top_up", "member": m, "amount": 1 + dice.below(5_000)}),
        4 | 5 => {
            json!({"type": "pay", "member": m, "amount": 1 + dice.below(3_000), "merchant": "Loft"})
        }
        6 => json!({"type": "refund", "member": m, "payment": format!("c{}", dice.below(i.max(1))),
                     "amount": 1 + dice.below(500)}),
        7 => json!({"type": "transfer", "from": m, "to": dice.member(),
                    "amount": 1 + dice.below(2_000)}),
        8 => json!({"type": "earn_miles", "member": m, "miles": 1 + dice.below(300),
                    "expires_at": later(dice).to_rfc3339()}),
        9 => json!({"type": "redeem_miles", "member": m, "miles": 1 + dice.below(200)}),
        10 => json!({"type": "award_badge", "member": m, "badge": format!("b{}", dice.below(3))}),
        11 => json!({"type": "issue_coupon", "member": m, "coupon": format!("cp{}", dice.below(6)),
                     "value": dice.below(1_000), "expires_at": later(dice).to_rfc3339()}),
        12 => {
            json!({"type": "redeem_coupon", "member": m, "coupon": format!("cp{}", dice.below(6))})
        }
        13 => match dice.below(3) {
            0 => json!({"type": "expire", "as_of": at.to_rfc3339()}),
            _ => json!({"type": "expire", "as_of": at.to_rfc3339(), "member": m}),
        },
        _ => match dice.below(3) {
            0 => json!({"type": "register", "member": m, "login": format!("{m}@example.jp")}),
            1 => json!({"type": "change_password", "member": m}),
            _ => json!({"type": "reset_password", "member": m, "reason": "drill"}),
        },
    };
    cmd["id"] = json!(id);
    cmd["at"] = json!(at.to_rfc3339());
    cmd
}

/// Opens a wallet service on `store` and keeps its engine, for planting damage.
fn open(store: &TestStore) -> (WalletService, Arc<dyn Engine>) {
    let engine = projections::open_store(&store.dir(), Create::IfMissing, store.backend)
        .expect("a fresh temp store opens");
    let service = WalletService::with_engine(Arc::clone(&engine), Vec::new())
        .expect("the wallet service starts");
    (service, engine)
}

/// Submits commands `from..to` of the random sequence and returns how many were applied; a
/// rule's rejection is expected, any other error is not.
fn submit(service: &WalletService, dice: &mut Dice, from: u64, to: u64) -> u64 {
    let mut applied = 0;
    for i in from..to {
        let value = random_command(dice, i);
        match service.submit_blocking(&command(value.clone())) {
            Ok(_) => applied += 1,
            Err(SubmitError::Rejected(_)) => {}
            Err(e) => panic!("command {value} failed: {e}"),
        }
    }
    applied
}

/// The service's check, asserted to agree with the audit of the same moment.
fn compare_with_audit(service: &WalletService, context: &str) -> CheckReport {
    let report = service.check(&no_progress).expect("the store reads");
    let snap = service.ledger().snapshot().expect("a snapshot");
    let audited = audit(&*snap, true, context);
    assert!(
        report.ok(),
        "{context}: the audit passes, the check does not: {report:?}"
    );
    assert_eq!(report.head, audited.head, "{context}: head");
    assert_eq!(Some(report.digest), audited.digest, "{context}: digest");
    assert_eq!(
        report.members,
        audited.states.len() as u64,
        "{context}: members with a wallet"
    );
    report
}

#[test]
fn the_library_check_agrees_with_the_audit_on_random_stores() {
    for backend in backends() {
        agrees_with_the_audit(backend);
    }
}

#[test]
fn a_damaged_row_is_named_by_the_library_check() {
    for backend in backends() {
        damaged_row_is_named(backend);
    }
}

fn agrees_with_the_audit(backend: Backend) {
    let base = seed_from_env("CHECK_SEED");
    for n in 0..STORES {
        let seed = base.wrapping_add(n);
        println!("store {n}: CHECK_SEED={seed} ({backend:?})");
        let store = TestStore::new(backend);
        let (service, engine) = open(&store);
        let mut dice = Dice(seed);
        let mut last = None;
        let mut applied = 0;
        for from in (0..COMMANDS).step_by(COMPARE_EVERY as usize) {
            applied += submit(&service, &mut dice, from, from + COMPARE_EVERY);
            let context = format!("seed {seed}, after {} commands", from + COMPARE_EVERY);
            last = Some(compare_with_audit(&service, &context));
        }
        let last = last.expect("at least one comparison");
        println!(
            "  {applied} of {COMMANDS} commands applied, {} wallets",
            last.members
        );
        // The stores must hold real activity, or agreeing proves little.
        assert!(
            applied >= COMMANDS / 5 && last.members >= MEMBERS / 2,
            "seed {seed}: only {applied} commands applied, {} wallets",
            last.members
        );
        drop(service);
        // No writer now: the two-thread check sees the same store and reports the same.
        let snap = engine.snapshot().expect("a snapshot");
        let threaded = check::check_engine(&*engine, &*snap, &no_progress).expect("reads");
        assert_eq!(
            threaded, last,
            "seed {seed}: check_engine != WalletService::check"
        );
    }
}

fn damaged_row_is_named(backend: Backend) {
    let seed = seed_from_env("CHECK_SEED");
    println!("CHECK_SEED={seed} ({backend:?})");
    let store = TestStore::new(backend);
    let (service, engine) = open(&store);
    let mut dice = Dice(seed);
    let applied = submit(&service, &mut dice, 0, COMMANDS);
    assert!(applied > 0, "seed {seed}: nothing applied");
    compare_with_audit(&service, &format!("seed {seed}, before the damage"));
    // A random member with a wallet, and one of its rows other than the summary if it has any.
    let snap = engine.snapshot().expect("a snapshot");
    let wallets = stored_views(&*snap);
    let victim = wallets
        .keys()
        .nth(dice.below(wallets.len() as u64) as usize)
        .expect("the sequence opens wallets")
        .clone();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = views::rows_of(&wallets[&victim]).collect();
    let (key, mut value) = rows
        .iter()
        .rev()
        .find(|(_, v)| !v.is_empty())
        .cloned()
        .expect("the summary row has a value");
    // The first byte of every fixed-width value is the low byte of an amount.
    value[0] ^= 0x01;
    drop(snap);
    let mut batch = WriteBatch::new();
    batch.put(tables::ROWS, key.clone(), value);
    engine.commit(batch).expect("the damage commits");

    let report = service.check(&no_progress).expect("the store reads");
    let views_inv = report
        .invariant(VIEWS_MATCH_LOG)
        .expect("every report has the five invariants");
    assert!(!views_inv.ok, "the damaged row of {victim} went unnoticed");
    let prefix = format!("member {victim}: ");
    assert!(
        views_inv.details.iter().all(|d| d.starts_with(&prefix)),
        "every detail names {victim} (row {key:02x?}): {:?}",
        views_inv.details
    );
    for inv in report
        .invariants
        .iter()
        .filter(|i| i.name != VIEWS_MATCH_LOG)
    {
        assert!(inv.ok, "only the views are damaged, not {inv:?}");
    }
    let snap = service.ledger().snapshot().expect("a snapshot");
    println!("the audit's panic message that follows is expected: it must fail here");
    let audited = catch_unwind(AssertUnwindSafe(|| audit(&*snap, true, "after the damage")));
    assert!(
        audited.is_err(),
        "the audit must fail on the damaged row too"
    );
}
