//! `bench_http`: the `http` workload of SPEC section 6 (issue 14): the `commands` mix through
//! walletd over loopback HTTP, against the in-process `commands` figure measured in the same
//! run with the same mix and the same number of clients; `GET wallet` throughput; and the live
//! event feed (SSE) fanned out to many subscribers while the commands load runs.
//!
//! One run, every figure with its baseline from the same run:
//! 1. **Stores**: two fresh stores of `--members` funded wallets ([`prepare_members`], not
//!    timed): one for the in-process side, one for walletd. A service key is made with
//!    `walletd keys add`, and the release `walletd` is started on the second store
//!    (`--listen 127.0.0.1:0 --rate-limit-per-sec 0 --log-format json`, stderr to a file); its
//!    address is its first stdout line.
//! 2. **Commands**, `--rounds` rounds, each: `--connections` in-process clients submit the SPEC
//!    mix through `WalletService::submit` for `--seconds` ([`run_in_process`], the code path of
//!    `bench_wallet commands`), then `--connections` keep-alive HTTP/1.1 connections, one client
//!    task each, `POST /v1/commands` the same mix ([`ClientMix`], same seed) with unique
//!    `Idempotency-Key`s for `--seconds`. Alternating spreads the drifting load of a shared box
//!    over both sides. Target: HTTP >= 60% of in process.
//! 3. **Reads**, `--rounds` rounds, each: in-process tasks read random wallets through
//!    `WalletService::wallet` and encode the wallet JSON (what a read costs without HTTP), then
//!    `--connections` connections `GET /v1/members/{m}/wallet` of random members. Target:
//!    >= 50,000 requests/s.
//! 4. **SSE fan-out**: `--subscribers` connections on `GET /v1/events?from=<head + 1>` while
//!    the HTTP commands load runs once more. Each subscriber checks that the event ids it
//!    receives are consecutive (no gap, no repeat); a sampler compares, every 50 ms, the highest
//!    position acknowledged to a client with each subscriber's last id (the lag, in events).
//!    After the load, the subscribers must reach the last acknowledged position. Target: they
//!    keep up (every event, in order, worst lag <= 1 s of writes).
//! 5. walletd is stopped by SIGTERM; its head must equal the highest acknowledged position.
//!
//! The box has 2 cores and the load client runs on them beside the server: each phase reports
//! the client's and the server's CPU (utime + stime from `/proc`) as a share of one core, so a
//! reader can see how much of the machine the client took. The client runs on its own tokio
//! runtime with `--client-threads` worker threads (default 1), one hyper connection per task and
//! no connection pool, to take as little as it can.
//!
//! Latency is from just before the request is written until its whole response body is read.
//! Percentiles: `rounded_index`, as `bench_wallet` (so phase 1 and 3 are comparable).
//!
//! `--json` prints one JSON document on stdout (the human lines go to stderr); the `bench`
//! driver reads it (`bash scripts/bench.sh`, the `http` rows).
//!
//! Run: `cargo build --release -p walletd -p ledger-tests --bin bench_http --bin walletd &&
//! target/release/bench_http --seconds 10`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use ledger::domain::{Command, CommandBody, CommandId};
use ledger::{Backend, Create, LedgerOptions};
use ledger_tests::bench::commands::{
    client_mixes, coupons_for, member_id, prepare_members, run_in_process, ClientMix, InProcess,
};
use ledger_tests::bench::fmt::{fmt_us, mib_text, pct, thousands};
use ledger_tests::bench::json::emit;
use ledger_tests::bench::rng::Rng;
use ledger_tests::bench::stats::rounded_index;
use ledger_tests::bench::{cores, temp_dir};
use ledger_tests::procfs;
use ledger_tests::say;
use projections::{WalletJson, WalletService};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// SPEC 6 `http`: commands over HTTP at least this share of in-process `commands`.
const TARGET_COMMANDS_RATIO: f64 = 0.60;
/// SPEC 6 `http`: `GET wallet` requests per second.
const TARGET_GET_PER_S: f64 = 50_000.0;
/// The SSE feed keeps up when its worst lag is at most this much time's worth of writes.
const TARGET_SSE_LAG_S: f64 = 1.0;
/// How often the SSE sampler compares acknowledged positions with the subscribers' last ids.
const SSE_SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Cap on waiting for walletd to start, for the subscribers to drain, for walletd to stop:
/// only turns a hang into a failure.
const WAIT_CAP: Duration = Duration::from_secs(60);
/// The key name the benchmark's service key is stored under (prefixes its command ids).
const KEY_NAME: &str = "bench";

