//! `reset-credentials`: a forced password reset of some or all members, behind the migration gate
//! of SPEC section 5.
//!
//! The resets run behind the gated run of [`crate::gated`] (in place under a rollback point on
//! redb, on a scratch copy swapped in on sled): a full check before, the resets, the
//! incremental check after (`projections::check_after_identity_appends`). A reset is an identity
//! operation, so it declares exactly one change ([`Declared::IdentityAppends`]): the head moves by
//! one event per member reset. Everything else must be equal: every invariant holds before and
//! after, and the wallet digest is identical. Only then is the work kept (while this process
//! holds the store's lock, so nobody wrote meanwhile). On any difference the work is rolled back
//! or the copy deleted, the store is untouched, and the gate names the members whose wallet
//! changed, comparing a read snapshot taken before the work (redb keeps it consistent while the
//! writer appends) with one after. This module does the resets and renders the report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use ledger::domain::{identity_stream, reset_of_registered, MemberId};
use ledger::{
    AppendError, AppendOutcome, AppendRequest, ExpectedVersion, Ledger, Snapshot, Store,
    StreamAppend, Timestamp,
};
use projections::gate::Declared;
use projections::WalletService;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::faults::{self, ResetFaults};
use crate::gate::{figures_line, report_fields, write_gated_end};
use crate::gated;
use crate::lock::StoreLock;
use crate::output::{self, Outcome};
use crate::store;

/// Reset appends in flight at once (each of up to [`RESET_CHUNK`] members).
const IN_FLIGHT_CHUNKS: usize = 16;
/// Members reset named in the report's sample; the rest are counted.
const MAX_RESET_SAMPLE: usize = 100;
/// The operation, as the gate's failures name it.
const OPERATION: &str = "reset";

/// What the command line asked for.
pub struct Options {
    /// Every member with an identity stream.
    pub all: bool,
    /// Named members.
    pub members: Vec<String>,
    /// Reason recorded with each reset.
    pub reason: Option<String>,
    /// Run on a scratch copy only.
    pub dry_run: bool,
    /// JSON report.
    pub json: bool,
    /// A faulty reset that also credits a wallet, with the feature `fault-injection` only.
    pub faults: ResetFaults,
}

/// What the resets did.
#[derive(Default)]
struct Work {
    applied: u64,
    duplicate: u64,
    rejected: Vec<String>,
    events: u64,
    members: Vec<String>,
}

/// What the resets did and what the gate found.
type GateRun = gated::Run<Work>;

