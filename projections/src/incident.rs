//! The incident report of SPEC section 7: who was taken over, by what evidence, and what left
//! their wallets; and the compensations an operator may make from it.
//!
//! Why one module owns the report: `incident victims` writes it, an auditor re-checks it, and
//! `incident compensate` acts on it, so its shape, its hash and the rule for what is compensated
//! live in one place. The report carries a BLAKE3 hash of its own contents ([`Report::hash`]):
//! a report edited after it was made (a member added, an amount raised) is refused before
//! anything is written.
//!
//! # The search ([`victims`])
//! One streaming pass over the log in log order, with these rules (decided for issue 15; also in
//! docs/design.md, "Incident defence"):
//! - **Evidence**: a credential event of a member (SPEC 7) whose business time `at` is between
//!   [`Query::from`] and [`Query::to`] (both inclusive): `identity.password_changed`, an
//!   `identity.password_reset` that is not an operator reset (`PasswordReset::operator`; a v1
//!   reset is upcast by the decoder), `identity.contact_changed`, and an `identity.logged_in`
//!   with `new_device`. With addresses ([`Query::ips`] not empty) only logins from one of them
//!   count, new device or not, and no other credential event does: the attacker's addresses keep
//!   members who merely changed phones off the list.
//! - **Outgoing value**: `wallet.paid` (yen = amount), `wallet.transferred_out` (on the sender;
//!   yen = amount), `wallet.miles_redeemed` and `wallet.coupon_redeemed` (yen 0), each with the
//!   device its command named. A payment made by `confirm_hold` carries the held command's device
//!   and counts like any payment; `wallet.hold_placed` is not outgoing (nothing left the wallet).
//! - An outgoing event that comes after one of its member's evidence events in log order is
//!   **exact** when its device equals that event's device (both named), else **window** when it
//!   names no device and 0 <= its `at` - the evidence's `at` <= [`WINDOW_HOURS`]; otherwise it is
//!   not listed. Its `after` is the latest evidence (in log order) it matches; an exact match
//!   wins over a window one (a device-less event matches only by window, so the two never
//!   compete).
//! - A member is listed with at least one outgoing event listed; its confidence is the highest of
//!   its outgoing events'; `sum_yen` adds all of them. Totals: `exact` counts the members of
//!   confidence exact and the yen of their exact events; `window` the members of confidence
//!   window and their yen.
//!
//! Bounded memory: state is kept only for members with evidence, never for every member; other
//! events are skipped by their stream and type name before their payload is decoded (the names
//! are tied to the decoder's enums by a test). Payloads are decoded by the ledger's one decoder,
//! `DomainEvent::decode_record`. The pass reads the events table of one snapshot
//! ([`victims`]) or any source of records in log order ([`victims_in_records`]: the segment
//! files, beside a writer).

use std::collections::HashMap;
use std::net::IpAddr;

use ledger::domain::{
    DomainEvent, IdentityEvent, WalletEvent, IDENTITY_STREAM_PREFIX, WALLET_STREAM_PREFIX,
};
use ledger::record::{EventRecord, RecordView};
use ledger::{Hash, Head, Position, ReadError, Snapshot, Timestamp};
use serde::{Deserialize, Serialize};

use crate::ProjectionError;

/// The report's `format`: bumped whenever a field changes meaning.
pub const REPORT_FORMAT: &str = "incident-victims/1";

/// How long after a credential event an outgoing command without a device still counts as
/// evidence (confidence `window`), in hours (SPEC section 7).
pub const WINDOW_HOURS: u64 = 72;

/// How sure the search is that an outgoing event was the attacker's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// The outgoing command named no device and came within [`WINDOW_HOURS`] of the credential
    /// event: it may be the member's own.
    Window,
    /// The outgoing command came from the very device of the credential event.
    Exact,
}

/// A credential event that counts as evidence (SPEC section 7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Its log position.
    pub position: u64,
    /// Its event type as the log names it (`identity.logged_in`, `identity.password_changed`,
    /// `identity.password_reset`, `identity.contact_changed`).
    pub event_type: String,
    /// Its business time, RFC 3339.
    pub at: String,
    /// The device of a login; `None` for the other credential events.
    pub device: Option<String>,
    /// The address of a login; `None` for the other credential events.
    pub ip: Option<String>,
}

/// An outgoing wallet event that followed a credential event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outgoing {
    /// Its log position: the `original` of a compensation.
    pub position: u64,
    /// Its event type as the log names it (`wallet.paid`, `wallet.transferred_out`,
    /// `wallet.miles_redeemed`, `wallet.coupon_redeemed`).
    pub event_type: String,
    /// Its business time, RFC 3339.
    pub at: String,
    /// The device its command named.
    pub device: Option<String>,
    /// Yen that left the wallet: the amount of a payment or transfer; 0 for miles and coupons
    /// (listed as evidence, not compensated in yen).
    pub yen: u64,
    /// Why it is listed.
    pub confidence: Confidence,
    /// The position of the credential event it follows (one of the member's [`Evidence`]).
    pub after: u64,
}

/// One member the search lists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Victim {
    /// Member id.
    pub member: String,
    /// The highest confidence among the member's outgoing events.
    pub confidence: Confidence,
    /// The member's credential events that count, in log order.
    pub evidence: Vec<Evidence>,
    /// The outgoing events that followed them, in log order.
    pub outgoing: Vec<Outgoing>,
    /// The sum of `outgoing[].yen`.
    pub sum_yen: u64,
}

/// Members listed at one confidence, and the yen of their outgoing events of that confidence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    /// Members whose confidence is this one.
    pub members: u64,
    /// The yen of those members' outgoing events of this confidence.
    pub yen: u64,
}

