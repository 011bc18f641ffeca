//! A member's statement: every event of the member's wallet stream in stream order, with its log
//! position, business time, type, command id, the change of the balance and the balance after
//! it. The one owner of that computation: [`crate::WalletService::statement`], the paged read
//! of walletd (`GET /v1/members/{m}/statement`) and `migrate-tool statement` (which also reads
//! beside a writer, from the segment files) all turn records into lines through
//! [`RunningBalance`].
//!
//! Why a running balance and not a wallet state: the balance after an event is the balance
//! before it plus the event's delta ([`balance_delta`]), so a statement of any length costs the
//! memory of one line; no [`ledger::domain::WalletState`] is built. Events that do not move
//! money (the wallet opening, miles, badges, coupons) are listed with a delta of 0, so a
//! statement shows every wallet event and its positions have no holes a reader would wonder
//! about.
//!
//! Invariants [`RunningBalance`] keeps (an error, never a wrong line, when the input breaks
//! them): every record is of the member's wallet stream, versions follow one by one from the
//! start, and the balance never goes below 0 or above `u64::MAX` yen.
//!
//! Paging ([`statement_page`]): a page starts at a [`StatementStart`] (the stream version of its
//! first line and the balance before it) and its `next` is the version after its last line with
//! the balance after it. Stream versions never move, so pages read at different times (the
//! stream growing between them) join without a skipped or repeated line.

use ledger::domain::{wallet_stream, MemberId, WalletEvent};
use ledger::log;
use ledger::record::EventRecord;
use ledger::{ReadError, Snapshot, StreamVersion, Timestamp};

use crate::ProjectionError;

/// Most lines one [`statement_page`] returns: a page is held in memory whole, and its read
/// asks the index for one record more than the page (to know whether the stream goes on),
/// which must stay within [`ledger::limits::MAX_READ_EVENTS`].
pub const MAX_PAGE_LINES: usize = 10_000;
const _: () = assert!(MAX_PAGE_LINES < ledger::limits::MAX_READ_EVENTS);

/// One line of a member's statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementLine {
    /// Log position of the event.
    pub position: u64,
    /// Business time.
    pub at: Timestamp,
    /// Event type, e.g. `wallet.paid`.
    pub event_type: String,
    /// Command that produced it.
    pub command_id: String,
    /// Change of the balance in yen (negative for payments and transfers out).
    pub delta_yen: i128,
    /// Balance after the event.
    pub balance_yen: u64,
}

/// Where a statement page starts: the stream version of its first line and the balance before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatementStart {
    /// Wallet stream version of the first line (versions start at 1).
    pub version: StreamVersion,
    /// Balance before that line, in yen.
    pub opening_balance_yen: u64,
}

impl StatementStart {
    /// The start of every statement: the first event, nothing before it.
    pub const BEGIN: StatementStart = StatementStart {
        version: StreamVersion(1),
        opening_balance_yen: 0,
    };
}

/// A page of a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatementPage {
    /// The lines, in stream order.
    pub lines: Vec<StatementLine>,
    /// None at the end of the stream (as the page's snapshot saw it); otherwise where the next
    /// page starts: the version after the last line and the balance after it.
    pub next: Option<StatementStart>,
}

/// The statement of one member's wallet stream being read: turns its records, in stream order,
/// into lines, carrying the balance from one to the next. See the module doc for what it checks.
#[derive(Clone, Debug)]
pub struct RunningBalance {
    /// The member whose wallet stream this is (named in errors).
    member: MemberId,
    /// `wallet-<member>`: every record must be of it.
    stream: String,
    /// The next line's start: the version the next record must have and the balance before it.
    next: StatementStart,
}

impl RunningBalance {
    /// A statement of `member` that continues at `start` ([`StatementStart::BEGIN`] for a whole
    /// statement).
    pub fn new(member: &MemberId, start: StatementStart) -> RunningBalance {
        RunningBalance {
            member: member.clone(),
            stream: wallet_stream(member),
            next: start,
        }
    }

    /// The member's wallet stream, `wallet-<member>`: the records [`RunningBalance::line`] takes.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Where the statement goes on after the lines so far: the version after the last one and
    /// the balance after it (the start, before any line).
    pub fn next(&self) -> StatementStart {
        self.next
    }

