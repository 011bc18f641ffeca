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
//! - `bench_wallet history` (the commands mix, 64 clients on one member with H events of
//!   history; baseline: H = 0 in the same run);
//! - `bench_wallet hot` (64 clients transferring out of one wallet; baseline: the same load out of
//!   one wallet per client, in the same run);
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
//! Run: `bash scripts/bench.sh [--quick | --full] [--dir DIR] [--no-pg] [--json FILE]`.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
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
}

// ---------------------------------------------------------------------------------------------
// child processes

/// One child run: exit, wall time, peak RSS and its JSON document.
struct Child {
    label: String,
    command: String,
    ok: bool,
    status: String,
    wall: Duration,
    /// Peak RSS: max of the polled `VmHWM` and `/usr/bin/time`'s `ru_maxrss`, KiB.
    peak_rss_kib: Option<u64>,
    polled_rss_kib: Option<u64>,
    time_rss_kib: Option<u64>,
    json: Option<Value>,
    stderr_tail: String,
    load_before: String,
    load_after: String,
}

impl Child {
    fn failure(&self) -> Option<String> {
        if self.ok {
            None
        } else if self.status == NOT_BUILT {
            Some(format!("not measured: {}", self.stderr_tail))
        } else {
            Some(format!(
                "FAILED ({}): {}",
                self.status,
                self.stderr_tail.trim()
            ))
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "label": self.label,
            "command": self.command,
            "ok": self.ok,
            "status": self.status,
            "wall_s": self.wall.as_secs_f64(),
            "peak_rss_kib": self.peak_rss_kib,
            "polled_vmhwm_kib": self.polled_rss_kib,
            "time_maxrss_kib": self.time_rss_kib,
            "load_before": self.load_before,
            "load_after": self.load_after,
            "stderr_tail": if self.ok { Value::Null } else { Value::from(self.stderr_tail.clone()) },
            "output": self.json,
        })
    }
}

struct Runner {
    logs: PathBuf,
    time_bin: Option<PathBuf>,
    children: Vec<Value>,
    step: usize,
}

impl Runner {
    /// Runs `program args`, with stdout and stderr in log files, polling its peak RSS.
    /// `want_json`: the child must print one JSON document on stdout.
    fn run(&mut self, label: &str, program: &Path, args: &[String], want_json: bool) -> Child {
        self.step += 1;
        let command = std::iter::once(program.display().to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        println!("[{}] {label}: {command}", self.step);
        let slug: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let out_path = self.logs.join(format!("{:02}-{slug}.out", self.step));
        let err_path = self.logs.join(format!("{:02}-{slug}.err", self.step));
        let rss_path = self.logs.join(format!("{:02}-{slug}.maxrss", self.step));
        let load_before = load_average();
        let mut child = Child {
            label: label.to_owned(),
            command: command.clone(),
            ok: false,
            status: String::new(),
            wall: Duration::ZERO,
            peak_rss_kib: None,
            polled_rss_kib: None,
            time_rss_kib: None,
            json: None,
            stderr_tail: String::new(),
            load_before: load_before.clone(),
            load_after: String::new(),
        };
        let spawn = || -> anyhow::Result<std::process::Child> {
            let stdout = File::create(&out_path)?;
            let stderr = File::create(&err_path)?;
            let mut cmd = match &self.time_bin {
                Some(time) => {
                    let mut c = Command::new(time);
                    c.arg("-f").arg("%M").arg("-o").arg(&rss_path).arg(program);
                    c
                }
                None => Command::new(program),
            };
            Ok(cmd
                .args(args)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()?)
        };
        let started = Instant::now();
        let mut proc = match spawn() {
            Ok(p) => p,
            Err(e) => {
                child.status = "could not start".into();
                child.stderr_tail = format!("{e:#}");
                child.load_after = load_average();
                println!("    FAILED: could not start {}: {e:#}", program.display());
                self.children.push(child.to_json());
                return child;
            }
        };
        // A poller thread samples VmHWM every 100 ms while this thread blocks in `wait`, so the
        // wall time is exact (not rounded up to a poll interval).
        let pid = proc.id();
        let via_time = self.time_bin.is_some();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (status, wall, polled) = std::thread::scope(|scope| {
            let poller = scope.spawn(|| {
                let mut polled: Option<u64> = None;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    // The measured process: the child itself, or the child of /usr/bin/time.
                    let target = if via_time {
                        first_child(pid)
                    } else {
                        Some(pid)
                    };
                    if let Some(kib) = target.and_then(|pid| procfs::vm_hwm_kib(&pid.to_string())) {
                        polled = Some(polled.map_or(kib, |p| p.max(kib)));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                polled
            });
            let status = proc.wait();
            let wall = started.elapsed();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (status, wall, poller.join().unwrap_or(None))
        });
        child.wall = wall;
        child.load_after = load_average();
        child.polled_rss_kib = polled;
        if self.time_bin.is_some() {
            child.time_rss_kib = std::fs::read_to_string(&rss_path)
                .ok()
                .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()));
        }
        child.peak_rss_kib = match (polled, child.time_rss_kib) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        child.stderr_tail = tail(&stderr, 6);
        if child.stderr_tail.is_empty() {
            // e.g. `check --json` exits 1 with its findings on stdout.
            child.stderr_tail = tail(&stdout, 3);
        }
        match status {
            Ok(s) if s.success() => {
                child.status = "exit 0".into();
                child.ok = true;
            }
            Ok(s) => child.status = s.to_string(),
            Err(e) => child.status = format!("wait failed: {e}"),
        }
        if want_json {
            child.json = parse_json(&stdout);
            if child.ok && child.json.is_none() {
                child.ok = false;
                child.status = "exit 0 but no JSON document on stdout".into();
                if child.stderr_tail.is_empty() {
                    child.stderr_tail = tail(&stdout, 6);
                }
            }
        }
        println!(
            "    {} in {}, peak RSS {}{}",
            if child.ok { "ok" } else { "FAILED" },
            fmt_secs(child.wall.as_secs_f64()),
            fmt_kib(child.peak_rss_kib),
            if child.ok {
                String::new()
            } else {
                format!(" ({}): {}", child.status, child.stderr_tail.trim())
            }
        );
        self.children.push(child.to_json());
        child
    }
}

