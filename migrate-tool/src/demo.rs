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
//!
//! `--takeover K` and `--new-phones P` add the 7Pay account takeover (SPEC section 7, see
//! [`takeover`]): chosen members get injected commands in their own stream at their business
//! times, decided by the same `decide` on the same local state, and the true answer goes to
//! `<store>.takeover.json`. `--policy HOURS:CAP` first records a `set_policy`; every `decide`
//! then sees the policy and the member's security state (last credential event, yen sent since,
//! devices seen), folded locally exactly as the store folds them, so the real hold rule places
//! the holds. Holds stay pending: nobody confirms or cancels them, and a member with a pending
//! hold draws no `expire` (which would cancel it), so `export` shows what the holds kept.
//! Without `--policy` the demo decides against the policy the store already has in force.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ledger::domain::{
    apply_identity_event, apply_wallet_event, decide, Badge, Command, CommandBody, CommandId,
    CouponId, CouponStatus, DecideInput, DomainEvent, IdentityEvent, IdentityState, MemberId,
    Miles, PolicySet, SecurityRow, StateReader, StreamEvents, WalletEvent, WalletState, Yen,
};
use ledger::{
    AppendError, AppendRequest, Backend, Create, ExpectedVersion, Ledger, Position, StreamAppend,
    StreamVersion, Timestamp,
};
use tokio::task::JoinSet;

use crate::output::{self, Outcome};

mod takeover;

use takeover::{Block, Plan, Sizes, Step, Truth};

/// Members whose commands are in flight at once (each member's commands in order).
const IN_FLIGHT_MEMBERS: usize = 8_192;
/// Largest `--members` (member ids have eight digits).
const MAX_MEMBERS: u64 = 100_000_000;
/// Largest `--events-per-member`.
const MAX_EVENTS_PER_MEMBER: u32 = 1_000;
/// Times one command is sent again after another member's transfer moved its wallet on.
const MAX_VERSION_RETRIES: u32 = 16;
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

/// `demo` arguments (SPEC sections 3 and 7).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of members (m00000000, m00000001, ...).
    #[arg(long)]
    pub members: u64,
    /// Wallet commands per member after register and open_wallet.
    #[arg(long, default_value_t = 8)]
    pub events_per_member: u32,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Takeover victims (SPEC section 7): attackers log in to K members' accounts from their own
    /// devices and addresses in 2019-07-01..04 and spend their money; the true answer goes to
    /// `<store>.takeover.json`.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub takeover: u64,
    /// The attackers' total in yen over all victims [default: 38,615,473 x K / 808, rounded].
    #[arg(long, value_name = "YEN")]
    pub takeover_yen: Option<u64>,
    /// Members (not victims) who log in from a new phone in the same days and pay from it
    /// [default: 4 x K].
    #[arg(long, value_name = "P")]
    pub new_phones: Option<u64>,
    /// Record a `set_policy` first (cool-down hours and cap in yen), so that the hold rule
    /// applies to every command of the demo.
    #[arg(long, value_name = "HOURS:CAP", value_parser = parse_policy)]
    pub policy: Option<PolicySet>,
}

impl Args {
    /// Checks every flag; the error names the flag and its rule. `main` calls it before taking
    /// the store lock, so bad flags write nothing.
    pub fn validate(&self) -> anyhow::Result<Sizes> {
        if self.members > MAX_MEMBERS {
            bail!("--members must be at most {MAX_MEMBERS}");
        }
        if self.events_per_member > MAX_EVENTS_PER_MEMBER {
            bail!("--events-per-member must be at most {MAX_EVENTS_PER_MEMBER}");
        }
        Sizes::new(
            self.members,
            self.takeover,
            self.new_phones,
            self.takeover_yen,
        )
    }
}

/// `--policy HOURS:CAP`, with SPEC section 7's ranges.
fn parse_policy(text: &str) -> Result<PolicySet, String> {
    let rule =
        "expected HOURS:CAP with 0 <= HOURS <= 720 and 0 <= CAP <= 100000000 (yen), e.g. 24:5000";
    let (hours, cap) = text.split_once(':').ok_or_else(|| rule.to_owned())?;
    let hours: u64 = hours.parse().map_err(|_| rule.to_owned())?;
    let cap: u64 = cap.parse().map_err(|_| rule.to_owned())?;
    if hours > ledger::domain::command::MAX_COOLDOWN_HOURS
        || cap > ledger::domain::command::MAX_AMOUNT_YEN
    {
        return Err(rule.to_owned());
    }
    Ok(PolicySet {
        cooldown_hours: hours,
        cooldown_cap: Yen(cap),
    })
}

