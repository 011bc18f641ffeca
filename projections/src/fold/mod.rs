//! Folding the log into wallet states, in bounded memory, as of any moment.
//!
//! Why a module of its own: the views are a cache; this is the definition they are checked
//! against. `check`, `gate`, `rebuild`, the as-of reads and the tests all derive wallets here,
//! from the log alone, so there is one fold of the whole log and one fold of one member.
//!
//! # Layout
//! - this file: what a fold is asked and what it answers: [`AsOf`] (which events count),
//!   [`FoldOptions`] (and the default budgets), [`FoldStats`] and [`EventTotals`].
//! - `partition`: the driver: [`fold_log`] and [`fold_log_pipelined`] read the log in position
//!   order, one pass per partition of members, and split a partition that does not fit.
//! - `pass`: `PassStates`, the states of one pass: hot (decoded) or cold (encoded in an arena),
//!   within the pass's memory budget.
//! - `decode`: the borrowed fast decoder of wallet payloads, checked against the reference
//!   decoder of `hook`.
//! - `member`: [`fold_member`], one member's stream ([`fold_wallet_records`]: the same fold
//!   of any source of its records).
//!
//! Invariants kept across the module:
//! - Pure over the log: a fold reads the events table of one snapshot (the pipelined fold: one
//!   snapshot per pass, of an engine nobody writes to meanwhile) and no view, and writes nothing.
//! - Every wallet event is folded by `ledger::domain` (`apply_wallet_event` or its owned twin),
//!   the same fold `decide` reads: there is no second definition of a wallet here.
//! - [`fold_log`] hands each member's state to the sink exactly once; within a pass, in member
//!   id order. Memory per pass is bounded by [`FoldOptions::pass_bytes`] at any member count.
//! - [`AsOf`] decides inclusion the same way for both folds.

mod decode;
mod member;
mod partition;
mod pass;

use std::collections::BTreeMap;

use ledger::domain::{MemberId, WalletEvent, WalletState};
use ledger::record::EventRecord;
use ledger::{Position, Timestamp};

pub use member::{fold_member, fold_wallet_records};
pub use partition::{fold_log, fold_log_pipelined};

/// Which events count. How an operator spells one (`--as-of @N` or a time) is the command
/// line's business (`migrate-tool`'s `read::parse_as_of`), not the fold's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsOf {
    /// Every event up to the head of the snapshot.
    Head,
    /// Events at positions `<= N` (`@N` on the command line).
    Position(Position),
    /// Events whose business time `at` is `<= T`, in log order.
    BusinessTime(Timestamp),
}

impl AsOf {
    /// The two spellings of an as-of value (`--as-of`, the HTTP `as_of` parameter): `@N`, the
    /// log position `N` (events at positions `<= N`), or an RFC 3339 time with offset (events
    /// whose business time is `<= T`). The error names the rule; callers add the flag.
    pub fn parse(input: &str) -> Result<AsOf, String> {
        if let Some(n) = input.strip_prefix('@') {
            return n
                .parse::<u64>()
                .map(|n| AsOf::Position(Position(n)))
                .map_err(|_| {
                    format!("`{input}`: after @ must come a log position (a whole number)")
                });
        }
        Timestamp::parse_rfc3339(input)
            .map(AsOf::BusinessTime)
            .map_err(|e| e.to_string())
    }

    /// Whether a record is included.
    pub fn includes(&self, record: &EventRecord) -> bool {
        self.includes_at(record.position, record.at)
    }

    /// Whether a record at this position and business time is included.
    pub fn includes_at(&self, position: Position, at: Timestamp) -> bool {
        match self {
            AsOf::Head => true,
            AsOf::Position(p) => position <= *p,
            AsOf::BusinessTime(t) => at <= *t,
        }
    }

    fn last_position(&self) -> Option<Position> {
        match self {
            AsOf::Position(p) => Some(*p),
            _ => None,
        }
    }
}

