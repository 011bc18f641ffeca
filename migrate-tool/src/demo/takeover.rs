//! `demo --takeover K`: the 7Pay account takeover replayed inside the demo (SPEC section 7), and
//! the true answer an incident tool must find, written to `<store>.takeover.json`.
//!
//! Why in the demo: the incident tools (`incident victims`, `incident compensate`) and the hold
//! policy must be measured on a log where the answer is known and where the fraud hides among
//! ordinary activity, including the honest look-alike: members who change phones in the same
//! days and pay from the new one.
//!
//! The plan ([`Plan`]) is fixed by the seed before any member is written:
//! - K victims and P new-phone members, distinct, drawn from all members (Floyd's sampling, then
//!   a seeded shuffle: O(K + P) time and memory whatever `--members`).
//! - 24 attacker devices (`atk-` and 12 hex digits) and 12 attacker addresses in TEST-NET-3
//!   (203.0.113.0/24). New-phone members log in from TEST-NET-1 and TEST-NET-2 (192.0.2.0/24,
//!   198.51.100.0/24), never from an attacker address.
//! - The fraudulent total Y split over the victims by seeded weights (each victim's share
//!   between half and one and a half times the average; shares add up to Y exactly).
//!
//! Each chosen member gets a [`Block`] of commands placed in their own stream at business time
//! 2019-07-01 04:00..2019-07-04 22:00 JST. A victim's block: their own `top_up` of exactly their
//! share (no device: the member charging the new wallet) one minute to two hours before the
//! attack, then the attacker's `login` (a device new to the member: a credential event) and one
//! to four `pay` at 7-Eleven stores from that device, minutes to hours apart. Funding each victim
//! just before the attack is what guarantees every fraudulent payment passes the balance rule, so
//! the figure printed is Y. A new-phone member's block: a `login` from `phone-<member>-2`, a
//! `top_up`, and one to three ordinary payments from the new phone, the last by 21:30 JST on
//! July 4th.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use anyhow::bail;
use ledger::domain::command::MAX_AMOUNT_YEN;
use ledger::domain::{MemberId, PolicySet, Yen};
use ledger::Timestamp;
use serde_json::json;

use super::SplitMix;

/// INCIDENT.md: 808 victims lost ¥38,615,473.
const INCIDENT_VICTIMS: u64 = 808;
const INCIDENT_YEN: u64 = 38_615_473;
/// Attacker devices and addresses (a small pool, shared by all victims, as in a credential
/// stuffing run from a few machines).
const ATTACKER_DEVICES: usize = 24;
const ATTACKER_IPS: usize = 12;
/// Largest K + P: the plan keeps one map entry per chosen member.
pub const MAX_CHOSEN: u64 = 10_000_000;
/// Largest average fraudulent yen per victim: a share is at most one and a half times the
/// average, and a victim's funding top-up (one command) must stay within SPEC's 100,000,000 yen.
const MAX_AVERAGE_SHARE_YEN: u64 = MAX_AMOUNT_YEN / 10;
/// Share weights 50..=150: a victim's share is between half and one and a half times the average.
const WEIGHT_MIN: u64 = 50;
const WEIGHT_SPAN: u64 = 101;
const HOUR_S: i64 = 3_600;

const ATTACK_MERCHANTS: &[&str] = &[
    "7-Eleven Shinjuku 3-chome",
    "7-Eleven Ikebukuro West",
    "7-Eleven Akihabara Ekimae",
    "7-Eleven Shibuya Center-gai",
    "7-Eleven Kabukicho 1-chome",
    "7-Eleven Ueno Okachimachi",
];

/// The default fraudulent total for `--takeover K`: INCIDENT.md's figure scaled to K, rounded
/// to the nearest yen (K = 808 gives ¥38,615,473 exactly).
pub fn default_yen(victims: u64) -> u64 {
    let scaled = u128::from(INCIDENT_YEN) * u128::from(victims) + u128::from(INCIDENT_VICTIMS / 2);
    u64::try_from(scaled / u128::from(INCIDENT_VICTIMS)).unwrap_or(u64::MAX)
}