/// What `decide` reads of one member, kept locally and folded exactly as the store folds it.
#[derive(Clone, Default)]
struct Local {
    wallet: Option<WalletState>,
    identity: Option<IdentityState>,
    /// The security row (SPEC section 7): last credential event and yen sent since.
    security: Option<SecurityRow>,
    /// Devices the member logged in from.
    devices: BTreeSet<String>,
}

/// Who sent a command: the member (or the operator), or an attacker on the member's account.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Origin {
    Member,
    Attacker,
}

/// One member's commands, generated one at a time.
struct Script {
    seed: u64,
    member: MemberId,
    rng: SplitMix,
    local: Local,
    /// The policy in force for every command of the demo.
    policy: Option<PolicySet>,
    at: Timestamp,
    step_max_us: i64,
    /// Commands emitted (the next id's number).
    next: u32,
    /// Ordinary commands emitted, of `total`.
    ordinary: u32,
    total: u32,
    /// Members below this index have a wallet for sure (earlier chunks).
    recipients: u64,
    /// The takeover commands of a chosen member (see [`takeover`]).
    block: Option<Block>,
    /// Inside the block: its commands go out one after another, the member's own pause.
    in_block: bool,
}

impl Script {
    fn new(
        seed: u64,
        index: u64,
        per_member: u32,
        recipients: u64,
        window: (Timestamp, Timestamp),
        plan: Option<(&Plan, Option<PolicySet>)>,
    ) -> Script {
        let mut rng = SplitMix(seed ^ index.wrapping_mul(0xd134_2543_de82_ef95));
        let member = member_id(index);
        let mut start = window.0 .0 + i64::try_from(rng.below(3 * 86_400)).unwrap_or(0) * SECOND_US;
        let block = plan.and_then(|(plan, _)| plan.block(index, &member));
        if let Some(first) = block.as_ref().and_then(Block::first_at) {
            // A chosen member registers and opens the wallet at least two hours before the
            // block (which starts at 04:00 on July 1st at the earliest).
            let before = first.0
                - (2 * 3_600 + i64::try_from(rng.below(22 * 3_600)).unwrap_or(0)) * SECOND_US;
            start = start.min(before).max(window.0 .0);
        }
        let steps = i64::from(per_member) + 2;
        Script {
            seed,
            member,
            rng,
            local: Local::default(),
            policy: plan.and_then(|(_, policy)| policy),
            at: Timestamp(start),
            step_max_us: ((window.1 .0 - start) / steps).max(SECOND_US),
            next: 0,
            ordinary: 0,
            total: per_member + 2,
            recipients,
            block,
            in_block: false,
        }
    }

    fn id(&self) -> CommandId {
        CommandId::new(format!("demo-{}-{}-{}", self.seed, self.member, self.next))
            .expect("demo ids are short plain text")
    }

    /// The next command, already known to be valid, with the events `decide` made of it and who
    /// sent it; `None` when the member is done.
    fn next_command(&mut self) -> Option<(Command, Vec<StreamEvents>, Origin)> {
        loop {
            if self.in_block {
                match self.block.as_mut().and_then(Block::pop) {
                    Some((at, step)) => {
                        self.at = at;
                        if let Some(done) = self.injected(step) {
                            return Some(done);
                        }
                        continue;
                    }
                    None => {
                        self.in_block = false;
                        self.block = None;
                    }
                }
            }
            let block_at = self.block.as_ref().and_then(Block::next_at);
            if self.ordinary >= self.total {
                block_at?;
                self.in_block = true;
                continue;
            }
            let step_s = if self.block.is_some() && self.ordinary < 2 {
                // Register and open quickly: the block must find the wallet open.
                1 + self.rng.below(600)
            } else {
                let steps = u64::try_from(self.step_max_us / SECOND_US).unwrap_or(1);
                1 + self.rng.below(steps)
            };
            let candidate = self.at.plus_seconds(i64::try_from(step_s).unwrap_or(1));
            if self.ordinary >= 2 && block_at.is_some_and(|b| b <= candidate) {
                self.in_block = true;
                continue;
            }
            debug_assert!(block_at.is_none_or(|b| candidate < b));
            self.at = candidate;
            return Some(self.ordinary_command());
        }
    }

