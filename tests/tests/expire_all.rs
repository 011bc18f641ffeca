//! `expire` without a member (SPEC 2) through `WalletService`, in the two corners where the
//! first version of `expire_all` went wrong, and the command-id bound its part ids rely on:
//!
//! - a member with more due lots and coupons than one append may hold
//!   (`ledger::limits::MAX_EVENTS_PER_APPEND`): the first version decided them all into one
//!   append, which the writer refused, so the nightly job failed at that member on every run.
//!   Now the member's part is a chain of full appends (`ledger::ExpirePart`), and a replay after
//!   a kill between two of them finishes the chain.
//! - more members than one round of the expiry index (8,192) whose part is recorded but who
//!   still have something due (a lot earned after their part ran, with an earlier business
//!   time): the first version re-read the index from its start every round, found only those,
//!   made no progress and recorded the command as done without expiring anyone after them.
//! - a client command id of at most 128 characters but more than 128 bytes: the writer planned
//!   it without the byte bound a raw append has, and the log then held a record it cannot read.
//!
//! The state a killed run leaves (some parts recorded, the command not) is made here by
//! submitting parts straight to the writer (`Ledger::submit_blocking` with a `CommandJob` part),
//! which is exactly what the killed run had done; `expire_crash.rs` kills a real process.

use ledger::domain::{
    CommandBody, CouponId, CouponIssued, CouponStatus, LotId, MemberId, Miles, MilesEarned,
    WalletEvent, WalletOpened,
};
use ledger::limits::MAX_EVENTS_PER_APPEND;
use ledger::{log, AppendError, CommandJob, ExpirePart, Position, Timestamp};
use ledger_tests::wallet::{
    append_wallet_events, at_secs, audit, command, durable_head, member, open_service,
};
use ledger_tests::TestStore;
use projections::{SubmitError, WalletService};
use serde_json::json;

/// The `as_of` of every expire here: items with `expires_at` at or before it are due.
const AS_OF_SECS: i64 = 2_000;
/// Business time of the set-up events (before every expiry).
const HISTORY_SECS: i64 = 10;

fn expire_all_command(id: &str) -> ledger::domain::Command {
    command(json!({
        "id": id, "type": "expire", "as_of": at_secs(AS_OF_SECS).to_rfc3339(),
        "at": at_secs(AS_OF_SECS + 1).to_rfc3339(),
    }))
}

fn opened(m: &MemberId) -> (WalletEvent, Timestamp) {
    (
        WalletEvent::WalletOpened(WalletOpened { member: m.clone() }),
        at_secs(HISTORY_SECS),
    )
}

fn lot(id: u32, miles: u64, expires_secs: i64) -> (WalletEvent, Timestamp) {
    (
        WalletEvent::MilesEarned(MilesEarned {
            lot: LotId(id),
            miles: Miles(miles),
            expires_at: at_secs(expires_secs),
        }),
        at_secs(HISTORY_SECS),
    )
}

fn coupon(id: &str, expires_secs: i64) -> (WalletEvent, Timestamp) {
    (
        WalletEvent::CouponIssued(CouponIssued {
            coupon: CouponId::new(id).expect("test coupon ids are valid"),
            value: ledger::domain::Yen(100),
            expires_at: at_secs(expires_secs),
        }),
        at_secs(HISTORY_SECS),
    )
}

/// The stored outcome of command id `id`: (first position, count), panicking if absent.
fn entry(service: &WalletService, id: &str) -> (Position, u32) {
    let snap = service.ledger().snapshot().expect("a snapshot");
    let e = log::command_entry(&*snap, id)
        .expect("reading the commands index")
        .unwrap_or_else(|| panic!("command {id:?} is not recorded"));
    (e.first_position, e.count)
}

fn is_recorded(service: &WalletService, id: &str) -> bool {
    let snap = service.ledger().snapshot().expect("a snapshot");
    log::command_entry(&*snap, id)
        .expect("reading the commands index")
        .is_some()
}

/// One append of `member`'s part of the whole-store expire `cmd`, as a run would submit it.
fn submit_part(
    service: &WalletService,
    cmd: &ledger::domain::Command,
    part: ExpirePart,
) -> ledger::AppendOutcome {
    let at = cmd.at.expect("the test commands carry at");
    service
        .ledger()
        .submit_blocking(CommandJob {
            cmd: cmd.clone(),
            at,
            part: Some(part),
        })
        .unwrap_or_else(|e| panic!("part of {} failed: {e}", cmd.id))
}

