//! `import FILE`: applies JSON Lines commands, streaming, in file order, pipelined.
//!
//! Why pipelined: the ledger's writer group-commits whatever is queued (one fsync per group), so
//! waiting for each line before sending the next would pay one fsync per line. Why it keeps the
//! file order without waiting: the writer decides commands in the order they are queued, each
//! against the state every earlier one left ([`WalletService::queue`]), so lines are queued in
//! file order and a `pay` always sees the `top_up` before it, even in the same group commit. One
//! member's 35,000 payments go as fast as 35,000 members' (they used to wait for each other's
//! commit). `expire` without a member runs member by member ([`WalletService::submit`]): it waits
//! for every line before it, and lines after it wait for it.
//!
//! Limits: at most [`WINDOW`] lines queued and not yet reported (results are reported in line
//! order), lines of at most [`MAX_LINE_BYTES`] bytes, and a bounded channel from the reader
//! thread. Memory is bounded whatever the file size.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use anyhow::Context;
use ledger::domain::Command;
use ledger::AppendError;
use projections::{Queued, SubmitError, Submitted, WalletService};
use tokio::sync::mpsc;

use crate::output::{self, Outcome};
use crate::store;

/// Most lines read but not yet reported (started, waiting for a predecessor, or done out of
/// order); bounds memory whatever the file size.
const WINDOW: u64 = 8_192;
/// Longest accepted line (a command is a few hundred bytes; this only stops runaway input).
const MAX_LINE_BYTES: usize = ledger::limits::MAX_IMPORT_LINE_BYTES;
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
        // Decided before the byte-order mark is taken off: an overlong first line must not
        // shrink under the limit and be parsed cut short (its rest would become line 2).
        let overlong = buf.len() > MAX_LINE_BYTES && buf.last() != Some(&b'\n');
        if number == 1 && buf.starts_with(UTF8_BOM) {
            // SPEC 2: a byte-order mark at the start of the input (spreadsheet exports write
            // one) is skipped. Anywhere else it is an error (`InputError::ByteOrderMark`).
            buf.drain(..UTF8_BOM.len());
        }
        if !overlong && is_blank(&buf) {
            // SPEC 2: blank lines are skipped and not counted; later lines keep their numbers.
            continue;
        }
        let parsed = if overlong {
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

/// The UTF-8 byte-order mark.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A line holding nothing but its end (LF or CRLF), spaces or tabs.
fn is_blank(line: &[u8]) -> bool {
    line.iter()
        .all(|b| matches!(b, b'\n' | b'\r' | b' ' | b'\t'))
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

/// Reports results; lines arrive in order (the pipeline keeps it).
struct Reporter {
    /// The last line reported.
    last: u64,
    summary: Summary,
    bar: indicatif::ProgressBar,
}

impl Reporter {
    fn record(&mut self, number: u64, result: LineResult) {
        debug_assert!(number > self.last, "lines are reported in order");
        match result {
            LineResult::Applied => self.summary.applied += 1,
            LineResult::Duplicate => self.summary.duplicate += 1,
            LineResult::Rejected(reason) => {
                self.summary.rejected += 1;
                self.bar.suspend(|| eprintln!("line {number}: {reason}"));
            }
        }
        self.last = number;
        self.bar.inc(1);
    }
}

/// Why a submit stops the whole import (the tool cannot do its job) rather than one line.
fn is_fatal(e: &SubmitError) -> bool {
    matches!(
        e,
        SubmitError::Read(_)
            | SubmitError::Ledger(
                AppendError::Storage { .. }
                    | AppendError::OutcomeUnknown { .. }
                    | AppendError::Hook(_)
                    | AppendError::Closed
            )
    )
}

/// A line queued or already settled, waiting to be reported in order.
enum InFlight {
    Queued(Queued),
    Settled(LineResult),
    Failed(SubmitError),
}

async fn schedule(
    service: WalletService,
    mut rx: mpsc::Receiver<FromReader>,
) -> anyhow::Result<Summary> {
    let mut reporter = Reporter {
        last: 0,
        summary: Summary::default(),
        bar: output::progress(None, "lines"),
    };
    let mut in_flight: VecDeque<(u64, InFlight)> = VecDeque::new();
    let mut fatal: Option<anyhow::Error> = None;
    while fatal.is_none() {
        let Some(received) = rx.recv().await else {
            break;
        };
        let (number, parsed) = match received {
            FromReader::Failed(reason) => {
                fatal = Some(anyhow::anyhow!(reason));
                break;
            }
            FromReader::Line(Line { number, parsed }) => (number, parsed),
        };
        let entry = match parsed {
            Err(reason) => InFlight::Settled(LineResult::Rejected(reason)),
            Ok(cmd) if cmd.streams().is_empty() => {
                // `expire` of every wallet: after everything before it, before everything after.
                settle_all(&mut in_flight, &mut reporter, &mut fatal).await;
                let result = service.submit(&cmd).await;
                settle(number, result, &mut reporter, &mut fatal);
                continue;
            }
            Ok(cmd) => match service.queue(&cmd).await {
                Ok(queued) => InFlight::Queued(queued),
                Err(e) => InFlight::Failed(e),
            },
        };
        in_flight.push_back((number, entry));
        while in_flight.len() as u64 >= WINDOW {
            settle_front(&mut in_flight, &mut reporter, &mut fatal).await;
        }
    }
    drop(rx);
    // Lines already queued are decided whatever happens now: report them.
    settle_all(&mut in_flight, &mut reporter, &mut fatal).await;
    reporter.bar.finish_and_clear();
    match fatal {
        Some(e) => {
            let s = &reporter.summary;
            Err(e.context(format!(
                "import stopped after line {} (applied {}, duplicate {}, rejected {})",
                reporter.last, s.applied, s.duplicate, s.rejected
            )))
        }
        None => Ok(reporter.summary),
    }
}

async fn settle_front(
    in_flight: &mut VecDeque<(u64, InFlight)>,
    reporter: &mut Reporter,
    fatal: &mut Option<anyhow::Error>,
) {
    let Some((number, entry)) = in_flight.pop_front() else {
        return;
    };
    match entry {
        InFlight::Settled(line) => reporter.record(number, line),
        InFlight::Queued(queued) => settle(number, queued.outcome().await, reporter, fatal),
        InFlight::Failed(e) => settle(number, Err(e), reporter, fatal),
    }
}

async fn settle_all(
    in_flight: &mut VecDeque<(u64, InFlight)>,
    reporter: &mut Reporter,
    fatal: &mut Option<anyhow::Error>,
) {
    while !in_flight.is_empty() {
        settle_front(in_flight, reporter, fatal).await;
    }
}

fn settle(
    number: u64,
    result: Result<Submitted, SubmitError>,
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
