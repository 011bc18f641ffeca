//! kill -9 of a real `migrate-tool reset-credentials --all` process, at random points, on a demo
//! store, then reopen: the reset is wholly in the store or wholly absent (it runs under a
//! rollback point that the next open of the store rolls back), the wallets are untouched
//! (`export` byte for byte and `digest`), the log before the reset is as it was, verify and
//! check pass, and running the reset again completes.
//!
//! Planted defect it caught (run, seen failing, reverted): the rollback point released right
//! after `Guard::begin` (no rollback point at all): the dry run's resets stayed in the store.
//! Limit: a reset of fewer than `limits::MAX_EVENTS_PER_COMMIT` members is one group commit (one
//! frame), atomic even without the rollback point, so at this size a kill cannot split it and
//! "wholly there or wholly absent" guards the rollback on reopen rather than the chunking.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{command, copy_dir, json, ok, run};

/// Members of the demo store: enough that a reset of all of them spans a few hundred
/// milliseconds, so random kills land before, during and after its appends.
const MEMBERS: &str = "2000";
/// Kills, each on a fresh copy of the demo store.
const ITERATIONS: u64 = 8;
/// The event a reset appends, one per member.
const RESET_EVENT: &str = "identity.password_reset v2";

/// The store's head (position, hash) and how many reset events its log holds.
fn head_and_resets(store: &Path) -> ((u64, String), u64) {
    let status = json(&ok(store, &["migrate", "status", "--json"]).stdout);
    let head = (
        status["head"].as_u64().expect("status has a head position"),
        status["head_hash"]
            .as_str()
            .expect("status has a head hash")
            .to_owned(),
    );
    (
        head,
        status["event_types"][RESET_EVENT].as_u64().unwrap_or(0),
    )
}

/// `reset-credentials --all` as a child process of this test, to be killed.
fn reset_all(store: &Path) -> Command {
    let mut cmd = command(
        store,
        &["reset-credentials", "--all", "--reason", "kill test"],
    );
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd
}

// Proves a SIGKILL at any point of `reset-credentials --all` leaves the reset wholly there or
// wholly absent after reopening, the wallets and the log before it untouched, verify and check
// passing, and a second run completing.
#[test]
fn kill_9_during_reset_credentials_leaves_it_wholly_there_or_wholly_absent() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let source = tmp.path().join("demo").join("store");
    ok(&source, &["demo", "--members", MEMBERS, "--seed", "5"]);
    let members: u64 = MEMBERS.parse().expect("a number");
    let export = ok(&source, &["export"]).stdout;
    let digest = ok(&source, &["digest"]).stdout;
    let log = ok(&source, &["log", "--json"]).stdout;
    let (head, resets) = head_and_resets(&source);
    assert_eq!(resets, 0, "the demo store has no resets yet");
    // How long a whole reset takes here (a dry run does all of it and rolls back): the kills
    // are spread over that span and a little past it. Not a bound: a slow run only moves kills.
    let started = Instant::now();
    ok(&source, &["reset-credentials", "--all", "--dry-run"]);
    let span_ms = started.elapsed().as_millis().max(50) as u64;
    assert_eq!(head_and_resets(&source).0, head, "a dry run moved the head");
    let mut seed = 0x51ed_2701_c0ff_ee11u64;
    let (mut absent, mut whole) = (0, 0);
    for i in 0..ITERATIONS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay_ms = seed % (span_ms + span_ms / 4);
        let store = tmp.path().join(format!("kill-{i}")).join("store");
        copy_dir(&source, &store);
        let mut child = reset_all(&store).spawn().expect("spawn migrate-tool");
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        let status = child.wait().expect("reap");
        let context = format!("iteration {i}, killed after {delay_ms} ms ({status})");
        // Reopening (any command) rolls back a reset whose rollback point was not released.
        let v = run(&store, &["verify"]);
        assert_eq!(v.code, 0, "{context}: verify: {}{}", v.stdout, v.stderr);
        let c = run(&store, &["check"]);
        assert_eq!(c.code, 0, "{context}: check: {}{}", c.stdout, c.stderr);
        let (now, resets) = head_and_resets(&store);
        if resets == 0 {
            absent += 1;
            assert_eq!(
                now, head,
                "{context}: no reset in the log, yet the head moved"
            );
        } else {
            whole += 1;
            assert_eq!(
                resets, members,
                "{context}: the reset is in the store for only some members"
            );
            assert_eq!(
                now.0,
                head.0 + members,
                "{context}: the head is not one reset event per member past the old one"
            );
        }
        let before_reset = ok(&store, &["log", "--limit", &head.0.to_string(), "--json"]).stdout;
        assert!(
            before_reset == log,
            "{context}: the log before the reset changed"
        );
        assert!(
            ok(&store, &["export"]).stdout == export,
            "{context}: a wallet changed (export differs)"
        );
        assert_eq!(ok(&store, &["digest"]).stdout, digest, "{context}: digest");
        // Running it again completes, and resets every member once more.
        ok(
            &store,
            &["reset-credentials", "--all", "--reason", "after the kill"],
        );
        assert_eq!(
            head_and_resets(&store).1,
            resets + members,
            "{context}: the second run did not reset every member once"
        );
        ok(&store, &["verify"]);
        ok(&store, &["check"]);
        assert_eq!(ok(&store, &["digest"]).stdout, digest, "{context}: digest");
        std::fs::remove_dir_all(store.parent().expect("the kill's directory"))
            .expect("remove the iteration's store");
    }
    eprintln!("{absent} kills left no reset, {whole} the whole reset");
}
