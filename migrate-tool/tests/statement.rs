//! `migrate-tool statement`: a member's statement for an auditor without a server. Proves, from
//! the binary: the exact lines of a small history in each format (positions, deltas, running
//! balances, a command id with a comma and quotes in CSV, JSON that parses); that `--from` and
//! `--to` choose lines by business time while every balance stays the real running balance;
//! the exits of a member without a wallet (1) and of bad arguments (2); that a member with
//! 200,000 events is printed whole with its final balance in memory that does not grow with the
//! history; and that it reads beside a writer (from the segment files) lines that agree with
//! the final statement.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ledger::domain::{Command as WalletCommand, MemberId};
use ledger::LedgerOptions;
use projections::WalletService;
use serde_json::{json, Value};

mod common;
use common::{json, ok, run_with};

/// A command id with a comma and quotes: CSV must quote it and double its quotes.
const ODD_ID: &str = r#"order 7, "gift""#;

/// m1's small history, with m2 beside it. The last top-up is back-dated to before every other
/// event: business time need not grow along a stream, so a window is a filter per line.
fn small_history() -> String {
    [
        json!({"id":"o1","type":"open_wallet","member":"m1","at":"2019-07-01T10:00:00+09:00"}),
        json!({"id":"o2","type":"open_wallet","member":"m2","at":"2019-07-01T10:01:00+09:00"}),
        json!({"id":"u1","type":"top_up","member":"m1","amount":5000,"at":"2019-07-01T10:02:00+09:00"}),
        json!({"id":ODD_ID,"type":"pay","member":"m1","amount":700,"merchant":"7-Eleven","at":"2019-07-02T10:00:00+09:00"}),
        json!({"id":"e1","type":"earn_miles","member":"m1","miles":40,"expires_at":"2019-08-01T00:00:00+09:00","at":"2019-07-03T10:00:00+09:00"}),
        json!({"id":"x1","type":"transfer","from":"m1","to":"m2","amount":1000,"at":"2019-07-04T10:00:00+09:00"}),
        json!({"id":"f1","type":"refund","member":"m1","payment":ODD_ID,"amount":200,"at":"2019-07-05T10:00:00+09:00"}),
        json!({"id":"late","type":"top_up","member":"m1","amount":300,"at":"2019-07-01T09:00:00+09:00"}),
    ]
    .iter()
    .map(|c| format!("{c}\n"))
    .collect()
}

/// m1's statement of [`small_history`], by hand: (position, at, type, command, delta, balance).
/// A transfer appends the payer's event, then the payee's (position 7 is m2's).
const SMALL: [(u64, &str, &str, &str, i64, u64); 7] = [
    (1, "2019-07-01T01:00:00Z", "wallet.opened", "o1", 0, 0),
    (
        3,
        "2019-07-01T01:02:00Z",
        "wallet.topped_up",
        "u1",
        5000,
        5000,
    ),
    (4, "2019-07-02T01:00:00Z", "wallet.paid", ODD_ID, -700, 4300),
    (
        5,
        "2019-07-03T01:00:00Z",
        "wallet.miles_earned",
        "e1",
        0,
        4300,
    ),
    (
        6,
        "2019-07-04T01:00:00Z",
        "wallet.transferred_out",
        "x1",
        -1000,
        3300,
    ),
    (
        8,
        "2019-07-05T01:00:00Z",
        "wallet.refunded",
        "f1",
        200,
        3500,
    ),
    (
        9,
        "2019-07-01T00:00:00Z",
        "wallet.topped_up",
        "late",
        300,
        3800,
    ),
];

fn small_store(dir: &Path) -> std::path::PathBuf {
    let store = dir.join("store");
    let r = run_with(&store, &["import", "-"], Some(small_history().as_bytes()));
    assert_eq!(
        r.stdout, "applied 8, duplicate 0, rejected 0\n",
        "{}",
        r.stderr
    );
    store
}

/// The `lines` of a `statement --json` document as [`SMALL`]'s tuples.
fn json_lines(doc: &Value) -> Vec<(u64, String, String, String, i64, u64)> {
    doc["lines"]
        .as_array()
        .expect("lines is an array")
        .iter()
        .map(|l| {
            (
                l["position"].as_u64().expect("position"),
                l["at"].as_str().expect("at").to_owned(),
                l["event_type"].as_str().expect("event_type").to_owned(),
                l["command_id"].as_str().expect("command_id").to_owned(),
                l["delta_yen"].as_i64().expect("delta_yen"),
                l["balance_yen"].as_u64().expect("balance_yen"),
            )
        })
        .collect()
}

