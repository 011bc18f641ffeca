//! Kill -9 test of the wallet service: after a SIGKILL at a random moment, every acknowledged
//! command is in the log with its events, the views stand exactly at the log head and equal a
//! full fold, rebuild reproduces the stored digest, and the hash chain verifies.
//!
//! The child (`src/bin/wallet_crash_child.rs`) opens a `WalletService` and submits a mixed
//! workload from six concurrent tasks (transfers among eight members, payments, miles, coupons,
//! badges, expiries, password resets), printing `ack ID FIRST COUNT` only after the service
//! answered, and `rej ID` for rule rejections. The views are written by the commit hook in the
//! writer's transaction, so a kill can never leave them behind or ahead of the log: the test
//! opens the store with `ledger::store::open_engine` (not the service, whose open would rebuild
//! views that are behind and so hide the fault) and checks the checkpoint before anything else.
//! As in `crash.rs`, killing the process checks atomicity and ack-after-commit, not power loss.
//!
//! `WALLET_CRASH_ITERATIONS` (default 30) sets the kills; `WALLET_CRASH_SEED` replays a run.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_tests::child::run_and_kill;

use ledger::{Backend, Create, Engine, Head, OpenError, Position};
use ledger_tests::wallet::{
    assert_applied, assert_not_applied, assert_verifies, audit, seed_from_env, splitmix64,
    stored_views,
};

/// Kills when `WALLET_CRASH_ITERATIONS` is not set.
const DEFAULT_ITERATIONS: u64 = 30;
#[test]
fn acknowledged_commands_survive_kill_9_with_views_at_the_head_equal_to_the_fold() {
    // Every ack is in the commands index with its events; checkpoint == head; views == fold;
    // rebuild gives the stored digest; verify passes; rejected ids stay unused.
    let iterations: u64 = std::env::var("WALLET_CRASH_ITERATIONS")
        .ok()
        .map(|v| v.parse().expect("WALLET_CRASH_ITERATIONS must be a number"))
        .unwrap_or(DEFAULT_ITERATIONS);
    let base_seed = seed_from_env("WALLET_CRASH_SEED");
    eprintln!(
        "wallet crash test: {iterations} iterations, seed {base_seed} \
         (replay: WALLET_CRASH_SEED={base_seed} WALLET_CRASH_ITERATIONS={iterations})"
    );
    let tmp = tempfile::tempdir().expect("a temp dir");
    let store = tmp.path().join("store");
    let mut rng = base_seed;
    let mut previous = Head::default();
    let (mut acks_total, mut rejections_total, mut early_kills) = (0usize, 0usize, 0u64);
    let started = Instant::now();
    for iteration in 0..iterations {
        let run_seed = base_seed.wrapping_add(iteration);
        let stderr_path = tmp.path().join(format!("stderr-{iteration}"));
        // One kill in eight lands while the child is still opening the store.
        let early = splitmix64(&mut rng) % 8 == 0;
        let delay = if early {
            Duration::from_micros(splitmix64(&mut rng) % 20_000)
        } else {
            Duration::from_micros(2_000 + splitmix64(&mut rng) % 100_000)
        };
        let lines = run_and_kill(
            Path::new(env!("CARGO_BIN_EXE_wallet_crash_child")),
            [store.as_os_str(), OsStr::new(&run_seed.to_string())],
            &stderr_path,
            early,
            delay,
        );
        if !lines.iter().any(|l| l.starts_with("ready")) {
            early_kills += 1;
        }
        let context = format!("iteration {iteration} (seed {base_seed}, run seed {run_seed})");
        let Some(engine) = open_store(&store, &context) else {
            assert!(
                lines.is_empty(),
                "{context}: the child printed {lines:?} without a store"
            );
            continue;
        };
        let (acks, rejections) = check_outcomes(&*engine, &lines, &context);
        acks_total += acks;
        rejections_total += rejections;
        previous = check_views_and_rebuild(&*engine, previous, &context);
    }
    eprintln!(
        "wallet crash test: {iterations} kills ({early_kills} before ready), {acks_total} acks and \
         {rejections_total} rejections checked, final head {}, {:.1} s",
        previous.position,
        started.elapsed().as_secs_f64()
    );
    assert!(
        acks_total as u64 >= iterations,
        "only {acks_total} acks in {iterations} runs: the test barely exercised the service"
    );
}

/// Opens the engine; `None` when the child was killed before it created the store.
fn open_store(store: &Path, context: &str) -> Option<Arc<dyn Engine>> {
    // Waits for the lock's release itself; the cap only turns a lock never released into a
    // failure, generous for a machine loaded by other work.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match projections::open_store(store, Create::No, Backend::Redb) {
            Ok(engine) => return Some(engine),
            Err(OpenError::Missing { .. }) => return None,
            // The kernel releases a killed process's file lock when its last fd closes.
            Err(OpenError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{context}: reopen after kill failed: {e}"),
        }
    }
}

/// Checks every printed outcome; returns (acks, rejections).
fn check_outcomes(engine: &dyn Engine, lines: &[String], context: &str) -> (usize, usize) {
    let snap = engine.snapshot().expect("a snapshot");
    let (mut acks, mut rejections) = (0, 0);
    for line in lines {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["ready", _] => {}
            ["ack", id, first, count] => {
                let first = Position(first.parse().expect("a position"));
                let count: u32 = count.parse().expect("a count");
                assert_applied(&*snap, id, first, count);
                acks += 1;
            }
            ["rej", id] => {
                assert_not_applied(&*snap, id);
                rejections += 1;
            }
            _ => panic!("{context}: unexpected child line {line:?}"),
        }
    }
    (acks, rejections)
}

/// Checkpoint == head, views == fold, invariants, digest; then rebuild reproduces the digest and
/// the views; verify passes; the log did not shrink. Returns the head.
fn check_views_and_rebuild(engine: &dyn Engine, previous: Head, context: &str) -> Head {
    let snap = engine.snapshot().expect("a snapshot");
    let before = audit(&*snap, true, &format!("{context}, after kill"));
    assert!(
        before.head.position >= previous.position,
        "{context}: the log shrank from {} to {}",
        previous.position,
        before.head.position
    );
    if previous.position.0 > 0 {
        let kept = ledger::log::read_event(&*snap, previous.position)
            .expect("read")
            .expect("the previous head still exists");
        assert_eq!(
            kept.hash, previous.hash,
            "{context}: the previous head changed"
        );
    }
    assert_verifies(&*snap, before.head, context);
    let views_before = stored_views(&*snap);
    drop(snap);
    let digest = before.digest.expect("asked for the digest");
    let report = projections::rebuild(engine, &mut |_| {})
        .unwrap_or_else(|e| panic!("{context}: rebuild failed: {e}"));
    assert_eq!(
        report.digest_before, digest,
        "{context}: rebuild read another digest"
    );
    assert_eq!(
        report.digest_after, digest,
        "{context}: rebuild changed the digest"
    );
    assert_eq!(report.head, before.head.position);
    let snap = engine.snapshot().expect("a snapshot");
    assert_eq!(
        stored_views(&*snap),
        views_before,
        "{context}: rebuilt views differ from the incremental ones"
    );
    before.head
}
