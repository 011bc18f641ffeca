//! `migrate-tool`: the operator command line of the wallet ledger (SPEC section 3).
//!
//! # Layout
//! - [`cli`]: argument parsing (clap), help texts with an example per command.
//! - [`store`]: opening a store directory with clear errors, scratch copies for the gate.
//! - [`output`]: the shared outcome type (exit codes), progress bars.
//! - [`import`]: `import`, streaming with a bounded window of concurrent, order-safe submits.
//! - [`read`]: `show`, `export`, `digest`, `log`.
//! - [`statement`]: `statement`, a member's events with the running balance, streamed.
//! - [`head`]: `head`, the log head as an anchor to publish (`verify --since` checks it).
//! - [`check`]: `verify`, `check` (rendering `projections::check`, the invariants of SPEC
//!   section 4, and its progress and timing), `rebuild`.
//! - [`reset`]: `reset-credentials`, with the migration gate of SPEC section 5.
//! - [`incident`], [`compensate`]: `incident victims` and `incident compensate` (SPEC section
//!   7), the latter behind the gate.
//! - [`gated`]: the gated run `reset-credentials` and `incident compensate` share (rollback
//!   point or scratch copy, check before, work, check after, gate).
//! - [`demo`]: `demo`, deterministic seeded activity.
//! - [`durable`]: writing a file that survives a power cut (the migration reports).
//! - [`expire`]: `expire`, the nightly `expire` without a member over the whole store.
//! - [`lock`]: the store-level lock every writing command takes, and the cut-over journal.
//! - [`migrate`]: `migrate list|run|status|rollback`, named migrations inside the gate;
//!   [`migrate_copy`] is their copy-transform engine and proof, [`migrate_report`] their report;
//!   [`migrate_rows`] and [`migrate_segments`] are the view-layout and storage-format moves;
//!   [`frames`] writes a whole log into a new store in frames, for `segments` and the
//!   copy-transforms.
//! - [`faults`]: the deliberately faulty transform and reset the gate tests use, with the
//!   cargo feature `fault-injection` only (never in a release build).
//! - [`gate`]: `gate`, the pre-deploy projection gate, and the rendering of every gate's report
//!   (`projections::gate`: one report for `gate`, `reset-credentials` and `migrate run`).
//!
//! Exit codes everywhere: 0 success, 1 something was rejected or a check failed, 2 the tool could
//! not do its job (an `anyhow` error reaching `main`). Human output goes to stdout, errors to
//! stderr; `--json` writes exactly one JSON document to stdout.

mod check;
mod cli;
mod compensate;
mod demo;
mod durable;
mod expire;
mod faults;
mod frames;
mod gate;
mod gated;
mod head;
mod holder;
mod import;
mod incident;
mod lock;
mod migrate;
mod migrate_copy;
mod migrate_report;
mod migrate_rows;
mod migrate_segments;
mod output;
mod read;
mod reset;
mod statement;
mod store;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Cmd, IncidentCmd, MigrateCmd};
use crate::lock::StoreLock;
use crate::output::Outcome;

fn main() -> ExitCode {
    // clap exits with 2 on bad arguments and 0 on --help/--version, as SPEC section 3 wants.
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = run(cli, &mut out).and_then(|outcome| {
        out.flush()?;
        Ok(outcome)
    });
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) if is_broken_pipe(&e) => {
            // The reader of our stdout went away (e.g. `export | head`): nothing left to do.
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = out.flush();
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The name under which a writing command holds the store lock; `None` for readers.
fn writer_name(cmd: &Cmd) -> Option<&'static str> {
    match cmd {
        Cmd::Import { .. } => Some("import"),
        Cmd::Rebuild => Some("rebuild"),
        Cmd::ResetCredentials { .. } => Some("reset-credentials"),
        Cmd::Demo { .. } => Some("demo"),
        Cmd::Expire { .. } => Some("expire"),
        Cmd::Incident(IncidentCmd::Compensate { .. }) => Some("incident-compensate"),
        // `migrate run` and `migrate rollback` take the lock themselves (they rename the store).
        _ => None,
    }
}

fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    // Bad demo flags write nothing, not even the lock file.
    if let Cmd::Demo(args) = &cli.command {
        args.validate()?;
    }
    // A writer's lock finishes an interrupted cut-over (`StoreLock::acquire`); `migrate run`
    // and `rollback` take it themselves. Readers never rename: they read the store where the
    // cut-over journal says it is (`lock::reading_dir`).
    let (dir, lock) = match (writer_name(&cli.command), &cli.command) {
        (Some(name), _) => (
            cli.store.clone(),
            Some(StoreLock::acquire(&cli.store, name)?),
        ),
        (None, Cmd::Migrate(_)) => (cli.store.clone(), None),
        (None, _) => (lock::reading_dir(&cli.store)?, None),
    };
    match cli.command {
        Cmd::Migrate(MigrateCmd::List { json }) => migrate::list(json, out),
        Cmd::Migrate(MigrateCmd::Run {
            name,
            dry_run,
            json,
            faults,
        }) => migrate::run(
            &dir,
            &migrate::RunOptions {
                name,
                dry_run,
                json,
                faults,
            },
            out,
        ),
        Cmd::Migrate(MigrateCmd::Status { json }) => migrate::status(&dir, json, out),
        Cmd::Migrate(MigrateCmd::Rollback { json }) => migrate::rollback(&dir, json, out),
        Cmd::Gate { json } => gate::gate_cmd(&dir, json, out),
        Cmd::Import { file } => import::run(&dir, &file, out),
        Cmd::Show {
            member,
            as_of,
            json,
        } => read::show(&dir, &member, as_of.as_deref(), json, out),
        Cmd::Statement {
            member,
            from,
            to,
            json,
            csv,
        } => statement::run(
            &dir,
            &member,
            from.as_deref(),
            to.as_deref(),
            statement::Format::of(json, csv),
            out,
        ),
        Cmd::Export { as_of } => read::export(&dir, as_of.as_deref(), out),
        Cmd::Digest { as_of } => read::digest(&dir, as_of.as_deref(), out),
        Cmd::Log {
            stream,
            from,
            limit,
            json,
        } => read::log(&dir, stream.as_deref(), from, limit, json, out),
        Cmd::Verify { json, since } => check::verify_cmd(&dir, json, since.as_ref(), out),
        Cmd::Head { json, anchor } => head::run(&dir, head::Format::of(json, anchor), out),
        Cmd::Check { json } => check::check_cmd(&dir, json, out),
        Cmd::Rebuild => check::rebuild_cmd(&dir, out),
        Cmd::ResetCredentials {
            all,
            member,
            reason,
            dry_run,
            json,
            faults,
        } => reset::run(
            &dir,
            lock.as_ref()
                .expect("reset-credentials is a writer: its lock is taken above"),
            reset::Options {
                all,
                members: member,
                reason,
                dry_run,
                json,
                faults,
            },
            out,
        ),
        Cmd::Incident(IncidentCmd::Victims { from, to, ip, json }) => {
            incident::victims(&dir, &from, &to, &ip, json, out)
        }
        Cmd::Incident(IncidentCmd::Compensate {
            report,
            incident,
            dry_run,
            json,
            faults,
        }) => compensate::run(
            &dir,
            lock.as_ref()
                .expect("incident compensate is a writer: its lock is taken above"),
            compensate::Options {
                report,
                incident,
                dry_run,
                json,
                faults,
            },
            out,
        ),
        Cmd::Expire { as_of, id, json } => {
            expire::run(&dir, expire::Options { as_of, id, json }, out)
        }
        Cmd::Demo(args) => demo::run(&dir, &args, out),
    }
}
