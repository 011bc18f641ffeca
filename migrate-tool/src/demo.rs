//! `demo`: deterministic, realistic activity written into the store through the wallet service.
//!
//! Each member gets `register`, `open_wallet`, then K wallet commands drawn from a seeded
//! splitmix64 generator: top-ups, payments, refunds, transfers, miles earned / redeemed /
//! expired, badges, coupons issued / redeemed / expired, at business times spread over
//! 2019-07-01..2019-07-30 (JST). The generator keeps the member's own state and runs the real
//! `decide` on it, so every command it emits is valid; incoming transfers only raise a balance,
//! so what is valid on the local state is valid on the stored one.
//!
//! Streaming: members are generated and submitted in chunks of [`CHUNK`] (each member's commands
//! in order, members concurrently so the writer group-commits them); nothing per member outlives
//! its chunk, so memory is bounded at any `--members`. Transfers go to a member of an earlier
//! chunk, whose wallet is known to exist. Command ids are `demo-<seed>-<member>-<n>` and every
//! command carries its `at`, so running the same demo again is all duplicates.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use std::collections::HashMap;
use std::sync::Arc;

use ledger::domain::{
    apply_wallet_event, decide, Badge, Command, CommandBody, CommandId, CouponId, CouponStatus,
    DecideInput, DomainEvent, MemberId, Miles, StreamEvents, WalletState, Yen,
};
use ledger::{
    AppendError, AppendRequest, Backend, Create, ExpectedVersion, Ledger, StreamAppend,
    StreamVersion, Timestamp,
};
use tokio::task::JoinSet;

use crate::output::{self, Outcome};

/// Members whose commands are in flight at once (each member's commands in order).
const IN_FLIGHT_MEMBERS: usize = 8_192;
/// Largest `--members` (member ids have eight digits).
const MAX_MEMBERS: u64 = 100_000_000;
/// Largest `--events-per-member`.
const MAX_EVENTS_PER_MEMBER: u32 = 1_000;
/// Rejections printed before only counting.
const MAX_REJECTIONS_SHOWN: u64 = 20;
const SECOND_US: i64 = 1_000_000;
const DAY_US: i64 = 86_400 * SECOND_US;

const MERCHANTS: &[&str] = &[
    "7-Eleven Shinjuku 3-chome",
    "7-Eleven Umeda",
    "7-Eleven Sapporo Odori",
    "Ito-Yokado Omori",
    "Denny's Ginza",
    "Loft Shibuya",
];
const BADGES: &[&str] = &[
    "first-purchase",
    "early-adopter",
    "night-owl",
    "commuter",
    "coffee-lover",
    "big-spender",
];

/// splitmix64: tiny, fast, and good enough for test data; no dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &'a [&'a str]) -> &'a str {
        items[usize::try_from(self.below(items.len() as u64)).unwrap_or(0)]
    }
}

fn member_id(index: u64) -> MemberId {
    MemberId::new(format!("m{index:08}")).expect("m + 8 digits matches the member id rule")
}

/// One member's commands, generated one at a time.
struct Script {
    seed: u64,
    member: MemberId,
    rng: SplitMix,
    state: Option<WalletState>,
    at: Timestamp,
    step_max_us: i64,
    next: u32,
    total: u32,
    /// Members below this index have a wallet for sure (earlier chunks).
    recipients: u64,
}

impl Script {
    fn new(
        seed: u64,
        index: u64,
        per_member: u32,
        recipients: u64,
        window: (Timestamp, Timestamp),
    ) -> Script {
        let mut rng = SplitMix(seed ^ index.wrapping_mul(0xd134_2543_de82_ef95));
        let start = window.0 .0 + i64::try_from(rng.below(3 * 86_400)).unwrap_or(0) * SECOND_US;
        let steps = i64::from(per_member) + 2;
        Script {
            seed,
            member: member_id(index),
            rng,
            state: None,
            at: Timestamp(start),
            step_max_us: ((window.1 .0 - start) / steps).max(SECOND_US),
            next: 0,
            total: per_member + 2,
            recipients,
        }
    }