/// `reset-credentials`.
/// `lock` is the store's lock, held by the caller for the whole command: nothing else writes the
/// store meanwhile, and the sled path's cut-over is journaled under it.
pub fn run(
    dir: &Path,
    lock: &StoreLock,
    opts: Options,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let start_time = Timestamp::now();
    let run_id: String = start_time
        .to_rfc3339()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let named = opts
        .members
        .iter()
        .map(|m| MemberId::new(m.as_str()).map_err(|e| anyhow::anyhow!("--member: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(r) = &opts.reason {
        if !ledger::domain::ids::is_plain_text(r, 256) {
            bail!("--reason must be 1 to 256 characters without control characters");
        }
    }
    let source = store::open_existing(dir)?;
    let mut job = ResetJob {
        opts: &opts,
        named: &named,
        run_id: &run_id,
        at: start_time,
    };
    let gate = gated::run(source, lock, &run_id, opts.dry_run, &mut job)?;
    let report = Report {
        dir,
        run_id: &run_id,
        dry_run: opts.dry_run,
        applied: gate.applied,
        gate: &gate,
        seconds: started.elapsed().as_secs_f64(),
    };
    if opts.json {
        writeln!(out, "{}", report.to_json())?;
    } else {
        report.write_human(out)?;
    }
    Ok(Outcome::from_ok(gate.report.ok()))
}

/// What the resets are asked to do: the reset's part of the gated run ([`gated::Operation`]).
struct ResetJob<'a> {
    opts: &'a Options,
    named: &'a [MemberId],
    run_id: &'a str,
    at: Timestamp,
}

impl gated::Operation for ResetJob<'_> {
    type Done = Work;

    fn name(&self) -> &'static str {
        OPERATION
    }

    /// Every named member must have an identity stream.
    fn prepare(
        &mut self,
        before: &dyn Snapshot,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<Vec<String>> {
        let mut refusals = Vec::new();
        for m in self.named {
            if ledger::log::stream_version(before, &identity_stream(m))?.0 == 0 {
                let line = format!("member {m} has no identity stream");
                bar.suspend(|| eprintln!("{line}"));
                refusals.push(line);
            }
        }
        Ok(refusals)
    }

    fn work(
        &mut self,
        service: &WalletService,
        before: &dyn Snapshot,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<Work> {
        bar.set_message("reset: members");
        let runtime = output::runtime()?;
        let target = if self.opts.all {
            None
        } else {
            Some(self.named)
        };
        runtime.block_on(reset_members(
            service.ledger(),
            before,
            target,
            ResetSpec {
                run_id: self.run_id,
                reason: self.opts.reason.as_deref(),
                at: self.at,
                faults: &self.opts.faults,
            },
            bar,
        ))
    }

    /// A reset is an identity operation: one event per member reset, and nothing else.
    fn declared(&self, work: &Work) -> Declared {
        Declared::IdentityAppends {
            events: work.events,
        }
    }

    /// Proven from the check before plus the new events
    /// (`projections::check_after_identity_appends`): its cost is the resets, not the log.
    fn after(
        &self,
        _engine: &Store,
        snap: &dyn Snapshot,
        before: &projections::CheckReport,
        progress: &projections::check::ProgressFn<'_>,
    ) -> anyhow::Result<projections::CheckReport> {
        Ok(projections::check_after_identity_appends(
            snap, before, progress,
        )?)
    }

    fn failures(&self, work: &Work) -> Vec<String> {
        if work.rejected.is_empty() {
            Vec::new()
        } else {
            vec![format!("{} resets were rejected", work.rejected.len())]
        }
    }
}

struct ResetSpec<'a> {
    run_id: &'a str,
    reason: Option<&'a str>,
    at: Timestamp,
    faults: &'a ResetFaults,
}

/// Identity streams reset by one atomic append (one command id per chunk).
const RESET_CHUNK: usize = 1_000;

impl ResetSpec<'_> {
    /// One atomic append of a forced reset of each member: what `reset_password` decides for a
    /// registered member ([`reset_of_registered`]), made into envelopes by
    /// [`DomainEvent::to_new_event`]. Every member is registered: named members were checked to
    /// have an identity stream, the others were listed from the identity streams, and only
    /// `register` creates one. Deciding without reading each identity row keeps the raw append
    /// path fast at 16.5M members (no writer command per member).
    fn request(&self, chunk: u64, members: &[MemberId]) -> anyhow::Result<AppendRequest> {
        let mut streams = Vec::with_capacity(members.len() + 1);
        for member in members {
            for decided in reset_of_registered(member, self.reason) {
                let events = decided
                    .events
                    .iter()
                    .map(|e| e.to_new_event(self.at))
                    .collect::<Result<Vec<_>, _>>()?;
                streams.push(StreamAppend {
                    stream: decided.stream,
                    // As before: a reset appends after whatever the stream holds.
                    expected: ExpectedVersion::Any,
                    events,
                });
            }
        }
        if let Some(stream) = faults::top_up_stream(self.faults, chunk, members, self.at)? {
            streams.push(stream);
        }
        Ok(AppendRequest {
            command_id: format!("reset-{}-{chunk}", self.run_id),
            fingerprint: None,
            streams,
        })
    }
}

type Done = (Vec<MemberId>, Result<AppendOutcome, AppendError>);