    fn ordinary_command(&mut self) -> (Command, Vec<StreamEvents>, Origin) {
        let body = match self.ordinary {
            0 => CommandBody::Register {
                member: self.member.clone(),
                login: format!("{}@example.jp", self.member),
            },
            1 => CommandBody::OpenWallet {
                member: self.member.clone(),
            },
            _ => self.wallet_body(),
        };
        self.ordinary += 1;
        let cmd = self.command(body);
        let decided = self.try_apply(&cmd);
        debug_assert!(decided.is_some(), "the generator only emits valid commands");
        (cmd, decided.unwrap_or_default(), Origin::Member)
    }

    /// A step of the takeover block at `self.at`, decided; `None` when it cannot apply (a phone
    /// payment with nothing available, or a rule refused it: then it is not sent).
    fn injected(&mut self, step: Step) -> Option<(Command, Vec<StreamEvents>, Origin)> {
        let member = self.member.clone();
        let (body, origin) = match step {
            Step::OwnTopUp(amount) => (CommandBody::TopUp { member, amount }, Origin::Member),
            Step::Login {
                device,
                ip,
                attacker,
            } => {
                let origin = if attacker {
                    Origin::Attacker
                } else {
                    Origin::Member
                };
                (CommandBody::Login { member, device, ip }, origin)
            }
            Step::AttackPay {
                amount,
                merchant,
                device,
            } => (
                CommandBody::Pay {
                    member,
                    amount,
                    merchant: merchant.to_owned(),
                    device: Some(device),
                },
                Origin::Attacker,
            ),
            Step::PhonePay { device } => {
                let available = self.available();
                if available == 0 {
                    return None;
                }
                let body = CommandBody::Pay {
                    member,
                    amount: Yen(1 + self.rng.below(available.min(8_000))),
                    merchant: self.rng.pick(MERCHANTS).to_owned(),
                    device: Some(device),
                };
                (body, Origin::Member)
            }
        };
        let cmd = self.command(body);
        let decided = self.try_apply(&cmd)?;
        Some((cmd, decided, origin))
    }

    /// The command with the next id at `self.at`.
    fn command(&mut self, body: CommandBody) -> Command {
        let cmd = Command {
            id: self.id(),
            at: Some(self.at),
            body,
        };
        self.next += 1;
        cmd
    }

    /// Runs `decide` on the local state and folds the events into it; the decided events, or
    /// `None` if rejected.
    fn try_apply(&mut self, cmd: &Command) -> Option<Vec<StreamEvents>> {
        let recipient_state;
        let member = &self.member;
        let mut input = DecideInput::new()
            .with_wallet(member.clone(), self.local.wallet.as_ref())
            .with_identity(member.clone(), self.local.identity.as_ref());
        if let Some(row) = self.local.security {
            input = input.with_security(member.clone(), row);
        }
        for device in &self.local.devices {
            input = input.with_device(member.clone(), device);
        }
        if let Some(policy) = self.policy {
            input = input.with_policy(policy);
        }
        if let CommandBody::Transfer { to, .. } = &cmd.body {
            recipient_state = WalletState::new(to.clone());
            input = input.with_wallet(to.clone(), Some(&recipient_state));
        }
        let decided = decide(cmd, self.at, &input).ok()?;
        self.fold(&decided);
        Some(decided)
    }