/// Everything the report says, without its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportBody {
    /// [`REPORT_FORMAT`].
    pub format: String,
    /// Start of the searched interval of credential events (business time, RFC 3339, inclusive).
    pub from: String,
    /// End of it (inclusive).
    pub to: String,
    /// When not empty, only logins from these addresses counted as evidence (canonical spelling).
    pub ips: Vec<String>,
    /// [`WINDOW_HOURS`].
    pub window_hours: u64,
    /// The log head the search read up to: position.
    pub head_position: u64,
    /// The log head the search read up to: hash (hex).
    pub head_hash: String,
    /// Events read.
    pub events_read: u64,
    /// Members listed, sorted by member id.
    pub members: Vec<Victim>,
    /// Members listed as `exact` and the yen of their `exact` outgoing events.
    pub exact: Totals,
    /// Members listed as `window` and the yen of their outgoing events.
    pub window: Totals,
}

/// The report as written: its body and the BLAKE3 hash of the body's JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The contents.
    #[serde(flatten)]
    pub body: ReportBody,
    /// BLAKE3 (hex) of the compact JSON of `body`, fields in the order above.
    pub hash: String,
}

/// Why a report cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Not a report: bad JSON, a missing field or a field of the wrong type.
    #[error("not an incident report: {0}")]
    Json(#[from] serde_json::Error),
    /// A report of another format.
    #[error("report format is {found:?}; this build reads {REPORT_FORMAT:?}")]
    Format {
        /// The format it names.
        found: String,
    },
    /// The hash does not match the contents: the report was edited after it was made.
    #[error(
        "report hash {stated} does not match its contents (hash {actual}): it was changed after \
         `incident victims` wrote it"
    )]
    Hash {
        /// The hash the report states.
        stated: String,
        /// The hash of what it contains.
        actual: String,
    },
}

impl ReportBody {
    /// The BLAKE3 hash (hex) of this body's compact JSON.
    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("a report body always serializes to JSON");
        blake3::hash(&bytes).to_hex().to_string()
    }

    /// The body with its hash.
    pub fn seal(self) -> Report {
        let hash = self.hash();
        Report { body: self, hash }
    }
}

impl Report {
    /// Parses a report and proves its hash matches its contents.
    pub fn parse(bytes: &[u8]) -> Result<Report, ReportError> {
        let report: Report = serde_json::from_slice(bytes)?;
        if report.body.format != REPORT_FORMAT {
            return Err(ReportError::Format {
                found: report.body.format,
            });
        }
        let actual = report.body.hash();
        if actual != report.hash {
            return Err(ReportError::Hash {
                stated: report.hash,
                actual,
            });
        }
        Ok(report)
    }
}

/// One compensation the report asks for: an `exact` outgoing event of an `exact` victim that
/// took yen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The member compensated.
    pub member: String,
    /// The outgoing event's log position (the `original`).
    pub original: u64,
    /// Its yen.
    pub yen: u64,
}

/// What `incident compensate` appends for `report` (SPEC section 7): one compensation per
/// `exact` outgoing event with yen of each `exact` victim, in report order. `window` members
/// and events are never compensated: they may be the member's own.
pub fn planned(report: &ReportBody) -> Vec<Planned> {
    report
        .members
        .iter()
        .filter(|v| v.confidence == Confidence::Exact)
        .flat_map(|v| {
            v.outgoing
                .iter()
                .filter(|o| o.confidence == Confidence::Exact && o.yen > 0)
                .map(|o| Planned {
                    member: v.member.clone(),
                    original: o.position,
                    yen: o.yen,
                })
        })
        .collect()
}

/// What [`victims`] searches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// Start of the interval of credential events (business time, inclusive).
    pub from: Timestamp,
    /// End of it (inclusive); after `from`.
    pub to: Timestamp,
    /// When not empty, only logins from these addresses are evidence (see the module doc).
    pub ips: Vec<IpAddr>,
}

/// Type names of the credential events (SPEC section 7), for the skip before decoding. A test
/// ties them to [`IdentityEvent::TYPES`] and to [`credential_of`].
const CREDENTIAL_TYPES: [&str; 4] = [
    "identity.password_changed",
    "identity.password_reset",
    "identity.contact_changed",
    LOGIN_TYPE,
];

/// The only credential event type that counts when the query names addresses.
const LOGIN_TYPE: &str = "identity.logged_in";

/// Type names of the outgoing wallet events, for the skip before decoding. A test ties them to
/// [`WalletEvent::TYPES`] and to [`outgoing_of`].
const OUTGOING_TYPES: [&str; 4] = [
    "wallet.paid",
    "wallet.transferred_out",
    "wallet.miles_redeemed",
    "wallet.coupon_redeemed",
];

/// Events per read of the events table, and between two progress calls.
const CHUNK_EVENTS: usize = 8_192;

/// [`WINDOW_HOURS`] in microseconds (business times are microseconds).
const WINDOW_MICROS: i64 = WINDOW_HOURS as i64 * 3_600 * 1_000_000;

/// The members an account takeover may have hit (rules in the module doc), reading the events
/// table of `snap` from position 1 to its head. `progress` is called with the events read so
/// far, every 8,192 events (one read of the table).
pub fn victims(
    snap: &dyn Snapshot,
    query: &Query,
    progress: &mut dyn FnMut(u64),
) -> Result<ReportBody, ProjectionError> {
    let mut search = Search::new(query)?;
    crate::fold::visit_records(
        snap,
        &mut |record| {
            search.read(record)?;
            Ok(std::ops::ControlFlow::Continue(()))
        },
        &mut |count| progress(count),
    )?;
    // The pass read the snapshot's events table to its end, which is the snapshot's head: a
    // different head means a damaged table, and the report would name a head it did not read.
    let (head, _) = ledger::log::read_head(snap)?;
    if head != search.head {
        return Err(ProjectionError::Event {
            position: head.position.0,
            reason: format!(
                "the log head is position {} but the events table ends at position {}",
                head.position.0, search.head.position.0
            ),
        });
    }
    Ok(search.finish())
}

