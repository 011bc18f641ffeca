//! The states of one pass of [`fold_log`](super::fold_log): every member of the pass's
//! partition, found by its stream's member id, hot (decoded) while recently touched and cold
//! (encoded in one arena) otherwise.
//!
//! Why it exists: a map of decoded states costs ~300-800 bytes per member, so 16.5M members took
//! 9 passes over the log; here a cold member costs ~90 bytes at the 7Pay shape and 16.5M fit one.
//!
//! Invariants kept:
//! - Each member of the pass has exactly one slot; a hot slot is in the FIFO exactly once.
//! - `hot_bytes` is the sum of the hot slots' estimates; [`PassStates::fits`] brings it back
//!   under the hot cap and answers whether the estimated total is within the pass budget (and
//!   the members within the cap); the driver drops a pass that does not fit.
//! - Encoding is storage only: every event is folded into a decoded state, never into bytes, and
//!   a state decodes back to exactly what was encoded (the views' own codec).
//! - [`PassStates::emit`] hands out every state once, in member id order.

use std::collections::VecDeque;

use hashbrown::HashTable;

use ledger::domain::{MemberId, WalletState};
use ledger::Codec;

use super::{FoldOptions, States};
use crate::ProjectionError;

/// Members per sink call when a pass hands out its states.
const OUTPUT_CHUNK: usize = 16_384;

/// Estimated bytes per member outside its state: its slot (16), its index entry (4 bytes and a
/// control byte at up to 87.5% load, doubled while the table grows) and its FIFO entry.
const ENTRY_BYTES: usize = 32;

/// A decoded state, with the member of its stream (which keys it: a state's own `member`
/// comes from its payload and is not trusted as a key).
pub(super) struct HotState {
    member: MemberId,
    /// The member's state so far (`None`: no `wallet.opened` yet).
    pub(super) state: Option<WalletState>,
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
pub(super) struct PassStates {
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
pub(super) fn member_key_hash(member: &str) -> u64 {
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
    pub(super) fn new(options: &FoldOptions<'_>) -> PassStates {
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

    pub(super) fn find(&self, member: &str, hash: u64) -> Option<u32> {
        let (slots, arena) = (&self.slots, &self.arena);
        self.index
            .find(hash, |&i| name_bytes(slots, arena, i) == member.as_bytes())
            .copied()
    }

    /// A new member (not in the index), hot.
    pub(super) fn insert(&mut self, member: MemberId, hash: u64) -> u32 {
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
    pub(super) fn hot(&mut self, i: u32) -> Result<&mut HotState, ProjectionError> {
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
    pub(super) fn touched(&mut self, i: u32) {
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
    pub(super) fn fits(&mut self) -> Result<bool, ProjectionError> {
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
    pub(super) fn emit(
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
