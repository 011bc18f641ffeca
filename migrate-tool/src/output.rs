//! What every command shares: the outcome (exit 0 or 1) and progress bars that only draw when
//! stderr is a terminal. (The `show --json` wallet shape is `projections::WalletJson`: the
//! check and the gate show wallets in the same shape.)

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How a command that did its job ended. Errors (exit 2) travel as `anyhow::Error` instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0: success, everything holds.
    Ok,
    /// Exit 1: something was rejected, or a check or the gate failed.
    Failed,
}

impl Outcome {
    /// `Ok` when `ok`, else `Failed`.
    pub fn from_ok(ok: bool) -> Outcome {
        if ok {
            Outcome::Ok
        } else {
            Outcome::Failed
        }
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal (CI logs stay clean).
/// `total` = `None` gives a spinner with a count.
pub fn progress(total: Option<u64>, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => {
            let bar = ProgressBar::new(n);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {pos} ({per_sec}, {elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        }
    };
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A multi-threaded runtime for commands that submit concurrently. Two workers: this is a
/// 2-core machine, and the ledger writer is its own OS thread.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
