//! The copy-transform engine of the migrations, and the position-by-position proof.
//!
//! [`copy_transform`] reads the source log in position order and writes each transformed record
//! into a new store with the same position, stream version, event id, command id, business and
//! recorded time; codec, schema version and payload change as the migration declares, and each
//! record is re-sealed over its new bytes, chained from the new store's empty head. The records
//! and the command entries, unchanged (positions are kept, so they stay true), go into the new
//! store's log in frames through [`ledger::Store::append_verbatim`] ([`crate::frames`], shared
//! with `migrate run segments`); it checks every record continues the chain and recomputes its
//! hash. The writer thread is not used: it would assign new positions and times. A faulty
//! transform that moves events leaves command entries that fit no frame: they are left out and
//! named, the command tables differ, and the gate refuses.
//!
//! [`compare_logs`] then walks both logs in lockstep and proves: every event is there, in the same
//! order, with the same envelope, and decodes to the same domain event (a legacy version decodes
//! upcast, so the upcast mapping is checked as "identity on every v1 field, JPY, no category");
//! the codec and schema version are what was declared; the command tables are equal.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::Path;

use anyhow::{bail, Context};
use ledger::domain::{Currency, DomainEvent, PaidV1, SystemEvent, WalletEvent, LEGACY_TYPES};
use ledger::log::{self, tables};
use ledger::record::EventRecord;
use ledger::{Codec, Hash, Position, Snapshot, Store};

use crate::faults::{self, MigrateFaults};
use crate::frames;
use crate::migrate::Kind;

/// Events per write batch and per read.
const CHUNK_EVENTS: usize = 8_192;
/// Mismatches described; the rest are counted.
const MAX_MISMATCHES: usize = 50;

/// What the copy did.
#[derive(Clone, Debug, Default)]
pub struct CopyStats {
    /// Records read from the source.
    pub events_read: u64,
    /// Records written to the new store.
    pub events_written: u64,
    /// Records whose codec, schema version or payload changed.
    pub events_rewritten: u64,
    /// Command entries copied.
    pub commands_copied: u64,
    /// Command entries of the source that fit no frame of the new log, left out (a transform
    /// that moved events), one line each up to a limit ([`frames::Written::unplaced`]).
    pub unplaced_commands: Vec<String>,
    /// Source records by (type, version).
    pub by_type: BTreeMap<(String, u16), u64>,
}

/// The payload of one record in the target encoding and schema.
fn transform(kind: Kind, r: &EventRecord) -> anyhow::Result<(Codec, u16, Vec<u8>)> {
    let legacy = LEGACY_TYPES.contains(&(r.event_type.as_str(), r.schema_version));
    match kind {
        Kind::Upcast if legacy => {
            let event = decode_domain(r)?;
            Ok((r.codec, event.schema_version(), event.encode(r.codec)?))
        }
        Kind::Downcast if is_paid_after_v1(r) => {
            let DomainEvent::Wallet(WalletEvent::Paid(p)) = decode_domain(r)? else {
                bail!(
                    "position {}: wallet.paid v{} does not decode as a payment",
                    r.position,
                    r.schema_version
                );
            };
            if p.currency != Currency::JPY || p.merchant_category.is_some() || p.device.is_some() {
                bail!(
                    "position {} ({}): payment {} has currency {}, category {:?} and device {:?}, which v1 cannot hold; refusing to downcast",
                    r.position, r.stream, p.payment, p.currency, p.merchant_category.map(u16::from), p.device
                );
            }
            let v1 = PaidV1 {
                payment: p.payment,
                amount: p.amount,
                merchant: p.merchant,
            };
            Ok((r.codec, 1, r.codec.encode(&v1)?))
        }
        Kind::Upcast | Kind::Downcast | Kind::ResetCredentials | Kind::Rows | Kind::Segments => {
            Ok((r.codec, r.schema_version, r.payload.clone()))
        }
        Kind::Recode => {
            let to = Codec::Postcard;
            let payload = if legacy {
                // Kept at its version: recode changes the encoding only.
                reencode_legacy(r, to)?
            } else if let Some(system) =
                SystemEvent::decode(&r.event_type, r.schema_version, r.codec, &r.payload)
            {
                system?.encode(to)?
            } else {
                decode_domain(r)?.encode(to)?
            };
            Ok((to, r.schema_version, payload))
        }
    }
}

/// A payment of a version the `downcast` migration turns into v1 (v2, or v3 without a device).
fn is_paid_after_v1(r: &EventRecord) -> bool {
    r.event_type == "wallet.paid" && (r.schema_version == 2 || r.schema_version == 3)
}

