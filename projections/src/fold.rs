//! Folding the log into wallet states, in bounded memory, as of any moment.
//!
//! The fold reads the log sequentially in position order (the fast path for any engine).
//! A pass keeps its members' states in [`PassStates`]: decoded while recently touched, encoded
//! in one arena otherwise, so a member costs ~90 bytes at the 7Pay shape and 16.5M members fit
//! one pass. Memory per pass is bounded by [`FoldOptions::pass_bytes`] (estimated; default
//! [`DEFAULT_PASS_BYTES`] = 2.5 GiB, of which at most [`FoldOptions::hot_bytes`] = 1 GiB
//! decoded). Partitions are (modulus, residue) classes of a member's hash: the first pass holds
//! everyone; when a pass passes its budget (or the member cap), it is dropped and the
//! partition split in two, so memory stays bounded at any member count. Each member's state is
//! handed to the sink exactly once; within a pass, in member id order.
//!
//! Speed: each record's envelope is parsed as a borrowed
//! [`RecordView`](ledger::record::RecordView) (no allocation); non-wallet streams and members of
//! other partitions are skipped by their stream name before the payload is decoded; states are
//! found through a 4-byte-per-member hash index and sorted once at the end of the pass.
//! [`fold_log_pipelined`] (used by rebuild) also moves the log scan to a second thread.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use hashbrown::HashTable;

use serde::Deserialize;

use ledger::domain::state::apply_wallet_event_owned;
use ledger::domain::{
    apply_wallet_event, CommandId, CouponExpired, CouponId, CouponIssued, CouponRedeemed, Currency,
    MemberId, MerchantCategory, Paid, Refunded, TransferredIn, TransferredOut, WalletEvent,
    WalletState, Yen,
};
use ledger::engine::Entry;
use ledger::log::{self, tables as log_tables};
use ledger::record::{EventRecord, RecordView};
use ledger::{Codec, Engine, Position, Snapshot, Timestamp};

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

/// Cap on members per pass (slot numbers are `u32`); in practice [`DEFAULT_PASS_BYTES`] binds
/// first. Tests set a small cap to force partition splits.
pub const DEFAULT_MEMBERS_PER_PASS: usize = 1 << 31;
/// Estimated bytes a pass may hold in states, hot and cold (see [`PassStates`]); past it the
/// pass is dropped and its partition split in two. A cold member costs [`ENTRY_BYTES`] plus its
/// id and its bincode state: ~90 bytes at the 7Pay shape (one to three wallet events each), so
/// 16.5M members (~1.5 GiB) are one pass; members with hundreds of events take more passes.
pub const DEFAULT_PASS_BYTES: usize = 2_560 << 20;
/// Of the pass budget, decoded ("hot") states may hold at most this; the oldest are encoded
/// into the cold arena beyond it. 1 GiB keeps 100,000 members with 100 events each hot (the
/// rebuild benchmark) and ~1M recently touched members at the 7Pay shape.
pub const DEFAULT_HOT_BYTES: usize = 1 << 30;
/// Events per log read.
const CHUNK_EVENTS: usize = 8_192;
/// Chunks the scanner thread of [`fold_log_pipelined`] may read ahead (~2 MiB each).
const SCAN_QUEUE_CHUNKS: usize = 4;
/// Members per sink call when a pass hands out its states.
const OUTPUT_CHUNK: usize = 16_384;

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
    /// Cap on members per pass.
    pub members_per_pass: usize,
    /// Estimated bytes of states per pass (hot and cold); see [`DEFAULT_PASS_BYTES`].
    pub pass_bytes: usize,
    /// Estimated bytes of decoded states per pass; see [`DEFAULT_HOT_BYTES`].
    pub hot_bytes: usize,
    /// Called with the events read so far in the current pass.
    pub progress: &'a mut dyn FnMut(u64),
}

