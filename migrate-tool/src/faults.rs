//! Deliberately faulty operations, for the tests that prove the gates refuse them: a
//! copy-transform that drops, alters or reorders an event (`migrate run NAME --fault F`), a
//! reset that also credits a wallet (`reset-credentials --fault-touch-wallet`) and a
//! compensation that also credits a member the report does not name (`incident compensate
//! --fault-extra-credit`).
//!
//! Why a module of its own: these are test-only switches, and a release binary must not have
//! them. They exist only with the cargo feature `fault-injection`, which the package's own
//! dev-dependency on itself turns on for `cargo test` (the integration tests run the binary
//! cargo builds for them, `CARGO_BIN_EXE_migrate-tool`); `cargo build --release` leaves it off.
//! Without the feature the same names are stand-ins that add no flag and change nothing, so the
//! callers read the same either way. `scripts/check-release-flags` proves a build without the
//! feature rejects the flags.

#[cfg(feature = "fault-injection")]
pub use enabled::{
    apply, extra_credit, plan, top_up_stream, CompensateFaults, MigrateFaults, ResetFaults,
};

#[cfg(not(feature = "fault-injection"))]
pub use disabled::{
    apply, extra_credit, plan, top_up_stream, CompensateFaults, MigrateFaults, ResetFaults,
};

#[cfg(feature = "fault-injection")]
mod enabled {
    use anyhow::{bail, Context};
    use std::collections::BTreeSet;

    use ledger::domain::{
        Command, CommandBody, CommandId, DomainEvent, MemberId, ToppedUp, WalletEvent, Yen,
    };
    use ledger::log;
    use ledger::record::EventRecord;
    use ledger::{ExpectedVersion, Position, Snapshot, StreamAppend, Timestamp};

    /// Events per read while choosing where a fault strikes.
    const CHUNK_EVENTS: usize = 8_192;

    /// A deliberately faulty transform, for tests of the gate (hidden on the command line).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
    pub enum Fault {
        /// Drop one wallet event (later positions close up, as a naive filter would).
        DropOne,
        /// Add one yen to one top-up.
        AlterAmount,
        /// Swap two consecutive events of one wallet stream.
        Reorder,
    }

    /// The hidden flag of `migrate run`.
    #[derive(clap::Args, Debug, Default)]
    pub struct MigrateFaults {
        /// A deliberately faulty transform, for tests of the gate only.
        #[arg(long, hide = true, value_enum)]
        fault: Option<Fault>,
    }

    /// The hidden flag of `reset-credentials`.
    #[derive(clap::Args, Debug, Default)]
    pub struct ResetFaults {
        /// Test only: also credit 1 yen to the first member's wallet, a deliberately faulty
        /// reset that the gate must refuse and roll back.
        #[arg(long, hide = true)]
        fault_touch_wallet: bool,
    }

    /// The hidden flag of `incident compensate`.
    #[derive(clap::Args, Debug, Default)]
    pub struct CompensateFaults {
        /// Test only: also credit 1 yen to the first member (in id order) with a wallet that
        /// the report does not name, a deliberately faulty compensation that the gate must
        /// refuse, naming that member.
        #[arg(long, hide = true)]
        fault_extra_credit: bool,
    }

    /// Where a fault strikes, chosen from the source before the copy.
    #[derive(Default)]
    pub struct FaultPlan {
        drop: Option<u64>,
        alter: Option<u64>,
        swap: Option<(u64, EventRecord, u64, EventRecord)>,
    }

