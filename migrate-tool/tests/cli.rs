//! End-to-end tests of the `migrate-tool` binary: every command, every exit code, the import
//! error corpus (golden file `data/bad.expected`), and the 7Pay story (a bulk password reset
//! leaves every wallet byte-identical).

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ledger::domain::{MemberId, ToppedUp, WalletEvent, Yen};
use ledger::segments::{segment_name, FrameReader, Location, SEGMENTS_DIR};
use ledger::{Backend, Create, WriteBatch};
use projections::views;
use serde_json::json;

mod common;
use common::{run, run_with};

const SETUP: &str = include_str!("data/setup.jsonl");
const BAD: &[u8] = include_bytes!("data/bad.jsonl");
const BAD_EXPECTED: &str = include_str!("data/bad.expected");

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write test file");
    path
}

/// A store holding `data/setup.jsonl` (m1 with activity, m2 empty, m1 registered).
fn setup_store(tmp: &Path) -> PathBuf {
    let store = tmp.join("store");
    let file = write_file(tmp, "setup.jsonl", SETUP.as_bytes());
    let r = run(&store, &["import", file.to_str().unwrap()]);
    assert_eq!(
        r.stdout, "applied 9, duplicate 0, rejected 0\n",
        "{}",
        r.stderr
    );
    assert_eq!(r.code, 0);
    store
}

fn head(store: &Path) -> u64 {
    let engine = projections::open_store(store, Create::No, Backend::Redb).expect("open store");
    let snap = engine.snapshot().expect("snapshot");
    ledger::log::read_head(&*snap).expect("head").0.position.0
}