/// The checked sizes of a takeover: K, P and Y.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub victims: u64,
    pub new_phones: u64,
    pub yen: u64,
}

impl Sizes {
    /// Checks the flags against `members`; the error names the flag and the rule.
    pub fn new(
        members: u64,
        victims: u64,
        new_phones: Option<u64>,
        yen: Option<u64>,
    ) -> anyhow::Result<Sizes> {
        if victims > members {
            bail!("--takeover {victims} is more than --members {members}: victims are members");
        }
        let new_phones = match new_phones {
            Some(p) if p > members - victims => bail!(
                "--new-phones {p} is more than the {} members who are not victims (--members {members}, --takeover {victims})",
                members - victims
            ),
            Some(p) => p,
            // 4 K by default, as many as there are when fewer members are left.
            None => victims.saturating_mul(4).min(members - victims),
        };
        if victims + new_phones > MAX_CHOSEN {
            bail!(
                "--takeover {victims} plus --new-phones {new_phones} is more than {MAX_CHOSEN} members"
            );
        }
        let yen = match yen {
            Some(_) if victims == 0 => bail!("--takeover-yen needs --takeover K with K >= 1"),
            Some(y) => y,
            None => default_yen(victims),
        };
        if yen < victims {
            bail!("--takeover-yen {yen} is less than 1 yen per victim ({victims} victims)");
        }
        if yen > victims.saturating_mul(MAX_AVERAGE_SHARE_YEN) {
            bail!(
                "--takeover-yen {yen} is more than {MAX_AVERAGE_SHARE_YEN} yen per victim on average ({victims} victims)"
            );
        }
        Ok(Sizes {
            victims,
            new_phones,
            yen,
        })
    }

    /// Whether the demo has any takeover part.
    pub fn any(&self) -> bool {
        self.victims > 0 || self.new_phones > 0
    }
}

/// What a chosen member does.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// Taken over; the attacker spends this share.
    Victim { share: Yen },
    /// Logs in from a new phone and pays from it.
    NewPhone,
}

/// The takeover fixed by the seed (see the module doc).
pub struct Plan {
    seed: u64,
    roles: HashMap<u64, Role>,
    attacker_devices: Vec<String>,
    attacker_ips: Vec<Ipv4Addr>,
    /// 2019-07-01T06:00 JST: the earliest login of a block.
    first_login: Timestamp,
}

impl Plan {
    /// The plan for `members` members with `sizes`, fixed by `seed`.
    pub fn new(seed: u64, members: u64, sizes: Sizes) -> Plan {
        let mut rng = SplitMix(seed ^ 0x7a4e_0f1c_5eed_7a4e);
        let mut chosen = floyd_sample(&mut rng, members, sizes.victims + sizes.new_phones);
        // Floyd's set is in no useful order: sort, then shuffle by the seed, so that the victims
        // are spread over the member range and the choice depends on the seed only.
        chosen.sort_unstable();
        for i in (1..chosen.len()).rev() {
            let j = usize::try_from(rng.below(i as u64 + 1)).unwrap_or(0);
            chosen.swap(i, j);
        }
        let k = usize::try_from(sizes.victims).expect("K <= MAX_CHOSEN fits in usize");
        let (victims, phones) = chosen.split_at(k);
        let shares = split_exactly(&mut rng, sizes.yen, victims.len());
        let mut roles = HashMap::with_capacity(chosen.len());
        for (index, share) in victims.iter().zip(shares) {
            roles.insert(*index, Role::Victim { share: Yen(share) });
        }
        for index in phones {
            roles.insert(*index, Role::NewPhone);
        }
        let attacker_devices = (0..ATTACKER_DEVICES)
            .map(|_| format!("atk-{:012x}", rng.next() & 0xffff_ffff_ffff))
            .collect();
        let mut octets: Vec<u8> = Vec::with_capacity(ATTACKER_IPS);
        while octets.len() < ATTACKER_IPS {
            let octet = u8::try_from(1 + rng.below(254)).expect("1..=254 fits in u8");
            if !octets.contains(&octet) {
                octets.push(octet);
            }
        }
        let attacker_ips = octets
            .into_iter()
            .map(|o| Ipv4Addr::new(203, 0, 113, o))
            .collect();
        Plan {
            seed,
            roles,
            attacker_devices,
            attacker_ips,
            first_login: Timestamp::parse_rfc3339("2019-07-01T06:00:00+09:00")
                .expect("valid constant time"),
        }
    }