/// [`victims`] over any source of the log's records in log order from position 1 (the segment
/// files, read beside a writer: `ledger::log::segment_events`); the head is the last record
/// read. The first error of `records` ends it.
pub fn victims_in_records(
    records: &mut dyn Iterator<Item = Result<EventRecord, ReadError>>,
    query: &Query,
    progress: &mut dyn FnMut(u64),
) -> Result<ReportBody, ProjectionError> {
    let mut search = Search::new(query)?;
    for record in records {
        search.read(&record?.as_view())?;
        if search.events_read % CHUNK_EVENTS as u64 == 0 {
            progress(search.events_read);
        }
    }
    progress(search.events_read);
    Ok(search.finish())
}

/// A credential event kept as evidence, with its business time for the window rule.
struct Clue {
    at: Timestamp,
    evidence: Evidence,
}

/// What the pass knows of a member with evidence.
#[derive(Default)]
struct Suspect {
    /// The member's evidence so far, in log order.
    clues: Vec<Clue>,
    /// The member's outgoing events listed so far, in log order.
    outgoing: Vec<Outgoing>,
}

/// The state of one pass: the query, the members with evidence, and where the log is.
struct Search<'q> {
    query: &'q Query,
    /// Members with evidence, by member id. Nobody else has state.
    suspects: HashMap<String, Suspect>,
    /// The position the next record must have (log order, no gap).
    next: Position,
    /// The last record read (position 0 and the genesis hash before any).
    head: Head,
    events_read: u64,
}

impl<'q> Search<'q> {
    fn new(query: &'q Query) -> Result<Search<'q>, ProjectionError> {
        if query.to <= query.from {
            return Err(ProjectionError::Argument {
                name: "to",
                value: query.to.to_rfc3339(),
                rule: format!(
                    "the interval must end after it starts ({})",
                    query.from.to_rfc3339()
                ),
            });
        }
        Ok(Search {
            query,
            suspects: HashMap::new(),
            next: Position(1),
            head: Head {
                position: Position(0),
                hash: Hash::GENESIS,
            },
            events_read: 0,
        })
    }

    /// Takes the next record of the log.
    fn read(&mut self, record: &RecordView<'_>) -> Result<(), ProjectionError> {
        if record.position != self.next {
            return Err(ProjectionError::Event {
                position: record.position.0,
                reason: format!(
                    "the search reads the log in order and expected position {}",
                    self.next.0
                ),
            });
        }
        self.next = record.position.next();
        self.head = Head {
            position: record.position,
            hash: record.hash,
        };
        self.events_read += 1;
        if let Some(member) = record.stream.strip_prefix(IDENTITY_STREAM_PREFIX) {
            self.identity(member, record)
        } else if let Some(member) = record.stream.strip_prefix(WALLET_STREAM_PREFIX) {
            self.wallet(member, record)
        } else {
            Ok(())
        }
    }

    /// An identity event: evidence when it is a credential event of the query.
    fn identity(&mut self, member: &str, record: &RecordView<'_>) -> Result<(), ProjectionError> {
        let wanted = if self.query.ips.is_empty() {
            CREDENTIAL_TYPES.contains(&record.event_type)
        } else {
            record.event_type == LOGIN_TYPE
        };
        if !wanted || record.at < self.query.from || record.at > self.query.to {
            return Ok(());
        }
        let event = match decode(record)? {
            DomainEvent::Identity(event) => event,
            other => return Err(misplaced(record, other.event_type())),
        };
        let Some((device, ip)) = credential_of(&event, &self.query.ips) else {
            return Ok(());
        };
        self.suspects
            .entry(member.to_owned())
            .or_default()
            .clues
            .push(Clue {
                at: record.at,
                evidence: Evidence {
                    position: record.position.0,
                    event_type: record.event_type.to_owned(),
                    at: record.at.to_rfc3339(),
                    device: device.map(str::to_owned),
                    ip: ip.map(str::to_owned),
                },
            });
        Ok(())
    }

    /// A wallet event: listed when it is outgoing value of a suspect that matches its evidence.
    fn wallet(&mut self, member: &str, record: &RecordView<'_>) -> Result<(), ProjectionError> {
        if !OUTGOING_TYPES.contains(&record.event_type) {
            return Ok(());
        }
        let Some(suspect) = self.suspects.get_mut(member) else {
            return Ok(());
        };
        let event = match decode(record)? {
            DomainEvent::Wallet(event) => event,
            other => return Err(misplaced(record, other.event_type())),
        };
        let Some((yen, device)) = outgoing_of(&event) else {
            return Ok(());
        };
        if let Some((clue, confidence)) = matching_clue(&suspect.clues, record.at, device) {
            suspect.outgoing.push(Outgoing {
                position: record.position.0,
                event_type: record.event_type.to_owned(),
                at: record.at.to_rfc3339(),
                device: device.map(str::to_owned),
                yen,
                confidence,
                after: clue.evidence.position,
            });
        }
        Ok(())
    }

    /// The report body: the suspects with outgoing events listed, sorted by member id.
    fn finish(self) -> ReportBody {
        let mut members: Vec<Victim> = self
            .suspects
            .into_iter()
            .filter(|(_, s)| !s.outgoing.is_empty())
            .map(|(member, s)| victim(member, s))
            .collect();
        members.sort_by(|a, b| a.member.cmp(&b.member));
        let (mut exact, mut window) = (Totals::default(), Totals::default());
        for v in &members {
            let totals = match v.confidence {
                Confidence::Exact => &mut exact,
                Confidence::Window => &mut window,
            };
            totals.members += 1;
            totals.yen += v
                .outgoing
                .iter()
                .filter(|o| o.confidence == v.confidence)
                .map(|o| o.yen)
                .sum::<u64>();
        }
        let mut ips: Vec<IpAddr> = self.query.ips.clone();
        ips.sort();
        ips.dedup();
        ReportBody {
            format: REPORT_FORMAT.to_owned(),
            from: self.query.from.to_rfc3339(),
            to: self.query.to.to_rfc3339(),
            ips: ips.iter().map(IpAddr::to_string).collect(),
            window_hours: WINDOW_HOURS,
            head_position: self.head.position.0,
            head_hash: self.head.hash.to_hex(),
            events_read: self.events_read,
            members,
            exact,
            window,
        }
    }
}

/// A listed member: confidence the highest of its outgoing events', the sum of their yen.
fn victim(member: String, suspect: Suspect) -> Victim {
    let confidence = suspect
        .outgoing
        .iter()
        .map(|o| o.confidence)
        .max()
        .unwrap_or(Confidence::Window);
    let sum_yen = suspect.outgoing.iter().map(|o| o.yen).sum();
    Victim {
        member,
        confidence,
        evidence: suspect.clues.into_iter().map(|c| c.evidence).collect(),
        outgoing: suspect.outgoing,
        sum_yen,
    }
}

/// The latest evidence an outgoing event at `at` with `device` matches, and how: the same
/// device (exact), or no device and within [`WINDOW_HOURS`] after it (window).
fn matching_clue<'c>(
    clues: &'c [Clue],
    at: Timestamp,
    device: Option<&str>,
) -> Option<(&'c Clue, Confidence)> {
    match device {
        Some(device) => clues
            .iter()
            .rev()
            .find(|c| c.evidence.device.as_deref() == Some(device))
            .map(|c| (c, Confidence::Exact)),
        None => clues
            .iter()
            .rev()
            .find(|c| (0..=WINDOW_MICROS).contains(&(at.0 - c.at.0)))
            .map(|c| (c, Confidence::Window)),
    }
}

