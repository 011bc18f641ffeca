//! The SPEC section 6 `commands` workload, shared by `bench_wallet commands` (in process,
//! through `WalletService::submit`) and `bench_http` (the same mix through walletd over HTTP,
//! compared with the in-process figure measured in the same run): both must prepare the same
//! members and draw the same commands, or the ratio between them would compare two workloads.
//!
//! - [`prepare_members`]: funded wallets with coupons, appended directly (not timed).
//! - [`ClientMix`]: one client's command source: the SPEC mix (40% pay, 20% top_up, 20%
//!   transfer, 10% earn_miles, 10% redeem_coupon) over the members that client owns.
//! - [`run_in_process`]: `clients` tokio tasks submitting the mix through `WalletService` for a
//!   fixed time.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger::domain::{
    Command, CommandBody, CommandId, CouponId, CouponIssued, DomainEvent, MemberId, Miles,
    ToppedUp, WalletEvent, WalletOpened, Yen,
};
use ledger::{
    AppendRequest, Backend, Create, ExpectedVersion, Ledger, LedgerOptions, NewEvent, StreamAppend,
    Timestamp,
};
use projections::{ProjectionHook, SubmitError, WalletService};
use tokio::task::JoinSet;

use super::rng::Rng;
use crate::procfs;

/// Members per preparation append (one stream each, plus its identity stream in round 0).
pub const PREP_MEMBERS_PER_APPEND: usize = 400;
/// Preparation appends in flight, so the writer can group-commit and generate concurrently.
pub const PREP_IN_FLIGHT: usize = 3;
/// Business time of the generated data: 2019-07-01T00:00:00+09:00 in microseconds.
pub const BASE_AT_US: i64 = 1_561_906_800_000_000;
/// Coupon expiry far in the future, so that `redeem_coupon` at "now" is valid.
pub const FAR_FUTURE_US: i64 = 4_070_908_800_000_000;
pub const DAY_US: i64 = 86_400_000_000;
/// Starting balance of each member in the `commands` workload (the `top_up` maximum).
pub const FUNDING_YEN: u64 = 100_000_000;
/// Commands/s the coupon supply of [`coupons_for`] is sized for.
const COUPON_RATE_PER_S: f64 = 100_000.0;
pub const MERCHANTS: &[&str] = &[
    "7-Eleven Shinjuku 3-chome",
    "Ito-Yokado Omori",
    "Loft Shibuya",
];

/// Member `index` of a generated store: `m` and 8 digits.
pub fn member_id(index: usize) -> MemberId {
    MemberId::new(format!("m{index:08}")).expect("m + 8 digits matches the member id rule")
}

/// Coupon `n` of a member: `cp-N`.
pub fn coupon_id(n: u32) -> CouponId {
    CouponId::new(format!("cp-{n}")).expect("cp-N matches the coupon id rule")
}

/// A generated event as the ledger stores it.
pub fn new_event(event: DomainEvent, at: Timestamp) -> NewEvent {
    event
        .to_new_event(at)
        .expect("generated events always encode")
}

/// A ledger for preparation appends, its views kept current by the projection hook.
pub fn open_prep_ledger(dir: &Path) -> anyhow::Result<Ledger> {
    Ok(Ledger::open(
        dir,
        LedgerOptions {
            create: Create::IfMissing,
            backend: Backend::Redb,
            hooks: vec![Arc::new(ProjectionHook)],
        },
    )?)
}

/// Coupons per member so that `redeem_coupon` (10% of the mix) never runs dry during
/// `seconds` of load at up to 100k commands/s spread over `members`.
pub fn coupons_for(seconds: f64, members: usize) -> u32 {
    ((seconds * COUPON_RATE_PER_S * 0.1) / members as f64)
        .ceil()
        .max(4.0) as u32
}