/// Appends one forced reset per member (named, or every identity stream of `snap`, listed in
/// key order so each chunk's index entries are neighbours), [`RESET_CHUNK`] members per atomic
/// append and up to [`IN_FLIGHT_CHUNKS`] appends in flight so the writer commits large groups.
async fn reset_members(
    ledger: &Ledger,
    snap: &dyn Snapshot,
    named: Option<&[MemberId]>,
    spec: ResetSpec<'_>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Work> {
    let mut work = Work::default();
    let mut tasks: JoinSet<Done> = JoinSet::new();
    let mut after: Option<String> = None;
    let mut named_left = named.map(|n| n.iter());
    let mut chunk = 0u64;
    loop {
        let batch: Vec<MemberId> = match &mut named_left {
            Some(iter) => iter.by_ref().take(RESET_CHUNK).cloned().collect(),
            None => {
                let streams =
                    ledger::log::list_streams(snap, "identity-", after.as_deref(), RESET_CHUNK)?;
                after = streams.last().cloned();
                streams
                    .iter()
                    .filter_map(|s| ledger::domain::member_of_stream(s).map(|(_, m)| m))
                    .collect()
            }
        };
        if batch.is_empty() {
            break;
        }
        while tasks.len() >= IN_FLIGHT_CHUNKS {
            if let Some(done) = tasks.join_next().await {
                record(&mut work, done?, bar)?;
            }
        }
        let request = spec.request(chunk, &batch)?;
        chunk += 1;
        let ledger = ledger.clone();
        tasks.spawn(async move { (batch, ledger.append(request).await) });
    }
    while let Some(done) = tasks.join_next().await {
        record(&mut work, done?, bar)?;
    }
    Ok(work)
}

fn record(
    work: &mut Work,
    (members, result): Done,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    bar.inc(members.len() as u64);
    match result {
        Ok(outcome) if outcome.duplicate => work.duplicate += members.len() as u64,
        Ok(outcome) => {
            work.applied += members.len() as u64;
            work.events += u64::from(outcome.count);
            for m in members {
                if work.members.len() >= MAX_RESET_SAMPLE {
                    break;
                }
                work.members.push(m.to_string());
            }
        }
        Err(
            e @ (AppendError::Storage { .. }
            | AppendError::OutcomeUnknown { .. }
            | AppendError::Closed),
        ) => {
            return Err(anyhow::Error::new(e).context("appending resets"));
        }
        Err(e) => {
            let line = format!("resets of {} members: {e}", members.len());
            bar.suspend(|| eprintln!("{line}"));
            work.rejected.push(line);
        }
    }
    Ok(())
}

/// The report, human or JSON.
struct Report<'a> {
    dir: &'a Path,
    run_id: &'a str,
    dry_run: bool,
    applied: bool,
    gate: &'a GateRun,
    seconds: f64,
}

impl Report<'_> {
    fn to_json(&self) -> Value {
        let g = self.gate;
        let mut doc = report_fields(&g.report);
        let own = json!({
            "store": PathBuf::from(self.dir).display().to_string(),
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "applied_to_store": self.applied,
            "members_reset": g.done.applied,
            "members_reset_sample": g.done.members,
            "duplicate": g.done.duplicate,
            "rejected": g.done.rejected,
            "events_appended": g.done.events,
            "duration_ms": (self.seconds * 1000.0).round() as u64,
        });
        if let Value::Object(own) = own {
            doc.extend(own);
        }
        Value::Object(doc)
    }

    fn write_human(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let g = self.gate;
        writeln!(out, "run id {}", self.run_id)?;
        writeln!(out, "before: {}", figures_line(&g.report.before))?;
        writeln!(
            out,
            "reset {} members ({} duplicate, {} rejected), {} events appended",
            g.done.applied,
            g.done.duplicate,
            g.done.rejected.len(),
            g.done.events
        )?;
        write_gated_end(
            &g.report,
            "every invariant holds and no wallet changed",
            (self.dry_run, self.applied),
            self.seconds,
            out,
        )
    }
}
