//! Materialized views: where each member's wallet lives, row by row, and the checkpoint. The only
//! code that builds view keys and rows.
//!
//! Why rows: a wallet with twenty years of payments must cost a command the same as a new one.
//! So a wallet is a fixed-size summary plus one row per entity, keyed by member and entity; a
//! command reads and writes the rows it touches (O(rows touched x log n)), never the history.
//!
//! # Tables (layout 2; all written by the commit hook in the transaction of their events)
//! - `wallet_rows`: `member 0x00 kind id` -> fixed-width little-endian value:
//!   - kind `0x01`, no id: the summary, 64 bytes: balance, miles outstanding, lots, payments,
//!     badges, coupons active, redeemed, expired (each u64);
//!   - `b` badge: empty value;
//!   - `c` coupon id: value u64, expires_at i64 (µs since the epoch), status u8 (0 active,
//!     1 redeemed, 2 expired) = 17 bytes;
//!   - `l` lot id (u32 BE): earned u64, remaining u64, expires_at i64 = 24 bytes;
//!   - `p` payment id (the `pay` command's id): paid u64, refunded u64 = 16 bytes;
//!   - `h` hold id (the held command's id), pending holds only (SPEC section 7): amount u64,
//!     until i64, kind u8 (0 pay, 1 transfer), target (merchant or receiving member: u16 LE
//!     length + UTF-8), device flag u8 (0 none, 1 some) and, if some, u16 LE length + UTF-8.
//!
//!   The summary has a ninth u64, held, only when held > 0 (72 bytes): a wallet without holds
//!   keeps its 64-byte summary, so its member hash and every digest written before holds
//!   existed stay the same.
//!
//!   Member ids are `[A-Za-z0-9._-]`, so `0x00` ends one and a member's rows are one key range,
//!   in member id order across members.
//! - `wallet_lot_order`: `member 0x00 expires_at(8, ordered) lot(4 BE)` -> empty, for every lot
//!   with miles left: `redeem_miles` and `expire` walk lots earliest expiry first.
//! - `wallet_coupon_order`: `member 0x00 expires_at(8, ordered) coupon` -> empty, for every
//!   active coupon.
//! - `wallet_hold_order`: `member 0x00 until(8, ordered) hold` -> empty, for every pending hold.
//! - `wallet_due`: `expires_at(8, ordered) member 0x00 kind(l|c|h) id` -> empty: the union of
//!   the three above across members (for a hold, its `until`), so the nightly `expire` finds
//!   what is due without reading wallets.
//! - Security rows (SPEC section 7; not wallet rows, not in the digest):
//!   `view_security`: member -> credential_at i64, credential position u64, sent_since u64
//!   (24 bytes); `view_devices`: `member 0x00 device` -> position u64 of the first login from
//!   it; `view_policy`: `policy` -> cooldown_hours u64, cooldown_cap u64;
//!   `view_compensations`: `incident 0x00 original(u64 BE)` -> member id.
//! - `view_member_hash`: bucket (u16 BE) + member id -> the member hash (32 bytes, see
//!   [`crate::digest`]): the sum of its row hashes ([`row_hash`]).
//! - `view_digest_bucket`: bucket (u16 BE) -> 256-bit sum of the bucket's member hashes.
//! - `view_checkpoint`: `position` -> u64 LE, the last log position folded into the views;
//!   `layout` -> u32 LE, [`LAYOUT`].
//!
//! "Ordered" time: the i64 with its sign bit flipped, big-endian, so byte order is time order.
//!
//! Invariants: the checkpoint equals the log head after every commit; each index holds exactly
//! the entries its rows call for; each member hash is the sum of its row hashes. `check` proves
//! all three. Layout 1 (one bincode `WalletState` per member in `view_wallet`) is read only by
//! the `rows` migration that moves a store to this layout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use ledger::domain::{
    member_of_stream, Badge, CommandId, Coupon, CouponId, CouponStatus, HeldKind, Hold, LotId,
    MemberId, Miles, MilesLot, Payment, PolicySet, ReadFailure, RowChange, SecurityRow,
    StateReader, StreamKind, Visit, WalletState, WalletSummary, Yen,
};
use ledger::engine::EngineError;
use ledger::{Codec, Position, Snapshot, Timestamp, WriteBatch};

use crate::digest::BucketSum;
use crate::ProjectionError;

/// Table names owned by the projections.
pub mod tables {
    /// member ++ kind ++ id -> row.
    pub const ROWS: &str = "wallet_rows";
    /// member ++ expiry ++ lot, lots with miles left.
    pub const LOT_ORDER: &str = "wallet_lot_order";
    /// member ++ expiry ++ coupon, active coupons.
    pub const COUPON_ORDER: &str = "wallet_coupon_order";
    /// expiry ++ member ++ kind ++ id, everything that can expire.
    pub const DUE: &str = "wallet_due";
    /// member ++ until ++ hold, pending holds.
    pub const HOLD_ORDER: &str = "wallet_hold_order";
    /// member -> last credential event and yen sent since.
    pub const SECURITY: &str = "view_security";
    /// member ++ device -> first login position.
    pub const DEVICES: &str = "view_devices";
    /// `policy` -> the policy in force.
    pub const POLICY: &str = "view_policy";
    /// incident ++ original -> member.
    pub const COMPENSATIONS: &str = "view_compensations";
    /// bucket ++ member -> member state hash.
    pub const MEMBER_HASHES: &str = "view_member_hash";
    /// bucket -> sum of member hashes.
    pub const DIGEST_BUCKETS: &str = "view_digest_bucket";
    /// `position` -> last folded position; `layout` -> layout version.
    pub const CHECKPOINT: &str = "view_checkpoint";
    /// Layout 1: member -> bincode `WalletState`. Only the `rows` migration reads it.
    pub const WALLETS_V1: &str = "view_wallet";
    /// Every table of this layout, for rebuild.
    pub const ALL: [&str; 12] = [
        ROWS,
        LOT_ORDER,
        COUPON_ORDER,
        DUE,
        HOLD_ORDER,
        SECURITY,
        DEVICES,
        POLICY,
        COMPENSATIONS,
        MEMBER_HASHES,
        DIGEST_BUCKETS,
        CHECKPOINT,
    ];
}

/// This build's view layout (see the module doc).
pub const LAYOUT: u32 = 2;
/// Key of the checkpoint.
pub const CHECKPOINT_KEY: &[u8] = b"position";
/// Key of the layout version.
pub const LAYOUT_KEY: &[u8] = b"layout";
/// First byte of a layout-1 view value: bincode 2 of `WalletState`.
pub const VIEW_TAG_V1: u8 = 1;

/// Row kinds, the byte after the member's `0x00`.
mod kind {
    pub const SUMMARY: u8 = 0x01;
    pub const BADGE: u8 = b'b';
    pub const COUPON: u8 = b'c';
    pub const LOT: u8 = b'l';
    pub const PAYMENT: u8 = b'p';
    pub const HOLD: u8 = b'h';
}

const SUMMARY_BYTES: usize = 64;
/// A summary with held > 0.
const SUMMARY_HELD_BYTES: usize = 72;
/// Key of the policy row.
const POLICY_KEY: &[u8] = b"policy";
const COUPON_BYTES: usize = 17;
const LOT_BYTES: usize = 24;
const PAYMENT_BYTES: usize = 16;

// ---------------------------------------------------------------------------------------------
// Keys

/// `member 0x00`: the prefix of every row (and order entry) of a member.
pub fn member_prefix(member: &MemberId) -> Vec<u8> {
    let mut key = Vec::with_capacity(member.as_str().len() + 1 + 1 + 16);
    key.extend_from_slice(member.as_str().as_bytes());
    key.push(0);
    key
}

fn row_key(member: &MemberId, kind: u8, id: &[u8]) -> Vec<u8> {
    let mut key = member_prefix(member);
    key.push(kind);
    key.extend_from_slice(id);
    key
}

/// The key of a member's summary row.
pub fn summary_key(member: &MemberId) -> Vec<u8> {
    row_key(member, kind::SUMMARY, &[])
}

fn lot_key(member: &MemberId, lot: LotId) -> Vec<u8> {
    row_key(member, kind::LOT, &lot.0.to_be_bytes())
}

fn payment_key(member: &MemberId, id: &CommandId) -> Vec<u8> {
    row_key(member, kind::PAYMENT, id.as_str().as_bytes())
}

fn coupon_key(member: &MemberId, id: &CouponId) -> Vec<u8> {
    row_key(member, kind::COUPON, id.as_str().as_bytes())
}

fn badge_key(member: &MemberId, badge: &Badge) -> Vec<u8> {
    row_key(member, kind::BADGE, badge.as_str().as_bytes())
}

fn hold_key(member: &MemberId, id: &CommandId) -> Vec<u8> {
    row_key(member, kind::HOLD, id.as_str().as_bytes())
}