/// The whole stdout as one JSON document, or the span from the first `{` to the last `}`.
fn parse_json(stdout: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(stdout.trim()) {
        return v.is_object().then_some(v);
    }
    let (a, b) = (stdout.find('{')?, stdout.rfind('}')?);
    serde_json::from_str::<Value>(stdout.get(a..=b)?)
        .ok()
        .filter(Value::is_object)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.rsplit('\r').next().unwrap_or(l))
        .collect();
    let text = all[all.len().saturating_sub(lines)..].join(" | ");
    match text.char_indices().nth(600) {
        Some((cut, _)) => format!("...{}", &text[text.len() - (text.len() - cut).min(600)..]),
        None => text,
    }
}

fn first_child(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// machine facts

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Device, file system type, size and free bytes of the file system holding `dir` (`df -PT`),
/// and its mount options (`/proc/mounts`).
fn filesystem(dir: &Path) -> Value {
    let df = Command::new("df")
        .arg("-PTk")
        .arg(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let Some(line) = df
        .as_deref()
        .and_then(|t| t.lines().nth(1).map(str::to_owned))
    else {
        return json!({"error": "df failed"});
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 7 {
        return json!({"error": format!("unexpected df line {line:?}")});
    }
    let kib = |s: &str| s.parse::<u64>().ok().map(|k| k * 1024);
    let options = std::fs::read_to_string("/proc/mounts").ok().and_then(|m| {
        m.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|p| p.len() >= 4 && p[1] == f[6])
            .map(|p| p[3].to_owned())
    });
    json!({
        "device": f[0],
        "type": f[1],
        "size_bytes": kib(f[2]),
        "available_bytes": kib(f[4]),
        "mount_point": f[6],
        "mount_options": options,
    })
}

/// Allocated bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += disk_bytes(&e.path()),
            Ok(m) => total += m.blocks() * 512,
            Err(_) => {}
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// the summary table

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verdict {
    Met,
    Missed,
    /// No target for this row (a figure reported for information).
    Info,
    /// The target does not apply at this scale or duration (why in the note).
    NotJudged,
    Failed,
    NotMeasured,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Met => "MET",
            Verdict::Missed => "MISSED",
            Verdict::Info => "-",
            Verdict::NotJudged => "not judged",
            Verdict::Failed => "FAILED",
            Verdict::NotMeasured => "NOT MEASURED",
        }
    }
}

