//! Points in time as whole microseconds since the Unix epoch (UTC).
//!
//! Business time (`at`) and recorded time are both [`Timestamp`]s. They are stored as `i64`
//! little-endian on disk; microseconds keep RFC 3339 input with up to six fractional digits exact.
//! Input with more digits is rejected rather than silently rounded.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Microseconds since 1970-01-01T00:00:00Z.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

/// Why a time string was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimestampError {
    /// Not an RFC 3339 date-time such as `2019-07-30T13:00:00Z`.
    #[error("`{input}` is not an RFC 3339 time (e.g. 2019-07-30T13:00:00+09:00)")]
    Syntax { input: String },
    /// More than six fractional digits: microseconds are the finest unit the ledger keeps.
    #[error("`{input}` has more than microsecond precision")]
    TooPrecise { input: String },
    /// Outside the years 1970..=9999 that the ledger accepts.
    #[error("`{input}` is outside the years 1970 to 9999")]
    OutOfRange { input: String },
}

/// Where the ledger reads the wall clock: the recorded time of every event, the time part of
/// its UUID v7 id, and a command's business time when it has no `at`. The system clock by
/// default ([`SystemClock`]); tests give their own to step it back
/// ([`crate::Ledger::with_engine_and_clock`]).
///
/// Nothing may assume it only moves forward: the system clock can step back (NTP, a VM
/// restored, an operator). Event ids stay strictly increasing with position whatever it does
/// (the writer takes the previous id + 1 when the clock's id is not above it); recorded times
/// follow the clock, backwards too; no rule compares recorded times.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock ([`Timestamp::now`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// The current wall-clock time. Before 1970 (a broken clock) it is clamped to the epoch.
    pub fn now() -> Timestamp {
        let now = OffsetDateTime::now_utc();
        let micros = now.unix_timestamp_nanos() / 1_000;
        Timestamp(i64::try_from(micros.max(0)).unwrap_or(i64::MAX))
    }

    /// Parses an RFC 3339 date-time with offset (`Z` or `+hh:mm`).
    pub fn parse_rfc3339(input: &str) -> Result<Timestamp, TimestampError> {
        let parsed =
            OffsetDateTime::parse(input, &Rfc3339).map_err(|_| TimestampError::Syntax {
                input: input.to_owned(),
            })?;
        let nanos = parsed.unix_timestamp_nanos();
        if nanos % 1_000 != 0 {
            return Err(TimestampError::TooPrecise {
                input: input.to_owned(),
            });
        }
        let micros = nanos / 1_000;
        // 253402300800 s is 10000-01-01T00:00:00Z.
        if !(0..253_402_300_800_000_000).contains(&micros) {
            return Err(TimestampError::OutOfRange {
                input: input.to_owned(),
            });
        }
        Ok(Timestamp(
            i64::try_from(micros).expect("range checked above fits in i64"),
        ))
    }

    /// Formats as RFC 3339 in UTC, e.g. `2019-07-30T04:00:00Z` (fraction only when non-zero).
    pub fn to_rfc3339(self) -> String {
        match OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000) {
            Ok(dt) => dt
                .format(&Rfc3339)
                .unwrap_or_else(|_| format!("@{}us", self.0)),
            Err(_) => format!("@{}us", self.0),
        }
    }

    /// This time plus whole seconds, saturating.
    pub fn plus_seconds(self, seconds: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(seconds.saturating_mul(1_000_000)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_to_the_same_instant() {
        let utc = Timestamp::parse_rfc3339("2019-07-30T04:00:00Z").unwrap();
        let jst = Timestamp::parse_rfc3339("2019-07-30T13:00:00+09:00").unwrap();
        assert_eq!(utc, jst);
        assert_eq!(utc.0, 1_564_459_200_000_000);
        assert_eq!(utc.to_rfc3339(), "2019-07-30T04:00:00Z");
    }

    #[test]
    fn keeps_microseconds_and_rejects_finer() {
        let t = Timestamp::parse_rfc3339("2019-07-30T04:00:00.000001Z").unwrap();
        assert_eq!(t.0, 1_564_459_200_000_001);
        assert_eq!(
            Timestamp::parse_rfc3339("2019-07-30T04:00:00.0000001Z"),
            Err(TimestampError::TooPrecise {
                input: "2019-07-30T04:00:00.0000001Z".into()
            })
        );
    }

    #[test]
    fn rejects_garbage_and_pre_epoch() {
        assert!(matches!(
            Timestamp::parse_rfc3339("yesterday"),
            Err(TimestampError::Syntax { .. })
        ));
        assert!(matches!(
            Timestamp::parse_rfc3339("1969-12-31T23:59:59Z"),
            Err(TimestampError::OutOfRange { .. })
        ));
    }
}