#[test]
fn a_member_with_more_due_items_than_one_append_holds_is_expired_by_a_chain_of_appends() {
    // "big" has MAX_EVENTS_PER_APPEND + 2 due lots, 3 due coupons and 2 lots and 1 coupon not
    // due; "small" has 2 due lots. A run killed after big's first append (the 100,000 earliest
    // lots, under `<id>` U+001F `big`) is replayed: big's second append (the 2 latest due lots
    // and the 3 coupons, under `<id>` U+001F `big` U+001F `1`) and small's part are written,
    // every due item is expired exactly once, nothing else changes, and a third run is a
    // duplicate that writes nothing.
    let store = TestStore::new(ledger::Backend::Redb);
    let service = open_service(&store.dir(), store.backend);
    let (big, small) = (member("big"), member("small"));
    let first_due = u32::try_from(MAX_EVENTS_PER_APPEND).expect("the limit fits in u32");
    // Lots 1..=first_due are due at 1000..1049 s, lots first_due+1 and +2 at 1999 s (the latest
    // due, so the first append must leave them), lots +3 and +4 are not due.
    let mut big_events = vec![opened(&big)];
    big_events.extend((1..=first_due).map(|n| lot(n, 10, 1_000 + i64::from(n % 50))));
    big_events.push(lot(first_due + 1, 7, 1_999));
    big_events.push(lot(first_due + 2, 7, AS_OF_SECS));
    big_events.push(lot(first_due + 3, 5, AS_OF_SECS + 1));
    big_events.push(lot(first_due + 4, 5, 5_000));
    big_events.extend(["c1", "c2", "c3"].map(|c| coupon(c, 1_500)));
    big_events.push(coupon("c4", 3_000));
    let rest = big_events.split_off(MAX_EVENTS_PER_APPEND);
    append_wallet_events(&service, "history-1", vec![(big.clone(), big_events)]);
    append_wallet_events(
        &service,
        "history-2",
        vec![
            (big.clone(), rest),
            (
                small.clone(),
                vec![opened(&small), lot(1, 3, 1_200), lot(2, 4, 1_300)],
            ),
        ],
    );
    let cmd = expire_all_command("nightly-big");
    // The killed run: big's first append, nothing else.
    let chunk0 = submit_part(&service, &cmd, ExpirePart::first(big.clone()));
    assert_eq!(
        (chunk0.count as usize, chunk0.duplicate),
        (MAX_EVENTS_PER_APPEND, false)
    );
    let after_kill = durable_head(&service).position;
    let state = service
        .wallet(&big)
        .expect("view")
        .expect("big has a wallet");
    let expired_lots: Vec<u32> = state
        .lots()
        .iter()
        .filter(|l| l.remaining.0 == 0)
        .map(|l| l.lot.0)
        .collect();
    assert_eq!(
        expired_lots,
        (1..=first_due).collect::<Vec<_>>(),
        "the first append takes the earliest due lots"
    );

    // The replay finishes big's chain and small's part.
    let mut members_done = Vec::new();
    let replay = service
        .expire_all_blocking(&cmd, at_secs(AS_OF_SECS + 1), &mut |n| members_done.push(n))
        .expect("the replay finishes the expire");
    assert!(!replay.duplicate);
    assert_eq!(
        (replay.outcome.first_position, replay.outcome.count),
        (after_kill.next(), 2 + 3 + 2),
        "the replay writes big's last 5 items and small's 2"
    );
    assert_eq!(
        members_done,
        vec![1, 2],
        "progress counts members, not appends"
    );
    assert_eq!(
        entry(&service, "nightly-big\u{1f}big"),
        (chunk0.first_position, chunk0.count)
    );
    assert_eq!(entry(&service, "nightly-big\u{1f}big\u{1f}1").1, 5);
    assert_eq!(entry(&service, "nightly-big\u{1f}small").1, 2);
    assert_eq!(entry(&service, "nightly-big").1, 0, "the completion");
    assert!(!is_recorded(&service, "nightly-big\u{1f}big\u{1f}2"));

    let state = service
        .wallet(&big)
        .expect("view")
        .expect("big has a wallet");
    let as_of = at_secs(AS_OF_SECS);
    for l in state.lots() {
        let want = if l.expires_at <= as_of { 0 } else { l.earned.0 };
        assert_eq!(l.remaining.0, want, "lot {} of big", l.lot);
    }
    let statuses: Vec<(String, CouponStatus)> = state
        .coupons()
        .iter()
        .map(|(id, c)| (id.to_string(), c.status))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("c1".to_owned(), CouponStatus::Expired),
            ("c2".to_owned(), CouponStatus::Expired),
            ("c3".to_owned(), CouponStatus::Expired),
            ("c4".to_owned(), CouponStatus::Active),
        ]
    );
    assert_eq!(
        state.miles_outstanding().0,
        5 + 5,
        "only the 2 lots not due are left"
    );
    let small_state = service.wallet(&small).expect("view").expect("a wallet");
    assert_eq!(small_state.miles_outstanding().0, 0);

    // A third run is a pure duplicate.
    let head = durable_head(&service);
    let again = service
        .submit_blocking(&cmd)
        .expect("a replay of a done expire");
    assert!(again.duplicate);
    assert_eq!(again.outcome.count, 0);
    assert_eq!(durable_head(&service), head, "a duplicate writes nothing");
    let snap = service.ledger().snapshot().expect("a snapshot");
    let a = audit(&*snap, true, "after the chain");
    assert_eq!(
        a.totals.miles_expired,
        u128::from(first_due) * 10 + 7 + 7 + 3 + 4
    );
    assert_eq!(a.totals.coupons_expired, 3);
}

