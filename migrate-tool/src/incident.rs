//! `incident victims --from T1 --to T2 [--ip IP,...] [--json]` (SPEC section 7): parses the
//! query, runs `projections::incident::victims` and prints its report. The rules of the search
//! live in `projections::incident`; this module only chooses where the log is read from and
//! how the report is shown.
//!
//! Beside a writer: like `log` and `statement`, the search opens the store through
//! `store::open_for_log_read`. With the store free it reads the events table of one snapshot;
//! while a writer holds it, the segment files up to the synced head. Either way the report
//! names the head it read up to.
//!
//! Exit codes (SPEC section 3): 0 when the search ran, whether or not it lists anyone (a list of
//! victims is an answer, not a failure); 2 for a bad argument (the flag, the value and the rule)
//! or a store that cannot be read.

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{anyhow, bail};
use ledger::Timestamp;
use projections::incident::{self, Confidence, Query, Report, Victim};

use crate::output::{self, Outcome};
use crate::store::{self, LogSource};

/// `incident victims`.
pub fn victims(
    dir: &Path,
    from: &str,
    to: &str,
    ips: &[String],
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let query = parse_query(from, to, ips)?;
    let body = match store::open_for_log_read(dir)? {
        LogSource::Store(engine) => {
            let snap = engine.snapshot()?;
            let head = store::head(&*snap)?;
            let bar = output::progress(Some(head.position.0), "events read");
            let body = incident::victims(&*snap, &query, &mut |n| bar.set_position(n))?;
            bar.finish_and_clear();
            body
        }
        LogSource::Segments => {
            let bar = output::progress(None, "events read");
            let mut records = ledger::log::segment_events(dir)?;
            let body =
                incident::victims_in_records(&mut records, &query, &mut |n| bar.set_position(n))?;
            bar.finish_and_clear();
            body
        }
    };
    let report = body.seal();
    if json {
        serde_json::to_writer(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write_human(&report, out)?;
    }
    Ok(Outcome::Ok)
}

/// Parses `--from`, `--to` (RFC 3339, `--to` after `--from`) and `--ip` (each an IPv4 or IPv6
/// address, kept in `std::net::IpAddr`'s canonical form). A bad value is a bad argument (exit
/// 2), named with its flag and the rule.
fn parse_query(from: &str, to: &str, ips: &[String]) -> anyhow::Result<Query> {
    let time =
        |flag: &str, text: &str| Timestamp::parse_rfc3339(text).map_err(|e| anyhow!("{flag}: {e}"));
    let (from_at, to_at) = (time("--from", from)?, time("--to", to)?);
    if to_at <= from_at {
        bail!("--to {to} is not after --from {from}: the interval of credential events would be empty");
    }
    let ips = ips
        .iter()
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| anyhow!("--ip: `{ip}` is not an IPv4 or IPv6 address"))
        })
        .collect::<anyhow::Result<Vec<IpAddr>>>()?;
    Ok(Query {
        from: from_at,
        to: to_at,
        ips,
    })
}

/// Width of the member column (member ids are up to 128 characters; most are short).
const MEMBER_WIDTH: usize = 12;

/// The report as a table: one row per member with the evidence its strongest outgoing event
/// follows, then the totals, the head read and the report's hash.
fn write_human(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let body = &report.body;
    let ips = if body.ips.is_empty() {
        "any (credential events of SPEC 7)".to_owned()
    } else {
        format!("logins from {}", body.ips.join(", "))
    };
    writeln!(
        out,
        "credential events {} .. {}; evidence: {ips}",
        body.from, body.to
    )?;
    writeln!(
        out,
        "{:<MEMBER_WIDTH$}  {:<10}  {:<58}  {:>8}  {:>12}",
        "member", "confidence", "evidence (device / ip / at)", "outgoing", "yen"
    )?;
    for v in &body.members {
        writeln!(
            out,
            "{:<MEMBER_WIDTH$}  {:<10}  {:<58}  {:>8}  {:>12}",
            v.member,
            confidence_name(v.confidence),
            evidence_cell(v),
            v.outgoing.len(),
            v.sum_yen
        )?;
    }
    writeln!(
        out,
        "exact: {} members, {} yen; window: {} members, {} yen",
        body.exact.members, body.exact.yen, body.window.members, body.window.yen
    )?;
    writeln!(
        out,
        "read {} events up to position {} (hash {})",
        body.events_read, body.head_position, body.head_hash
    )?;
    writeln!(out, "report hash {}", report.hash)
}

fn confidence_name(c: Confidence) -> &'static str {
    match c {
        Confidence::Exact => "exact",
        Confidence::Window => "window",
    }
}

/// The evidence the member's first outgoing event of its confidence follows, with a count of
/// the member's other evidence events.
fn evidence_cell(v: &Victim) -> String {
    let after = v
        .outgoing
        .iter()
        .find(|o| o.confidence == v.confidence)
        .map(|o| o.after);
    let Some(e) = v.evidence.iter().find(|e| Some(e.position) == after) else {
        return "-".to_owned();
    };
    let more = match v.evidence.len() - 1 {
        0 => String::new(),
        n => format!(" (+{n})"),
    };
    format!(
        "{} / {} / {}{more}",
        e.device.as_deref().unwrap_or(&e.event_type),
        e.ip.as_deref().unwrap_or("-"),
        e.at
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves every bad argument is refused naming its flag, the value and the rule, and that
    // addresses come out canonical. (Planted defect caught: accepting `--to` equal to `--from`.)
    #[test]
    fn bad_arguments_name_the_flag_and_the_rule() {
        let ips = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let err = |from: &str, to: &str, list: &[&str]| {
            parse_query(from, to, &ips(list))
                .expect_err("refused")
                .to_string()
        };
        let (a, b) = ("2019-07-01T00:00:00+09:00", "2019-07-04T23:59:59+09:00");
        assert_eq!(
            err("July", b, &[]),
            "--from: `July` is not an RFC 3339 time (e.g. 2019-07-30T13:00:00+09:00)"
        );
        assert_eq!(
            err(a, "2019-07-04", &[]),
            "--to: `2019-07-04` is not an RFC 3339 time (e.g. 2019-07-30T13:00:00+09:00)"
        );
        assert_eq!(
            err(a, a, &[]),
            format!("--to {a} is not after --from {a}: the interval of credential events would be empty")
        );
        assert_eq!(
            err(a, b, &["203.0.113.7", "203.0.113.999"]),
            "--ip: `203.0.113.999` is not an IPv4 or IPv6 address"
        );
        let q = parse_query(a, b, &ips(&["2001:DB8:0:0::1", "203.0.113.7"])).expect("valid");
        let canonical: Vec<String> = q.ips.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(canonical, ["2001:db8::1", "203.0.113.7"]);
    }
}
