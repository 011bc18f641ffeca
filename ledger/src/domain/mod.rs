//! The wallet domain: identifiers, commands, events, the state fold and `decide`. Pure: no
//! storage, no I/O, no clock, no async.
//!
//! Why a separate, pure module: the one direction of data is
//! command -> [`decide()`] -> events -> append -> [`WalletState::apply`] (projections). Keeping the
//! two ends pure means the store, the projections and the tests all share one definition of the
//! rules, and a decision can be replayed from its inputs.
//!
//! # Layout
//! - [`ids`]: validated newtypes (`MemberId`, `CommandId`, `Yen`, ...) and stream names.
//! - [`command`]: the JSON Lines command format (SPEC section 2), strict parsing, fingerprints.
//! - [`events`]: events with stable type names, schema versions and payload encoding.
//! - [`state`]: `WalletState` / `IdentityState` and their checked, all-or-nothing `apply`.
//! - [`reader`]: [`StateReader`], the rows `decide` may read (point lookups and ordered visits,
//!   never a whole history).
//! - [`rows`]: the fold one row at a time ([`wallet_row_changes`]), for stores that keep a
//!   wallet as a summary plus one row per entity.
//! - [`decide`](mod@decide): the rules, as a pure function from command and rows to events.
//!
//! Invariants kept across the module: no floats for money; no panics on input (every error is
//! a typed value with a one-line message); identity commands and events never touch a wallet
//! stream and wallet commands never touch an identity stream.

pub mod command;
pub mod decide;
pub mod events;
pub mod ids;
pub mod reader;
pub mod rows;
pub mod state;

#[cfg(test)]
mod parser_tests;
#[cfg(test)]
mod row_tests;
#[cfg(test)]
mod tests;

pub use command::{Command, CommandBody, InputError};
pub use decide::{
    decide, decide_expire, decide_expire_at_most, reset_of_registered, DecideInput, InactiveReason,
    Rejection, StreamEvents,
};
pub use events::{
    is_reset_credentials_command_id, BadgeAwarded, CancelReason, Compensated, ContactChanged,
    CouponExpired, CouponIssued, CouponRedeemed, CouponRedeemedV1, Currency, DecodeEventError,
    DomainEvent, HeldKind, HoldCancelled, HoldConfirmed, HoldPlaced, IdentityEvent, LoggedIn,
    MerchantCategory, MigrationApplied, MilesEarned, MilesExpired, MilesRedeemed, MilesRedeemedV1,
    Paid, PaidV1, PaidV2, PasswordChanged, PasswordReset, PasswordResetV1, PolicyEvent, PolicySet,
    Refunded, Registered, SystemEvent, ToppedUp, TransferredIn, TransferredOut, TransferredOutV1,
    WalletEvent, WalletOpened, LEGACY_TYPES, SYSTEM_MIGRATIONS_STREAM, SYSTEM_POLICY_STREAM,
};
pub use ids::{
    identity_stream, member_of_stream, wallet_stream, Badge, CommandId, CouponId, IdError, LotId,
    MemberId, Miles, StreamKind, StreamRef, Yen, IDENTITY_STREAM_PREFIX, WALLET_STREAM_PREFIX,
};
pub use reader::{ReadFailure, SecurityRow, StateReader, Visit, WalletSummary};
pub use rows::{wallet_row_changes, RowChange};
pub use state::{
    apply_identity_event, apply_wallet_event, apply_wallet_event_owned, Coupon, CouponStatus,
    FoldError, Hold, IdentityState, MilesLot, Payment, WalletState,
};
