//! The nightly `expire` without a member (SPEC 2) at scale, killed with SIGKILL in the middle
//! and replayed: a store of 200,000 members with about 160,000 lots and coupons due.
//!
//! What it proves: after the kill and a replay of the same command id, every due item has
//! exactly one expiry event in the whole log (one `wallet.miles_expired` per due lot, carrying
//! the miles the lot had left, one `wallet.coupon_expired` per due coupon, each under the part id
//! `<id>` U+001F `<member>`) and no other item has any; every wallet equals its state before with
//! exactly those items expired (balances, payments, badges, partly redeemed and not-due lots,
//! redeemed and not-due coupons unchanged); the whole-store audit (views == fold, indexes,
//! conservation, digest) and verify pass; the replay recorded the command as done, so a third
//! run is a pure duplicate that writes nothing. Before the kill it also checks that the expiry
//! index counts (`views::due_totals`) agree with the stored wallets.
//!
//! The store is built fast: pre-decided events straight into `append_blocking` in appends of
//! 1,000 members (the most streams one append may hold), folded by the projection hook. The
//! expire runs in a child process (`src/bin/expire_child.rs`), killed once it reported half the
//! due members done; the replay runs in this process.
//!
//! `EXPIRE_CRASH_MEMBERS` sets the member count (default 200,000, the size the issue asks for);
//! each phase's wall time is printed, never asserted.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use ledger::domain::{
    apply_wallet_event, Badge, BadgeAwarded, CommandId, CouponExpired, CouponId, CouponIssued,
    CouponRedeemed, CouponStatus, Currency, DomainEvent, LotId, MemberId, Miles, MilesEarned,
    MilesExpired, MilesRedeemed, Paid, ToppedUp, WalletEvent, WalletOpened, WalletState, Yen,
};
use ledger::{log, Position, Timestamp};
use ledger_tests::child::run_and_kill_when;
use ledger_tests::wallet::{
    append_wallet_events, assert_verifies, at_secs, audit, command, durable_head, member,
    open_service, stored_views,
};
use ledger_tests::TestStore;
use projections::views;
use serde_json::json;

/// Members when `EXPIRE_CRASH_MEMBERS` is not set.
const DEFAULT_MEMBERS: u32 = 200_000;
/// Members per set-up append (`ledger::limits::MAX_STREAMS_PER_APPEND`).
const MEMBERS_PER_APPEND: usize = ledger::limits::MAX_STREAMS_PER_APPEND;
/// The expire's `as_of`, in seconds after 2024-01-01.
const AS_OF_SECS: i64 = 10_000_000;
const DAY_SECS: i64 = 86_400;
/// The command id of the expire.
const ID: &str = "nightly-2024-04-25";

fn members_from_env() -> u32 {
    match std::env::var("EXPIRE_CRASH_MEMBERS") {
        Ok(v) => v.parse().ok().filter(|n| *n >= 2_000).unwrap_or_else(|| {
            panic!("EXPIRE_CRASH_MEMBERS must be an integer >= 2000, got {v:?}")
        }),
        Err(_) => DEFAULT_MEMBERS,
    }
}

fn member_name(i: u32) -> MemberId {
    member(&format!("x{i:06}"))
}

/// `as_of` plus `micros`.
fn as_of_plus(micros: i64) -> Timestamp {
    Timestamp(at_secs(AS_OF_SECS).0 + micros)
}