fn owned(
    lines: &[(u64, &str, &str, &str, i64, u64)],
) -> Vec<(u64, String, String, String, i64, u64)> {
    lines
        .iter()
        .map(|&(p, at, t, id, d, b)| (p, at.to_owned(), t.to_owned(), id.to_owned(), d, b))
        .collect()
}

// Proves the statement of a small history has the hand-computed lines in each format: the
// human table with its closing line, the JSON document (parsed), and CSV with the header row
// and the odd command id quoted with its quotes doubled. (Planted defects caught: a field with
// a comma or quote left unquoted; a refund counted as a payment in `balance_delta`.)
#[test]
fn statement_prints_positions_deltas_and_running_balances_in_every_format() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let store = small_store(tmp.path());

    let human = ok(&store, &["statement", "m1"]).stdout;
    let expected_human = "  position  at                           event type                     delta yen     balance yen  command id\n\
        \x20        1  2019-07-01T01:00:00Z         wallet.opened                          0               0  o1\n\
        \x20        3  2019-07-01T01:02:00Z         wallet.topped_up                   +5000            5000  u1\n\
        \x20        4  2019-07-02T01:00:00Z         wallet.paid                         -700            4300  order 7, \"gift\"\n\
        \x20        5  2019-07-03T01:00:00Z         wallet.miles_earned                    0            4300  e1\n\
        \x20        6  2019-07-04T01:00:00Z         wallet.transferred_out             -1000            3300  x1\n\
        \x20        8  2019-07-05T01:00:00Z         wallet.refunded                     +200            3500  f1\n\
        \x20        9  2019-07-01T00:00:00Z         wallet.topped_up                    +300            3800  late\n\
        final balance of m1: 3800 yen after 7 wallet events (last at position 9)\n";
    assert_eq!(human, expected_human);

    let doc = json(&ok(&store, &["statement", "m1", "--json"]).stdout);
    assert_eq!(json_lines(&doc), owned(&SMALL));
    assert_eq!(doc["member"], "m1");
    assert_eq!(doc["from"], Value::Null);
    assert_eq!(doc["events"], 7);
    assert_eq!(doc["lines_shown"], 7);
    assert_eq!(doc["last_position"], 9);
    assert_eq!(doc["final_balance_yen"], 3800);
    let shown = json(&ok(&store, &["show", "m1", "--json"]).stdout);
    assert_eq!(
        shown["balance"], doc["final_balance_yen"],
        "the wallet's balance"
    );

    let csv = ok(&store, &["statement", "m1", "--csv"]).stdout;
    assert_eq!(
        csv,
        "position,at,event_type,command_id,delta_yen,balance_yen\n\
         1,2019-07-01T01:00:00Z,wallet.opened,o1,0,0\n\
         3,2019-07-01T01:02:00Z,wallet.topped_up,u1,5000,5000\n\
         4,2019-07-02T01:00:00Z,wallet.paid,\"order 7, \"\"gift\"\"\",-700,4300\n\
         5,2019-07-03T01:00:00Z,wallet.miles_earned,e1,0,4300\n\
         6,2019-07-04T01:00:00Z,wallet.transferred_out,x1,-1000,3300\n\
         8,2019-07-05T01:00:00Z,wallet.refunded,f1,200,3500\n\
         9,2019-07-01T00:00:00Z,wallet.topped_up,late,300,3800\n"
    );
}