/// The device and address of a credential event that is evidence for a query with addresses
/// `ips` (empty: every credential event; else only logins from one of them); `None` when it
/// is not evidence.
fn credential_of<'e>(
    event: &'e IdentityEvent,
    ips: &[IpAddr],
) -> Option<(Option<&'e str>, Option<&'e str>)> {
    let login = |e: &'e ledger::domain::LoggedIn| (Some(e.device.as_str()), Some(e.ip.as_str()));
    match event {
        IdentityEvent::LoggedIn(e) if !ips.is_empty() => {
            let ip: IpAddr = e.ip.parse().ok()?;
            ips.contains(&ip).then(|| login(e))
        }
        IdentityEvent::LoggedIn(e) => e.new_device.then(|| login(e)),
        _ if !ips.is_empty() => None,
        IdentityEvent::PasswordChanged(_) | IdentityEvent::ContactChanged(_) => Some((None, None)),
        IdentityEvent::PasswordReset(e) => (!e.operator).then_some((None, None)),
        IdentityEvent::Registered(_) => None,
    }
}

/// The yen and device of an outgoing event; `None` for the other wallet events.
fn outgoing_of(event: &WalletEvent) -> Option<(u64, Option<&str>)> {
    match event {
        WalletEvent::Paid(e) => Some((e.amount.0, e.device.as_deref())),
        WalletEvent::TransferredOut(e) => Some((e.amount.0, e.device.as_deref())),
        WalletEvent::MilesRedeemed(e) => Some((0, e.device.as_deref())),
        WalletEvent::CouponRedeemed(e) => Some((0, e.device.as_deref())),
        // A hold placed reserves value but nothing leaves until it is confirmed, which appends
        // its own payment or transfer.
        WalletEvent::WalletOpened(_)
        | WalletEvent::ToppedUp(_)
        | WalletEvent::Refunded(_)
        | WalletEvent::TransferredIn(_)
        | WalletEvent::MilesEarned(_)
        | WalletEvent::MilesExpired(_)
        | WalletEvent::BadgeAwarded(_)
        | WalletEvent::CouponIssued(_)
        | WalletEvent::CouponExpired(_)
        | WalletEvent::HoldPlaced(_)
        | WalletEvent::HoldConfirmed(_)
        | WalletEvent::HoldCancelled(_)
        | WalletEvent::Compensated(_) => None,
    }
}

/// The record's event, by the ledger's one decoder (with the envelope, for the v1 reset upcast).
fn decode(record: &RecordView<'_>) -> Result<DomainEvent, ProjectionError> {
    DomainEvent::decode_record(record).map_err(|e| ProjectionError::Event {
        position: record.position.0,
        reason: e.to_string(),
    })
}