    /// The block of member `index` (with id `member`), or `None` for an ordinary member.
    pub fn block(&self, index: u64, member: &MemberId) -> Option<Block> {
        let role = self.roles.get(&index)?;
        let mut rng = SplitMix(self.seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x51ed);
        // A login in 2019-07-01 06:00 .. 2019-07-04 12:00 JST; the block ends within 10 hours.
        let login_at = self
            .first_login
            .plus_seconds(i64::try_from(rng.below(78 * 3_600)).unwrap_or(0));
        let mut steps = Vec::new();
        match *role {
            Role::Victim { share } => {
                let funded_at = login_at.plus_seconds(-(60 + secs(&mut rng, 7_140)));
                steps.push((funded_at, Step::OwnTopUp(share)));
                let device = self.attacker_devices[pick(&mut rng, ATTACKER_DEVICES)].clone();
                let ip = IpAddr::V4(self.attacker_ips[pick(&mut rng, ATTACKER_IPS)]);
                steps.push((
                    login_at,
                    Step::Login {
                        device: device.clone(),
                        ip,
                        attacker: true,
                    },
                ));
                let payments = (1 + rng.below(4)).min(share.0);
                let mut at = login_at.plus_seconds(60 + secs(&mut rng, 3_540));
                for amount in split_exactly(&mut rng, share.0, payments as usize) {
                    let merchant = ATTACK_MERCHANTS[pick(&mut rng, ATTACK_MERCHANTS.len())];
                    steps.push((
                        at,
                        Step::AttackPay {
                            amount: Yen(amount),
                            merchant,
                            device: device.clone(),
                        },
                    ));
                    at = at.plus_seconds(120 + secs(&mut rng, 3 * HOUR_S - 120));
                }
            }
            Role::NewPhone => {
                let device = format!("phone-{member}-2");
                let net = if rng.below(2) == 0 {
                    [198, 51, 100]
                } else {
                    [192, 0, 2]
                };
                let host = u8::try_from(1 + rng.below(254)).expect("1..=254 fits in u8");
                let ip = IpAddr::V4(Ipv4Addr::new(net[0], net[1], net[2], host));
                steps.push((
                    login_at,
                    Step::Login {
                        device: device.clone(),
                        ip,
                        attacker: false,
                    },
                ));
                let mut at = login_at.plus_seconds(60 + secs(&mut rng, 1_740));
                steps.push((at, Step::OwnTopUp(Yen(100 * (10 + rng.below(191))))));
                for _ in 0..1 + rng.below(3) {
                    at = at.plus_seconds(120 + secs(&mut rng, 3 * HOUR_S - 120));
                    steps.push((
                        at,
                        Step::PhonePay {
                            device: device.clone(),
                        },
                    ));
                }
            }
        }
        Some(Block { steps, next: 0 })
    }

    /// The attacker addresses, sorted as strings (as every JSON array of the tool is).
    fn attacker_ip_strings(&self) -> Vec<String> {
        let mut ips: Vec<String> = self.attacker_ips.iter().map(|ip| ip.to_string()).collect();
        ips.sort();
        ips
    }
}

fn secs(rng: &mut SplitMix, max: i64) -> i64 {
    i64::try_from(rng.below(u64::try_from(max).unwrap_or(1))).unwrap_or(0)
}

fn pick(rng: &mut SplitMix, len: usize) -> usize {
    usize::try_from(rng.below(len as u64)).unwrap_or(0)
}