// Proves `--from`/`--to` choose lines by each line's business time (both ends inclusive, the
// back-dated last top-up falls in the first day) while the balances shown are the running
// balance from the wallet's first event, and the final balance is the wallet's. (Planted
// defects caught: `--from` taken as exclusive; the window applied to the records before the
// running balance, which `RunningBalance` refuses as a version gap: exit 2.)
#[test]
fn from_and_to_choose_lines_but_keep_the_true_running_balance() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let store = small_store(tmp.path());
    let window = |args: &[&str]| {
        let mut all = vec!["statement", "m1", "--json"];
        all.extend_from_slice(args);
        json(&ok(&store, &all).stdout)
    };

    let middle = window(&[
        "--from",
        "2019-07-02T10:00:00+09:00",
        "--to",
        "2019-07-04T10:00:00+09:00",
    ]);
    assert_eq!(json_lines(&middle), owned(&SMALL[2..5]));
    assert_eq!(middle["from"], "2019-07-02T01:00:00Z");
    assert_eq!(middle["to"], "2019-07-04T01:00:00Z");
    assert_eq!(middle["lines_shown"], 3);
    assert_eq!(middle["events"], 7);
    assert_eq!(middle["final_balance_yen"], 3800);

    let first_day = window(&["--to", "2019-07-01T23:59:59+09:00"]);
    let want = [SMALL[0], SMALL[1], SMALL[6]];
    assert_eq!(json_lines(&first_day), owned(&want));

    let after = window(&["--from", "2019-07-05T10:00:00+09:00"]);
    assert_eq!(json_lines(&after), owned(&SMALL[5..6]));

    let none = window(&["--from", "2030-01-01T00:00:00Z"]);
    assert_eq!(none["lines"], json!([]));
    assert_eq!(none["final_balance_yen"], 3800);

    let human = ok(
        &store,
        &[
            "statement",
            "m1",
            "--from",
            "2019-07-04T10:00:00+09:00",
            "--to",
            "2019-07-04T10:00:00+09:00",
        ],
    )
    .stdout;
    assert!(
        human.ends_with(
            "         6  2019-07-04T01:00:00Z         wallet.transferred_out             -1000            3300  x1\n\
             final balance of m1: 3800 yen after 7 wallet events (last at position 9); 1 line shown with business time from 2019-07-04T01:00:00Z to 2019-07-04T01:00:00Z\n"
        ),
        "{human}"
    );
    let csv = ok(
        &store,
        &["statement", "m1", "--csv", "--from", "2019-07-05T00:00:00Z"],
    )
    .stdout;
    assert_eq!(
        csv,
        "position,at,event_type,command_id,delta_yen,balance_yen\n8,2019-07-05T01:00:00Z,wallet.refunded,f1,200,3500\n"
    );
}

// Proves a member without a wallet (registered only, or unknown) exits 1 with the message of
// `show` and nothing on stdout, and bad arguments exit 2 naming the flag and the rule, with
// nothing on stdout. (Planted defect caught: the JSON head written before knowing the member
// has a wallet.)
#[test]
fn no_wallet_exits_1_and_bad_arguments_exit_2() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let store = small_store(tmp.path());
    let register = r#"{"id":"r9","type":"register","member":"m9","login":"m9@example.jp"}"#;
    let r = run_with(&store, &["import", "-"], Some(register.as_bytes()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for member in ["m9", "nobody"] {
        for format in [None, Some("--json"), Some("--csv")] {
            let mut args = vec!["statement", member];
            args.extend(format);
            let r = run_with(&store, &args, None);
            assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
            assert_eq!(r.stdout, "", "{args:?}");
            assert_eq!(r.stderr, format!("member {member} has no wallet\n"));
        }
    }
    for (args, message) in [
        (
            vec!["statement", "m1", "--from", "2019-07-05T00:00:00Z", "--to", "2019-07-04T00:00:00Z"],
            "error: --from 2019-07-05T00:00:00Z is after --to 2019-07-04T00:00:00Z: the window of business times would be empty\n",
        ),
        (
            vec!["statement", "m1", "--to", "tomorrow"],
            "error: --to: `tomorrow` is not an RFC 3339 time (e.g. 2019-07-30T13:00:00+09:00)\n",
        ),
        (
            vec!["statement", "m 1"],
            "error: member id must match [A-Za-z0-9._-]{1,64}, got \"m 1\"\n",
        ),
    ] {
        let r = run_with(&store, &args, None);
        assert_eq!((r.code, r.stdout.as_str(), r.stderr.as_str()), (2, "", message), "{args:?}");
    }
    let r = run_with(&store, &["statement", "m1", "--json", "--csv"], None);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("'--json' cannot be used with '--csv'"),
        "{}",
        r.stderr
    );
}

fn command(line: &str) -> WalletCommand {
    WalletCommand::parse_json_line(line).unwrap_or_else(|e| panic!("{line}: {e:?}"))
}

/// Submits `commands` in order through the writer's queue, at most 4,096 waiting at once (so
/// the writer group-commits them), and waits for every one.
fn submit_all(service: &WalletService, commands: impl Iterator<Item = WalletCommand>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime for the submits");
    runtime.block_on(async {
        let mut waiting = VecDeque::new();
        for cmd in commands {
            waiting.push_back(service.queue(&cmd).await.expect("the command is queued"));
            if waiting.len() >= 4_096 {
                let oldest = waiting.pop_front().expect("the window is full");
                oldest.outcome().await.expect("the command applies");
            }
        }
        for queued in waiting {
            queued.outcome().await.expect("the command applies");
        }
    });
}

/// Events of the long history's member, besides its opening.
const LONG_EVENTS: u64 = 200_000;

