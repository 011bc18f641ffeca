//! `bench_reopen`: how long a store takes to open after a writer was killed with kill -9 in
//! the middle of a bulk import (issue 12: "open after kill -9 with the largest unindexed tail
//! allowed: <= 2 s").
//!
//! For each round: `migrate-tool --store DIR import` of fresh `open_wallet` lines runs as a child
//! process for `--run-ms`, is killed with SIGKILL, then this program reads the index checkpoint
//! the crash left (the raw index engine, so nothing is replayed yet) and times
//! `projections::open_store`, which finds the log's end and replays every frame past the
//! checkpoint into the index and the views. The tail replayed is the head after the open minus
//! the checkpoint before it; the writer syncs a checkpoint every
//! `ledger::limits::CHECKPOINT_EVENTS` events or `CHECKPOINT_INTERVAL`, which bounds it.
//!
//! Baseline in the same run: the same open with no tail (a second open right after the first).
//!
//! ```sh
//! bench_reopen --store /tmp/big --migrate-tool target/release/migrate-tool --rounds 5
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ledger::{Backend, Checkpoint, Create, Engine};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Open time after kill -9 of a bulk import (largest unindexed tail)")]
struct Args {
    /// Store directory (created with --members fresh members when missing).
    #[arg(long)]
    store: PathBuf,
    /// The migrate-tool binary that writes.
    #[arg(long, default_value = "target/release/migrate-tool")]
    migrate_tool: PathBuf,
    /// Kill rounds.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Milliseconds the import runs (its open included) before the kill.
    #[arg(long, default_value_t = 3_000)]
    run_ms: u64,
    /// Lines in each round's import file (more than it can write before the kill).
    #[arg(long, default_value_t = 400_000)]
    lines: u64,
    /// One JSON document on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        rounds.push(kill_and_reopen(&args, round)?);
    }
    let worst = rounds
        .iter()
        .map(|r| r.open_after_kill)
        .max()
        .unwrap_or_default();
    let largest_tail = rounds.iter().map(|r| r.tail_events).max().unwrap_or(0);
    if args.json {
        let doc = json!({
            "rounds": rounds.iter().map(|r| json!({
                "tail_events": r.tail_events,
                "head": r.head,
                "open_after_kill_ms": r.open_after_kill.as_secs_f64() * 1e3,
                "open_clean_ms": r.open_clean.as_secs_f64() * 1e3,
            })).collect::<Vec<_>>(),
            "largest_tail_events": largest_tail,
            "worst_open_after_kill_ms": worst.as_secs_f64() * 1e3,
            "checkpoint_events": ledger::limits::CHECKPOINT_EVENTS,
        });
        println!("{doc}");
        return Ok(());
    }
    println!("round  head        tail replayed  open after kill  open, no tail");
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "{i:>5}  {:>10}  {:>13}  {:>15.3} s  {:>11.3} s",
            r.head,
            r.tail_events,
            r.open_after_kill.as_secs_f64(),
            r.open_clean.as_secs_f64()
        );
    }
    println!(
        "worst open after kill -9: {:.3} s with tails up to {largest_tail} events (checkpoint every {} events or {:?})",
        worst.as_secs_f64(),
        ledger::limits::CHECKPOINT_EVENTS,
        ledger::limits::CHECKPOINT_INTERVAL
    );
    Ok(())
}

struct Round {
    head: u64,
    tail_events: u64,
    open_after_kill: Duration,
    open_clean: Duration,
}

fn kill_and_reopen(args: &Args, round: u32) -> anyhow::Result<Round> {
    let file =
        std::env::temp_dir().join(format!("bench-reopen-{}-{round}.jsonl", std::process::id()));
    write_lines(&file, round, args.lines)?;
    let mut child = Command::new(&args.migrate_tool)
        .arg("--store")
        .arg(&args.store)
        .arg("import")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {}", args.migrate_tool.display()))?;
    // Probing the store while the import opens it could make the import fail on the lock, so
    // the import just gets `--run-ms` (its open included) before the kill.
    std::thread::sleep(Duration::from_millis(args.run_ms));
    if child.try_wait()?.is_some() {
        bail!("the import ended before it was killed: give it more --lines");
    }
    child.kill().context("SIGKILL")?;
    child.wait()?;
    std::fs::remove_file(&file).ok();
    let before = loop {
        if let Some(c) = checkpoint_or_locked(&args.store)? {
            break c;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let started = Instant::now();
    let store = projections::open_store(&args.store, Create::No, Backend::Redb)?;
    let open_after_kill = started.elapsed();
    let head = Checkpoint::read(&*store.index().snapshot()?)?
        .head
        .position
        .0;
    drop(store);
    let started = Instant::now();
    drop(projections::open_store(
        &args.store,
        Create::No,
        Backend::Redb,
    )?);
    let open_clean = started.elapsed();
    Ok(Round {
        head,
        tail_events: head - before.head.position.0,
        open_after_kill,
        open_clean,
    })
}

/// The index checkpoint as the store is on disk after the kill, without replaying anything
/// (the raw index engine); `None` while the killed process's lock is not yet released.
fn checkpoint_or_locked(store: &Path) -> anyhow::Result<Option<Checkpoint>> {
    let file = store.join(ledger::store::REDB_FILE);
    if !file.exists() {
        return Ok(None);
    }
    match ledger::engine::redb::RedbEngine::open(&file, false) {
        Ok(index) => Ok(Some(Checkpoint::read(&*index.snapshot()?)?)),
        Err(ledger::EngineError::Locked { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `open_wallet` lines for fresh members of this round.
fn write_lines(file: &Path, round: u32, lines: u64) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    let pid = std::process::id();
    for i in 0..lines {
        writeln!(
            out,
            r#"{{"id":"reopen-{pid}-{round}-{i}","type":"open_wallet","member":"r{pid}-{round}-{i}"}}"#
        )?;
    }
    out.flush()?;
    Ok(())
}