    fn id(&self) -> CommandId {
        CommandId::new(format!("demo-{}-{}-{}", self.seed, self.member, self.next))
            .expect("demo ids are short plain text")
    }

    /// The next command, already known to be valid, with the events `decide` made of it;
    /// `None` when the member is done.
    fn next_command(&mut self) -> Option<(Command, Vec<StreamEvents>)> {
        if self.next >= self.total {
            return None;
        }
        let steps = u64::try_from(self.step_max_us / SECOND_US).unwrap_or(1);
        self.at = self
            .at
            .plus_seconds(1 + i64::try_from(self.rng.below(steps)).unwrap_or(0));
        let body = match self.next {
            0 => CommandBody::Register {
                member: self.member.clone(),
                login: format!("{}@example.jp", self.member),
            },
            1 => CommandBody::OpenWallet {
                member: self.member.clone(),
            },
            _ => self.wallet_body(),
        };
        let cmd = Command {
            id: self.id(),
            at: Some(self.at),
            body,
        };
        self.next += 1;
        let decided = self.try_apply(&cmd);
        debug_assert!(decided.is_some(), "the generator only emits valid commands");
        decided.map(|events| (cmd, events))
    }

    /// Runs `decide` on the local state and applies the events to it; the decided events, or
    /// `None` if rejected.
    fn try_apply(&mut self, cmd: &Command) -> Option<Vec<StreamEvents>> {
        let recipient_state;
        let mut input = DecideInput::new().with_wallet(self.member.clone(), self.state.as_ref());
        match &cmd.body {
            CommandBody::Transfer { to, .. } => {
                recipient_state = WalletState::new(to.clone());
                input = input.with_wallet(to.clone(), Some(&recipient_state));
            }
            CommandBody::Register { member, .. } => {
                input = input.with_identity(member.clone(), None);
            }
            _ => {}
        }
        let decided = decide(cmd, self.at, &input).ok()?;
        let own = ledger::domain::wallet_stream(&self.member);
        for stream in decided.iter().filter(|s| s.stream == own) {
            for event in &stream.events {
                if let DomainEvent::Wallet(e) = event {
                    // decide guarantees the event applies to the state it was decided on.
                    let _ = apply_wallet_event(&mut self.state, e);
                }
            }
        }
        Some(decided)
    }

    fn wallet_body(&mut self) -> CommandBody {
        let roll = self.rng.below(100);
        let candidate = self.candidate(roll);
        if let Some(body) = candidate {
            let probe = Command {
                id: self.id(),
                at: Some(self.at),
                body: body.clone(),
            };
            // Probe on a copy: `apply` runs again on the real state once the command is final.
            let saved = self.state.clone();
            let ok = self.try_apply(&probe).is_some();
            self.state = saved;
            if ok {
                return body;
            }
        }
        CommandBody::TopUp {
            member: self.member.clone(),
            amount: Yen(100 * (5 + self.rng.below(200))),
        }
    }

