//! `wallet_crash_child STORE_DIR SEED`: submits wallet commands through a `WalletService` from
//! several concurrent tasks forever, printing each outcome after the service answered, until it
//! is killed. The kill -9 test (`tests/wallet_crash.rs`) SIGKILLs it at random moments.
//!
//! Output on stdout, one line each, flushed at once:
//! - `ready HEAD` once the service is open;
//! - `ack ID FIRST_POSITION COUNT` after a command was acknowledged (durable), never before;
//! - `rej ID` after a command was rejected by a rule (it must leave no trace).
//!
//! Members `w0`..`w7` are opened and funded by fixed-id commands at every start (duplicates after
//! the first run). Task command ids are `k<SEED>-<TASK>-<N>`; the test passes a new seed per run,
//! so ids never repeat on one store. Commands have no `at` (business time is now).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use ledger::domain::Command;
use ledger::{Backend, Create, LedgerOptions};
use ledger_tests::wallet::splitmix64;
use projections::{SubmitError, WalletService};
use serde_json::json;

/// Members every task works on.
const MEMBERS: u64 = 8;
/// Concurrent submitting tasks.
const TASKS: u64 = 6;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(seed), None) = (args.next(), args.next(), args.next()) else {
        bail!("usage: wallet_crash_child STORE_DIR SEED");
    };
    let seed: u64 = seed
        .parse()
        .with_context(|| format!("seed {seed:?} is not a u64"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run(PathBuf::from(dir), seed))
}

fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("stdout closed")?;
    out.flush().context("stdout closed")
}

fn parse(value: serde_json::Value) -> anyhow::Result<Command> {
    Command::parse_json_line(&value.to_string()).map_err(|e| anyhow::anyhow!("{value}: {e}"))
}

async fn run(dir: PathBuf, seed: u64) -> anyhow::Result<()> {
    let options = LedgerOptions {
        create: Create::IfMissing,
        backend: Backend::Redb,
        hooks: Vec::new(),
    };
    let service = WalletService::open(&dir, options)
        .with_context(|| format!("cannot open the wallet service in {}", dir.display()))?;
    print_line(&format!("ready {}", service.ledger().head().position))?;
    for m in 0..MEMBERS {
        for line in [
            json!({"id": format!("open-w{m}"), "type": "open_wallet", "member": format!("w{m}")}),
            json!({"id": format!("fund-w{m}"), "type": "top_up", "member": format!("w{m}"),
                   "amount": 1_000_000}),
            json!({"id": format!("register-w{m}"), "type": "register", "member": format!("w{m}"),
                   "login": format!("login-w{m}")}),
        ] {
            let cmd = parse(line)?;
            submit_and_report(&service, &cmd).await?;
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        tasks.spawn(submit_forever(service.clone(), seed, task));
    }
    match tasks.join_next().await {
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(e).context("a task panicked"),
        _ => bail!("a task stopped without an error"),
    }
}

/// Submits `cmd` and prints its outcome; errors other than a rule's end the process.
async fn submit_and_report(service: &WalletService, cmd: &Command) -> anyhow::Result<()> {
    match service.submit(cmd).await {
        Ok(s) => print_line(&format!(
            "ack {} {} {}",
            cmd.id, s.outcome.first_position, s.outcome.count
        )),
        Err(SubmitError::Rejected(_)) => print_line(&format!("rej {}", cmd.id)),
        Err(e) => Err(e).with_context(|| format!("command {} failed", cmd.id)),
    }
}

async fn submit_forever(service: WalletService, seed: u64, task: u64) -> anyhow::Result<()> {
    let mut rng = seed ^ task.wrapping_mul(0xD1B5_4A32_D192_ED03);
    for n in 0u64.. {
        let cmd = parse(random_command(&mut rng, seed, task, n))?;
        submit_and_report(&service, &cmd).await?;
    }
    Ok(())
}

/// A random command of a mixed workload. Some break rules (overdrafts, redeeming a coupon
/// twice, duplicate badges); those are printed as `rej`.
fn random_command(rng: &mut u64, seed: u64, task: u64, n: u64) -> serde_json::Value {
    let id = format!("k{seed}-{task}-{n}");
    let mut pick = |k: u64| splitmix64(rng) % k;
    let m = format!("w{}", pick(MEMBERS));
    let future = "2100-01-01T00:00:00Z";
    let mut value = match pick(12) {
        0..=2 => {
            let to = format!("w{}", pick(MEMBERS));
            json!({"type": "transfer", "from": m, "to": to, "amount": 1 + pick(400_000)})
        }
        3 => json!({"type": "top_up", "member": m, "amount": 1 + pick(10_000)}),
        4 => json!({"type": "pay", "member": m, "amount": 1 + pick(50_000), "merchant": "shop"}),
        5 => json!({"type": "earn_miles", "member": m, "miles": 1 + pick(1_000),
                    "expires_at": if pick(2) == 0 { future } else { "2099-01-01T00:00:00Z" }}),
        6 => json!({"type": "redeem_miles", "member": m, "miles": 1 + pick(500)}),
        7 => json!({"type": "issue_coupon", "member": m, "coupon": format!("c{seed}-{task}-{n}"),
                    "value": pick(1_000), "expires_at": future}),
        8 => json!({"type": "redeem_coupon", "member": m,
                    "coupon": format!("c{seed}-{task}-{}", n.saturating_sub(1 + pick(3)))}),
        9 => json!({"type": "award_badge", "member": m, "badge": format!("b{}", pick(20))}),
        10 => json!({"type": "reset_password", "member": m, "reason": "crash test"}),
        _ => json!({"type": "expire", "member": m, "as_of": "2099-06-01T00:00:00Z"}),
    };
    value["id"] = json!(id);
    value
}