/// An event of one kind in a stream of another.
fn misplaced(record: &RecordView<'_>, event_type: &str) -> ProjectionError {
    ProjectionError::Event {
        position: record.position.0,
        reason: format!("event {event_type} in stream {}", record.stream),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> ReportBody {
        ReportBody {
            format: REPORT_FORMAT.to_owned(),
            from: "2019-07-01T00:00:00Z".to_owned(),
            to: "2019-07-04T00:00:00Z".to_owned(),
            ips: vec!["203.0.113.7".to_owned()],
            window_hours: WINDOW_HOURS,
            head_position: 9,
            head_hash: "ab".repeat(32),
            events_read: 9,
            members: vec![Victim {
                member: "m1".to_owned(),
                confidence: Confidence::Exact,
                evidence: vec![Evidence {
                    position: 4,
                    event_type: "identity.logged_in".to_owned(),
                    at: "2019-07-02T00:00:00Z".to_owned(),
                    device: Some("atk-1".to_owned()),
                    ip: Some("203.0.113.7".to_owned()),
                }],
                outgoing: vec![
                    Outgoing {
                        position: 6,
                        event_type: "wallet.paid".to_owned(),
                        at: "2019-07-02T00:10:00Z".to_owned(),
                        device: Some("atk-1".to_owned()),
                        yen: 5_000,
                        confidence: Confidence::Exact,
                        after: 4,
                    },
                    Outgoing {
                        position: 8,
                        event_type: "wallet.paid".to_owned(),
                        at: "2019-07-02T01:00:00Z".to_owned(),
                        device: None,
                        yen: 300,
                        confidence: Confidence::Window,
                        after: 4,
                    },
                ],
                sum_yen: 5_300,
            }],
            exact: Totals {
                members: 1,
                yen: 5_000,
            },
            window: Totals::default(),
        }
    }

    /// A sealed report parses back to itself. (Defect caught: a hash over fields in another
    /// order than they are written would refuse every report.)
    #[test]
    fn sealed_report_round_trips() {
        let report = body().seal();
        let text = serde_json::to_string(&report).expect("serializes");
        assert_eq!(Report::parse(text.as_bytes()).expect("parses"), report);
    }

    /// An amount raised after the report was made is refused by its hash.
    #[test]
    fn edited_report_is_refused() {
        let report = body().seal();
        let text = serde_json::to_string(&report)
            .expect("serializes")
            .replace("\"yen\":5000", "\"yen\":50000");
        let err = Report::parse(text.as_bytes()).expect_err("an edited report is refused");
        assert!(matches!(err, ReportError::Hash { .. }), "{err}");
    }

    /// Only exact outgoing events with yen of exact victims are compensated.
    #[test]
    fn planned_takes_exact_yen_only() {
        assert_eq!(
            planned(&body()),
            vec![Planned {
                member: "m1".to_owned(),
                original: 6,
                yen: 5_000
            }]
        );
    }

    // ---- the search's rule table (stores built through the real wallet service) ----

    use std::sync::Arc;

    use ledger::domain::{reset_of_registered, Command, MemberId};
    use ledger::{AppendRequest, ExpectedVersion, StreamAppend};

    use crate::test_store::store_with;
    use crate::WalletService;

    const FROM: &str = "2019-07-01T00:00:00Z";
    const TO: &str = "2019-07-04T00:00:00Z";
    const ATTACKER_IP: &str = "203.0.113.7";

    fn t(text: &str) -> Timestamp {
        Timestamp::parse_rfc3339(text).expect("test times are RFC 3339")
    }

    fn query(ips: &[&str]) -> Query {
        Query {
            from: t(FROM),
            to: t(TO),
            ips: ips
                .iter()
                .map(|ip| ip.parse().expect("test addresses parse"))
                .collect(),
        }
    }

    /// A registered member with a wallet of 100,000 yen and 500 miles, before the interval.
    fn member(m: &str) -> Vec<String> {
        vec![
            format!(
                r#"{{"id":"reg-{m}","type":"register","member":"{m}","login":"{m}@example.jp","at":"2019-06-01T00:00:00Z"}}"#
            ),
            format!(
                r#"{{"id":"open-{m}","type":"open_wallet","member":"{m}","at":"2019-06-01T00:00:01Z"}}"#
            ),
            format!(
                r#"{{"id":"top-{m}","type":"top_up","member":"{m}","amount":100000,"at":"2019-06-01T00:00:02Z"}}"#
            ),
            format!(
                r#"{{"id":"earn-{m}","type":"earn_miles","member":"{m}","miles":500,"expires_at":"2020-01-01T00:00:00Z","at":"2019-06-01T00:00:03Z"}}"#
            ),
        ]
    }

    fn login(id: &str, m: &str, device: &str, ip: &str, at: &str) -> String {
        format!(
            r#"{{"id":"{id}","type":"login","member":"{m}","device":"{device}","ip":"{ip}","at":"{at}"}}"#
        )
    }

    /// A payment of `amount`, from `device` when given.
    fn pay(id: &str, m: &str, amount: u64, device: Option<&str>, at: &str) -> String {
        let device = device.map_or(String::new(), |d| format!(r#","device":"{d}""#));
        format!(
            r#"{{"id":"{id}","type":"pay","member":"{m}","amount":{amount},"merchant":"shop"{device},"at":"{at}"}}"#
        )
    }

    /// A store of `lines` (each member's setup first), its log, and the report of `q` on it,
    /// checked to be the same whether read from the events table or from the segment files.
    struct Searched {
        body: ReportBody,
        log: Vec<EventRecord>,
    }

    fn search(members: &[&str], lines: &[String], q: &Query) -> Searched {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let mut all: Vec<String> = members.iter().flat_map(|m| member(m)).collect();
        all.extend(lines.iter().cloned());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let engine = store_with(tmp.path(), &refs);
        searched(&engine, tmp.path(), q)
    }

    fn searched(engine: &Arc<ledger::Store>, dir: &std::path::Path, q: &Query) -> Searched {
        let snap = engine.snapshot().expect("a snapshot");
        let mut calls = 0;
        let body = victims(&*snap, q, &mut |_| calls += 1).expect("the search runs");
        assert!(calls > 0, "progress is reported");
        let log: Vec<EventRecord> = ledger::log::events(&*snap, Position(1))
            .collect::<Result<_, _>>()
            .expect("the log reads");
        let mut segments = ledger::log::segment_events(dir).expect("the segments open");
        let beside = victims_in_records(&mut segments, q, &mut |_| {}).expect("the search runs");
        assert_eq!(beside, body, "the segment files give the same report");
        assert_eq!(body.events_read, log.len() as u64);
        let last = log.last().expect("the test logs are not empty");
        assert_eq!(body.head_position, last.position.0);
        assert_eq!(body.head_hash, last.hash.to_hex());
        Searched { body, log }
    }

    impl Searched {
        /// The position of the event of `event_type` that command `command` appended.
        fn at(&self, command: &str, event_type: &str) -> u64 {
            self.log
                .iter()
                .find(|r| r.command_id == command && r.event_type == event_type)
                .unwrap_or_else(|| panic!("{command} appended no {event_type}"))
                .position
                .0
        }

        fn member(&self, m: &str) -> Option<&Victim> {
            self.body.members.iter().find(|v| v.member == m)
        }

        fn listed(&self) -> Vec<&str> {
            self.body
                .members
                .iter()
                .map(|v| v.member.as_str())
                .collect()
        }

        /// `m`'s outgoing as (position, confidence, after).
        fn outgoing(&self, m: &str) -> Vec<(u64, Confidence, u64)> {
            self.member(m)
                .unwrap_or_else(|| panic!("{m} is listed"))
                .outgoing
                .iter()
                .map(|o| (o.position, o.confidence, o.after))
                .collect()
        }
    }

    // Proves a payment from the device of a new-device login in the interval is `exact`, after
    // that login, with the login's device and address as evidence and the totals counting it.
    // (Planted defect caught: matching on the address instead of the device lists nothing.)
    #[test]
    fn payment_from_the_login_device_is_exact() {
        let s = search(
            &["m1"],
            &[
                login("l1", "m1", "atk-1", ATTACKER_IP, "2019-07-02T00:00:00Z"),
                pay("p1", "m1", 5_000, Some("atk-1"), "2019-07-02T00:10:00Z"),
            ],
            &query(&[]),
        );
        let l1 = s.at("l1", "identity.logged_in");
        assert_eq!(
            s.outgoing("m1"),
            [(s.at("p1", "wallet.paid"), Confidence::Exact, l1)]
        );
        let v = s.member("m1").expect("m1 is listed");
        assert_eq!(v.confidence, Confidence::Exact);
        assert_eq!(
            v.evidence,
            [Evidence {
                position: l1,
                event_type: "identity.logged_in".into(),
                at: "2019-07-02T00:00:00Z".into(),
                device: Some("atk-1".into()),
                ip: Some(ATTACKER_IP.into()),
            }]
        );
        assert_eq!(v.sum_yen, 5_000);
        assert_eq!(
            s.body.exact,
            Totals {
                members: 1,
                yen: 5_000
            }
        );
        assert_eq!(s.body.window, Totals::default());
    }

    // Proves the window is 72 hours inclusive: a device-less payment exactly 72 h after a
    // new-device login is `window`, one 72 h + 1 s after is not listed. (Planted defect caught:
    // `<` instead of `<=` drops the first.)
    #[test]
    fn window_ends_at_72_hours_inclusive() {
        let s = search(
            &["m1"],
            &[
                login(
                    "l1",
                    "m1",
                    "phone-new",
                    "198.51.100.9",
                    "2019-07-02T00:00:00Z",
                ),
                pay("in", "m1", 300, None, "2019-07-05T00:00:00Z"),
                pay("out", "m1", 400, None, "2019-07-05T00:00:01Z"),
            ],
            &query(&[]),
        );
        assert_eq!(
            s.outgoing("m1"),
            [(
                s.at("in", "wallet.paid"),
                Confidence::Window,
                s.at("l1", "identity.logged_in")
            )]
        );
        assert_eq!(
            s.body.window,
            Totals {
                members: 1,
                yen: 300
            }
        );
    }

    // Proves a payment from another device than the login's is not listed, even within the
    // window: it names a device, and not the evidence's. (Planted defect caught: falling back
    // to the window rule for a named device lists m1.)
    #[test]
    fn payment_from_another_device_is_not_listed() {
        let s = search(
            &["m1"],
            &[
                login("l1", "m1", "atk-1", ATTACKER_IP, "2019-07-02T00:00:00Z"),
                pay(
                    "p1",
                    "m1",
                    5_000,
                    Some("home-phone"),
                    "2019-07-02T00:10:00Z",
                ),
            ],
            &query(&[]),
        );
        assert!(s.body.members.is_empty(), "{:?}", s.body.members);
    }

    // Proves `--ip`: a member who logged in from a new phone at home and paid from it is listed
    // without addresses and kept off with the attacker's; the attacker's victim stays, and a
    // login from the attacker's address on a device seen before counts too. (Planted defect
    // caught: keeping the new-device rule under `--ip` drops m1's second login.)
    #[test]
    fn ip_filter_keeps_new_phones_off_and_the_victim_on() {
        let lines = [
            login("a0", "m1", "atk-1", "198.51.100.1", "2019-06-20T00:00:00Z"),
            login("a1", "m1", "atk-1", ATTACKER_IP, "2019-07-02T00:00:00Z"),
            pay("ap", "m1", 9_000, Some("atk-1"), "2019-07-02T00:05:00Z"),
            login(
                "n1",
                "m2",
                "new-phone",
                "198.51.100.9",
                "2019-07-02T01:00:00Z",
            ),
            pay("np", "m2", 1_200, Some("new-phone"), "2019-07-02T01:05:00Z"),
        ];
        let broad = search(&["m1", "m2"], &lines, &query(&[]));
        assert_eq!(
            broad.listed(),
            ["m2"],
            "m1's attacker device was seen before"
        );
        let narrow = search(&["m1", "m2"], &lines, &query(&[ATTACKER_IP]));
        assert_eq!(narrow.listed(), ["m1"]);
        assert_eq!(
            narrow.outgoing("m1"),
            [(
                narrow.at("ap", "wallet.paid"),
                Confidence::Exact,
                narrow.at("a1", "identity.logged_in")
            )]
        );
        assert_eq!(narrow.body.ips, [ATTACKER_IP]);
        assert_eq!(
            narrow.body.exact,
            Totals {
                members: 1,
                yen: 9_000
            }
        );
    }

    // Proves an operator reset (`reset-credentials`) is not evidence while a member's own
    // `reset_password` is: the same device-less payment after each. (Planted defect caught:
    // ignoring `PasswordReset::operator` lists m1.)
    #[test]
    fn operator_reset_is_not_evidence() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let mut lines = member("m1");
        lines.extend(member("m2"));
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let engine = store_with(tmp.path(), &refs);
        let service = WalletService::with_engine(Arc::clone(&engine), Vec::new())
            .expect("the service starts");
        let m1 = MemberId::new("m1").expect("a member id");
        let at = t("2019-07-02T00:00:00Z");
        let streams = reset_of_registered(&m1, Some("7pay"))
            .into_iter()
            .map(|s| StreamAppend {
                stream: s.stream,
                expected: ExpectedVersion::Any,
                events: s
                    .events
                    .iter()
                    .map(|e| e.to_new_event(at).expect("a reset encodes"))
                    .collect(),
            })
            .collect();
        service
            .ledger()
            .append_blocking(AppendRequest {
                command_id: "reset-run1-0".into(),
                fingerprint: None,
                streams,
            })
            .expect("the operator reset is appended");
        for line in [
            r#"{"id":"own","type":"reset_password","member":"m2","at":"2019-07-02T00:00:00Z"}"#
                .to_owned(),
            pay("p1", "m1", 700, None, "2019-07-02T01:00:00Z"),
            pay("p2", "m2", 800, None, "2019-07-02T01:00:00Z"),
        ] {
            let cmd = Command::parse_json_line(&line).expect("test commands parse");
            service.submit_blocking(&cmd).expect("the command applies");
        }
        drop(service);
        let s = searched(&engine, tmp.path(), &query(&[]));
        assert_eq!(s.listed(), ["m2"]);
        assert_eq!(
            s.outgoing("m2"),
            [(
                s.at("p2", "wallet.paid"),
                Confidence::Window,
                s.at("own", "identity.password_reset")
            )]
        );
    }

    // Proves a member's own password change (no device) then a device-less payment is `window`,
    // and under `--ip` a password change is no evidence at all. (Planted defect caught: letting
    // every credential type through under `--ip`, in the type skip and in `credential_of`,
    // lists m1 in the second search.)
    #[test]
    fn own_password_change_then_deviceless_payment_is_window() {
        let lines = [
            r#"{"id":"pw","type":"change_password","member":"m1","at":"2019-07-02T00:00:00Z"}"#
                .to_owned(),
            pay("p1", "m1", 700, None, "2019-07-02T03:00:00Z"),
        ];
        let s = search(&["m1"], &lines, &query(&[]));
        assert_eq!(
            s.outgoing("m1"),
            [(
                s.at("p1", "wallet.paid"),
                Confidence::Window,
                s.at("pw", "identity.password_changed")
            )]
        );
        let v = s.member("m1").expect("m1 is listed");
        assert_eq!(
            (v.evidence[0].device.clone(), v.evidence[0].ip.clone()),
            (None, None)
        );
        assert_eq!(
            s.body.window,
            Totals {
                members: 1,
                yen: 700
            }
        );
        let narrow = search(&["m1"], &lines, &query(&[ATTACKER_IP]));
        assert!(narrow.body.members.is_empty());
    }

    // Proves the interval bounds evidence: a login 1 s before `from` is none, a login exactly at
    // `to` is (inclusive). (Planted defect caught: `to` exclusive drops m2.)
    #[test]
    fn login_outside_the_interval_is_not_evidence() {
        let s = search(
            &["m1", "m2"],
            &[
                login("early", "m1", "atk-1", ATTACKER_IP, "2019-06-30T23:59:59Z"),
                pay("p1", "m1", 100, Some("atk-1"), "2019-07-01T00:10:00Z"),
                login("edge", "m2", "atk-2", ATTACKER_IP, TO),
                pay("p2", "m2", 200, Some("atk-2"), "2019-07-04T00:10:00Z"),
            ],
            &query(&[]),
        );
        assert_eq!(s.listed(), ["m2"]);
    }

    // Proves only outgoing events after the evidence in log order are listed: a payment from the
    // device before its login is not, the one after is. (Planted defect caught: matching against
    // all of a member's evidence after the pass lists the first payment too.)
    #[test]
    fn outgoing_before_the_login_is_not_listed() {
        let s = search(
            &["m1"],
            &[
                pay("before", "m1", 100, Some("atk-1"), "2019-07-02T00:00:00Z"),
                login("l1", "m1", "atk-1", ATTACKER_IP, "2019-07-02T00:05:00Z"),
                pay("after", "m1", 200, Some("atk-1"), "2019-07-02T00:10:00Z"),
            ],
            &query(&[]),
        );
        assert_eq!(
            s.outgoing("m1"),
            [(
                s.at("after", "wallet.paid"),
                Confidence::Exact,
                s.at("l1", "identity.logged_in")
            )]
        );
        assert_eq!(s.member("m1").map(|v| v.sum_yen), Some(200));
    }

    // Proves a transfer is listed on the sender (its `wallet.transferred_out`) and not on the
    // receiver, even when the receiver has evidence. (Planted defect caught: counting
    // `wallet.transferred_in` as outgoing lists m2.)
    #[test]
    fn transfer_is_listed_on_the_sender() {
        let s = search(
            &["m1", "m2"],
            &[
                login("l1", "m1", "atk-1", ATTACKER_IP, "2019-07-02T00:00:00Z"),
                login("l2", "m2", "phone-2", "198.51.100.9", "2019-07-02T00:00:00Z"),
                r#"{"id":"tr","type":"transfer","from":"m1","to":"m2","amount":3000,"device":"atk-1","at":"2019-07-02T00:10:00Z"}"#.to_owned(),
            ],
            &query(&[]),
        );
        assert_eq!(s.listed(), ["m1"]);
        assert_eq!(
            s.outgoing("m1"),
            [(
                s.at("tr", "wallet.transferred_out"),
                Confidence::Exact,
                s.at("l1", "identity.logged_in")
            )]
        );
        assert_eq!(
            s.body.exact,
            Totals {
                members: 1,
                yen: 3_000
            }
        );
    }

    // Proves a held payment is listed once confirmed, at the position of the payment the
    // confirmation appends (which carries the held command's device), never at the hold.
    // (Planted defect caught: `wallet.hold_placed` taken as outgoing lists two events.)
    #[test]
    fn confirmed_hold_payment_is_exact() {
        let s = search(
            &["m1"],
            &[
                r#"{"id":"pol","type":"set_policy","cooldown_hours":24,"cooldown_cap":0,"at":"2019-06-30T00:00:00Z"}"#.to_owned(),
                login("l1", "m1", "atk-1", ATTACKER_IP, "2019-07-02T00:00:00Z"),
                pay("held", "m1", 4_000, Some("atk-1"), "2019-07-02T00:10:00Z"),
                r#"{"id":"ok","type":"confirm_hold","member":"m1","hold":"held","at":"2019-07-02T01:00:00Z"}"#.to_owned(),
            ],
            &query(&[]),
        );
        assert!(s.at("held", "wallet.hold_placed") < s.at("ok", "wallet.paid"));
        assert_eq!(
            s.outgoing("m1"),
            [(
                s.at("ok", "wallet.paid"),
                Confidence::Exact,
                s.at("l1", "identity.logged_in")
            )]
        );
        assert_eq!(
            s.body.exact,
            Totals {
                members: 1,
                yen: 4_000
            }
        );
    }

    // Proves the sums: a member with exact and window events is `exact`, its `sum_yen` adds
    // both (miles and coupons at 0 yen, listed), and the totals take only the exact yen of
    // exact members and the yen of window members. `after` is the latest evidence matched.
    // (Planted defect caught: totals adding a member's whole sum put 5,300 in `exact`.)
    #[test]
    fn totals_and_sum_yen() {
        let s = search(
            &["m1", "m2"],
            &[
                login("l1", "m1", "atk-1", ATTACKER_IP, "2019-07-02T00:00:00Z"),
                login("l2", "m1", "atk-2", ATTACKER_IP, "2019-07-02T00:01:00Z"),
                pay("e1", "m1", 5_000, Some("atk-1"), "2019-07-02T00:10:00Z"),
                pay("w1", "m1", 300, None, "2019-07-02T00:20:00Z"),
                r#"{"id":"mi","type":"redeem_miles","member":"m1","miles":100,"device":"atk-2","at":"2019-07-02T00:30:00Z"}"#.to_owned(),
                r#"{"id":"pw","type":"change_password","member":"m2","at":"2019-07-03T00:00:00Z"}"#.to_owned(),
                pay("w2", "m2", 700, None, "2019-07-03T01:00:00Z"),
                pay("w3", "m2", 50, None, "2019-07-03T02:00:00Z"),
            ],
            &query(&[]),
        );
        let (l1, l2) = (
            s.at("l1", "identity.logged_in"),
            s.at("l2", "identity.logged_in"),
        );
        assert_eq!(
            s.outgoing("m1"),
            [
                (s.at("e1", "wallet.paid"), Confidence::Exact, l1),
                (s.at("w1", "wallet.paid"), Confidence::Window, l2),
                (s.at("mi", "wallet.miles_redeemed"), Confidence::Exact, l2),
            ]
        );
        let m1 = s.member("m1").expect("m1 is listed");
        assert_eq!(
            (m1.confidence, m1.sum_yen, m1.evidence.len()),
            (Confidence::Exact, 5_300, 2)
        );
        let m2 = s.member("m2").expect("m2 is listed");
        assert_eq!((m2.confidence, m2.sum_yen), (Confidence::Window, 750));
        assert_eq!(s.listed(), ["m1", "m2"]);
        assert_eq!(
            s.body.exact,
            Totals {
                members: 1,
                yen: 5_000
            }
        );
        assert_eq!(
            s.body.window,
            Totals {
                members: 1,
                yen: 750
            }
        );
        let sealed = s.body.clone().seal();
        let text = serde_json::to_string(&sealed).expect("serializes");
        assert_eq!(Report::parse(text.as_bytes()).expect("parses"), sealed);
        assert_eq!(
            planned(&s.body),
            [Planned {
                member: "m1".into(),
                original: s.at("e1", "wallet.paid"),
                yen: 5_000
            }]
        );
    }

    // Proves an interval that does not end after it starts is refused naming the rule.
    #[test]
    fn empty_interval_is_refused() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = store_with(tmp.path(), &[]);
        let snap = engine.snapshot().expect("a snapshot");
        let q = Query {
            from: t(TO),
            to: t(TO),
            ips: Vec::new(),
        };
        let err = victims(&*snap, &q, &mut |_| {}).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "to 2019-07-04T00:00:00Z: the interval must end after it starts (2019-07-04T00:00:00Z)"
        );
    }

    // Proves the type names the pass skips by are the decoder's: each is in the enums' type
    // tables, and an event of each outgoing or credential kind has its name in the list (so no
    // evidence or outgoing event is skipped before decoding). (Planted defect caught: a typo
    // "wallet.transfered_out" fails the first assertion.)
    #[test]
    fn skip_names_are_the_decoders() {
        use ledger::domain::*;
        let wallet_types: Vec<&str> = WalletEvent::TYPES.iter().map(|(n, _)| *n).collect();
        let identity_types: Vec<&str> = IdentityEvent::TYPES.iter().map(|(n, _)| *n).collect();
        assert!(OUTGOING_TYPES.iter().all(|n| wallet_types.contains(n)));
        assert!(CREDENTIAL_TYPES.iter().all(|n| identity_types.contains(n)));
        let outgoing = [
            WalletEvent::Paid(Paid {
                payment: CommandId::new("p").expect("an id"),
                amount: Yen(1),
                merchant: "shop".into(),
                currency: Currency::JPY,
                merchant_category: None,
                device: None,
            }),
            WalletEvent::TransferredOut(TransferredOut {
                to: MemberId::new("m2").expect("an id"),
                amount: Yen(1),
                device: None,
            }),
            WalletEvent::MilesRedeemed(MilesRedeemed {
                miles: Miles(1),
                consumed: Vec::new(),
                device: None,
            }),
            WalletEvent::CouponRedeemed(CouponRedeemed {
                coupon: CouponId::new("c").expect("an id"),
                device: None,
            }),
        ];
        for e in &outgoing {
            assert!(outgoing_of(e).is_some());
            assert!(
                OUTGOING_TYPES.contains(&e.event_type()),
                "{}",
                e.event_type()
            );
        }
        let credentials = [
            IdentityEvent::PasswordChanged(PasswordChanged),
            IdentityEvent::PasswordReset(PasswordReset {
                reason: None,
                operator: false,
            }),
            IdentityEvent::ContactChanged(ContactChanged { login: "x".into() }),
            IdentityEvent::LoggedIn(LoggedIn {
                device: "d".into(),
                ip: ATTACKER_IP.into(),
                new_device: true,
            }),
        ];
        for e in &credentials {
            assert!(credential_of(e, &[]).is_some());
            assert!(
                CREDENTIAL_TYPES.contains(&e.event_type()),
                "{}",
                e.event_type()
            );
        }
        assert_eq!(credentials[3].event_type(), LOGIN_TYPE);
    }
}
