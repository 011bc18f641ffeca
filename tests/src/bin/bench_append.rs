//! `bench_append`: the `append-1` / `append-100` workloads of SPEC section 6, with the raw-disk
//! baseline measured in the same run.
//!
//! For each events-per-call `K` (`--batch`, default 1,100) and each concurrency `C` (`--writers`,
//! default 1,8,64) it opens a fresh store, starts `C` tokio tasks that each append `K` 200-byte
//! events per call to their own stream (`ExpectedVersion::Exact`) and wait for the durable ack,
//! and reports events/s and the p50/p99 ack latency. From the stored records it then counts the
//! group commits (every record of one group commit carries the same `recorded_at`, see
//! `Plan::new` in `ledger/src/append.rs`), which gives commits/s and events per commit.
//!
//! Raw-disk baseline: sequential `write`s of the same record bytes (`EventRecord::encoded_len`
//! of the records the run stored) to a fresh file in the same directory, one `fdatasync` per
//! batch, single-threaded, for as long (or as many events) as the ledger run. Two batch sizes:
//! - `avg`: the ledger's measured average group commit, in events (rounded, at least 1): the
//!   disk bound for what the ledger actually committed per sync;
//! - `C*K`: every writer's call in one sync, the largest batch the workload can form: the disk
//!   bound for the best grouping the workload allows.
//!
//! Also reports process CPU (user+sys over wall, 100% = one core) and the CPU share of the
//! `ledger-writer` thread, to tell a CPU-bound writer from an fsync-bound one.
//!
//! Run: `cargo run --release -p ledger-tests --bin bench_append -- --backend redb --seconds 5`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use ledger::{
    AppendRequest, Backend, Codec, ExpectedVersion, Ledger, LedgerOptions, NewEvent, Position,
    StreamAppend, StreamVersion, Timestamp,
};
use ledger_tests::bench::fmt::fmt_us;
use ledger_tests::bench::stats::nearest_rank;
use ledger_tests::procfs;
use serde_json::json;
use tokio::sync::Barrier;

/// Payload bytes per event (SPEC section 6).
const PAYLOAD_BYTES: usize = 200;
/// Untimed calls per writer before measuring (streams exist, redb file has grown a bit).
const WARMUP_CALLS: u64 = 2;
/// Events read per call when counting group commits.
const SCAN_CHUNK: usize = 65_536;

#[derive(Parser, Debug)]
#[command(about = "append-1 / append-100 benchmark with a same-run raw-disk baseline")]
struct Args {
    /// Storage backend: redb, or sled when built with `--features sled`.
    #[arg(long, default_value = "redb")]
    backend: String,
    /// Events per (workload, writers) run; exclusive with --seconds.
    #[arg(long, conflicts_with = "seconds")]
    events: Option<u64>,
    /// Seconds per (workload, writers) run (default 5 when --events is not given).
    #[arg(long)]
    seconds: Option<f64>,
    /// Concurrent writers, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u32, 8, 64])]
    writers: Vec<u32>,
    /// Events per append call, comma separated (1 = append-1, 100 = append-100).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1u32, 100])]
    batch: Vec<u32>,
    /// Where the temporary stores go (default: the current directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// One JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// How writers make command ids: `v7` (UUID v7, time-ordered: what README asks clients to
    /// send, so the command index grows at its right edge), `random` (uniformly random
    /// UUID-shaped ids: one B-tree leaf per command), `writer` (`w<writer>-<call>`).
    #[arg(long, value_enum, default_value = "v7")]
    command_ids: CommandIds,
}

/// The command-id scheme of a run (see `--command-ids`).
#[derive(Clone, Copy, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum CommandIds {
    V7,
    Random,
    Writer,
}

impl CommandIds {
    fn make(self, writer: u32, call: u64) -> String {
        match self {
            CommandIds::V7 => uuid::Uuid::now_v7().to_string(),
            CommandIds::Random => {
                let mut h = blake3::Hasher::new();
                h.update(&writer.to_le_bytes());
                h.update(&call.to_le_bytes());
                let bytes: [u8; 16] = h.finalize().as_bytes()[..16]
                    .try_into()
                    .expect("a BLAKE3 digest has 32 bytes");
                uuid::Uuid::from_bytes(bytes).to_string()
            }
            CommandIds::Writer => format!("w{writer}-{call}"),
        }
    }
}