    /// Folds the member's own events into the local state, as the store's views do.
    fn fold(&mut self, decided: &[StreamEvents]) {
        let wallet = ledger::domain::wallet_stream(&self.member);
        let identity = ledger::domain::identity_stream(&self.member);
        for stream in decided {
            for event in &stream.events {
                match event {
                    DomainEvent::Wallet(e) if stream.stream == wallet => {
                        // decide guarantees the event applies to the state it was decided on.
                        let _ = apply_wallet_event(&mut self.local.wallet, e);
                        self.local.security = self.local.security.map(|row| row.after_wallet(e));
                    }
                    DomainEvent::Identity(e) if stream.stream == identity => {
                        let _ = apply_identity_event(&mut self.local.identity, e);
                        if let IdentityEvent::LoggedIn(login) = e {
                            self.local.devices.insert(login.device.clone());
                        }
                        // The position is unknown before the append and no rule reads it.
                        self.local.security = SecurityRow::after_identity(
                            self.local.security,
                            e,
                            self.at,
                            Position(0),
                        );
                    }
                    _ => {}
                }
            }
        }
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
            // Probe on a copy: `fold` runs again on the real state once the command is final.
            let saved = self.local.clone();
            let ok = self.try_apply(&probe).is_some();
            self.local = saved;
            if ok {
                return body;
            }
        }
        CommandBody::TopUp {
            member: self.member.clone(),
            amount: Yen(100 * (5 + self.rng.below(200))),
        }
    }

    /// Balance minus held: what `pay` and `transfer` may spend.
    fn available(&self) -> u64 {
        self.local
            .wallet
            .as_ref()
            .map_or(0, |s| s.balance().0.saturating_sub(s.held().0))
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
                amount: Yen(1 + self.rng.below(self.available().min(8_000))),
                merchant: self.rng.pick(MERCHANTS).to_owned(),
                device: None,
            },
            45..=49 => {
                let state = self.local.wallet.as_ref()?;
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
                amount: Yen(1 + self.rng.below(self.available().min(3_000))),
                device: None,
            },
            58..=69 => CommandBody::EarnMiles {
                member,
                miles: Miles(10 + self.rng.below(491)),
                expires_at: in_days(&mut self.rng, self.at, 20),
            },
            70..=75 => {
                let available = self.local.wallet.as_ref()?.miles_available_at(self.at).0;
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
                let state = self.local.wallet.as_ref()?;
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
            // `expire` would cancel a pending hold that is due; holds stay pending in the demo.
            _ if self
                .local
                .wallet
                .as_ref()
                .is_some_and(|w| !w.holds().is_empty()) =>
            {
                return None
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
    /// What the takeover commands did, as appended.
    truth: Truth,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.commands += o.commands;
        self.duplicate += o.duplicate;
        self.rejected += o.rejected;
        self.events += o.events;
        self.truth.merge(o.truth);
    }
}

/// What a command of `member` does for the takeover truth, once appended; `None` when nothing
/// (most commands: no allocation).
fn truth_of(member: &MemberId, decided: &[StreamEvents], origin: Origin) -> Option<Truth> {
    let wallet = ledger::domain::wallet_stream(member);
    let mut truth: Option<Truth> = None;
    for stream in decided {
        let own_wallet = stream.stream == wallet;
        for event in &stream.events {
            match (event, origin) {
                (DomainEvent::Wallet(WalletEvent::Paid(p)), Origin::Attacker) if own_wallet => {
                    let t = truth.get_or_insert_with(Truth::default);
                    t.taken_yen += p.amount.0;
                    t.taken_payments += 1;
                    t.victims = vec![member.clone()];
                }
                (DomainEvent::Wallet(WalletEvent::HoldPlaced(h)), Origin::Attacker)
                    if own_wallet =>
                {
                    let t = truth.get_or_insert_with(Truth::default);
                    t.attack_held_yen += h.amount.0;
                    t.attack_held_payments += 1;
                    t.victims = vec![member.clone()];
                }
                (DomainEvent::Wallet(WalletEvent::HoldPlaced(h)), Origin::Member) if own_wallet => {
                    let t = truth.get_or_insert_with(Truth::default);
                    t.legit_held_yen += h.amount.0;
                    t.legit_held_payments += 1;
                }
                (DomainEvent::Identity(IdentityEvent::LoggedIn(l)), Origin::Member)
                    if l.new_device =>
                {
                    truth.get_or_insert_with(Truth::default).new_phone_members += 1;
                }
                _ => {}
            }
        }
    }
    truth
}