#[derive(Parser, Debug)]
#[command(about = "SPEC 6 `http`: commands through walletd vs in process, GET wallet, SSE fan-out")]
struct Args {
    /// The release walletd binary (default: `walletd` beside this program).
    #[arg(long)]
    walletd: Option<PathBuf>,
    /// Where the temporary stores go (default: the current directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep-alive connections (and in-process clients).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Funded members.
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Rounds of (in process, over HTTP), alternated, for the commands and for the reads: on a
    /// shared box the load of other processes drifts, and alternating spreads it over both
    /// sides of the ratio.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// SSE subscribers during the fan-out phase.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Worker threads of the load client's runtime (the server has the rest of the box).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Seed of the command mix.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Copy walletd's log (JSON lines on stderr) here before the temporary directory goes.
    #[arg(long)]
    keep_log: Option<PathBuf>,
    /// One JSON document on stdout (human lines on stderr).
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ledger_tests::bench::json::set_json_mode(args.json);
    ensure!(
        args.connections >= 1 && args.members >= 2 * args.connections,
        "need --members >= 2 * --connections (each client owns at least two members)"
    );
    ensure!(args.seconds > 0.0, "--seconds must be positive");
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    ensure!(
        args.client_threads >= 1,
        "--client-threads must be at least 1"
    );
    let walletd = match &args.walletd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this program's directory")?
            .join("walletd"),
    };
    ensure!(
        walletd.exists(),
        "walletd binary {} not found (build: cargo build --release -p walletd, or pass --walletd)",
        walletd.display()
    );
    let base = ledger_tests::bench::base_dir(args.dir.as_deref())?;
    let tmp = temp_dir(&base, "bench-http-")?;
    say!(
        "bench_http: {} cores ({}), RAM {}, load average {}, stores under {}",
        cores(),
        procfs::cpu_model().unwrap_or_else(|| "unknown CPU".into()),
        procfs::mem_total_text().unwrap_or_else(|| "unknown".into()),
        procfs::load_average(),
        base.display()
    );
    say!(
        "the load client shares the {} cores with the server: each phase reports both processes' CPU",
        cores()
    );
    let load_start = procfs::load_average();
    // In process: the runtime bench_wallet uses. Over HTTP: a client runtime of
    // --client-threads threads, so that the client leaves the server the rest of the box.
    let in_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let measured = run_phases(tmp.path(), &walletd, &args, &in_rt, &client_rt)?;
    report(&args, &measured, &load_start)
}

/// Everything one run measured.
struct Measured {
    in_commands: Vec<InProcess>,
    http_commands: Vec<HttpLoad>,
    in_reads: Vec<Reads>,
    http_reads: Vec<HttpLoad>,
    fan_out: FanOut,
    /// `GET /v1/head` after the loads equals the highest acknowledged position.
    head_matches: bool,
    stopped: String,
    log_bytes: u64,
    log_lines: u64,
    peak_rss_kib: Option<u64>,
}

/// Prepares both stores, starts walletd, runs the rounds and the fan-out, stops walletd.
fn run_phases(
    tmp: &Path,
    walletd: &Path,
    args: &Args,
    in_rt: &tokio::runtime::Runtime,
    client_rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Measured> {
    // Each store runs `rounds` command phases (walletd's one more, under the feed): enough
    // coupons for all of them, and the same number in both, so the wallets read are alike.
    let coupons = coupons_for((args.rounds + 1) as f64 * args.seconds, args.members);
    let in_dir = tmp.join("in-process");
    let http_dir = tmp.join("walletd-store");
    let started = Instant::now();
    in_rt.block_on(async {
        prepare_members(&in_dir, args.members, coupons).await?;
        prepare_members(&http_dir, args.members, coupons).await
    })?;
    say!(
        "prepared two stores of {} wallets ({coupons} coupons each) in {:.1} s (not the figure)",
        args.members,
        started.elapsed().as_secs_f64()
    );
    let (server, key) = Walletd::start(walletd, tmp, &http_dir)?;
    say!(
        "walletd: {} (pid {}) on {}, log {}",
        walletd.display(),
        server.pid(),
        server.addr,
        server.log.display()
    );
    let acked = Arc::new(AtomicU64::new(
        client_rt.block_on(head_position(&server, &key))?,
    ));
    let mixes = || client_mixes(args.connections, args.members, coupons, args.seed);
    let (mut in_mixes, mut http_mixes) = (mixes(), mixes());
    let (mut in_commands, mut http_commands) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let (run, back) = in_rt.block_on(run_in_process(&in_dir, in_mixes, args.seconds))?;
        in_mixes = back;
        ensure!(
            run.views_at_head,
            "in process: the views are not at the log head after round {round}"
        );
        say_in_process(round, args, &run);
        in_commands.push(run);
        let (load, back) = client_rt.block_on(commands_load(
            &server,
            &key,
            args.seconds,
            http_mixes,
            &format!("cmd{round}"),
            &acked,
        ))?;
        http_mixes = back;
        say_load(
            &format!("round {round} HTTP commands"),
            "commands",
            args,
            &load,
        );
        http_commands.push(load);
    }
    let (mut in_reads, mut http_reads) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let reads = in_rt.block_on(in_process_reads(&in_dir, args, round as u64))?;
        say!(
            "round {round} in-process reads: {} clients (WalletService::wallet + the wallet JSON): {} reads/s, p50 {}, p99 {}, CPU {} of one core",
            args.connections,
            thousands(reads.rate()),
            fmt_us(rounded_index(&reads.latencies_us, 0.50) as f64),
            fmt_us(rounded_index(&reads.latencies_us, 0.99) as f64),
            pct(reads.cpu_cores)
        );
        in_reads.push(reads);
        let load = client_rt.block_on(wallet_reads(
            &server,
            &key,
            args.connections,
            args.members,
            args.seconds,
            args.seed ^ round as u64,
        ))?;
        say_load(
            &format!("round {round} GET wallet"),
            "requests",
            args,
            &load,
        );
        http_reads.push(load);
    }
    let _ = std::fs::remove_dir_all(&in_dir);

    let (fan_out, _) = client_rt.block_on(fan_out(&server, &key, args, http_mixes, &acked))?;
    let (min, mean) = fan_out.delivered_per_s();
    say!(
        "SSE fan-out: {} subscribers while {} commands/s (p50 {}, p99 {}, failures {}) wrote {} events/s; delivered per subscriber {} events/s (min {}); lag max {} events ({:.3} s of writes), at the end {} events, drained in {}; out of order {}; {}",
        fan_out.subscribers,
        thousands(fan_out.load.rate()),
        fmt_us(fan_out.load.p_us(0.50) as f64),
        fmt_us(fan_out.load.p_us(0.99) as f64),
        fan_out.load.tally.failures,
        thousands(fan_out.written_per_s()),
        thousands(mean),
        thousands(min),
        fan_out.lag_max,
        fan_out.lag_max_s(),
        fan_out.lag_end,
        fan_out
            .drain
            .map_or("NOT within the cap".into(), |d| format!("{:.3} s", d.as_secs_f64())),
        fan_out.out_of_order,
        fan_out.load.cpu.text()
    );
    for e in fan_out.subscriber_errors.iter().take(3) {
        say!("    subscriber error: {e}");
    }

    let head = client_rt.block_on(head_position(&server, &key))?;
    let written = acked.load(Ordering::Relaxed);
    let peak_rss_kib = procfs::vm_hwm_kib(&server.pid().to_string());
    let log = server.log.clone();
    let stopped = server.stop()?;
    say!(
        "walletd: {stopped}; head {head}, highest acknowledged position {written}, peak RSS {}",
        mib_text(peak_rss_kib)
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    if let Some(keep) = &args.keep_log {
        std::fs::copy(&log, keep).with_context(|| format!("copy the log to {}", keep.display()))?;
    }
    Ok(Measured {
        in_commands,
        http_commands,
        in_reads,
        http_reads,
        fan_out,
        head_matches: head == written,
        stopped,
        log_bytes: log_text.len() as u64,
        log_lines: log_text.lines().count() as u64,
        peak_rss_kib,
    })
}