#[test]
fn a_whole_store_expire_ends_and_expires_everyone_after_thousands_of_recorded_parts_still_due() {
    // 8,292 members ("a.."), more than one round of the expiry index, had their part recorded
    // by a killed run and then earned a lot due before every other item (business time in the
    // past). 300 members ("z..") were not reached. The replay reads past the recorded parts,
    // expires every "z" member's lot, leaves the "a" members' late lots (due after their part
    // ran: the next expire takes them) and records the command as done.
    const STALE: usize = 8_192 + 100;
    const FRESH: usize = 300;
    let store = TestStore::new(ledger::Backend::Redb);
    let service = open_service(&store.dir(), store.backend);
    let stale: Vec<MemberId> = (0..STALE).map(|i| member(&format!("a{i:05}"))).collect();
    let fresh: Vec<MemberId> = (0..FRESH).map(|i| member(&format!("z{i:03}"))).collect();
    for (n, chunk) in stale.chunks(1_000).enumerate() {
        let streams = chunk
            .iter()
            .map(|m| (m.clone(), vec![opened(m), lot(1, 10, 900)]))
            .collect();
        append_wallet_events(&service, &format!("stale-{n}"), streams);
    }
    let streams = fresh
        .iter()
        .map(|m| (m.clone(), vec![opened(m), lot(1, 20, 1_000)]))
        .collect();
    append_wallet_events(&service, "fresh", streams);
    let cmd = expire_all_command("nightly-stale");
    // The killed run did every "a" member's part (queued in windows, as the service does).
    for chunk in stale.chunks(512) {
        let answers: Vec<_> = chunk
            .iter()
            .map(|m| {
                service
                    .ledger()
                    .queue_command_blocking(CommandJob {
                        cmd: cmd.clone(),
                        at: at_secs(AS_OF_SECS + 1),
                        part: Some(ExpirePart::first(m.clone())),
                    })
                    .expect("queue a part")
            })
            .collect();
        for answer in answers {
            assert_eq!(answer.wait_blocking().expect("a part").count, 1);
        }
    }
    // Then each earned a lot due at 100 s: the first entries of the expiry index.
    for (n, chunk) in stale.chunks(1_000).enumerate() {
        let streams = chunk
            .iter()
            .map(|m| (m.clone(), vec![lot(2, 30, 100)]))
            .collect();
        append_wallet_events(&service, &format!("late-{n}"), streams);
    }
    let before = durable_head(&service).position;

    let replay = service
        .expire_all_blocking(&cmd, at_secs(AS_OF_SECS + 1), &mut |_| {})
        .expect("the replay ends");
    assert_eq!(
        (
            replay.duplicate,
            replay.outcome.first_position,
            replay.outcome.count
        ),
        (false, before.next(), 300),
        "one event per fresh member"
    );
    assert_eq!(entry(&service, "nightly-stale").1, 0, "recorded as done");
    for m in &fresh {
        let state = service.wallet(m).expect("view").expect("a wallet");
        assert_eq!(state.miles_outstanding().0, 0, "{m} was expired");
        assert_eq!(entry(&service, &format!("nightly-stale\u{1f}{m}")).1, 1);
    }
    for m in [&stale[0], &stale[STALE - 1]] {
        let state = service.wallet(m).expect("view").expect("a wallet");
        assert_eq!(
            state.miles_outstanding().0,
            30,
            "{m}'s lot earned after its part ran waits for the next expire"
        );
    }
    let snap = service.ledger().snapshot().expect("a snapshot");
    assert_eq!(
        projections::views::due_count(&*snap, at_secs(AS_OF_SECS)).expect("due count"),
        STALE as u64,
        "only the late lots are still due"
    );
    let a = audit(&*snap, true, "after the replay");
    assert_eq!(
        a.totals.miles_expired,
        (STALE as u128) * 10 + (FRESH as u128) * 20
    );
    drop(snap);
    // The next nightly expire takes the late lots.
    let next = service
        .submit_blocking(&expire_all_command("nightly-stale-2"))
        .expect("the next expire");
    assert_eq!((next.duplicate, next.outcome.count), (false, STALE as u32));
}

