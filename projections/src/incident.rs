//! The incident report of SPEC section 7: who was taken over, by what evidence, and what left
//! their wallets; and the compensations an operator may make from it.
//!
//! Why one module owns the report: `incident victims` writes it, an auditor re-checks it, and
//! `incident compensate` acts on it, so its shape, its hash and the rule for what is compensated
//! live in one place. The report carries a BLAKE3 hash of its own contents ([`Report::hash`]):
//! a report edited after it was made (a member added, an amount raised) is refused before
//! anything is written.
//!
//! The search itself ([`victims`]) is one streaming pass over the log in log order. It keeps
//! state only for members with a credential event in the searched interval, so its memory does
//! not grow with the size of the log or the number of members.

use serde::{Deserialize, Serialize};

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
}