/// `count` distinct numbers of `0..n` (Robert Floyd's algorithm: `count` draws, no rejection
/// loop, memory O(count)). `count <= n`.
fn floyd_sample(rng: &mut SplitMix, n: u64, count: u64) -> Vec<u64> {
    debug_assert!(count <= n);
    let mut set: HashSet<u64> = HashSet::with_capacity(usize::try_from(count).unwrap_or(0));
    for j in n - count..n {
        let t = rng.below(j + 1);
        if !set.insert(t) {
            set.insert(j);
        }
    }
    set.into_iter().collect()
}

/// `total` split into `parts` seeded parts, each at least 1 and about half to one and a half
/// times the average (`total >= parts`); they add up to `total` exactly (cumulative rounding).
fn split_exactly(rng: &mut SplitMix, total: u64, parts: usize) -> Vec<u64> {
    if parts == 0 {
        return Vec::new();
    }
    let weights: Vec<u128> = (0..parts)
        .map(|_| u128::from(WEIGHT_MIN + rng.below(WEIGHT_SPAN)))
        .collect();
    let sum: u128 = weights.iter().sum();
    // Every part gets 1 yen, the rest is shared by weight.
    let rest = u128::from(total - parts as u64);
    let mut cumulative = 0u128;
    let mut given = 0u128;
    weights
        .iter()
        .map(|w| {
            cumulative += w;
            let upto = rest * cumulative / sum;
            let part = upto - given;
            given = upto;
            1 + u64::try_from(part).expect("a part is at most the total")
        })
        .collect()
}

/// One injected command of a chosen member's block.
#[derive(Clone, Debug)]
pub enum Step {
    /// The member's own top-up (no device).
    OwnTopUp(Yen),
    /// A login from `device` at `ip`: the attacker's, or the member's new phone.
    Login {
        device: String,
        ip: IpAddr,
        attacker: bool,
    },
    /// A fraudulent payment from the attacker's device.
    AttackPay {
        amount: Yen,
        merchant: &'static str,
        device: String,
    },
    /// An honest payment from the new phone; its amount is chosen from the balance then.
    PhonePay { device: String },
}

/// A chosen member's injected commands, in business-time order.
pub struct Block {
    steps: Vec<(Timestamp, Step)>,
    next: usize,
}

impl Block {
    /// The business time of the next step, if any left.
    pub fn next_at(&self) -> Option<Timestamp> {
        self.steps.get(self.next).map(|(at, _)| *at)
    }

    /// The business time of the first step: the member's activity starts before it.
    pub fn first_at(&self) -> Option<Timestamp> {
        self.steps.first().map(|(at, _)| *at)
    }

    /// Takes the next step.
    pub fn pop(&mut self) -> Option<(Timestamp, Step)> {
        let step = self.steps.get(self.next).cloned()?;
        self.next += 1;
        Some(step)
    }
}

/// What the takeover commands did, as appended (per member, then summed).
#[derive(Default, Debug)]
pub struct Truth {
    /// Attacker payments that took effect (`wallet.paid` from an attacker device).
    pub taken_yen: u64,
    pub taken_payments: u64,
    /// Attacker payments held (`wallet.hold_placed` from an attacker device).
    pub attack_held_yen: u64,
    pub attack_held_payments: u64,
    /// Every other outgoing command held (new-phone members, and victims' own payments in the
    /// cool-down the attacker's login started): the cost of holds to honest members.
    pub legit_held_yen: u64,
    pub legit_held_payments: u64,
    /// Members whose new-phone login was appended.
    pub new_phone_members: u64,
    /// Members with an attacker payment appended (taken or held), one entry each.
    pub victims: Vec<MemberId>,
}

impl Truth {
    pub fn merge(&mut self, o: Truth) {
        self.taken_yen += o.taken_yen;
        self.taken_payments += o.taken_payments;
        self.attack_held_yen += o.attack_held_yen;
        self.attack_held_payments += o.attack_held_payments;
        self.legit_held_yen += o.legit_held_yen;
        self.legit_held_payments += o.legit_held_payments;
        self.new_phone_members += o.new_phone_members;
        self.victims.extend(o.victims);
    }

