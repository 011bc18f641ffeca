//! Folding the log into wallet states, in bounded memory, as of any moment.
//!
//! The fold reads the log sequentially in position order (the fast path for any engine) and
//! keeps only the members of one partition in memory at a time. Partitions are (modulus,
//! residue) classes of a member's hash: it starts with one partition holding everyone; when a
//! partition's member count passes the cap, that pass is dropped and the partition is split in
//! two (modulus doubled), so memory stays bounded at any member count (16.5M included) while a
//! small store is folded in a single pass. Each member's state is handed to the sink exactly once.
//!
//! Speed (see `docs/bench-wallet.md`): each record's envelope is parsed as a borrowed
//! [`RecordView`](ledger::record::RecordView) (no allocation); non-wallet streams and members of
//! other partitions are skipped by their stream name before the payload is decoded; states live
//! in a hash map during the pass and are sorted once at its end. [`fold_log_pipelined`] (used
//! by rebuild) also moves the log scan to a second thread.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::ops::Bound;

use ledger::domain::{apply_wallet_event, MemberId, WalletEvent, WalletState};
use ledger::engine::Entry;
use ledger::log::{self, tables as log_tables};
use ledger::record::EventRecord;
use ledger::{Engine, Position, Snapshot, Timestamp};

use crate::hook::{decode_wallet_event, wallet_event_of};
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

/// Members kept in memory per pass. At a few hundred bytes per state this is ~1 GiB at most.
pub const DEFAULT_MEMBERS_PER_PASS: usize = 2_000_000;
/// Events per log read.
const CHUNK_EVENTS: usize = 8_192;
/// Chunks the scanner thread of [`fold_log_pipelined`] may read ahead (~2 MiB each).
const SCAN_QUEUE_CHUNKS: usize = 4;

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

/// Partition key of a member: 8 bytes of BLAKE3 of its id (taken from the stream name, so the
/// check costs no allocation).
fn partition_hash(member: &str) -> u64 {
    let h = blake3::hash(member.as_bytes());
    u64::from_le_bytes(
        h.as_bytes()[8..16]
            .try_into()
            .expect("8 bytes of a 32-byte hash"),
    )
}

type States = BTreeMap<MemberId, Option<WalletState>>;

/// Key of the in-memory states of a pass: looked up by the `&str` member of a stream name, so
/// that a wallet event of a known member costs no allocation.
#[derive(PartialEq, Eq)]
struct Key(MemberId);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must hash exactly as `str` does, for `Borrow<str>` lookups.
        self.0.as_str().hash(state);
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        self.0.as_str()
    }
}

/// States of one pass. A hash map while folding (one lookup per event instead of a B-tree
/// walk), sorted once when the pass is done.
type PassStates = HashMap<Key, Option<WalletState>>;

/// Stream names of wallet streams start with this; see [`ledger::domain::wallet_stream`].
const WALLET_PREFIX: &str = "wallet-";

/// A pass's input: chunks of `events` entries in position order from position 1.
type Chunk = Result<Vec<Entry>, ProjectionError>;

/// Folds every wallet stream of the log; `sink` receives each partition's states, sorted by
/// member id (within a partition), each member exactly once. Members whose stream has no
/// included event are not reported.
pub fn fold_log(
    snap: &dyn Snapshot,
    options: FoldOptions<'_>,
    sink: &mut dyn FnMut(States) -> Result<(), ProjectionError>,
) -> Result<FoldStats, ProjectionError> {
    fold_passes(
        options,
        sink,
        &mut |options, partition, stats, totals, applied| {
            fold_chunks(
                scan_chunks(snap),
                &mut drop,
                options,
                partition,
                stats,
                totals,
                applied,
            )
        },
    )
}

/// [`fold_log`] on two threads: one scans the log (each pass on its own snapshot of `engine`),
/// the caller's thread decodes and folds. Only for an engine no writer appends to while it runs
/// (a rebuild): every pass must see the same log. Events after `options.as_of`'s position are
/// never read, so passing the head position read before makes that explicit.
pub fn fold_log_pipelined(
    engine: &dyn Engine,
    options: FoldOptions<'_>,
    sink: &mut dyn FnMut(States) -> Result<(), ProjectionError>,
) -> Result<FoldStats, ProjectionError> {
    fold_passes(
        options,
        sink,
        &mut |options, partition, stats, totals, applied| {
            std::thread::scope(|scope| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(SCAN_QUEUE_CHUNKS);
                // Folded chunks go back to the scanner to be freed there: the allocator then frees
                // into the arena that allocated them, off the fold thread (the bottleneck).
                let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<Entry>>();
                scope.spawn(move || {
                    let snap = match engine.snapshot() {
                        Ok(snap) => snap,
                        Err(e) => {
                            let _ = tx.send(Err(e.into()));
                            return;
                        }
                    };
                    for chunk in scan_chunks(&*snap) {
                        back_rx.try_iter().for_each(drop);
                        let failed = chunk.is_err();
                        // A closed channel means the fold stopped early (cap reached, as-of passed).
                        if tx.send(chunk).is_err() || failed {
                            return;
                        }
                    }
                });
                let mut recycle = |chunk: Vec<Entry>| {
                    // Fails only once the scanner is done; then the chunk is freed here.
                    let _ = back_tx.send(chunk);
                };
                // `rx` is dropped when the fold returns, which stops the scanner at its next send.
                fold_chunks(
                    rx.into_iter(),
                    &mut recycle,
                    options,
                    partition,
                    stats,
                    totals,
                    applied,
                )
            })
        },
    )
}

