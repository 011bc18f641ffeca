//! End-to-end tests of `migrate-tool expire` (SPEC 2 `expire` without a member, SPEC 3), on the
//! real binary: on a demo store it expires every due lot and active coupon exactly once (the
//! log holds one expiry event per due item, under `<id>` U+001F `<member>`) and changes nothing
//! else (`export` before and after differ only in the miles and coupon statuses of members with
//! something due; `check` passes); a second run is a duplicate that writes nothing; the human
//! and JSON reports give the counts; bad arguments exit 2 with a message naming the flag and
//! the rule, a used id exits 1, and neither writes anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ledger::domain::{CouponStatus, DomainEvent, WalletEvent};
use ledger::{Backend, Create, Position, Timestamp};
use projections::views;
use serde_json::{json, Value};

mod common;
use common::run;

/// The nightly job's time in JST, and the same instant in UTC (the default id uses UTC).
const AS_OF: &str = "2019-07-20T00:00:00+09:00";
const AS_OF_UTC: &str = "2019-07-19T15:00:00Z";
const DEFAULT_ID: &str = "expire-2019-07-19T15:00:00Z";

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn head(store: &Path) -> u64 {
    let engine = projections::open_store(store, Create::No, Backend::Redb).expect("open store");
    let snap = engine.snapshot().expect("snapshot");
    ledger::log::read_head(&*snap).expect("head").0.position.0
}

/// A due item: (member, `l<lot>` or `c<coupon>`).
type Item = (String, String);

/// Every lot with miles left and active coupon with `expires_at <= as_of`, read from the stored
/// wallets (not from the index the tool uses), with the miles each lot has left.
fn due_items(store: &Path, as_of: Timestamp) -> BTreeMap<Item, u64> {
    let engine = projections::open_store(store, Create::No, Backend::Redb).expect("open store");
    let snap = engine.snapshot().expect("snapshot");
    let mut due = BTreeMap::new();
    views::for_each_wallet(&*snap, &mut |state| {
        let m = state.member().to_string();
        for lot in state.lots() {
            if lot.remaining.0 > 0 && lot.expires_at <= as_of {
                due.insert((m.clone(), format!("l{}", lot.lot.0)), lot.remaining.0);
            }
        }
        for (id, c) in state.coupons() {
            if c.status == CouponStatus::Active && c.expires_at <= as_of {
                due.insert((m.clone(), format!("c{id}")), 0);
            }
        }
        Ok(())
    })
    .expect("reading the wallets");
    due
}

/// The expiry events at positions `from..`, as (item, miles), checking each carries the part id
/// of `id` for its member and lives on the member's wallet stream.
fn expiry_events(store: &Path, from: u64, id: &str) -> Vec<(Item, u64)> {
    let engine = projections::open_store(store, Create::No, Backend::Redb).expect("open store");
    let snap = engine.snapshot().expect("snapshot");
    let records = ledger::log::read_all(&*snap, Position(from), 100_000).expect("read the log");
    records
        .iter()
        .map(|r| {
            let member = r
                .stream
                .strip_prefix("wallet-")
                .unwrap_or_else(|| panic!("event {} is on {}", r.position, r.stream))
                .to_owned();
            assert_eq!(
                r.command_id,
                format!("{id}\u{1f}{member}"),
                "event {} belongs to the part of its member",
                r.position
            );
            let event = DomainEvent::decode(&r.event_type, r.schema_version, r.codec, &r.payload)
                .expect("decodes");
            match event {
                DomainEvent::Wallet(WalletEvent::MilesExpired(e)) => {
                    ((member, format!("l{}", e.lot.0)), e.miles.0)
                }
                DomainEvent::Wallet(WalletEvent::CouponExpired(e)) => {
                    ((member, format!("c{}", e.coupon)), 0)
                }
                other => panic!("event {} is not an expiry: {other:?}", r.position),
            }
        })
        .collect()
}

