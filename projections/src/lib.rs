//! Wallet projections: state derived only by folding the log.
//!
//! # Layout
//! Stored views, kept in the transaction of their events:
//! - [`views`]: the view tables (a wallet as a summary plus one row per entity, the expiry
//!   indexes, member hashes, digest buckets, checkpoint, layout) and the only code that builds
//!   their keys and rows.
//! - [`hook`]: [`ProjectionHook`], the ledger commit hook that writes views in the same
//!   transaction as their events, and the rows the writer decides commands against.
//!
//! Derived from the log alone:
//! - [`fold`]: bounded-memory folds of the whole log or of one member, as of any moment.
//! - [`digest`]: the order-independent, bucketed digest ([`DigestBuilder`]) and how to localise
//!   differences.
//! - [`rebuild`](mod@rebuild): drop and re-derive every view.
//!
//! Proof that the two agree:
//! - [`check`]: the invariants of SPEC section 4 over a snapshot, as one [`CheckReport`].
//! - [`gate`]: the gate of SPEC section 5: before and after [`Figures`], a declaration of what an
//!   operation may change, one [`GateReport`] with one member-diff shape for every operation.
//!
//! For callers:
//! - [`shown`]: the wallet as SPEC section 3 shows it ([`WalletJson`]), also in findings.
//! - [`export`](mod@export): the export lines ([`export_each`]), for the CLI and a service.
//! - [`service`]: [`WalletService`], a ledger with the views attached: submit, read, check.
//! - [`statement`]: a member's statement (running balance, positions, command ids), whole or
//!   by page ([`statement_page`]), from a snapshot or any stream of records.
//! - [`incident`]: the incident report of SPEC section 7 (its shape, hash and what is
//!   compensated) and the victims search ([`incident::victims`]), one streaming pass over the
//!   log.
//! - `test_store` (tests only): small stores built through the real service, for the unit tests
//!   of `check` and `gate`.
//!
//! The fold itself (`WalletState::apply`) lives in `ledger::domain`, because `decide` needs the
//! same state to enforce the rules; one definition serves both, so a command is always decided
//! against exactly the state the projections show.
//!
//! # Paths
//! What callers use most is re-exported here: the service and its errors, the check, the gate,
//! the folds ([`fold_log`], [`fold_member`], [`AsOf`], [`FoldOptions`]), [`rebuild()`], the
//! statement ([`StatementLine`], [`StatementStart`], [`StatementPage`], [`statement_page`]) and
//! [`ProjectionError`]. Items of one concern keep their module as context: view keys and tables
//! (`views::tables::*`, `views::load_shown`), digest functions (`digest::member_hash`,
//! `digest::stored_digest`), invariant names (`check::VIEWS_MATCH_LOG`), fold budgets
//! (`fold::DEFAULT_PASS_BYTES`).

pub mod check;
pub mod digest;
pub mod export;
pub mod fold;
pub mod gate;
pub mod hook;
pub mod incident;
pub mod rebuild;
pub mod service;
pub mod shown;
pub mod side_check;
pub mod statement;
pub mod views;

#[cfg(test)]
mod test_store;

pub use check::{
    check_after_identity_appends, check_engine, check_snapshot, CheckReport, Invariant, Progress,
};
pub use digest::DigestBuilder;
pub use export::export_each;
pub use fold::{fold_log, fold_member, AsOf, EventTotals, FoldOptions, FoldStats};
pub use gate::{
    Declared, Derive, Figures, Gate, GateReport, MemberDiff, PreDeploy, Side, StoredViews,
    ThisBuild,
};
pub use hook::ProjectionHook;
pub use rebuild::{rebuild, RebuildReport};
pub use service::{open_store, open_store_with, Queued, SubmitError, Submitted, WalletService};
pub use shown::WalletJson;
pub use statement::{statement_page, StatementLine, StatementPage, StatementStart};

/// Why a projection operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The store failed.
    #[error(transparent)]
    Engine(#[from] ledger::EngineError),
    /// The log could not be read.
    #[error(transparent)]
    Read(#[from] ledger::ReadError),
    /// An event could not be decoded or folded.
    #[error("event at position {position} cannot be folded: {reason}")]
    Event { position: u64, reason: String },
    /// A stored view is damaged.
    #[error("view of {member} is damaged: {reason}")]
    View { member: String, reason: String },
    /// Views are not at the log head.
    #[error(
        "views are at position {checkpoint} but the log is at {head}: run `migrate-tool rebuild`"
    )]
    Behind { checkpoint: u64, head: u64 },
    /// The views were written by an older layout; SPEC 5's gate moves them.
    #[error("the views of this store are in layout {found}, this build reads layout {}: run `migrate-tool migrate run rows` to move them under the gate", crate::views::LAYOUT)]
    Layout { found: u32 },
    /// The fold could not proceed.
    #[error("fold failed: {reason}")]
    Fold { reason: String },
    /// A caller's argument breaks its rule (e.g. a statement page of 0 lines).
    #[error("{name} {value}: {rule}")]
    Argument {
        name: &'static str,
        value: String,
        rule: String,
    },
    /// A check read two snapshots of one store (`check::check_engine`) and they differ: a
    /// writer ran during the check, which the caller promised would not happen.
    #[error("the store changed during the check: head {verify_head} for verify, {fold_head} for the fold")]
    StoreChanged { verify_head: u64, fold_head: u64 },
}
