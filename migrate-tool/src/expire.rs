//! `expire --as-of T [--id ID] [--json]`: the nightly `expire` without a member (SPEC 2) over
//! the whole store, with progress (SPEC 3).
//!
//! It submits the same command an `expire` line without `member` is in `import`, through
//! [`WalletService::expire_all_blocking`]: one atomic append per member with something due,
//! recorded under `<id>` U+001F `<member>`, then the command recorded as done under `<id>`.
//! Before it starts it counts the members and items due with the expiry index
//! ([`views::due_totals`], constant memory), for the progress bar and the report.
//!
//! Why the id defaults to `expire-<T>` (`T` in UTC, as [`Timestamp::to_rfc3339`] prints it):
//! the nightly job run again for the same `T` after a crash is then a replay of the same
//! command, which finishes what is left and writes nothing twice, and run once more is a
//! duplicate. Two spellings of one instant (`+09:00` and `Z`) give the same id. The command
//! carries no `at`: the business time of its events is the time each member's part ran.
//!
//! Exit codes: 0 done (or already done: a duplicate), 1 rejected (the id was used for a
//! different command), 2 could not do its job (bad arguments, store, I/O): a run stopped by an
//! error or a kill is finished by running the same command again.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use ledger::domain::{Command, CommandBody, CommandId};
use ledger::{limits, Timestamp};
use projections::views::{self, DueTotals};
use projections::{SubmitError, Submitted};
use serde_json::json;

use crate::output::{self, Outcome};
use crate::store;

/// What the command line asked for (already validated by clap, see [`parse_as_of`] and
/// [`parse_id`]).
pub struct Options {
    /// Every lot and active coupon with `expires_at <= as_of` expires.
    pub as_of: Timestamp,
    /// The command id; `None`: [`default_id`] of `as_of`.
    pub id: Option<CommandId>,
    /// One JSON document on stdout.
    pub json: bool,
}

/// Parses `--as-of`: an RFC 3339 time with offset. The error names the rule; clap adds the flag.
pub fn parse_as_of(input: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(input).map_err(|e| e.to_string())
}

/// Parses `--id`: the rule of every command id (SPEC 2), at most 128 bytes as the log stores it.
pub fn parse_id(input: &str) -> Result<CommandId, String> {
    let id = CommandId::new(input).map_err(|e| e.to_string())?;
    if input.len() > limits::MAX_COMMAND_ID_BYTES {
        return Err(format!(
            "must be at most {} bytes, got {} bytes",
            limits::MAX_COMMAND_ID_BYTES,
            input.len()
        ));
    }
    Ok(id)
}

/// The id of the nightly job for `as_of`: `expire-<as_of in UTC>`.
pub fn default_id(as_of: Timestamp) -> CommandId {
    CommandId::new(format!("expire-{}", as_of.to_rfc3339()))
        .expect("`expire-` and an RFC 3339 time are at most 45 plain characters")
}

/// What one run did, for the report.
struct Report<'a> {
    as_of: Timestamp,
    id: &'a CommandId,
    due: DueTotals,
    /// Members whose part this run answered.
    members: u64,
    submitted: Submitted,
    head: u64,
    elapsed_ms: u64,
}

impl Report<'_> {
    /// Events this run appended: one per lot or coupon expired.
    fn events(&self) -> u64 {
        if self.submitted.duplicate {
            0
        } else {
            u64::from(self.submitted.outcome.count)
        }
    }

    fn write(&self, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
        let events = self.events();
        if json {
            let doc = json!({
                "as_of": self.as_of.to_rfc3339(),
                "id": self.id.as_str(),
                "due_members_before": self.due.members,
                "due_items_before": self.due.items,
                "events_appended": events,
                "members": self.members,
                "duplicate": self.submitted.duplicate,
                "elapsed_ms": self.elapsed_ms,
                "head": self.head,
            });
            writeln!(out, "{doc}")?;
            return Ok(());
        }
        let seconds = self.elapsed_ms as f64 / 1_000.0;
        writeln!(
            out,
            "expire as of {} (id {}): due before: {} items of {} members",
            self.as_of.to_rfc3339(),
            self.id,
            self.due.items,
            self.due.members
        )?;
        if self.submitted.duplicate {
            writeln!(
                out,
                "duplicate: this expire was already done, nothing written; head {}",
                self.head
            )?;
        } else {
            writeln!(
                out,
                "expired {events} items of {} members, {events} events appended, head {}, elapsed {seconds:.1} s, {:.0} items/s",
                self.members,
                self.head,
                events as f64 / seconds.max(1e-3)
            )?;
        }
        Ok(())
    }
}

/// `expire --as-of T [--id ID] [--json]`.
pub fn run(dir: &Path, opts: Options, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let id = opts.id.unwrap_or_else(|| default_id(opts.as_of));
    let cmd = Command {
        id: id.clone(),
        at: None,
        body: CommandBody::Expire {
            as_of: opts.as_of,
            member: None,
        },
    };
    let service = store::open_existing_service(dir)?;
    let due = views::due_totals(&*service.ledger().snapshot()?, opts.as_of)?;
    let bar = output::progress(Some(due.members), "expire: members");
    let mut members = 0u64;
    let result = service.expire_all_blocking(&cmd, Timestamp::now(), &mut |done| {
        members = done;
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let submitted = match result {
        Ok(submitted) => submitted,
        Err(e @ (SubmitError::Rejected(_) | SubmitError::IdReused { .. })) => {
            eprintln!("{e}");
            if opts.json {
                writeln!(
                    out,
                    "{}",
                    json!({"id": id.as_str(), "rejected": e.to_string()})
                )?;
            }
            return Ok(Outcome::Failed);
        }
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "expire {id} stopped after {members} members; run the same command again to \
                 finish it (nothing is written twice)"
            )))
        }
    };
    let head = service.ledger().head().position.0;
    let report = Report {
        as_of: opts.as_of,
        id: &id,
        due,
        members,
        submitted,
        head,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    report.write(opts.json, out)?;
    Ok(Outcome::Ok)
}