    /// Chooses the event the fault of `faults` (if any) strikes in the log of `snap`.
    pub fn plan(snap: &dyn Snapshot, faults: &MigrateFaults) -> anyhow::Result<FaultPlan> {
        let mut plan = FaultPlan::default();
        let Some(fault) = faults.fault else {
            return Ok(plan);
        };
        let head = log::read_head(snap)?.0.position.0;
        for start in [head / 2 + 1, 1] {
            let mut next = Position(start);
            loop {
                let records = log::read_all(snap, next, CHUNK_EVENTS)?;
                let Some(last) = records.last() else { break };
                next = last.position.next();
                for r in &records {
                    if !r.stream.starts_with(ledger::domain::WALLET_STREAM_PREFIX) {
                        continue;
                    }
                    match fault {
                        Fault::DropOne if r.version.0 > 1 => {
                            plan.drop = Some(r.position.0);
                            return Ok(plan);
                        }
                        Fault::AlterAmount if r.event_type == "wallet.topped_up" => {
                            plan.alter = Some(r.position.0);
                            return Ok(plan);
                        }
                        Fault::Reorder if r.version.0 > 1 => {
                            let later = log::read_stream(
                                snap,
                                &r.stream,
                                ledger::StreamVersion(r.version.0 + 1),
                                1,
                            )?;
                            if let Some(n) = later.into_iter().next() {
                                plan.swap =
                                    Some((r.position.0, n.clone(), n.position.0, r.clone()));
                                return Ok(plan);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        bail!("fault {fault:?}: the store has no event it applies to")
    }

    /// Applies a planned fault to one transformed record; `None` drops it.
    pub fn apply(plan: &FaultPlan, mut r: EventRecord) -> anyhow::Result<Option<EventRecord>> {
        let p = r.position.0;
        if plan.drop == Some(p) {
            return Ok(None);
        }
        if plan.alter == Some(p) {
            let event =
                DomainEvent::decode(&r.event_type, r.schema_version, r.codec, &r.payload)
                    .with_context(|| format!("event at position {} ({})", r.position, r.stream))?;
            if let DomainEvent::Wallet(WalletEvent::ToppedUp(mut e)) = event {
                e.amount.0 += 1;
                r.payload = DomainEvent::Wallet(WalletEvent::ToppedUp(e)).encode(r.codec)?;
            }
        }
        if let Some((a, content_of_b, b, content_of_a)) = &plan.swap {
            let other = if *a == p {
                Some(content_of_b)
            } else if *b == p {
                Some(content_of_a)
            } else {
                None
            };
            if let Some(o) = other {
                r.event_type = o.event_type.clone();
                r.schema_version = o.schema_version;
                r.codec = o.codec;
                r.payload = o.payload.clone();
            }
        }
        Ok(Some(r))
    }

    /// The deliberate fault of `--fault-touch-wallet`, added to the first chunk's append: a
    /// 1-yen top-up of the chunk's first member. `None` without the flag or for other chunks.
    pub fn top_up_stream(
        faults: &ResetFaults,
        chunk: u64,
        members: &[MemberId],
        at: Timestamp,
    ) -> anyhow::Result<Option<StreamAppend>> {
        let (true, 0, Some(member)) = (faults.fault_touch_wallet, chunk, members.first()) else {
            return Ok(None);
        };
        // Built by hand on purpose: it breaks the rule that a reset touches no wallet, which no
        // decision would produce.
        let event = DomainEvent::Wallet(WalletEvent::ToppedUp(ToppedUp { amount: Yen(1) }));
        Ok(Some(StreamAppend {
            stream: ledger::domain::wallet_stream(member),
            expected: ExpectedVersion::Any,
            events: vec![event.to_new_event(at)?],
        }))
    }

    /// The deliberate fault of `--fault-extra-credit`: a 1-yen `top_up`, through the writer
    /// like the compensations, of the first member with a wallet in `snap` not in `named`.
    /// `None` without the flag or when every wallet is named.
    pub fn extra_credit(
        faults: &CompensateFaults,
        snap: &dyn Snapshot,
        named: &BTreeSet<MemberId>,
    ) -> anyhow::Result<Option<Command>> {
        if !faults.fault_extra_credit {
            return Ok(None);
        }
        let mut after: Option<String> = None;
        loop {
            let streams = log::list_streams(
                snap,
                ledger::domain::WALLET_STREAM_PREFIX,
                after.as_deref(),
                CHUNK_EVENTS,
            )?;
            let Some(last) = streams.last() else {
                return Ok(None);
            };
            after = Some(last.clone());
            let member = streams
                .iter()
                .filter_map(|s| ledger::domain::member_of_stream(s).map(|(_, m)| m))
                .find(|m| !named.contains(m));
            if let Some(member) = member {
                return Ok(Some(Command {
                    id: CommandId::new("fault-extra-credit")
                        .context("a constant command id is valid")?,
                    at: None,
                    body: CommandBody::TopUp {
                        member,
                        amount: Yen(1),
                    },
                }));
            }
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
mod disabled {
    use std::collections::BTreeSet;

    use ledger::domain::{Command, MemberId};
    use ledger::record::EventRecord;
    use ledger::{Snapshot, StreamAppend, Timestamp};

    /// No flag: a release build has no faulty transform.
    #[derive(clap::Args, Debug, Default)]
    pub struct MigrateFaults {}

    /// No flag: a release build has no faulty reset.
    #[derive(clap::Args, Debug, Default)]
    pub struct ResetFaults {}

    /// No flag: a release build has no faulty compensation.
    #[derive(clap::Args, Debug, Default)]
    pub struct CompensateFaults {}

    /// No extra credit.
    pub fn extra_credit(
        _faults: &CompensateFaults,
        _snap: &dyn Snapshot,
        _named: &BTreeSet<MemberId>,
    ) -> anyhow::Result<Option<Command>> {
        Ok(None)
    }

    /// Nothing to strike.
    pub struct FaultPlan;

    /// Nothing to plan.
    pub fn plan(_snap: &dyn Snapshot, _faults: &MigrateFaults) -> anyhow::Result<FaultPlan> {
        Ok(FaultPlan)
    }

    /// The record as it is.
    pub fn apply(_plan: &FaultPlan, r: EventRecord) -> anyhow::Result<Option<EventRecord>> {
        Ok(Some(r))
    }

    /// No extra stream.
    pub fn top_up_stream(
        _faults: &ResetFaults,
        _chunk: u64,
        _members: &[MemberId],
        _at: Timestamp,
    ) -> anyhow::Result<Option<StreamAppend>> {
        Ok(None)
    }
}
