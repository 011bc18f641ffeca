//! `statement MEMBER [--from T] [--to T] [--json | --csv]`: a member's statement for an auditor
//! without a server: every wallet event with its log position, business time, type, command id,
//! the change of the balance and the running balance, then the final balance. The lines come
//! from `projections::statement` (the one owner of the running balance, which walletd pages
//! over HTTP); this module only chooses the lines shown and prints them.
//!
//! Streaming: each line is written as it is computed (the JSON document too: its head, one
//! line per array element, then its tail), so memory does not grow with the member's history.
//! The events come through `read::with_stream_events`, the path of `log --stream`: the stream
//! index of one snapshot, or, while a writer holds the store, the segment files.
//!
//! `--from`/`--to` choose the lines shown by business time (both inclusive); the balance is
//! still carried from the wallet's first event, so the balance column is the real balance and
//! the closing figure is the wallet's balance after its last event read, whatever the window.
//! (Business time is the caller's and need not grow along the stream, so the window is a
//! filter on each line, not a range of positions.)

use std::io::Write;
use std::path::Path;

use anyhow::bail;
use ledger::domain::{wallet_stream, MemberId};
use ledger::Timestamp;
use projections::statement::{self, StatementLine, StatementStart};

use crate::output::{self, Outcome};
use crate::read;

/// The CSV header row; the JSON line objects have the same keys (and walletd's statement lines).
pub const CSV_HEADER: &str = "position,at,event_type,command_id,delta_yen,balance_yen";

/// How the statement is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An aligned table and a closing line.
    Human,
    /// One JSON document: `{"member", "from", "to", "lines": [...], "events", "lines_shown",
    /// "last_position", "final_balance_yen"}`.
    Json,
    /// RFC 4180 CSV with a header row.
    Csv,
}

impl Format {
    /// The format of the flags `--json` and `--csv` (clap refuses both).
    pub fn of(json: bool, csv: bool) -> Format {
        match (json, csv) {
            (true, _) => Format::Json,
            (false, true) => Format::Csv,
            (false, false) => Format::Human,
        }
    }
}

/// The business times whose lines are shown, both ends inclusive; `None` is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    from: Option<Timestamp>,
    to: Option<Timestamp>,
}

impl Window {
    /// Parses `--from` and `--to` (RFC 3339); a bad time or `--from` after `--to` is a bad
    /// argument (exit 2), named with the flag, the value and the rule.
    fn parse(from: Option<&str>, to: Option<&str>) -> anyhow::Result<Window> {
        let time = |flag: &str, text: Option<&str>| {
            text.map(|t| Timestamp::parse_rfc3339(t).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
                .transpose()
        };
        let window = Window {
            from: time("--from", from)?,
            to: time("--to", to)?,
        };
        if let (Some(f), Some(t), Some(from), Some(to)) = (window.from, window.to, from, to) {
            if f > t {
                bail!(
                    "--from {from} is after --to {to}: the window of business times would be empty"
                );
            }
        }
        Ok(window)
    }

    fn includes(&self, at: Timestamp) -> bool {
        self.from.is_none_or(|f| at >= f) && self.to.is_none_or(|t| at <= t)
    }

    fn is_open(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }
}

/// `statement MEMBER [--from T] [--to T] [--json | --csv]`. Exit 1 (nothing on stdout) when
/// the member has no wallet stream.
pub fn run(
    dir: &Path,
    member: &str,
    from: Option<&str>,
    to: Option<&str>,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let member = read::parse_member(member)?;
    let window = Window::parse(from, to)?;
    let stream = wallet_stream(&member);
    let bar = output::progress(None, "events read");
    let mut sheet = Sheet {
        format,
        window,
        member: &member,
        out,
        events: 0,
        shown: 0,
        last_position: 0,
    };
    let end = read::with_stream_events(dir, &stream, &mut || bar.inc(1), |records| {
        statement::each_line(records, &member, StatementStart::BEGIN, &mut |line| {
            sheet.line(&line)
        })
    })?;
    bar.finish_and_clear();
    if sheet.events == 0 {
        eprintln!("member {member} has no wallet");
        return Ok(Outcome::Failed);
    }
    sheet.finish(end.opening_balance_yen)?;
    Ok(Outcome::Ok)
}

/// The statement being printed: nothing is written before the first event (a member without a
/// wallet prints nothing), then the head, the lines in the window, the tail.
struct Sheet<'a> {
    format: Format,
    window: Window,
    member: &'a MemberId,
    out: &'a mut dyn Write,
    /// Wallet events read (lines of the whole statement).
    events: u64,
    /// Lines written (those in the window).
    shown: u64,
    /// Position of the last event read.
    last_position: u64,
}

/// Widths of the human table's columns (the command id, up to 128 characters, comes last so
/// that it never pushes the others): positions to 10 digits, RFC 3339 with microseconds,
/// the longest event type, signed yen amounts.
const POSITION_WIDTH: usize = 10;
const AT_WIDTH: usize = 27;
const TYPE_WIDTH: usize = 24;
const YEN_WIDTH: usize = 14;