fn hold_order_key(member: &MemberId, id: &CommandId, hold: &Hold) -> Vec<u8> {
    let mut key = member_prefix(member);
    key.extend_from_slice(&ordered_time(hold.until));
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

fn device_key(member: &MemberId, device: &str) -> Vec<u8> {
    let mut key = member_prefix(member);
    key.extend_from_slice(device.as_bytes());
    key
}

/// Incident ids have no control characters, so `0x00` ends one.
fn compensation_key(incident: &str, original: Position) -> Vec<u8> {
    let mut key = Vec::with_capacity(incident.len() + 9);
    key.extend_from_slice(incident.as_bytes());
    key.push(0);
    key.extend_from_slice(&original.0.to_be_bytes());
    key
}

/// A time as 8 bytes whose byte order is time order.
pub fn ordered_time(t: Timestamp) -> [u8; 8] {
    ((t.0 as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_of_ordered(bytes: [u8; 8]) -> Timestamp {
    Timestamp((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

fn lot_order_key(member: &MemberId, lot: &MilesLot) -> Vec<u8> {
    let mut key = member_prefix(member);
    key.extend_from_slice(&ordered_time(lot.expires_at));
    key.extend_from_slice(&lot.lot.0.to_be_bytes());
    key
}

fn coupon_order_key(member: &MemberId, id: &CouponId, coupon: &Coupon) -> Vec<u8> {
    let mut key = member_prefix(member);
    key.extend_from_slice(&ordered_time(coupon.expires_at));
    key.extend_from_slice(id.as_str().as_bytes());
    key
}

fn due_key(expires_at: Timestamp, member: &MemberId, kind: u8, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + member.as_str().len() + 2 + id.len());
    key.extend_from_slice(&ordered_time(expires_at));
    key.extend_from_slice(member.as_str().as_bytes());
    key.push(0);
    key.push(kind);
    key.extend_from_slice(id);
    key
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    end
}

// ---------------------------------------------------------------------------------------------
// Row values

fn u64_at(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8-byte slice"))
}

fn encode_summary(s: &WalletSummary) -> Vec<u8> {
    let fields = [
        s.balance.0,
        s.miles_outstanding.0,
        u64::from(s.lots),
        s.payments,
        s.badges,
        s.coupons_active,
        s.coupons_redeemed,
        s.coupons_expired,
    ];
    let mut out: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
    // Only when something is held: a wallet without holds hashes as before holds existed.
    if s.held.0 > 0 {
        out.extend_from_slice(&s.held.0.to_le_bytes());
    }
    out
}

fn decode_summary(bytes: &[u8]) -> Result<WalletSummary, String> {
    let held = match bytes.len() {
        SUMMARY_BYTES => Yen(0),
        SUMMARY_HELD_BYTES => match u64_at(bytes, 8) {
            0 => return Err("summary of 72 bytes holds held 0 (written as 64 bytes)".into()),
            held => Yen(held),
        },
        other => {
            return Err(format!(
                "summary has {other} bytes, expected {SUMMARY_BYTES} or {SUMMARY_HELD_BYTES}"
            ))
        }
    };
    let lots = u32::try_from(u64_at(bytes, 2)).map_err(|_| "lot count past u32".to_owned())?;
    Ok(WalletSummary {
        balance: Yen(u64_at(bytes, 0)),
        miles_outstanding: Miles(u64_at(bytes, 1)),
        lots,
        payments: u64_at(bytes, 3),
        badges: u64_at(bytes, 4),
        coupons_active: u64_at(bytes, 5),
        coupons_redeemed: u64_at(bytes, 6),
        coupons_expired: u64_at(bytes, 7),
        held,
    })
}

fn push_text(out: &mut Vec<u8>, text: &str) {
    // Merchants, member ids and devices are at most 128 characters: far below u16::MAX bytes.
    let len = u16::try_from(text.len()).expect("row texts are at most 512 bytes");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn encode_hold(h: &Hold) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&h.amount.0.to_le_bytes());
    out.extend_from_slice(&h.until.0.to_le_bytes());
    match &h.kind {
        HeldKind::Pay { merchant } => {
            out.push(0);
            push_text(&mut out, merchant);
        }
        HeldKind::Transfer { to } => {
            out.push(1);
            push_text(&mut out, to.as_str());
        }
    }
    match &h.device {
        None => out.push(0),
        Some(device) => {
            out.push(1);
            push_text(&mut out, device);
        }
    }
    out
}

/// Reads a u16-LE-length-prefixed UTF-8 text at `*at`, moving `*at` past it.
fn take_text<'b>(bytes: &'b [u8], at: &mut usize) -> Result<&'b str, String> {
    let len = bytes
        .get(*at..*at + 2)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
        .ok_or("hold row ends inside a text length")?;
    let text = bytes
        .get(*at + 2..*at + 2 + len)
        .ok_or("hold row ends inside a text")?;
    *at += 2 + len;
    std::str::from_utf8(text).map_err(|_| "hold row text is not UTF-8".to_owned())
}

fn decode_hold(bytes: &[u8]) -> Result<Hold, String> {
    if bytes.len() < 17 {
        return Err(format!("hold row has {} bytes", bytes.len()));
    }
    let mut at = 17;
    let kind = match bytes[16] {
        0 => HeldKind::Pay {
            merchant: take_text(bytes, &mut at)?.to_owned(),
        },
        1 => HeldKind::Transfer {
            to: MemberId::new(take_text(bytes, &mut at)?.to_owned())
                .map_err(|e| format!("hold row member {e}"))?,
        },
        other => return Err(format!("hold kind byte {other}")),
    };
    let device = match bytes.get(at) {
        Some(0) => {
            at += 1;
            None
        }
        Some(1) => {
            at += 1;
            Some(take_text(bytes, &mut at)?.to_owned())
        }
        _ => return Err("hold row has no device flag".into()),
    };
    if at != bytes.len() {
        return Err(format!(
            "hold row has {} bytes after its fields",
            bytes.len() - at
        ));
    }
    Ok(Hold {
        kind,
        amount: Yen(u64_at(bytes, 0)),
        until: Timestamp(u64_at(bytes, 1) as i64),
        device,
    })
}

fn encode_security(row: &SecurityRow) -> Vec<u8> {
    [
        row.credential_at.0 as u64,
        row.credential_position.0,
        row.sent_since.0,
    ]
    .iter()
    .flat_map(|f| f.to_le_bytes())
    .collect()
}

fn decode_security(bytes: &[u8]) -> Result<SecurityRow, String> {
    if bytes.len() != 24 {
        return Err(format!(
            "security row has {} bytes, expected 24",
            bytes.len()
        ));
    }
    Ok(SecurityRow {
        credential_at: Timestamp(u64_at(bytes, 0) as i64),
        credential_position: Position(u64_at(bytes, 1)),
        sent_since: Yen(u64_at(bytes, 2)),
    })
}

fn encode_policy(policy: &PolicySet) -> Vec<u8> {
    [policy.cooldown_hours, policy.cooldown_cap.0]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect()
}

fn decode_policy(bytes: &[u8]) -> Result<PolicySet, String> {
    if bytes.len() != 16 {
        return Err(format!("policy row has {} bytes, expected 16", bytes.len()));
    }
    Ok(PolicySet {
        cooldown_hours: u64_at(bytes, 0),
        cooldown_cap: Yen(u64_at(bytes, 1)),
    })
}

fn encode_payment(p: &Payment) -> Vec<u8> {
    [p.paid.0, p.refunded.0]
        .iter()
        .flat_map(|f| f.to_le_bytes())
        .collect()
}

fn decode_payment(bytes: &[u8]) -> Result<Payment, String> {
    if bytes.len() != PAYMENT_BYTES {
        return Err(format!("payment row has {} bytes", bytes.len()));
    }
    Ok(Payment {
        paid: Yen(u64_at(bytes, 0)),
        refunded: Yen(u64_at(bytes, 1)),
    })
}

fn encode_lot(lot: &MilesLot) -> Vec<u8> {
    let mut out = Vec::with_capacity(LOT_BYTES);
    out.extend_from_slice(&lot.earned.0.to_le_bytes());
    out.extend_from_slice(&lot.remaining.0.to_le_bytes());
    out.extend_from_slice(&lot.expires_at.0.to_le_bytes());
    out
}

fn decode_lot(lot: LotId, bytes: &[u8]) -> Result<MilesLot, String> {
    if bytes.len() != LOT_BYTES {
        return Err(format!("lot {lot} row has {} bytes", bytes.len()));
    }
    Ok(MilesLot {
        lot,
        earned: Miles(u64_at(bytes, 0)),
        remaining: Miles(u64_at(bytes, 1)),
        expires_at: Timestamp(u64_at(bytes, 2) as i64),
    })
}

fn encode_coupon(c: &Coupon) -> Vec<u8> {
    let mut out = Vec::with_capacity(COUPON_BYTES);
    out.extend_from_slice(&c.value.0.to_le_bytes());
    out.extend_from_slice(&c.expires_at.0.to_le_bytes());
    out.push(match c.status {
        CouponStatus::Active => 0,
        CouponStatus::Redeemed => 1,
        CouponStatus::Expired => 2,
    });
    out
}

fn decode_coupon(bytes: &[u8]) -> Result<Coupon, String> {
    if bytes.len() != COUPON_BYTES {
        return Err(format!("coupon row has {} bytes", bytes.len()));
    }
    let status = match bytes[16] {
        0 => CouponStatus::Active,
        1 => CouponStatus::Redeemed,
        2 => CouponStatus::Expired,
        other => return Err(format!("coupon status byte {other}")),
    };
    Ok(Coupon {
        value: Yen(u64_at(bytes, 0)),
        expires_at: Timestamp(u64_at(bytes, 1) as i64),
        status,
    })
}

/// The hash of one row: BLAKE3(`"wallet-row-v2\0"` || key length (u32 LE) || key || value).
/// A member hash is the sum (mod 2^256) of its rows' hashes, so one changed row updates it in
/// O(1): subtract the old row's hash, add the new one's.
pub fn row_hash(key: &[u8], value: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"wallet-row-v2\0");
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(value);
    *h.finalize().as_bytes()
}

/// The `wallet_rows` entries of a whole wallet, in key order. Rebuild writes them; check
/// compares them with the stored ones; the digest hashes them.
pub fn rows_of(state: &WalletState) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    let member = state.member();
    let summary = std::iter::once((summary_key(member), encode_summary(&state.summary())));
    let badges = state
        .badges()
        .iter()
        .map(move |b| (badge_key(member, b), Vec::new()));
    let coupons = state
        .coupons()
        .iter()
        .map(move |(id, c)| (coupon_key(member, id), encode_coupon(c)));
    let lots = state
        .lots()
        .iter()
        .map(move |lot| (lot_key(member, lot.lot), encode_lot(lot)));
    let payments = state
        .payments()
        .iter()
        .map(move |(id, p)| (payment_key(member, id), encode_payment(p)));
    let holds = state
        .holds()
        .iter()
        .map(move |(id, h)| (hold_key(member, id), encode_hold(h)));
    // Key order: kinds 0x01 < 'b' < 'c' < 'h' < 'l' < 'p'.
    summary
        .chain(badges)
        .chain(coupons)
        .chain(holds)
        .chain(lots)
        .chain(payments)
}

/// The index entries (table, key) that a whole wallet calls for.
pub fn index_entries_of(state: &WalletState) -> Vec<(&'static str, Vec<u8>)> {
    let member = state.member();
    let mut out = Vec::new();
    for lot in state.lots().iter().filter(|l| l.remaining.0 > 0) {
        out.push((tables::LOT_ORDER, lot_order_key(member, lot)));
        out.push((
            tables::DUE,
            due_key(lot.expires_at, member, kind::LOT, &lot.lot.0.to_be_bytes()),
        ));
    }
    for (id, coupon) in state
        .coupons()
        .iter()
        .filter(|(_, c)| c.status == CouponStatus::Active)
    {
        out.push((tables::COUPON_ORDER, coupon_order_key(member, id, coupon)));
        out.push((
            tables::DUE,
            due_key(
                coupon.expires_at,
                member,
                kind::COUPON,
                id.as_str().as_bytes(),
            ),
        ));
    }
    for (id, hold) in state.holds() {
        out.push((tables::HOLD_ORDER, hold_order_key(member, id, hold)));
        out.push((
            tables::DUE,
            due_key(hold.until, member, kind::HOLD, id.as_str().as_bytes()),
        ));
    }
    out
}

/// The member hash of a whole wallet: the sum of its row hashes.
pub fn member_hash(state: &WalletState) -> [u8; 32] {
    let mut sum = BucketSum::default();
    for (key, value) in rows_of(state) {
        sum.add(&row_hash(&key, &value));
    }
    sum.to_bytes()
}

// ---------------------------------------------------------------------------------------------
// Reading rows

/// Ordered key-value reads: a snapshot, or a snapshot with a group commit's pending writes.
pub trait RowRead {
    /// One value.
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;
    /// Visits the entries with `from <= key < to`, in key order, until told to stop.
    fn visit(
        &self,
        table: &'static str,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Visit,
    ) -> Result<(), EngineError>;
}

/// A range visitor that can fail (see [`try_visit`]).
pub type FallibleVisitor<'a, E> = dyn FnMut(&[u8], &[u8]) -> Result<Visit, E> + 'a;

/// [`RowRead::visit`] with a visitor that can fail: its first error stops the visit. The outer
/// error is the store's, the inner one the visitor's.
pub fn try_visit<R: RowRead + ?Sized, E>(
    read: &R,
    table: &'static str,
    from: &[u8],
    to: &[u8],
    visit: &mut FallibleVisitor<'_, E>,
) -> Result<Result<(), E>, EngineError> {
    let mut failed = None;
    read.visit(table, from, to, &mut |key, value| match visit(key, value) {
        Ok(next) => next,
        Err(e) => {
            failed = Some(e);
            Visit::Stop
        }
    })?;
    Ok(failed.map_or(Ok(()), Err))
}

/// Entries read per step of a range visit.
const VISIT_CHUNK: usize = 256;

impl RowRead for dyn Snapshot + '_ {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Snapshot::get(self, table, key)
    }

    fn visit(
        &self,
        table: &'static str,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Visit,
    ) -> Result<(), EngineError> {
        let mut lower = Bound::Included(from.to_vec());
        loop {
            let entries = self.scan(
                table,
                (lower.as_ref().map(Vec::as_slice), Bound::Excluded(to)),
                VISIT_CHUNK,
            )?;
            for (key, value) in &entries {
                if visit(key, value) == Visit::Stop {
                    return Ok(());
                }
            }
            match entries.into_iter().last() {
                Some((key, _)) => lower = Bound::Excluded(key),
                None => return Ok(()),
            }
        }
    }
}