/// The `k`-th command of the long history: top-ups of 1..=1000 yen, every tenth a payment of
/// 5 yen instead (never more than the balance, which only grows by at least 1 in between).
fn long_command(member: &str, k: u64) -> WalletCommand {
    let at = "2020-01-01T00:00:00Z";
    let line = if k % 10 == 9 {
        format!(
            r#"{{"id":"{member}-{k}","type":"pay","member":"{member}","amount":5,"merchant":"kiosk","at":"{at}"}}"#
        )
    } else {
        format!(
            r#"{{"id":"{member}-{k}","type":"top_up","member":"{member}","amount":{},"at":"{at}"}}"#,
            k % 1000 + 1
        )
    };
    command(&line)
}

/// The balance after [`long_command`] 0..n, by arithmetic.
fn long_balance(n: u64) -> u64 {
    (0..n)
        .map(|k| if k % 10 == 9 { 0 } else { k % 1000 + 1 })
        .sum::<u64>()
        - (0..n).filter(|k| k % 10 == 9).count() as u64 * 5
}

/// Runs `migrate-tool --store STORE ARGS` with stdout into `out` and returns its exit code,
/// stderr and peak resident set size in KiB (from `wait4`'s rusage, which covers the whole
/// life of the process, not a sample).
// The child is reaped by `wait4` itself (std's `wait` would not give its rusage).
#[allow(clippy::zombie_processes)]
fn run_measured(store: &Path, args: &[&str], out: &Path) -> (i32, String, u64) {
    let mut cmd = common::command(store, args);
    let stderr_path = out.with_extension("stderr");
    cmd.stdout(std::fs::File::create(out).expect("create the output file"))
        .stderr(std::fs::File::create(&stderr_path).expect("create the stderr file"));
    let child = cmd.spawn().expect("the binary was built by cargo");
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero `rusage` is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not waited for yet (std's `Child` never waits unless
    // asked); `status` and `usage` are valid for writes for the call's duration.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status),
        "the statement was killed: {status}"
    );
    let stderr = std::fs::read_to_string(&stderr_path).expect("read stderr");
    let max_rss_kib = u64::try_from(usage.ru_maxrss).expect("ru_maxrss is not negative");
    (libc::WEXITSTATUS(status), stderr, max_rss_kib)
}

/// What a CSV statement file holds: its rows (without the header) and its last row's balance.
fn csv_rows(path: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(path).expect("read the CSV");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("position,at,event_type,command_id,delta_yen,balance_yen")
    );
    let mut rows = 0;
    let mut last = "";
    for line in lines {
        rows += 1;
        last = line;
    }
    let balance = last
        .rsplit(',')
        .next()
        .expect("a row")
        .parse()
        .expect("a balance");
    (rows, balance)
}

/// Headroom allowed between the peak memory of a statement of 200,001 lines and of one of 11
/// lines read from the same log (measured: the same to the KiB). The 200,001 lines held until
/// the end take about 9 MiB more.
const RSS_GROWTH_LIMIT_KIB: u64 = 4 * 1024;

// Proves a member with 200,000 events is printed whole (every line, the right final balance,
// in CSV and as one JSON document) and that its statement does not hold its history in
// memory: beside a writer both statements read every frame of the same log, and the peak RSS
// of the one printing 200,001 lines stays within 4 MiB of the one printing 11. (Planted defect
// caught: the lines collected into a Vec before being written: +8.7 MiB.)
#[test]
fn a_long_history_streams_in_memory_that_does_not_grow_with_it() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let store = tmp.path().join("store");
    let service = WalletService::open(&store, LedgerOptions::default()).expect("open the store");
    let opens = ["big", "small"].map(|m| {
        command(&format!(
            r#"{{"id":"open-{m}","type":"open_wallet","member":"{m}","at":"2020-01-01T00:00:00Z"}}"#
        ))
    });
    submit_all(&service, opens.into_iter());
    submit_all(
        &service,
        (0..LONG_EVENTS)
            .map(|k| long_command("big", k))
            .chain((0..10).map(|k| long_command("small", k))),
    );
    let big_balance = long_balance(LONG_EVENTS);
    let big = MemberId::new("big").expect("a valid member id");
    assert_eq!(
        service
            .wallet(&big)
            .expect("read")
            .expect("a wallet")
            .balance()
            .0,
        big_balance,
        "the arithmetic of the history agrees with the ledger"
    );

    // Beside the writer (this process holds the store): both read the whole log's segments.
    let (code, stderr, small_kib) = run_measured(
        &store,
        &["statement", "small", "--csv"],
        &tmp.path().join("small.csv"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("held by a writer"), "{stderr}");
    assert_eq!(
        csv_rows(&tmp.path().join("small.csv")),
        (11, long_balance(10))
    );
    let (code, stderr, big_kib) = run_measured(
        &store,
        &["statement", "big", "--csv"],
        &tmp.path().join("big.csv"),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("held by a writer"), "{stderr}");
    assert_eq!(
        csv_rows(&tmp.path().join("big.csv")),
        (LONG_EVENTS + 1, big_balance)
    );
    eprintln!(
        "peak RSS: statement of 11 lines {small_kib} KiB, of {} lines {big_kib} KiB",
        LONG_EVENTS + 1
    );
    assert!(
        big_kib <= small_kib + RSS_GROWTH_LIMIT_KIB,
        "the statement of {} lines peaked at {big_kib} KiB, the one of 11 lines at {small_kib} KiB: memory grows with the history",
        LONG_EVENTS + 1
    );
    drop(service);

    // Through the index (no writer), one JSON document that parses, with every line.
    let path = tmp.path().join("big.json");
    let (code, stderr, index_kib) = run_measured(&store, &["statement", "big", "--json"], &path);
    assert_eq!(code, 0, "{stderr}");
    // Not bounded here by the statement: the index engine keeps the pages it read in its own
    // bounded cache (ledger/src/engine/redb.rs, 512 MiB).
    eprintln!("peak RSS through the index, JSON: {index_kib} KiB");
    assert!(!stderr.contains("held by a writer"), "{stderr}");
    let doc = json(&std::fs::read_to_string(&path).expect("read the JSON"));
    let lines = doc["lines"].as_array().expect("lines");
    assert_eq!(lines.len() as u64, LONG_EVENTS + 1);
    assert_eq!(doc["final_balance_yen"], big_balance);
    assert_eq!(lines[lines.len() - 1]["balance_yen"], big_balance);
    assert_eq!(doc["events"], LONG_EVENTS + 1);
}