/// Member `i`'s history: open, top-up, sometimes a payment, a badge and a partial redemption,
/// `i % 3` lots (due or not by `(i + lot) % 2`; due ones at five different times up to and
/// including `as_of`, not-due ones a microsecond or 30 days after it), one coupon for half of the
/// members (due for three in five), and a redeemed coupon past its expiry for one in eleven.
fn history(i: u32) -> Vec<(WalletEvent, Timestamp)> {
    let at = at_secs(100);
    let mut events = vec![
        (
            WalletEvent::WalletOpened(WalletOpened {
                member: member_name(i),
            }),
            at,
        ),
        (
            WalletEvent::ToppedUp(ToppedUp {
                amount: Yen(1_000 + u64::from(i % 997)),
            }),
            at,
        ),
    ];
    if i % 10 == 3 {
        events.push((
            WalletEvent::Paid(Paid {
                payment: CommandId::new(format!("p{i}")).expect("a valid id"),
                amount: Yen(100),
                merchant: "shop".into(),
                currency: Currency::JPY,
                merchant_category: None,
                device: None,
            }),
            at,
        ));
    }
    if i % 4 == 1 {
        events.push((
            WalletEvent::BadgeAwarded(BadgeAwarded {
                badge: Badge::new("loyal").expect("a valid badge"),
            }),
            at,
        ));
    }
    for lot in 1..=(i % 3) {
        let expires_at = if (i + lot) % 2 == 0 {
            as_of_plus(-i64::from((i * 7 + lot) % 5) * DAY_SECS * 1_000_000)
        } else if (i + lot) % 4 == 1 {
            as_of_plus(1)
        } else {
            as_of_plus(30 * DAY_SECS * 1_000_000)
        };
        events.push((
            WalletEvent::MilesEarned(MilesEarned {
                lot: LotId(lot),
                miles: Miles(10 + u64::from(lot)),
                expires_at,
            }),
            at,
        ));
    }
    if i % 7 == 0 && i % 3 > 0 {
        events.push((
            WalletEvent::MilesRedeemed(MilesRedeemed {
                miles: Miles(5),
                consumed: vec![(LotId(1), Miles(5))],
                device: None,
            }),
            at,
        ));
    }
    if (i / 3) % 2 == 0 {
        let expires_at = if i % 5 < 3 {
            as_of_plus(-i64::from(i % 3) * DAY_SECS * 1_000_000)
        } else {
            as_of_plus(10 * DAY_SECS * 1_000_000)
        };
        events.push((
            WalletEvent::CouponIssued(CouponIssued {
                coupon: coupon_id(&format!("k{i}")),
                value: Yen(100),
                expires_at,
            }),
            at,
        ));
    }
    if i % 11 == 0 {
        events.push((
            WalletEvent::CouponIssued(CouponIssued {
                coupon: coupon_id(&format!("r{i}")),
                value: Yen(50),
                expires_at: as_of_plus(-DAY_SECS * 1_000_000),
            }),
            at,
        ));
        events.push((
            WalletEvent::CouponRedeemed(CouponRedeemed {
                coupon: coupon_id(&format!("r{i}")),
                device: None,
            }),
            at_secs(200),
        ));
    }
    events
}

fn coupon_id(name: &str) -> CouponId {
    CouponId::new(name).expect("test coupon ids are valid")
}

/// A due item: a lot (by id) or a coupon of a member.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Item {
    Lot(u32),
    Coupon(String),
}

/// Every lot with miles left and active coupon with `expires_at <= as_of`, from the stored
/// wallets, with the expiry event each must get.
fn due_items(states: &BTreeMap<MemberId, WalletState>) -> BTreeMap<(MemberId, Item), WalletEvent> {
    let as_of = at_secs(AS_OF_SECS);
    let mut due = BTreeMap::new();
    for (m, state) in states {
        for lot in state.lots() {
            if lot.remaining.0 > 0 && lot.expires_at <= as_of {
                let event = WalletEvent::MilesExpired(MilesExpired {
                    lot: lot.lot,
                    miles: lot.remaining,
                });
                due.insert((m.clone(), Item::Lot(lot.lot.0)), event);
            }
        }
        for (id, c) in state.coupons() {
            if c.status == CouponStatus::Active && c.expires_at <= as_of {
                let event = WalletEvent::CouponExpired(CouponExpired { coupon: id.clone() });
                due.insert((m.clone(), Item::Coupon(id.to_string())), event);
            }
        }
    }
    due
}