/// A snapshot plus the writes a group commit has made so far: what the writer decides and folds
/// against. Reads see the writes; [`Overlay::into_batch`] hands them to the commit.
pub struct Overlay<'s> {
    snap: &'s dyn Snapshot,
    /// Per table: key -> new value (`None`: deleted).
    writes: HashMap<&'static str, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl<'s> Overlay<'s> {
    /// No writes yet.
    pub fn new(snap: &'s dyn Snapshot) -> Overlay<'s> {
        Overlay {
            snap,
            writes: HashMap::new(),
        }
    }

    /// The snapshot under the writes.
    pub fn snapshot(&self) -> &'s dyn Snapshot {
        self.snap
    }

    /// Sets a value.
    pub fn put(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.writes
            .entry(table)
            .or_default()
            .insert(key, Some(value));
    }

    /// Deletes a value.
    pub fn delete(&mut self, table: &'static str, key: Vec<u8>) {
        self.writes.entry(table).or_default().insert(key, None);
    }

    /// Moves every write into `batch`, each table in key order.
    pub fn into_batch(self, batch: &mut WriteBatch) {
        for (table, writes) in self.writes {
            for (key, value) in writes {
                match value {
                    Some(value) => batch.put(table, key, value),
                    None => batch.delete(table, key),
                }
            }
        }
    }
}

impl RowRead for Overlay<'_> {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        match self.writes.get(table).and_then(|w| w.get(key)) {
            Some(value) => Ok(value.clone()),
            None => Snapshot::get(self.snap, table, key),
        }
    }

    fn visit(
        &self,
        table: &'static str,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Visit,
    ) -> Result<(), EngineError> {
        let Some(writes) = self.writes.get(table) else {
            return self.snap.visit(table, from, to, visit);
        };
        // Merge the snapshot's entries with the writes, a chunk of the snapshot at a time; a
        // write wins over the snapshot's entry with the same key.
        let mut lower = Bound::Included(from.to_vec());
        loop {
            let stored = self.snap.scan(
                table,
                (lower.as_ref().map(Vec::as_slice), Bound::Excluded(to)),
                VISIT_CHUNK,
            )?;
            let exhausted = stored.len() < VISIT_CHUNK;
            let chunk_end = match (exhausted, stored.last()) {
                (false, Some((key, _))) => Bound::Included(key.clone()),
                _ => Bound::Excluded(to.to_vec()),
            };
            let mut written = writes
                .range::<[u8], _>((
                    lower.as_ref().map(Vec::as_slice),
                    chunk_end.as_ref().map(Vec::as_slice),
                ))
                .peekable();
            let mut stored = stored.into_iter().peekable();
            loop {
                let take_written = match (stored.peek(), written.peek()) {
                    (None, None) => break,
                    (Some(_), None) => false,
                    (None, Some(_)) => true,
                    (Some((s, _)), Some((w, _))) => w.as_slice() <= s.as_slice(),
                };
                let step = if take_written {
                    let (key, value) = written.next().expect("peeked");
                    if stored.peek().is_some_and(|(s, _)| s == key) {
                        stored.next();
                    }
                    match value {
                        Some(value) => visit(key, value),
                        None => Visit::Continue,
                    }
                } else {
                    let (key, value) = stored.next().expect("peeked");
                    visit(&key, &value)
                };
                if step == Visit::Stop {
                    return Ok(());
                }
            }
            match chunk_end {
                Bound::Included(key) if !exhausted => lower = Bound::Excluded(key),
                _ => return Ok(()),
            }
        }
    }
}

/// The rows of a store as [`StateReader`]: what `decide` and the row fold read.
pub struct Rows<'r, R: RowRead + ?Sized> {
    read: &'r R,
}

