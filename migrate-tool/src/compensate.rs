//! `incident compensate REPORT --incident ID` (SPEC section 7): one `compensate` per `exact`
//! outgoing event of each `exact` victim of a victims report, behind the gate of SPEC section 5.
//!
//! Why it is shaped like this: an operator compensating hundreds of members must be able to
//! show an auditor that exactly the report's money went to exactly the report's members, and
//! must be able to run it again after a crash or by mistake without paying twice.
//! - The report is refused before anything is opened for writing when its own hash does not
//!   match its contents (`projections::incident::Report::parse`), when it does not add up (its
//!   `exact` total is not the sum of what it compensates, an original listed twice) or when it
//!   was made on another log (the event at its head position must have its head hash).
//! - What is compensated is `projections::incident::planned`, minus the (incident, original)
//!   pairs this store already compensated (its `view_compensations` rows): a rerun plans
//!   nothing. Each compensation is a SPEC 7 `compensate` command through the real writer, with
//!   the command id `compensate-<incident>-<original>`, so a replay of the same id writes
//!   nothing twice either.
//! - The gated run ([`crate::gated`]) declares exactly the compensations still to do
//!   ([`Declared::Credits`]: the head moves by one event each, each member's balance rises by
//!   exactly its yen and nothing else changes, the sum of balances rises by their total) and
//!   checks the store in full before and after. A rejected compensation, or any other change,
//!   fails the gate and nothing is kept.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use ledger::domain::command::MAX_INCIDENT_CHARS;
use ledger::domain::{ids, Command, CommandBody, CommandId, MemberId, StateReader, Yen};
use ledger::{AppendError, Engine, Hash, Position, Snapshot, Store, Timestamp};
use projections::gate::Declared;
use projections::incident::{self, Report};
use projections::{SubmitError, WalletService};
use serde_json::{json, Value};

use crate::faults::{self, CompensateFaults};
use crate::gate::{figures_line, report_fields, write_gated_end};
use crate::gated;
use crate::lock::StoreLock;
use crate::output::{self, Outcome};
use crate::store;

/// The operation, as the gate's failures and the scratch copy name it.
const OPERATION: &str = "compensate";
/// Compensations queued to the writer and not yet answered: the writer group-commits them.
const IN_FLIGHT: usize = 1_024;
/// Rejected compensations listed one by one among the gate's failures; the rest are counted.
const MAX_REJECTED_LISTED: usize = 20;

/// What the command line asked for.
pub struct Options {
    /// The report of `incident victims --json`.
    pub report: PathBuf,
    /// The incident id.
    pub incident: String,
    /// Run everything, then roll back.
    pub dry_run: bool,
    /// JSON report.
    pub json: bool,
    /// A faulty compensation that also credits another member, with `fault-injection` only.
    pub faults: CompensateFaults,
}

/// One compensation the report asks for, validated.
#[derive(Clone, Debug)]
struct Planned {
    member: MemberId,
    original: u64,
    yen: u64,
}

/// What the report asks for, in report order.
struct Plan {
    all: Vec<Planned>,
    members: u64,
    total_yen: u64,
}

impl Plan {
    /// The compensations of `report` (`incident::planned`), refused when the report does not
    /// add up.
    fn of(report: &Report) -> anyhow::Result<Plan> {
        let mut all = Vec::new();
        let mut originals = BTreeSet::new();
        for p in incident::planned(&report.body) {
            let member = MemberId::new(p.member.as_str()).map_err(|e| anyhow!("member: {e}"))?;
            if !originals.insert(p.original) {
                bail!(
                    "it lists the outgoing event at position {} twice",
                    p.original
                );
            }
            all.push(Planned {
                member,
                original: p.original,
                yen: p.yen,
            });
        }
        let total_yen: u64 = all.iter().map(|p| p.yen).sum();
        if total_yen != report.body.exact.yen {
            bail!(
                "its exact total is {} yen but its exact outgoing events add up to {total_yen} yen",
                report.body.exact.yen
            );
        }
        let members = all.iter().map(|p| &p.member).collect::<BTreeSet<_>>().len() as u64;
        Ok(Plan {
            all,
            members,
            total_yen,
        })
    }
}