impl<'a> FoldOptions<'a> {
    /// Every event up to the head, default pass size.
    pub fn new(as_of: AsOf, progress: &'a mut dyn FnMut(u64)) -> FoldOptions<'a> {
        FoldOptions {
            as_of,
            members_per_pass: DEFAULT_MEMBERS_PER_PASS,
            pass_bytes: DEFAULT_PASS_BYTES,
            hot_bytes: DEFAULT_HOT_BYTES,
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

/// Estimated bytes per member outside its state: its slot (16), its index entry (4 bytes and a
/// control byte at up to 87.5% load, doubled while the table grows) and its FIFO entry.
const ENTRY_BYTES: usize = 32;

/// A decoded state, with the member of its stream (which keys it: a state's own `member`
/// comes from its payload and is not trusted as a key).
struct HotState {
    member: MemberId,
    state: Option<WalletState>,
    /// What [`estimate`] said when it was last updated; summed in `hot_bytes`.
    est: usize,
}

/// Where one member's state is during a pass.
enum Slot {
    /// Decoded, on the heap.
    Hot(Box<HotState>),
    /// Encoded in the arena: at `off`, one byte of id length, the id, then `len` bytes of the
    /// state in bincode ([`Codec::Bincode2`], as the views store it).
    Cold { off: u64, len: u32 },
}

/// The states of one pass, compact enough for 16.5M members in one pass.
///
/// Why not a map of decoded states: a `WalletState` is 128 bytes inline plus its id and a
/// B-tree node per non-empty map, ~300-800 bytes per member with the map overhead, so 16.5M
/// members needed 9 passes over the log of 2M members each. Here a member is a 16-byte slot
/// (numbered in first-seen order), found through a `HashTable<u32>` keyed by the stream's member
/// id (no key copy: the id lives in the slot), and its state is either decoded ("hot") or
/// encoded in one arena ("cold", typically 30-60 bytes). States are decoded when touched and the
/// oldest-touched hot ones (FIFO) encoded when the hot estimate passes its cap. A log whose
/// members' events are near each other (the 7Pay demo, imports) encodes each member about
/// once; a log whose hot set fits the cap (100,000 members with 100 events each) never encodes.
/// Every event is still folded by `apply_wallet_event` into a decoded state: the encoding is
/// storage only, never a second fold.
struct PassStates {
    slots: Vec<Slot>,
    index: HashTable<u32>,
    arena: Vec<u8>,
    /// Arena bytes of records whose member went hot again.
    garbage: usize,
    /// Hot slots, oldest first; each hot slot is in it exactly once.
    fifo: VecDeque<u32>,
    hot_bytes: usize,
    pass_bytes: usize,
    hot_cap: usize,
    max_members: usize,
}

/// Hash of a stream's member id for the index: FNV-1a then a 64-bit finaliser (hashbrown uses
/// the top bits as tags and the low bits as positions, so both must be mixed). Ids are short.
fn member_key_hash(member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in member.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Estimated heap bytes of a decoded state: the box, two copies of the id, and per element of
/// each collection its B-tree share and string (a non-empty B-tree map has at least one ~0.5 KiB
/// leaf). Deliberately on the high side: it bounds memory, it does not need to be exact.
fn estimate(state: &Option<WalletState>) -> usize {
    let base = std::mem::size_of::<HotState>() + 96;
    let Some(s) = state else { return base };
    let map = |n: usize, per: usize, node: usize| if n == 0 { 0 } else { node + n * per };
    base + map(s.payments().len(), 120, 512)
        + map(s.coupons().len(), 112, 512)
        + map(s.badges().len(), 72, 320)
        + s.lots().len() * 48
}

fn name_bytes<'a>(slots: &'a [Slot], arena: &'a [u8], i: u32) -> &'a [u8] {
    match &slots[i as usize] {
        Slot::Hot(h) => h.member.as_str().as_bytes(),
        Slot::Cold { off, .. } => {
            let off = *off as usize;
            let n = usize::from(arena[off]);
            &arena[off + 1..off + 1 + n]
        }
    }
}

fn cold_error(reason: String) -> ProjectionError {
    ProjectionError::Fold {
        reason: format!("fold state storage: {reason}"),
    }
}

impl PassStates {
    fn new(options: &FoldOptions<'_>) -> PassStates {
        PassStates {
            slots: Vec::new(),
            index: HashTable::new(),
            arena: Vec::new(),
            garbage: 0,
            fifo: VecDeque::new(),
            hot_bytes: 0,
            pass_bytes: options.pass_bytes,
            hot_cap: options.hot_bytes.min(options.pass_bytes),
            max_members: options.members_per_pass.min(u32::MAX as usize),
        }
    }

    fn find(&self, member: &str, hash: u64) -> Option<u32> {
        let (slots, arena) = (&self.slots, &self.arena);
        self.index
            .find(hash, |&i| name_bytes(slots, arena, i) == member.as_bytes())
            .copied()
    }

    /// A new member (not in the index), hot.
    fn insert(&mut self, member: MemberId, hash: u64) -> u32 {
        let i = u32::try_from(self.slots.len()).expect("members per pass fit in u32");
        let est = estimate(&None);
        self.slots.push(Slot::Hot(Box::new(HotState {
            member,
            state: None,
            est,
        })));
        self.hot_bytes += est;
        self.fifo.push_back(i);
        let (slots, arena) = (&self.slots, &self.arena);
        self.index.insert_unique(hash, i, |&j| {
            // Only called while growing; the id is read back from the slot.
            let name = name_bytes(slots, arena, j);
            member_key_hash(std::str::from_utf8(name).unwrap_or_default())
        });
        i
    }

    /// The decoded state of slot `i`, decoding it if it is cold.
    fn hot(&mut self, i: u32) -> Result<&mut HotState, ProjectionError> {
        if let Slot::Cold { off, len } = self.slots[i as usize] {
            let (member, state) = self.decode_cold(off, len)?;
            let est = estimate(&state);
            self.garbage += 1 + member.as_str().len() + len as usize;
            self.hot_bytes += est;
            self.fifo.push_back(i);
            self.slots[i as usize] = Slot::Hot(Box::new(HotState { member, state, est }));
        }
        match &mut self.slots[i as usize] {
            Slot::Hot(h) => Ok(h),
            Slot::Cold { .. } => unreachable!("made hot above"),
        }
    }

    /// Re-estimates slot `i` (hot) after an event was applied to it.
    fn touched(&mut self, i: u32) {
        if let Slot::Hot(h) = &mut self.slots[i as usize] {
            let est = estimate(&h.state);
            self.hot_bytes = self.hot_bytes - h.est + est;
            h.est = est;
        }
    }

    fn decode_cold(
        &self,
        off: u64,
        len: u32,
    ) -> Result<(MemberId, Option<WalletState>), ProjectionError> {
        let off = off as usize;
        let n = usize::from(self.arena[off]);
        let name = std::str::from_utf8(&self.arena[off + 1..off + 1 + n])
            .map_err(|e| cold_error(e.to_string()))?;
        let member = MemberId::new(name).map_err(|e| cold_error(e.to_string()))?;
        let body = &self.arena[off + 1 + n..off + 1 + n + len as usize];
        // Our own arena, not bytes from the disk: no 1 MiB limit (a member with a long history
        // encodes to far more, and must fold like any other).
        let state = Codec::Bincode2
            .decode_unbounded::<Option<WalletState>>(body)
            .map_err(|e| cold_error(e.to_string()))?;
        Ok((member, state))
    }

    /// Encodes hot slot `i` into the arena.
    fn evict(&mut self, i: u32) -> Result<(), ProjectionError> {
        let placeholder = Slot::Cold { off: 0, len: 0 };
        let Slot::Hot(h) = std::mem::replace(&mut self.slots[i as usize], placeholder) else {
            return Err(cold_error(format!("slot {i} is in the FIFO but not hot")));
        };
        let body = Codec::Bincode2
            .encode(&h.state)
            .map_err(|e| cold_error(e.to_string()))?;
        let name = h.member.as_str().as_bytes();
        let n = u8::try_from(name.len()).map_err(|_| cold_error("member id too long".into()))?;
        let len = u32::try_from(body.len()).map_err(|_| cold_error("state too large".into()))?;
        let off = self.arena.len() as u64;
        self.arena.push(n);
        self.arena.extend_from_slice(name);
        self.arena.extend_from_slice(&body);
        self.slots[i as usize] = Slot::Cold { off, len };
        self.hot_bytes -= h.est;
        Ok(())
    }

    /// Drops the arena records of members that went hot again.
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for slot in &mut self.slots {
            if let Slot::Cold { off, len } = slot {
                let start = *off as usize;
                let end = start + 1 + usize::from(self.arena[start]) + *len as usize;
                *off = arena.len() as u64;
                arena.extend_from_slice(&self.arena[start..end]);
            }
        }
        self.arena = arena;
        self.garbage = 0;
    }

    fn cold_bytes(&self) -> usize {
        self.slots.len() * ENTRY_BYTES + self.arena.len()
    }

    fn over(&self) -> bool {
        self.cold_bytes() + self.hot_bytes > self.pass_bytes
    }

    /// Keeps the pass within its budget: encodes the oldest hot states past the hot cap (down to
    /// 3/4 of it, so this runs once per many events), compacts the arena when half of it is
    /// garbage. `false`: the pass does not fit even so (the caller splits the partition).
    fn fits(&mut self) -> Result<bool, ProjectionError> {
        if self.slots.len() > self.max_members {
            return Ok(false);
        }
        if self.hot_bytes > self.hot_cap || self.over() {
            let room = self.pass_bytes.saturating_sub(self.cold_bytes());
            let target = self.hot_cap.min(room) / 4 * 3;
            while self.hot_bytes > target {
                let Some(i) = self.fifo.pop_front() else {
                    break;
                };
                self.evict(i)?;
            }
            if self.over() && self.garbage * 2 > self.arena.len() {
                self.compact();
            }
        }
        Ok(!self.over())
    }

    /// Hands every state to `sink` in member id order, [`OUTPUT_CHUNK`] members per call.
    /// Returns the number of members.
    fn emit(
        mut self,
        sink: &mut dyn FnMut(States) -> Result<(), ProjectionError>,
    ) -> Result<u64, ProjectionError> {
        // Sort slot numbers by id: an 8-byte big-endian prefix first (ids never hold NUL, so
        // zero padding keeps the order), the whole id only on a tie.
        let mut order: Vec<(u64, u32)> = (0..self.slots.len() as u32)
            .map(|i| {
                let name = name_bytes(&self.slots, &self.arena, i);
                let mut prefix = [0u8; 8];
                let n = name.len().min(8);
                prefix[..n].copy_from_slice(&name[..n]);
                (u64::from_be_bytes(prefix), i)
            })
            .collect();
        {
            let (slots, arena) = (&self.slots, &self.arena);
            order.sort_unstable_by(|a, b| {
                a.0.cmp(&b.0)
                    .then_with(|| name_bytes(slots, arena, a.1).cmp(name_bytes(slots, arena, b.1)))
            });
        }
        self.index = HashTable::new();
        self.fifo = VecDeque::new();
        for chunk in order.chunks(OUTPUT_CHUNK) {
            let mut out = Vec::with_capacity(chunk.len());
            for &(_, i) in chunk {
                let placeholder = Slot::Cold { off: 0, len: 0 };
                match std::mem::replace(&mut self.slots[i as usize], placeholder) {
                    Slot::Hot(h) => out.push((h.member, h.state)),
                    Slot::Cold { off, len } => out.push(self.decode_cold(off, len)?),
                }
            }
            // Already sorted: the map is built in linear time.
            sink(out.into_iter().collect())?;
        }
        Ok(order.len() as u64)
    }
}

/// Stream names of wallet streams start with this; see [`ledger::domain::wallet_stream`].
const WALLET_PREFIX: &str = ledger::domain::WALLET_STREAM_PREFIX;

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
                stats.members += states.emit(sink)?;
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
) -> Result<Option<PassStates>, ProjectionError>;

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

/// One pass. `None`: the partition did not fit the pass's member cap or memory budget (the
/// pass is dropped).
///
/// Per event: parse the envelope without allocating; skip non-wallet streams by their name,
/// and members of other partitions, before decoding the payload; then one index lookup.
fn fold_chunks(
    chunks: impl Iterator<Item = Chunk>,
    done: &mut dyn FnMut(Vec<Entry>),
    options: &mut FoldOptions<'_>,
    (modulus, residue): (u64, u64),
    stats: &mut FoldStats,
    totals: &mut EventTotals,
    applied: &mut u64,
) -> Result<Option<PassStates>, ProjectionError> {
    let mut states = PassStates::new(options);
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
                return Ok(Some(states));
            }
            next = record.position.next();
            read += 1;
            if !options.as_of.includes_at(record.position, record.at) {
                continue;
            }
            let Some(member) = record.stream.strip_prefix(WALLET_PREFIX) else {
                continue;
            };
            let hash = member_key_hash(member);
            let slot = match states.find(member, hash) {
                Some(slot) => slot,
                None => {
                    if modulus > 1 && partition_hash(member) % modulus != residue {
                        continue;
                    }
                    // Not a valid member id: not a wallet stream (as `member_of_stream` says).
                    let Ok(id) = MemberId::new(member) else {
                        continue;
                    };
                    states.insert(id, hash)
                }
            };
            let event = match decode_fast(&record) {
                Some(event) => event,
                None => decode_wallet_event(&record)?,
            };
            // Counted before the event is moved into the state: on an error below the fold
            // stops, and a dropped pass drops its sums, so this counts exactly what is applied.
            totals.add(&event);
            apply_wallet_event_owned(&mut states.hot(slot)?.state, event).map_err(|e| {
                ProjectionError::Event {
                    position: record.position.0,
                    reason: e.to_string(),
                }
            })?;
            states.touched(slot);
            if !states.fits()? {
                stats.events_read += read;
                return Ok(None);
            }
            *applied += 1;
        }
        done(chunk);
        (options.progress)(read);
    }
    stats.events_read += read;
    Ok(Some(states))
}