/// When a run stops.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// After this many calls per writer.
    Calls(u64),
    /// At this instant.
    At(Instant),
}

impl Stop {
    fn done(self, calls: u64) -> bool {
        match self {
            Stop::Calls(n) => calls >= n,
            Stop::At(t) => Instant::now() >= t,
        }
    }
}

/// Figures of one ledger run.
struct LedgerRun {
    events: u64,
    wall: Duration,
    latencies_us: Vec<u64>,
    group_commits: u64,
    record_bytes: usize,
    /// Bytes the process handed to write system calls during the run (`wchar`).
    write_bytes: u64,
    process_cpu: f64,
    writer_cpu: f64,
}

/// Figures of one raw-disk run.
struct RawRun {
    batch_events: u64,
    events: u64,
    wall: Duration,
    sync_latencies_us: Vec<u64>,
}

impl RawRun {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.wall.as_secs_f64()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let backend = parse_backend(&args)?;
    let seconds = args.seconds.unwrap_or(5.0);
    ensure!(seconds > 0.0, "--seconds must be positive");
    let base_dir = ledger_tests::bench::base_dir(args.dir.as_deref())?;
    let cores = ledger_tests::bench::cores();
    let ram = procfs::mem_total_text().unwrap_or_else(|| "unknown".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    if !args.json {
        println!(
            "bench_append: backend {}, {cores} cores, RAM {ram}, stores under {}, command ids {:?}",
            args.backend,
            base_dir.display(),
            args.command_ids
        );
        match args.events {
            Some(n) => println!("each run: {n} events (raw baseline: the same number of events)"),
            None => println!("each run: {seconds} s (raw baseline: the same time)"),
        }
        println!("{}", table_header());
    }
    let mut results = Vec::new();
    for &k in &args.batch {
        for &c in &args.writers {
            let row = run_one(&runtime, &args, backend, &base_dir, seconds, c, k)?;
            if !args.json {
                println!("{}", table_row(&row));
            }
            results.push(row);
        }
    }
    if args.json {
        let doc = json!({
            "backend": args.backend,
            "command_ids": args.command_ids,
            "cores": cores,
            "ram": ram,
            "seconds_per_run": args.events.is_none().then_some(seconds),
            "events_per_run": args.events,
            "runs": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_legend();
    }
    Ok(())
}

/// The `--backend`, after checking `--writers` and `--batch`.
fn parse_backend(args: &Args) -> anyhow::Result<Backend> {
    let backend = match args.backend.as_str() {
        "redb" => Backend::Redb,
        #[cfg(feature = "sled")]
        "sled" => Backend::Sled,
        other => bail!("unknown backend {other:?} (redb, or sled with --features sled)"),
    };
    ensure!(
        args.writers.iter().all(|&c| c >= 1)
            && args.batch.iter().all(|&k| (1..=10_000).contains(&k)),
        "--writers must be >= 1 and --batch within 1..=10000 (the per-append limit)"
    );
    Ok(backend)
}

/// One row: append-`k` at `c` writers on a fresh store, then the two raw-disk baselines.
fn run_one(
    runtime: &tokio::runtime::Runtime,
    args: &Args,
    backend: Backend,
    base_dir: &Path,
    seconds: f64,
    c: u32,
    k: u32,
) -> anyhow::Result<serde_json::Value> {
    let store = ledger_tests::bench::temp_dir(base_dir, "bench-append-")?;
    let stop = |start: Instant| match args.events {
        Some(n) => Stop::Calls(n.div_ceil(u64::from(c) * u64::from(k)).max(1)),
        None => Stop::At(start + Duration::from_secs_f64(seconds)),
    };
    let run = runtime.block_on(run_ledger(
        store.path(),
        backend,
        c,
        k,
        args.command_ids,
        stop,
    ))?;
    let avg_group = (run.events as f64 / run.group_commits.max(1) as f64)
        .round()
        .max(1.0);
    let record = vec![0xA5u8; run.record_bytes];
    let raw_stop = |n_events: u64| match args.events {
        Some(_) => Stop::Calls(run.events.div_ceil(n_events)),
        None => Stop::At(Instant::now() + run.wall),
    };
    let raw_avg = raw_disk(
        store.path(),
        &record,
        avg_group as u64,
        raw_stop(avg_group as u64),
    )?;
    let nominal = u64::from(c) * u64::from(k);
    let raw_nominal = raw_disk(store.path(), &record, nominal, raw_stop(nominal))?;
    Ok(report(&args.backend, c, k, &run, &raw_avg, &raw_nominal))
}

async fn run_ledger(
    dir: &Path,
    backend: Backend,
    writers: u32,
    events_per_call: u32,
    command_ids: CommandIds,
    stop: impl Fn(Instant) -> Stop,
) -> anyhow::Result<LedgerRun> {
    let options = LedgerOptions {
        backend,
        ..LedgerOptions::default()
    };
    let ledger = Ledger::open(&dir.join("store"), options).context("open the ledger")?;
    let payload: Arc<Vec<u8>> =
        Arc::new((0..PAYLOAD_BYTES).map(|i| (i * 31 % 251) as u8).collect());
    // Two rendezvous: after warm-up (main reads the head and the clock), then go.
    let ready = Arc::new(Barrier::new(writers as usize + 1));
    let go = Arc::new(Barrier::new(writers as usize + 1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None::<Stop>);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let ledger = ledger.clone();
        let payload = Arc::clone(&payload);
        let (ready, go, mut stop_rx) = (Arc::clone(&ready), Arc::clone(&go), stop_rx.clone());
        tasks.spawn(async move {
            let mut writer = Writer::new(ledger, w, events_per_call, command_ids, payload);
            for _ in 0..WARMUP_CALLS {
                writer.call().await?;
            }
            ready.wait().await;
            go.wait().await;
            let stop = stop_rx
                .wait_for(Option::is_some)
                .await
                .map(|s| s.expect("waited for Some"))
                .context("stop signal")?;
            let mut latencies_us = Vec::new();
            let mut calls = 0u64;
            while !stop.done(calls) {
                let started = Instant::now();
                writer.call().await?;
                latencies_us.push(started.elapsed().as_micros() as u64);
                calls += 1;
            }
            anyhow::Ok(latencies_us)
        });
    }
    drop(stop_rx);
    ready.wait().await;
    let head_before = durable_head(&ledger)?;
    let cpu_before = (
        procfs::process_cpu_ticks(),
        procfs::thread_cpu_ticks("ledger-writer"),
    );
    let written_before = procfs::process_write_bytes();
    let start = Instant::now();
    stop_tx.send_replace(Some(stop(start)));
    go.wait().await;
    let mut latencies_us = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies_us.extend(done.context("writer task panicked")??);
    }
    let wall = start.elapsed();
    let cpu_after = (
        procfs::process_cpu_ticks(),
        procfs::thread_cpu_ticks("ledger-writer"),
    );
    let written_after = procfs::process_write_bytes();
    let head_after = durable_head(&ledger)?;
    let events = head_after.0 - head_before.0;
    ensure!(
        events == latencies_us.len() as u64 * u64::from(events_per_call),
        "head moved by {events} events but {} calls of {events_per_call} were acknowledged",
        latencies_us.len()
    );
    let (group_commits, record_bytes) = count_group_commits(&ledger, head_before, head_after)?;
    let ticks = |before, after| procfs::cpu_fraction(before, after, wall);
    Ok(LedgerRun {
        events,
        wall,
        latencies_us,
        group_commits,
        record_bytes,
        write_bytes: match (written_before, written_after) {
            (Some(b), Some(a)) => a - b,
            _ => 0,
        },
        process_cpu: ticks(cpu_before.0, cpu_after.0),
        writer_cpu: ticks(cpu_before.1, cpu_after.1),
    })
}

/// The head as stored. Not `Ledger::head()`: the writer publishes that only after it has
/// answered the group's callers, so right after an ack it can still show the previous head.
fn durable_head(ledger: &Ledger) -> anyhow::Result<Position> {
    let snap = ledger.snapshot()?;
    Ok(ledger::log::read_head(&*snap)?.0.position)
}

/// One writer: its own stream, its own version counter, a fresh command id per call.
struct Writer {
    ledger: Ledger,
    id: u32,
    stream: String,
    version: u64,
    calls: u64,
    events_per_call: u32,
    command_ids: CommandIds,
    payload: Arc<Vec<u8>>,
}

impl Writer {
    fn new(
        ledger: Ledger,
        id: u32,
        events_per_call: u32,
        command_ids: CommandIds,
        payload: Arc<Vec<u8>>,
    ) -> Writer {
        Writer {
            command_ids,
            ledger,
            id,
            stream: format!("bench-{id:04}"),
            version: 0,
            calls: 0,
            events_per_call,
            payload,
        }
    }

    async fn call(&mut self) -> anyhow::Result<()> {
        let events = (0..self.events_per_call)
            .map(|_| NewEvent {
                event_type: "bench.appended".into(),
                schema_version: 1,
                codec: Codec::Bincode2,
                payload: self.payload.to_vec(),
                at: Timestamp(1_700_000_000_000_000),
            })
            .collect();
        let request = AppendRequest {
            command_id: self.command_ids.make(self.id, self.calls),
            fingerprint: None,
            streams: vec![StreamAppend {
                stream: self.stream.clone(),
                expected: ExpectedVersion::Exact(StreamVersion(self.version)),
                events,
            }],
        };
        let outcome = self.ledger.append(request).await?;
        ensure!(
            !outcome.duplicate && outcome.count == self.events_per_call,
            "unexpected outcome {outcome:?}"
        );
        self.version += u64::from(self.events_per_call);
        self.calls += 1;
        Ok(())
    }
}

/// Number of group commits among positions (before, after], and the encoded size of the last
/// record. A group commit stamps all its records with one `recorded_at`, and consecutive group
/// commits are at least one fsync (far more than 1 µs) apart, so each change of `recorded_at`
/// in position order starts a new group commit.
fn count_group_commits(
    ledger: &Ledger,
    before: Position,
    after: Position,
) -> anyhow::Result<(u64, usize)> {
    let mut groups = 0u64;
    let mut last_recorded = None;
    let mut record_bytes = 0;
    let mut next = before.next();
    while next <= after {
        let chunk = ledger.read_all(next, SCAN_CHUNK)?;
        ensure!(!chunk.is_empty(), "position {next} is missing");
        for r in &chunk {
            if last_recorded != Some(r.recorded_at) {
                groups += 1;
                last_recorded = Some(r.recorded_at);
            }
            record_bytes = r.encoded_len();
            next = r.position.next();
        }
    }
    Ok((groups, record_bytes))
}

/// Sequential writes of `batch_events` records then one `fdatasync`, until `stop`.
fn raw_disk(dir: &Path, record: &[u8], batch_events: u64, stop: Stop) -> anyhow::Result<RawRun> {
    let path = dir.join("raw-baseline.bin");
    let mut file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let buffer = record.repeat(batch_events as usize);
    let mut sync_latencies_us = Vec::new();
    let start = Instant::now();
    let mut batches = 0u64;
    while !stop.done(batches) {
        let t = Instant::now();
        file.write_all(&buffer)?;
        file.sync_data()?;
        sync_latencies_us.push(t.elapsed().as_micros() as u64);
        batches += 1;
    }
    let wall = start.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(RawRun {
        batch_events,
        events: batches * batch_events,
        wall,
        sync_latencies_us,
    })
}

fn report(
    backend: &str,
    writers: u32,
    k: u32,
    run: &LedgerRun,
    raw_avg: &RawRun,
    raw_nominal: &RawRun,
) -> serde_json::Value {
    let mut lat = run.latencies_us.clone();
    lat.sort_unstable();
    let wall_s = run.wall.as_secs_f64();
    let events_per_s = run.events as f64 / wall_s;
    let mut raw_lat = raw_nominal.sync_latencies_us.clone();
    raw_lat.sort_unstable();
    json!({
        "workload": format!("append-{k}"),
        "backend": backend,
        "writers": writers,
        "events_per_call": k,
        "events": run.events,
        "wall_s": wall_s,
        "events_per_s": events_per_s,
        "ack_p50_us": nearest_rank(&lat, 50.0),
        "ack_p99_us": nearest_rank(&lat, 99.0),
        "ack_max_us": lat.last().copied().unwrap_or(0),
        "group_commits": run.group_commits,
        "commits_per_s": run.group_commits as f64 / wall_s,
        "events_per_commit": run.events as f64 / run.group_commits.max(1) as f64,
        "us_per_commit": wall_s * 1e6 / run.group_commits.max(1) as f64,
        "record_bytes": run.record_bytes,
        "written_bytes_per_event": run.write_bytes as f64 / run.events.max(1) as f64,
        "process_cpu_pct": run.process_cpu * 100.0,
        "writer_thread_cpu_pct": run.writer_cpu * 100.0,
        "raw_avg_batch_events": raw_avg.batch_events,
        "raw_avg_events_per_s": raw_avg.events_per_s(),
        "ratio_vs_raw_avg": events_per_s / raw_avg.events_per_s(),
        "raw_nominal_batch_events": raw_nominal.batch_events,
        "raw_nominal_events_per_s": raw_nominal.events_per_s(),
        "raw_nominal_sync_p50_us": nearest_rank(&raw_lat, 50.0),
        "ratio_vs_raw_nominal": events_per_s / raw_nominal.events_per_s(),
    })
}

fn table_header() -> String {
    format!(
        "{:<10} {:>3} {:>11} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>6} {:>6} | {:>5} {:>11} {:>6} | {:>5} {:>11} {:>9} {:>6}",
        "workload", "C", "events/s", "p50 ack", "p99 ack", "commits/s", "ev/commit",
        "µs/commit", "wr B/ev", "cpu%", "wrt%", "batch", "raw ev/s", "ratio", "batch", "raw ev/s",
        "raw sync", "ratio"
    )
}

fn table_row(r: &serde_json::Value) -> String {
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    let u = |k: &str| r[k].as_u64().unwrap_or(0);
    format!(
        "{:<10} {:>3} {:>11.0} {:>9} {:>9} {:>9.0} {:>9.1} {:>9.0} {:>7.0} {:>6.0} {:>6.0} | {:>5} {:>11.0} {:>5.0}% | {:>5} {:>11.0} {:>9} {:>5.0}%",
        r["workload"].as_str().unwrap_or("?"),
        u("writers"),
        f("events_per_s"),
        fmt_us(f("ack_p50_us")),
        fmt_us(f("ack_p99_us")),
        f("commits_per_s"),
        f("events_per_commit"),
        f("us_per_commit"),
        f("written_bytes_per_event"),
        f("process_cpu_pct"),
        f("writer_thread_cpu_pct"),
        u("raw_avg_batch_events"),
        f("raw_avg_events_per_s"),
        f("ratio_vs_raw_avg") * 100.0,
        u("raw_nominal_batch_events"),
        f("raw_nominal_events_per_s"),
        fmt_us(f("raw_nominal_sync_p50_us")),
        f("ratio_vs_raw_nominal") * 100.0,
    )
}

fn print_legend() {
    println!(
        "\ncolumns: C = concurrent writers; events/s = acknowledged durable events per second;\n\
         p50/p99 ack = latency of one append call (submit to durable ack);\n\
         commits/s, ev/commit, µs/commit = group commits counted from recorded_at in the log;\n\
         wr B/ev = bytes the process passed to write syscalls per event (record: see 'batch');\n\
         cpu% = process user+sys CPU over wall time (100 = one core); wrt% = the ledger-writer thread;\n\
         raw (first) = sequential write + fdatasync per batch of the ledger's average group commit\n\
         (batch, in events of the run's record size); raw (second) = batch of C x events-per-call\n\
         events, raw sync = its p50 write+fdatasync time; ratio = ledger events/s / raw events/s."
    );
}