/// The log position of version `version` of `stream`.
fn position_of(store: &Path, stream: &str, version: u64) -> u64 {
    let doc = json(&run(store, &["log", "--stream", stream, "--json"]).stdout);
    let event = doc["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["version"] == version)
        .unwrap_or_else(|| panic!("{stream} has no version {version}: {doc}"));
    event["position"].as_u64().unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn import_reports_every_bad_line_in_order_and_writes_nothing_for_them() {
    // 63 bad lines (syntax, shape, types, ranges, ids, times, every closed rule, id reuse,
    // invalid UTF-8) each get their golden message; the log head does not move.
    let tmp = tempfile::tempdir().unwrap();
    let store = setup_store(tmp.path());
    assert_eq!(head(&store), 9);
    let bad = write_file(tmp.path(), "bad.jsonl", BAD);
    let r = run(&store, &["import", bad.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    // The two blank lines at the top are skipped (SPEC 2), not rejected: 61 of 63 lines.
    assert_eq!(r.stdout, "applied 0, duplicate 0, rejected 61\n");
    assert_eq!(r.stderr, BAD_EXPECTED);
    assert!(BAD_EXPECTED.lines().count() >= 50);
    assert_eq!(head(&store), 9, "rejected lines must not write");
    let log = json(&run(&store, &["log", "--json"]).stdout);
    assert_eq!(log["events"].as_array().unwrap().len(), 9);
}

#[test]
fn importing_the_same_file_twice_is_all_duplicates_also_from_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let store = setup_store(tmp.path());
    let file = tmp.path().join("setup.jsonl");
    let again = run(&store, &["import", file.to_str().unwrap()]);
    assert_eq!(
        (again.code, again.stdout.as_str()),
        (0, "applied 0, duplicate 9, rejected 0\n")
    );
    let piped = run_with(&store, &["import", "-"], Some(SETUP.as_bytes()));
    assert_eq!(
        (piped.code, piped.stdout.as_str()),
        (0, "applied 0, duplicate 9, rejected 0\n")
    );
    assert_eq!(head(&store), 9);
}

#[test]
fn import_keeps_file_order_per_member_under_concurrency() {
    // 600 members, each: open, top up 1000, pay 999, pay 1. Any reordering within a member
    // would reject a pay (insufficient balance).
    let tmp = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for step in 0..4 {
        for m in 0..600 {
            let line = match step {
                0 => format!(
                    r#"{{"id":"o{m}","type":"open_wallet","member":"u{m}","at":"2019-07-01T00:00:00Z"}}"#
                ),
                1 => format!(
                    r#"{{"id":"t{m}","type":"top_up","member":"u{m}","amount":1000,"at":"2019-07-01T00:00:01Z"}}"#
                ),
                2 => format!(
                    r#"{{"id":"p{m}","type":"pay","member":"u{m}","amount":999,"merchant":"x","at":"2019-07-01T00:00:02Z"}}"#
                ),
                _ => format!(
                    r#"{{"id":"q{m}","type":"pay","member":"u{m}","amount":1,"merchant":"x","at":"2019-07-01T00:00:03Z"}}"#
                ),
            };
            lines.push_str(&line);
            lines.push('\n');
        }
    }
    let file = write_file(tmp.path(), "many.jsonl", lines.as_bytes());
    let store = tmp.path().join("store");
    let r = run(&store, &["import", file.to_str().unwrap()]);
    assert_eq!(r.stderr, "");
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "applied 2400, duplicate 0, rejected 0\n")
    );
    let show = run(&store, &["show", "u599", "--json"]);
    assert_eq!(
        show.stdout,
        "{\"member\":\"u599\",\"balance\":0,\"miles\":0,\"badges\":[],\"coupons\":{\"active\":[],\"redeemed\":[],\"expired\":[]},\"held\":0,\"holds\":[]}\n"
    );
}

#[test]
fn show_gives_the_spec_shape_now_and_as_of() {
    let tmp = tempfile::tempdir().unwrap();
    let store = setup_store(tmp.path());
    let r = run(&store, &["show", "m1", "--json"]);
    assert_eq!(r.code, 0);
    assert_eq!(
        r.stdout,
        "{\"member\":\"m1\",\"balance\":4300,\"miles\":100,\"badges\":[\"first-purchase\"],\"coupons\":{\"active\":[],\"redeemed\":[\"cp-1\"],\"expired\":[]},\"held\":0,\"holds\":[]}\n"
    );
    let human = run(&store, &["show", "m1"]);
    assert_eq!(human.code, 0);
    assert!(
        human.stdout.contains("balance:  4300 yen"),
        "{}",
        human.stdout
    );
    // Import keeps each member's file order, not the global one: find the top-up's position.
    let top_up = position_of(&store, "wallet-m1", 2);
    let at_pos = json(
        &run(
            &store,
            &["show", "m1", "--as-of", &format!("@{top_up}"), "--json"],
        )
        .stdout,
    );
    assert_eq!(at_pos["balance"], 5000);
    let at_time = run(
        &store,
        &[
            "show",
            "m1",
            "--as-of",
            "2019-07-01T10:05:30+09:00",
            "--json",
        ],
    );
    let at_time = json(&at_time.stdout);
    assert_eq!(at_time["coupons"]["active"][0], "cp-1");
    assert_eq!(at_time["balance"], 4300);
    let none = run(&store, &["show", "m9"]);
    assert_eq!(
        (none.code, none.stderr.as_str()),
        (1, "member m9 has no wallet\n")
    );
    // m1 is registered but m3 has nothing at all; both identity-only and unknown exit 1.
    assert_eq!(run(&store, &["show", "m3"]).code, 1);
    // As of the position where m1's wallet opened (import orders each member's lines, not the
    // whole file, so that is not necessarily position 1): a wallet with nothing in it yet.
    let opened = format!("@{}", position_of(&store, "wallet-m1", 1));
    let at_open = run(&store, &["show", "m1", "--as-of", &opened, "--json"]);
    assert_eq!(at_open.code, 0, "{}", at_open.stderr);
    assert_eq!(json(&at_open.stdout)["balance"], 0);
    assert_eq!(run(&store, &["show", "bad id"]).code, 2);
    assert_eq!(run(&store, &["show", "m1", "--as-of", "tomorrow"]).code, 2);
}

#[test]
fn export_is_sorted_one_line_per_wallet_and_digest_matches_as_of_head() {
    let tmp = tempfile::tempdir().unwrap();
    let store = setup_store(tmp.path());
    let r = run(&store, &["export"]);
    assert_eq!(r.code, 0);
    let members: Vec<String> = r
        .stdout
        .lines()
        .map(|l| json(l)["member"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(members, ["m1", "m2"]);
    // At position 1 only m1's wallet exists, empty.
    let early = run(&store, &["export", "--as-of", "@1"]);
    assert_eq!(
        early.stdout,
        "{\"member\":\"m1\",\"balance\":0,\"miles\":0,\"badges\":[],\"coupons\":{\"active\":[],\"redeemed\":[],\"expired\":[]},\"held\":0,\"holds\":[]}\n"
    );
    // As of the head, the fold equals the views.
    let head_now = head(&store).to_string();
    let folded = run(&store, &["export", "--as-of", &format!("@{head_now}")]);
    assert_eq!(folded.stdout, r.stdout);
    let stored = run(&store, &["digest"]);
    let fresh = run(&store, &["digest", "--as-of", &format!("@{head_now}")]);
    assert_eq!(stored.code, 0);
    assert_eq!(stored.stdout.trim().len(), 64);
    assert_eq!(stored.stdout, fresh.stdout);
    let before_all = run(&store, &["digest", "--as-of", "2019-06-01T00:00:00Z"]);
    assert_ne!(before_all.stdout, stored.stdout);
}

#[test]
fn log_lists_events_in_order_with_filters() {
    let tmp = tempfile::tempdir().unwrap();
    let store = setup_store(tmp.path());
    let all = run(&store, &["log"]);
    assert_eq!((all.code, all.stdout.lines().count()), (0, 9));
    let positions: Vec<&str> = all
        .stdout
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(positions, ["1", "2", "3", "4", "5", "6", "7", "8", "9"]);
    let opened = position_of(&store, "wallet-m1", 1);
    assert!(
        all.stdout
            .lines()
            .any(|l| l.starts_with(&format!("{opened} wallet-m1 v1 wallet.opened "))),
        "{}",
        all.stdout
    );
    let third = position_of(&store, "wallet-m1", 3);
    let doc = json(
        &run(
            &store,
            &[
                "log",
                "--stream",
                "wallet-m1",
                "--from",
                &third.to_string(),
                "--limit",
                "2",
                "--json",
            ],
        )
        .stdout,
    );
    let events = doc["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["position"], third);
    assert_eq!(events[0]["type"], "wallet.paid");
    assert_eq!(events[0]["payload"]["merchant"], "7-Eleven Shinjuku");
    assert_eq!(events[1]["payload"]["expires_at"], "2019-07-31T15:00:00Z");
    assert_eq!(events[1]["command_id"], "s4");
}

#[test]
fn verify_passes_and_names_the_first_tampered_position() {
    let tmp = tempfile::tempdir().unwrap();
    let store = setup_store(tmp.path());
    let ok = run(&store, &["verify", "--json"]);
    let doc = json(&ok.stdout);
    assert_eq!(
        (ok.code, doc["ok"].clone(), doc["head"].clone()),
        (0, true.into(), 9.into())
    );
    // A record changed inside its frame, the frame's checksum recomputed (a tamperer who knows
    // the format): the store opens, and verify names the record's position (exit 1).
    let (location, original, record_end) = frame_holding(&store, 4);
    let mut damaged = original.clone();
    damaged[record_end - 1] ^= 1;
    reseal(&mut damaged);
    write_segment(&store, location, &damaged);
    let bad = run(&store, &["verify"]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stdout.contains("FAILED at position 4"),
        "{}",
        bad.stdout
    );
    let check = json(&run(&store, &["check", "--json"]).stdout);
    assert_eq!(check["ok"], false);
    assert_eq!(check["invariants"][0]["name"], "hash-chain");
    assert_eq!(check["invariants"][0]["ok"], false);

    // The same change without the checksum recomputed: the frame no longer checks, so the store
    // is damaged and refused before verify runs (exit 2), naming the segment file and the byte.
    let mut naive = original.clone();
    naive[record_end - 1] ^= 1;
    write_segment(&store, location, &naive);
    let refused = run(&store, &["verify"]);
    assert_eq!(refused.code, 2, "{}{}", refused.stdout, refused.stderr);
    let named = format!(
        "{}, byte {}",
        segment_name(location.segment),
        location.offset
    );
    assert!(refused.stderr.contains(&named), "{}", refused.stderr);
    write_segment(&store, location, &original);
    assert_eq!(
        run(&store, &["verify"]).code,
        0,
        "the restored frame verifies"
    );
}

/// The frame holding event `position` of the closed store: where it is, its bytes, and the end
/// of the event's record within them.
fn frame_holding(store: &Path, position: u64) -> (Location, Vec<u8>, usize) {
    let frame = FrameReader::open(&store.join(SEGMENTS_DIR))
        .unwrap()
        .map(|f| f.unwrap())
        .find(|f| {
            let first = f.header.first_position;
            (first..first + u64::from(f.header.events)).contains(&position)
        })
        .expect("a frame holds the position");
    let mut bytes = vec![0u8; frame.header.frame_len() as usize];
    let file = std::fs::File::open(segment_file(store, frame.location.segment)).unwrap();
    file.read_exact_at(&mut bytes, frame.location.offset)
        .unwrap();
    let record = frame.record((position - frame.header.first_position) as usize);
    let start = bytes
        .windows(record.len())
        .position(|w| w == record)
        .expect("the record is in its frame's bytes");
    (frame.location, bytes, start + record.len())
}

fn segment_file(store: &Path, segment: u32) -> PathBuf {
    store.join(SEGMENTS_DIR).join(segment_name(segment))
}

fn write_segment(store: &Path, at: Location, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(segment_file(store, at.segment))
        .unwrap();
    file.write_all_at(bytes, at.offset).unwrap();
    file.sync_data().unwrap();
}

/// Recomputes a frame's checksum (BLAKE3 of header bytes 0..32 and the payload, first 16 bytes,
/// in header bytes 32..48: `docs/format.md`).
fn reseal(bytes: &mut [u8]) {
    let mut h = blake3::Hasher::new();
    h.update(&bytes[..32]);
    h.update(&bytes[48..]);
    let sum = *h.finalize().as_bytes();
    bytes[32..48].copy_from_slice(&sum[..16]);
}

/// Replaces m1's stored view with its state plus one yen (the log is untouched).
fn damage_view_of_m1(store: &Path) {
    let engine = projections::open_store(store, Create::No, Backend::Redb).unwrap();
    let member = MemberId::new("m1").unwrap();
    let mut state = views::load_wallet(&*engine.snapshot().unwrap(), &member)
        .unwrap()
        .unwrap();
    state
        .apply(&WalletEvent::ToppedUp(ToppedUp { amount: Yen(1) }))
        .unwrap();
    let mut batch = WriteBatch::new();
    views::put_wallet(&mut batch, &state);
    engine.commit(batch).unwrap();
}

#[test]
fn check_passes_then_catches_a_damaged_view_naming_the_member_and_rebuild_repairs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = setup_store(tmp.path());
    let ok = run(&store, &["check", "--json"]);
    let doc = json(&ok.stdout);
    assert_eq!(ok.code, 0, "{}", ok.stdout);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["head"], 9);
    let names: Vec<&str> = doc["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "hash-chain",
            "views-match-log",
            "no-negative",
            "conservation",
            "identity-neutral-digest"
        ]
    );
    damage_view_of_m1(&store);
    let bad = run(&store, &["check", "--json"]);
    assert_eq!(bad.code, 1);
    let doc = json(&bad.stdout);
    let views_inv = &doc["invariants"][1];
    assert_eq!(views_inv["ok"], false);
    let detail = views_inv["details"][0].as_str().unwrap();
    assert!(detail.starts_with("member m1: stored view"), "{detail}");
    assert!(detail.contains("\"balance\":4301"), "{detail}");
    let human = run(&store, &["check"]);
    assert_eq!(human.code, 1);
    assert!(human.stdout.contains("views-match-log          FAILED"));
    // The gate refuses to work on a store that fails check, and leaves it as it is.
    let reset = run(&store, &["reset-credentials", "--all"]);
    assert_eq!(reset.code, 1);
    assert!(
        reset.stdout.contains("fails `check` before"),
        "{}",
        reset.stdout
    );
    assert_eq!(head(&store), 9);
    let rebuilt = run(&store, &["rebuild"]);
    assert_eq!(rebuilt.code, 0);
    assert!(rebuilt.stdout.starts_with("digest before: "));
    assert!(rebuilt.stdout.contains("digest after:  "));
    assert_eq!(run(&store, &["check"]).code, 0);
    assert_eq!(
        json(&run(&store, &["show", "m1", "--json"]).stdout)["balance"],
        4300
    );
}

#[test]
fn reset_credentials_for_named_members_with_dry_run_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = setup_store(tmp.path());
    let export_before = run(&store, &["export"]).stdout;
    let dry = run(
        &store,
        &["reset-credentials", "--member", "m1", "--dry-run", "--json"],
    );
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    let doc = json(&dry.stdout);
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["dry_run"], true);
    assert_eq!(doc["applied_to_store"], false);
    assert_eq!(doc["members_reset"], 1);
    assert_eq!(doc["before"]["head"], 9);
    assert_eq!(doc["after"]["head"], 10);
    assert_eq!(doc["before"]["digest"], doc["after"]["digest"]);
    assert!(doc["duration_ms"].is_u64());
    assert_eq!(head(&store), 9, "a dry run leaves the store untouched");
    let real = run(
        &store,
        &["reset-credentials", "--member", "m1", "--reason", "leak"],
    );
    assert_eq!(real.code, 0, "{}{}", real.stdout, real.stderr);
    assert!(real.stdout.contains("gate: passed"));
    assert_eq!(head(&store), 10);
    assert_eq!(run(&store, &["export"]).stdout, export_before);
    let last = json(&run(&store, &["log", "--from", "10", "--json"]).stdout);
    assert_eq!(last["events"][0]["type"], "identity.password_reset");
    assert_eq!(last["events"][0]["payload"]["reason"], "leak");
    // m2 has a wallet but never registered: no identity stream, nothing done.
    let missing = run(
        &store,
        &["reset-credentials", "--member", "m1", "--member", "m2"],
    );
    assert_eq!(missing.code, 1);
    assert_eq!(missing.stderr, "member m2 has no identity stream\n");
    assert_eq!(head(&store), 10);
    // Bad arguments.
    assert_eq!(run(&store, &["reset-credentials"]).code, 2);
    assert_eq!(
        run(&store, &["reset-credentials", "--member", "a b"]).code,
        2
    );
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".reset-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "scratch copies left behind: {leftovers:?}"
    );
}