/// `demo --members N [--events-per-member K] [--seed S] [--takeover K ...] [--policy H:C]`.
pub fn run(dir: &Path, args: &Args, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let sizes = args.validate()?;
    let (members, per_member, seed) = (args.members, args.events_per_member, args.seed);
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
    // The policy every decision sees: the one this run records, else the store's in force.
    let stored_policy = {
        let snap = engine.snapshot()?;
        projections::views::Rows::new(&*snap)
            .policy()
            .map_err(|e| anyhow::anyhow!("reading the store's hold policy: {e}"))?
    };
    let policy = args.policy.or(stored_policy);
    let ledger = Ledger::with_engine(Arc::clone(&engine), Vec::new())?;
    let runtime = output::runtime()?;
    let mut tally = Tally::default();
    if let Some(policy) = args.policy {
        runtime.block_on(record_policy(&ledger, seed, policy, &mut tally))?;
    }
    let plan = Arc::new(Plan::new(seed, members, sizes));
    let bar = output::progress(Some(members), "demo: members");
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
            let script = Script::new(
                seed,
                index,
                per_member,
                recipients,
                window,
                Some((&plan, policy)),
            );
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
    if sizes.any() || args.policy.is_some() {
        let doc = tally.truth.document(&plan, policy);
        let path = crate::lock::sibling(dir, ".takeover.json");
        let mut bytes = serde_json::to_vec_pretty(&doc)?;
        bytes.push(b'\n');
        crate::durable::write_file(&path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        for line in tally.truth.summary(policy) {
            writeln!(out, "{line}")?;
        }
        writeln!(out, "the true answer: {}", path.display())?;
    }
    Ok(Outcome::from_ok(tally.rejected == 0))
}

/// Appends the `set_policy` of `--policy` (id `demo-<seed>-policy`, business time
/// 2019-06-30T00:00 JST, before all demo activity); a rerun finds it a duplicate. The same id
/// with other values (a rerun with another `--policy`) is refused: the store's decisions were
/// taken under the first policy.
async fn record_policy(
    ledger: &Ledger,
    seed: u64,
    policy: PolicySet,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let cmd = Command {
        id: CommandId::new(format!("demo-{seed}-policy")).expect("demo ids are short plain text"),
        at: Some(
            Timestamp::parse_rfc3339("2019-06-30T00:00:00+09:00").expect("valid constant time"),
        ),
        body: CommandBody::SetPolicy {
            cooldown_hours: policy.cooldown_hours,
            cooldown_cap: policy.cooldown_cap,
        },
    };
    let at = cmd.at.expect("set just above");
    let decided =
        decide(&cmd, at, &DecideInput::new()).map_err(|e| anyhow::anyhow!("--policy: {e}"))?;
    tally.commands += 1;
    match ledger.append(request(&cmd, &decided, &mut HashMap::new())?).await {
        Ok(o) if o.duplicate => tally.duplicate += 1,
        Ok(o) => tally.events += u64::from(o.count),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "--policy {}:{}: recording set_policy {} (a store holds one demo policy per seed; use a fresh store for another)",
                policy.cooldown_hours, policy.cooldown_cap.0, cmd.id
            )))
        }
    }
    Ok(())
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
    tally.merge(member_tally);
    bar.inc(1);
}

/// The append for one decided command: the member's own streams at the versions this script
/// tracked (it is their only writer), other members' wallets (a transfer's recipient) at any.
fn request(
    cmd: &Command,
    decided: &[StreamEvents],
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
            stream: d.stream.clone(),
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

/// Appends one decided command of a member at the versions the script tracked. Another
/// member's transfer may land in this member's wallet while the script runs (a member with a
/// takeover block takes longer than the members after it, so it can still be running when they
/// pick it as a recipient): then the stream is ahead of the script. Incoming transfers only
/// raise a balance, so the decision stays valid; the script re-reads its versions and sends the
/// same command again, a bounded number of times.
async fn append_own(
    ledger: &Ledger,
    cmd: &Command,
    decided: &[StreamEvents],
    versions: &mut HashMap<String, u64>,
) -> anyhow::Result<Result<ledger::AppendOutcome, AppendError>> {
    let mut tries = 0;
    loop {
        let before = versions.clone();
        let req = request(cmd, decided, versions)?;
        match ledger.append(req).await {
            Err(AppendError::WrongExpectedVersion { stream, .. })
                if tries < MAX_VERSION_RETRIES && before.contains_key(&stream) =>
            {
                tries += 1;
                *versions = before;
                for (stream, v) in versions.iter_mut() {
                    *v = ledger.stream_version(stream)?.0;
                }
            }
            other => return Ok(other),
        }
    }
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
    while let Some((cmd, decided, origin)) = script.next_command() {
        tally.commands += 1;
        // The truth counts what is appended; a duplicate was appended by an earlier run of the
        // same demo, which decided the same.
        let counted = truth_of(&script.member, &decided, origin);
        let appended = match append_own(&ledger, &cmd, &decided, &mut versions).await? {
            Ok(o) if o.duplicate => {
                tally.duplicate += 1;
                true
            }
            Ok(o) => {
                tally.events += u64::from(o.count);
                true
            }
            Err(
                e @ (AppendError::Storage { .. }
                | AppendError::OutcomeUnknown { .. }
                | AppendError::Hook(_)
                | AppendError::Closed),
            ) => {
                return Err(anyhow::Error::new(e).context(format!("demo command {}", cmd.id)));
            }
            Err(e) => {
                rejected.push(format!("{}: {e}", cmd.id));
                false
            }
        };
        if let (true, Some(truth)) = (appended, counted) {
            tally.truth.merge(truth);
        }
    }
    Ok((tally, rejected))
}
