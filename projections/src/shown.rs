//! The wallet as SPEC section 3 shows it (`show --json`, `export`), and as `check` and the gate
//! name a wallet in their findings: one shape wherever a wallet is shown, so an operator can
//! compare a finding with `show` output line for line.
//!
//! Invariant: the keys are exactly SPEC's, in its order, and every array is sorted (the state's
//! collections are ordered, so this holds by construction).

use ledger::domain::{CouponStatus, WalletState};

use crate::views::ShownWallet;
use serde::Serialize;

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

    /// The shown form of what `show` reads of a stored wallet ([`crate::views::load_shown`]:
    /// its summary, badge and coupon rows). Badges and coupons come sorted by id, so the arrays
    /// are sorted by construction.
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