// Proves SPEC section 7's exception end to end: with a policy on (24 hours, cap 0, so any
// payment within a day of a credential event is held), `reset-credentials --all` passes its
// gate (wallet-neutral), writes operator resets, and starts no hold: a payment right after it
// applies. A member's own `reset_password` does start one: the payment after it is held and
// `show --json` lists it. Planted defect: `reset_of_registered` writing `operator: false` fails
// it (the mass reset's event says `operator: false`, and the payment after it is held).
#[test]
fn reset_credentials_all_with_a_policy_on_is_wallet_neutral_and_starts_no_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let store = setup_store(tmp.path());
    let policy = write_file(
        tmp.path(),
        "policy.jsonl",
        br#"{"id":"pol","type":"set_policy","cooldown_hours":24,"cooldown_cap":0}"#,
    );
    assert_eq!(run(&store, &["import", policy.to_str().unwrap()]).code, 0);
    let export_before = run(&store, &["export"]).stdout;
    let reset = run(&store, &["reset-credentials", "--all", "--reason", "7pay"]);
    assert_eq!(reset.code, 0, "{}{}", reset.stdout, reset.stderr);
    assert!(reset.stdout.contains("gate: passed"), "{}", reset.stdout);
    assert_eq!(run(&store, &["export"]).stdout, export_before);
    let last = json(&run(&store, &["log", "--from", "11", "--json"]).stdout);
    assert_eq!(last["events"][0]["type"], "identity.password_reset");
    assert_eq!(last["events"][0]["payload"]["operator"], true);
    // No `at`: business time is now, within a day of the mass reset.
    let pay = write_file(
        tmp.path(),
        "pay.jsonl",
        br#"{"id":"p-after-mass-reset","type":"pay","member":"m1","amount":100,"merchant":"shop"}"#,
    );
    assert_eq!(run(&store, &["import", pay.to_str().unwrap()]).code, 0);
    let shown = json(&run(&store, &["show", "m1", "--json"]).stdout);
    assert_eq!(
        (&shown["balance"], &shown["held"], &shown["holds"]),
        (&json!(4200), &json!(0), &json!([]))
    );
    let own = write_file(
        tmp.path(),
        "own.jsonl",
        b"{\"id\":\"own-reset\",\"type\":\"reset_password\",\"member\":\"m1\"}\n\
          {\"id\":\"p-after-own-reset\",\"type\":\"pay\",\"member\":\"m1\",\"amount\":100,\"merchant\":\"shop\"}\n",
    );
    let imported = run(&store, &["import", own.to_str().unwrap()]);
    assert_eq!(imported.stdout, "applied 2, duplicate 0, rejected 0\n");
    let shown = json(&run(&store, &["show", "m1", "--json"]).stdout);
    assert_eq!(
        (&shown["balance"], &shown["held"], &shown["holds"]),
        (&json!(4200), &json!(100), &json!(["p-after-own-reset"]))
    );
    assert_eq!(run(&store, &["check"]).code, 0);
}

