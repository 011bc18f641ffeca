//! Coupon race: concurrent `redeem_coupon` commands through `WalletService::submit` redeem a
//! coupon exactly once, and concurrent resubmissions of one command id apply it exactly once.
//!
//! The service decides on a view read outside the writer and appends with the stream version
//! it read as the expected version; these tests prove that a lost race is retried against fresh
//! state (and then rejected by the rule), never applied twice and never answered with a version
//! conflict.

use std::sync::Arc;

use ledger::domain::{CouponId, CouponStatus};
use ledger::{log, Backend, Position};
use ledger_tests::wallet::{
    assert_applied, assert_not_applied, assert_verifies, at_secs, audit, command, durable_head,
    member, open_service,
};
use ledger_tests::{backends, TestStore};
use projections::{SubmitError, Submitted, WalletService};
use serde_json::json;
use tokio::sync::Barrier;

/// Concurrent submitters per race.
const RACERS: usize = 16;

fn setup(store: &TestStore) -> WalletService {
    let service = open_service(&store.dir(), store.backend);
    let expires = at_secs(86_400).to_rfc3339();
    for line in [
        json!({"id": "open", "type": "open_wallet", "member": "m1", "at": at_secs(0).to_rfc3339()}),
        json!({"id": "issue-c1", "type": "issue_coupon", "member": "m1", "coupon": "c1",
               "value": 500, "expires_at": expires, "at": at_secs(1).to_rfc3339()}),
        json!({"id": "issue-c2", "type": "issue_coupon", "member": "m1", "coupon": "c2",
               "value": 700, "expires_at": expires, "at": at_secs(2).to_rfc3339()}),
    ] {
        let submitted = service
            .submit_blocking(&command(line))
            .expect("setup commands are valid");
        assert!(!submitted.duplicate);
    }
    service
}

/// Runs `RACERS` submits of `commands[i]` at once (all released by one barrier).
fn race(
    service: &WalletService,
    commands: Vec<ledger::domain::Command>,
) -> Vec<Result<Submitted, SubmitError>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let barrier = Arc::new(Barrier::new(commands.len()));
        let tasks: Vec<_> = commands
            .into_iter()
            .map(|cmd| {
                let service = service.clone();
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    service.submit(&cmd).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.expect("a racer task panicked"));
        }
        results
    })
}

fn coupon_redeemed_events(service: &WalletService, coupon: &str) -> Vec<(Position, String)> {
    let snap = service.ledger().snapshot().expect("a snapshot");
    let records = log::read_all(&*snap, Position(1), 10_000).expect("reading the log");
    records
        .into_iter()
        .filter(|r| r.event_type == "wallet.coupon_redeemed")
        .filter(|r| {
            matches!(
                ledger::domain::DomainEvent::decode(&r.event_type, r.schema_version, r.codec, &r.payload),
                Ok(ledger::domain::DomainEvent::Wallet(ledger::domain::WalletEvent::CouponRedeemed(e)))
                    if e.coupon.as_str() == coupon
            )
        })
        .map(|r| (r.position, r.command_id))
        .collect()
}

fn coupon_status(service: &WalletService, coupon: &str) -> CouponStatus {
    let state = service
        .wallet(&member("m1"))
        .expect("reading the view")
        .expect("m1 has a wallet");
    let id = CouponId::new(coupon).expect("a valid coupon id");
    state.coupons()[&id].status
}

