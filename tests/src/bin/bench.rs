//! `bench`: the benchmark suite driver (issue 7). One command, `bash scripts/bench.sh`, builds
//! the release binaries and runs this program, which prints the machine's facts, runs every
//! SPEC section 6 workload as a child process with `--json`, and prints one summary table: each
//! figure with its unit, the baseline measured in the same run, the ratio, the target and
//! MET / MISSED.
//!
//! Children (all parsed from their `--json` document, never from text):
//! - `bench_append --backend redb` and the sled build of `bench_append --backend sled`
//!   (append-1 / append-100 at 1, 8, 64 writers; raw write + fdatasync baseline in the same run);
//! - `scripts/pg_peer.sh --workload all` (the PostgreSQL peer: the same append workload, and a
//!   PostgreSQL wallet doing the commands mix, compared with `commands`), unless `--no-pg`;
//! - `bench_wallet commands` (64 clients, decide + append + views; raw-append baseline);
//! - `bench_wallet commands-holds` (issue 15: the commands mix with SPEC 7 holds on against holds
//!   off, alternating in one run; baseline: holds off);
//! - `bench_wallet history` (the commands mix, 64 clients on one member with H events of
//!   history; baseline: H = 0 in the same run);
//! - `bench_wallet hot` (64 clients transferring out of one wallet; baseline: the same load out of
//!   one wallet per client, in the same run);
//! - `bench_http` (issue 14: the commands mix through walletd on loopback at 64 connections
//!   against the in-process figure of the same run; `GET wallet`; SSE fan-out to 100
//!   subscribers under the commands load), when `walletd` is built beside it;
//! - `bench_wallet rebuild` (a kept store of >= 10M events; raw-scan baseline);
//! - the operator steps on a `migrate-tool demo` store: demo, verify, a raw scan
//!   (`bench_wallet scan`, the baseline of verify / check), check, `bench_wallet digest`
//!   (digest compare and one-changed-member localisation), `reset-credentials --all` with its
//!   gate, rebuild, check; with `--full` again at 16.5M members (the 7Pay scale).
//!
//! Each child's wall time is measured here, and its peak RSS is `VmHWM` from
//! `/proc/<pid>/status`, polled every 100 ms, cross-checked with `ru_maxrss` from `/usr/bin/time`
//! when that exists (the larger is reported). A child that exits non-zero or prints no JSON is
//! reported as FAILED with the tail of its stderr; a figure that was not measured says so.
//!
//! Run: `bash scripts/bench.sh [--quick | --full] [--dir DIR] [--no-pg] [--json FILE]
//! [--only http,commands,...]`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use ledger_tests::bench::fmt::{
    fmt_bytes, fmt_kib, fmt_secs, fmt_us, pct, short_count, thousands, times,
};
use ledger_tests::bench::json::{f64_at as f, u64_at as u};
use ledger_tests::bench::machine::{disk_bytes, filesystem};
use ledger_tests::bench::runner::{Child, Runner};
use ledger_tests::bench::table::{Row, Table, Verdict};
use ledger_tests::procfs;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "benchmark suite driver: every SPEC section 6 workload, one summary table")]
struct Args {
    /// Short runs for a smoke test (1 s appends, small stores).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Also run the 7Pay steps at 16.5M members (about 1-1.5 h and ~25 GB of disk).
    #[arg(long)]
    full: bool,
    /// Where stores, logs and kept stores go.
    #[arg(long, default_value = "/tmp/ledger-bench")]
    dir: PathBuf,
    /// Skip the PostgreSQL peer.
    #[arg(long)]
    no_pg: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Directory of the release binaries (bench_append, bench_wallet, migrate-tool); default:
    /// this program's directory.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// `bench_append` built with `--features sled` (default: <bin-dir>/../bench-sled/release/bench_append).
    #[arg(long)]
    sled_bench: Option<PathBuf>,
    /// The PostgreSQL peer script.
    #[arg(long, default_value = "scripts/pg_peer.sh")]
    pg_script: PathBuf,
    /// Seconds per append / commands run (default 5; 1 with --quick).
    #[arg(long)]
    seconds: Option<f64>,
    /// History lengths of the `history` workload, comma-separated (default
    /// 0,10000,100000,1000000; 0,10000 with --quick).
    #[arg(long)]
    histories: Option<String>,
    /// Events in the rebuild store (default 10,000,000; 200,000 with --quick).
    #[arg(long)]
    rebuild_events: Option<u64>,
    /// Members in the rebuild store (default 100,000; 5,000 with --quick).
    #[arg(long)]
    rebuild_members: Option<u64>,
    /// Members of the operator-steps demo store (default 200,000; 5,000 with --quick).
    #[arg(long)]
    demo_members: Option<u64>,
    /// Events per member of the operator-steps demo store.
    #[arg(long, default_value_t = 8)]
    demo_events_per_member: u32,
    /// Members of the --full 7Pay store.
    #[arg(long, default_value_t = 16_500_000)]
    full_members: u64,
    /// Events per member of the --full 7Pay store (1 keeps it near 20 GB).
    #[arg(long, default_value_t = 1)]
    full_events_per_member: u32,
    /// Keep the operator-steps stores (the rebuild store is always kept for reuse).
    #[arg(long)]
    keep_stores: bool,
    /// Run only these workloads (comma-separated): append, commands, holds, history, http,
    /// rebuild, reopen, operator (append includes the PostgreSQL peer unless --no-pg).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// workloads

struct Plan {
    seconds: f64,
    histories: String,
    rebuild_events: u64,
    rebuild_members: u64,
    demo_members: u64,
}

/// The append runs of one `bench_append --json` document, keyed by (batch, writers).
fn append_runs(doc: &Value) -> Vec<Value> {
    doc.get("runs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn find_run<'a>(runs: &'a [Value], batch: u64, writers: u64, batch_key: &str) -> Option<&'a Value> {
    runs.iter().find(|r| {
        u(r, batch_key).or_else(|| {
            r.get("workload")
                .and_then(Value::as_str)
                .and_then(|w| w.strip_prefix("append-"))
                .and_then(|k| k.parse().ok())
        }) == Some(batch)
            && u(r, "writers") == Some(writers)
    })
}

const WRITERS: [u64; 3] = [1, 8, 64];
const BATCHES: [u64; 2] = [1, 100];

fn append_target(batch: u64, writers: u64) -> Option<(&'static str, f64, Option<f64>, f64)> {
    // (text, min events/s, max p99 µs, min ratio of raw)
    match (batch, writers) {
        // Issue 12 (the segment log).
        (1, 64) => Some((
            "issue 12: >= 120k ev/s, p99 <= 5 ms",
            120_000.0,
            Some(5_000.0),
            0.0,
        )),
        (100, 64) => Some(("issue 12: >= 1M ev/s", 1_000_000.0, None, 0.0)),
        _ => None,
    }
}

fn append_rows(table: &mut Table, backend: &str, durability: &str, child: &Child) {
    let section = format!("append, {backend} ({durability}); baseline: one thread write + fdatasync of the same record bytes, batch = C x K events, for the same time");
    let runs = child.json.as_ref().map(append_runs).unwrap_or_default();
    for batch in BATCHES {
        for writers in WRITERS {
            let name = format!("append-{batch} C={writers} {backend}");
            let target = if backend == "redb" {
                append_target(batch, writers)
            } else {
                None
            };
            let target_text = target.map_or("-", |t| t.0);
            if let Some(why) = child.failure() {
                let failed = !child.was_not_built();
                table.missing(&section, name, target_text, &why, failed);
                continue;
            }
            let Some(r) = find_run(&runs, batch, writers, "events_per_call") else {
                table.missing(&section, name, target_text, "no such run in the JSON", true);
                continue;
            };
            let rate = f(r, "events_per_s");
            let p99 = f(r, "ack_p99_us");
            let ratio = f(r, "ratio_vs_raw_nominal");
            let verdict = match target {
                None => Verdict::Info,
                Some((_, min_rate, max_p99, min_ratio)) => {
                    let ok =
                        rate >= min_rate && max_p99.is_none_or(|m| p99 <= m) && ratio >= min_ratio;
                    if ok {
                        Verdict::Met
                    } else {
                        Verdict::Missed
                    }
                }
            };
            table.add(
                &section,
                name,
                format!(
                    "{} ev/s, p50 {}, p99 {}",
                    thousands(rate),
                    fmt_us(f(r, "ack_p50_us")),
                    fmt_us(p99)
                ),
                format!(
                    "raw {} ev/s (batch {}, sync p50 {})",
                    thousands(f(r, "raw_nominal_events_per_s")),
                    u(r, "raw_nominal_batch_events").unwrap_or(0),
                    fmt_us(f(r, "raw_nominal_sync_p50_us"))
                ),
                format!(
                    "{} of raw ({} vs batch {} = avg group)",
                    pct(ratio),
                    pct(f(r, "ratio_vs_raw_avg")),
                    u(r, "raw_avg_batch_events").unwrap_or(0)
                ),
                target_text,
                verdict,
                r.clone(),
            );
        }
    }
}

fn ratio_rows(table: &mut Table, redb: &Child, sled: &Child) {
    let section = "redb vs sled (same run, same workload)";
    for batch in BATCHES {
        for writers in WRITERS {
            let name = format!("append-{batch} C={writers} redb/sled");
            let get = |c: &Child| {
                c.json.as_ref().and_then(|d| {
                    find_run(&append_runs(d), batch, writers, "events_per_call").cloned()
                })
            };
            match (get(redb), get(sled)) {
                (Some(a), Some(b)) => {
                    let (ra, rb) = (f(&a, "events_per_s"), f(&b, "events_per_s"));
                    table.add(
                        section,
                        name,
                        format!("redb {} ev/s", thousands(ra)),
                        format!("sled {} ev/s", thousands(rb)),
                        times(ra / rb),
                        "-",
                        Verdict::Info,
                        json!({"redb_events_per_s": ra, "sled_events_per_s": rb, "ratio": ra / rb}),
                    );
                }
                _ => {
                    let why = redb
                        .failure()
                        .or_else(|| sled.failure())
                        .unwrap_or_else(|| "a run is missing".into());
                    table.missing(section, name, "-", &why, true);
                }
            }
        }
    }
}

fn pg_rows(table: &mut Table, redb: &Child, pg: Result<&Child, String>) {
    let section = "PostgreSQL peer (same append workload, same box, same run); ratio = ours (redb) / PostgreSQL";
    if let Ok(c) = pg {
        if let Some(doc) = &c.json {
            let settings = doc
                .get("settings")
                .map(Value::to_string)
                .unwrap_or_default();
            let version = match doc.get("version") {
                Some(Value::String(v)) => v.clone(),
                Some(v) => v.to_string(),
                None => "unknown".into(),
            };
            table.rows.push(Row {
                section: section.into(),
                name: "PostgreSQL".into(),
                figure: format!("version {version}"),
                baseline: "-".into(),
                ratio: "-".into(),
                target: "-".into(),
                verdict: Verdict::Info,
                note: format!("settings {settings}"),
                values: json!({"version": doc.get("version"), "settings": doc.get("settings"), "cores": doc.get("cores")}),
            });
        }
    }
    for batch in BATCHES {
        for writers in WRITERS {
            let name = format!("append-{batch} C={writers} ours/PostgreSQL");
            // Issue 12: append-1 C=64 >= 4x, C=1 >= 1.3x; append-100 C=64 >= 5x.
            let (target_text, min) = match (batch, writers) {
                (1, 64) => ("ours >= 4x", 4.0),
                (1, 1) => ("ours >= 1.3x", 1.3),
                (100, 64) => ("ours >= 5x", 5.0),
                _ => ("-", 0.0),
            };
            let pg = match &pg {
                Err(why) => {
                    table.missing(section, name, target_text, why, false);
                    continue;
                }
                Ok(c) => *c,
            };
            if let Some(why) = pg.failure() {
                table.missing(section, name, target_text, &why, true);
                continue;
            }
            let runs = pg.json.as_ref().map(append_runs).unwrap_or_default();
            let Some(p) = find_run(&runs, batch, writers, "batch") else {
                table.missing(
                    section,
                    name,
                    target_text,
                    "no such run in the peer's JSON",
                    true,
                );
                continue;
            };
            let ours = redb.json.as_ref().and_then(|d| {
                find_run(&append_runs(d), batch, writers, "events_per_call").cloned()
            });
            let pg_rate = f(p, "events_per_s");
            let pg_text = format!(
                "PostgreSQL {} ev/s, p50 {}, p99 {}",
                thousands(pg_rate),
                fmt_us(f(p, "p50_us")),
                fmt_us(f(p, "p99_us"))
            );
            match ours {
                Some(o) => {
                    let r = f(&o, "events_per_s") / pg_rate;
                    table.add(
                        section,
                        name,
                        pg_text,
                        format!("ours {} ev/s", thousands(f(&o, "events_per_s"))),
                        times(r),
                        target_text,
                        if r >= min { Verdict::Met } else { Verdict::Missed },
                        json!({"postgresql": p, "ours_events_per_s": f(&o, "events_per_s"), "ratio": r}),
                    );
                }
                None => {
                    let row = table.add(
                        section,
                        name,
                        pg_text,
                        "ours: not measured",
                        "?",
                        target_text,
                        Verdict::NotMeasured,
                        json!({"postgresql": p}),
                    );
                    row.note = redb
                        .failure()
                        .unwrap_or_else(|| "our run is missing".into());
                }
            }
        }
    }
}

/// The document of a child that succeeded, or `None` after adding a row saying why it has none.
fn child_doc<'a>(
    table: &mut Table,
    section: &str,
    name: &str,
    target: &str,
    c: &'a Child,
) -> Option<&'a Value> {
    if let Some(why) = c.failure() {
        table.missing(section, name, target, &why, true);
        return None;
    }
    Some(
        c.json
            .as_ref()
            .expect("a child that succeeded has its JSON document"),
    )
}

