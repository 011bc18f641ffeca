//! What every command shares: the outcome (exit 0 or 1), the `show --json` wallet shape,
//! and progress bars that only draw when stderr is a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use ledger::domain::{CouponStatus, WalletState};
use projections::views::ShownWallet;
use serde::Serialize;

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

/// The wallet as SPEC section 3 shows it: keys exactly these, in this order; arrays sorted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WalletJson {
    /// Member id.
    pub member: String,
    /// Balance in yen.
    pub balance: u64,
    /// Outstanding miles: remaining miles of lots not yet expired by an `expire` event.
    pub miles: u64,
    /// Badges held, sorted.
    pub badges: Vec<String>,
    /// Coupon ids by status, each sorted.
    pub coupons: CouponsJson,
}

/// Coupon ids by status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CouponsJson {
    /// Issued, neither redeemed nor expired.
    pub active: Vec<String>,
    /// Used.
    pub redeemed: Vec<String>,
    /// Expired by an `expire` command.
    pub expired: Vec<String>,
}

impl WalletJson {
    /// The shown form of a folded state.
    pub fn of(state: &WalletState) -> WalletJson {
        WalletJson::of_shown(&ShownWallet::of(state))
    }

    /// The shown form of what `show` reads of a stored wallet. Badges and coupons come sorted
    /// by id, so the arrays are sorted by construction.
    pub fn of_shown(shown: &ShownWallet) -> WalletJson {
        let with = |status: CouponStatus| {
            shown
                .coupons
                .iter()
                .filter(|(_, s)| *s == status)
                .map(|(id, _)| id.to_string())
                .collect::<Vec<_>>()
        };
        WalletJson {
            member: shown.member.to_string(),
            balance: shown.summary.balance.0,
            miles: shown.summary.miles_outstanding.0,
            badges: shown.badges.iter().map(|b| b.to_string()).collect(),
            coupons: CouponsJson {
                active: with(CouponStatus::Active),
                redeemed: with(CouponStatus::Redeemed),
                expired: with(CouponStatus::Expired),
            },
        }
    }

    /// One line of JSON.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("strings and integers always serialize")
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