impl<'r, R: RowRead + ?Sized> Rows<'r, R> {
    /// Rows read through `read`.
    pub fn new(read: &'r R) -> Rows<'r, R> {
        Rows { read }
    }
}

fn failure(member: &MemberId, what: &str, reason: impl std::fmt::Display) -> ReadFailure {
    ReadFailure {
        reason: format!("{what} of member {member}: {reason}"),
    }
}

/// A per-member ordered index whose keys are the member prefix, 8 bytes of order, then the
/// text of an id naming a row (`COUPON_ORDER`, `HOLD_ORDER`): what it is called in messages.
struct OrderedIndex {
    /// The index table.
    table: &'static str,
    /// What its entries name: "coupon", "hold".
    what: &'static str,
    /// What every entry must name: "active coupon", "pending hold".
    live: &'static str,
}

impl<R: RowRead + ?Sized> Rows<'_, R> {
    fn row(
        &self,
        member: &MemberId,
        what: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, ReadFailure> {
        self.read
            .get(tables::ROWS, key)
            .map_err(|e| failure(member, what, e))
    }

    /// Visits `member`'s entries of `index` in order with the rows they name. `parse` reads an
    /// entry's id; `live` reads the row it names, `None` when there is none or it is not one the
    /// index may hold (a coupon no longer active). An entry that names no live row is damage:
    /// the visit stops with an error naming the member and the key.
    fn visit_ordered<Id, Row>(
        &self,
        member: &MemberId,
        index: &OrderedIndex,
        parse: impl Fn(&str) -> Option<Id>,
        live: impl Fn(&Id) -> Result<Option<Row>, ReadFailure>,
        visit: &mut dyn FnMut(&Id, &Row) -> Visit,
    ) -> Result<(), ReadFailure> {
        let prefix = member_prefix(member);
        try_visit(
            self.read,
            index.table,
            &prefix,
            &prefix_end(&prefix),
            &mut |key, _| {
                let id = key
                    .get(prefix.len() + 8..)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(&parse);
                let row = match &id {
                    Some(id) => live(id)?,
                    None => None,
                };
                match (id, row) {
                    (Some(id), Some(row)) => Ok(visit(&id, &row)),
                    _ => Err(failure(
                        member,
                        &format!("{} order entry", index.what),
                        format!("{key:02x?} names no {}", index.live),
                    )),
                }
            },
        )
        .map_err(|e| failure(member, &format!("{} order", index.what), e))?
    }
}

impl<R: RowRead + ?Sized> StateReader for Rows<'_, R> {
    fn summary(&self, member: &MemberId) -> Result<Option<WalletSummary>, ReadFailure> {
        self.row(member, "summary", &summary_key(member))?
            .map(|b| decode_summary(&b).map_err(|e| failure(member, "summary", e)))
            .transpose()
    }

    fn payment(&self, member: &MemberId, id: &CommandId) -> Result<Option<Payment>, ReadFailure> {
        self.row(member, "payment", &payment_key(member, id))?
            .map(|b| decode_payment(&b).map_err(|e| failure(member, "payment", e)))
            .transpose()
    }

    fn coupon(&self, member: &MemberId, id: &CouponId) -> Result<Option<Coupon>, ReadFailure> {
        self.row(member, "coupon", &coupon_key(member, id))?
            .map(|b| decode_coupon(&b).map_err(|e| failure(member, "coupon", e)))
            .transpose()
    }

    fn has_badge(&self, member: &MemberId, badge: &Badge) -> Result<bool, ReadFailure> {
        Ok(self
            .row(member, "badge", &badge_key(member, badge))?
            .is_some())
    }

    fn lot(&self, member: &MemberId, lot: LotId) -> Result<Option<MilesLot>, ReadFailure> {
        self.row(member, "lot", &lot_key(member, lot))?
            .map(|b| decode_lot(lot, &b).map_err(|e| failure(member, "lot", e)))
            .transpose()
    }

    fn lots_by_expiry(
        &self,
        member: &MemberId,
        after: Option<Timestamp>,
        visit: &mut dyn FnMut(&MilesLot) -> Visit,
    ) -> Result<(), ReadFailure> {
        let prefix = member_prefix(member);
        let from = match after {
            // The first key after every key of time `t`: time `t + 1`.
            Some(t) if t.0 < i64::MAX => {
                let mut k = prefix.clone();
                k.extend_from_slice(&ordered_time(Timestamp(t.0 + 1)));
                k
            }
            Some(_) => return Ok(()),
            None => prefix.clone(),
        };
        try_visit(
            self.read,
            tables::LOT_ORDER,
            &from,
            &prefix_end(&prefix),
            &mut |key, _| {
                let id = key
                    .get(prefix.len() + 8..)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(|b| LotId(u32::from_be_bytes(b)));
                match id.map(|id| self.lot(member, id)).transpose()?.flatten() {
                    Some(lot) if lot.remaining.0 > 0 => Ok(visit(&lot)),
                    _ => Err(failure(
                        member,
                        "lot order entry",
                        format!("{key:02x?} names no lot with miles left"),
                    )),
                }
            },
        )
        .map_err(|e| failure(member, "lot order", e))?
    }

    fn active_coupons_by_expiry(
        &self,
        member: &MemberId,
        visit: &mut dyn FnMut(&CouponId, &Coupon) -> Visit,
    ) -> Result<(), ReadFailure> {
        let index = OrderedIndex {
            table: tables::COUPON_ORDER,
            what: "coupon",
            live: "active coupon",
        };
        self.visit_ordered(
            member,
            &index,
            |s| CouponId::new(s).ok(),
            |id| {
                Ok(self
                    .coupon(member, id)?
                    .filter(|c| c.status == CouponStatus::Active))
            },
            visit,
        )
    }

    fn identity(
        &self,
        member: &MemberId,
    ) -> Result<Option<ledger::domain::IdentityState>, ReadFailure> {
        Err(ReadFailure {
            reason: format!("the wallet rows hold no identity (asked for member {member})"),
        })
    }

    fn hold(&self, member: &MemberId, id: &CommandId) -> Result<Option<Hold>, ReadFailure> {
        self.row(member, "hold", &hold_key(member, id))?
            .map(|b| decode_hold(&b).map_err(|e| failure(member, "hold", e)))
            .transpose()
    }

    fn holds_by_until(
        &self,
        member: &MemberId,
        visit: &mut dyn FnMut(&CommandId, &Hold) -> Visit,
    ) -> Result<(), ReadFailure> {
        let index = OrderedIndex {
            table: tables::HOLD_ORDER,
            what: "hold",
            live: "pending hold",
        };
        self.visit_ordered(
            member,
            &index,
            |s| CommandId::new(s).ok(),
            |id| self.hold(member, id),
            visit,
        )
    }

    fn security(&self, member: &MemberId) -> Result<Option<SecurityRow>, ReadFailure> {
        self.read
            .get(tables::SECURITY, member.as_str().as_bytes())
            .map_err(|e| failure(member, "security row", e))?
            .map(|b| decode_security(&b).map_err(|e| failure(member, "security row", e)))
            .transpose()
    }

    fn device_seen(&self, member: &MemberId, device: &str) -> Result<bool, ReadFailure> {
        Ok(self
            .read
            .get(tables::DEVICES, &device_key(member, device))
            .map_err(|e| failure(member, "device row", e))?
            .is_some())
    }

    fn policy(&self) -> Result<Option<PolicySet>, ReadFailure> {
        let unreadable = |e: String| ReadFailure {
            reason: format!("policy row: {e}"),
        };
        self.read
            .get(tables::POLICY, POLICY_KEY)
            .map_err(|e| unreadable(e.to_string()))?
            .map(|b| decode_policy(&b).map_err(unreadable))
            .transpose()
    }

    fn compensated(&self, incident: &str, original: Position) -> Result<bool, ReadFailure> {
        Ok(self
            .read
            .get(tables::COMPENSATIONS, &compensation_key(incident, original))
            .map_err(|e| ReadFailure {
                reason: format!("compensation row of incident {incident}: {e}"),
            })?
            .is_some())
    }

    /// Reads the record at `position` through the log's position index (the `events` table
    /// the store serves from its segments): one point read, never a scan.
    fn stream_at(&self, position: Position) -> Result<Option<(StreamKind, MemberId)>, ReadFailure> {
        let unreadable = |e: String| ReadFailure {
            reason: format!("event at position {position}: {e}"),
        };
        let Some(bytes) = self
            .read
            .get(
                ledger::log::tables::EVENTS,
                &ledger::log::event_key(position),
            )
            .map_err(|e| unreadable(e.to_string()))?
        else {
            return Ok(None);
        };
        let record = ledger::EventRecord::decode(&bytes).map_err(|e| unreadable(e.to_string()))?;
        Ok(member_of_stream(&record.stream))
    }
}

// ---------------------------------------------------------------------------------------------
// Security, policy and compensation rows (SPEC section 7)