/// `incident compensate`.
/// `lock` is the store's lock, held by the caller for the whole command.
pub fn run(
    dir: &Path,
    lock: &StoreLock,
    opts: Options,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let path = opts.report.display().to_string();
    if !ids::is_plain_text(&opts.incident, MAX_INCIDENT_CHARS) {
        bail!(
            "--incident must be 1 to {MAX_INCIDENT_CHARS} characters without control characters, \
             got {}",
            ids::quote_for_message(&opts.incident)
        );
    }
    let bytes = std::fs::read(&opts.report)
        .with_context(|| format!("cannot read report {path}; nothing was written"))?;
    let report = Report::parse(&bytes)
        .map_err(|e| anyhow!("report {path} is refused: {e}; nothing was written"))?;
    let plan = Plan::of(&report)
        .map_err(|e| anyhow!("report {path} is refused: {e}; nothing was written"))?;
    let source = store::open_existing(dir)?;
    same_log(&*source.snapshot()?, &report)
        .map_err(|e| anyhow!("report {path}: {e}; nothing was written"))?;
    let run_id: String = Timestamp::now()
        .to_rfc3339()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let mut job = CompensateJob {
        incident: &opts.incident,
        plan: &plan,
        faults: &opts.faults,
        todo: Vec::new(),
        already: 0,
        extra: None,
    };
    let gate = gated::run(source, lock, &run_id, opts.dry_run, &mut job)?;
    let rendered = Rendered {
        path: &path,
        report: &report,
        incident: &opts.incident,
        plan: &plan,
        job: &job,
        gate: &gate,
        dry_run: opts.dry_run,
        seconds: started.elapsed().as_secs_f64(),
    };
    if opts.json {
        writeln!(out, "{}", rendered.to_json())?;
    } else {
        rendered.write_human(out)?;
    }
    Ok(Outcome::from_ok(gate.report.ok()))
}

/// The report was made on this log: the event at its head position has its head hash (the log
/// may have grown since: compensations are appended after it).
fn same_log(snap: &dyn Snapshot, report: &Report) -> anyhow::Result<()> {
    let (head, _) = ledger::log::read_head(snap)?;
    let stated = &report.body.head_hash;
    let at = report.body.head_position;
    if at > head.position.0 {
        bail!(
            "report was made on another log: its head position {at} is past this log's head {}",
            head.position
        );
    }
    let actual = if at == 0 {
        Hash([0; 32])
    } else {
        ledger::log::read_event(snap, Position(at))?
            .with_context(|| format!("position {at} is missing from this log"))?
            .hash
    };
    if actual.to_hex() != *stated {
        bail!(
            "report was made on another log: the event at its head position {at} has hash \
             {actual} here, the report says {stated}"
        );
    }
    Ok(())
}

/// What the compensations did.
#[derive(Default)]
struct Done {
    /// Events appended (the fault's included).
    appended: u64,
    /// Compensations the store already held under their command id (a replay).
    duplicate: u64,
    /// `member m, original p: reason`, one per rejected compensation.
    rejected: Vec<String>,
}

/// The compensation's part of the gated run.
struct CompensateJob<'a> {
    incident: &'a str,
    plan: &'a Plan,
    faults: &'a CompensateFaults,
    /// The planned compensations the store does not hold yet: what is declared and appended.
    todo: Vec<Planned>,
    /// Planned compensations the store already holds (its `view_compensations` rows).
    already: u64,
    /// The deliberately faulty extra command (`--fault-extra-credit` only).
    extra: Option<Command>,
}

impl CompensateJob<'_> {
    /// The `compensate` command of one planned compensation: its id is deterministic, so a
    /// replay after a crash is a duplicate, never a second payment.
    fn command(&self, p: &Planned) -> anyhow::Result<Command> {
        let id = format!("{OPERATION}-{}-{}", self.incident, p.original);
        Ok(Command {
            id: CommandId::new(id.as_str()).map_err(|e| anyhow!("command id: {e}"))?,
            at: None,
            body: CommandBody::Compensate {
                member: p.member.clone(),
                incident: self.incident.to_owned(),
                original: Position(p.original),
                amount: Yen(p.yen),
            },
        })
    }

    fn todo_yen(&self) -> u64 {
        self.todo.iter().map(|p| p.yen).sum()
    }
}