// Proves reset-credentials on a sled store (no rollback points: it works on a copy of the store
// directory) swaps in the whole checked copy, index and segments together: the reset is in the
// log, verify and check pass (the index and the segments agree), the wallets are as they were,
// and nothing is left beside the store.
#[cfg(feature = "sled")]
#[test]
fn reset_credentials_on_sled_swaps_in_the_whole_store_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    drop(projections::open_store(&store, Create::IfMissing, Backend::Sled).unwrap());
    let file = write_file(tmp.path(), "setup.jsonl", SETUP.as_bytes());
    let imported = run(&store, &["import", file.to_str().unwrap()]);
    assert_eq!(imported.code, 0, "{}", imported.stderr);
    assert!(store.join(ledger::store::SLED_DIR).is_dir());
    let export_before = run(&store, &["export"]).stdout;
    let reset = run(&store, &["reset-credentials", "--member", "m1"]);
    assert_eq!(reset.code, 0, "{}{}", reset.stdout, reset.stderr);
    assert!(reset.stdout.contains("gate: passed"), "{}", reset.stdout);
    assert_eq!(head(&store), 10);
    let last = json(&run(&store, &["log", "--from", "10", "--json"]).stdout);
    assert_eq!(last["events"][0]["type"], "identity.password_reset");
    assert_eq!(run(&store, &["verify"]).code, 0);
    assert_eq!(run(&store, &["check"]).code, 0);
    assert_eq!(run(&store, &["export"]).stdout, export_before);
    assert!(store.join(ledger::store::SLED_DIR).is_dir());
    let mut beside: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    beside.sort();
    assert_eq!(beside, ["setup.jsonl", "store", "store.lock"]);
}