/// Folds one record into the rows that are not wallet rows: the security row and device rows
/// of its member, the policy row, the compensation keys. The one definition for the commit
/// hook and for rebuild, so rebuild gives exactly the rows the commits wrote. Records that
/// cannot change them (most) are skipped by type name before any decoding; an operator reset
/// costs the decoding of its small payload and no row read, so a mass reset stays cheap.
pub fn write_side_rows<W: RowRead + RowWrite + ?Sized>(
    rows: &mut W,
    record: &ledger::record::RecordView<'_>,
) -> Result<(), ProjectionError> {
    use ledger::domain::{DomainEvent, IdentityEvent, PolicyEvent, WalletEvent};
    if !side_relevant(record.event_type) {
        return Ok(());
    }
    let member = member_of_stream(record.stream).map(|(_, m)| m);
    let bad = |reason: String| ProjectionError::Event {
        position: record.position.0,
        reason,
    };
    // A payment or transfer changes a security row only if the member has one: one point read,
    // no decoding, for every member who never had a credential event.
    let outgoing = matches!(record.event_type, "wallet.paid" | "wallet.transferred_out");
    let mut security = None;
    if outgoing {
        security = match &member {
            Some(m) => read_security(rows, m)?,
            None => None,
        };
        if security.is_none() {
            return Ok(());
        }
    }
    let event = DomainEvent::decode_record(record).map_err(|e| bad(e.to_string()))?;
    // An operator reset (`reset-credentials`, millions at a time) changes nothing here: known
    // from its own small payload, before any row is read.
    if let DomainEvent::Identity(IdentityEvent::PasswordReset(reset)) = &event {
        if reset.operator {
            return Ok(());
        }
    }
    if !outgoing {
        security = match &member {
            Some(m) => read_security(rows, m)?,
            None => None,
        };
    }
    match (event, member) {
        (DomainEvent::Identity(e), Some(member)) => {
            if let IdentityEvent::LoggedIn(login) = &e {
                let key = device_key(&member, &login.device);
                if rows.get(tables::DEVICES, &key)?.is_none() {
                    rows.put(
                        tables::DEVICES,
                        key,
                        record.position.0.to_le_bytes().to_vec(),
                    );
                }
            }
            let after = SecurityRow::after_identity(security, &e, record.at, record.position);
            if after != security {
                if let Some(row) = after {
                    rows.put(
                        tables::SECURITY,
                        member.as_str().as_bytes().to_vec(),
                        encode_security(&row),
                    );
                }
            }
        }
        (DomainEvent::Wallet(WalletEvent::Compensated(c)), Some(member)) => {
            rows.put(
                tables::COMPENSATIONS,
                compensation_key(&c.incident, Position(c.original)),
                member.as_str().as_bytes().to_vec(),
            );
        }
        (DomainEvent::Wallet(e), Some(member)) => {
            if let Some(row) = security {
                rows.put(
                    tables::SECURITY,
                    member.as_str().as_bytes().to_vec(),
                    encode_security(&row.after_wallet(&e)),
                );
            }
        }
        (DomainEvent::Policy(PolicyEvent::PolicySet(policy)), None) => {
            rows.put(tables::POLICY, POLICY_KEY.to_vec(), encode_policy(&policy));
        }
        (event, _) => {
            return Err(bad(format!(
                "{} in stream {}",
                event.event_type(),
                record.stream
            )))
        }
    }
    Ok(())
}

/// The event types [`write_side_rows`] reads; every other leaves the side rows alone.
fn side_relevant(event_type: &str) -> bool {
    matches!(
        event_type,
        "identity.password_changed"
            | "identity.password_reset"
            | "identity.contact_changed"
            | "identity.logged_in"
            | "policy.set"
            | "wallet.compensated"
            | "wallet.paid"
            | "wallet.transferred_out"
    )
}

/// Whether `record` leaves every side row as it is, whatever the rows before it: a type
/// [`write_side_rows`] does not read, or an operator reset (which it skips). The incremental
/// check after a credential reset relies on it: such appends need no new side-table proof.
pub fn leaves_side_rows(record: &ledger::record::RecordView<'_>) -> Result<bool, ProjectionError> {
    use ledger::domain::{DomainEvent, IdentityEvent};
    if !side_relevant(record.event_type) {
        return Ok(true);
    }
    if record.event_type != "identity.password_reset" {
        return Ok(false);
    }
    let event = DomainEvent::decode_record(record).map_err(|e| ProjectionError::Event {
        position: record.position.0,
        reason: e.to_string(),
    })?;
    Ok(matches!(
        event,
        DomainEvent::Identity(IdentityEvent::PasswordReset(reset)) if reset.operator
    ))
}

fn read_security<R: RowRead + ?Sized>(
    rows: &R,
    member: &MemberId,
) -> Result<Option<SecurityRow>, ProjectionError> {
    rows.get(tables::SECURITY, member.as_str().as_bytes())?
        .map(|b| decode_security(&b).map_err(|reason| damaged_view(member, reason)))
        .transpose()
}

/// Writes that [`write_side_rows`] makes: an overlay (the hook) or a batch with its reads
/// (rebuild).
pub trait RowWrite {
    /// Sets a value.
    fn put(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>);
}

impl RowWrite for Overlay<'_> {
    fn put(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>) {
        Overlay::put(self, table, key, value);
    }
}

/// Most attempts of [`read_consistent`] before it gives the last answer.
const CONSISTENT_READ_ATTEMPTS: usize = 1_000;

/// Runs a read of several rows so that it sees one commit's state, on engines without read
/// snapshots too: the sled backend reads live data, so a wallet read while the writer commits
/// may see its summary from one commit and its payment rows from the next. Every commit that
/// changes a view writes the checkpoint, so a read between two equal checkpoint reads saw no
/// commit finish; a read that found rows disagreeing (a commit still landing) is tried again.
/// With redb (snapshots) the first attempt always stands.
pub fn read_consistent<T>(
    snap: &dyn Snapshot,
    mut read: impl FnMut() -> Result<T, ProjectionError>,
) -> Result<T, ProjectionError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = checkpoint(snap)?;
        let result = read();
        let settled =
            checkpoint(snap)? == before && !matches!(result, Err(ProjectionError::View { .. }));
        if settled || attempt >= CONSISTENT_READ_ATTEMPTS {
            return result;
        }
        std::thread::yield_now();
    }
}

/// Reads a member's whole wallet from its rows (`None`: no wallet). Reads every row of the
/// member, so it is for showing and exporting a wallet, never for deciding a command.
///
/// Not checked against the member hash: for `check` and the gate, which compare the rows with
/// the fold of the log and name the difference. What is served as a wallet answer is read with
/// [`load_wallet_verified`].
pub fn load_wallet<R: RowRead + ?Sized>(
    read: &R,
    member: &MemberId,
) -> Result<Option<WalletState>, ProjectionError> {
    load_wallet_hashing(read, member).map(|(state, _)| state)
}

/// [`load_wallet`], the rows checked against the stored member hash first
/// ([`verify_member_hash`]): a damaged view is an error, never a wallet answer.
pub fn load_wallet_verified<R: RowRead + ?Sized>(
    read: &R,
    member: &MemberId,
) -> Result<Option<WalletState>, ProjectionError> {
    let (state, rows) = load_wallet_hashing(read, member)?;
    verify_member_hash(read, member, &rows)?;
    Ok(state)
}

/// A member's wallet and the sum of its rows' hashes, from one pass over its rows. The rows are
/// hashed before they are decoded, so a row damaged past decoding still shows in the sum.
fn load_wallet_hashing<R: RowRead + ?Sized>(
    read: &R,
    member: &MemberId,
) -> Result<(Option<WalletState>, RowsSum), ProjectionError> {
    let prefix = member_prefix(member);
    let mut builder = WalletBuilder::new(member.clone());
    let mut rows = RowsSum::default();
    let decoded = try_visit(
        read,
        tables::ROWS,
        &prefix,
        &prefix_end(&prefix),
        &mut |key, value| {
            rows.add(key, value);
            builder
                .add(&key[prefix.len()..], value)
                .map(|()| Visit::Continue)
        },
    )?;
    // A row that does not decode is damage too; say so in the member hash's words when the
    // sum already disagrees (it names the rule), else in the decoder's.
    if let Err(e) = decoded {
        verify_member_hash(read, member, &rows)?;
        return Err(e);
    }
    let state = builder.finish();
    if state.is_err() {
        verify_member_hash(read, member, &rows)?;
    }
    Ok((state?, rows))
}

/// The sum of the hashes of a member's rows as read, and how many there were.
#[derive(Default)]
pub struct RowsSum {
    sum: BucketSum,
    count: u64,
}

impl RowsSum {
    /// Adds one `wallet_rows` row.
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.sum.add(&row_hash(key, value));
        self.count += 1;
    }
}

/// Checks the rows read of `member` against its stored member hash (`view_member_hash`, kept
/// by the hook in the transaction of every change): the rows must be there exactly when the
/// hash is, and their hashes must add up to it. Bit rot in any row (key or value), a lost
/// row, a row of another member, or a damaged member hash all fail it, as
/// [`ProjectionError::View`] naming the member and the repair. One lookup beyond the rows.
///
/// What it cannot see: a member whose rows and member hash are both gone (two tables' pages;
/// `check` finds it from the fold), or damage that changes rows and hash to agree.
pub fn verify_member_hash<R: RowRead + ?Sized>(
    read: &R,
    member: &MemberId,
    rows: &RowsSum,
) -> Result<(), ProjectionError> {
    let stored = read.get(
        tables::MEMBER_HASHES,
        &crate::digest::member_hash_key(member),
    )?;
    let problem = match (stored, rows.count) {
        (None, 0) => return Ok(()),
        (None, n) => format!("{n} rows but no member hash"),
        (Some(_), 0) => "a member hash but no rows".to_string(),
        (Some(hash), n) if hash.as_slice() != rows.sum.to_bytes().as_slice() => {
            format!("its {n} rows do not add up to its stored member hash")
        }
        (Some(_), _) => return Ok(()),
    };
    Err(damaged_view(
        member,
        format!("{problem}: the views are damaged and are not served; `migrate-tool rebuild` rebuilds them from the log"),
    ))
}