fn commands_row(table: &mut Table, c: &Child) {
    let section = "commands: decide + durable append + views, 64 clients; baseline: the same calls as plain durable appends, no hook, no decide";
    let name = "commands C=64";
    let target = ">= 40,000 commands/s";
    let Some(d) = child_doc(table, section, name, target, c) else {
        return;
    };
    let rate = f(d, "commands_per_s");
    table.add(
        section,
        name,
        format!(
            "{} commands/s, p50 {}, p99 {}, peak RSS {}",
            thousands(rate),
            fmt_us(f(d, "p50_us")),
            fmt_us(f(d, "p99_us")),
            fmt_kib(u(d, "peak_rss_kib"))
        ),
        format!(
            "raw appends {} calls/s, p99 {}",
            thousands(f(d, "baseline_calls_per_s")),
            fmt_us(f(d, "baseline_p99_us"))
        ),
        format!("{} of raw", pct(f(d, "ratio_vs_baseline"))),
        target,
        if rate >= 40_000.0 {
            Verdict::Met
        } else {
            Verdict::Missed
        },
        d.clone(),
    );
}

/// Our `commands` (64 clients) against the PostgreSQL wallet peer doing the same mix at 64
/// clients (`pg_peer.sh --workload wallet`: one transaction per command, SELECT ... FOR UPDATE the
/// wallet rows, INSERT the events, UPDATE the balance).
fn pg_wallet_row(table: &mut Table, ours: &Child, pg: Result<&Child, String>) {
    let section = "commands vs PostgreSQL wallet (the commands mix, 64 clients, same box, same run); ratio = ours / PostgreSQL";
    let name = "commands C=64 ours/PostgreSQL wallet";
    let target = "ours >= 3x";
    let pg = match pg {
        Err(why) => return table.missing(section, name, target, &why, false),
        Ok(c) => c,
    };
    if let Some(why) = pg.failure() {
        return table.missing(section, name, target, &why, true);
    }
    let runs = pg
        .json
        .as_ref()
        .and_then(|d| d.get("wallet_runs"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(p) = runs.iter().find(|r| u(r, "writers") == Some(64)) else {
        return table.missing(
            section,
            name,
            target,
            "no C=64 wallet run in the peer's JSON",
            true,
        );
    };
    let pg_rate = f(p, "commands_per_s");
    let pg_text = format!(
        "PostgreSQL wallet {} commands/s, p50 {}, p99 {}",
        thousands(pg_rate),
        fmt_us(f(p, "p50_us")),
        fmt_us(f(p, "p99_us"))
    );
    if let Some(why) = ours.failure() {
        let row = table.add(
            section,
            name,
            pg_text,
            "ours: not measured",
            "?",
            target,
            Verdict::NotMeasured,
            json!({"postgresql": p}),
        );
        row.note = why;
        return;
    }
    let d = ours.json.as_ref().expect("ok implies JSON");
    let rate = f(d, "commands_per_s");
    let r = rate / pg_rate;
    table.add(
        section,
        name,
        pg_text,
        format!("ours {} commands/s", thousands(rate)),
        times(r),
        target,
        if r >= 3.0 {
            Verdict::Met
        } else {
            Verdict::Missed
        },
        json!({"postgresql": p, "ours_commands_per_s": rate, "ratio": r}),
    );
}

/// `history` / `hot` failures of a `bench_wallet` load document: `rejected 0, other 0` and the
/// first message of each kind that occurred.
fn failures_text(load: &Value) -> (u64, String, Vec<String>) {
    let failures = &load["failures"];
    let mut counts = Vec::new();
    let mut firsts = Vec::new();
    for kind in ["rejected", "other"] {
        let n = u(&failures[kind], "count").unwrap_or(0);
        counts.push(format!("{kind} {n}"));
        if n > 0 {
            firsts.push(format!(
                "{kind} {n}, first: {}",
                failures[kind]["first"].as_str().unwrap_or("?")
            ));
        }
    }
    let total = u(failures, "total").unwrap_or(0);
    (total, counts.join(", "), firsts)
}

fn history_rows(table: &mut Table, c: &Child) {
    let section = "history: the commands mix, 64 clients all on one member with H events of history (bench_wallet history); baseline: H = 0 in the same run";
    let target = "H=1M >= 67% of H=0 (within 1.5x), 0 failures";
    let Some(d) = child_doc(table, section, "history C=64", target, c) else {
        return;
    };
    let fresh = f(d, "fresh_commands_per_s");
    let min_ratio = f(d, "target_ratio_min");
    let points = d
        .get("points")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut judged = false;
    for p in &points {
        let h = u(p, "history").unwrap_or(0);
        let name = format!("history H={} C=64", short_count(h));
        let is_target = h == 1_000_000;
        judged |= is_target;
        let row_target = if is_target { target } else { "-" };
        if p.get("measured").and_then(Value::as_bool) != Some(true) {
            let why = p["error"].as_str().unwrap_or("not measured");
            table.missing(section, name, row_target, why, true);
            continue;
        }
        let rate = f(p, "commands_per_s");
        let ratio = f(p, "ratio_vs_fresh");
        let (failed, counts, firsts) = failures_text(p);
        let verdict = if !is_target {
            Verdict::Info
        } else if ratio >= min_ratio && failed == 0 {
            Verdict::Met
        } else {
            Verdict::Missed
        };
        let applied = u(p, "commands").unwrap_or(0) > 0;
        let row = table.add(
            section,
            name,
            format!(
                "{} commands/s, p50 {}, p99 {}; failures: {counts}",
                thousands(rate),
                if applied {
                    fmt_us(f(p, "p50_us"))
                } else {
                    "-".into()
                },
                if applied {
                    fmt_us(f(p, "p99_us"))
                } else {
                    "-".into()
                },
            ),
            format!("H=0 {} commands/s", thousands(fresh)),
            format!("{} of H=0", pct(ratio)),
            row_target,
            verdict,
            p.clone(),
        );
        let mut note = firsts.join("; ");
        let fallbacks = u(p, "coupon_fallbacks").unwrap_or(0);
        if fallbacks > 0 {
            if !note.is_empty() {
                note.push_str("; ");
            }
            let _ = write!(
                note,
                "{fallbacks} redeem_coupon fell back to top_up (coupons used up)"
            );
        }
        row.note = note;
    }
    if points.is_empty() {
        table.missing(
            section,
            "history C=64",
            target,
            "the child reported no history points",
            true,
        );
    } else if !judged {
        if let Some(last) = table.rows.last_mut() {
            let sep = if last.note.is_empty() { "" } else { "; " };
            last.note = format!(
                "{}{sep}no H=1M point (--quick or --histories): the target is not judged",
                last.note
            );
        }
    }
}

fn hot_row(table: &mut Table, c: &Child) {
    let section = "hot wallet: 64 clients transferring out of ONE wallet (bench_wallet hot); baseline: the same load out of one wallet per client, same run";
    let name = "hot wallet C=64";
    let target = ">= 80% of spread, 0 failures";
    let Some(d) = child_doc(table, section, name, target, c) else {
        return;
    };
    let (hot, spread) = (&d["hot"], &d["spread"]);
    let ratio = f(d, "ratio_hot_vs_spread");
    let (hot_failed, hot_counts, hot_firsts) = failures_text(hot);
    let (spread_failed, _, spread_firsts) = failures_text(spread);
    let met = ratio >= f(d, "target_ratio_min") && hot_failed == 0 && spread_failed == 0;
    let row = table.add(
        section,
        name,
        format!(
            "{} transfers/s out of 1 wallet, p50 {}, p99 {}; failures: {hot_counts}",
            thousands(f(hot, "commands_per_s")),
            fmt_us(f(hot, "p50_us")),
            fmt_us(f(hot, "p99_us")),
        ),
        format!(
            "spread over 64 wallets {} transfers/s, p99 {}, {} failures",
            thousands(f(spread, "commands_per_s")),
            fmt_us(f(spread, "p99_us")),
            spread_failed
        ),
        format!("{} of spread", pct(ratio)),
        target,
        if met { Verdict::Met } else { Verdict::Missed },
        d.clone(),
    );
    row.note = hot_firsts
        .iter()
        .map(|l| format!("hot: {l}"))
        .chain(spread_firsts.iter().map(|l| format!("spread: {l}")))
        .collect::<Vec<_>>()
        .join("; ");
}

fn rebuild_row(table: &mut Table, c: &Child, plan: &Plan) {
    let section =
        "rebuild (projections::rebuild, bench_wallet); baseline: raw scan of the same events table";
    let name = "rebuild";
    let target = ">= 2M ev/s over >= 10M events";
    let Some(d) = child_doc(table, section, name, target, c) else {
        return;
    };
    let rate = f(d, "events_per_s");
    let events = u(d, "events").unwrap_or(0);
    let verdict = if events < 10_000_000 {
        Verdict::NotJudged
    } else if rate >= 2_000_000.0 {
        Verdict::Met
    } else {
        Verdict::Missed
    };
    let row = table.add(
        section,
        name,
        format!(
            "{} ev/s over {} events ({} members, {}), peak RSS {}",
            thousands(rate),
            thousands(events as f64),
            thousands(f(d, "members")),
            fmt_secs(f(d, "seconds")),
            fmt_kib(u(d, "peak_rss_kib"))
        ),
        format!(
            "raw scan {} ev/s",
            thousands(f(d, "baseline_scan_events_per_s"))
        ),
        format!("{} of scan", pct(rate / f(d, "baseline_scan_events_per_s"))),
        target,
        verdict,
        d.clone(),
    );
    let mut note = String::new();
    if events < 10_000_000 {
        let _ = write!(
            note,
            "only {events} events (< 10M; --quick or --rebuild-events); "
        );
    }
    if d.get("reused_store").and_then(Value::as_bool) == Some(true) {
        let _ = write!(note, "store reused from an earlier run");
    } else {
        let _ = write!(
            note,
            "store prepared in this run in {} (not timed)",
            fmt_secs(f(d, "prepare_s"))
        );
    }
    if plan.rebuild_events > events {
        let _ = write!(note, "; asked for {} events", plan.rebuild_events);
    }
    row.note = note;
}

/// A row for a store's size on disk: bytes and bytes per event, `what` after the figure.
fn disk_row(table: &mut Table, section: &str, name: &str, bytes: u64, events: u64, what: &str) {
    let per_event = bytes as f64 / events.max(1) as f64;
    table.add(
        section,
        name,
        format!("{} = {per_event:.0} bytes/event{what}", fmt_bytes(bytes)),
        "-",
        "-",
        "-",
        Verdict::Info,
        json!({"bytes": bytes, "events": events, "bytes_per_event": per_event}),
    );
}

/// The operator steps on a `migrate-tool demo` store of `members` x `epm`.
#[allow(clippy::too_many_arguments)]
fn operator_steps(
    runner: &mut Runner,
    table: &mut Table,
    tool: &Path,
    bench_wallet: &Path,
    dir: &Path,
    members: u64,
    epm: u32,
    full_scale: bool,
    keep: bool,
) {
    let section = format!(
        "operator steps (migrate-tool, release) on `demo --members {members} --events-per-member {epm}`; wall time and peak RSS measured by the driver"
    );
    let store = dir.join(format!("ops-{members}x{epm}"));
    if store.exists() {
        if let Err(e) = std::fs::remove_dir_all(&store) {
            table.missing(
                &section,
                "demo",
                "-",
                &format!("cannot clear {}: {e}", store.display()),
                true,
            );
            return;
        }
    }
    let s = store.display().to_string();
    let tool_args = |rest: &[&str]| -> Vec<String> {
        ["--store", s.as_str()]
            .iter()
            .chain(rest)
            .map(|x| (*x).to_owned())
            .collect()
    };
    let scale = if full_scale {
        "7Pay scale"
    } else {
        "small scale"
    };
    let mut events = 0u64;

    // demo
    let demo = runner.run(
        &format!("demo {members} members"),
        tool,
        &tool_args(&[
            "demo",
            "--members",
            &members.to_string(),
            "--events-per-member",
            &epm.to_string(),
            "--seed",
            "7",
        ]),
        false,
    );
    if let Some(why) = demo.failure() {
        table.missing(
            &section,
            format!("demo --members {members}"),
            "-",
            &why,
            true,
        );
        return;
    }
    // verify (also gives the event count)
    let verify = runner.run("verify", tool, &tool_args(&["verify", "--json"]), true);
    if let Some(v) = &verify.json {
        events = u(v, "head").unwrap_or(0);
    }
    let demo_bytes = disk_bytes(&store);
    table.add(
        &section,
        format!("demo --members {members}"),
        format!(
            "{} wall, peak RSS {}, {} events ({} ev/s incl. view build)",
            fmt_secs(demo.wall.as_secs_f64()),
            fmt_kib(demo.peak_rss_kib),
            thousands(events as f64),
            thousands(events as f64 / demo.wall.as_secs_f64())
        ),
        "-",
        "-",
        "-",
        Verdict::Info,
        json!({"wall_s": demo.wall.as_secs_f64(), "peak_rss_kib": demo.peak_rss_kib, "events": events}),
    );
    disk_row(
        table,
        &section,
        "disk after demo",
        demo_bytes,
        events,
        " (events, indexes, commands, views, digest)",
    );

    // raw scan baseline
    let scan = runner.run(
        "raw scan (baseline)",
        bench_wallet,
        &["--json".into(), "scan".into(), "--store".into(), s.clone()],
        true,
    );
    let scan_rate = scan.json.as_ref().map(|d| f(d, "events_per_s"));
    let baseline = |rate: Option<f64>| match rate {
        Some(r) => format!("raw scan {} ev/s", thousands(r)),
        None => "raw scan: not measured".into(),
    };
    let timed_row = |table: &mut Table, name: &str, c: &Child, events: u64| {
        if let Some(why) = c.failure() {
            table.missing(&section, name, "-", &why, true);
            return;
        }
        let rate = events as f64 / c.wall.as_secs_f64();
        let row = table.add(
            &section,
            name,
            format!(
                "{} ev/s ({} events in {}), peak RSS {}",
                thousands(rate),
                thousands(events as f64),
                fmt_secs(c.wall.as_secs_f64()),
                fmt_kib(c.peak_rss_kib)
            ),
            baseline(scan_rate),
            scan_rate.map_or("?".into(), |s| format!("{} of scan", pct(rate / s))),
            "-",
            Verdict::Info,
            json!({"events": events, "wall_s": c.wall.as_secs_f64(), "events_per_s": rate, "peak_rss_kib": c.peak_rss_kib, "baseline_scan_events_per_s": scan_rate, "output": c.json}),
        );
        if scan_rate.is_none() {
            row.note = scan.failure().unwrap_or_default();
        }
    };
    timed_row(table, "verify", &verify, events);
    let check = runner.run("check", tool, &tool_args(&["check", "--json"]), true);
    timed_row(table, "check", &check, events);

    // digest compare and localisation
    let mut dargs = vec![
        "--json".to_owned(),
        "digest".into(),
        "--store".into(),
        s.clone(),
    ];
    if full_scale {
        dargs.push("--no-fold".into());
    }
    let dig = runner.run("digest compare + localisation", bench_wallet, &dargs, true);
    match (dig.failure(), &dig.json) {
        (None, Some(d)) => {
            let members_n = f(d, "members");
            let fold = d.get("fold_s").and_then(Value::as_f64);
            table.add(
                &section,
                "digest compare",
                format!(
                    "{} (root + 65,536 buckets, {} members, equal); stored buckets read {:.1} ms",
                    fmt_us(f(d, "compare_us")),
                    thousands(members_n),
                    f(d, "read_stored_ms")
                ),
                match fold {
                    Some(s) => format!("fold of the log into fresh buckets {}", fmt_secs(s)),
                    None => {
                        "fold skipped at this scale (stored buckets used as the fresh side)".into()
                    }
                },
                "-",
                "-",
                Verdict::Info,
                d.clone(),
            );
            table.add(
                &section,
                "one-changed-member localisation",
                format!(
                    "{} ({} differing bucket, {} members checked of {}; found exactly {})",
                    fmt_us(f(d, "localise_ms") * 1e3),
                    u(d, "differing_buckets").unwrap_or(0),
                    u(d, "bucket_members_checked").unwrap_or(0),
                    thousands(members_n),
                    d.get("changed_member")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                ),
                match fold {
                    Some(s) => format!("full fold {}", fmt_secs(s)),
                    None => "-".into(),
                },
                match fold {
                    Some(s) => format!("{:.4}% of the fold", f(d, "localise_ms") / 1e3 / s * 100.0),
                    None => "-".into(),
                },
                "-",
                Verdict::Info,
                Value::Null,
            );
        }
        (why, _) => table.missing(
            &section,
            "digest compare + localisation",
            "-",
            &why.unwrap_or_default(),
            true,
        ),
    }

    // reset-credentials --all with its gate
    let reset = runner.run(
        "reset-credentials --all",
        tool,
        &tool_args(&["reset-credentials", "--all", "--reason", "bench", "--json"]),
        true,
    );
    let reset_target = "< 10 min and peak RSS < 4 GiB (at 16.5M members)";
    match (reset.failure(), &reset.json) {
        (None, Some(d)) => {
            let gate_ok = d.get("ok").and_then(Value::as_bool) == Some(true)
                && d.get("digest_unchanged").and_then(Value::as_bool) == Some(true);
            let wall = reset.wall.as_secs_f64();
            let rss_ok = reset.peak_rss_kib.is_some_and(|k| k < 4 * 1024 * 1024);
            let verdict = if !gate_ok {
                Verdict::Failed
            } else if !full_scale || members < 16_500_000 {
                Verdict::NotJudged
            } else if wall < 600.0 && rss_ok {
                Verdict::Met
            } else {
                Verdict::Missed
            };
            let row = table.add(
                &section,
                "reset-credentials --all + gate",
                format!(
                    "{} wall, peak RSS {}, {} members reset, gate {}",
                    fmt_secs(wall),
                    fmt_kib(reset.peak_rss_kib),
                    thousands(f(d, "members_reset")),
                    if gate_ok { "passed (digest unchanged)" } else { "FAILED" }
                ),
                "-",
                "-",
                reset_target,
                verdict,
                json!({"wall_s": wall, "peak_rss_kib": reset.peak_rss_kib, "members_reset": d.get("members_reset"), "events_appended": d.get("events_appended"), "duration_ms": d.get("duration_ms"), "ok": d.get("ok"), "digest_unchanged": d.get("digest_unchanged")}),
            );
            if !full_scale || members < 16_500_000 {
                row.note = format!("{scale}: the target is for 16.5M members (--full)");
            }
            if let Some(h) = d.get("after").and_then(|a| u(a, "head")) {
                events = h;
            }
        }
        (why, _) => table.missing(
            &section,
            "reset-credentials --all + gate",
            reset_target,
            &why.unwrap_or_default(),
            true,
        ),
    }

    // rebuild, then check again
    let rebuild = runner.run("rebuild", tool, &tool_args(&["rebuild"]), false);
    let target = ">= 2M ev/s over >= 10M events";
    if let Some(why) = rebuild.failure() {
        table.missing(&section, "rebuild (migrate-tool)", target, &why, true);
    } else {
        let rate = events as f64 / rebuild.wall.as_secs_f64();
        let verdict = if events < 10_000_000 {
            Verdict::NotJudged
        } else if rate >= 2_000_000.0 {
            Verdict::Met
        } else {
            Verdict::Missed
        };
        table.add(
            &section,
            "rebuild (migrate-tool)",
            format!(
                "{} ev/s ({} events in {}, incl. open and digest), peak RSS {}",
                thousands(rate),
                thousands(events as f64),
                fmt_secs(rebuild.wall.as_secs_f64()),
                fmt_kib(rebuild.peak_rss_kib)
            ),
            baseline(scan_rate),
            scan_rate.map_or("?".into(), |s| format!("{} of scan", pct(rate / s))),
            target,
            verdict,
            json!({"events": events, "wall_s": rebuild.wall.as_secs_f64(), "events_per_s": rate, "peak_rss_kib": rebuild.peak_rss_kib}),
        );
    }
    let check2 = runner.run(
        "check after rebuild",
        tool,
        &tool_args(&["check", "--json"]),
        true,
    );
    timed_row(table, "check after reset + rebuild", &check2, events);
    disk_row(
        table,
        &section,
        "disk after reset + rebuild",
        disk_bytes(&store),
        events,
        "",
    );
    if !keep {
        let _ = std::fs::remove_dir_all(&store);
        // migrate-tool's lock file next to the store.
        let mut lock = store.clone().into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
}

/// What the whole suite shares: the plan, where things go, the child runner and the machine.
struct Suite {
    args: Args,
    plan: Plan,
    mode: &'static str,
    /// Stores and logs go under here (canonical `--dir`).
    dir: PathBuf,
    logs: PathBuf,
    bin_dir: PathBuf,
    sled_bench: PathBuf,
    runner: Runner,
    machine: Machine,
    started: Instant,
}

/// The machine's facts, printed first and in the summary.
struct Machine {
    cores: usize,
    ram_kib: Option<u64>,
    cpu: String,
    kernel: String,
    fs: Value,
    load_start: String,
}

impl Plan {
    fn new(args: &Args) -> Plan {
        let quick = args.quick;
        Plan {
            seconds: args.seconds.unwrap_or(if quick { 1.0 } else { 5.0 }),
            histories: args.histories.clone().unwrap_or_else(|| {
                if quick {
                    "0,10000".into()
                } else {
                    "0,10000,100000,1000000".into()
                }
            }),
            rebuild_events: args
                .rebuild_events
                .unwrap_or(if quick { 200_000 } else { 10_000_000 }),
            rebuild_members: args
                .rebuild_members
                .unwrap_or(if quick { 5_000 } else { 100_000 }),
            demo_members: args
                .demo_members
                .unwrap_or(if quick { 5_000 } else { 200_000 }),
        }
    }
}

impl Suite {
    /// Creates the directories, reads the machine's facts and prints them with the plan.
    fn new(args: Args) -> anyhow::Result<Suite> {
        let mode = if args.quick {
            "quick"
        } else if args.full {
            "full"
        } else {
            "default"
        };
        let plan = Plan::new(&args);
        let bin_dir = match &args.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("this program's directory")?
                .to_path_buf(),
        };
        let sled_bench = args.sled_bench.clone().unwrap_or_else(|| {
            bin_dir
                .join("..")
                .join("bench-sled")
                .join("release")
                .join("bench_append")
        });
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("create {}", args.dir.display()))?;
        let dir = std::fs::canonicalize(&args.dir)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let logs = dir.join("logs").join(stamp.to_string());
        std::fs::create_dir_all(&logs)?;
        let time_bin = Path::new("/usr/bin/time")
            .exists()
            .then(|| PathBuf::from("/usr/bin/time"));
        let machine = Machine {
            cores: ledger_tests::bench::cores(),
            ram_kib: procfs::mem_total_kib(),
            cpu: procfs::cpu_model().unwrap_or_else(|| "unknown".into()),
            kernel: procfs::kernel_release().unwrap_or_else(|| "unknown".into()),
            fs: filesystem(&dir),
            load_start: procfs::load_average(),
        };
        let suite = Suite {
            runner: Runner::new(logs.clone(), time_bin),
            args,
            plan,
            mode,
            dir,
            logs,
            bin_dir,
            sled_bench,
            machine,
            started: Instant::now(),
        };
        suite.print_start();
        Ok(suite)
    }

    fn print_start(&self) {
        let (m, plan, args) = (&self.machine, &self.plan, &self.args);
        let (cores, cpu, kernel, fs) = (m.cores, &m.cpu, &m.kernel, &m.fs);
        println!("bench: wallet-ledger benchmark suite, mode {}", self.mode);
        println!("machine: {cores} cores (available_parallelism), CPU {cpu}, RAM {} (/proc/meminfo), kernel {kernel}", fmt_kib(m.ram_kib));
        println!(
            "disk: {} {} mounted at {} ({}), {} free; stores under {}",
            fs["device"].as_str().unwrap_or("?"),
            fs["type"].as_str().unwrap_or("?"),
            fs["mount_point"].as_str().unwrap_or("?"),
            fs["mount_options"].as_str().unwrap_or("?"),
            fs["available_bytes"].as_u64().map_or("?".into(), fmt_bytes),
            self.dir.display()
        );
        println!("load average at start (1, 5, 15 min): {}  (a shared box makes every figure a lower bound)", m.load_start);
        println!(
            "plan: appends {} s per run; commands {} s; history {} s per H in {}; hot {} s per phase; http {} s per phase; rebuild over {} events / {} members (kept in {}); operator steps at {} members x {}{}",
            plan.seconds,
            plan.seconds,
            plan.seconds,
            plan.histories,
            plan.seconds,
            plan.seconds,
            plan.rebuild_events,
            plan.rebuild_members,
            self.dir.display(),
            plan.demo_members,
            args.demo_events_per_member,
            if args.full {
                format!("; --full: 7Pay steps at {} members x {}", args.full_members, args.full_events_per_member)
            } else {
                String::new()
            }
        );
        println!("child logs: {}\n", self.logs.display());
    }

    fn bench_wallet(&self) -> PathBuf {
        self.bin_dir.join("bench_wallet")
    }

    /// `bench_wallet --json --dir DIR <workload> <rest>`.
    fn run_wallet(&mut self, label: &str, workload: &str, rest: &[String]) -> Child {
        let mut args = vec![
            "--json".into(),
            "--dir".into(),
            self.dir.display().to_string(),
            workload.into(),
        ];
        args.extend_from_slice(rest);
        let program = self.bench_wallet();
        self.runner.run(label, &program, &args, true)
    }
}

/// 1. appends, redb and sled: returns the redb child (the PostgreSQL rows compare with it).
fn run_appends(suite: &mut Suite, table: &mut Table) -> anyhow::Result<Child> {
    let secs = suite.plan.seconds.to_string();
    let append_dir = suite.dir.join("append");
    std::fs::create_dir_all(&append_dir)?;
    let append_args = |backend: &str| -> Vec<String> {
        vec![
            "--backend".into(),
            backend.into(),
            "--seconds".into(),
            secs.clone(),
            "--writers".into(),
            "1,8,64".into(),
            "--batch".into(),
            "1,100".into(),
            "--dir".into(),
            append_dir.display().to_string(),
            "--json".into(),
        ]
    };
    let redb = suite.runner.run(
        "bench_append redb",
        &suite.bin_dir.join("bench_append"),
        &append_args("redb"),
        true,
    );
    append_rows(table, "redb", "durable: fdatasync per group commit", &redb);
    let sled_bench = suite.sled_bench.clone();
    let sled = if sled_bench.exists() {
        suite
            .runner
            .run("bench_append sled", &sled_bench, &append_args("sled"), true)
    } else {
        let c = Child::not_built(
            "bench_append sled",
            sled_bench.display().to_string(),
            format!(
                "{} not found (build: cargo build --release -p ledger-tests --features sled --bin bench_append --target-dir target/bench-sled)",
                sled_bench.display()
            ),
        );
        println!("[-] bench_append sled: {}", c.stderr_tail);
        c
    };
    append_rows(table, "sled", "sync_file_range, not fdatasync", &sled);
    ratio_rows(table, &redb, &sled);
    Ok(redb)
}

/// 2. the PostgreSQL peer (`--workload all`: appends and the wallet), or why it was not run.
fn run_pg_peer(suite: &mut Suite) -> Result<Child, String> {
    let script = suite.args.pg_script.clone();
    let pg = if suite.args.no_pg {
        Err("skipped (--no-pg)".into())
    } else if !script.exists() {
        Err(format!(
            "{} not found: PostgreSQL peer not measured",
            script.display()
        ))
    } else {
        let pg_dir = suite.dir.join("pg");
        let _ = std::fs::create_dir_all(&pg_dir);
        // pg_peer.sh (pgbench -T) takes whole seconds.
        let pg_secs = (suite.plan.seconds.ceil() as u64).max(1).to_string();
        Ok(suite.runner.run(
            "PostgreSQL peer",
            Path::new("bash"),
            &[
                script.display().to_string(),
                "--workload".into(),
                "all".into(),
                "--writers".into(),
                "1,8,64".into(),
                "--batch".into(),
                "1,100".into(),
                "--seconds".into(),
                pg_secs,
                "--dir".into(),
                pg_dir.display().to_string(),
                "--json".into(),
            ],
            true,
        ))
    };
    if let Err(why) = &pg {
        println!("[-] PostgreSQL peer: {why}");
    }
    pg
}

/// 3. commands, and the same mix on the PostgreSQL wallet.
fn run_commands(suite: &mut Suite, table: &mut Table, pg: Result<&Child, String>) {
    let secs = suite.plan.seconds.to_string();
    let commands = suite.run_wallet(
        "bench_wallet commands",
        "commands",
        &["--seconds".into(), secs],
    );
    commands_row(table, &commands);
    pg_wallet_row(table, &commands, pg);
}

/// 3a'. commands with SPEC 7 holds on against holds off (issue 15), 3 rounds each (1 with
/// --quick), alternating in one child.
fn run_holds(suite: &mut Suite, table: &mut Table) {
    let rounds = if suite.args.quick { "1" } else { "3" };
    let holds = suite.run_wallet(
        "bench_wallet commands-holds",
        "commands-holds",
        &[
            "--seconds".into(),
            suite.plan.seconds.to_string(),
            "--rounds".into(),
            rounds.into(),
        ],
    );
    holds_row(table, &holds);
}

fn holds_row(table: &mut Table, c: &Child) {
    let section = "commands with holds on (SPEC 7: set_policy 24 h / 5,000 yen, 10% of members with a new-device login 1 h before, pays and transfers with a device), 64 clients; baseline: holds off, alternating in the same run, median of each";
    let name = "commands C=64 holds on";
    let target = ">= 90% of holds off";
    let Some(d) = child_doc(table, section, name, target, c) else {
        return;
    };
    table.add(
        section,
        name,
        format!(
            "{} commands/s, CPU {} per command; {} holds placed",
            thousands(f(d, "on_commands_per_s")),
            fmt_us(f(d, "on_cpu_us_per_command")),
            thousands(f(d, "holds_placed"))
        ),
        format!(
            "holds off {} commands/s, CPU {} per command",
            thousands(f(d, "off_commands_per_s")),
            fmt_us(f(d, "off_cpu_us_per_command"))
        ),
        format!("{} of holds off", pct(f(d, "ratio_on_vs_off"))),
        target,
        if d.get("met").and_then(Value::as_bool) == Some(true) {
            Verdict::Met
        } else {
            Verdict::Missed
        },
        d.clone(),
    );
}

/// 3b. history (one member with H events) and hot (one source wallet vs one per client).
fn run_history_and_hot(suite: &mut Suite, table: &mut Table) {
    let secs = suite.plan.seconds.to_string();
    let history = suite.run_wallet(
        "bench_wallet history",
        "history",
        &[
            "--histories".into(),
            suite.plan.histories.clone(),
            "--seconds".into(),
            secs.clone(),
        ],
    );
    history_rows(table, &history);
    let hot = suite.run_wallet("bench_wallet hot", "hot", &["--seconds".into(), secs]);
    hot_row(table, &hot);
}

/// 3c. http (issue 14): the commands mix through walletd on loopback against the in-process
/// figure of the same run, `GET wallet`, and the SSE fan-out.
fn run_http(suite: &mut Suite, table: &mut Table) {
    let walletd = suite.bin_dir.join("walletd");
    let program = suite.bin_dir.join("bench_http");
    let child = if walletd.exists() {
        let args = [
            "--json".into(),
            "--dir".into(),
            suite.dir.display().to_string(),
            "--seconds".into(),
            suite.plan.seconds.to_string(),
            "--walletd".into(),
            walletd.display().to_string(),
        ];
        suite.runner.run("bench_http", &program, &args, true)
    } else {
        let c = Child::not_built(
            "bench_http",
            program.display().to_string(),
            format!(
                "{} not found (build: cargo build --release -p walletd)",
                walletd.display()
            ),
        );
        println!("[-] bench_http: {}", c.stderr_tail);
        c
    };
    http_rows(table, &child);
}

fn http_rows(table: &mut Table, c: &Child) {
    let section = "http: walletd on loopback, 64 keep-alive connections, load client on the same 2 cores (bench_http); baseline: in-process commands, same mix, same run";
    let rows = [
        ("http commands C=64", ">= 60% of in-process commands"),
        ("http GET wallet C=64", ">= 50,000 requests/s"),
        (
            "http SSE fan-out",
            "subscribers keep up (every event in order, lag <= 1 s)",
        ),
    ];
    if let Some(why) = c.failure() {
        for (name, target) in rows {
            table.missing(section, name, target, &why, !c.was_not_built());
        }
        return;
    }
    let d = c
        .json
        .as_ref()
        .expect("a child that succeeded has its JSON document");
    let cpu = |load: &Value| {
        format!(
            "CPU server {} ({:.0} µs per request), client {} of one core",
            pct(f(&load["cpu"], "server_cores")),
            f(load, "server_cpu_us_per_request"),
            pct(f(&load["cpu"], "client_cores"))
        )
    };
    let met = |key: &str| {
        if d.get(key).and_then(Value::as_bool) == Some(true) {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    };
    let (cmd, base) = (&d["commands"], &d["in_process"]);
    table.add(
        section,
        rows[0].0,
        format!(
            "{} commands/s, p50 {}, p99 {}; {}",
            thousands(f(cmd, "commands_per_s")),
            fmt_us(f(cmd, "p50_us")),
            fmt_us(f(cmd, "p99_us")),
            cpu(cmd)
        ),
        format!(
            "in process {} commands/s, p50 {}, p99 {}",
            thousands(f(base, "commands_per_s")),
            fmt_us(f(base, "p50_us")),
            fmt_us(f(base, "p99_us"))
        ),
        format!(
            "{} of in process",
            pct(f(d, "ratio_commands_vs_in_process"))
        ),
        rows[0].1,
        met("commands_met"),
        json!({"commands": cmd, "in_process": base}),
    );
    let get = &d["get_wallet"];
    table.add(
        section,
        rows[1].0,
        format!(
            "{} requests/s, p50 {}, p99 {}; {}",
            thousands(f(get, "requests_per_s")),
            fmt_us(f(get, "p50_us")),
            fmt_us(f(get, "p99_us")),
            cpu(get)
        ),
        "-",
        "-",
        rows[1].1,
        met("get_met"),
        get.clone(),
    );
    let sse = &d["sse"];
    let subscribers = u(sse, "subscribers").unwrap_or(0);
    let written = f(sse, "written_events_per_s");
    table.add(
        section,
        format!("http SSE fan-out, {subscribers} subscribers"),
        format!(
            "{} events/s per subscriber (min {}); lag max {} events ({:.3} s), drained {}",
            thousands(f(sse, "delivered_events_per_s_per_subscriber_mean")),
            thousands(f(sse, "delivered_events_per_s_per_subscriber_min")),
            u(sse, "lag_max_events").unwrap_or(0),
            f(sse, "lag_max_s"),
            sse.get("drain_s")
                .and_then(Value::as_f64)
                .map_or("NOT within 60 s".into(), |s| format!("in {s:.3} s"))
        ),
        format!(
            "written {} events/s ({} commands/s under the feed)",
            thousands(written),
            thousands(f(&sse["load"], "commands_per_s"))
        ),
        format!(
            "{} of written",
            pct(f(sse, "delivered_events_per_s_per_subscriber_min") / written)
        ),
        rows[2].1,
        met("sse_met"),
        sse.clone(),
    );
}

/// 4. rebuild over a kept store.
fn run_rebuild(suite: &mut Suite, table: &mut Table) {
    let plan = &suite.plan;
    let rebuild_store = suite.dir.join(format!(
        "rebuild-{}-{}",
        plan.rebuild_events, plan.rebuild_members
    ));
    let rest = [
        "--events".into(),
        plan.rebuild_events.to_string(),
        "--members".into(),
        plan.rebuild_members.to_string(),
        "--store".into(),
        rebuild_store.display().to_string(),
    ];
    let rebuild = suite.run_wallet("bench_wallet rebuild", "rebuild", &rest);
    rebuild_row(table, &rebuild, &suite.plan);
}

/// Open after kill -9 of a bulk import, with the largest unindexed tail (issue 12: <= 2 s).
fn run_reopen(suite: &mut Suite, table: &mut Table) {
    let store = suite.dir.join("reopen");
    let _ = std::fs::remove_dir_all(&store);
    let tool = suite.bin_dir.join("migrate-tool");
    let rest = [
        "--store".into(),
        store.display().to_string(),
        "--migrate-tool".into(),
        tool.display().to_string(),
        "--rounds".into(),
        "5".into(),
        "--json".into(),
    ];
    let bin = suite.bin_dir.join("bench_reopen");
    let child = suite.runner.run("bench_reopen", &bin, &rest, true);
    let section = "open after kill -9 (issue 12)";
    let name = "open after kill -9, largest tail";
    let target = "<= 2 s";
    if let Some(why) = child.failure() {
        table.missing(section, name, target, &why, true);
        return;
    }
    let doc = child.json.clone().unwrap_or_default();
    let worst_ms = f(&doc, "worst_open_after_kill_ms");
    let tail = u(&doc, "largest_tail_events").unwrap_or(0);
    let clean = doc["rounds"]
        .as_array()
        .map(|r| r.iter().map(|x| f(x, "open_clean_ms")).fold(0.0, f64::max))
        .unwrap_or(0.0);
    table.rows.push(Row {
        section: section.into(),
        name: name.into(),
        figure: format!("{:.3} s (tail up to {tail} events)", worst_ms / 1e3),
        baseline: format!("open with no tail {:.3} s", clean / 1e3),
        ratio: "-".into(),
        target: target.into(),
        verdict: if worst_ms <= 2_000.0 {
            Verdict::Met
        } else {
            Verdict::Missed
        },
        note: String::new(),
        values: doc,
    });
    let _ = std::fs::remove_dir_all(&store);
}

/// 5. operator steps, then the 7Pay scale with --full.
fn run_operator_steps(suite: &mut Suite, table: &mut Table) {
    let tool = suite.bin_dir.join("migrate-tool");
    let bench_wallet = suite.bench_wallet();
    let args = &suite.args;
    let mut scales = vec![(suite.plan.demo_members, args.demo_events_per_member, false)];
    if args.full {
        scales.push((args.full_members, args.full_events_per_member, true));
    }
    let keep = args.keep_stores;
    for (members, epm, full_scale) in scales {
        operator_steps(
            &mut suite.runner,
            table,
            &tool,
            &bench_wallet,
            &suite.dir,
            members,
            epm,
            full_scale,
            keep,
        );
    }
}

/// The summary: machine, load, the table and its counts; the JSON file with `--json`.
/// Returns the number of FAILED rows.
fn print_summary(suite: &Suite, table: &Table) -> anyhow::Result<usize> {
    let m = &suite.machine;
    let (cores, cpu, kernel, fs) = (m.cores, &m.cpu, &m.kernel, &m.fs);
    let load_end = procfs::load_average();
    let total = suite.started.elapsed();
    println!(
        "\n== summary: {cores} cores, CPU {cpu}, RAM {}, kernel {kernel}, {} {} at {}",
        fmt_kib(m.ram_kib),
        fs["device"].as_str().unwrap_or("?"),
        fs["type"].as_str().unwrap_or("?"),
        fs["mount_point"].as_str().unwrap_or("?")
    );
    println!(
        "== load average at start {}, at end {load_end}; mode {}; suite took {}\n",
        m.load_start,
        suite.mode,
        fmt_secs(total.as_secs_f64())
    );
    if suite.args.quick {
        println!("--quick: 1 s runs and small stores, a smoke test of the suite; do not quote these figures\n");
    }
    table.print();
    let count = |v: Verdict| table.rows.iter().filter(|r| r.verdict == v).count();
    let failed = count(Verdict::Failed);
    println!(
        "\n{} rows: {} MET, {} MISSED, {} FAILED, {} NOT MEASURED; child logs in {}",
        table.rows.len(),
        count(Verdict::Met),
        count(Verdict::Missed),
        failed,
        count(Verdict::NotMeasured),
        suite.logs.display()
    );
    if let Some(path) = &suite.args.json {
        let (args, plan) = (&suite.args, &suite.plan);
        let doc = json!({
            "suite": "wallet-ledger bench",
            "mode": suite.mode,
            "machine": {
                "cores": cores,
                "cpu": cpu,
                "ram_kib": m.ram_kib,
                "kernel": kernel,
                "filesystem": fs,
                "load_average_start": m.load_start,
                "load_average_end": load_end,
            },
            "plan": {
                "seconds": plan.seconds,
                "histories": plan.histories,
                "rebuild_events": plan.rebuild_events,
                "rebuild_members": plan.rebuild_members,
                "demo_members": plan.demo_members,
                "demo_events_per_member": args.demo_events_per_member,
                "full_members": args.full.then_some(args.full_members),
                "full_events_per_member": args.full.then_some(args.full_events_per_member),
            },
            "total_s": total.as_secs_f64(),
            "rows": table.to_json(),
            "children": suite.runner.children,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
        println!("summary JSON written to {}", path.display());
    }
    Ok(failed)
}

fn main() -> anyhow::Result<()> {
    let mut suite = Suite::new(Args::parse())?;
    let mut table = Table::default();
    let only = suite.args.only.clone();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let pg = if wanted("append") {
        let redb = run_appends(&mut suite, &mut table)?;
        let pg = run_pg_peer(&mut suite);
        pg_rows(&mut table, &redb, pg.as_ref().map_err(Clone::clone));
        pg
    } else {
        Err("not run (--only)".into())
    };
    if wanted("commands") {
        run_commands(&mut suite, &mut table, pg.as_ref().map_err(Clone::clone));
    }
    if wanted("holds") {
        run_holds(&mut suite, &mut table);
    }
    if wanted("history") {
        run_history_and_hot(&mut suite, &mut table);
    }
    if wanted("http") {
        run_http(&mut suite, &mut table);
    }
    if wanted("rebuild") {
        run_rebuild(&mut suite, &mut table);
    }
    if wanted("reopen") {
        run_reopen(&mut suite, &mut table);
    }
    if wanted("operator") {
        run_operator_steps(&mut suite, &mut table);
    }
    if print_summary(&suite, &table)? > 0 {
        std::process::exit(1);
    }
    Ok(())
}