/// The pass loop shared by both folds: splits a partition whose pass exceeds the member cap.
fn fold_passes(
    mut options: FoldOptions<'_>,
    sink: &mut dyn FnMut(States) -> Result<(), ProjectionError>,
    pass: PassFn<'_>,
) -> Result<FoldStats, ProjectionError> {
    let mut stats = FoldStats::default();
    let mut pending: Vec<(u64, u64)> = vec![(1, 0)];
    while let Some((modulus, residue)) = pending.pop() {
        stats.passes += 1;
        let mut totals = EventTotals::default();
        let mut applied = 0u64;
        match pass(
            &mut options,
            (modulus, residue),
            &mut stats,
            &mut totals,
            &mut applied,
        )? {
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

/// One pass over the log for one partition (see [`fold_chunks`]).
type PassFn<'p> = &'p mut dyn FnMut(
    &mut FoldOptions<'_>,
    (u64, u64),
    &mut FoldStats,
    &mut EventTotals,
    &mut u64,
) -> Result<Option<States>, ProjectionError>;

/// The events table in chunks of [`CHUNK_EVENTS`], from position 1 to the end of `snap`.
fn scan_chunks(snap: &dyn Snapshot) -> impl Iterator<Item = Chunk> + '_ {
    let mut from = Some(log::event_key(Position(1)).to_vec());
    std::iter::from_fn(move || {
        let start = from.take()?;
        let chunk = snap.scan(
            log_tables::EVENTS,
            (Bound::Included(&start[..]), Bound::Unbounded),
            CHUNK_EVENTS,
        );
        match chunk {
            Err(e) => Some(Err(e.into())),
            Ok(chunk) => {
                let (last, _) = chunk.last()?;
                // The smallest key greater than the last one read.
                let mut next = last.clone();
                next.push(0);
                from = Some(next);
                Some(Ok(chunk))
            }
        }
    })
}

/// One pass. `None`: the partition had more members than the cap (the pass is dropped).
///
/// Per event: parse the envelope without allocating; skip non-wallet streams by their name,
/// and members of other partitions, before decoding the payload; then one hash lookup.
fn fold_chunks(
    chunks: impl Iterator<Item = Chunk>,
    done: &mut dyn FnMut(Vec<Entry>),
    options: &mut FoldOptions<'_>,
    (modulus, residue): (u64, u64),
    stats: &mut FoldStats,
    totals: &mut EventTotals,
    applied: &mut u64,
) -> Result<Option<States>, ProjectionError> {
    let mut states = PassStates::new();
    let last_position = options.as_of.last_position();
    let mut next = Position(1);
    let mut read = 0u64;
    for chunk in chunks {
        let chunk = chunk?;
        for (_, value) in &chunk {
            let record = EventRecord::view(value).map_err(|e| ProjectionError::Event {
                position: next.0,
                reason: e.to_string(),
            })?;
            if last_position.is_some_and(|p| record.position > p) {
                stats.events_read += read;
                return Ok(Some(sorted(states)));
            }
            next = record.position.next();
            read += 1;
            if !options.as_of.includes_at(record.position, record.at) {
                continue;
            }
            let Some(member) = record.stream.strip_prefix(WALLET_PREFIX) else {
                continue;
            };
            let state = match states.get_mut(member) {
                Some(state) => state,
                None => {
                    if modulus > 1 && partition_hash(member) % modulus != residue {
                        continue;
                    }
                    // Not a valid member id: not a wallet stream (as `member_of_stream` says).
                    let Ok(id) = MemberId::new(member) else {
                        continue;
                    };
                    states.entry(Key(id)).or_insert(None)
                }
            };
            let event = decode_wallet_event(&record)?;
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
        done(chunk);
        (options.progress)(read);
    }
    stats.events_read += read;
    Ok(Some(sorted(states)))
}

fn sorted(states: PassStates) -> States {
    states.into_iter().map(|(k, v)| (k.0, v)).collect()
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