/// `export` as member -> wallet JSON.
fn export(store: &Path) -> BTreeMap<String, Value> {
    let r = run(store, &["export"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout
        .lines()
        .map(|line| {
            let v = json(line);
            (v["member"].as_str().expect("member").to_owned(), v)
        })
        .collect()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

/// The wallet `before` with the due items of its member expired, as `export` must show it.
fn expected_after(before: &Value, due: &BTreeMap<Item, u64>) -> Value {
    let member = before["member"].as_str().expect("member");
    let mine: Vec<(&String, u64)> = due
        .range((member.to_owned(), String::new())..)
        .take_while(|((m, _), _)| m == member)
        .map(|((_, item), miles)| (item, *miles))
        .collect();
    let mut after = before.clone();
    let expired_miles: u64 = mine.iter().map(|(_, miles)| miles).sum();
    after["miles"] = json!(before["miles"].as_u64().expect("miles") - expired_miles);
    let coupons: BTreeSet<String> = mine
        .iter()
        .filter_map(|(item, _)| item.strip_prefix('c').map(str::to_owned))
        .collect();
    let active: Vec<String> = strings(&before["coupons"]["active"])
        .difference(&coupons)
        .cloned()
        .collect();
    let expired: Vec<String> = strings(&before["coupons"]["expired"])
        .union(&coupons)
        .cloned()
        .collect();
    after["coupons"]["active"] = json!(active);
    after["coupons"]["expired"] = json!(expired);
    after
}

fn demo_store(tmp: &Path, members: &str) -> PathBuf {
    let store = tmp.join("store");
    let r = run(&store, &["demo", "--members", members, "--seed", "7"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    store
}

#[test]
fn expire_on_a_demo_store_expires_every_due_item_once_and_changes_nothing_else() {
    // 400 demo members: every lot with miles left and active coupon with expires_at <= AS_OF
    // gets exactly one expiry event (lots with the miles they had left), under the part id of
    // the default id; export after == export before with exactly those items expired; check
    // passes; the JSON report counts them; a second run is a duplicate that writes nothing.
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = demo_store(tmp.path(), "400");
    let as_of = Timestamp::parse_rfc3339(AS_OF).expect("valid");
    let due = due_items(&store, as_of);
    let due_members: BTreeSet<&String> = due.keys().map(|(m, _)| m).collect();
    assert!(
        due.len() > 100 && due_members.len() > 100,
        "the demo has due items: {} of {} members",
        due.len(),
        due_members.len()
    );
    assert!(
        due.keys().any(|(_, item)| item.starts_with('c'))
            && due.keys().any(|(_, item)| item.starts_with('l')),
        "due lots and coupons"
    );
    let before = export(&store);
    let head_before = head(&store);

    let r = run(&store, &["expire", "--as-of", AS_OF, "--json"]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""), "{}", r.stdout);
    let doc = json(&r.stdout);
    let items = due.len() as u64;
    let expected = json!({
        "as_of": AS_OF_UTC,
        "id": DEFAULT_ID,
        "due_members_before": due_members.len(),
        "due_items_before": items,
        "events_appended": items,
        "members": due_members.len(),
        "duplicate": false,
        "elapsed_ms": doc["elapsed_ms"].as_u64().expect("elapsed_ms is a number"),
        "head": head_before + items,
    });
    assert_eq!(doc, expected);
    assert_eq!(head(&store), head_before + items);

    // The log: one expiry event per due item, with the miles the lot had left.
    let events = expiry_events(&store, head_before + 1, DEFAULT_ID);
    assert_eq!(events.len() as u64, items);
    let logged: BTreeMap<Item, u64> = events.iter().cloned().collect();
    assert_eq!(logged.len(), events.len(), "no item expired twice");
    assert_eq!(
        logged, due,
        "exactly the due items, lots with their remaining miles"
    );

    // Export: only the miles and coupon statuses of members with due items changed.
    let after = export(&store);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (m, wallet) in &before {
        let want = if due_members.contains(m) {
            expected_after(wallet, &due)
        } else {
            wallet.clone()
        };
        assert_eq!(after[m], want, "wallet of {m}");
    }
    let check = run(&store, &["check"]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(
        due_items(&store, as_of).is_empty(),
        "nothing is due any more"
    );

    // Again, with the UTC spelling of the same instant: the same id, a duplicate.
    let again = run(&store, &["expire", "--as-of", AS_OF_UTC]);
    assert_eq!((again.code, again.stderr.as_str()), (0, ""));
    assert_eq!(
        again.stdout,
        format!(
            "expire as of {AS_OF_UTC} (id {DEFAULT_ID}): due before: 0 items of 0 members\n\
             duplicate: this expire was already done, nothing written; head {}\n",
            head_before + items
        )
    );
    assert_eq!(
        head(&store),
        head_before + items,
        "a duplicate writes nothing"
    );
}

/// A store where, as of [`AS_OF`], m1 has two lots due (one exactly at it) and one due a
/// microsecond later, m2 one active coupon due and one redeemed, m3 one coupon not due.
fn small_store(tmp: &Path) -> PathBuf {
    let store = tmp.join("small");
    let lines = [
        r#"{"id":"o1","type":"open_wallet","member":"m1","at":"2019-07-01T10:00:00+09:00"}"#,
        r#"{"id":"o2","type":"open_wallet","member":"m2","at":"2019-07-01T10:00:00+09:00"}"#,
        r#"{"id":"o3","type":"open_wallet","member":"m3","at":"2019-07-01T10:00:00+09:00"}"#,
        r#"{"id":"t1","type":"top_up","member":"m1","amount":5000,"at":"2019-07-01T10:01:00+09:00"}"#,
        r#"{"id":"e1","type":"earn_miles","member":"m1","miles":100,"expires_at":"2019-07-10T00:00:00+09:00","at":"2019-07-01T10:02:00+09:00"}"#,
        r#"{"id":"e2","type":"earn_miles","member":"m1","miles":50,"expires_at":"2019-07-20T00:00:00+09:00","at":"2019-07-01T10:03:00+09:00"}"#,
        r#"{"id":"e3","type":"earn_miles","member":"m1","miles":70,"expires_at":"2019-07-20T00:00:00.000001+09:00","at":"2019-07-01T10:04:00+09:00"}"#,
        r#"{"id":"c1","type":"issue_coupon","member":"m2","coupon":"cp-1","value":100,"expires_at":"2019-07-15T00:00:00+09:00","at":"2019-07-01T10:05:00+09:00"}"#,
        r#"{"id":"c2","type":"issue_coupon","member":"m2","coupon":"cp-2","value":100,"expires_at":"2019-07-15T00:00:00+09:00","at":"2019-07-01T10:06:00+09:00"}"#,
        r#"{"id":"r2","type":"redeem_coupon","member":"m2","coupon":"cp-2","at":"2019-07-02T10:00:00+09:00"}"#,
        r#"{"id":"c3","type":"issue_coupon","member":"m3","coupon":"cp-3","value":100,"expires_at":"2019-08-01T00:00:00+09:00","at":"2019-07-01T10:07:00+09:00"}"#,
    ];
    let file = tmp.join("small.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("write the import file");
    let r = run(&store, &["import", file.to_str().expect("UTF-8 path")]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "applied 11, duplicate 0, rejected 0\n"),
        "{}",
        r.stderr
    );
    store
}

fn show(store: &Path, member: &str) -> Value {
    let r = run(store, &["show", member, "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    json(&r.stdout)
}

#[test]
fn expire_reports_items_members_and_events_and_expires_at_as_of_inclusive() {
    // The human report on a small store: 3 items of 2 members due (m1's lot due exactly at
    // AS_OF included, its lot due a microsecond later not; m2's redeemed coupon not), 3 events.
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = small_store(tmp.path());
    let r = run(&store, &["expire", "--as-of", AS_OF]);
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", r.stdout);
    assert_eq!(
        lines[0],
        format!("expire as of {AS_OF_UTC} (id {DEFAULT_ID}): due before: 3 items of 2 members")
    );
    let prefix = "expired 3 items of 2 members, 3 events appended, head 14, elapsed ";
    assert!(
        lines[1].starts_with(prefix) && lines[1].ends_with(" items/s"),
        "{}",
        lines[1]
    );
    assert_eq!(
        show(&store, "m1"),
        json!({"member":"m1","balance":5000,"miles":70,"badges":[],
               "coupons":{"active":[],"redeemed":[],"expired":[]}, "held": 0, "holds": []})
    );
    assert_eq!(
        show(&store, "m2"),
        json!({"member":"m2","balance":0,"miles":0,"badges":[],
               "coupons":{"active":[],"redeemed":["cp-2"],"expired":["cp-1"]}, "held": 0, "holds": []})
    );
    assert_eq!(
        show(&store, "m3"),
        json!({"member":"m3","balance":0,"miles":0,"badges":[],
               "coupons":{"active":["cp-3"],"redeemed":[],"expired":[]}, "held": 0, "holds": []})
    );
    // A microsecond later the last lot is due too: a new instant, a new id.
    let later = run(
        &store,
        &["expire", "--as-of", "2019-07-19T15:00:00.000001Z", "--json"],
    );
    assert_eq!(later.code, 0, "{}", later.stderr);
    let doc = json(&later.stdout);
    assert_eq!(
        (
            &doc["id"],
            &doc["due_items_before"],
            &doc["events_appended"],
            &doc["head"]
        ),
        (
            &json!("expire-2019-07-19T15:00:00.000001Z"),
            &json!(1),
            &json!(1),
            &json!(15)
        )
    );
}

#[test]
fn expire_refuses_bad_arguments_with_exit_2_and_a_used_id_with_exit_1_writing_nothing() {
    // Each bad --as-of / --id gets clap's one message naming the flag, the value and the rule
    // (exit 2); no store exits 2 and creates none; an id used by another expire exits 1 with
    // the SPEC message (also as JSON); none of them writes an event.
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = small_store(tmp.path());
    let cases: [(&[&str], String); 7] = [
        (
            &["--as-of", "yesterday"],
            "invalid value 'yesterday' for '--as-of <T>': `yesterday` is not an RFC 3339 time (e.g. 2019-07-30T13:00:00+09:00)".to_owned(),
        ),
        (
            &["--as-of", "@5"],
            "invalid value '@5' for '--as-of <T>': `@5` is not an RFC 3339 time (e.g. 2019-07-30T13:00:00+09:00)".to_owned(),
        ),
        (
            &["--as-of", "2019-07-20T00:00:00"],
            "invalid value '2019-07-20T00:00:00' for '--as-of <T>': `2019-07-20T00:00:00` is not an RFC 3339 time (e.g. 2019-07-30T13:00:00+09:00)".to_owned(),
        ),
        (
            &["--as-of", "2019-07-20T00:00:00.0000001Z"],
            "invalid value '2019-07-20T00:00:00.0000001Z' for '--as-of <T>': `2019-07-20T00:00:00.0000001Z` has more than microsecond precision".to_owned(),
        ),
        (
            &["--as-of", "1969-12-31T00:00:00Z"],
            "invalid value '1969-12-31T00:00:00Z' for '--as-of <T>': `1969-12-31T00:00:00Z` is outside the years 1970 to 9999".to_owned(),
        ),
        (
            &["--as-of", AS_OF, "--id", ""],
            "invalid value '' for '--id <ID>': must be 1 to 128 characters without control characters, got \"\"".to_owned(),
        ),
        (
            &["--as-of", AS_OF, "--id", &"あ".repeat(50)],
            format!(
                "invalid value '{}' for '--id <ID>': must be at most 128 bytes, got 150 bytes",
                "あ".repeat(50)
            ),
        ),
    ];
    for (args, message) in cases {
        let mut all = vec!["expire"];
        all.extend_from_slice(args);
        let r = run(&store, &all);
        assert_eq!(
            (r.code, r.stdout.as_str(), r.stderr.as_str()),
            (
                2,
                "",
                format!("error: {message}\n\nFor more information, try '--help'.\n").as_str()
            ),
            "{args:?}"
        );
    }
    let missing = run(&store, &["expire"]);
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("--as-of <T>"),
        "names the missing flag: {}",
        missing.stderr
    );
    let nowhere = tmp.path().join("nowhere");
    let r = run(&nowhere, &["expire", "--as-of", AS_OF]);
    assert_eq!(
        (r.code, r.stderr),
        (
            2,
            format!(
                "error: no store at {} (run a command that writes, e.g. `import` or `demo`, to create one)\n",
                nowhere.display()
            )
        )
    );
    assert!(!nowhere.exists(), "no store is created");
    assert_eq!(head(&store), 11, "nothing written");

    let first = run(&store, &["expire", "--as-of", AS_OF, "--id", "nightly"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(head(&store), 14);
    let reused = run(
        &store,
        &[
            "expire",
            "--as-of",
            "2019-07-21T00:00:00Z",
            "--id",
            "nightly",
        ],
    );
    assert_eq!(
        (reused.code, reused.stdout.as_str(), reused.stderr.as_str()),
        (1, "", "id nightly already used for a different command\n")
    );
    let reused = run(
        &store,
        &[
            "expire",
            "--as-of",
            "2019-07-21T00:00:00Z",
            "--id",
            "nightly",
            "--json",
        ],
    );
    assert_eq!(reused.code, 1);
    assert_eq!(
        json(&reused.stdout),
        json!({"id": "nightly", "rejected": "id nightly already used for a different command"})
    );
    assert_eq!(head(&store), 14, "a refused id writes nothing");
    let help = run(&store, &["expire", "--help"]);
    assert_eq!(help.code, 0);
    assert!(
        help.stdout
            .contains("Example:\n  migrate-tool expire --as-of 2019-07-31T00:00:00+09:00\n"),
        "{}",
        help.stdout
    );
}