/// Opens `members` wallets, funds them and issues `coupons` coupons each, as direct appends.
pub async fn prepare_members(dir: &Path, members: usize, coupons: u32) -> anyhow::Result<()> {
    let ledger = open_prep_ledger(dir)?;
    let at = Timestamp(BASE_AT_US);
    let mut appends = PrepAppends::new(&ledger);
    for (n, block) in (0..members).step_by(PREP_MEMBERS_PER_APPEND).enumerate() {
        let end = (block + PREP_MEMBERS_PER_APPEND).min(members);
        let streams = (block..end)
            .map(|m| {
                let member = member_id(m);
                let mut events = vec![
                    WalletEvent::WalletOpened(WalletOpened {
                        member: member.clone(),
                    }),
                    WalletEvent::ToppedUp(ToppedUp {
                        amount: Yen(FUNDING_YEN),
                    }),
                ];
                events.extend((1..=coupons).map(|c| {
                    WalletEvent::CouponIssued(CouponIssued {
                        coupon: coupon_id(c),
                        value: Yen(500),
                        expires_at: Timestamp(FAR_FUTURE_US),
                    })
                }));
                StreamAppend {
                    stream: ledger::domain::wallet_stream(&member),
                    expected: ExpectedVersion::NoStream,
                    events: events
                        .into_iter()
                        .map(|e| new_event(DomainEvent::Wallet(e), at))
                        .collect(),
                }
            })
            .collect();
        let request = AppendRequest {
            command_id: format!("bench-members-{n}"),
            fingerprint: None,
            streams,
        };
        appends.send(request).await?;
    }
    appends.finish().await
}

/// The direct appends that prepare a store, [`PREP_IN_FLIGHT`] at a time, so the writer
/// commits them in groups while the next request is built.
pub struct PrepAppends {
    ledger: Ledger,
    in_flight: JoinSet<Result<ledger::AppendOutcome, ledger::AppendError>>,
}

impl PrepAppends {
    /// No append in flight yet.
    pub fn new(ledger: &Ledger) -> PrepAppends {
        PrepAppends {
            ledger: ledger.clone(),
            in_flight: JoinSet::new(),
        }
    }

    /// Starts `request` once fewer than [`PREP_IN_FLIGHT`] are in flight; an earlier append's
    /// failure is returned here.
    pub async fn send(&mut self, request: AppendRequest) -> anyhow::Result<()> {
        while self.in_flight.len() >= PREP_IN_FLIGHT {
            self.in_flight
                .join_next()
                .await
                .expect("the set holds PREP_IN_FLIGHT appends")??;
        }
        let ledger = self.ledger.clone();
        self.in_flight
            .spawn(async move { ledger.append(request).await });
        Ok(())
    }

    /// Waits for every append in flight; the first failure is returned.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        while let Some(done) = self.in_flight.join_next().await {
            done??;
        }
        Ok(())
    }
}

/// One command of the SPEC section 2 mix.
pub struct Mixed {
    pub body: CommandBody,
    /// Events it appends when applied: 2 for a transfer, else 1 (the raw-append baseline's call).
    pub shape: u8,
    /// A redeem_coupon that found no coupon left and became a top_up of 500 yen.
    pub coupon_fallback: bool,
}

/// The SPEC section 2 command mix of `commands` and `history`: 40% pay, 20% top_up, 20%
/// transfer, 10% earn_miles, 10% redeem_coupon, all by `member`. `to` picks a transfer's
/// receiver; `coupon` the member and coupon to redeem (`None`: none left, a top_up instead).
pub fn mix_command(
    rng: &mut Rng,
    member: MemberId,
    to: impl FnOnce(&mut Rng) -> MemberId,
    coupon: impl FnOnce() -> Option<(MemberId, CouponId)>,
) -> Mixed {
    let roll = rng.below(100);
    let (mut shape, mut coupon_fallback) = (1u8, false);
    let body = match roll {
        0..=39 => CommandBody::Pay {
            member,
            amount: Yen(1 + rng.below(8_000)),
            merchant: MERCHANTS[rng.below(MERCHANTS.len() as u64) as usize].to_owned(),
            device: None,
        },
        40..=59 => CommandBody::TopUp {
            member,
            amount: Yen(500 + rng.below(20_000)),
        },
        60..=79 => {
            shape = 2;
            CommandBody::Transfer {
                from: member,
                to: to(rng),
                amount: Yen(1 + rng.below(3_000)),
                device: None,
            }
        }
        80..=89 => CommandBody::EarnMiles {
            member,
            miles: Miles(10 + rng.below(491)),
            expires_at: Timestamp(Timestamp::now().0 + 30 * DAY_US),
        },
        _ => match coupon() {
            Some((member, coupon)) => CommandBody::RedeemCoupon {
                member,
                coupon,
                device: None,
            },
            None => {
                coupon_fallback = true;
                CommandBody::TopUp {
                    member,
                    amount: Yen(500),
                }
            }
        },
    };
    Mixed {
        body,
        shape,
        coupon_fallback,
    }
}