/// Payloads up to this size take [`decode_fast`]. Below it, the 1 MiB allocation limit of
/// [`Codec::decode`] cannot be reached (a payload claims at most 16 bytes per encoded byte), so
/// both decoders accept exactly the same payloads.
const FAST_PAYLOAD_MAX: usize = 32 << 10;

// Borrowed mirrors of the payload structs of `ledger::domain::events` with string fields (same
// fields, same order, same serde shapes: a `&str` reads exactly what a `String` reads, and
// checks UTF-8 the same way), so decoding them allocates only the ids the state keeps.

#[derive(Deserialize)]
struct PaidRef<'a> {
    payment: &'a str,
    amount: Yen,
    /// Not part of any fold result (read, and checked to be UTF-8, then dropped).
    #[allow(dead_code)]
    merchant: &'a str,
    currency: &'a str,
    merchant_category: Option<MerchantCategory>,
}

#[derive(Deserialize)]
struct PaymentAmountRef<'a> {
    payment: &'a str,
    amount: Yen,
}

#[derive(Deserialize)]
struct MemberAmountRef<'a> {
    member: &'a str,
    amount: Yen,
}

#[derive(Deserialize)]
struct CouponIssuedRef<'a> {
    coupon: &'a str,
    value: Yen,
    expires_at: ledger::Timestamp,
}