    /// The document of `<store>.takeover.json` (see the README): `total_yen` is what the
    /// attacker devices spent or tried to spend (taken plus held), `victims` every member with
    /// such a payment appended; `policy` and `held` only when a hold policy was in force.
    pub fn document(&mut self, plan: &Plan, policy: Option<PolicySet>) -> serde_json::Value {
        self.victims.sort();
        self.victims.dedup();
        let mut doc = json!({
            "attacker_ips": plan.attacker_ip_strings(),
            "attacker_devices": sorted(plan.attacker_devices.clone()),
            "victims": self.victims.iter().map(MemberId::as_str).collect::<Vec<_>>(),
            "total_yen": self.taken_yen + self.attack_held_yen,
            "new_phone_members": self.new_phone_members,
        });
        if let Some(p) = policy.filter(|p| p.cooldown_hours > 0) {
            doc["policy"] =
                json!({"cooldown_hours": p.cooldown_hours, "cooldown_cap": p.cooldown_cap.0});
            doc["held"] = json!({
                "victims_yen": self.attack_held_yen,
                "victim_payments_held": self.attack_held_payments,
                "victims_yen_taken": self.taken_yen,
                "legit_payments_held": self.legit_held_payments,
                "legit_yen_held": self.legit_held_yen,
            });
        }
        doc
    }

    /// The lines `demo` prints.
    pub fn summary(&self, policy: Option<PolicySet>) -> Vec<String> {
        let victims = self.victims.len();
        let phones = self.new_phone_members;
        match policy.filter(|p| p.cooldown_hours > 0) {
            None => vec![format!(
                "takeover: {victims} victims, ¥{} taken by attacker devices; {phones} members logged in from new phones",
                grouped(self.taken_yen)
            )],
            Some(p) => vec![
                format!(
                    "takeover: {victims} victims, ¥{} tried by attacker devices, ¥{} taken; {phones} members logged in from new phones",
                    grouped(self.taken_yen + self.attack_held_yen),
                    grouped(self.taken_yen)
                ),
                format!(
                    "holds ({} h, cap ¥{}): ¥{} of the victims' money held in {} attacker payments; {} honest payments held (¥{})",
                    p.cooldown_hours,
                    grouped(p.cooldown_cap.0),
                    grouped(self.attack_held_yen),
                    self.attack_held_payments,
                    self.legit_held_payments,
                    grouped(self.legit_held_yen)
                ),
            ],
        }
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// `38615473` as `38,615,473`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_total_is_the_incidents_figure_scaled_and_exact_at_808() {
        assert_eq!(default_yen(808), 38_615_473);
        // 38,615,473 * 8 / 808 = 382,331.4
        assert_eq!(default_yen(8), 382_331);
    }

    #[test]
    fn shares_add_up_exactly_and_stay_positive() {
        let mut rng = SplitMix(7);
        for (total, parts) in [(38_615_473, 808), (5, 5), (1_000, 3), (7, 1)] {
            let shares = split_exactly(&mut rng, total, parts);
            assert_eq!(shares.len(), parts);
            assert_eq!(shares.iter().sum::<u64>(), total);
            assert!(shares.iter().all(|s| *s >= 1));
        }
    }

    #[test]
    fn floyd_sample_gives_distinct_members_in_range() {
        let mut rng = SplitMix(3);
        let mut s = floyd_sample(&mut rng, 100, 100);
        s.sort_unstable();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        let s = floyd_sample(&mut rng, 1_000_000, 4_040);
        assert_eq!(s.iter().collect::<HashSet<_>>().len(), 4_040);
        assert!(s.iter().all(|i| *i < 1_000_000));
    }

    #[test]
    fn yen_are_grouped_by_thousands() {
        assert_eq!(grouped(38_615_473), "38,615,473");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
    }
}