fn say_in_process(round: usize, args: &Args, run: &InProcess) {
    let t = &run.tally;
    say!(
        "round {round} in-process commands: {} clients, {} commands in {:.2} s: {} commands/s, p50 {}, p99 {}, rejected {}, CPU {}",
        args.connections,
        t.commands,
        run.wall.as_secs_f64(),
        thousands(run.rate()),
        fmt_us(rounded_index(&t.latencies_us, 0.50) as f64),
        fmt_us(rounded_index(&t.latencies_us, 0.99) as f64),
        t.rejected,
        run.cpu
    );
    if let Some(e) = &t.first_error {
        say!("    first error: {e}");
    }
}

fn say_load(what: &str, unit: &str, args: &Args, load: &HttpLoad) {
    say!(
        "{what}: {} connections, {} {unit} in {:.2} s: {} {unit}/s, p50 {}, p99 {}, rejected {}, failures {}; {}",
        args.connections,
        load.tally.commands,
        load.wall.as_secs_f64(),
        thousands(load.rate()),
        fmt_us(load.p_us(0.50) as f64),
        fmt_us(load.p_us(0.99) as f64),
        load.tally.rejected,
        load.tally.failures,
        load.cpu.text()
    );
    if let Some(e) = &load.tally.first_error {
        say!("    first error: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// in process

/// Wallet reads measured in process.
struct Reads {
    reads: u64,
    wall: Duration,
    /// Sorted.
    latencies_us: Vec<u64>,
    cpu_cores: f64,
}

impl Reads {
    fn rate(&self) -> f64 {
        self.reads as f64 / self.wall.as_secs_f64()
    }
}

/// `clients` tasks reading random members' wallets through `WalletService::wallet` and
/// encoding the wallet JSON walletd answers, for `args.seconds`: what `GET wallet` costs
/// without HTTP (a library user's read; no blocking pool in between).
async fn in_process_reads(dir: &Path, args: &Args, round: u64) -> anyhow::Result<Reads> {
    let service = WalletService::open(
        dir,
        LedgerOptions {
            create: Create::No,
            backend: Backend::Redb,
            hooks: Vec::new(),
        },
    )?;
    let cpu_before = procfs::process_cpu_ticks();
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(args.seconds);
    let mut tasks = JoinSet::new();
    for c in 0..args.connections {
        let service = service.clone();
        let members = args.members as u64;
        let mut rng = Rng(args.seed ^ round ^ 0x5eed ^ (c as u64).wrapping_mul(0x9e37_79b9));
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < stop {
                let member = member_id(rng.below(members) as usize);
                let t = Instant::now();
                let state = service
                    .wallet(&member)?
                    .with_context(|| format!("{member} has no wallet"))?;
                let body = serde_json::to_vec(&WalletJson::of(&state))?;
                latencies.push(t.elapsed().as_micros() as u64);
                std::hint::black_box(body);
                // One read per turn, as a connection's request would be: other tasks run.
                tokio::task::yield_now().await;
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies_us = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies_us.extend(done??);
    }
    let wall = started.elapsed();
    let cpu_cores = procfs::cpu_fraction(cpu_before, procfs::process_cpu_ticks(), wall);
    drop(service);
    latencies_us.sort_unstable();
    Ok(Reads {
        reads: latencies_us.len() as u64,
        wall,
        latencies_us,
        cpu_cores,
    })
}

// ---------------------------------------------------------------------------------------------
// walletd as a child process

/// A running walletd; killed when dropped (on an error path), stopped by SIGTERM otherwise.
struct Walletd {
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
    /// Its stdout after the first line; kept open so that a later print does not fail.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Walletd {
    /// Makes a service key in `dir/keys.toml` and starts `walletd` on `store`; returns the
    /// server and the key.
    fn start(walletd: &Path, dir: &Path, store: &Path) -> anyhow::Result<(Walletd, String)> {
        let keys = dir.join("keys.toml");
        let out = Process::new(walletd)
            .args(["keys", "add", "--keys"])
            .arg(&keys)
            .args(["--name", KEY_NAME, "--scope", "service"])
            .output()
            .with_context(|| format!("run {} keys add", walletd.display()))?;
        ensure!(
            out.status.success(),
            "walletd keys add failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let key = String::from_utf8(out.stdout)
            .context("walletd keys add printed a key that is not UTF-8")?
            .trim()
            .to_owned();
        ensure!(!key.is_empty(), "walletd keys add printed no key");
        let log = dir.join("walletd.log");
        let mut child = Process::new(walletd)
            .arg("--store")
            .arg(store)
            .args(["--listen", "127.0.0.1:0", "--keys"])
            .arg(&keys)
            .args(["--rate-limit-per-sec", "0", "--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).context("walletd log file")?)
            .spawn()
            .with_context(|| format!("start {}", walletd.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().context("walletd's stdout")?);
        let mut first = String::new();
        // walletd prints its address once the store is open and the socket bound; a failed
        // start closes stdout, which ends this read.
        let read = stdout.read_line(&mut first);
        let addr = first
            .trim()
            .strip_prefix("walletd listening on http://")
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "walletd did not start (first stdout line {first:?}, {read:?}); its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Ok((
            Walletd {
                child: Some(child),
                addr,
                log,
                _stdout: stdout,
            },
            key,
        ))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// utime + stime of the server process, clock ticks.
    fn cpu_ticks(&self) -> Option<u64> {
        procfs::stat_ticks(Path::new(&format!("/proc/{}/stat", self.pid())))
    }

    /// SIGTERM, then waits (at most [`WAIT_CAP`]) for the exit; returns how it ended.
    fn stop(mut self) -> anyhow::Result<String> {
        let mut child = self.child.take().context("walletd already stopped")?;
        let status = Process::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("run kill -TERM")?;
        ensure!(status.success(), "kill -TERM {} failed", child.id());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(format!(
                    "{status} after SIGTERM in {:.2} s",
                    started.elapsed().as_secs_f64()
                ));
            }
            if started.elapsed() > WAIT_CAP {
                let _ = child.kill();
                let _ = child.wait();
                bail!("walletd did not stop within {WAIT_CAP:?} of SIGTERM (killed)");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Walletd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// CPU of the client (this process) and the server over one phase.
struct CpuShare {
    client_cores: f64,
    server_cores: f64,
}

impl CpuShare {
    fn text(&self) -> String {
        format!(
            "CPU: server {} of one core, client {} ({} of the CPU both used)",
            pct(self.server_cores),
            pct(self.client_cores),
            pct(self.client_cores / (self.client_cores + self.server_cores))
        )
    }

    fn json(&self) -> Value {
        json!({
            "server_cores": self.server_cores,
            "client_cores": self.client_cores,
            "client_share_of_used": self.client_cores / (self.client_cores + self.server_cores),
        })
    }
}

/// Measures the CPU of both processes around a phase.
struct CpuMeter {
    client: Option<u64>,
    server: Option<u64>,
    started: Instant,
}

impl CpuMeter {
    fn start(server: &Walletd) -> CpuMeter {
        CpuMeter {
            client: procfs::process_cpu_ticks(),
            server: server.cpu_ticks(),
            started: Instant::now(),
        }
    }

    fn stop(&self, server: &Walletd) -> CpuShare {
        let wall = self.started.elapsed();
        CpuShare {
            client_cores: procfs::cpu_fraction(self.client, procfs::process_cpu_ticks(), wall),
            server_cores: procfs::cpu_fraction(self.server, server.cpu_ticks(), wall),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the HTTP client

/// One keep-alive HTTP/1.1 connection to walletd.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    auth: String,
}

impl Connection {
    async fn open(addr: SocketAddr, key: &str) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to walletd at {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake with walletd")?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the server closes; errors show on the sender.
            let _ = connection.await;
        });
        Ok(Connection {
            sender,
            host: addr.to_string(),
            auth: format!("Bearer {key}"),
        })
    }

    /// Sends one request and reads the whole response: status and body.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        idempotency_key: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.host)
            .header(AUTHORIZATION, &self.auth);
        if let Some(key) = idempotency_key {
            request = request
                .header("idempotency-key", key)
                .header(CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body))?;
        self.sender
            .ready()
            .await
            .context("the connection to walletd closed")?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// The request body of a command: its JSON line without `id` (the Idempotency-Key is the id).
fn request_body(body: CommandBody) -> anyhow::Result<Bytes> {
    let command = Command {
        id: CommandId::new("placeholder").expect("a short plain id is valid"),
        at: None,
        body,
    };
    let mut fields: serde_json::Map<String, Value> =
        serde_json::from_str(&command.to_json_line()).context("a command's own JSON line")?;
    fields.remove("id");
    Ok(Bytes::from(serde_json::to_vec(&fields)?))
}

/// What walletd answers to an applied command (the fields this benchmark reads).
#[derive(serde::Deserialize)]
struct Accepted {
    last_position: u64,
    events: u32,
    duplicate: bool,
}

/// What the clients of one HTTP load did.
#[derive(Default)]
struct HttpTally {
    /// Commands answered 200 (applied) or 422 (a rule refused it; counted as a command, as the
    /// in-process benchmark counts rejections).
    commands: u64,
    rejected: u64,
    events: u64,
    /// Any other answer (or a transport error): not counted as a command.
    failures: u64,
    latencies_us: Vec<u64>,
    first_error: Option<String>,
}

impl HttpTally {
    fn merge(&mut self, t: HttpTally) {
        self.commands += t.commands;
        self.rejected += t.rejected;
        self.events += t.events;
        self.failures += t.failures;
        self.latencies_us.extend(t.latencies_us);
        if self.first_error.is_none() {
            self.first_error = t.first_error;
        }
    }

    fn fail(&mut self, what: String) {
        self.failures += 1;
        self.first_error.get_or_insert(what);
    }
}

/// A measured HTTP load.
struct HttpLoad {
    tally: HttpTally,
    wall: Duration,
    cpu: CpuShare,
}

impl HttpLoad {
    fn rate(&self) -> f64 {
        self.tally.commands as f64 / self.wall.as_secs_f64()
    }

    fn p_us(&self, p: f64) -> u64 {
        rounded_index(&self.tally.latencies_us, p)
    }

    fn json(&self, unit: &str) -> Value {
        json!({
            unit: self.tally.commands,
            format!("{unit}_per_s"): self.rate(),
            "rejected": self.tally.rejected,
            "events": self.tally.events,
            "events_per_s": self.tally.events as f64 / self.wall.as_secs_f64(),
            "failures": self.tally.failures,
            "first_error": self.tally.first_error,
            "seconds": self.wall.as_secs_f64(),
            "p50_us": self.p_us(0.50),
            "p99_us": self.p_us(0.99),
            "cpu": self.cpu.json(),
        })
    }
}

/// One HTTP client of the commands mix until `stop`; `acked` is raised to the last position of
/// every applied command (the SSE phase's measure of what was written).
async fn command_client(
    mut conn: Connection,
    mix: &mut ClientMix,
    prefix: String,
    stop: Instant,
    acked: Arc<AtomicU64>,
) -> HttpTally {
    let mut tally = HttpTally::default();
    let mut n = 0u64;
    while Instant::now() < stop {
        let body = match request_body(mix.next_mixed().body) {
            Ok(b) => b,
            Err(e) => {
                tally.fail(format!("encoding a command: {e:#}"));
                break;
            }
        };
        n += 1;
        let key = format!("{prefix}-{n}");
        let t = Instant::now();
        let answer = conn
            .call(Method::POST, "/v1/commands", Some(&key), body)
            .await;
        let elapsed_us = t.elapsed().as_micros() as u64;
        match answer {
            Ok((StatusCode::OK, body)) => match serde_json::from_slice::<Accepted>(&body) {
                Ok(a) if !a.duplicate => {
                    tally.commands += 1;
                    tally.events += u64::from(a.events);
                    tally.latencies_us.push(elapsed_us);
                    acked.fetch_max(a.last_position, Ordering::Relaxed);
                }
                Ok(_) => tally.fail(format!("key {key} was answered as a replay")),
                Err(e) => tally.fail(format!("unreadable 200 answer: {e}")),
            },
            Ok((StatusCode::UNPROCESSABLE_ENTITY, body)) => {
                tally.commands += 1;
                tally.rejected += 1;
                tally.latencies_us.push(elapsed_us);
                tally
                    .first_error
                    .get_or_insert_with(|| format!("422 {}", String::from_utf8_lossy(&body)));
            }
            Ok((status, body)) => {
                tally.fail(format!("{status} {}", String::from_utf8_lossy(&body)));
            }
            Err(e) => {
                tally.fail(format!("{e:#}"));
                break;
            }
        }
    }
    tally
}

/// Opens `count` connections (before any clock starts).
async fn connections(addr: SocketAddr, key: &str, count: usize) -> anyhow::Result<Vec<Connection>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(Connection::open(addr, key).await?);
    }
    Ok(out)
}

/// Runs the commands mix over one connection per client for `seconds`; client `c` draws from
/// `mixes[c]` and its idempotency keys are `<phase>-<c>-<n>`. The mixes come back, so that a
/// later phase goes on where this one stopped (their coupons are used in order: no coupon is
/// redeemed twice across phases).
async fn commands_load(
    server: &Walletd,
    key: &str,
    seconds: f64,
    mixes: Vec<ClientMix>,
    phase: &str,
    acked: &Arc<AtomicU64>,
) -> anyhow::Result<(HttpLoad, Vec<ClientMix>)> {
    let conns = connections(server.addr, key, mixes.len()).await?;
    let meter = CpuMeter::start(server);
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(seconds);
    let mut tasks = JoinSet::new();
    for (c, (conn, mut mix)) in conns.into_iter().zip(mixes).enumerate() {
        let acked = Arc::clone(acked);
        let prefix = format!("{phase}-{c}");
        tasks.spawn(async move {
            let tally = command_client(conn, &mut mix, prefix, stop, acked).await;
            (c, tally, mix)
        });
    }
    let mut tally = HttpTally::default();
    let mut back = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (c, t, mix) = done?;
        tally.merge(t);
        back.push((c, mix));
    }
    let wall = started.elapsed();
    let cpu = meter.stop(server);
    tally.latencies_us.sort_unstable();
    back.sort_by_key(|(c, _)| *c);
    Ok((
        HttpLoad { tally, wall, cpu },
        back.into_iter().map(|(_, m)| m).collect(),
    ))
}

/// `GET /v1/members/{m}/wallet` of random members over one connection per client for
/// `seconds`.
async fn wallet_reads(
    server: &Walletd,
    key: &str,
    clients: usize,
    members: usize,
    seconds: f64,
    seed: u64,
) -> anyhow::Result<HttpLoad> {
    let conns = connections(server.addr, key, clients).await?;
    let meter = CpuMeter::start(server);
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(seconds);
    let mut tasks = JoinSet::new();
    for (c, mut conn) in conns.into_iter().enumerate() {
        let mut rng = Rng(seed ^ 0x5eed ^ (c as u64).wrapping_mul(0x9e37_79b9));
        tasks.spawn(async move {
            let mut tally = HttpTally::default();
            while Instant::now() < stop {
                let member = member_id(rng.below(members as u64) as usize);
                let path = format!("/v1/members/{member}/wallet");
                let t = Instant::now();
                match conn.call(Method::GET, &path, None, Bytes::new()).await {
                    Ok((StatusCode::OK, body)) if body.starts_with(b"{") => {
                        tally.latencies_us.push(t.elapsed().as_micros() as u64);
                        tally.commands += 1;
                    }
                    Ok((status, body)) => tally.fail(format!(
                        "{path}: {status} {}",
                        String::from_utf8_lossy(&body)
                    )),
                    Err(e) => {
                        tally.fail(format!("{path}: {e:#}"));
                        break;
                    }
                }
            }
            tally
        });
    }
    let mut tally = HttpTally::default();
    while let Some(done) = tasks.join_next().await {
        tally.merge(done?);
    }
    let wall = started.elapsed();
    let cpu = meter.stop(server);
    tally.latencies_us.sort_unstable();
    Ok(HttpLoad { tally, wall, cpu })
}

// ---------------------------------------------------------------------------------------------
// SSE fan-out

/// What one subscriber has seen so far (read by the sampler while it runs).
#[derive(Default)]
struct Seen {
    /// The id (log position) of the last event received.
    last_id: AtomicU64,
    events: AtomicU64,
    /// Ids that were not the previous id + 1 (a gap or a repeat).
    out_of_order: AtomicU64,
}

/// Reads the event feed from `from` until `stop`, recording what it sees in `seen`. Only the
/// `id:` lines are parsed: the benchmark measures delivery, not the client's JSON parsing.
async fn subscriber(
    addr: SocketAddr,
    key: String,
    from: u64,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    connected: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::get(format!("/v1/events?from={from}"))
        .header(HOST, addr.to_string())
        .header(AUTHORIZATION, format!("Bearer {key}"))
        .header(ACCEPT, "text/event-stream")
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    ensure!(
        response.status() == StatusCode::OK,
        "GET /v1/events answered {}",
        response.status()
    );
    let _ = connected.send(()).await;
    let mut body = response.into_body();
    let mut expected = from;
    let mut partial: Vec<u8> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let frame = match tokio::time::timeout(Duration::from_millis(100), body.frame()).await {
            Err(_) => continue, // nothing for 100 ms: look at `stop` again
            Ok(None) => bail!("the event feed ended (the server closed it)"),
            Ok(Some(frame)) => frame?,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        partial.extend_from_slice(&data);
        let mut start = 0;
        while let Some(end) = partial[start..].iter().position(|&b| b == b'\n') {
            let line = &partial[start..start + end];
            start += end + 1;
            if let Some(id) = line.strip_prefix(b"id:") {
                let id: u64 = std::str::from_utf8(id)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .with_context(|| {
                        format!("an SSE id line {:?}", String::from_utf8_lossy(line))
                    })?;
                if id != expected {
                    seen.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                expected = id + 1;
                seen.last_id.store(id, Ordering::Relaxed);
                seen.events.fetch_add(1, Ordering::Relaxed);
            }
        }
        partial.drain(..start);
    }
    Ok(())
}

/// The SSE phase's figures.
struct FanOut {
    subscribers: usize,
    /// The commands load that ran while they listened.
    load: HttpLoad,
    /// Events written during the load (from the acknowledged positions).
    written: u64,
    /// Per subscriber: events received by the end of the load.
    received_at_end: Vec<u64>,
    /// Worst lag seen by the sampler, in events, and the lag at the end of the load.
    lag_max: u64,
    lag_end: u64,
    /// Time from the end of the load until every subscriber had the last written event.
    drain: Option<Duration>,
    out_of_order: u64,
    /// Per subscriber: events received in all (by the end of the drain).
    received_total: Vec<u64>,
    subscriber_errors: Vec<String>,
}

impl FanOut {
    fn written_per_s(&self) -> f64 {
        self.written as f64 / self.load.wall.as_secs_f64()
    }

    fn delivered_per_s(&self) -> (f64, f64) {
        let secs = self.load.wall.as_secs_f64();
        let min = self.received_at_end.iter().copied().min().unwrap_or(0) as f64 / secs;
        let mean = self.received_at_end.iter().sum::<u64>() as f64
            / self.received_at_end.len().max(1) as f64
            / secs;
        (min, mean)
    }

    /// The worst lag as time: events behind / events written per second.
    fn lag_max_s(&self) -> f64 {
        self.lag_max as f64 / self.written_per_s()
    }

    /// Every subscriber got every event, in order, and never fell more than
    /// [`TARGET_SSE_LAG_S`] of writes behind.
    fn keeps_up(&self) -> bool {
        self.out_of_order == 0
            && self.subscriber_errors.is_empty()
            && self.drain.is_some()
            && self.received_total.iter().all(|&n| n == self.written)
            && self.lag_max_s() <= TARGET_SSE_LAG_S
    }
}

async fn fan_out(
    server: &Walletd,
    key: &str,
    args: &Args,
    mixes: Vec<ClientMix>,
    acked: &Arc<AtomicU64>,
) -> anyhow::Result<(FanOut, Vec<ClientMix>)> {
    let head = head_position(server, key).await?;
    acked.store(head, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel(args.subscribers.max(1));
    let mut subs = JoinSet::new();
    let mut seen = Vec::new();
    for _ in 0..args.subscribers {
        let s = Arc::new(Seen::default());
        seen.push(Arc::clone(&s));
        subs.spawn(subscriber(
            server.addr,
            key.to_owned(),
            head + 1,
            s,
            Arc::clone(&stop),
            connected_tx.clone(),
        ));
    }
    drop(connected_tx);
    for _ in 0..args.subscribers {
        tokio::time::timeout(WAIT_CAP, connected_rx.recv())
            .await
            .context("the subscribers did not connect")?
            .context("a subscriber failed before it connected")?;
    }
    // The sampler: the worst lag of any subscriber behind the highest acknowledged position.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (seen, acked, sampling) = (seen.clone(), Arc::clone(acked), Arc::clone(&sampling));
        tokio::spawn(async move {
            let mut worst = 0u64;
            while sampling.load(Ordering::Relaxed) {
                tokio::time::sleep(SSE_SAMPLE_EVERY).await;
                let written = acked.load(Ordering::Relaxed);
                for s in &seen {
                    let last = s.last_id.load(Ordering::Relaxed).max(head);
                    worst = worst.max(written.saturating_sub(last));
                }
            }
            worst
        })
    };
    let (load, mixes) = commands_load(server, key, args.seconds, mixes, "sse", acked).await?;
    let written_to = acked.load(Ordering::Relaxed);
    let received_at_end: Vec<u64> = seen
        .iter()
        .map(|s| s.events.load(Ordering::Relaxed))
        .collect();
    let lag_end = seen
        .iter()
        .map(|s| written_to.saturating_sub(s.last_id.load(Ordering::Relaxed).max(head)))
        .max()
        .unwrap_or(0);
    sampling.store(false, Ordering::Relaxed);
    let lag_max = sampler.await?.max(lag_end);
    let drained_at = Instant::now();
    let mut drain = None;
    while drained_at.elapsed() < WAIT_CAP {
        if seen
            .iter()
            .all(|s| s.last_id.load(Ordering::Relaxed) >= written_to)
        {
            drain = Some(drained_at.elapsed());
            break;
        }
        if subs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut subscriber_errors = Vec::new();
    while let Some(done) = subs.join_next().await {
        if let Err(e) = done? {
            subscriber_errors.push(format!("{e:#}"));
        }
    }
    Ok((
        FanOut {
            subscribers: args.subscribers,
            written: written_to - head,
            received_at_end,
            lag_max,
            lag_end,
            drain,
            out_of_order: seen
                .iter()
                .map(|s| s.out_of_order.load(Ordering::Relaxed))
                .sum(),
            received_total: seen
                .iter()
                .map(|s| s.events.load(Ordering::Relaxed))
                .collect(),
            subscriber_errors,
            load,
        },
        mixes,
    ))
}

/// `GET /v1/head`'s position.
async fn head_position(server: &Walletd, key: &str) -> anyhow::Result<u64> {
    let mut conn = Connection::open(server.addr, key).await?;
    let (status, body) = conn
        .call(Method::GET, "/v1/head", None, Bytes::new())
        .await?;
    ensure!(
        status == StatusCode::OK,
        "GET /v1/head answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let doc: Value = serde_json::from_slice(&body).context("GET /v1/head's JSON")?;
    doc.get("position")
        .and_then(Value::as_u64)
        .context("GET /v1/head has no position")
}

// ---------------------------------------------------------------------------------------------
// the summary

fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "MISSED"
    }
}

/// Commands (or reads) per second over all rounds, p50 and p99 over all their samples, and
/// each round's rate.
struct Rounds {
    count: u64,
    seconds: f64,
    /// Sorted.
    latencies_us: Vec<u64>,
    per_round: Vec<f64>,
    /// Mean CPU of the server and the client (in process: the client is the server).
    server_cores: f64,
    client_cores: f64,
}

impl Rounds {
    fn of(runs: impl Iterator<Item = (u64, Duration, Vec<u64>, f64, f64)>) -> Rounds {
        let mut r = Rounds {
            count: 0,
            seconds: 0.0,
            latencies_us: Vec::new(),
            per_round: Vec::new(),
            server_cores: 0.0,
            client_cores: 0.0,
        };
        for (count, wall, latencies, server, client) in runs {
            r.count += count;
            r.seconds += wall.as_secs_f64();
            r.latencies_us.extend(latencies);
            r.per_round.push(count as f64 / wall.as_secs_f64());
            r.server_cores += server;
            r.client_cores += client;
        }
        let n = r.per_round.len().max(1) as f64;
        r.server_cores /= n;
        r.client_cores /= n;
        r.latencies_us.sort_unstable();
        r
    }

    fn http(loads: &[HttpLoad]) -> Rounds {
        Rounds::of(loads.iter().map(|l| {
            (
                l.tally.commands,
                l.wall,
                l.tally.latencies_us.clone(),
                l.cpu.server_cores,
                l.cpu.client_cores,
            )
        }))
    }

    fn rate(&self) -> f64 {
        self.count as f64 / self.seconds
    }

    fn p_us(&self, p: f64) -> u64 {
        rounded_index(&self.latencies_us, p)
    }

    /// Server CPU time per request, µs: on a box shared with other work the scheduler decides
    /// how much CPU the server gets, and this is the figure that does not depend on it.
    fn server_cpu_us_per_request(&self) -> f64 {
        self.server_cores * 1e6 / self.rate()
    }

    fn per_round_text(&self) -> String {
        self.per_round
            .iter()
            .map(|r| thousands(*r))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn json(&self, unit: &str) -> Value {
        json!({
            unit: self.count,
            format!("{unit}_per_s"): self.rate(),
            format!("{unit}_per_s_per_round"): self.per_round,
            "seconds": self.seconds,
            "p50_us": self.p_us(0.50),
            "p99_us": self.p_us(0.99),
            "server_cpu_us_per_request": self.server_cpu_us_per_request(),
            "cpu": {
                "server_cores": self.server_cores,
                "client_cores": self.client_cores,
                "client_share_of_used": self.client_cores / (self.client_cores + self.server_cores),
            },
        })
    }
}

fn report(args: &Args, m: &Measured, load_start: &str) -> anyhow::Result<()> {
    let in_commands = Rounds::of(m.in_commands.iter().map(|r| {
        (
            r.tally.commands,
            r.wall,
            r.tally.latencies_us.clone(),
            r.cpu_cores,
            0.0,
        )
    }));
    let http_commands = Rounds::http(&m.http_commands);
    let in_reads = Rounds::of(
        m.in_reads
            .iter()
            .map(|r| (r.reads, r.wall, r.latencies_us.clone(), r.cpu_cores, 0.0)),
    );
    let http_reads = Rounds::http(&m.http_reads);
    let ratio = http_commands.rate() / in_commands.rate();
    let commands_met = ratio >= TARGET_COMMANDS_RATIO;
    let get_met = http_reads.rate() >= TARGET_GET_PER_S;
    let fan = &m.fan_out;
    let sse_met = fan.keeps_up();
    let (min, mean) = fan.delivered_per_s();
    let failures = |loads: &[HttpLoad]| loads.iter().map(|l| l.tally.failures).sum::<u64>();
    let rejected = |loads: &[HttpLoad]| loads.iter().map(|l| l.tally.rejected).sum::<u64>();
    let first_error = |loads: &[HttpLoad]| loads.iter().find_map(|l| l.tally.first_error.clone());
    say!("");
    say!(
        "commands over HTTP: {} commands/s (rounds {}), p50 {}, p99 {}, server CPU {} ({:.0} µs per command), client CPU {} ({} of what both used)",
        thousands(http_commands.rate()),
        http_commands.per_round_text(),
        fmt_us(http_commands.p_us(0.50) as f64),
        fmt_us(http_commands.p_us(0.99) as f64),
        pct(http_commands.server_cores),
        http_commands.server_cpu_us_per_request(),
        pct(http_commands.client_cores),
        pct(http_commands.client_cores / (http_commands.client_cores + http_commands.server_cores))
    );
    say!(
        "commands in process: {} commands/s (rounds {}), p50 {}, p99 {}, CPU {} ({:.0} µs per command)",
        thousands(in_commands.rate()),
        in_commands.per_round_text(),
        fmt_us(in_commands.p_us(0.50) as f64),
        fmt_us(in_commands.p_us(0.99) as f64),
        pct(in_commands.server_cores),
        in_commands.server_cpu_us_per_request()
    );
    say!(
        "commands over HTTP / in process: {} (target >= {}): {}",
        pct(ratio),
        pct(TARGET_COMMANDS_RATIO),
        verdict(commands_met)
    );
    say!(
        "GET wallet: {} requests/s (rounds {}), p50 {}, p99 {}, server CPU {} ({:.0} µs per request), client CPU {} (target >= {}): {}; the same reads in process: {} reads/s (rounds {}), {:.0} µs CPU per read",
        thousands(http_reads.rate()),
        http_reads.per_round_text(),
        fmt_us(http_reads.p_us(0.50) as f64),
        fmt_us(http_reads.p_us(0.99) as f64),
        pct(http_reads.server_cores),
        http_reads.server_cpu_us_per_request(),
        pct(http_reads.client_cores),
        thousands(TARGET_GET_PER_S),
        verdict(get_met),
        thousands(in_reads.rate()),
        in_reads.per_round_text(),
        in_reads.server_cpu_us_per_request()
    );
    say!(
        "SSE fan-out, {} subscribers keep up (every event, in order, worst lag <= {TARGET_SSE_LAG_S} s of writes): {}",
        fan.subscribers,
        verdict(sse_met)
    );
    say!(
        "walletd log: {} lines, {:.1} MB; head after the run equals the last acknowledged position: {}; load average {load_start} at start, {} at end",
        m.log_lines,
        m.log_bytes as f64 / 1e6,
        m.head_matches,
        procfs::load_average()
    );
    ensure!(
        m.head_matches,
        "walletd's head differs from the highest acknowledged position"
    );
    let mut commands_doc = http_commands.json("commands");
    commands_doc["rejected"] = json!(rejected(&m.http_commands));
    commands_doc["failures"] = json!(failures(&m.http_commands));
    commands_doc["first_error"] = json!(first_error(&m.http_commands));
    let mut in_doc = in_commands.json("commands");
    in_doc["rejected"] = json!(m.in_commands.iter().map(|r| r.tally.rejected).sum::<u64>());
    in_doc["first_error"] = json!(m
        .in_commands
        .iter()
        .find_map(|r| r.tally.first_error.clone()));
    let mut get_doc = http_reads.json("requests");
    get_doc["failures"] = json!(failures(&m.http_reads));
    get_doc["first_error"] = json!(first_error(&m.http_reads));
    emit(json!({
        "workload": "http",
        "cores": cores(),
        "connections": args.connections,
        "members": args.members,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "client_threads": args.client_threads,
        "load_average_start": load_start,
        "load_average_end": procfs::load_average(),
        "in_process": in_doc,
        "commands": commands_doc,
        "ratio_commands_vs_in_process": ratio,
        "target_commands_ratio_min": TARGET_COMMANDS_RATIO,
        "commands_met": commands_met,
        "get_wallet": get_doc,
        "in_process_reads": in_reads.json("reads"),
        "target_get_per_s_min": TARGET_GET_PER_S,
        "get_met": get_met,
        "sse": {
            "subscribers": fan.subscribers,
            "load": fan.load.json("commands"),
            "written_events": fan.written,
            "written_events_per_s": fan.written_per_s(),
            "delivered_events_per_s_per_subscriber_mean": mean,
            "delivered_events_per_s_per_subscriber_min": min,
            "lag_max_events": fan.lag_max,
            "lag_max_s": fan.lag_max_s(),
            "lag_end_events": fan.lag_end,
            "drain_s": fan.drain.map(|d| d.as_secs_f64()),
            "out_of_order": fan.out_of_order,
            "all_received": fan.received_total.iter().all(|&n| n == fan.written),
            "subscriber_errors": fan.subscriber_errors,
            "target_lag_s_max": TARGET_SSE_LAG_S,
        },
        "sse_met": sse_met,
        "walletd": {
            "stopped": m.stopped,
            "peak_rss_kib": m.peak_rss_kib,
            "log_lines": m.log_lines,
            "log_bytes": m.log_bytes,
            "head_matches_acknowledged": m.head_matches,
        },
    }))
}