    fn balance(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.balance().0)
    }

    fn candidate(&mut self, roll: u64) -> Option<CommandBody> {
        let member = self.member.clone();
        let in_days = |rng: &mut SplitMix, at: Timestamp, max: u64| {
            Timestamp(at.0 + DAY_US * i64::try_from(1 + rng.below(max)).unwrap_or(1))
        };
        Some(match roll {
            0..=21 => return None, // top-up, the fallback
            22..=44 => CommandBody::Pay {
                member,
                amount: Yen(1 + self.rng.below(self.balance().min(8_000))),
                merchant: self.rng.pick(MERCHANTS).to_owned(),
                device: None,
            },
            45..=49 => {
                let state = self.state.as_ref()?;
                let open: Vec<_> = state
                    .payments()
                    .iter()
                    .filter(|(_, p)| p.refunded < p.paid)
                    .collect();
                let (id, p) = open.get(usize::try_from(self.rng.below(open.len() as u64)).ok()?)?;
                CommandBody::Refund {
                    member,
                    payment: (*id).clone(),
                    amount: Yen(1 + self.rng.below(p.paid.0 - p.refunded.0)),
                }
            }
            50..=57 if self.recipients > 0 => CommandBody::Transfer {
                from: member,
                to: member_id(self.rng.below(self.recipients)),
                amount: Yen(1 + self.rng.below(self.balance().min(3_000))),
                device: None,
            },
            58..=69 => CommandBody::EarnMiles {
                member,
                miles: Miles(10 + self.rng.below(491)),
                expires_at: in_days(&mut self.rng, self.at, 20),
            },
            70..=75 => {
                let available = self.state.as_ref()?.miles_available_at(self.at).0;
                CommandBody::RedeemMiles {
                    member,
                    miles: Miles(1 + self.rng.below(available.min(300))),
                    device: None,
                }
            }
            76..=80 => CommandBody::AwardBadge {
                member,
                badge: Badge::new(self.rng.pick(BADGES)).ok()?,
            },
            81..=89 => CommandBody::IssueCoupon {
                member,
                coupon: CouponId::new(format!("cp-{}", self.next)).ok()?,
                value: Yen(50 * self.rng.below(21)),
                expires_at: in_days(&mut self.rng, self.at, 15),
            },
            90..=95 => {
                let at = self.at;
                let state = self.state.as_ref()?;
                let usable: Vec<_> = state
                    .coupons()
                    .iter()
                    .filter(|(_, c)| c.status == CouponStatus::Active && c.expires_at > at)
                    .map(|(id, _)| id.clone())
                    .collect();
                let coupon = usable
                    .get(usize::try_from(self.rng.below(usable.len() as u64)).ok()?)?
                    .clone();
                CommandBody::RedeemCoupon {
                    member,
                    coupon,
                    device: None,
                }
            }
            _ => CommandBody::Expire {
                as_of: self.at,
                member: Some(member),
            },
        })
    }
}

/// Counts of a run.
#[derive(Default)]
struct Tally {
    commands: u64,
    duplicate: u64,
    rejected: u64,
    events: u64,
}

impl Tally {
    fn merge(&mut self, o: &Tally) {
        self.commands += o.commands;
        self.duplicate += o.duplicate;
        self.rejected += o.rejected;
        self.events += o.events;
    }
}

/// `demo --members N [--events-per-member K] [--seed S]`.
pub fn run(
    dir: &Path,
    members: u64,
    per_member: u32,
    seed: u64,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    if members > MAX_MEMBERS {
        bail!("--members must be at most {MAX_MEMBERS}");
    }
    if per_member > MAX_EVENTS_PER_MEMBER {
        bail!("--events-per-member must be at most {MAX_EVENTS_PER_MEMBER}");
    }
    let window = (
        Timestamp::parse_rfc3339("2019-07-01T00:00:00+09:00").expect("valid constant time"),
        Timestamp::parse_rfc3339("2019-07-30T00:00:00+09:00").expect("valid constant time"),
    );
    let started = Instant::now();
    let engine = ledger::store::open_engine(dir, Create::IfMissing, Backend::Redb)?;
    // Bring views up to date first (a crashed earlier run), so the rebuild below is the only
    // view work and the hook-free writer below is safe.
    if !projections::rebuild::views_current(&*engine)? {
        projections::rebuild(&*engine, &mut |_| {})?;
    }
    let ledger = Ledger::with_engine(Arc::clone(&engine), Vec::new())?;
    let runtime = output::runtime()?;
    let bar = output::progress(Some(members), "demo: members");
    let mut tally = Tally::default();
    runtime.block_on(async {
        let mut tasks = JoinSet::new();
        for index in 0..members {
            while tasks.len() >= IN_FLIGHT_MEMBERS {
                if let Some(done) = tasks.join_next().await {
                    absorb(&mut tally, done??, &bar);
                }
            }
            // Transfers go to members at least IN_FLIGHT_MEMBERS back: their wallets are open.
            let recipients = index.saturating_sub(IN_FLIGHT_MEMBERS as u64);
            let script = Script::new(seed, index, per_member, recipients, window);
            tasks.spawn(run_member(ledger.clone(), script));
        }
        while let Some(done) = tasks.join_next().await {
            absorb(&mut tally, done??, &bar);
        }
        anyhow::Ok(())
    })?;
    bar.finish_and_clear();
    drop(ledger);
    let appended = started.elapsed().as_secs_f64();
    let bar = output::progress(None, "demo: views");
    let rebuilt = projections::rebuild(&*engine, &mut |n| bar.set_position(n))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    writeln!(
        out,
        "demo seed {seed}: members {members}, commands {} ({} duplicate, {} rejected), events {}, elapsed {seconds:.1} s ({appended:.1} s appending, {:.1} s building views), {:.0} events/s",
        tally.commands,
        tally.duplicate,
        tally.rejected,
        tally.events,
        rebuilt.elapsed.as_secs_f64(),
        tally.events as f64 / seconds.max(1e-9)
    )?;
    Ok(Outcome::from_ok(tally.rejected == 0))
}