#[test]
fn a_faulty_reset_that_touches_a_wallet_is_refused_named_and_rolled_back() {
    // Proves the gate of SPEC section 5 on the reset: a reset that (deliberately, via a hidden
    // test flag) also credits a wallet exits 1, names the member and what changed, and leaves
    // the store as it was: same head hash, same export, same digest, verify and check clean.
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    assert_eq!(
        run(&store, &["demo", "--members", "50", "--seed", "3"]).code,
        0
    );
    let export_before = run(&store, &["export"]).stdout;
    let digest_before = run(&store, &["digest"]).stdout;
    let verify_before = json(&run(&store, &["verify", "--json"]).stdout);
    let faulty = run(
        &store,
        &[
            "reset-credentials",
            "--all",
            "--fault-touch-wallet",
            "--json",
        ],
    );
    assert_eq!(faulty.code, 1, "{}{}", faulty.stdout, faulty.stderr);
    let doc = json(&faulty.stdout);
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["applied_to_store"], false);
    // One member-diff shape for every gate: the wallet in the store the reset started from
    // (`stored`) and the one its result derives (`derived`).
    assert_eq!(doc["changed_members"][0]["member"], "m00000000");
    assert_eq!(
        doc["changed_members"][0]["fields"],
        serde_json::json!(["balance"])
    );
    let before_balance = doc["changed_members"][0]["stored"]["balance"]
        .as_u64()
        .unwrap();
    let after_balance = doc["changed_members"][0]["derived"]["balance"]
        .as_u64()
        .unwrap();
    assert_eq!(after_balance, before_balance + 1);
    assert_eq!(doc["differing_members"], 1);
    assert!(
        doc["failures"].to_string().contains("digest changed"),
        "{}",
        doc["failures"]
    );
    assert_eq!(
        json(&run(&store, &["verify", "--json"]).stdout),
        verify_before
    );
    assert_eq!(run(&store, &["export"]).stdout, export_before);
    assert_eq!(run(&store, &["digest"]).stdout, digest_before);
    assert_eq!(run(&store, &["check"]).code, 0);
    // The honest reset still goes through afterwards.
    let real = run(&store, &["reset-credentials", "--all"]);
    assert_eq!(real.code, 0, "{}{}", real.stdout, real.stderr);
    assert_eq!(run(&store, &["export"]).stdout, export_before);
}