/// Every expiry event in the whole log, by (member, item), with how many there are of each;
/// checks each carries its member's part id of [`ID`] and that the payload is the one wanted.
fn expiry_events(
    snap: &dyn ledger::Snapshot,
    due: &BTreeMap<(MemberId, Item), WalletEvent>,
) -> BTreeMap<(MemberId, Item), u32> {
    let mut seen = BTreeMap::new();
    let mut from = Position(1);
    loop {
        let records = log::read_all(snap, from, 16_384).expect("reading the log");
        let Some(last) = records.last() else {
            return seen;
        };
        from = last.position.next();
        for r in &records {
            if r.event_type != "wallet.miles_expired" && r.event_type != "wallet.coupon_expired" {
                continue;
            }
            let m = member(r.stream.strip_prefix("wallet-").expect("a wallet stream"));
            assert_eq!(
                r.command_id,
                format!("{ID}\u{1f}{m}"),
                "event {} is its member's part",
                r.position
            );
            let event =
                match DomainEvent::decode(&r.event_type, r.schema_version, r.codec, &r.payload) {
                    Ok(DomainEvent::Wallet(e)) => e,
                    other => panic!("event {}: {other:?}", r.position),
                };
            let item = match &event {
                WalletEvent::MilesExpired(e) => Item::Lot(e.lot.0),
                WalletEvent::CouponExpired(e) => Item::Coupon(e.coupon.to_string()),
                other => panic!("event {}: {other:?}", r.position),
            };
            let key = (m, item);
            if let Some(wanted) = due.get(&key) {
                assert_eq!(&event, wanted, "event {} of {key:?}", r.position);
            }
            *seen.entry(key).or_insert(0u32) += 1;
        }
    }
}

fn expire_line() -> String {
    json!({
        "id": ID, "type": "expire", "as_of": at_secs(AS_OF_SECS).to_rfc3339(),
        "at": as_of_plus(3_600_000_000).to_rfc3339(),
    })
    .to_string()
}

/// Builds the store; returns its head.
fn build(dir: &Path, members: u32) -> Position {
    let service = open_service(dir, ledger::Backend::Redb);
    let ids: Vec<u32> = (0..members).collect();
    for (n, chunk) in ids.chunks(MEMBERS_PER_APPEND).enumerate() {
        let streams = chunk
            .iter()
            .map(|&i| (member_name(i), history(i)))
            .collect();
        append_wallet_events(&service, &format!("history-{n:04}"), streams);
    }
    durable_head(&service).position
}

