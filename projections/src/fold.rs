//! Folding the log into wallet states, in bounded memory, as of any moment.
//!
//! The fold reads the log sequentially in position order (the fast path for any engine) and
//! keeps only the members of one partition in memory at a time. Partitions are (modulus,
//! residue) classes of a member's hash: it starts with one partition holding everyone; when a
//! partition's member count passes the cap, that pass is dropped and the partition is split in
//! two (modulus doubled), so memory stays bounded at any member count (16.5M included) while a
//! small store is folded in a single pass. Each member's state is handed to the sink exactly once.

use std::collections::BTreeMap;
use std::ops::Bound;

use ledger::domain::{apply_wallet_event, MemberId, WalletEvent, WalletState};
use ledger::log::{self, tables as log_tables};
use ledger::record::EventRecord;
use ledger::{Position, Snapshot, Timestamp};

use crate::hook::wallet_event_of;
use crate::ProjectionError;

/// Which events count.
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
    /// Parses `@N` or an RFC 3339 time.
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
        match self {
            AsOf::Head => true,
            AsOf::Position(p) => record.position <= *p,
            AsOf::BusinessTime(t) => record.at <= *t,
        }
    }

    fn last_position(&self) -> Option<Position> {
        match self {
            AsOf::Position(p) => Some(*p),
            _ => None,
        }
    }
}

/// Members kept in memory per pass. At a few hundred bytes per state this is ~1 GiB at most.
pub const DEFAULT_MEMBERS_PER_PASS: usize = 2_000_000;
/// Events per log read.
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
            WalletEvent::WalletOpened(_) | WalletEvent::BadgeAwarded(_) => {}
        }
    }

    /// Adds another set of sums.
    pub fn merge(&mut self, other: &EventTotals) {
        self.top_ups += other.top_ups;
        self.payments += other.payments;
        self.refunds += other.refunds;
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
    /// Cap on members in memory per pass.
    pub members_per_pass: usize,
    /// Called with the events read so far in the current pass.
    pub progress: &'a mut dyn FnMut(u64),
}

impl<'a> FoldOptions<'a> {
    /// Every event up to the head, default pass size.
    pub fn new(as_of: AsOf, progress: &'a mut dyn FnMut(u64)) -> FoldOptions<'a> {
        FoldOptions {
            as_of,
            members_per_pass: DEFAULT_MEMBERS_PER_PASS,
            progress,
        }
    }
}

fn partition_hash(member: &MemberId) -> u64 {
    let h = blake3::hash(member.as_str().as_bytes());
    u64::from_le_bytes(
        h.as_bytes()[8..16]
            .try_into()
            .expect("8 bytes of a 32-byte hash"),
    )
}

type States = BTreeMap<MemberId, Option<WalletState>>;

/// Folds every wallet stream of the log; `sink` receives each partition's states, sorted by
/// member id (within a partition), each member exactly once. Members whose stream has no
/// included event are not reported.
pub fn fold_log(
    snap: &dyn Snapshot,
    mut options: FoldOptions<'_>,
    sink: &mut dyn FnMut(States) -> Result<(), ProjectionError>,
) -> Result<FoldStats, ProjectionError> {
    let mut stats = FoldStats::default();
    let mut pending: Vec<(u64, u64)> = vec![(1, 0)];
    while let Some((modulus, residue)) = pending.pop() {
        stats.passes += 1;
        let mut totals = EventTotals::default();
        let mut applied = 0u64;
        let pass = fold_partition(
            snap,
            &mut options,
            (modulus, residue),
            &mut stats,
            &mut totals,
            &mut applied,
        )?;
        match pass {
            Some(states) => {
                stats.totals.merge(&totals);
                stats.wallet_events += applied;
                stats.members += states.len() as u64;
                sink(states)?;
            }
            None => {
                let split = modulus.checked_mul(2).ok_or(ProjectionError::Fold {
                    reason: "cannot split partitions further".into(),
                })?;
                pending.push((split, residue + modulus));
                pending.push((split, residue));
            }
        }
    }
    Ok(stats)
}

/// One pass. `None`: the partition had more members than the cap (the pass is dropped).
fn fold_partition(
    snap: &dyn Snapshot,
    options: &mut FoldOptions<'_>,
    (modulus, residue): (u64, u64),
    stats: &mut FoldStats,
    totals: &mut EventTotals,
    applied: &mut u64,
) -> Result<Option<States>, ProjectionError> {
    let mut states = States::new();
    let mut next = Position(1);
    let mut read = 0u64;
    loop {
        let key = log::event_key(next);
        let chunk = snap.scan(
            log_tables::EVENTS,
            (Bound::Included(&key[..]), Bound::Unbounded),
            CHUNK_EVENTS,
        )?;
        if chunk.is_empty() {
            break;
        }
        for (_, value) in &chunk {
            let record = EventRecord::decode(value).map_err(|e| ProjectionError::Event {
                position: next.0,
                reason: e.to_string(),
            })?;
            if options
                .as_of
                .last_position()
                .is_some_and(|p| record.position > p)
            {
                stats.events_read += read;
                return Ok(Some(states));
            }
            next = record.position.next();
            read += 1;
            if !options.as_of.includes(&record) {
                continue;
            }
            let Some((member, event)) = wallet_event_of(&record)? else {
                continue;
            };
            if partition_hash(&member) % modulus != residue {
                continue;
            }
            let state = states.entry(member.clone()).or_insert(None);
            apply_wallet_event(state, &event).map_err(|e| ProjectionError::Event {
                position: record.position.0,
                reason: e.to_string(),
            })?;
            if states.len() > options.members_per_pass {
                stats.events_read += read;
                return Ok(None);
            }
            totals.add(&event);
            *applied += 1;
        }
        (options.progress)(read);
    }
    stats.events_read += read;
    Ok(Some(states))
}

/// One member's wallet as of a moment, folded from its own stream (no other member is read).
pub fn fold_member(
    snap: &dyn Snapshot,
    member: &MemberId,
    as_of: AsOf,
) -> Result<Option<WalletState>, ProjectionError> {
    let stream = ledger::domain::wallet_stream(member);
    let mut state = None;
    let mut from = ledger::StreamVersion(1);
    loop {
        let records = log::read_stream(snap, &stream, from, CHUNK_EVENTS)?;
        let Some(last) = records.last() else {
            return Ok(state);
        };
        from = ledger::StreamVersion(last.version.0 + 1);
        for record in &records {
            if !as_of.includes(record) {
                continue;
            }
            if let Some((_, event)) = wallet_event_of(record)? {
                apply_wallet_event(&mut state, &event).map_err(|e| ProjectionError::Event {
                    position: record.position.0,
                    reason: e.to_string(),
                })?;
            }
        }
    }
}