/// Reads every row of `member` to check them against its member hash ([`verify_member_hash`]):
/// for reads that decode only some rows (the shown part, the summary).
pub fn verify_member_rows<R: RowRead + ?Sized>(
    read: &R,
    member: &MemberId,
) -> Result<(), ProjectionError> {
    let prefix = member_prefix(member);
    let mut rows = RowsSum::default();
    read.visit(
        tables::ROWS,
        &prefix,
        &prefix_end(&prefix),
        &mut |key, value| {
            rows.add(key, value);
            Visit::Continue
        },
    )?;
    verify_member_hash(read, member, &rows)
}

/// Where the member id of a `wallet_rows` key ends (its `0x00`).
fn member_end(key: &[u8]) -> Result<usize, ProjectionError> {
    key.iter()
        .position(|&b| b == 0)
        .ok_or_else(|| ProjectionError::View {
            member: String::from_utf8_lossy(key).into_owned(),
            reason: "row key without a member terminator".into(),
        })
}

/// The member a `wallet_rows` key starts with (`name`: the bytes before its `0x00`).
fn member_of_row(name: &[u8]) -> Result<MemberId, ProjectionError> {
    std::str::from_utf8(name)
        .ok()
        .and_then(|n| MemberId::new(n).ok())
        .ok_or_else(|| ProjectionError::View {
            member: String::from_utf8_lossy(name).into_owned(),
            reason: "row key does not start with a valid member id".into(),
        })
}

/// A stored view of `member` that cannot be read as a wallet.
fn damaged_view(member: &MemberId, reason: impl Into<String>) -> ProjectionError {
    ProjectionError::View {
        member: member.to_string(),
        reason: reason.into(),
    }
}

/// One stored `wallet_rows` row, decoded.
enum StoredRow {
    Summary(WalletSummary),
    Badge(Badge),
    Coupon(CouponId, Coupon),
    Lot(MilesLot),
    Payment(CommandId, Payment),
    Hold(CommandId, Hold),
}

/// Decodes one row of `member` (`rest`: its key after `member 0x00`): the one decoder of every
/// row kind, for whole wallets and shown ones alike.
fn decode_row(member: &MemberId, rest: &[u8], value: &[u8]) -> Result<StoredRow, ProjectionError> {
    let damaged = |reason: String| damaged_view(member, reason);
    let Some((&kind, id)) = rest.split_first() else {
        return Err(damaged("row key with no kind".into()));
    };
    let text = || std::str::from_utf8(id).map_err(|_| damaged("row id is not UTF-8".into()));
    Ok(match kind {
        kind::SUMMARY => StoredRow::Summary(decode_summary(value).map_err(damaged)?),
        kind::BADGE => {
            StoredRow::Badge(Badge::new(text()?).map_err(|e| damaged(format!("badge {e}")))?)
        }
        kind::COUPON => StoredRow::Coupon(
            CouponId::new(text()?).map_err(|e| damaged(format!("coupon {e}")))?,
            decode_coupon(value).map_err(damaged)?,
        ),
        kind::LOT => {
            let lot = <[u8; 4]>::try_from(id)
                .map(|b| LotId(u32::from_be_bytes(b)))
                .map_err(|_| damaged("lot id is not 4 bytes".into()))?;
            StoredRow::Lot(decode_lot(lot, value).map_err(damaged)?)
        }
        kind::PAYMENT => StoredRow::Payment(
            CommandId::new(text()?).map_err(|e| damaged(format!("payment {e}")))?,
            decode_payment(value).map_err(damaged)?,
        ),
        kind::HOLD => StoredRow::Hold(
            CommandId::new(text()?).map_err(|e| damaged(format!("hold {e}")))?,
            decode_hold(value).map_err(damaged)?,
        ),
        other => return Err(damaged(format!("unknown row kind {other:#04x}"))),
    })
}

/// What `show` and `export` display of a wallet: the summary, the badges and the coupons with
/// their status (sorted by id). Read from those rows only: a wallet's payments and lots, its long
/// history, are neither read nor held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShownWallet {
    /// The owner.
    pub member: MemberId,
    /// Balance, miles outstanding, counts.
    pub summary: WalletSummary,
    /// Badges held, sorted.
    pub badges: Vec<Badge>,
    /// Every coupon with its status, sorted by id.
    pub coupons: Vec<(CouponId, CouponStatus)>,
    /// The pending holds with their amounts, sorted by id.
    pub holds: Vec<(CommandId, Yen)>,
}

impl ShownWallet {
    /// The shown part of a whole state (as-of reads fold one).
    pub fn of(state: &WalletState) -> ShownWallet {
        ShownWallet {
            member: state.member().clone(),
            summary: state.summary(),
            badges: state.badges().iter().cloned().collect(),
            coupons: state
                .coupons()
                .iter()
                .map(|(id, c)| (id.clone(), c.status))
                .collect(),
            holds: state
                .holds()
                .iter()
                .map(|(id, h)| (id.clone(), h.amount))
                .collect(),
        }
    }

    fn damaged(&self, reason: impl Into<String>) -> ProjectionError {
        damaged_view(&self.member, reason)
    }

    /// One summary, badge or coupon row (`rest`: the key after `member 0x00`); lot and payment
    /// rows are not part of what is shown.
    fn add(&mut self, rest: &[u8], value: &[u8]) -> Result<(), ProjectionError> {
        match decode_row(&self.member, rest, value)? {
            StoredRow::Summary(summary) => self.summary = summary,
            StoredRow::Badge(badge) => self.badges.push(badge),
            StoredRow::Coupon(id, coupon) => self.coupons.push((id, coupon.status)),
            StoredRow::Hold(id, hold) => self.holds.push((id, hold.amount)),
            StoredRow::Lot(_) | StoredRow::Payment(..) => {}
        }
        Ok(())
    }

    /// The counts in the summary must be what the rows hold.
    fn checked(self, had_summary: bool) -> Result<Option<ShownWallet>, ProjectionError> {
        if !had_summary {
            if self.badges.is_empty() && self.coupons.is_empty() && self.holds.is_empty() {
                return Ok(None);
            }
            return Err(self.damaged("rows without a summary"));
        }
        let count = |status| self.coupons.iter().filter(|(_, s)| *s == status).count() as u64;
        let s = &self.summary;
        let held = self
            .holds
            .iter()
            .try_fold(0u64, |sum, (_, amount)| sum.checked_add(amount.0));
        if held != Some(s.held.0) {
            return Err(self.damaged(format!(
                "summary holds {} yen, its {} hold rows {held:?}",
                s.held,
                self.holds.len()
            )));
        }
        if s.badges != self.badges.len() as u64
            || s.coupons_active != count(CouponStatus::Active)
            || s.coupons_redeemed != count(CouponStatus::Redeemed)
            || s.coupons_expired != count(CouponStatus::Expired)
        {
            return Err(self.damaged(format!(
                "summary {s:?} disagrees with {} badge and {} coupon rows",
                self.badges.len(),
                self.coupons.len()
            )));
        }
        Ok(Some(self))
    }
}

/// The shown part of a member's wallet (`None`: no wallet), reading its summary, badge and
/// coupon rows only.
pub fn load_shown<R: RowRead + ?Sized>(
    read: &R,
    member: &MemberId,
) -> Result<Option<ShownWallet>, ProjectionError> {
    let mut shown = ShownWallet {
        member: member.clone(),
        summary: WalletSummary::default(),
        badges: Vec::new(),
        coupons: Vec::new(),
        holds: Vec::new(),
    };
    // Shown rows are decoded only after every row of the member checks out against its member
    // hash: that reads the lot and payment rows too (hashing, not decoding them), the price
    // of never showing a damaged view.
    verify_member_rows(read, member)?;
    let mut had_summary = false;
    let prefix = member_prefix(member);
    for kind in [kind::SUMMARY, kind::BADGE, kind::COUPON, kind::HOLD] {
        let mut from = prefix.clone();
        from.push(kind);
        try_visit(
            read,
            tables::ROWS,
            &from,
            &prefix_end(&from),
            &mut |key, value| {
                had_summary |= kind == kind::SUMMARY;
                shown
                    .add(&key[prefix.len()..], value)
                    .map(|()| Visit::Continue)
            },
        )??;
    }
    shown.checked(had_summary)
}

/// Every stored wallet's shown part, in member id order, in one pass over `wallet_rows`: one
/// member in memory at a time. Each member's rows are checked against its member hash
/// ([`verify_member_hash`]) before its wallet is handed on, so the lot and payment rows are read
/// (hashed, not decoded) too: export never shows a damaged view.
pub fn for_each_shown(
    snap: &dyn Snapshot,
    each: &mut dyn FnMut(ShownWallet) -> Result<(), ProjectionError>,
) -> Result<(), ProjectionError> {
    /// The member being read: its shown part, whether it had a summary, its rows' hash sum.
    struct Current {
        shown: ShownWallet,
        had_summary: bool,
        rows: RowsSum,
    }
    let finish = |done: Current,
                  each: &mut dyn FnMut(ShownWallet) -> Result<(), ProjectionError>|
     -> Result<(), ProjectionError> {
        verify_member_hash(snap, &done.shown.member, &done.rows)?;
        match done.shown.checked(done.had_summary)? {
            Some(shown) => each(shown),
            None => Ok(()),
        }
    };
    let mut current: Option<Current> = None;
    for chunk in ledger::engine::TableChunks::new(snap, tables::ROWS, 4_096) {
        for (key, value) in chunk? {
            let split = member_end(&key)?;
            let name = &key[..split];
            if current
                .as_ref()
                .is_none_or(|c| c.shown.member.as_str().as_bytes() != name)
            {
                if let Some(done) = current.take() {
                    finish(done, each)?;
                }
                current = Some(Current {
                    shown: ShownWallet {
                        member: member_of_row(name)?,
                        summary: WalletSummary::default(),
                        badges: Vec::new(),
                        coupons: Vec::new(),
                        holds: Vec::new(),
                    },
                    had_summary: false,
                    rows: RowsSum::default(),
                });
            }
            let c = current.as_mut().expect("set just above");
            c.rows.add(&key, &value);
            let kind = key.get(split + 1).copied();
            c.had_summary |= kind == Some(kind::SUMMARY);
            c.shown.add(&key[split + 1..], &value)?;
        }
    }
    if let Some(done) = current {
        finish(done, each)?;
    }
    Ok(())
}