    /// The line of the stream's next record. An error when the record is not of the member's
    /// wallet stream, not the next version, not a wallet event, or would take the balance out
    /// of `0..=u64::MAX` yen.
    pub fn line(&mut self, record: EventRecord) -> Result<StatementLine, ProjectionError> {
        let position = record.position.0;
        if record.stream != self.stream || record.version != self.next.version {
            return Err(ProjectionError::Event {
                position,
                reason: format!(
                    "the statement of member {} expected version {} of stream {}, found version {} of stream {}",
                    self.member, self.next.version.0, self.stream, record.version.0, record.stream
                ),
            });
        }
        let event = crate::hook::decode_wallet_event(&record.as_view())?;
        let delta_yen = balance_delta(&event);
        let after = i128::from(self.next.opening_balance_yen) + delta_yen;
        let balance_yen = u64::try_from(after).map_err(|_| ProjectionError::Event {
            position,
            reason: format!("the balance of member {} would be {after} yen", self.member),
        })?;
        self.next = StatementStart {
            version: StreamVersion(record.version.0 + 1),
            opening_balance_yen: balance_yen,
        };
        Ok(StatementLine {
            position,
            at: record.at,
            event_type: record.event_type,
            command_id: record.command_id,
            delta_yen,
            balance_yen,
        })
    }
}

/// Calls `each` with the line of every record of `records` (the member's wallet stream from
/// `start.version` on, in stream order, from any reader: the index or the segment files), one
/// at a time; returns where the statement goes on after the last one (its `opening_balance_yen`
/// is the final balance). The first error of `records`, of a line or of `each` ends it.
pub fn each_line<E: From<ProjectionError>>(
    records: impl Iterator<Item = Result<EventRecord, ReadError>>,
    member: &MemberId,
    start: StatementStart,
    each: &mut dyn FnMut(StatementLine) -> Result<(), E>,
) -> Result<StatementStart, E> {
    let mut running = RunningBalance::new(member, start);
    for record in records {
        let record = record.map_err(ProjectionError::from)?;
        each(running.line(record)?)?;
    }
    Ok(running.next())
}

/// The member's whole statement on one snapshot, one line at a time in stream order: memory
/// stays the same whatever the history. A member without a wallet has no line.
pub fn statement_each(
    snap: &dyn Snapshot,
    member: &MemberId,
    each: &mut dyn FnMut(StatementLine) -> Result<(), ProjectionError>,
) -> Result<(), ProjectionError> {
    let stream = wallet_stream(member);
    let records = log::stream_events(snap, &stream, StatementStart::BEGIN.version);
    each_line(records, member, StatementStart::BEGIN, each)?;
    Ok(())
}

/// At most `limit` lines of the member's statement from `start` (1..=[`MAX_PAGE_LINES`]), on
/// one snapshot. `next` is `None` when the page ends the stream as the snapshot sees it (one
/// record past the page is read to know), so an exact multiple of `limit` never ends with an
/// empty page; a member without a wallet gets an empty page with `next` `None`.
pub fn statement_page(
    snap: &dyn Snapshot,
    member: &MemberId,
    start: StatementStart,
    limit: usize,
) -> Result<StatementPage, ProjectionError> {
    if !(1..=MAX_PAGE_LINES).contains(&limit) {
        return Err(ProjectionError::Argument {
            name: "limit",
            value: limit.to_string(),
            rule: format!("a statement page holds 1 to {MAX_PAGE_LINES} lines"),
        });
    }
    if start.version.0 == 0 {
        return Err(ProjectionError::Argument {
            name: "start version",
            value: "0".into(),
            rule: "stream versions start at 1".into(),
        });
    }
    let mut running = RunningBalance::new(member, start);
    let records = log::read_stream(snap, running.stream(), start.version, limit + 1)?;
    let more = records.len() > limit;
    let mut lines = Vec::with_capacity(records.len().min(limit));
    for record in records.into_iter().take(limit) {
        lines.push(running.line(record)?);
    }
    debug_assert!(lines.len() == limit || !more);
    Ok(StatementPage {
        lines,
        next: more.then(|| running.next()),
    })
}