#[test]
fn a_client_command_id_over_128_bytes_is_refused_and_the_log_stays_readable() {
    // "あ" is 3 bytes: 50 of them are 50 characters (within the id rule) but 150 bytes, more
    // than a record keeps of a client's id. Before the fix the writer appended it anyway and
    // the store could not be read back; 90 of them (270 bytes) panicked the writer. Both are
    // refused, nothing is written, and the ledger keeps working. A 128-byte id is accepted,
    // also for a whole-store expire, whose part ids add the member.
    let store = TestStore::new(ledger::Backend::Redb);
    let service = open_service(&store.dir(), store.backend);
    for n in [50, 90] {
        let id = "あ".repeat(n);
        let cmd = command(json!({"id": id, "type": "open_wallet", "member": "m1"}));
        let head = durable_head(&service);
        match service.submit_blocking(&cmd) {
            Err(SubmitError::Ledger(e @ AppendError::Invalid { .. })) => assert_eq!(
                e.to_string(),
                format!(
                    "invalid append: command_id: length {} is outside 1..=128 bytes",
                    3 * n
                )
            ),
            other => panic!("a {}-byte id gave {other:?}", 3 * n),
        }
        assert_eq!(durable_head(&service), head, "a refused id writes nothing");
    }
    let long_id = "x".repeat(128);
    let open = command(json!({"id": long_id, "type": "open_wallet", "member": "m1"}));
    assert_eq!(
        service.submit_blocking(&open).expect("open").outcome.count,
        1
    );
    let earn = command(
        json!({"id": "e1", "type": "earn_miles", "member": "m1", "miles": 5,
        "expires_at": at_secs(1_000).to_rfc3339(), "at": at_secs(HISTORY_SECS).to_rfc3339()}),
    );
    service.submit_blocking(&earn).expect("earn");
    let mut expire = expire_all_command("y");
    expire.id = ledger::domain::CommandId::new("y".repeat(128)).expect("128 characters");
    assert!(matches!(
        expire.body,
        CommandBody::Expire { member: None, .. }
    ));
    let done = service
        .submit_blocking(&expire)
        .expect("expire with a 128-byte id");
    assert_eq!(done.outcome.count, 1);
    drop(service);
    // The store reopens (the writer reads the whole head back) and verifies.
    let service = open_service(&store.dir(), store.backend);
    let snap = service.ledger().snapshot().expect("a snapshot");
    let a = audit(&*snap, true, "after the long ids");
    ledger_tests::wallet::assert_verifies(&*snap, a.head, "after the long ids");
    assert_eq!(a.head.position, Position(3));
}

#[test]
fn a_whole_store_expire_reusing_the_id_of_a_killed_run_with_other_content_is_refused_unwritten() {
    // A killed run of id "nightly" with as_of 2,000 s recorded m1's part. The same id with
    // as_of 1,500 s (m1 is not due then, m2 is) is another command: it is refused with the
    // SPEC message before any part is written, and does not use up the id.
    let store = TestStore::new(ledger::Backend::Redb);
    let service = open_service(&store.dir(), store.backend);
    let (m1, m2) = (member("m1"), member("m2"));
    append_wallet_events(
        &service,
        "history",
        vec![
            (m1.clone(), vec![opened(&m1), lot(1, 10, 1_800)]),
            (m2.clone(), vec![opened(&m2), lot(1, 10, 1_000)]),
        ],
    );
    let first = expire_all_command("nightly");
    submit_part(&service, &first, ExpirePart::first(m1.clone()));
    let head = durable_head(&service);
    let other = command(json!({
        "id": "nightly", "type": "expire", "as_of": at_secs(1_500).to_rfc3339(),
        "at": at_secs(AS_OF_SECS + 1).to_rfc3339(),
    }));
    match service.submit_blocking(&other) {
        Err(e @ SubmitError::IdReused { .. }) => assert_eq!(
            e.to_string(),
            "id nightly already used for a different command"
        ),
        got => panic!("the other content under a used id gave {got:?}"),
    }
    assert_eq!(durable_head(&service), head, "nothing written");
    assert!(!is_recorded(&service, "nightly"));
    assert!(!is_recorded(&service, "nightly\u{1f}m2"));
    // The original command finishes under its id.
    let done = service.submit_blocking(&first).expect("the replay");
    assert_eq!((done.duplicate, done.outcome.count), (false, 1), "m2's lot");
}
