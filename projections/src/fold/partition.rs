//! The partition driver: reads the log in position order, one pass per partition of members,
//! and hands each pass's states to the sink.
//!
//! Why partitions: memory must stay bounded at any member count. A partition is a (modulus,
//! residue) class of a member's hash; the first pass holds everyone. When a pass passes its
//! budget or member cap ([`PassStates::fits`]) it is dropped and its partition split in two.
//!
//! Speed: each record's envelope is parsed as a borrowed
//! [`RecordView`](ledger::record::RecordView) (no allocation); non-wallet streams and members of
//! other partitions are skipped by their stream name before the payload is decoded; states are
//! found through a 4-byte-per-member hash index and sorted once at the end of the pass.
//! [`fold_log_pipelined`] (used by rebuild) also moves the log scan to a second thread.
//!
//! Invariants kept:
//! - Each member is in exactly one partition, and a dropped pass drops its states and sums, so
//!   every member reaches the sink once and every included wallet event is counted once.
//! - Events are folded in log order; a pass stops at the first event past
//!   [`AsOf`](super::AsOf)'s position, and the events it includes are exactly those
//!   [`AsOf::includes_at`](super::AsOf::includes_at) includes.

use ledger::domain::{apply_wallet_event_owned, MemberId};
use ledger::engine::Entry;
use ledger::log::tables as log_tables;
use ledger::record::EventRecord;
use ledger::{Engine, Position, Snapshot, TableChunks};

use super::decode::decode_fast;
use super::pass::{member_key_hash, PassStates};
use super::{EventTotals, FoldOptions, FoldStats, States, CHUNK_EVENTS};
use crate::hook::decode_wallet_event;
use crate::ProjectionError;

/// Chunks the scanner thread of [`fold_log_pipelined`] may read ahead (~2 MiB each).
const SCAN_QUEUE_CHUNKS: usize = 4;

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

/// The events table in chunks of [`CHUNK_EVENTS`], from position 1 to the end of `snap`: raw
/// entries, because the pass parses each envelope without allocating ([`fold_chunks`]).
fn scan_chunks(snap: &dyn Snapshot) -> impl Iterator<Item = Chunk> + '_ {
    TableChunks::new(snap, log_tables::EVENTS, CHUNK_EVENTS).map(|chunk| Ok(chunk?))
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
            if stats.passes == 1 {
                if let Some(tap) = options.tap.as_mut() {
                    tap(&record)?;
                }
            }
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
                Some(event) => {
                    crate::hook::opened_in_own_stream(&record, &event)?;
                    event
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::{AsOf, DEFAULT_HOT_BYTES, DEFAULT_MEMBERS_PER_PASS, DEFAULT_PASS_BYTES};
    use ledger::domain::{Command, WalletState};
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
                device: None,
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
