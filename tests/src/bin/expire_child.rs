//! `expire_child STORE_DIR COMMAND_JSON`: opens the wallet service on an existing store and runs
//! one `expire` without a member (given as its JSON import line) over the whole store, printing
//! its progress, so that `tests/expire_crash.rs` can SIGKILL it in the middle.
//!
//! Output on stdout, one line each, flushed at once:
//! - `ready HEAD` once the service is open;
//! - `done N` every [`PROGRESS_EVERY`] members done (their part is durable, never before);
//! - `finished FIRST COUNT DUPLICATE` with the command's answer, if it is not killed first.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use ledger::domain::{Command, CommandBody};
use ledger::{Backend, Create, LedgerOptions};
use projections::WalletService;

/// Members between two `done` lines.
const PROGRESS_EVERY: u64 = 1_000;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(line), None) = (args.next(), args.next(), args.next()) else {
        bail!("usage: expire_child STORE_DIR COMMAND_JSON");
    };
    let cmd = Command::parse_json_line(&line).map_err(|e| anyhow::anyhow!("{line}: {e}"))?;
    if !matches!(cmd.body, CommandBody::Expire { member: None, .. }) {
        bail!("{line} is not an expire without a member");
    }
    let at = cmd
        .at
        .context("the command carries `at`, so that every run has the same content")?;
    let dir = PathBuf::from(dir);
    let options = LedgerOptions {
        create: Create::No,
        backend: Backend::Redb,
        hooks: Vec::new(),
    };
    let service = WalletService::open(&dir, options)
        .with_context(|| format!("cannot open the wallet service in {}", dir.display()))?;
    print_line(&format!("ready {}", service.ledger().head().position))?;
    let mut failed = None;
    let answer = service.expire_all_blocking(&cmd, at, &mut |done| {
        if done % PROGRESS_EVERY == 0 && failed.is_none() {
            failed = print_line(&format!("done {done}")).err();
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    let s = answer.with_context(|| format!("expire {} failed", cmd.id))?;
    print_line(&format!(
        "finished {} {} {}",
        s.outcome.first_position, s.outcome.count, s.duplicate
    ))
}

fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("stdout closed")?;
    out.flush().context("stdout closed")
}
