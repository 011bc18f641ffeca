//! Read commands: `show`, `export`, `digest`, `log`. They open the engine without a writer, read
//! one consistent snapshot, and stream their output (bounded memory at any store size). While a
//! writer holds the store, `log` and `show --as-of` read the segment files instead
//! (`store::open_for_log_read`); [`with_stream_events`] is that choice for one stream, shared
//! with `statement`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use ledger::domain::{MemberId, WalletState};
use ledger::log;
use ledger::record::EventRecord;
use ledger::{Position, Snapshot, StreamVersion};
use projections::digest::{self, DigestBuilder};
use projections::fold::{self, AsOf, FoldOptions};
use projections::{shown, views};

use crate::output::Outcome;
use crate::store::{self, LogSource};
use projections::WalletJson;

/// Parses `--as-of`; a bad value is a bad argument (exit 2). Absent: the head.
pub fn parse_as_of(input: Option<&str>) -> anyhow::Result<AsOf> {
    match input {
        None => Ok(AsOf::Head),
        Some(text) => AsOf::parse(text).map_err(|e| anyhow::anyhow!("--as-of: {e}")),
    }
}

/// Parses a member argument; a bad id is a bad argument (exit 2).
pub fn parse_member(input: &str) -> anyhow::Result<MemberId> {
    MemberId::new(input).map_err(|e| anyhow::anyhow!("member id {e}"))
}

/// `show MEMBER [--as-of T] [--json]`.
pub fn show(
    dir: &Path,
    member: &str,
    as_of: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let member = parse_member(member)?;
    let as_of = parse_as_of(as_of)?;
    let shown = match as_of {
        AsOf::Head => {
            let engine = store::open_for_views(dir, "show")?;
            let snap = engine.snapshot()?;
            store::require_current_views(&*snap)?;
            views::load_shown(&*snap, &member)?
        }
        other => fold_as_of(dir, &member, other)?.map(|s| views::ShownWallet::of(&s)),
    };
    let Some(shown) = shown else {
        eprintln!("member {member} has no wallet");
        return Ok(Outcome::Failed);
    };
    let shown = WalletJson::of_shown(&shown);
    if json {
        writeln!(out, "{}", shown.to_line())?;
    } else {
        write_human(&shown, out)?;
    }
    Ok(Outcome::Ok)
}

/// One member's wallet as of a moment: from its stream through the index, or, while a writer
/// holds the store, from the segment files (every frame is read; only the member's wallet
/// stream is folded).
fn fold_as_of(dir: &Path, member: &MemberId, as_of: AsOf) -> anyhow::Result<Option<WalletState>> {
    Ok(match store::open_for_log_read(dir)? {
        LogSource::Store(engine) => fold::fold_member(&*engine.snapshot()?, member, as_of)?,
        LogSource::Segments => {
            let stream = ledger::domain::wallet_stream(member);
            let mut no_progress = || {};
            let records = segment_stream_events(dir, &stream, &mut no_progress)?;
            fold::fold_wallet_records(records, as_of)?
        }
    })
}

/// The events of `stream` in stream order, read from the segment files (beside a writer):
/// every frame is read, only the stream's records are kept; `tick` is called for every event
/// read (progress). An error is kept (it ends the read).
fn segment_stream_events<'a>(
    dir: &Path,
    stream: &'a str,
    tick: &'a mut dyn FnMut(),
) -> anyhow::Result<impl Iterator<Item = Result<EventRecord, ledger::ReadError>> + 'a> {
    Ok(log::segment_events(dir)?
        .inspect(move |_| tick())
        .filter(move |r| r.as_ref().map_or(true, |r| r.stream == stream)))
}

/// Calls `read` with the events of `stream` in stream order (version 1 first): through the
/// index of one snapshot, or, while a writer holds the store, from the segment files
/// ([`segment_stream_events`]). `tick` is called for every event read, for progress. The one
/// path of `log --stream` and `statement`.
pub fn with_stream_events<T>(
    dir: &Path,
    stream: &str,
    tick: &mut dyn FnMut(),
    read: impl FnOnce(
        &mut dyn Iterator<Item = Result<EventRecord, ledger::ReadError>>,
    ) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match store::open_for_log_read(dir)? {
        LogSource::Store(engine) => {
            let snap = engine.snapshot()?;
            let mut records =
                log::stream_events(&*snap, stream, StreamVersion(1)).inspect(|_| tick());
            read(&mut records)
        }
        LogSource::Segments => read(&mut segment_stream_events(dir, stream, tick)?),
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}

fn write_human(w: &WalletJson, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "member:   {}", w.member)?;
    writeln!(out, "balance:  {} yen", w.balance)?;
    // Only when something is held, so the output of every wallet without holds is unchanged.
    if w.held > 0 {
        writeln!(out, "held:     {} yen ({})", w.held, w.holds.join(", "))?;
    }
    writeln!(out, "miles:    {}", w.miles)?;
    writeln!(out, "badges:   {}", list_or_none(&w.badges))?;
    writeln!(out, "coupons:  active: {}", list_or_none(&w.coupons.active))?;
    writeln!(
        out,
        "          redeemed: {}",
        list_or_none(&w.coupons.redeemed)
    )?;
    writeln!(
        out,
        "          expired: {}",
        list_or_none(&w.coupons.expired)
    )
}