fn absorb(
    tally: &mut Tally,
    (member_tally, shown): (Tally, Vec<String>),
    bar: &indicatif::ProgressBar,
) {
    for line in shown {
        if tally.rejected < MAX_REJECTIONS_SHOWN {
            bar.suspend(|| eprintln!("{line}"));
        }
        tally.rejected += 1;
    }
    tally.merge(&member_tally);
    bar.inc(1);
}

/// The append for one decided command: the member's own streams at the versions this script
/// tracked (it is their only writer), other members' wallets (a transfer's recipient) at any.
fn request(
    cmd: &Command,
    decided: Vec<StreamEvents>,
    versions: &mut HashMap<String, u64>,
) -> anyhow::Result<AppendRequest> {
    let at = cmd.at.expect("demo commands carry their business time");
    let mut streams = Vec::with_capacity(decided.len());
    for d in decided {
        let expected = match versions.get_mut(&d.stream) {
            Some(v) => {
                let expected = if *v == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(StreamVersion(*v))
                };
                *v += d.events.len() as u64;
                expected
            }
            None => ExpectedVersion::Any,
        };
        let mut events = Vec::with_capacity(d.events.len());
        for e in &d.events {
            events.push(e.to_new_event(at)?);
        }
        streams.push(StreamAppend {
            stream: d.stream,
            expected,
            events,
        });
    }
    Ok(AppendRequest {
        command_id: cmd.id.as_str().to_owned(),
        fingerprint: Some(cmd.fingerprint()),
        streams,
    })
}

/// Appends one member's commands in order, straight to the ledger (the generator already ran
/// `decide`). Returns its tally and its rejection lines.
async fn run_member(ledger: Ledger, mut script: Script) -> anyhow::Result<(Tally, Vec<String>)> {
    let mut tally = Tally::default();
    let mut rejected = Vec::new();
    let mut versions: HashMap<String, u64> = HashMap::from([
        (ledger::domain::wallet_stream(&script.member), 0),
        (ledger::domain::identity_stream(&script.member), 0),
    ]);
    // On a store that already holds this demo, continue from the stored versions.
    for (stream, v) in versions.iter_mut() {
        *v = ledger.stream_version(stream)?.0;
    }
    while let Some((cmd, decided)) = script.next_command() {
        tally.commands += 1;
        let req = request(&cmd, decided, &mut versions)?;
        match ledger.append(req).await {
            Ok(o) if o.duplicate => tally.duplicate += 1,
            Ok(o) => tally.events += u64::from(o.count),
            Err(
                e @ (AppendError::Storage { .. }
                | AppendError::OutcomeUnknown { .. }
                | AppendError::Hook(_)
                | AppendError::Closed),
            ) => {
                return Err(anyhow::Error::new(e).context(format!("demo command {}", cmd.id)));
            }
            Err(e) => rejected.push(format!("{}: {e}", cmd.id)),
        }
    }
    Ok((tally, rejected))
}