#[test]
fn a_whole_store_expire_killed_midway_and_replayed_expires_every_due_item_exactly_once() {
    // See the module doc: kill -9 at half the due members, replay the same id, then every due
    // item has exactly one expiry event, everything else is as before, audit and verify pass,
    // and a third run is a pure duplicate.
    let members = members_from_env();
    let store = TestStore::new(ledger::Backend::Redb);
    let dir = store.dir();
    let started = Instant::now();

    let built_head = build(&dir, members);
    let t_build = started.elapsed();
    let engine = projections::open_store(&dir, ledger::Create::No, ledger::Backend::Redb)
        .expect("reopen the built store");
    let snap = engine.snapshot().expect("a snapshot");
    let before = stored_views(&*snap);
    assert_eq!(before.len(), members as usize);
    let due = due_items(&before);
    let due_members = due
        .keys()
        .map(|(m, _)| m)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    let totals = views::due_totals(&*snap, at_secs(AS_OF_SECS)).expect("due totals");
    assert_eq!(
        (totals.members, totals.items),
        (due_members, due.len() as u64),
        "the expiry index counts what the wallets have due"
    );
    drop(snap);
    drop(engine);
    eprintln!(
        "expire crash test: {members} members, {} events, {} items due of {due_members} members; built in {:.1} s",
        built_head.0,
        due.len(),
        t_build.as_secs_f64()
    );

    // The run, killed once it reported half the due members done.
    let line = expire_line();
    let half = due_members / 2;
    let t_kill = Instant::now();
    let lines = run_and_kill_when(
        Path::new(env!("CARGO_BIN_EXE_expire_child")),
        [dir.as_os_str(), std::ffi::OsStr::new(&line)],
        &store.tmp_path().join("child-stderr"),
        |l| {
            l.strip_prefix("done ")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= half)
        },
    );
    let t_kill = t_kill.elapsed();
    assert!(
        !lines.iter().any(|l| l.starts_with("finished")),
        "the child finished before the kill: {lines:?}"
    );

    let engine = projections::open_store(&dir, ledger::Create::No, ledger::Backend::Redb)
        .expect("reopen after the kill");
    let snap = engine.snapshot().expect("a snapshot");
    let (killed_head, _) = log::read_head(&*snap).expect("the head");
    let written_by_kill = killed_head.position.0 - built_head.0;
    assert!(
        written_by_kill >= half && written_by_kill < due.len() as u64,
        "the kill landed in the middle: {written_by_kill} of {} events written",
        due.len()
    );
    assert_eq!(
        views::checkpoint(&*snap).expect("checkpoint"),
        killed_head.position,
        "the views are at the head after the kill"
    );
    assert_eq!(
        log::command_entry(&*snap, ID).expect("commands index"),
        None,
        "the killed run did not record the command as done"
    );
    drop(snap);
    drop(engine);

    // The replay of the same id finishes it.
    let t_replay = Instant::now();
    let service = open_service(&dir, ledger::Backend::Redb);
    let cmd = command(serde_json::from_str(&line).expect("the line is JSON"));
    let replay = service
        .expire_all_blocking(&cmd, cmd.at.expect("carries at"), &mut |_| {})
        .expect("the replay finishes");
    let t_replay = t_replay.elapsed();
    assert!(!replay.duplicate);
    assert_eq!(
        (
            replay.outcome.first_position,
            u64::from(replay.outcome.count)
        ),
        (
            killed_head.position.next(),
            due.len() as u64 - written_by_kill
        ),
        "the replay writes exactly what the killed run had not"
    );
    let done_head = durable_head(&service);
    assert_eq!(done_head.position.0, built_head.0 + due.len() as u64);

    // A third run is a pure duplicate.
    let third = service.submit_blocking(&cmd).expect("a third run");
    assert!(third.duplicate, "the replay recorded the command as done");
    assert_eq!(third.outcome.count, 0);
    assert_eq!(
        durable_head(&service),
        done_head,
        "a duplicate writes nothing"
    );

    // Every due item exactly once, nothing else; every wallet as before but for those.
    let t_check = Instant::now();
    let snap = service.ledger().snapshot().expect("a snapshot");
    let seen = expiry_events(&*snap, &due);
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).take(5).collect();
    assert!(twice.is_empty(), "items expired more than once: {twice:?}");
    let missing: Vec<_> = due
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "due items not expired: {missing:?}");
    let extra: Vec<_> = seen
        .keys()
        .filter(|k| !due.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        extra.is_empty(),
        "items expired that were not due: {extra:?}"
    );
    assert_eq!(seen.len(), due.len());

    let mut expected = before;
    for ((m, _), event) in &due {
        let mut state = expected.remove(m);
        apply_wallet_event(&mut state, event).expect("a due item expires");
        expected.insert(m.clone(), state.expect("the wallet exists"));
    }
    let a = audit(&*snap, true, "after the replay");
    assert_eq!(a.head, done_head);
    if a.states != expected {
        let first = expected
            .iter()
            .find(|(m, s)| a.states.get(*m) != Some(*s))
            .map(|(m, _)| m.clone());
        panic!("wallets differ from before + the due expiries, first {first:?}");
    }
    assert_verifies(&*snap, done_head, "after the replay");
    eprintln!(
        "expire crash test: killed after {written_by_kill} events in {:.1} s, replay wrote {} in {:.1} s, checks {:.1} s, total {:.1} s",
        t_kill.as_secs_f64(),
        replay.outcome.count,
        t_replay.as_secs_f64(),
        t_check.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