/// How a wallet event changes the balance, in yen.
pub fn balance_delta(event: &WalletEvent) -> i128 {
    match event {
        WalletEvent::ToppedUp(e) => i128::from(e.amount.0),
        WalletEvent::Refunded(e) => i128::from(e.amount.0),
        WalletEvent::TransferredIn(e) => i128::from(e.amount.0),
        WalletEvent::Compensated(e) => i128::from(e.amount.0),
        WalletEvent::Paid(e) => -i128::from(e.amount.0),
        WalletEvent::TransferredOut(e) => -i128::from(e.amount.0),
        WalletEvent::WalletOpened(_)
        | WalletEvent::MilesEarned(_)
        | WalletEvent::MilesRedeemed(_)
        | WalletEvent::MilesExpired(_)
        | WalletEvent::BadgeAwarded(_)
        | WalletEvent::CouponIssued(_)
        | WalletEvent::CouponRedeemed(_)
        | WalletEvent::CouponExpired(_)
        | WalletEvent::HoldPlaced(_)
        | WalletEvent::HoldConfirmed(_)
        | WalletEvent::HoldCancelled(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ledger::domain::Command;

    use super::*;
    use crate::test_store::store_with;
    use crate::WalletService;

    /// m1's wallet with every kind of line: money in and out, events that move no money, with
    /// m2's events and m1's identity event between them (not in m1's statement).
    const HISTORY: [&str; 12] = [
        r#"{"id":"s1","type":"open_wallet","member":"m1","at":"2019-07-01T10:00:00+09:00"}"#,
        r#"{"id":"s2","type":"top_up","member":"m1","amount":5000,"at":"2019-07-01T10:01:00+09:00"}"#,
        r#"{"id":"s3","type":"open_wallet","member":"m2","at":"2019-07-01T10:02:00+09:00"}"#,
        r#"{"id":"s4","type":"pay","member":"m1","amount":700,"merchant":"7-Eleven","at":"2019-07-01T10:03:00+09:00"}"#,
        r#"{"id":"s5","type":"earn_miles","member":"m1","miles":100,"expires_at":"2019-08-01T00:00:00+09:00","at":"2019-07-01T10:04:00+09:00"}"#,
        r#"{"id":"s6","type":"refund","member":"m1","payment":"s4","amount":200,"at":"2019-07-01T10:05:00+09:00"}"#,
        r#"{"id":"s7","type":"transfer","from":"m1","to":"m2","amount":1000,"at":"2019-07-01T10:06:00+09:00"}"#,
        r#"{"id":"s8","type":"register","member":"m1","login":"m1@example.jp","at":"2019-07-01T10:07:00+09:00"}"#,
        r#"{"id":"s9","type":"award_badge","member":"m1","badge":"commuter","at":"2019-07-01T10:08:00+09:00"}"#,
        r#"{"id":"s10","type":"top_up","member":"m2","amount":300,"at":"2019-07-01T10:09:00+09:00"}"#,
        r#"{"id":"s11","type":"transfer","from":"m2","to":"m1","amount":250,"at":"2019-07-01T10:10:00+09:00"}"#,
        r#"{"id":"s12","type":"issue_coupon","member":"m1","coupon":"cp-1","value":100,"expires_at":"2019-07-10T00:00:00+09:00","at":"2019-07-01T10:11:00+09:00"}"#,
    ];

    /// m1's statement of [`HISTORY`], by hand: (position, type, command, delta, balance). A
    /// transfer appends the payer's event, then the payee's.
    const EXPECTED: [(u64, &str, &str, i128, u64); 9] = [
        (1, "wallet.opened", "s1", 0, 0),
        (2, "wallet.topped_up", "s2", 5000, 5000),
        (4, "wallet.paid", "s4", -700, 4300),
        (5, "wallet.miles_earned", "s5", 0, 4300),
        (6, "wallet.refunded", "s6", 200, 4500),
        (7, "wallet.transferred_out", "s7", -1000, 3500),
        (10, "wallet.badge_awarded", "s9", 0, 3500),
        (13, "wallet.transferred_in", "s11", 250, 3750),
        (14, "wallet.coupon_issued", "s12", 0, 3750),
    ];

    fn m1() -> MemberId {
        MemberId::new("m1").expect("m1 is a valid member id")
    }

    fn shown(lines: &[StatementLine]) -> Vec<(u64, &str, &str, i128, u64)> {
        lines
            .iter()
            .map(|l| {
                (
                    l.position,
                    l.event_type.as_str(),
                    l.command_id.as_str(),
                    l.delta_yen,
                    l.balance_yen,
                )
            })
            .collect()
    }

    /// Every page from `start` on, following `next` to the end.
    fn all_pages(snap: &dyn Snapshot, start: StatementStart, size: usize) -> Vec<StatementPage> {
        let mut pages = Vec::new();
        let mut next = Some(start);
        while let Some(start) = next {
            let page = statement_page(snap, &m1(), start, size).expect("a page");
            next = page.next;
            pages.push(page);
            assert!(pages.len() <= EXPECTED.len() + 1, "paging does not end");
        }
        pages
    }

    // Proves the whole statement has the hand-computed lines, and that pages of every size from
    // 1 to the statement's length, each started where the previous one said, join into exactly
    // that statement: full pages but the last, no empty last page, `next` None only at the end.
    // (Planted defect caught: `next` at the last line's own version repeats it on the next page.)
    #[test]
    fn pages_of_every_size_join_into_the_whole_statement() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = store_with(tmp.path(), &HISTORY);
        let snap = engine.snapshot().expect("a snapshot");
        let mut whole = Vec::new();
        statement_each(&*snap, &m1(), &mut |line| {
            whole.push(line);
            Ok(())
        })
        .expect("the statement");
        assert_eq!(shown(&whole), EXPECTED);
        assert_eq!(
            whole[2].at,
            Timestamp::parse_rfc3339("2019-07-01T10:03:00+09:00").expect("a valid time"),
            "the payment's business time"
        );

        for size in 1..=EXPECTED.len() {
            let pages = all_pages(&*snap, StatementStart::BEGIN, size);
            assert_eq!(pages.len(), EXPECTED.len().div_ceil(size), "size {size}");
            for page in &pages[..pages.len() - 1] {
                assert_eq!(page.lines.len(), size, "a page before the last is full");
                let last = page.lines.last().expect("a full page has lines");
                let next = page
                    .next
                    .expect("a page before the last says where to go on");
                assert_eq!(next.opening_balance_yen, last.balance_yen);
            }
            assert_eq!(pages.last().and_then(|p| p.next), None, "size {size}");
            let joined: Vec<StatementLine> = pages.into_iter().flat_map(|p| p.lines).collect();
            assert_eq!(joined, whole, "pages of {size} lines");
        }
    }

    // Proves a page started in the middle (version 4, after 4300 yen) carries that balance:
    // its lines are the whole statement's from the fourth on, with the same balances.
    // (Planted defect caught: a page that starts its balance at 0.)
    #[test]
    fn a_page_started_in_the_middle_carries_the_balance() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = store_with(tmp.path(), &HISTORY);
        let snap = engine.snapshot().expect("a snapshot");
        let start = StatementStart {
            version: StreamVersion(4),
            opening_balance_yen: 4300,
        };
        let page = statement_page(&*snap, &m1(), start, 3).expect("a page");
        assert_eq!(shown(&page.lines), EXPECTED[3..6]);
        assert_eq!(
            page.next,
            Some(StatementStart {
                version: StreamVersion(7),
                opening_balance_yen: 3500
            })
        );
        let rest: Vec<StatementLine> = all_pages(&*snap, start, 2)
            .into_iter()
            .flat_map(|p| p.lines)
            .collect();
        assert_eq!(shown(&rest), EXPECTED[3..]);
    }

    // Proves pages read before and after the stream grows join with no line skipped or
    // repeated: `next` is a stream version, which new events never move. (Planted defect
    // caught: `next` as a log position used as a version skips lines.)
    #[test]
    fn pages_join_when_the_stream_grows_between_them() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = store_with(tmp.path(), &HISTORY[..6]);
        let first = {
            let snap = engine.snapshot().expect("a snapshot");
            statement_page(&*snap, &m1(), StatementStart::BEGIN, 3).expect("a page")
        };
        assert_eq!(shown(&first.lines), EXPECTED[..3]);
        let service = WalletService::with_engine(Arc::clone(&engine), Vec::new())
            .expect("the service starts on the store");
        for line in &HISTORY[6..] {
            let cmd = Command::parse_json_line(line).expect("test commands parse");
            service.submit_blocking(&cmd).expect("the command applies");
        }
        let next = first.next.expect("the first page is not the end");
        let rest: Vec<StatementLine> = all_pages(&*engine.snapshot().expect("a snapshot"), next, 4)
            .into_iter()
            .flat_map(|p| p.lines)
            .collect();
        let joined: Vec<StatementLine> = first.lines.into_iter().chain(rest).collect();
        assert_eq!(shown(&joined), EXPECTED);
        assert_eq!(
            service
                .statement_page(&m1(), next, 100)
                .expect("a page")
                .lines,
            joined[3..],
            "the service pages on its own snapshot"
        );
    }

    // Proves a page of 0 lines, of more than the limit, or from version 0 is refused naming
    // the argument, its value and the rule; a member without a wallet has an empty last page.
    #[test]
    fn bad_page_arguments_are_refused_naming_the_rule() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = store_with(tmp.path(), &HISTORY[..2]);
        let snap = engine.snapshot().expect("a snapshot");
        let refused = |start, limit| {
            statement_page(&*snap, &m1(), start, limit)
                .expect_err("refused")
                .to_string()
        };
        assert_eq!(
            refused(StatementStart::BEGIN, 0),
            "limit 0: a statement page holds 1 to 10000 lines"
        );
        assert_eq!(
            refused(StatementStart::BEGIN, MAX_PAGE_LINES + 1),
            "limit 10001: a statement page holds 1 to 10000 lines"
        );
        let zero = StatementStart {
            version: StreamVersion(0),
            opening_balance_yen: 0,
        };
        assert_eq!(
            refused(zero, 5),
            "start version 0: stream versions start at 1"
        );
        let nobody = MemberId::new("nobody").expect("a valid member id");
        let page = statement_page(&*snap, &nobody, StatementStart::BEGIN, 5).expect("a page");
        assert_eq!(
            page,
            StatementPage {
                lines: Vec::new(),
                next: None
            }
        );
    }

    // Proves the running balance refuses a record of another stream, a skipped version and a
    // balance below zero, naming the position, instead of printing a wrong line.
    #[test]
    fn records_out_of_order_or_of_another_stream_are_refused() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = store_with(tmp.path(), &HISTORY);
        let snap = engine.snapshot().expect("a snapshot");
        let records: Vec<EventRecord> = log::stream_events(&*snap, "wallet-m1", StreamVersion(1))
            .collect::<Result<_, _>>()
            .expect("m1's records");
        let m2: Vec<EventRecord> = log::stream_events(&*snap, "wallet-m2", StreamVersion(1))
            .collect::<Result<_, _>>()
            .expect("m2's records");

        let mut running = RunningBalance::new(&m1(), StatementStart::BEGIN);
        let err = running.line(m2[0].clone()).expect_err("another stream");
        assert_eq!(
            err.to_string(),
            "event at position 3 cannot be folded: the statement of member m1 expected version 1 of stream wallet-m1, found version 1 of stream wallet-m2"
        );
        let mut running = RunningBalance::new(&m1(), StatementStart::BEGIN);
        running.line(records[0].clone()).expect("the opening");
        let err = running
            .line(records[2].clone())
            .expect_err("a skipped version");
        assert_eq!(
            err.to_string(),
            "event at position 4 cannot be folded: the statement of member m1 expected version 2 of stream wallet-m1, found version 3 of stream wallet-m1"
        );
        let low = StatementStart {
            version: StreamVersion(3),
            opening_balance_yen: 699,
        };
        let err = RunningBalance::new(&m1(), low)
            .line(records[2].clone())
            .expect_err("a payment of 700 out of 699 yen");
        assert_eq!(
            err.to_string(),
            "event at position 4 cannot be folded: the balance of member m1 would be -1 yen"
        );
    }
}