// Proves a statement read beside a running writer (from the segment files, the index being
// locked) is a consistent prefix of the member's statement: at least every event acknowledged
// before it started, each balance the one before plus its delta, and line for line what the
// final statement holds once the writer stopped. (Planted defects caught: the segment read
// letting m2's events through, which the running balance refuses: exit 2; a segment read cut
// short: fewer lines than m1's acknowledged events.)
#[test]
fn a_statement_beside_a_writer_is_a_prefix_of_the_final_one() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let store = tmp.path().join("store");
    let service = WalletService::open(&store, LedgerOptions::default()).expect("open the store");
    for m in ["m1", "m2"] {
        service
            .submit_blocking(&command(&format!(
                r#"{{"id":"open-{m}","type":"open_wallet","member":"{m}","at":"2020-01-01T00:00:00Z"}}"#
            )))
            .expect("open a wallet");
    }
    let stop = Arc::new(AtomicBool::new(false));
    // m1's events acknowledged so far (its opening included).
    let acked = Arc::new(AtomicU64::new(1));
    let writer = {
        let (service, stop, acked) = (service.clone(), Arc::clone(&stop), Arc::clone(&acked));
        std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(Ordering::SeqCst) {
                // m2's events go between m1's: the segment read must skip them.
                for member in ["m1", "m2"] {
                    service
                        .submit_blocking(&long_command(member, k))
                        .expect("the writer's command applies");
                }
                acked.store(k + 2, Ordering::SeqCst);
                k += 1;
            }
        })
    };

    let mut read = Vec::new();
    for round in 0..8 {
        let before = acked.load(Ordering::SeqCst);
        let r = run_with(&store, &["statement", "m1", "--json"], None);
        assert_eq!(r.code, 0, "round {round}: {}", r.stderr);
        assert!(
            r.stderr.contains("held by a writer"),
            "round {round}: {}",
            r.stderr
        );
        let doc = json(&r.stdout);
        let lines = doc["lines"].as_array().expect("lines").clone();
        assert!(
            lines.len() as u64 >= before,
            "round {round}: {} lines, {before} of m1's events were acknowledged before",
            lines.len()
        );
        let mut balance = 0i64;
        for line in &lines {
            balance += line["delta_yen"].as_i64().expect("delta");
            assert_eq!(
                line["balance_yen"].as_i64(),
                Some(balance),
                "round {round}: {line}"
            );
        }
        assert_eq!(doc["final_balance_yen"].as_i64(), Some(balance));
        read.push(lines);
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("the writer thread ends");
    drop(service);

    let whole = json(&ok(&store, &["statement", "m1", "--json"]).stdout);
    let whole = whole["lines"].as_array().expect("lines");
    for (round, lines) in read.iter().enumerate() {
        assert_eq!(lines[..], whole[..lines.len()], "round {round} is a prefix");
    }
    assert!(read.windows(2).all(|w| w[0].len() <= w[1].len()));
}
