//! The wall clock stepping back (issue 13 item 10): NTP, a restored VM or an operator can move it
//! backwards under a running ledger, or between two runs. The ledger reads it through
//! [`ledger::Clock`], which these tests step back by a day.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use ledger::domain::{Command, MemberId};
use ledger::{Backend, Clock, Create, EventRecord, Position, Timestamp};
use ledger_tests::{for_each_backend, TestStore};
use projections::{AsOf, WalletService};

for_each_backend!(ids_stay_ordered_and_nothing_is_refused_when_the_clock_steps_back,);

/// A clock the test sets.
struct TestClock(AtomicI64);

impl TestClock {
    fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

const HOUR_MICROS: i64 = 3_600_000_000;
const DAY_MICROS: i64 = 24 * HOUR_MICROS;

fn service(store: &TestStore, clock: &Arc<TestClock>) -> WalletService {
    let engine = projections::open_store(&store.dir(), Create::IfMissing, store.backend)
        .expect("open the store");
    WalletService::with_engine_and_clock(engine, Vec::new(), Arc::clone(clock) as Arc<dyn Clock>)
        .expect("start the service")
}

/// Applies one JSON command line (without `at`: its business time is the clock's).
fn submit(service: &WalletService, line: &str) {
    let cmd = Command::parse_json_line(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    let done = service
        .submit_blocking(&cmd)
        .unwrap_or_else(|e| panic!("{line} was refused: {e}"));
    assert!(!done.duplicate, "{line}");
}

fn records(service: &WalletService) -> Vec<EventRecord> {
    service
        .ledger()
        .read_all(Position(1), 1_000)
        .expect("read the log")
}

fn rfc3339(t: Timestamp) -> String {
    t.to_rfc3339()
}

fn ids_stay_ordered_and_nothing_is_refused_when_the_clock_steps_back(backend: Backend) {
    // Proves a clock stepping back a day, while the ledger runs and again across a reopen, makes
    // nothing refused and nothing out of order: every command (none gives `at`) is applied; event
    // ids stay unique and strictly increasing with position (the clock's ids are below the
    // previous ones, so the writer carries on from them); recorded and business times follow the
    // clock, backwards too; a coupon expiring after the stepped-back "now" is redeemed; the hash
    // chain verifies, every SPEC 4 invariant holds, and as-of reads by position and by business
    // time give the fold of exactly the events they name. Planted defect: `next_event_id`
    // without its "not above the previous id" rule; the first id after the step was below the
    // one before it and this failed.
    let store = TestStore::new(backend);
    let t0 = Timestamp::parse_rfc3339("2030-01-01T00:00:00Z").expect("time");
    let back = Timestamp(t0.0 - DAY_MICROS);
    let clock = Arc::new(TestClock(AtomicI64::new(t0.0)));
    let member = MemberId::new("m1").expect("member id");
    {
        let service = service(&store, &clock);
        submit(
            &service,
            r#"{"id":"c1","type":"open_wallet","member":"m1"}"#,
        );
        submit(
            &service,
            r#"{"id":"c2","type":"top_up","member":"m1","amount":1000}"#,
        );
        let coupon = format!(
            r#"{{"id":"c3","type":"issue_coupon","member":"m1","coupon":"cp-1","value":100,"expires_at":"{}"}}"#,
            rfc3339(Timestamp(t0.0 + HOUR_MICROS))
        );
        submit(&service, &coupon);
        clock.set(back);
        submit(
            &service,
            r#"{"id":"c4","type":"top_up","member":"m1","amount":500}"#,
        );
        submit(
            &service,
            r#"{"id":"c5","type":"pay","member":"m1","amount":300,"merchant":"shop"}"#,
        );
        submit(
            &service,
            r#"{"id":"c6","type":"redeem_coupon","member":"m1","coupon":"cp-1"}"#,
        );
        // Expires before the first commands' time but after the stepped-back "now": accepted,
        // as the rule is stated against the command's time (README, "Clock").
        let miles = format!(
            r#"{{"id":"c7","type":"earn_miles","member":"m1","miles":50,"expires_at":"{}"}}"#,
            rfc3339(Timestamp(t0.0 - 12 * HOUR_MICROS))
        );
        submit(&service, &miles);

        let log = records(&service);
        assert_eq!(log.len(), 7, "one event per command");
        for pair in log.windows(2) {
            assert!(
                pair[0].event_id < pair[1].event_id,
                "ids out of order at position {}: {} then {}",
                pair[1].position,
                pair[0].event_id,
                pair[1].event_id
            );
        }
        let times: Vec<(i64, i64)> = log.iter().map(|r| (r.at.0, r.recorded_at.0)).collect();
        let mut expected = vec![(t0.0, t0.0); 3];
        expected.extend([(back.0, back.0); 4]);
        assert_eq!(
            times, expected,
            "business and recorded times follow the clock"
        );

        let report = service.ledger().verify(&mut |_| {}).expect("verify");
        assert_eq!(report.failure, None);
        assert_eq!(report.events_checked, 7);
        let check = service.check(&|_| {}).expect("check");
        assert!(check.ok(), "{:?}", check.invariants);

        let now = service
            .wallet(&member)
            .expect("wallet")
            .expect("m1 has a wallet");
        assert_eq!(now.balance().0, 1000 + 500 - 300);
        assert_eq!(
            service
                .wallet_as_of(&member, AsOf::Head)
                .expect("as of the head")
                .as_ref(),
            Some(&now)
        );
        // As of a business time: the events at or before it, in log order. At t0 that is
        // every event (the later ones carry an earlier time); before the step-back time, none.
        assert_eq!(
            service
                .wallet_as_of(&member, AsOf::BusinessTime(t0))
                .expect("as of t0")
                .as_ref(),
            Some(&now)
        );
        assert_eq!(
            service
                .wallet_as_of(&member, AsOf::BusinessTime(Timestamp(back.0 - 1)))
                .expect("as of before everything"),
            None
        );
        // As of a position: the balance after each event.
        let balances: Vec<u64> = (2..=5)
            .map(|p| {
                service
                    .wallet_as_of(&member, AsOf::Position(Position(p)))
                    .expect("as of a position")
                    .expect("a wallet")
                    .balance()
                    .0
            })
            .collect();
        assert_eq!(balances, [1000, 1000, 1500, 1200]);
    }

    // Reopened with the clock another day back: the ids carry on from the last one in the log.
    let last_id = {
        let s = service(&store, &clock);
        records(&s).last().expect("events").event_id
    };
    clock.set(Timestamp(back.0 - DAY_MICROS));
    let service = service(&store, &clock);
    submit(
        &service,
        r#"{"id":"c8","type":"top_up","member":"m1","amount":1}"#,
    );
    let log = records(&service);
    let after = log.last().expect("the new event");
    assert_eq!(after.position, Position(8));
    assert!(
        after.event_id > last_id,
        "{} after {last_id}",
        after.event_id
    );
    assert_eq!(after.recorded_at, Timestamp(back.0 - DAY_MICROS));
    let report = service.ledger().verify(&mut |_| {}).expect("verify");
    assert_eq!(report.failure, None);
    assert_eq!(report.events_checked, 8);
}