impl gated::Operation for CompensateJob<'_> {
    type Done = Done;

    fn name(&self) -> &'static str {
        OPERATION
    }

    /// Splits the plan into what the store already compensated under this incident and what
    /// is left to do. Nothing refuses: a compensation the ledger's rules refuse is a gate
    /// failure, listed.
    fn prepare(
        &mut self,
        before: &dyn Snapshot,
        _bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<Vec<String>> {
        let rows = projections::views::Rows::new(before);
        for p in &self.plan.all {
            let done = rows
                .compensated(self.incident, Position(p.original))
                .map_err(|e| anyhow!("{}", e.reason))?;
            if done {
                self.already += 1;
            } else {
                self.todo.push(p.clone());
            }
        }
        let named: BTreeSet<MemberId> = self.plan.all.iter().map(|p| p.member.clone()).collect();
        self.extra = faults::extra_credit(self.faults, before, &named)?;
        Ok(Vec::new())
    }

    fn work(
        &mut self,
        service: &WalletService,
        _before: &dyn Snapshot,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<Done> {
        bar.set_message("compensate: compensations");
        let mut commands = Vec::with_capacity(self.todo.len() + 1);
        for p in &self.todo {
            let label = format!("member {}, original {}", p.member, p.original);
            commands.push((label, self.command(p)?));
        }
        if let Some(extra) = &self.extra {
            commands.push(("fault: extra credit".to_owned(), extra.clone()));
        }
        output::runtime()?.block_on(submit_all(service, commands, bar))
    }

    fn declared(&self, _done: &Done) -> Declared {
        let mut members: BTreeMap<MemberId, u64> = BTreeMap::new();
        for p in &self.todo {
            *members.entry(p.member.clone()).or_default() += p.yen;
        }
        // What was planned, not what happened: anything else the run did is undeclared.
        Declared::Credits {
            events: self.todo.len() as u64,
            members,
        }
    }

    /// A full check ([`projections::check_engine`]): it sums the balances, which the gate
    /// compares with the declared credits.
    fn after(
        &self,
        engine: &Store,
        snap: &dyn Snapshot,
        _before: &projections::CheckReport,
        progress: &projections::check::ProgressFn<'_>,
    ) -> anyhow::Result<projections::CheckReport> {
        let engine: &dyn Engine = engine;
        Ok(projections::check_engine(engine, snap, progress)?)
    }

    fn failures(&self, done: &Done) -> Vec<String> {
        let mut failures: Vec<String> = done
            .rejected
            .iter()
            .take(MAX_REJECTED_LISTED)
            .map(|r| format!("compensation rejected: {r}"))
            .collect();
        if done.rejected.len() > MAX_REJECTED_LISTED {
            failures.push(format!(
                "... {} compensations were rejected in all",
                done.rejected.len()
            ));
        }
        failures
    }
}

/// Queues `commands` in order (at most [`IN_FLIGHT`] unanswered) and collects their outcomes.
async fn submit_all(
    service: &WalletService,
    commands: Vec<(String, Command)>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Done> {
    let mut done = Done::default();
    let mut waiting = VecDeque::new();
    for (label, cmd) in commands {
        if waiting.len() >= IN_FLIGHT {
            if let Some(next) = waiting.pop_front() {
                settle(&mut done, next, bar).await?;
            }
        }
        waiting.push_back((label, service.queue(&cmd).await));
    }
    while let Some(next) = waiting.pop_front() {
        settle(&mut done, next, bar).await?;
    }
    Ok(done)
}

type Waiting = (String, Result<projections::Queued, SubmitError>);

/// Records one command's outcome. A storage failure (or an outcome the ledger cannot tell) is
/// an error: the run stops and nothing is kept.
async fn settle(
    done: &mut Done,
    (label, queued): Waiting,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let result = match queued {
        Ok(queued) => queued.outcome().await,
        Err(e) => Err(e),
    };
    bar.inc(1);
    match result {
        Ok(s) if s.duplicate => done.duplicate += 1,
        Ok(s) => done.appended += u64::from(s.outcome.count),
        Err(SubmitError::Ledger(
            e @ (AppendError::Storage { .. }
            | AppendError::OutcomeUnknown { .. }
            | AppendError::Closed),
        )) => return Err(anyhow::Error::new(e).context("appending compensations")),
        Err(SubmitError::Read(e)) => return Err(anyhow::Error::new(e).context(label)),
        Err(e) => {
            let line = format!("{label}: {e}");
            bar.suspend(|| eprintln!("{line}"));
            done.rejected.push(line);
        }
    }
    Ok(())
}

/// The report, human or JSON.
struct Rendered<'a> {
    path: &'a str,
    report: &'a Report,
    incident: &'a str,
    plan: &'a Plan,
    job: &'a CompensateJob<'a>,
    gate: &'a gated::Run<Done>,
    dry_run: bool,
    seconds: f64,
}

impl Rendered<'_> {
    fn to_json(&self) -> Value {
        let g = self.gate;
        let mut doc = report_fields(&g.report);
        let own = json!({
            "report": self.path,
            "incident": self.incident,
            "report_hash": self.report.hash,
            "planned": self.plan.all.len(),
            "members": self.plan.members,
            "total_yen": self.plan.total_yen,
            "already": self.job.already,
            "to_append": self.job.todo.len(),
            "to_append_yen": self.job.todo_yen(),
            "appended": g.done.appended,
            "duplicate": g.done.duplicate,
            "rejected": g.done.rejected,
            "dry_run": self.dry_run,
            "applied_to_store": g.applied,
            "duration_ms": (self.seconds * 1000.0).round() as u64,
        });
        if let Value::Object(own) = own {
            doc.extend(own);
        }
        Value::Object(doc)
    }

    fn write_human(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let g = self.gate;
        writeln!(
            out,
            "report {} (hash {}), incident {}",
            self.path, self.report.hash, self.incident
        )?;
        writeln!(out, "before: {}", figures_line(&g.report.before))?;
        writeln!(
            out,
            "planned {} compensations for {} members totalling {} yen; already compensated {}; \
             to append {} ({} yen)",
            self.plan.all.len(),
            self.plan.members,
            self.plan.total_yen,
            self.job.already,
            self.job.todo.len(),
            self.job.todo_yen()
        )?;
        writeln!(
            out,
            "appended {} events ({} duplicate, {} rejected)",
            g.done.appended,
            g.done.duplicate,
            g.done.rejected.len()
        )?;
        write_gated_end(
            &g.report,
            &format!(
                "every invariant holds and only the declared balances rose, by {} yen in all",
                self.job.todo_yen()
            ),
            (self.dry_run, g.applied),
            self.seconds,
            out,
        )
    }
}