/// A command with a fresh, time-ordered id (as README asks of clients: the command index grows
/// at its edge).
pub fn new_command(body: CommandBody) -> Command {
    Command {
        id: CommandId::new(uuid::Uuid::now_v7().to_string()).expect("a UUID is short plain text"),
        at: None,
        body,
    }
}

/// One client's command source in the `commands` workload. Client `c` of `clients` owns
/// members `c, c + clients, ...`: its commands are by those members (transfers go to any
/// member), and it alone redeems their coupons, so two clients never race for one coupon.
pub struct ClientMix {
    rng: Rng,
    own: Vec<usize>,
    next_coupon: Vec<u32>,
    members: usize,
    coupons: u32,
    /// Pays and transfers carry the member's [`device_of`] (the `commands-holds` row).
    devices: bool,
}

/// The phone a member's pays and transfers carry when the mix has devices on: the device of
/// the member's new-device `login` in `bench_wallet commands-holds`, so that SPEC section 7's
/// evidence (outgoing value from the device of the credential event) is in the log.
pub fn device_of(member: &MemberId) -> String {
    format!("phone-{}", member.as_str())
}

/// Sets the `device` of a `pay` or `transfer` to its member's [`device_of`]; other commands
/// stay as they are.
fn carry_device(body: &mut CommandBody) {
    match body {
        CommandBody::Pay { member, device, .. } => *device = Some(device_of(member)),
        CommandBody::Transfer { from, device, .. } => *device = Some(device_of(from)),
        _ => {}
    }
}

impl ClientMix {
    /// The source of client `client` of `clients` over `members` members with `coupons`
    /// coupons each (as [`prepare_members`] issued them), seeded from `seed` and the client.
    pub fn new(client: usize, clients: usize, members: usize, coupons: u32, seed: u64) -> Self {
        let own: Vec<usize> = (client..members).step_by(clients).collect();
        ClientMix {
            rng: Rng(seed ^ (client as u64).wrapping_mul(0xd134_2543_de82_ef95)),
            next_coupon: vec![1; own.len()],
            own,
            members,
            coupons,
            devices: false,
        }
    }

    /// The same source, its pays and transfers carrying the member's [`device_of`].
    pub fn with_devices(mut self) -> Self {
        self.devices = true;
        self
    }

    /// The next command of the mix.
    pub fn next_mixed(&mut self) -> Mixed {
        let ClientMix {
            rng,
            own,
            next_coupon,
            members,
            coupons,
            devices,
        } = self;
        let (members, coupons) = (*members, *coupons);
        let slot = rng.below(own.len() as u64) as usize;
        let mut mixed = mix_command(
            rng,
            member_id(own[slot]),
            |rng| {
                let mut to = rng.below(members as u64) as usize;
                if to == own[slot] {
                    to = (to + 1) % members;
                }
                member_id(to)
            },
            || {
                let s = (0..own.len())
                    .map(|k| (slot + k) % own.len())
                    .find(|&s| next_coupon[s] <= coupons)?;
                let coupon = coupon_id(next_coupon[s]);
                next_coupon[s] += 1;
                Some((member_id(own[s]), coupon))
            },
        );
        if *devices {
            carry_device(&mut mixed.body);
        }
        mixed
    }
}

/// What the clients of one `commands` load did.
#[derive(Default)]
pub struct ClientTally {
    pub commands: u64,
    pub events: u64,
    pub rejected: u64,
    pub coupon_fallbacks: u64,
    pub latencies_us: Vec<u64>,
    /// Events per applied call, for the raw-append baseline: 1 or 2 (transfer).
    pub shapes: Vec<u8>,
    pub first_error: Option<String>,
}

impl ClientTally {
    /// Adds another client's tally to this one (the first error seen is kept).
    pub fn merge(&mut self, t: ClientTally) {
        self.commands += t.commands;
        self.events += t.events;
        self.rejected += t.rejected;
        self.coupon_fallbacks += t.coupon_fallbacks;
        self.latencies_us.extend(t.latencies_us);
        self.shapes.extend(t.shapes);
        if self.first_error.is_none() {
            self.first_error = t.first_error;
        }
    }
}