/// Cap on members per pass (slot numbers are `u32`); in practice [`DEFAULT_PASS_BYTES`] binds
/// first. Tests set a small cap to force partition splits.
pub const DEFAULT_MEMBERS_PER_PASS: usize = 1 << 31;
/// Estimated bytes a pass may hold in states, hot and cold (see `pass::PassStates`); past it
/// the pass is dropped and its partition split in two. A cold member costs `pass::ENTRY_BYTES`
/// plus its id and its bincode state: ~90 bytes at the 7Pay shape (one to three wallet events each), so
/// 16.5M members (~1.5 GiB) are one pass; members with hundreds of events take more passes.
pub const DEFAULT_PASS_BYTES: usize = 2_560 << 20;
/// Of the pass budget, decoded ("hot") states may hold at most this; the oldest are encoded
/// into the cold arena beyond it. 1 GiB keeps 100,000 members with 100 events each hot (the
/// rebuild benchmark) and ~1M recently touched members at the 7Pay shape.
pub const DEFAULT_HOT_BYTES: usize = 1 << 30;
/// Events per log read (both folds).
const CHUNK_EVENTS: usize = 8_192;

/// What a fold did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldStats {
    /// Events read from the log over all passes (a multi-pass fold reads events more than once).
    pub events_read: u64,
    /// Wallet events applied (each exactly once).
    pub wallet_events: u64,
    /// Members handed to the sink.
    pub members: u64,
    /// Passes over the log, including dropped ones.
    pub passes: u32,
    /// Sums over the applied wallet events.
    pub totals: EventTotals,
}

/// Sums over wallet events, for the conservation invariants (SPEC section 4.4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventTotals {
    /// Yen topped up.
    pub top_ups: u128,
    /// Yen paid.
    pub payments: u128,
    /// Yen refunded.
    pub refunds: u128,
    /// Yen transferred out (sum over senders).
    pub transfers_out: u128,
    /// Yen transferred in (sum over receivers).
    pub transfers_in: u128,
    /// Miles earned.
    pub miles_earned: u128,
    /// Miles redeemed.
    pub miles_redeemed: u128,
    /// Miles expired.
    pub miles_expired: u128,
    /// Coupons issued.
    pub coupons_issued: u64,
    /// Coupons redeemed.
    pub coupons_redeemed: u64,
    /// Coupons expired.
    pub coupons_expired: u64,
    /// Yen of compensations (SPEC section 7).
    pub compensations: u128,
    /// Holds placed.
    pub holds_placed: u64,
    /// Holds confirmed.
    pub holds_confirmed: u64,
    /// Holds cancelled (by `cancel_hold` or `expire`).
    pub holds_cancelled: u64,
}

impl EventTotals {
    /// Counts one event.
    pub fn add(&mut self, event: &WalletEvent) {
        match event {
            WalletEvent::ToppedUp(e) => self.top_ups += u128::from(e.amount.0),
            WalletEvent::Paid(e) => self.payments += u128::from(e.amount.0),
            WalletEvent::Refunded(e) => self.refunds += u128::from(e.amount.0),
            WalletEvent::TransferredOut(e) => self.transfers_out += u128::from(e.amount.0),
            WalletEvent::TransferredIn(e) => self.transfers_in += u128::from(e.amount.0),
            WalletEvent::MilesEarned(e) => self.miles_earned += u128::from(e.miles.0),
            WalletEvent::MilesRedeemed(e) => self.miles_redeemed += u128::from(e.miles.0),
            WalletEvent::MilesExpired(e) => self.miles_expired += u128::from(e.miles.0),
            WalletEvent::CouponIssued(_) => self.coupons_issued += 1,
            WalletEvent::CouponRedeemed(_) => self.coupons_redeemed += 1,
            WalletEvent::CouponExpired(_) => self.coupons_expired += 1,
            WalletEvent::Compensated(e) => self.compensations += u128::from(e.amount.0),
            // Holds move no money: a confirmed one arrives as its own payment or transfer.
            WalletEvent::HoldPlaced(_) => self.holds_placed += 1,
            WalletEvent::HoldConfirmed(_) => self.holds_confirmed += 1,
            WalletEvent::HoldCancelled(_) => self.holds_cancelled += 1,
            WalletEvent::WalletOpened(_) | WalletEvent::BadgeAwarded(_) => {}
        }
    }