/// Collects one member's rows (in key order) into a [`WalletState`], checking the summary
/// against the rows.
struct WalletBuilder {
    member: MemberId,
    summary: Option<WalletSummary>,
    badges: BTreeSet<Badge>,
    coupons: BTreeMap<CouponId, Coupon>,
    lots: Vec<MilesLot>,
    payments: BTreeMap<CommandId, Payment>,
    holds: BTreeMap<CommandId, Hold>,
}

impl WalletBuilder {
    fn new(member: MemberId) -> WalletBuilder {
        WalletBuilder {
            member,
            summary: None,
            badges: BTreeSet::new(),
            coupons: BTreeMap::new(),
            lots: Vec::new(),
            payments: BTreeMap::new(),
            holds: BTreeMap::new(),
        }
    }

    fn damaged(&self, reason: impl Into<String>) -> ProjectionError {
        damaged_view(&self.member, reason)
    }

    /// One row: `rest` is the key after `member 0x00`.
    fn add(&mut self, rest: &[u8], value: &[u8]) -> Result<(), ProjectionError> {
        match decode_row(&self.member, rest, value)? {
            StoredRow::Summary(summary) => self.summary = Some(summary),
            StoredRow::Badge(badge) => {
                self.badges.insert(badge);
            }
            StoredRow::Coupon(id, coupon) => {
                self.coupons.insert(id, coupon);
            }
            StoredRow::Lot(lot) => self.lots.push(lot),
            StoredRow::Payment(id, payment) => {
                self.payments.insert(id, payment);
            }
            StoredRow::Hold(id, hold) => {
                self.holds.insert(id, hold);
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<Option<WalletState>, ProjectionError> {
        let Some(summary) = self.summary else {
            if self.badges.is_empty()
                && self.coupons.is_empty()
                && self.lots.is_empty()
                && self.payments.is_empty()
                && self.holds.is_empty()
            {
                return Ok(None);
            }
            return Err(self.damaged("rows without a summary"));
        };
        let member = self.member.clone();
        let state = WalletState::from_parts(
            self.member,
            summary.balance,
            self.lots,
            self.badges,
            self.coupons,
            self.payments,
        )
        .and_then(|state| state.with_holds(self.holds))
        .map_err(|e| ProjectionError::View {
            member: member.to_string(),
            reason: e.to_string(),
        })?;
        if state.summary() != summary {
            return Err(ProjectionError::View {
                member: member.to_string(),
                reason: format!(
                    "summary {summary:?} disagrees with the rows, which give {:?}",
                    state.summary()
                ),
            });
        }
        Ok(Some(state))
    }
}

/// Every stored wallet in member id order, read from `wallet_rows` in chunks: one member's rows
/// in memory at a time.
pub fn for_each_wallet(
    snap: &dyn Snapshot,
    each: &mut dyn FnMut(WalletState) -> Result<(), ProjectionError>,
) -> Result<(), ProjectionError> {
    let mut current: Option<WalletBuilder> = None;
    for chunk in ledger::engine::TableChunks::new(snap, tables::ROWS, 4_096) {
        for (key, value) in chunk? {
            let split = member_end(&key)?;
            let name = &key[..split];
            if current
                .as_ref()
                .is_none_or(|b| b.member.as_str().as_bytes() != name)
            {
                if let Some(done) = current.take() {
                    if let Some(state) = done.finish()? {
                        each(state)?;
                    }
                }
                let member = member_of_row(name)?;
                current = Some(WalletBuilder::new(member));
            }
            current
                .as_mut()
                .expect("set just above")
                .add(&key[split + 1..], &value)?;
        }
    }
    if let Some(done) = current {
        if let Some(state) = done.finish()? {
            each(state)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing rows

/// Writes one event's row changes for `member` into the overlay, with the index entries they
/// call for, and returns the change of the member hash: (hashes to add, hashes to subtract).
pub fn write_changes(
    overlay: &mut Overlay<'_>,
    member: &MemberId,
    changes: Vec<RowChange>,
    hash: &mut BucketSum,
) -> Result<(), ProjectionError> {
    for change in changes {
        let (key, value) = match &change {
            RowChange::Summary(s) => (summary_key(member), encode_summary(s)),
            RowChange::Payment(id, p) => (payment_key(member, id), encode_payment(p)),
            RowChange::Lot(lot) => (lot_key(member, lot.lot), encode_lot(lot)),
            RowChange::Coupon(id, c) => (coupon_key(member, id), encode_coupon(c)),
            RowChange::Badge(b) => (badge_key(member, b), Vec::new()),
            RowChange::Hold(id, hold) => {
                write_hold(overlay, member, id, hold.as_ref(), hash)?;
                continue;
            }
        };
        let old = overlay.get(tables::ROWS, &key)?;
        if let Some(old) = &old {
            hash.sub(&row_hash(&key, old));
        }
        hash.add(&row_hash(&key, &value));
        match &change {
            RowChange::Lot(lot) => {
                let id = lot.lot.0.to_be_bytes();
                if let Some(old) = old.as_deref() {
                    let old = decode_lot(lot.lot, old).map_err(|reason| ProjectionError::View {
                        member: member.to_string(),
                        reason,
                    })?;
                    if old.remaining.0 > 0 {
                        overlay.delete(tables::LOT_ORDER, lot_order_key(member, &old));
                        overlay
                            .delete(tables::DUE, due_key(old.expires_at, member, kind::LOT, &id));
                    }
                }
                if lot.remaining.0 > 0 {
                    overlay.put(tables::LOT_ORDER, lot_order_key(member, lot), Vec::new());
                    overlay.put(
                        tables::DUE,
                        due_key(lot.expires_at, member, kind::LOT, &id),
                        Vec::new(),
                    );
                }
            }
            RowChange::Coupon(id, coupon) => {
                let id_bytes = id.as_str().as_bytes();
                if let Some(old) = old.as_deref() {
                    let old = decode_coupon(old).map_err(|reason| ProjectionError::View {
                        member: member.to_string(),
                        reason,
                    })?;
                    if old.status == CouponStatus::Active {
                        overlay.delete(tables::COUPON_ORDER, coupon_order_key(member, id, &old));
                        overlay.delete(
                            tables::DUE,
                            due_key(old.expires_at, member, kind::COUPON, id_bytes),
                        );
                    }
                }
                if coupon.status == CouponStatus::Active {
                    overlay.put(
                        tables::COUPON_ORDER,
                        coupon_order_key(member, id, coupon),
                        Vec::new(),
                    );
                    overlay.put(
                        tables::DUE,
                        due_key(coupon.expires_at, member, kind::COUPON, id_bytes),
                        Vec::new(),
                    );
                }
            }
            _ => {}
        }
        overlay.put(tables::ROWS, key, value);
    }
    Ok(())
}

/// Places (`Some`) or ends (`None`) a pending hold: its row, its order and due entries, and
/// the member hash.
fn write_hold(
    overlay: &mut Overlay<'_>,
    member: &MemberId,
    id: &CommandId,
    hold: Option<&Hold>,
    hash: &mut BucketSum,
) -> Result<(), ProjectionError> {
    let key = hold_key(member, id);
    let id_bytes = id.as_str().as_bytes();
    if let Some(old) = overlay.get(tables::ROWS, &key)? {
        hash.sub(&row_hash(&key, &old));
        let old = decode_hold(&old).map_err(|reason| damaged_view(member, reason))?;
        overlay.delete(tables::HOLD_ORDER, hold_order_key(member, id, &old));
        overlay.delete(
            tables::DUE,
            due_key(old.until, member, kind::HOLD, id_bytes),
        );
    }
    match hold {
        Some(hold) => {
            let value = encode_hold(hold);
            hash.add(&row_hash(&key, &value));
            overlay.put(
                tables::HOLD_ORDER,
                hold_order_key(member, id, hold),
                Vec::new(),
            );
            overlay.put(
                tables::DUE,
                due_key(hold.until, member, kind::HOLD, id_bytes),
                Vec::new(),
            );
            overlay.put(tables::ROWS, key, value);
        }
        None => overlay.delete(tables::ROWS, key),
    }
    Ok(())
}

/// Writes a whole wallet's rows and index entries (rebuild).
pub fn put_wallet(batch: &mut WriteBatch, state: &WalletState) {
    for (key, value) in rows_of(state) {
        batch.put(tables::ROWS, key, value);
    }
    for (table, key) in index_entries_of(state) {
        batch.put(table, key, Vec::new());
    }
}

// ---------------------------------------------------------------------------------------------
// The whole-store expiry index

/// One round of a whole-store `expire` over the expiry index (see [`due_members`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueRound {
    /// Members with something due, in member id order, each with how many of its due items the
    /// round's scan saw (its items before [`DueRound::next`]).
    pub members: Vec<(MemberId, u64)>,
    /// The `wallet_due` key where the next round starts: the first entry of a member this round
    /// had no room for. `None`: the scan reached the last item due.
    pub next: Option<Vec<u8>>,
}

/// The members with lots or coupons due as of `as_of`, reading the expiry index from key
/// `from` (`&[]`: from the start) until `limit` distinct members are found.
///
/// The index is in expiry order, so a member with items due at several times appears several
/// times; within one round it is listed once. A caller that expires every member of a round
/// before reading the next from [`DueRound::next`] reads each index entry once in all (the
/// round's members' later entries are gone by then), and sees every member that had something
/// due before the first round and still has: its first due entry is at or after the cursor, or
/// the cursor passed it in a round that listed the member.
pub fn due_members(
    snap: &dyn Snapshot,
    as_of: Timestamp,
    from: &[u8],
    limit: usize,
) -> Result<DueRound, ProjectionError> {
    assert!(
        limit > 0,
        "a round must have room for a member, or it never moves on"
    );
    let mut members: BTreeMap<MemberId, u64> = BTreeMap::new();
    let mut next = None;
    try_visit::<_, ProjectionError>(snap, tables::DUE, from, &due_end(as_of), &mut |key, _| {
        let member = due_member(key).ok_or_else(|| bad_due_key(key))?;
        if members.len() >= limit && !members.contains_key(&member) {
            next = Some(key.to_vec());
            return Ok(Visit::Stop);
        }
        *members.entry(member).or_default() += 1;
        Ok(Visit::Continue)
    })??;
    debug_assert!(members.len() <= limit);
    Ok(DueRound {
        members: members.into_iter().collect(),
        next,
    })
}

/// What is due over the whole store at one time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DueTotals {
    /// Distinct members with at least one lot or coupon due.
    pub members: u64,
    /// Lots with miles left and active coupons due.
    pub items: u64,
}

/// How many lots and coupons are due as of `as_of` over the whole store.
pub fn due_count(snap: &dyn Snapshot, as_of: Timestamp) -> Result<u64, ProjectionError> {
    let mut n = 0u64;
    RowRead::visit(snap, tables::DUE, &[], &due_end(as_of), &mut |_, _| {
        n += 1;
        Visit::Continue
    })?;
    Ok(n)
}

/// How many members and items are due as of `as_of`, in constant memory: one pass over the due
/// part of the expiry index, counting a member at its first entry there, which is the smaller of
/// the entries of its earliest lot and earliest coupon (two one-key reads of the member's order
/// tables per due item; the three indexes agree, which `check` proves). Why not a set of the
/// members seen: at 16.5 million members that set alone would take hundreds of MB.
pub fn due_totals(snap: &dyn Snapshot, as_of: Timestamp) -> Result<DueTotals, ProjectionError> {
    let mut totals = DueTotals::default();
    try_visit::<_, ProjectionError>(snap, tables::DUE, &[], &due_end(as_of), &mut |key, _| {
        let member = due_member(key).ok_or_else(|| bad_due_key(key))?;
        totals.items += 1;
        if first_due_key(snap, &member)?.as_deref() == Some(key) {
            totals.members += 1;
        }
        Ok(Visit::Continue)
    })??;
    debug_assert!(totals.members <= totals.items);
    Ok(totals)
}

/// The first key after every `wallet_due` entry with `expires_at <= as_of`.
fn due_end(as_of: Timestamp) -> Vec<u8> {
    match as_of.0.checked_add(1) {
        Some(next) => ordered_time(Timestamp(next)).to_vec(),
        None => vec![0xff; 9],
    }
}

/// The member of a `wallet_due` key: the bytes after the expiry up to the `0x00`.
fn due_member(key: &[u8]) -> Option<MemberId> {
    let rest = key.get(8..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    MemberId::new(std::str::from_utf8(&rest[..end]).ok()?).ok()
}

fn bad_due_key(key: &[u8]) -> ProjectionError {
    ProjectionError::View {
        member: "(expiry index)".into(),
        reason: format!("entry {key:02x?} has no valid member id"),
    }
}

/// The member's first `wallet_due` key: the smaller of the due keys of its earliest lot with
/// miles left and of its earliest active coupon (each order table lists a member's entries in
/// `(expires_at, id)` order, as the due index does within one member). `None`: neither.
fn first_due_key(
    snap: &dyn Snapshot,
    member: &MemberId,
) -> Result<Option<Vec<u8>>, ProjectionError> {
    let prefix = member_prefix(member);
    let end = prefix_end(&prefix);
    let mut first: Option<Vec<u8>> = None;
    for (table, kind) in [
        (tables::LOT_ORDER, kind::LOT),
        (tables::COUPON_ORDER, kind::COUPON),
        (tables::HOLD_ORDER, kind::HOLD),
    ] {
        let entries = snap.scan(
            table,
            (
                Bound::Included(prefix.as_slice()),
                Bound::Excluded(end.as_slice()),
            ),
            1,
        )?;
        let Some((key, _)) = entries.into_iter().next() else {
            continue;
        };
        let Some(expiry) = key
            .get(prefix.len()..prefix.len() + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
        else {
            return Err(ProjectionError::View {
                member: member.to_string(),
                reason: format!("{table} entry {key:02x?} has no expiry"),
            });
        };
        let due = due_key(
            time_of_ordered(expiry),
            member,
            kind,
            &key[prefix.len() + 8..],
        );
        if first.as_ref().is_none_or(|f| due < *f) {
            first = Some(due);
        }
    }
    Ok(first)
}

/// The expiry time encoded at the start of a `wallet_due` key.
pub fn due_time(key: &[u8]) -> Option<Timestamp> {
    key.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(time_of_ordered)
}

// ---------------------------------------------------------------------------------------------
// Checkpoint and layout

/// The last log position folded into the views (0 when none).
pub fn checkpoint(snap: &dyn Snapshot) -> Result<Position, ProjectionError> {
    match Snapshot::get(snap, tables::CHECKPOINT, CHECKPOINT_KEY)? {
        None => Ok(Position(0)),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(|b| Position(u64::from_le_bytes(b)))
            .map_err(|_| ProjectionError::View {
                member: "(checkpoint)".into(),
                reason: format!("checkpoint has {} bytes, expected 8", bytes.len()),
            }),
    }
}

/// The layout the stored views are in: [`LAYOUT`], 1 for a store written before rows (views
/// folded but no layout key), or `None` for views never written.
pub fn stored_layout(snap: &dyn Snapshot) -> Result<Option<u32>, ProjectionError> {
    match Snapshot::get(snap, tables::CHECKPOINT, LAYOUT_KEY)? {
        Some(bytes) => <[u8; 4]>::try_from(bytes.as_slice())
            .map(|b| Some(u32::from_le_bytes(b)))
            .map_err(|_| ProjectionError::View {
                member: "(layout)".into(),
                reason: format!("layout has {} bytes, expected 4", bytes.len()),
            }),
        None if checkpoint(snap)?.0 > 0 => Ok(Some(1)),
        None => Ok(None),
    }
}

/// Refuses views of another layout: a store written before rows must be migrated first.
pub fn require_layout(snap: &dyn Snapshot) -> Result<(), ProjectionError> {
    match stored_layout(snap)? {
        None => Ok(()),
        Some(LAYOUT) => Ok(()),
        Some(found) => Err(ProjectionError::Layout { found }),
    }
}

/// Refuses views that cannot be served as the state at the log head: another layout
/// ([`require_layout`]), or a checkpoint behind the head (a crashed rebuild).
pub fn require_current(snap: &dyn Snapshot) -> Result<(), ProjectionError> {
    require_layout(snap)?;
    let head = ledger::log::read_head(snap)?.0.position.0;
    let checkpoint = checkpoint(snap)?.0;
    if checkpoint != head {
        return Err(ProjectionError::Behind { checkpoint, head });
    }
    Ok(())
}

/// Writes the checkpoint and this build's layout.
pub fn put_checkpoint(batch: &mut WriteBatch, position: Position) {
    batch.put(
        tables::CHECKPOINT,
        CHECKPOINT_KEY.to_vec(),
        position.0.to_le_bytes().to_vec(),
    );
    batch.put(
        tables::CHECKPOINT,
        LAYOUT_KEY.to_vec(),
        LAYOUT.to_le_bytes().to_vec(),
    );
}

// ---------------------------------------------------------------------------------------------
// Layout 1, for the migration

/// Decodes a layout-1 `view_wallet` value (tag byte, then bincode 2 of the whole state) without
/// the codec's 1 MiB limit, which is what made such wallets undecodable past ~35,000 payments.
pub fn decode_state_v1(member: &str, bytes: &[u8]) -> Result<WalletState, ProjectionError> {
    let damaged = |reason: String| ProjectionError::View {
        member: member.to_owned(),
        reason,
    };
    match bytes.split_first() {
        Some((&VIEW_TAG_V1, body)) => Codec::Bincode2
            .decode_unbounded(body)
            .map_err(|e| damaged(e.to_string())),
        Some((tag, _)) => Err(damaged(format!("unknown view tag {tag}"))),
        None => Err(damaged("empty view record".into())),
    }
}