#[test]
fn the_7pay_story_a_reset_of_everyone_changes_no_wallet() {
    // 2,000 members with a month of activity; reset every password behind the gate; every
    // wallet export is byte-identical, the digest too, and check holds.
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let demo = run(&store, &["demo", "--members", "2000", "--seed", "7"]);
    println!(
        "$ migrate-tool demo --members 2000 --seed 7\n{}",
        demo.stdout
    );
    assert_eq!(demo.code, 0, "{}", demo.stderr);
    assert!(demo
        .stdout
        .contains("members 2000, commands 20000 (0 duplicate, 0 rejected)"));
    let export_before = run(&store, &["export"]);
    assert_eq!(export_before.stdout.lines().count(), 2000);
    let digest_before = run(&store, &["digest"]).stdout;
    let reset = run(
        &store,
        &[
            "reset-credentials",
            "--all",
            "--reason",
            "7iD leak 2019-07-30",
        ],
    );
    println!(
        "$ migrate-tool reset-credentials --all --reason '7iD leak 2019-07-30'\n{}",
        reset.stdout
    );
    assert_eq!(reset.code, 0, "{}{}", reset.stdout, reset.stderr);
    assert!(reset
        .stdout
        .contains("reset 2000 members (0 duplicate, 0 rejected), 2000 events appended"));
    let export_after = run(&store, &["export"]);
    assert!(
        export_after.stdout == export_before.stdout,
        "exports differ"
    );
    let digest_after = run(&store, &["digest"]).stdout;
    println!("digest before {digest_before}digest after  {digest_after}");
    assert_eq!(digest_after, digest_before);
    let check = run(&store, &["check"]);
    println!("$ migrate-tool check\n{}", check.stdout);
    assert_eq!(check.code, 0, "{}", check.stdout);
    let again = run(&store, &["demo", "--members", "2000", "--seed", "7"]);
    assert!(again
        .stdout
        .contains("commands 20000 (20000 duplicate, 0 rejected), events 0"));
}