/// One in-process client: the mix through `WalletService::submit` until `stop`. A rule
/// rejection is counted and the client goes on; any other error ends it (and is reported).
pub async fn run_client(service: WalletService, mix: &mut ClientMix, stop: Instant) -> ClientTally {
    let mut tally = ClientTally::default();
    while Instant::now() < stop {
        let mixed = mix.next_mixed();
        if mixed.coupon_fallback {
            tally.coupon_fallbacks += 1;
        }
        let shape = mixed.shape;
        let cmd = new_command(mixed.body);
        let t = Instant::now();
        let result = service.submit(&cmd).await;
        tally.latencies_us.push(t.elapsed().as_micros() as u64);
        tally.commands += 1;
        match result {
            Ok(s) => {
                tally.events += u64::from(s.outcome.count);
                tally.shapes.push(shape);
            }
            Err(e @ SubmitError::Rejected(_)) => {
                tally.rejected += 1;
                tally.first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                tally.first_error.get_or_insert_with(|| e.to_string());
                break;
            }
        }
    }
    tally
}

/// A measured in-process `commands` load.
pub struct InProcess {
    /// Every client's tally; latencies sorted.
    pub tally: ClientTally,
    pub wall: Duration,
    /// This process's CPU over the load, as text (`180% of one core`).
    pub cpu: String,
    /// This process's CPU over the load, as a fraction of one core.
    pub cpu_cores: f64,
    /// Peak RSS during the load, KiB.
    pub peak_rss_kib: Option<u64>,
    /// The views' checkpoint equals the log head after the load.
    pub views_at_head: bool,
}

impl InProcess {
    /// Commands per second (applied and rejected alike, as `bench_wallet` always counted).
    pub fn rate(&self) -> f64 {
        self.tally.commands as f64 / self.wall.as_secs_f64()
    }
}

/// Opens the prepared store in `dir` as a `WalletService` and runs one in-process client per
/// mix for `seconds`; closes the service before returning. The mixes come back, so that a later
/// run goes on where this one stopped (no coupon is redeemed twice).
pub async fn run_in_process(
    dir: &Path,
    mixes: Vec<ClientMix>,
    seconds: f64,
) -> anyhow::Result<(InProcess, Vec<ClientMix>)> {
    let service = WalletService::open(
        dir,
        LedgerOptions {
            create: Create::No,
            backend: Backend::Redb,
            hooks: Vec::new(),
        },
    )?;
    procfs::reset_peak_rss();
    let cpu_before = procfs::process_cpu_ticks();
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(seconds);
    let mut tasks = JoinSet::new();
    for (c, mut mix) in mixes.into_iter().enumerate() {
        let service = service.clone();
        tasks.spawn(async move {
            let tally = run_client(service, &mut mix, stop).await;
            (c, tally, mix)
        });
    }
    let mut tally = ClientTally::default();
    let mut back = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (c, t, mix) = done?;
        tally.merge(t);
        back.push((c, mix));
    }
    let wall = started.elapsed();
    let cpu = procfs::cpu_share_text(cpu_before, wall);
    let cpu_cores = procfs::cpu_fraction(cpu_before, procfs::process_cpu_ticks(), wall);
    let peak_rss_kib = procfs::vm_hwm_kib("self");
    let views_at_head = {
        let snap = service.ledger().snapshot()?;
        projections::views::checkpoint(&*snap)? == service.ledger().head().position
    };
    drop(service);
    tally.latencies_us.sort_unstable();
    back.sort_by_key(|(c, _)| *c);
    Ok((
        InProcess {
            tally,
            wall,
            cpu,
            cpu_cores,
            peak_rss_kib,
            views_at_head,
        },
        back.into_iter().map(|(_, m)| m).collect(),
    ))
}

/// The mixes of `clients` clients over `members` members with `coupons` coupons each.
pub fn client_mixes(clients: usize, members: usize, coupons: u32, seed: u64) -> Vec<ClientMix> {
    (0..clients)
        .map(|c| ClientMix::new(c, clients, members, coupons, seed))
        .collect()
}