/// `export [--as-of T]`.
pub fn export(dir: &Path, as_of: Option<&str>, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let as_of = parse_as_of(as_of)?;
    let engine = store::open_for_views(dir, "export")?;
    let snap = engine.snapshot()?;
    projections::export_each(&*snap, as_of, &mut |wallet| -> anyhow::Result<()> {
        writeln!(out, "{}", wallet.to_line())?;
        Ok(())
    })?;
    Ok(Outcome::Ok)
}

/// The digest of a fresh fold as of a moment (identity events are never folded).
pub fn fresh_digest(snap: &dyn Snapshot, as_of: AsOf) -> anyhow::Result<ledger::Hash> {
    let mut builder = DigestBuilder::default();
    let mut sink = |states: BTreeMap<MemberId, Option<WalletState>>| {
        for (member, state) in states {
            if let Some(state) = state {
                builder.add(&member, &digest::member_hash(&state));
            }
        }
        Ok(())
    };
    let mut progress = |_| {};
    fold::fold_log(snap, FoldOptions::new(as_of, &mut progress), &mut sink)?;
    Ok(builder.root())
}

/// `digest [--as-of T]`.
pub fn digest(dir: &Path, as_of: Option<&str>, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let as_of = parse_as_of(as_of)?;
    let engine = store::open_for_views(dir, "digest")?;
    let snap = engine.snapshot()?;
    let root = match as_of {
        AsOf::Head => {
            store::require_current_views(&*snap)?;
            digest::stored_digest(&*snap)?
        }
        other => fresh_digest(&*snap, other)?,
    };
    writeln!(out, "{root}")?;
    Ok(Outcome::Ok)
}

/// `log [--stream S] [--from N] [--limit K] [--json]`.
pub fn log(
    dir: &Path,
    stream: Option<&str>,
    from: u64,
    limit: Option<u64>,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let mut left = limit.unwrap_or(u64::MAX);
    let mut first = true;
    if json {
        write!(out, "{{\"events\":[")?;
    }
    let mut emit = |record: &EventRecord| -> anyhow::Result<()> {
        if json {
            if !first {
                write!(out, ",")?;
            }
            first = false;
            write!(out, "{}", shown::event_json(record))?;
        } else {
            writeln!(out, "{}", record_line(record))?;
        }
        Ok(())
    };
    let from = Position(from.max(1));
    let mut each = |records: &mut dyn Iterator<Item = Result<EventRecord, ledger::ReadError>>| {
        while left > 0 {
            let Some(record) = records.next() else { break };
            let record = record?;
            if record.position >= from {
                emit(&record)?;
                left -= 1;
            }
        }
        anyhow::Ok(())
    };
    match stream {
        Some(stream) => with_stream_events(dir, stream, &mut || {}, each)?,
        None => match store::open_for_log_read(dir)? {
            LogSource::Store(engine) => each(&mut log::events(&*engine.snapshot()?, from))?,
            LogSource::Segments => each(&mut log::segment_events(dir)?)?,
        },
    }
    if json {
        writeln!(out, "]}}")?;
    }
    Ok(Outcome::Ok)
}

fn record_line(r: &EventRecord) -> String {
    let payload = match shown::decoded(r) {
        Ok(e) => shown::payload_json(&e).to_string(),
        Err(e) => format!("(payload does not decode: {e})"),
    };
    format!(
        "{} {} v{} {} at={} cmd={} {}",
        r.position, r.stream, r.version, r.event_type, r.at, r.command_id, payload
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::Timestamp;

    // Proves both spellings of `--as-of` parse to the moment they name, and that every bad value
    // is refused with the flag, the value and the rule in one line.
    #[test]
    fn as_of_takes_a_position_or_a_time_and_names_the_rule() {
        assert_eq!(parse_as_of(None).unwrap(), AsOf::Head);
        assert_eq!(
            parse_as_of(Some("@1200")).unwrap(),
            AsOf::Position(Position(1200))
        );
        assert_eq!(
            parse_as_of(Some("@0")).unwrap(),
            AsOf::Position(Position(0))
        );
        assert_eq!(
            parse_as_of(Some("2019-07-30T13:00:00+09:00")).unwrap(),
            AsOf::BusinessTime(Timestamp::parse_rfc3339("2019-07-30T04:00:00Z").unwrap())
        );
        for (input, message) in [
            (
                "@",
                "--as-of: `@`: after @ must come a log position (a whole number)",
            ),
            (
                "@-1",
                "--as-of: `@-1`: after @ must come a log position (a whole number)",
            ),
            (
                "tomorrow",
                "--as-of: `tomorrow` is not an RFC 3339 time (e.g. 2019-07-30T13:00:00+09:00)",
            ),
            (
                "2019-07-30T13:00:00.0000001Z",
                "--as-of: `2019-07-30T13:00:00.0000001Z` has more than microsecond precision",
            ),
        ] {
            assert_eq!(parse_as_of(Some(input)).unwrap_err().to_string(), message);
        }
    }
}