impl Sheet<'_> {
    fn line(&mut self, line: &StatementLine) -> anyhow::Result<()> {
        if self.events == 0 {
            self.head()?;
        }
        self.events += 1;
        self.last_position = line.position;
        if !self.window.includes(line.at) {
            return Ok(());
        }
        match self.format {
            Format::Human => writeln!(
                self.out,
                "{:>POSITION_WIDTH$}  {:<AT_WIDTH$}  {:<TYPE_WIDTH$}  {:>YEN_WIDTH$}  {:>YEN_WIDTH$}  {}",
                line.position,
                line.at.to_rfc3339(),
                line.event_type,
                signed(line.delta_yen),
                line.balance_yen,
                line.command_id
            )?,
            Format::Json => write!(
                self.out,
                "{}\n{{\"position\":{},\"at\":{},\"event_type\":{},\"command_id\":{},\"delta_yen\":{},\"balance_yen\":{}}}",
                if self.shown == 0 { "" } else { "," },
                line.position,
                json_string(&line.at.to_rfc3339()),
                json_string(&line.event_type),
                json_string(&line.command_id),
                line.delta_yen,
                line.balance_yen
            )?,
            Format::Csv => writeln!(
                self.out,
                "{},{},{},{},{},{}",
                line.position,
                csv_field(&line.at.to_rfc3339()),
                csv_field(&line.event_type),
                csv_field(&line.command_id),
                line.delta_yen,
                line.balance_yen
            )?,
        }
        self.shown += 1;
        Ok(())
    }

    fn head(&mut self) -> anyhow::Result<()> {
        let time =
            |t: Option<Timestamp>| t.map_or("null".to_owned(), |t| json_string(&t.to_rfc3339()));
        match self.format {
            Format::Human => writeln!(
                self.out,
                "{:>POSITION_WIDTH$}  {:<AT_WIDTH$}  {:<TYPE_WIDTH$}  {:>YEN_WIDTH$}  {:>YEN_WIDTH$}  command id",
                "position", "at", "event type", "delta yen", "balance yen"
            )?,
            Format::Json => write!(
                self.out,
                "{{\"member\":{},\"from\":{},\"to\":{},\"lines\":[",
                json_string(self.member.as_str()),
                time(self.window.from),
                time(self.window.to)
            )?,
            Format::Csv => writeln!(self.out, "{CSV_HEADER}")?,
        }
        Ok(())
    }

    /// The tail: the final balance (after the last event read, whatever the window).
    fn finish(self, final_balance_yen: u64) -> anyhow::Result<()> {
        match self.format {
            Format::Human => {
                write!(
                    self.out,
                    "final balance of {}: {final_balance_yen} yen after {} wallet events (last at position {})",
                    self.member, self.events, self.last_position
                )?;
                if !self.window.is_open() {
                    let end = |t: Option<Timestamp>, open: &str| t.map_or(open.to_owned(), Timestamp::to_rfc3339);
                    write!(
                        self.out,
                        "; {} line{} shown with business time from {} to {}",
                        self.shown,
                        if self.shown == 1 { "" } else { "s" },
                        end(self.window.from, "the first"),
                        end(self.window.to, "the last")
                    )?;
                }
                writeln!(self.out)?;
            }
            Format::Json => writeln!(
                self.out,
                "{}],\"events\":{},\"lines_shown\":{},\"last_position\":{},\"final_balance_yen\":{final_balance_yen}}}",
                if self.shown == 0 { "" } else { "\n" },
                self.events,
                self.shown,
                self.last_position
            )?,
            // CSV has rows only: a closing row would break the columns.
            Format::Csv => {}
        }
        Ok(())
    }
}

/// A change of the balance with its sign (`+5000`, `-700`, `0`).
fn signed(delta_yen: i128) -> String {
    if delta_yen > 0 {
        format!("+{delta_yen}")
    } else {
        delta_yen.to_string()
    }
}

/// A JSON string literal (quotes and escapes by serde_json).
fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// A CSV field by RFC 4180: quoted when it holds a comma, a quote or a line break, with its
/// quotes doubled. (Command ids may hold commas and quotes; never control characters.)
fn csv_field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves CSV fields are quoted only when RFC 4180 needs it, with their quotes doubled.
    // (Planted defect caught: quoting without doubling the quotes.)
    #[test]
    fn csv_fields_are_quoted_by_rfc_4180() {
        assert_eq!(csv_field("p1"), "p1");
        assert_eq!(csv_field("order 7, 2019"), "\"order 7, 2019\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("日本語の注文 #1"), "日本語の注文 #1");
    }

    // Proves the window parses both flags, refuses a bad time naming the flag, and refuses
    // --from after --to naming both values; equal ends are a window of one instant.
    #[test]
    fn the_window_names_the_flag_and_the_rule() {
        let t = |s: &str| Timestamp::parse_rfc3339(s).expect("a valid time");
        let w = Window::parse(Some("2019-07-01T10:00:00+09:00"), None).expect("a window");
        assert_eq!(w.from, Some(t("2019-07-01T01:00:00Z")));
        assert!(w.includes(t("2019-07-01T01:00:00Z")));
        assert!(!w.includes(t("2019-07-01T00:59:59Z")));
        let one = Window::parse(
            Some("2019-07-01T01:00:00Z"),
            Some("2019-07-01T10:00:00+09:00"),
        )
        .expect("equal ends");
        assert!(one.includes(t("2019-07-01T01:00:00Z")));
        assert!(!one.includes(t("2019-07-01T01:00:01Z")));
        assert_eq!(
            Window::parse(Some("yesterday"), None)
                .unwrap_err()
                .to_string(),
            "--from: `yesterday` is not an RFC 3339 time (e.g. 2019-07-30T13:00:00+09:00)"
        );
        assert_eq!(
            Window::parse(None, Some("2019-13-01T00:00:00Z"))
                .unwrap_err()
                .to_string(),
            "--to: `2019-13-01T00:00:00Z` is not an RFC 3339 time (e.g. 2019-07-30T13:00:00+09:00)"
        );
        assert_eq!(
            Window::parse(Some("2019-07-02T00:00:00Z"), Some("2019-07-01T00:00:00Z"))
                .unwrap_err()
                .to_string(),
            "--from 2019-07-02T00:00:00Z is after --to 2019-07-01T00:00:00Z: the window of business times would be empty"
        );
    }
}
