//! `import FILE`: applies JSON Lines commands, streaming, with bounded concurrency.
//!
//! Why concurrent: the ledger's writer group-commits whatever is queued (one fsync per group), so
//! submitting one command at a time would pay one fsync per line. Why careful: commands of the
//! same member must apply in file order (a `pay` after its `top_up`), so a command waits for
//! every earlier unfinished line that touches one of its streams, while later lines of other
//! members go ahead ([`Order`]). `expire` without a member touches every wallet: it waits for
//! everything before it, and everything after it waits for it.
//!
//! Limits: at most [`WINDOW`] lines between the oldest unreported line and the newest started
//! one (results are reported in line order), lines of at most [`MAX_LINE_BYTES`] bytes, and a
//! bounded channel from the reader thread. Memory is bounded whatever the file size.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use anyhow::Context;
use ledger::domain::Command;
use ledger::AppendError;
use projections::{SubmitError, Submitted, WalletService};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::output::{self, Outcome};
use crate::store;

/// Most lines read but not yet reported (started, waiting for a predecessor, or done out of
/// order); bounds memory whatever the file size.
const WINDOW: u64 = 8_192;
/// Longest accepted line (a command is a few hundred bytes; this only stops runaway input).
const MAX_LINE_BYTES: usize = 1 << 20;
/// Parsed lines buffered between the reader thread and the scheduler.
const CHANNEL_LINES: usize = 1_024;

/// One input line, parsed by the reader thread.
struct Line {
    number: u64,
    parsed: Result<Command, String>,
}

enum FromReader {
    Line(Line),
    Failed(String),
}

/// What became of one line.
enum LineResult {
    Applied,
    Duplicate,
    Rejected(String),
}

/// Totals of a run.
#[derive(Default)]
struct Summary {
    applied: u64,
    duplicate: u64,
    rejected: u64,
}

/// `import FILE` (`-` = stdin).
pub fn run(dir: &Path, file: &str, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let input: Box<dyn Read + Send> = if file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?)
    };
    let service = store::open_service(dir)?;
    let runtime = output::runtime()?;
    let (tx, rx) = mpsc::channel(CHANNEL_LINES);
    let reader = std::thread::Builder::new()
        .name("import-reader".into())
        .spawn(move || read_lines(input, &tx))?;
    let result = runtime.block_on(schedule(service, rx));
    // The scheduler drops the receiver when it stops, so the reader thread ends too.
    let _ = reader.join();
    let summary = result?;
    writeln!(
        out,
        "applied {}, duplicate {}, rejected {}",
        summary.applied, summary.duplicate, summary.rejected
    )?;
    Ok(Outcome::from_ok(summary.rejected == 0))
}

/// Reads, splits and parses lines; runs on its own thread so parsing overlaps the submits.
fn read_lines(input: Box<dyn Read + Send>, tx: &mpsc::Sender<FromReader>) {
    let mut reader = BufReader::with_capacity(1 << 16, input);
    let mut buf = Vec::with_capacity(1_024);
    let mut number = 0u64;
    loop {
        buf.clear();
        let limit = u64::try_from(MAX_LINE_BYTES + 1).expect("small constant fits in u64");
        let n = match reader.by_ref().take(limit).read_until(b'\n', &mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.blocking_send(FromReader::Failed(format!(
                    "cannot read input after line {number}: {e}"
                )));
                return;
            }
        };
        if n == 0 {
            return;
        }
        number += 1;
        let parsed = if buf.len() > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            if let Err(e) = skip_rest_of_line(&mut reader) {
                let _ = tx.blocking_send(FromReader::Failed(format!(
                    "cannot read input at line {number}: {e}"
                )));
                return;
            }
            Err(format!("line is longer than {MAX_LINE_BYTES} bytes"))
        } else {
            parse_line(&buf)
        };
        if tx
            .blocking_send(FromReader::Line(Line { number, parsed }))
            .is_err()
        {
            return;
        }
    }
}

fn skip_rest_of_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let (done, used) = {
            let chunk = reader.fill_buf()?;
            if chunk.is_empty() {
                return Ok(());
            }
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, chunk.len()),
            }
        };
        reader.consume(used);
        if done {
            return Ok(());
        }
    }
}

fn parse_line(raw: &[u8]) -> Result<Command, String> {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let text = std::str::from_utf8(raw).map_err(|_| "not valid UTF-8".to_owned())?;
    Command::parse_json_line(text).map_err(|e| e.to_string())
}

type Done = (u64, Vec<String>, Result<Submitted, SubmitError>);

/// The order commands must keep: a line waits for every earlier unfinished line that touches
/// one of its streams (and for everything before an `expire` of every wallet, which everything
/// after waits for). Lines without such a predecessor run concurrently, so one member's ten
/// consecutive lines do not hold up the next member's.
#[derive(Default)]
struct Order {
    /// The newest unfinished line touching each stream.
    last: HashMap<String, u64>,
    /// Unfinished lines (started or waiting), for a barrier.
    unfinished: BTreeSet<u64>,
    /// The unfinished `expire` of every wallet, if any.
    barrier: Option<u64>,
    /// Lines waiting, with their count of unfinished predecessors.
    waiting: HashMap<u64, (u32, Command, Vec<String>)>,
    /// Lines that wait for each line.
    successors: HashMap<u64, Vec<u64>>,
}