#[test]
fn demo_is_deterministic_per_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    for store in [&a, &b] {
        let r = run(
            store,
            &[
                "demo",
                "--members",
                "150",
                "--events-per-member",
                "12",
                "--seed",
                "3",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    assert_eq!(run(&a, &["export"]).stdout, run(&b, &["export"]).stdout);
    assert_eq!(run(&a, &["digest"]).stdout, run(&b, &["digest"]).stdout);
    let other = tmp.path().join("c");
    run(
        &other,
        &[
            "demo",
            "--members",
            "150",
            "--events-per-member",
            "12",
            "--seed",
            "4",
        ],
    );
    assert_ne!(run(&a, &["digest"]).stdout, run(&other, &["digest"]).stdout);
}

#[test]
fn the_tool_exits_2_when_it_cannot_open_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    for args in [
        vec!["show", "m1"],
        vec!["export"],
        vec!["digest"],
        vec!["log"],
        vec!["verify"],
        vec!["check"],
        vec!["rebuild"],
        vec!["reset-credentials", "--all"],
    ] {
        let r = run(&missing, &args);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(r.stderr.contains("no store at"), "{args:?}: {}", r.stderr);
        assert!(!missing.exists(), "read commands must not create a store");
    }
    let file = write_file(tmp.path(), "plain.txt", b"hello");
    let r = run(&file, &["show", "m1"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("is not a ledger store"), "{}", r.stderr);
    let other_dir = tmp.path().join("photos");
    std::fs::create_dir(&other_dir).unwrap();
    write_file(&other_dir, "cat.jpg", b"meow");
    let r = run(&other_dir, &["import", file.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a ledger store"), "{}", r.stderr);
    let garbage = tmp.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    write_file(&garbage, "ledger.redb", &[0x42; 8192]);
    let r = run(&garbage, &["verify"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.starts_with("error: "), "{}", r.stderr);
    let r = run(tmp.path(), &["import", "/nonexistent/file.jsonl"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cannot open /nonexistent/file.jsonl"));
}

#[test]
fn newer_format_and_locked_stores_are_refused_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let store = setup_store(tmp.path());
    {
        let engine = projections::open_store(&store, Create::No, Backend::Redb).unwrap();
        let r = run(&store, &["show", "m1"]);
        assert_eq!(r.code, 2);
        assert!(r.stderr.contains("locked"), "{}", r.stderr);
        let r = run(&store, &["import", "-"]);
        assert_eq!(r.code, 2);
        let mut batch = WriteBatch::new();
        batch.put(
            "meta",
            b"format_version".to_vec(),
            99u32.to_le_bytes().to_vec(),
        );
        engine.commit(batch).unwrap();
    }
    let r = run(&store, &["check"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("format version 99"), "{}", r.stderr);
}

#[test]
fn store_comes_from_env_and_bad_arguments_exit_2_and_help_has_examples() {
    let tmp = tempfile::tempdir().unwrap();
    let store = setup_store(tmp.path());
    let out = Command::new(env!("CARGO_BIN_EXE_migrate-tool"))
        .args(["show", "m1", "--json"])
        .env("LEDGER_STORE", &store)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"balance\":4300"));
    assert_eq!(run(&store, &[]).code, 2);
    assert_eq!(run(&store, &["show"]).code, 2);
    assert_eq!(run(&store, &["export", "--bogus"]).code, 2);
    assert_eq!(run(&store, &["log", "--from", "x"]).code, 2);
    for cmd in [
        "import",
        "show",
        "export",
        "digest",
        "log",
        "verify",
        "check",
        "rebuild",
        "reset-credentials",
        "demo",
    ] {
        let help = run(&store, &[cmd, "--help"]);
        assert_eq!(help.code, 0, "{cmd}");
        assert!(help.stdout.contains("Example:"), "{cmd}: {}", help.stdout);
        assert!(
            help.stdout.contains(&format!("migrate-tool {cmd}"))
                || cmd == "import" && help.stdout.contains("migrate-tool import"),
            "{cmd}"
        );
    }
}

// Proves SPEC 2's input rules for what spreadsheets and editors write: a UTF-8 byte-order mark at
// the start and blank lines (empty, spaces, CRLF) are skipped and not counted, CRLF line ends are
// accepted, and a bad line after the blank ones is still reported with its physical number.
#[test]
fn import_skips_a_byte_order_mark_and_blank_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let input = "\u{feff}{\"id\":\"b1\",\"type\":\"open_wallet\",\"member\":\"m1\"}\r\n\
                 \r\n\
                 \n\
                 {\"id\":\"b2\",\"type\":\"top_up\",\"member\":\"m1\",\"amount\":100}\n\
                 \x20 \t\n\
                 {\"id\":\"b3\",\"type\":\"top_up\",\"member\":\"m1\",\"amount\":0}\n";
    let r = run_with(&store, &["import", "-"], Some(input.as_bytes()));
    assert_eq!(
        r.stdout, "applied 2, duplicate 0, rejected 1\n",
        "{}",
        r.stderr
    );
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "line 6: field \"amount\" must be between 1 and 100000000, got 0\n"
    );
    let shown = json(&run(&store, &["show", "m1", "--json"]).stdout);
    assert_eq!(shown["balance"], 100);
}