fn run_redeem_race(backend: Backend) {
    let store = TestStore::new(backend);
    let service = setup(&store);
    let commands = (0..RACERS)
        .map(|i| {
            command(json!({"id": format!("redeem-{i}"), "type": "redeem_coupon",
                           "member": "m1", "coupon": "c1", "at": at_secs(10).to_rfc3339()}))
        })
        .collect();
    let results = race(&service, commands);
    let mut winners = Vec::new();
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(s) => {
                assert!(!s.duplicate, "redeem-{i} is a fresh id, not a duplicate");
                assert_eq!(s.outcome.count, 1, "a redemption is one event");
                winners.push((i, s.outcome));
            }
            Err(e) => assert_eq!(
                e.to_string(),
                "coupon c1 is not active: redeemed",
                "redeem-{i} lost the race and must be rejected by the rule"
            ),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one redemption succeeds: {winners:?}"
    );
    let (winner, outcome) = winners[0];
    let events = coupon_redeemed_events(&service, "c1");
    assert_eq!(
        events,
        vec![(outcome.first_position, format!("redeem-{winner}"))],
        "the log holds exactly the winner's redemption"
    );
    assert_eq!(coupon_status(&service, "c1"), CouponStatus::Redeemed);
    assert_eq!(
        coupon_status(&service, "c2"),
        CouponStatus::Active,
        "the other coupon is untouched"
    );
    let snap = service.ledger().snapshot().expect("a snapshot");
    assert_applied(
        &*snap,
        &format!("redeem-{winner}"),
        outcome.first_position,
        1,
    );
    for i in (0..RACERS).filter(|i| *i != winner) {
        assert_not_applied(&*snap, &format!("redeem-{i}"));
    }
    let a = audit(&*snap, true, "after the redeem race");
    assert_eq!(
        a.head.position,
        Position(4),
        "3 setup events + 1 redemption"
    );
    assert_verifies(&*snap, a.head, "after the redeem race");
}

fn run_same_id_race(backend: Backend) {
    let store = TestStore::new(backend);
    let service = setup(&store);
    // A conflicting command (redeem_coupon, versioned on m1's stream) and a top_up.
    for (name, line) in [
        (
            "redeem c2",
            json!({"id": "same-redeem", "type": "redeem_coupon", "member": "m1",
                   "coupon": "c2", "at": at_secs(10).to_rfc3339()}),
        ),
        (
            "top_up",
            json!({"id": "same-topup", "type": "top_up", "member": "m1", "amount": 1234,
                   "at": at_secs(11).to_rfc3339()}),
        ),
    ] {
        let head_before = durable_head(&service);
        let cmd = command(line);
        let results = race(&service, vec![cmd.clone(); RACERS]);
        let outcomes: Vec<Submitted> = results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.unwrap_or_else(|e| panic!("{name}: submit {i} of the same id failed: {e}"))
            })
            .collect();
        let fresh: Vec<&Submitted> = outcomes.iter().filter(|s| !s.duplicate).collect();
        assert_eq!(
            fresh.len(),
            1,
            "{name}: exactly one application: {outcomes:?}"
        );
        let applied = fresh[0].outcome;
        assert_eq!(applied.first_position, head_before.position.next());
        assert_eq!(applied.count, 1);
        for s in &outcomes {
            assert_eq!(
                (s.outcome.first_position, s.outcome.count),
                (applied.first_position, applied.count),
                "{name}: every duplicate reports the original positions"
            );
            assert_eq!(s.outcome.duplicate, s.duplicate);
        }
        assert_eq!(
            durable_head(&service).position,
            applied.last_position(),
            "{name}: the 15 duplicates wrote nothing"
        );
        let snap = service.ledger().snapshot().expect("a snapshot");
        assert_applied(&*snap, cmd.id.as_str(), applied.first_position, 1);
    }
    assert_eq!(coupon_status(&service, "c2"), CouponStatus::Redeemed);
    let state = service
        .wallet(&member("m1"))
        .expect("view")
        .expect("wallet");
    assert_eq!(state.balance().0, 1234, "the top_up applied once");
    assert_eq!(coupon_redeemed_events(&service, "c2").len(), 1);
    let snap = service.ledger().snapshot().expect("a snapshot");
    let a = audit(&*snap, true, "after the same-id races");
    assert_verifies(&*snap, a.head, "after the same-id races");
}

#[test]
fn sixteen_concurrent_redemptions_of_one_coupon_redeem_it_exactly_once() {
    // One winner; the 15 losers get the rule's message, write nothing and keep their ids free.
    for backend in backends() {
        run_redeem_race(backend);
    }
}

#[test]
fn one_command_id_submitted_sixteen_times_concurrently_applies_once_with_one_outcome() {
    // Exactly one application; the others are duplicates carrying the same positions.
    for backend in backends() {
        run_same_id_race(backend);
    }
}