    /// Adds another set of sums.
    pub fn merge(&mut self, other: &EventTotals) {
        self.top_ups += other.top_ups;
        self.payments += other.payments;
        self.refunds += other.refunds;
        self.compensations += other.compensations;
        self.holds_placed += other.holds_placed;
        self.holds_confirmed += other.holds_confirmed;
        self.holds_cancelled += other.holds_cancelled;
        self.transfers_out += other.transfers_out;
        self.transfers_in += other.transfers_in;
        self.miles_earned += other.miles_earned;
        self.miles_redeemed += other.miles_redeemed;
        self.miles_expired += other.miles_expired;
        self.coupons_issued += other.coupons_issued;
        self.coupons_redeemed += other.coupons_redeemed;
        self.coupons_expired += other.coupons_expired;
    }
}

/// Options of [`fold_log`].
pub struct FoldOptions<'a> {
    /// Which events to include.
    pub as_of: AsOf,
    /// Cap on members per pass.
    pub members_per_pass: usize,
    /// Estimated bytes of states per pass (hot and cold); see [`DEFAULT_PASS_BYTES`].
    pub pass_bytes: usize,
    /// Estimated bytes of decoded states per pass; see [`DEFAULT_HOT_BYTES`].
    pub hot_bytes: usize,
    /// Called with the events read so far in the current pass.
    pub progress: &'a mut dyn FnMut(u64),
    /// Called with every record up to `as_of`'s position, in log order, during the first pass
    /// only (rebuild derives the SPEC 7 side rows from the fold's own read this way). It saw the
    /// whole log exactly once only if [`FoldStats::passes`] is 1 afterwards; otherwise the first
    /// pass was dropped midway and the caller must not use what it gathered.
    pub tap: Option<&'a mut RecordTap<'a>>,
}

/// See [`FoldOptions::tap`].
pub type RecordTap<'a> =
    dyn FnMut(&ledger::record::RecordView<'_>) -> Result<(), crate::ProjectionError> + 'a;

impl<'a> FoldOptions<'a> {
    /// Every event up to the head, default pass size.
    pub fn new(as_of: AsOf, progress: &'a mut dyn FnMut(u64)) -> FoldOptions<'a> {
        FoldOptions {
            as_of,
            members_per_pass: DEFAULT_MEMBERS_PER_PASS,
            pass_bytes: DEFAULT_PASS_BYTES,
            hot_bytes: DEFAULT_HOT_BYTES,
            progress,
            tap: None,
        }
    }
}

/// What [`fold_log`] hands its sink: part of one partition's states, in member id order.
type States = BTreeMap<MemberId, Option<WalletState>>;

/// Events per read of the events table in [`visit_records`].
pub const VISIT_CHUNK_EVENTS: usize = 8_192;

/// Visits every record of `snap`'s events table from position 1 in log order, as a borrowed
/// view of the stored bytes (no copy, no allocation per record: the second passes of `rebuild`
/// and `check` and the victims search read ten million records this way), until `visit`
/// returns [`std::ops::ControlFlow::Break`]. `chunk_done` is called after each read of
/// [`VISIT_CHUNK_EVENTS`] records (for progress). Returns the records visited.
pub fn visit_records(
    snap: &dyn ledger::Snapshot,
    visit: &mut dyn FnMut(
        &ledger::record::RecordView<'_>,
    ) -> Result<std::ops::ControlFlow<()>, crate::ProjectionError>,
    chunk_done: &mut dyn FnMut(u64),
) -> Result<u64, crate::ProjectionError> {
    let mut count = 0u64;
    for chunk in
        ledger::engine::TableChunks::new(snap, ledger::log::tables::EVENTS, VISIT_CHUNK_EVENTS)
    {
        for (_, value) in &chunk? {
            count += 1;
            let record = EventRecord::view(value).map_err(|e| crate::ProjectionError::Event {
                position: count,
                reason: e.to_string(),
            })?;
            if visit(&record)?.is_break() {
                return Ok(count);
            }
        }
        chunk_done(count);
    }
    Ok(count)
}