struct Row {
    section: String,
    name: String,
    figure: String,
    baseline: String,
    ratio: String,
    target: String,
    verdict: Verdict,
    note: String,
    values: Value,
}

#[derive(Default)]
struct Table {
    rows: Vec<Row>,
}

impl Table {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        section: &str,
        name: impl Into<String>,
        figure: impl Into<String>,
        baseline: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
        verdict: Verdict,
        values: Value,
    ) -> &mut Row {
        self.rows.push(Row {
            section: section.to_owned(),
            name: name.into(),
            figure: figure.into(),
            baseline: baseline.into(),
            ratio: ratio.into(),
            target: target.into(),
            verdict,
            note: String::new(),
            values,
        });
        self.rows.last_mut().expect("just pushed")
    }

    /// A row for a figure that could not be measured.
    fn missing(
        &mut self,
        section: &str,
        name: impl Into<String>,
        target: &str,
        why: &str,
        failed: bool,
    ) {
        let verdict = if failed {
            Verdict::Failed
        } else {
            Verdict::NotMeasured
        };
        let row = self.add(
            section,
            name,
            "not measured",
            "-",
            "-",
            target,
            verdict,
            Value::Null,
        );
        row.note = why.to_owned();
    }

    fn print(&self) {
        let widths = [
            self.rows
                .iter()
                .map(|r| r.name.chars().count())
                .max()
                .unwrap_or(8)
                .max(8),
            self.rows
                .iter()
                .map(|r| r.figure.chars().count())
                .max()
                .unwrap_or(6)
                .max(6),
            self.rows
                .iter()
                .map(|r| r.baseline.chars().count())
                .max()
                .unwrap_or(8)
                .max(8),
            self.rows
                .iter()
                .map(|r| r.ratio.chars().count())
                .max()
                .unwrap_or(5)
                .max(5),
            self.rows
                .iter()
                .map(|r| r.target.chars().count())
                .max()
                .unwrap_or(6)
                .max(6),
        ];
        let line = |a: &str, b: &str, c: &str, d: &str, e: &str, f: &str| {
            let pad = |s: &str, w: usize| {
                format!("{s}{}", " ".repeat(w.saturating_sub(s.chars().count())))
            };
            format!(
                "{} | {} | {} | {} | {} | {}",
                pad(a, widths[0]),
                pad(b, widths[1]),
                pad(c, widths[2]),
                pad(d, widths[3]),
                pad(e, widths[4]),
                f
            )
        };
        let header = line(
            "workload",
            "figure",
            "baseline (same run)",
            "ratio",
            "target (SPEC 6)",
            "verdict",
        );
        println!("{header}");
        let mut section = "";
        for r in &self.rows {
            if r.section != section {
                section = &r.section;
                println!("{}", "-".repeat(header.chars().count().min(220)));
                println!("{section}");
            }
            println!(
                "{}",
                line(
                    &r.name,
                    &r.figure,
                    &r.baseline,
                    &r.ratio,
                    &r.target,
                    r.verdict.text()
                )
            );
        }
        // Each distinct note once, with the rows it belongs to.
        let mut notes: Vec<(&str, Vec<&str>)> = Vec::new();
        for r in self.rows.iter().filter(|r| !r.note.is_empty()) {
            match notes.iter_mut().find(|(n, _)| *n == r.note) {
                Some((_, names)) => names.push(&r.name),
                None => notes.push((&r.note, vec![&r.name])),
            }
        }
        if !notes.is_empty() {
            println!("\nnotes:");
            for (note, names) in notes {
                println!("- {}: {note}", names.join(", "));
            }
        }
    }

    fn to_json(&self) -> Value {
        Value::from(
            self.rows
                .iter()
                .map(|r| {
                    json!({
                        "section": r.section,
                        "workload": r.name,
                        "figure": r.figure,
                        "baseline": r.baseline,
                        "ratio": r.ratio,
                        "target": r.target,
                        "verdict": r.verdict.text(),
                        "note": r.note,
                        "values": r.values,
                    })
                })
                .collect::<Vec<_>>(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// number formatting

/// 1234567.8 -> "1,234,568".
fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "?".into();
    }
    let n = x.round() as i128;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn fmt_us(us: f64) -> String {
    if !us.is_finite() {
        "?".into()
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

fn fmt_secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else if s >= 120.0 {
        format!("{} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{s:.1} s")
    }
}

fn fmt_kib(kib: Option<u64>) -> String {
    match kib {
        None => "unknown".into(),
        Some(k) if k >= 1024 * 1024 => format!("{:.2} GiB", k as f64 / 1024.0 / 1024.0),
        Some(k) => format!("{:.0} MiB", k as f64 / 1024.0),
    }
}

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

fn pct(r: f64) -> String {
    if r.is_finite() {
        format!("{:.0}%", r * 100.0)
    } else {
        "?".into()
    }
}

fn times(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}x")
    } else {
        "?".into()
    }
}

fn f(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn u(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
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
/// Status of a child whose binary was not built (not measured, rather than failed).
const NOT_BUILT: &str = "not built";
const BATCHES: [u64; 2] = [1, 100];

fn append_target(batch: u64, writers: u64) -> Option<(&'static str, f64, Option<f64>, f64)> {
    // (text, min events/s, max p99 µs, min ratio of raw)
    match (batch, writers) {
        (1, 64) => Some((
            ">= 100k ev/s, p99 <= 5 ms, >= 50% raw",
            100_000.0,
            Some(5_000.0),
            0.50,
        )),
        (100, 64) => Some((">= 500k ev/s, >= 25% raw", 500_000.0, None, 0.25)),
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
                let failed = child.status != NOT_BUILT;
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
            let (target_text, min) = if batch == 1 {
                ("ours >= 5x", 5.0)
            } else {
                ("ours >= 2.5x", 2.5)
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

fn commands_row(table: &mut Table, c: &Child) {
    let section = "commands: decide + durable append + views, 64 clients; baseline: the same calls as plain durable appends, no hook, no decide";
    let name = "commands C=64";
    let target = ">= 50,000 commands/s";
    if let Some(why) = c.failure() {
        return table.missing(section, name, target, &why, true);
    }
    let d = c.json.as_ref().expect("ok implies JSON");
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
        if rate >= 50_000.0 {
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

/// 1000000 -> "1M", 10000 -> "10k".
fn short_count(n: u64) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

fn history_rows(table: &mut Table, c: &Child) {
    let section = "history: the commands mix, 64 clients all on one member with H events of history (bench_wallet history); baseline: H = 0 in the same run";
    let target = "H=1M >= 67% of H=0 (within 1.5x), 0 failures";
    if let Some(why) = c.failure() {
        return table.missing(section, "history C=64", target, &why, true);
    }
    let d = c.json.as_ref().expect("ok implies JSON");
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
    if let Some(why) = c.failure() {
        return table.missing(section, name, target, &why, true);
    }
    let d = c.json.as_ref().expect("ok implies JSON");
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
    if let Some(why) = c.failure() {
        return table.missing(section, name, target, &why, true);
    }
    let d = c.json.as_ref().expect("ok implies JSON");
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
    table.add(
        &section,
        "disk after demo",
        format!(
            "{} = {:.0} bytes/event (events, indexes, commands, views, digest)",
            fmt_bytes(demo_bytes),
            demo_bytes as f64 / events.max(1) as f64
        ),
        "-",
        "-",
        "-",
        Verdict::Info,
        json!({"bytes": demo_bytes, "events": events, "bytes_per_event": demo_bytes as f64 / events.max(1) as f64}),
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
    let bytes = disk_bytes(&store);
    table.add(
        &section,
        "disk after reset + rebuild",
        format!(
            "{} = {:.0} bytes/event",
            fmt_bytes(bytes),
            bytes as f64 / events.max(1) as f64
        ),
        "-",
        "-",
        "-",
        Verdict::Info,
        json!({"bytes": bytes, "events": events, "bytes_per_event": bytes as f64 / events.max(1) as f64}),
    );
    if !keep {
        let _ = std::fs::remove_dir_all(&store);
        // migrate-tool's lock file next to the store.
        let mut lock = store.clone().into_os_string();
        lock.push(".lock");
        let _ = std::fs::remove_file(lock);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mode = if args.quick {
        "quick"
    } else if args.full {
        "full"
    } else {
        "default"
    };
    let plan = Plan {
        seconds: args.seconds.unwrap_or(if args.quick { 1.0 } else { 5.0 }),
        histories: args.histories.clone().unwrap_or_else(|| {
            if args.quick {
                "0,10000".into()
            } else {
                "0,10000,100000,1000000".into()
            }
        }),
        rebuild_events: args.rebuild_events.unwrap_or(if args.quick {
            200_000
        } else {
            10_000_000
        }),
        rebuild_members: args
            .rebuild_members
            .unwrap_or(if args.quick { 5_000 } else { 100_000 }),
        demo_members: args
            .demo_members
            .unwrap_or(if args.quick { 5_000 } else { 200_000 }),
    };
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
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
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

    // Machine facts.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ram = procfs::mem_total_kib();
    let cpu = procfs::cpu_model().unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let fs = filesystem(&dir);
    let load_start = load_average();
    let started = Instant::now();
    println!("bench: wallet-ledger benchmark suite, mode {mode}");
    println!("machine: {cores} cores (available_parallelism), CPU {cpu}, RAM {} (/proc/meminfo), kernel {kernel}", fmt_kib(ram));
    println!(
        "disk: {} {} mounted at {} ({}), {} free; stores under {}",
        fs["device"].as_str().unwrap_or("?"),
        fs["type"].as_str().unwrap_or("?"),
        fs["mount_point"].as_str().unwrap_or("?"),
        fs["mount_options"].as_str().unwrap_or("?"),
        fs["available_bytes"].as_u64().map_or("?".into(), fmt_bytes),
        dir.display()
    );
    println!("load average at start (1, 5, 15 min): {load_start}  (a shared box makes every figure a lower bound)");
    println!(
        "plan: appends {} s per run; commands {} s; history {} s per H in {}; hot {} s per phase; rebuild over {} events / {} members (kept in {}); operator steps at {} members x {}{}",
        plan.seconds,
        plan.seconds,
        plan.seconds,
        plan.histories,
        plan.seconds,
        plan.rebuild_events,
        plan.rebuild_members,
        dir.display(),
        plan.demo_members,
        args.demo_events_per_member,
        if args.full {
            format!("; --full: 7Pay steps at {} members x {}", args.full_members, args.full_events_per_member)
        } else {
            String::new()
        }
    );
    println!("child logs: {}\n", logs.display());

    let mut runner = Runner {
        logs: logs.clone(),
        time_bin,
        children: Vec::new(),
        step: 0,
    };
    let mut table = Table::default();
    let secs = plan.seconds.to_string();
    let append_dir = dir.join("append");
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

    // 1. appends, redb and sled
    let redb = runner.run(
        "bench_append redb",
        &bin_dir.join("bench_append"),
        &append_args("redb"),
        true,
    );
    append_rows(
        &mut table,
        "redb",
        "durable: fdatasync per group commit",
        &redb,
    );
    let sled = if sled_bench.exists() {
        runner.run("bench_append sled", &sled_bench, &append_args("sled"), true)
    } else {
        let c = Child {
            label: "bench_append sled".into(),
            command: sled_bench.display().to_string(),
            ok: false,
            status: NOT_BUILT.into(),
            wall: Duration::ZERO,
            peak_rss_kib: None,
            polled_rss_kib: None,
            time_rss_kib: None,
            json: None,
            stderr_tail: format!(
                "{} not found (build: cargo build --release -p ledger-tests --features sled --bin bench_append --target-dir target/bench-sled)",
                sled_bench.display()
            ),
            load_before: String::new(),
            load_after: String::new(),
        };
        println!("[-] bench_append sled: {}", c.stderr_tail);
        c
    };
    append_rows(&mut table, "sled", "sync_file_range, not fdatasync", &sled);
    ratio_rows(&mut table, &redb, &sled);

    // 2. PostgreSQL peer
    let pg: Result<Child, String> = if args.no_pg {
        Err("skipped (--no-pg)".into())
    } else if !args.pg_script.exists() {
        Err(format!(
            "{} not found: PostgreSQL peer not measured",
            args.pg_script.display()
        ))
    } else {
        let pg_dir = dir.join("pg");
        let _ = std::fs::create_dir_all(&pg_dir);
        // pg_peer.sh (pgbench -T) takes whole seconds.
        let pg_secs = (plan.seconds.ceil() as u64).max(1).to_string();
        Ok(runner.run(
            "PostgreSQL peer",
            Path::new("bash"),
            &[
                args.pg_script.display().to_string(),
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
    pg_rows(&mut table, &redb, pg.as_ref().map_err(Clone::clone));

    // 3. commands
    let bench_wallet = bin_dir.join("bench_wallet");
    let commands = runner.run(
        "bench_wallet commands",
        &bench_wallet,
        &[
            "--json".into(),
            "--dir".into(),
            dir.display().to_string(),
            "commands".into(),
            "--seconds".into(),
            secs.clone(),
        ],
        true,
    );
    commands_row(&mut table, &commands);
    pg_wallet_row(&mut table, &commands, pg.as_ref().map_err(Clone::clone));

    // 3b. history (one member with H events) and hot (one source wallet vs one per client)
    let history = runner.run(
        "bench_wallet history",
        &bench_wallet,
        &[
            "--json".into(),
            "--dir".into(),
            dir.display().to_string(),
            "history".into(),
            "--histories".into(),
            plan.histories.clone(),
            "--seconds".into(),
            secs.clone(),
        ],
        true,
    );
    history_rows(&mut table, &history);
    let hot = runner.run(
        "bench_wallet hot",
        &bench_wallet,
        &[
            "--json".into(),
            "--dir".into(),
            dir.display().to_string(),
            "hot".into(),
            "--seconds".into(),
            secs.clone(),
        ],
        true,
    );
    hot_row(&mut table, &hot);

    // 4. rebuild over a kept store
    let rebuild_store = dir.join(format!(
        "rebuild-{}-{}",
        plan.rebuild_events, plan.rebuild_members
    ));
    let rebuild = runner.run(
        "bench_wallet rebuild",
        &bench_wallet,
        &[
            "--json".into(),
            "--dir".into(),
            dir.display().to_string(),
            "rebuild".into(),
            "--events".into(),
            plan.rebuild_events.to_string(),
            "--members".into(),
            plan.rebuild_members.to_string(),
            "--store".into(),
            rebuild_store.display().to_string(),
        ],
        true,
    );
    rebuild_row(&mut table, &rebuild, &plan);

    // 5. operator steps, then the 7Pay scale with --full
    let tool = bin_dir.join("migrate-tool");
    operator_steps(
        &mut runner,
        &mut table,
        &tool,
        &bench_wallet,
        &dir,
        plan.demo_members,
        args.demo_events_per_member,
        false,
        args.keep_stores,
    );
    if args.full {
        operator_steps(
            &mut runner,
            &mut table,
            &tool,
            &bench_wallet,
            &dir,
            args.full_members,
            args.full_events_per_member,
            true,
            args.keep_stores,
        );
    }

    let load_end = load_average();
    let total = started.elapsed();
    println!(
        "\n== summary: {cores} cores, CPU {cpu}, RAM {}, kernel {kernel}, {} {} at {}",
        fmt_kib(ram),
        fs["device"].as_str().unwrap_or("?"),
        fs["type"].as_str().unwrap_or("?"),
        fs["mount_point"].as_str().unwrap_or("?")
    );
    println!(
        "== load average at start {load_start}, at end {load_end}; mode {mode}; suite took {}\n",
        fmt_secs(total.as_secs_f64())
    );
    if args.quick {
        println!("--quick: 1 s runs and small stores, a smoke test of the suite; do not quote these figures\n");
    }
    table.print();
    let failed = table
        .rows
        .iter()
        .filter(|r| r.verdict == Verdict::Failed)
        .count();
    let unmeasured = table
        .rows
        .iter()
        .filter(|r| r.verdict == Verdict::NotMeasured)
        .count();
    println!(
        "\n{} rows: {} MET, {} MISSED, {} FAILED, {} NOT MEASURED; child logs in {}",
        table.rows.len(),
        table
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Met)
            .count(),
        table
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Missed)
            .count(),
        failed,
        unmeasured,
        logs.display()
    );
    if let Some(path) = &args.json {
        let doc = json!({
            "suite": "wallet-ledger bench",
            "mode": mode,
            "machine": {
                "cores": cores,
                "cpu": cpu,
                "ram_kib": ram,
                "kernel": kernel,
                "filesystem": fs,
                "load_average_start": load_start,
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
            "children": runner.children,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
        println!("summary JSON written to {}", path.display());
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