impl Order {
    /// Registers a line; returns it back if it may start now.
    fn add(
        &mut self,
        number: u64,
        cmd: Command,
        streams: Vec<String>,
    ) -> Option<(u64, Command, Vec<String>)> {
        let mut preds: BTreeSet<u64> = BTreeSet::new();
        if streams.is_empty() {
            preds.extend(self.unfinished.iter().copied());
        } else {
            preds.extend(streams.iter().filter_map(|s| self.last.get(s).copied()));
        }
        preds.extend(self.barrier);
        for s in &streams {
            self.last.insert(s.clone(), number);
        }
        if streams.is_empty() {
            self.barrier = Some(number);
        }
        self.unfinished.insert(number);
        for p in &preds {
            self.successors.entry(*p).or_default().push(number);
        }
        if preds.is_empty() {
            return Some((number, cmd, streams));
        }
        let count = u32::try_from(preds.len()).expect("at most WINDOW predecessors");
        self.waiting.insert(number, (count, cmd, streams));
        None
    }

    /// Marks a line finished; returns the lines that may start now.
    fn finish(&mut self, number: u64, streams: &[String]) -> Vec<(u64, Command, Vec<String>)> {
        self.unfinished.remove(&number);
        for s in streams {
            if self.last.get(s) == Some(&number) {
                self.last.remove(s);
            }
        }
        if self.barrier == Some(number) {
            self.barrier = None;
        }
        let mut ready = Vec::new();
        for succ in self.successors.remove(&number).unwrap_or_default() {
            let Some((count, _, _)) = self.waiting.get_mut(&succ) else {
                continue;
            };
            *count -= 1;
            if *count == 0 {
                let (_, cmd, streams) = self.waiting.remove(&succ).expect("present just above");
                ready.push((succ, cmd, streams));
            }
        }
        ready
    }
}

/// Results waiting to be reported in line order.
struct Reporter {
    next: u64,
    done: BTreeMap<u64, LineResult>,
    summary: Summary,
    bar: indicatif::ProgressBar,
}

impl Reporter {
    fn record(&mut self, number: u64, result: LineResult) {
        self.done.insert(number, result);
        while let Some(result) = self.done.remove(&self.next) {
            match result {
                LineResult::Applied => self.summary.applied += 1,
                LineResult::Duplicate => self.summary.duplicate += 1,
                LineResult::Rejected(reason) => {
                    self.summary.rejected += 1;
                    self.bar
                        .suspend(|| eprintln!("line {}: {reason}", self.next));
                }
            }
            self.next += 1;
            self.bar.inc(1);
        }
    }
}

/// Why a submit stops the whole import (the tool cannot do its job) rather than one line.
fn is_fatal(e: &SubmitError) -> bool {
    matches!(
        e,
        SubmitError::Read(_)
            | SubmitError::Ledger(AppendError::Storage { .. } | AppendError::Closed)
    )
}

async fn schedule(
    service: WalletService,
    mut rx: mpsc::Receiver<FromReader>,
) -> anyhow::Result<Summary> {
    let mut reporter = Reporter {
        next: 1,
        done: BTreeMap::new(),
        summary: Summary::default(),
        bar: output::progress(None, "lines"),
    };
    let mut order = Order::default();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut fatal: Option<anyhow::Error> = None;
    let mut newest = 0u64;
    let mut input_open = true;
    let spawn = |tasks: &mut JoinSet<Done>, (number, cmd, streams): (u64, Command, Vec<String>)| {
        let svc = service.clone();
        tasks.spawn(async move {
            let result = svc.submit(&cmd).await;
            (number, streams, result)
        });
    };
    loop {
        let may_read = input_open && fatal.is_none() && newest + 1 - reporter.next < WINDOW;
        if !may_read && tasks.is_empty() {
            break;
        }
        tokio::select! {
            received = rx.recv(), if may_read => match received {
                None => input_open = false,
                Some(FromReader::Failed(reason)) => fatal = Some(anyhow::anyhow!(reason)),
                Some(FromReader::Line(Line { number, parsed })) => {
                    newest = number;
                    match parsed {
                        Err(reason) => {
                            // Order is by line number: a rejected line finishes at once.
                            reporter.record(number, LineResult::Rejected(reason));
                        }
                        Ok(cmd) => {
                            let streams = cmd.streams();
                            if let Some(ready) = order.add(number, cmd, streams) {
                                spawn(&mut tasks, ready);
                            }
                        }
                    }
                }
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                let (number, streams, result) = joined?;
                for ready in order.finish(number, &streams) {
                    if fatal.is_none() {
                        spawn(&mut tasks, ready);
                    }
                }
                finish((number, streams, result), &mut reporter, &mut fatal);
            }
        }
    }
    drop(rx);
    reporter.bar.finish_and_clear();
    match fatal {
        Some(e) => {
            let s = &reporter.summary;
            Err(e.context(format!(
                "import stopped after line {} (applied {}, duplicate {}, rejected {})",
                reporter.next - 1,
                s.applied,
                s.duplicate,
                s.rejected
            )))
        }
        None => Ok(reporter.summary),
    }
}

fn finish(
    (number, _streams, result): Done,
    reporter: &mut Reporter,
    fatal: &mut Option<anyhow::Error>,
) {
    let line = match result {
        Ok(s) if s.duplicate => LineResult::Duplicate,
        Ok(_) => LineResult::Applied,
        Err(e) if is_fatal(&e) => {
            if fatal.is_none() {
                *fatal = Some(anyhow::Error::new(e).context(format!("line {number}")));
            }
            return;
        }
        Err(e) => LineResult::Rejected(e.to_string()),
    };
    reporter.record(number, line);
}