/// A legacy payload re-encoded with `to` at its own version (the struct of that version).
fn reencode_legacy(r: &EventRecord, to: Codec) -> anyhow::Result<Vec<u8>> {
    use ledger::domain::{
        CouponRedeemedV1, MilesRedeemedV1, PaidV2, PasswordResetV1, TransferredOutV1,
    };
    let from = r.codec;
    let p = &r.payload;
    Ok(match (r.event_type.as_str(), r.schema_version) {
        ("wallet.paid", 1) => to.encode(&from.decode::<PaidV1>(p)?)?,
        ("wallet.paid", 2) => to.encode(&from.decode::<PaidV2>(p)?)?,
        ("wallet.transferred_out", 1) => to.encode(&from.decode::<TransferredOutV1>(p)?)?,
        ("wallet.miles_redeemed", 1) => to.encode(&from.decode::<MilesRedeemedV1>(p)?)?,
        ("wallet.coupon_redeemed", 1) => to.encode(&from.decode::<CouponRedeemedV1>(p)?)?,
        ("identity.password_reset", 1) => to.encode(&from.decode::<PasswordResetV1>(p)?)?,
        (t, v) => bail!(
            "position {}: legacy {t} v{v} has no re-encoding",
            r.position
        ),
    })
}

/// Decodes with the record's command id, which the `identity.password_reset` v1 -> v2 upcast
/// reads (an operator reset is known by it).
fn decode_domain(r: &EventRecord) -> anyhow::Result<DomainEvent> {
    DomainEvent::decode_record(&r.as_view())
        .with_context(|| format!("event at position {} ({})", r.position, r.stream))
}