#[derive(Deserialize)]
struct CouponRef<'a> {
    coupon: &'a str,
}

/// A whole bincode payload (trailing bytes refused, as [`Codec::decode`] does).
fn borrowed<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Option<T> {
    let (value, used) =
        bincode::serde::borrow_decode_from_slice::<T, _>(payload, bincode::config::standard())
            .ok()?;
    (used == payload.len()).then_some(value)
}

/// The fold's decoder for the wallet events that carry strings: the same event as
/// [`decode_wallet_event`] without its per-string allocations (`wallet.paid`'s merchant, which
/// no fold reads, is left empty). `None`: not one of these, or anything unusual (another codec,
/// an invalid id, a non-JPY currency, bytes that do not decode): then the caller takes
/// [`decode_wallet_event`], which gives the event or the exact error.
fn decode_fast(record: &RecordView<'_>) -> Option<WalletEvent> {
    let payload = record.payload;
    if record.codec != Codec::Bincode2 || payload.len() > FAST_PAYLOAD_MAX {
        return None;
    }
    let event = match (record.event_type, record.schema_version) {
        ("wallet.paid", 2) => {
            let e: PaidRef<'_> = borrowed(payload)?;
            if e.currency != Currency::JPY.as_str() {
                return None;
            }
            WalletEvent::Paid(Paid {
                payment: CommandId::new(e.payment).ok()?,
                amount: e.amount,
                merchant: String::new(),
                currency: Currency::JPY,
                merchant_category: e.merchant_category,
            })
        }
        ("wallet.refunded", 1) => {
            let e: PaymentAmountRef<'_> = borrowed(payload)?;
            WalletEvent::Refunded(Refunded {
                payment: CommandId::new(e.payment).ok()?,
                amount: e.amount,
            })
        }
        ("wallet.transferred_out", 1) => {
            let e: MemberAmountRef<'_> = borrowed(payload)?;
            WalletEvent::TransferredOut(TransferredOut {
                to: MemberId::new(e.member).ok()?,
                amount: e.amount,
            })
        }
        ("wallet.transferred_in", 1) => {
            let e: MemberAmountRef<'_> = borrowed(payload)?;
            WalletEvent::TransferredIn(TransferredIn {
                from: MemberId::new(e.member).ok()?,
                amount: e.amount,
            })
        }
        ("wallet.coupon_issued", 1) => {
            let e: CouponIssuedRef<'_> = borrowed(payload)?;
            WalletEvent::CouponIssued(CouponIssued {
                coupon: CouponId::new(e.coupon).ok()?,
                value: e.value,
                expires_at: e.expires_at,
            })
        }
        ("wallet.coupon_redeemed", 1) => {
            let e: CouponRef<'_> = borrowed(payload)?;
            WalletEvent::CouponRedeemed(CouponRedeemed {
                coupon: CouponId::new(e.coupon).ok()?,
            })
        }
        ("wallet.coupon_expired", 1) => {
            let e: CouponRef<'_> = borrowed(payload)?;
            WalletEvent::CouponExpired(CouponExpired {
                coupon: CouponId::new(e.coupon).ok()?,
            })
        }
        // No strings: the payload structs themselves, without the type-name dispatch of
        // `DomainEvent::decode`.
        ("wallet.topped_up", 1) => WalletEvent::ToppedUp(borrowed(payload)?),
        ("wallet.miles_earned", 1) => WalletEvent::MilesEarned(borrowed(payload)?),
        ("wallet.miles_redeemed", 1) => WalletEvent::MilesRedeemed(borrowed(payload)?),
        ("wallet.miles_expired", 1) => WalletEvent::MilesExpired(borrowed(payload)?),
        _ => return None,
    };
    #[cfg(debug_assertions)]
    {
        // Tests run debug builds: every fast decode is checked against the reference decoder.
        let mut reference = decode_wallet_event(record).ok();
        if let Some(WalletEvent::Paid(p)) = &mut reference {
            p.merchant.clear();
        }
        debug_assert_eq!(reference.as_ref(), Some(&event), "decode_fast diverged");
    }
    Some(event)
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

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::domain::Command;
    use ledger::{Backend, Create};
    use std::sync::Arc;

    /// A store with `members` wallets whose commands are interleaved in the log (submitted
    /// concurrently), so a tiny hot cap evicts states and decodes them again.
    fn store(dir: &std::path::Path, members: usize) -> Arc<dyn Engine> {
        let engine = ledger::store::open_engine(dir, Create::IfMissing, Backend::Redb).unwrap();
        let service =
            Arc::new(crate::WalletService::with_engine(Arc::clone(&engine), Vec::new()).unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for m in 0..members {
                let service = Arc::clone(&service);
                tasks.push(tokio::spawn(async move {
                    let lines = [
                        format!(r#"{{"id":"o{m}","type":"open_wallet","member":"m{m}","at":"2019-07-01T10:00:00+09:00"}}"#),
                        format!(r#"{{"id":"t{m}","type":"top_up","member":"m{m}","amount":{},"at":"2019-07-01T10:01:00+09:00"}}"#, 1000 + m),
                        format!(r#"{{"id":"p{m}","type":"pay","member":"m{m}","amount":7,"merchant":"Loft","at":"2019-07-01T10:02:00+09:00"}}"#),
                        format!(r#"{{"id":"e{m}","type":"earn_miles","member":"m{m}","miles":5,"expires_at":"2019-08-01T00:00:00+09:00","at":"2019-07-01T10:03:00+09:00"}}"#),
                        format!(r#"{{"id":"c{m}","type":"issue_coupon","member":"m{m}","coupon":"cp-{m}","value":100,"expires_at":"2019-07-10T00:00:00+09:00","at":"2019-07-01T10:04:00+09:00"}}"#),
                    ];
                    for line in &lines {
                        let cmd = Command::parse_json_line(line).unwrap();
                        service.submit(&cmd).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        drop(service);
        engine
    }

    fn fold_with(
        snap: &dyn Snapshot,
        tune: impl FnOnce(&mut FoldOptions<'_>),
    ) -> (Vec<(MemberId, Option<WalletState>)>, FoldStats) {
        let mut all = Vec::new();
        let mut progress = |_| {};
        let mut options = FoldOptions::new(AsOf::Head, &mut progress);
        tune(&mut options);
        let stats = fold_log(snap, options, &mut |states| {
            all.extend(states);
            Ok(())
        })
        .unwrap();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        (all, stats)
    }

    /// A record view of one payload (the envelope fields other than these do not matter).
    fn view<'a>(
        event_type: &'a str,
        version: u16,
        codec: Codec,
        payload: &'a [u8],
    ) -> RecordView<'a> {
        RecordView {
            codec,
            position: ledger::Position(1),
            stream: "wallet-m1",
            version: ledger::StreamVersion(1),
            event_id: Default::default(),
            command_id: "c1",
            event_type,
            schema_version: version,
            at: ledger::Timestamp(0),
            recorded_at: ledger::Timestamp(0),
            payload,
            prev_hash: ledger::Hash::default(),
            hash: ledger::Hash::default(),
        }
    }

    /// `decode_fast` gives the reference decoder's event (the merchant aside) or defers to it.
    fn check_fast(event_type: &str, version: u16, codec: Codec, payload: &[u8]) -> bool {
        let record = view(event_type, version, codec, payload);
        let Some(fast) = decode_fast(&record) else {
            return false;
        };
        let mut reference = decode_wallet_event(&record).expect("fast decode of a bad payload");
        if let WalletEvent::Paid(p) = &mut reference {
            p.merchant.clear();
        }
        assert_eq!(fast, reference, "{event_type} v{version}");
        true
    }

    // Proves the fold's fast payload decoder accepts exactly what `decode_wallet_event` accepts
    // and gives the same event: for each wallet event type, the payload, every truncation and
    // every single-byte change of it; and that other codecs, versions and currencies defer.
    #[test]
    fn fast_decode_matches_the_reference_decoder() {
        use ledger::domain::*;
        let t = ledger::Timestamp(1_562_000_000_000);
        let paid = |currency: &str| {
            WalletEvent::Paid(Paid {
                payment: CommandId::new("pay-1").unwrap(),
                amount: Yen(700),
                merchant: "Loft \u{5c71}".into(),
                currency: Currency::try_from(currency.to_string()).unwrap(),
                merchant_category: MerchantCategory::try_from(5411).ok(),
            })
        };
        let events = [
            WalletEvent::WalletOpened(WalletOpened {
                member: MemberId::new("m1").unwrap(),
            }),
            WalletEvent::ToppedUp(ToppedUp { amount: Yen(1000) }),
            paid("JPY"),
            WalletEvent::Refunded(Refunded {
                payment: CommandId::new("pay-1").unwrap(),
                amount: Yen(300),
            }),
            WalletEvent::TransferredOut(TransferredOut {
                to: MemberId::new("m2").unwrap(),
                amount: Yen(5),
            }),
            WalletEvent::TransferredIn(TransferredIn {
                from: MemberId::new("m2").unwrap(),
                amount: Yen(5),
            }),
            WalletEvent::MilesEarned(MilesEarned {
                lot: LotId(1),
                miles: Miles(300),
                expires_at: t,
            }),
            WalletEvent::MilesRedeemed(MilesRedeemed {
                miles: Miles(30),
                consumed: vec![(LotId(1), Miles(10)), (LotId(2), Miles(20))],
            }),
            WalletEvent::MilesExpired(MilesExpired {
                lot: LotId(1),
                miles: Miles(3),
            }),
            WalletEvent::BadgeAwarded(BadgeAwarded {
                badge: Badge::new("gold").unwrap(),
            }),
            WalletEvent::CouponIssued(CouponIssued {
                coupon: CouponId::new("cp-1").unwrap(),
                value: Yen(100),
                expires_at: t,
            }),
            WalletEvent::CouponRedeemed(CouponRedeemed {
                coupon: CouponId::new("cp-1").unwrap(),
            }),
            WalletEvent::CouponExpired(CouponExpired {
                coupon: CouponId::new("cp-1").unwrap(),
            }),
        ];
        let mut fast = 0;
        for event in &events {
            let (name, version) = (event.event_type(), event.schema_version());
            let payload = event.encode(Codec::Bincode2).unwrap();
            if check_fast(name, version, Codec::Bincode2, &payload) {
                fast += 1;
            }
            for n in 0..payload.len() {
                check_fast(name, version, Codec::Bincode2, &payload[..n]);
            }
            let mut longer = payload.clone();
            longer.push(0);
            assert!(!check_fast(name, version, Codec::Bincode2, &longer));
            for i in 0..payload.len() {
                for b in [0u8, 1, 0x1f, 0x41, 0x7f, 0x80, 0xfb, 0xfc, 0xff] {
                    let mut changed = payload.clone();
                    changed[i] = b;
                    check_fast(name, version, Codec::Bincode2, &changed);
                }
            }
            let postcard = event.encode(Codec::Postcard).unwrap();
            assert!(decode_fast(&view(name, version, Codec::Postcard, &postcard)).is_none());
            assert!(decode_fast(&view(name, version + 1, Codec::Bincode2, &payload)).is_none());
        }
        // Every type with a fast path took it (all but opened and badge).
        assert_eq!(fast, events.len() - 2);
        let usd = paid("USD").encode(Codec::Bincode2).unwrap();
        assert!(!check_fast("wallet.paid", 2, Codec::Bincode2, &usd));
    }

    // Proves `apply_wallet_event_owned` (the fold's) gives the same states and the same errors
    // as `apply_wallet_event`, including each error of the events whose ids it moves.
    #[test]
    fn owned_apply_matches_borrowed_apply() {
        use ledger::domain::*;
        let t = ledger::Timestamp(1_562_000_000_000);
        let pay = |id: &str, amount: u64, currency: &str| {
            WalletEvent::Paid(Paid {
                payment: CommandId::new(id).unwrap(),
                amount: Yen(amount),
                merchant: "Loft".into(),
                currency: Currency::try_from(currency.to_string()).unwrap(),
                merchant_category: None,
            })
        };
        let coupon = |id: &str| {
            WalletEvent::CouponIssued(CouponIssued {
                coupon: CouponId::new(id).unwrap(),
                value: Yen(100),
                expires_at: t,
            })
        };
        let badge = |b: &str| {
            WalletEvent::BadgeAwarded(BadgeAwarded {
                badge: Badge::new(b).unwrap(),
            })
        };
        let events = [
            pay("p0", 1, "JPY"),
            WalletEvent::WalletOpened(WalletOpened {
                member: MemberId::new("m1").unwrap(),
            }),
            WalletEvent::ToppedUp(ToppedUp { amount: Yen(1000) }),
            pay("p1", 700, "JPY"),
            pay("p1", 1, "JPY"),
            pay("p2", 301, "JPY"),
            pay("p3", 5, "USD"),
            pay("p2", 300, "JPY"),
            coupon("c1"),
            coupon("c1"),
            badge("gold"),
            badge("gold"),
            WalletEvent::WalletOpened(WalletOpened {
                member: MemberId::new("m1").unwrap(),
            }),
        ];
        let (mut borrowed, mut owned) = (None, None);
        for event in events {
            let a = apply_wallet_event(&mut borrowed, &event);
            let b = apply_wallet_event_owned(&mut owned, event);
            assert_eq!(a, b);
            assert_eq!(borrowed, owned);
        }
        let state = owned.expect("opened");
        assert_eq!(state.balance(), Yen(0));
        assert_eq!(state.payments().len(), 2);
    }

    // Proves the fold gives the same states and sums however little memory a pass may use:
    // hot states encoded and decoded again (a hot cap of a few states), the arena compacted,
    // partitions split by the byte budget and by the member cap; each member exactly once.
    #[test]
    fn tiny_budgets_give_the_same_fold() {
        let tmp = tempfile::tempdir().unwrap();
        let engine = store(tmp.path(), 150);
        let snap = engine.snapshot().unwrap();
        let (expected, base) = fold_with(&*snap, |_| {});
        assert_eq!(base.passes, 1);
        assert_eq!(expected.len(), 150);
        assert!(expected.windows(2).all(|w| w[0].0 < w[1].0));
        // (hot bytes, pass bytes, members per pass, at least this many passes)
        for (hot, pass, cap, min_passes) in [
            (4_096, DEFAULT_PASS_BYTES, DEFAULT_MEMBERS_PER_PASS, 1),
            (2_048, 8_192, DEFAULT_MEMBERS_PER_PASS, 3),
            (DEFAULT_HOT_BYTES, DEFAULT_PASS_BYTES, 7, 8),
        ] {
            let (got, stats) = fold_with(&*snap, |o| {
                o.hot_bytes = hot;
                o.pass_bytes = pass;
                o.members_per_pass = cap;
            });
            assert!(stats.passes >= min_passes, "{} passes", stats.passes);
            assert_eq!(got, expected);
            assert_eq!(stats.members, base.members);
            assert_eq!(stats.wallet_events, base.wallet_events);
            assert_eq!(stats.totals, base.totals);
        }
    }
}