/// Copies the source log into `target` (an empty store), transformed, in frames
/// ([`frames::write_log`], `order_path` its scratch file). See the module doc.
pub fn copy_transform(
    src: &dyn Snapshot,
    target: &Store,
    order_path: &Path,
    kind: Kind,
    faults: &MigrateFaults,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<CopyStats> {
    if log::read_head(&*target.snapshot()?)?.0.position.0 != 0 {
        bail!("the migration target is not empty");
    }
    let plan = faults::plan(src, faults)?;
    let mut stats = CopyStats::default();
    let mut prev = Hash::GENESIS;
    let mut shift = 0u64;
    let records = frames::records(src).filter_map(|r| {
        let r = match r {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        stats.events_read += 1;
        progress(stats.events_read);
        *stats
            .by_type
            .entry((r.event_type.clone(), r.schema_version))
            .or_default() += 1;
        let (codec, schema_version, payload) = match transform(kind, &r) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let rewritten =
            codec != r.codec || schema_version != r.schema_version || payload != r.payload;
        let mut out = r;
        out.codec = codec;
        out.schema_version = schema_version;
        out.payload = payload;
        let mut out = match faults::apply(&plan, out) {
            Ok(Some(out)) => out,
            Ok(None) => {
                shift += 1;
                return None;
            }
            Err(e) => return Some(Err(e)),
        };
        // Re-sealed over the new bytes, chained from the new store's head.
        out.position = Position(out.position.0 - shift);
        out.prev_hash = prev;
        out.seal();
        prev = out.hash;
        stats.events_rewritten += u64::from(rewritten);
        stats.events_written += 1;
        Some(Ok(out))
    });
    let written = frames::write_log(src, records, target, order_path, frames::FRAME_EVENTS)?;
    debug_assert_eq!(written.events, stats.events_written);
    stats.commands_copied = written.commands;
    stats.unplaced_commands = written.unplaced;
    Ok(stats)
}

/// The lockstep comparison's findings.
#[derive(Clone, Debug, Default)]
pub struct LogCompare {
    /// Events compared.
    pub events_compared: u64,
    /// Source and target event counts.
    pub source_events: u64,
    /// Events in the target.
    pub target_events: u64,
    /// What differs (at most [`MAX_MISMATCHES`] lines, then a count).
    pub failures: Vec<String>,
    /// Members whose stream has a differing event.
    pub members: BTreeSet<String>,
    /// Command entries compared.
    pub commands_compared: u64,
}

impl LogCompare {
    fn fail(&mut self, line: String, stream: &str) {
        if let Some((_, m)) = ledger::domain::member_of_stream(stream) {
            if self.members.len() < MAX_MISMATCHES {
                self.members.insert(m.to_string());
            }
        }
        if self.failures.len() < MAX_MISMATCHES {
            self.failures.push(line);
        } else if self.failures.len() == MAX_MISMATCHES {
            self.failures
                .push("... (further differences omitted)".into());
        }
    }
}

/// A record decoded for comparison: domain and system events, or the decode error.
fn decoded(r: &EventRecord) -> Result<String, String> {
    if let Some(s) = SystemEvent::decode(&r.event_type, r.schema_version, r.codec, &r.payload) {
        return s.map(|e| format!("{e:?}")).map_err(|e| e.to_string());
    }
    DomainEvent::decode_record(&r.as_view())
        .map(|e| format!("{e:?}"))
        .map_err(|e| e.to_string())
}

/// What the target's codec and schema version must be for a source record.
fn declared(kind: Kind, s: &EventRecord) -> (Codec, u16) {
    let legacy = LEGACY_TYPES.contains(&(s.event_type.as_str(), s.schema_version));
    match kind {
        Kind::Upcast if legacy => {
            let current = DomainEvent::decode(&s.event_type, s.schema_version, s.codec, &s.payload)
                .map_or(s.schema_version, |e| e.schema_version());
            (s.codec, current)
        }
        Kind::Downcast if is_paid_after_v1(s) => (s.codec, 1),
        Kind::Upcast | Kind::Downcast | Kind::ResetCredentials | Kind::Rows | Kind::Segments => {
            (s.codec, s.schema_version)
        }
        Kind::Recode => (Codec::Postcard, s.schema_version),
    }
}

/// Compares the two logs position by position, and the command tables. See the module doc.
pub fn compare_logs(
    src: &dyn Snapshot,
    dst: &dyn Snapshot,
    kind: Kind,
) -> anyhow::Result<LogCompare> {
    let mut c = LogCompare {
        source_events: log::read_head(src)?.0.position.0,
        target_events: log::read_head(dst)?.0.position.0,
        ..LogCompare::default()
    };
    if c.source_events != c.target_events {
        c.failures.push(format!(
            "event count differs: source {} events, new store {}",
            c.source_events, c.target_events
        ));
    }
    let mut next = Position(1);
    loop {
        let a = log::read_all(src, next, CHUNK_EVENTS)?;
        let b = log::read_all(dst, next, CHUNK_EVENTS)?;
        let Some(last) = a.last().or(b.last()) else {
            break;
        };
        next = last.position.next();
        for i in 0..a.len().max(b.len()) {
            match (a.get(i), b.get(i)) {
                (Some(s), Some(d)) => compare_one(&mut c, kind, s, d),
                (Some(s), None) => c.fail(
                    format!(
                        "position {} ({} v{}): missing in the new store",
                        s.position, s.stream, s.version
                    ),
                    &s.stream,
                ),
                (None, Some(d)) => c.fail(
                    format!(
                        "position {} ({} v{}): not in the source",
                        d.position, d.stream, d.version
                    ),
                    &d.stream,
                ),
                (None, None) => {}
            }
            c.events_compared += 1;
        }
    }
    compare_commands(&mut c, src, dst)?;
    Ok(c)
}

fn compare_one(c: &mut LogCompare, kind: Kind, s: &EventRecord, d: &EventRecord) {
    let mut diffs = Vec::new();
    if s.position != d.position {
        diffs.push(format!("position {} vs {}", s.position, d.position));
    }
    if s.stream != d.stream || s.version != d.version {
        diffs.push(format!(
            "stream {} v{} vs {} v{}",
            s.stream, s.version, d.stream, d.version
        ));
    }
    if s.event_id != d.event_id {
        diffs.push("event id".into());
    }
    if s.command_id != d.command_id {
        diffs.push("command id".into());
    }
    if s.at != d.at || s.recorded_at != d.recorded_at {
        diffs.push("business or recorded time".into());
    }
    if s.event_type != d.event_type {
        diffs.push(format!("type {} vs {}", s.event_type, d.event_type));
    }
    let (codec, schema) = declared(kind, s);
    if d.codec != codec || d.schema_version != schema {
        diffs.push(format!(
            "codec/schema {:?} v{} where {:?} v{} was declared",
            d.codec, d.schema_version, codec, schema
        ));
    }
    match (decoded(s), decoded(d)) {
        (Ok(x), Ok(y)) if x == y => {}
        (Ok(x), Ok(y)) => diffs.push(format!("event {x} became {y}")),
        (Err(e), _) => diffs.push(format!("source does not decode: {e}")),
        (_, Err(e)) => diffs.push(format!("new store's event does not decode: {e}")),
    }
    if !diffs.is_empty() {
        c.fail(
            format!(
                "position {} ({} v{}): {}",
                s.position,
                s.stream,
                s.version,
                diffs.join("; ")
            ),
            &s.stream,
        );
        if d.stream != s.stream {
            c.fail(
                format!(
                    "position {}: stream {} in the new store",
                    d.position, d.stream
                ),
                &d.stream,
            );
        }
    }
}

fn compare_commands(
    c: &mut LogCompare,
    src: &dyn Snapshot,
    dst: &dyn Snapshot,
) -> anyhow::Result<()> {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let lower = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let a = src.scan(tables::COMMANDS, (lower, Bound::Unbounded), CHUNK_EVENTS)?;
        let b = dst.scan(tables::COMMANDS, (lower, Bound::Unbounded), CHUNK_EVENTS)?;
        if a != b {
            let first = a
                .iter()
                .zip(&b)
                .find(|(x, y)| x != y)
                .map(|(x, _)| String::from_utf8_lossy(&x.0).into_owned())
                .unwrap_or_else(|| "(count)".into());
            c.failures.push(format!(
                "command table differs (first at command id {first})"
            ));
            return Ok(());
        }
        let Some((last, _)) = a.last() else { break };
        after = Some(last.clone());
        c.commands_compared += a.len() as u64;
    }
    Ok(())
}

/// Codec tags and (type, version) pairs of every record.
#[derive(Default)]
pub struct Census {
    /// Records by codec tag.
    pub codecs: BTreeMap<u8, u64>,
    /// Records by (type, version).
    pub types: BTreeMap<(String, u16), u64>,
}

/// One pass over the log counting encodings and schema versions.
pub fn census(snap: &dyn Snapshot) -> anyhow::Result<Census> {
    let mut out = Census::default();
    let mut next = Position(1);
    loop {
        let records = log::read_all(snap, next, CHUNK_EVENTS)?;
        let Some(last) = records.last() else { break };
        next = last.position.next();
        for r in records {
            *out.codecs.entry(r.codec.tag()).or_default() += 1;
            *out.types
                .entry((r.event_type, r.schema_version))
                .or_default() += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use ledger::domain::{IdentityEvent, PasswordResetV1};
    use ledger::{Hash, Position, StreamVersion, Timestamp};

    use super::*;

    /// A stored `identity.password_reset` v1 record with `command_id`.
    fn v1_reset(command_id: &str) -> EventRecord {
        let v1 = PasswordResetV1 {
            reason: Some("7pay".into()),
        };
        EventRecord {
            codec: Codec::Bincode2,
            position: Position(1),
            stream: "identity-m1".into(),
            version: StreamVersion(2),
            event_id: Default::default(),
            command_id: command_id.into(),
            event_type: "identity.password_reset".into(),
            schema_version: 1,
            at: Timestamp(0),
            recorded_at: Timestamp(0),
            payload: Codec::Bincode2.encode(&v1).expect("encodes"),
            prev_hash: Hash::default(),
            hash: Hash::default(),
        }
    }

    // Proves the `upcast` migration turns v1 resets into v2 with `operator` read from the
    // record's command id (true for `reset-credentials`' `reset-<run>-<chunk>`, false for a
    // member's reset), and that the copy's comparison decodes the source the same way (so the
    // upcast compares equal). Planted defect: `decode_domain` without the command id writes
    // `operator: false` for the mass reset, and this fails.
    #[test]
    fn upcast_of_v1_resets_keeps_who_reset() {
        for (id, operator) in [("reset-0193-7", true), ("r1", false)] {
            let source = v1_reset(id);
            let (codec, version, payload) = transform(Kind::Upcast, &source).expect("upcasts");
            assert_eq!((codec, version), (Codec::Bincode2, 2));
            let mut target = source.clone();
            target.schema_version = version;
            target.payload = payload;
            match DomainEvent::decode_record(&target.as_view()).expect("v2 decodes") {
                DomainEvent::Identity(IdentityEvent::PasswordReset(r)) => {
                    assert_eq!(r.operator, operator, "{id}")
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(decoded(&source), decoded(&target), "{id}");
        }
    }

    // Proves `recode` keeps every legacy record at its own version with its own struct (it
    // once decoded every legacy payload as `wallet.paid` v1): a v1 reset becomes postcard v1
    // and reads as the same event. Planted defect: `reencode_legacy` decoding it as `PaidV1`
    // fails the transform.
    #[test]
    fn recode_keeps_a_legacy_reset_at_its_version() {
        let source = v1_reset("reset-0193-7");
        let (codec, version, payload) = transform(Kind::Recode, &source).expect("recodes");
        assert_eq!((codec, version), (Codec::Postcard, 1));
        let mut target = source.clone();
        target.codec = codec;
        target.payload = payload;
        assert_eq!(decoded(&source), decoded(&target));
    }
}
