//! The gate of SPEC section 5, in one place.
//!
//! Every operation that rewrites or bulk-appends (credential reset, schema upcast, codec change,
//! copy to a new store, deploying new projection code) takes [`Figures`] before, does its work,
//! takes them after, and hands both to [`Gate::finish`] with a declaration of what it may change
//! ([`Declared`]). The gate compares everything else with the same rules for every operation and
//! returns one [`GateReport`], whose differing members all have one shape ([`MemberDiff`]:
//! member, fields that differ, stored and derived wallet). Callers render it and decide what to
//! do with the store; this module never writes.
//!
//! The rules:
//! 1. A store that fails `check` before is refused and nothing is done on it
//!    ([`Gate::refusal`]): a failure after could not be told from one before.
//! 2. Every invariant proven after holds.
//! 3. The head moves exactly as declared.
//! 4. The number of members with a wallet is equal, and so is the wallet digest, except through
//!    the members a [`Declared::Credits`] names: the digest after must be the digest before
//!    with exactly those members' hashes swapped for their hashes after. Where a side carries
//!    the sums of its stored rows ([`RowSums`]), they equal its stored bucket sums (a row
//!    damaged in storage behind the hook's back).
//! 5. Differing members are found through the digest buckets that differ from what was
//!    declared only (about 250 members per bucket at 16.5M members), then described one by one
//!    ([`MemberDiff`]); if a differing bucket names nobody, the wallet streams of those buckets
//!    are walked. At most [`MAX_MEMBERS_SHOWN`] are described, all are counted.
//! 6. Each member a [`Declared::Credits`] names differs in its balance only, by exactly its
//!    declared yen; one that did not change, changed otherwise or has no wallet is a failure
//!    naming it.
//! 7. Where both sides summed the balances ([`Figures::balances_yen`]: a full check), the sum
//!    rises by exactly the declared credits (0 for every other declaration): a second,
//!    independent count of the same money.
//!
//! Invariant of the report: it passes ([`GateReport::ok`]) only with no failure and no
//! differing member; every differing bucket either names a member or adds a failure.
//!
//! The pre-deploy gate ([`predeploy`]) is the same comparison where "before" is the stored views
//! (their bucket sums **S** and the sums of their rows **V**) and "after" is what this build
//! derives from the log (**F**, through [`Derive`], which tests replace with a changed fold).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ledger::domain::{MemberId, WalletState};
use ledger::engine::TableChunks;
use ledger::{Hash, Head, Snapshot};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::check::{CheckReport, Invariant};
use crate::digest::{self, BucketSum, DigestBuilder};
use crate::fold::{self, AsOf, FoldOptions};
use crate::shown::WalletJson;
use crate::views::{self, tables};
use crate::ProjectionError;

/// Differing members described in a report; the rest are counted.
pub const MAX_MEMBERS_SHOWN: usize = 100;
/// Entries read per scan of `wallet_rows`.
const SCAN_CHUNK: usize = 8_192;

/// What an operation declares it may change. Everything else must be equal after. Only a
/// [`Declared::Credits`] declares a change of wallets, and only of the balances it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Declared {
    /// Nothing: the same log seen two ways (the pre-deploy gate).
    Nothing,
    /// Every record rewritten where it stands (a copy-transform migration): every position is
    /// kept; the payload bytes, hence the hash chain and the head hash, may change.
    RecordsRewritten,
    /// `events` events appended, on identity streams only (a credential reset): the head moves
    /// by exactly that many. (That they are identity events is the after check's proof.)
    IdentityAppends { events: u64 },
    /// `events` events appended that raise the balance of each listed member by exactly its
    /// yen and change nothing else (`incident compensate`: one `wallet.compensated` per
    /// compensation). A compensation is folded as a credit of the balance and nothing more
    /// (`WalletState` keeps no record of it: the (incident, original) key lives in the
    /// `view_compensations` row, outside the wallet and the digest), so the wallet after must
    /// equal the wallet before with only the balance raised; holds, available balance aside,
    /// stay as they were. Every other member's wallet must be equal.
    Credits {
        /// Events appended.
        events: u64,
        /// Yen credited per member (each >= 1).
        members: BTreeMap<MemberId, u64>,
    },
}

impl Declared {
    /// The members whose balance the operation declares it raises, with the yen (empty for
    /// every declaration but [`Declared::Credits`]).
    fn credits(&self) -> Option<&BTreeMap<MemberId, u64>> {
        match self {
            Declared::Credits { members, .. } => Some(members),
            _ => None,
        }
    }

    /// The yen the sum of balances rises by.
    fn credited_yen(&self) -> u128 {
        self.credits()
            .map_or(0, |m| m.values().map(|&y| u128::from(y)).sum())
    }
}

/// Bucket sums recomputed from a store's wallet rows themselves (one scan of `wallet_rows`, a
/// member hash being the sum of its row hashes): with them, a row damaged in storage, whose
/// member hash and bucket were not updated with it, shows as a difference from the store's own
/// bucket sums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowSums {
    /// Per digest bucket, the sum of the row hashes of its members.
    pub buckets: Vec<BucketSum>,
    /// Members with rows.
    pub members: u64,
    /// Row keys that name no valid member (lossy UTF-8): each is a differing member.
    pub invalid: Vec<String>,
}

/// What the gate compares, taken at one moment of one store (or derived from it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figures {
    /// The log head.
    pub head: Head,
    /// The wallet digest: the root of [`Figures::buckets`].
    pub digest: Hash,
    /// Members with a wallet.
    pub members: u64,
    /// The SPEC 4 invariants, when this side proves them; `None` for the pre-deploy gate, which
    /// compares the stored views with this build's fold and nothing else.
    pub invariants: Option<Vec<Invariant>>,
    /// The digest's bucket sums: what differing members are found by.
    pub buckets: Vec<BucketSum>,
    /// The same sums recomputed from the stored rows, when this side read them.
    pub rows: Option<RowSums>,
    /// The sum of every wallet's balance (yen), when this side summed them (a full check).
    pub balances_yen: Option<u128>,
}

impl Figures {
    /// The figures of a check of `snap` (the check must be of that very snapshot: its stored
    /// digest is the root of the buckets read here).
    pub fn of_check(check: CheckReport, snap: &dyn Snapshot) -> Result<Figures, ProjectionError> {
        let buckets = digest::stored_buckets(snap)?;
        assert_eq!(
            digest::root_of(&buckets),
            check.digest,
            "Figures::of_check: the check report is of another snapshot"
        );
        Ok(Figures {
            head: check.head,
            digest: check.digest,
            members: check.members,
            invariants: Some(check.invariants),
            buckets,
            rows: None,
            balances_yen: check.balances_yen,
        })
    }

    /// Every proven invariant holds (true when none is proven).
    pub fn ok(&self) -> bool {
        self.invariants
            .as_ref()
            .is_none_or(|all| all.iter().all(|i| i.ok))
    }
}

/// One member whose wallet differs between the two sides of a gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberDiff {
    /// Member id (as stored, when it is not a valid id).
    pub member: String,
    /// Top-level state fields that differ (e.g. `balance`, `coupons`); `wallet` when only one
    /// side has a wallet; `view` when a stored view does not decode or names no valid member;
    /// `member_hash` when the wallets are equal and only the member hashes differ.
    pub fields: Vec<String>,
    /// The wallet in the store the operation started from (`None`: none, or unreadable).
    pub stored: Option<WalletJson>,
    /// The wallet the operation's result derives: the store after it, or this build's fold.
    pub derived: Option<WalletJson>,
}

/// The gate's result, the same for every operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateReport {
    /// What ran (`reset`, `migration`, `deploy`), as the failures name it.
    pub operation: &'static str,
    /// The figures before.
    pub before: Figures,
    /// The figures after; `None` when the operation was refused before it ran.
    pub after: Option<Figures>,
    /// Why the gate refused; empty when it passed.
    pub failures: Vec<String>,
    /// Digest buckets that differ (between the sides, or within a side's rows and sums).
    pub differing_buckets: Vec<u16>,
    /// Differing members, described (at most [`MAX_MEMBERS_SHOWN`]).
    pub diffs: Vec<MemberDiff>,
    /// Differing members in total.
    pub differing_members: u64,
}

impl GateReport {
    /// True when nothing differs that the operation did not declare.
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && self.differing_members == 0
    }

    /// Whether the wallet digest is the same after (`None`: no after figures).
    pub fn digest_unchanged(&self) -> Option<bool> {
        self.after.as_ref().map(|a| a.digest == self.before.digest)
    }

    /// Adds evidence only the operation can give (a migration's record-by-record comparison of
    /// the logs, resets the ledger rejected): the report then fails.
    pub fn add_failure(&mut self, failure: String) {
        self.failures.push(failure);
    }
}

/// A digest bucket's (member, member hash) entries, sorted by member.
pub type BucketEntries = Vec<(String, [u8; 32])>;

/// One side of a comparison: where a member's wallet and member hash are read.
pub trait Side {
    /// The (member, hash) entries of one digest bucket, when this side can list them cheaply (a
    /// store: its `view_member_hash` rows); `None` when it cannot (a fold of the log).
    fn bucket_members(&self, bucket: u16) -> Result<Option<BucketEntries>, ProjectionError>;
    /// One member's wallet. A stored view that does not decode is [`ProjectionError::View`].
    fn wallet(&self, member: &MemberId) -> Result<Option<WalletState>, ProjectionError>;
    /// One member's hash as this side holds it (stored bytes, whatever their width).
    fn member_hash(&self, member: &MemberId) -> Result<Option<Vec<u8>>, ProjectionError>;
    /// The log this side stands on (walked for wallets that no bucket entry names).
    fn log(&self) -> &dyn Snapshot;
}

/// The stored views of one snapshot.
#[derive(Clone, Copy)]
pub struct StoredViews<'a>(pub &'a dyn Snapshot);

impl Side for StoredViews<'_> {
    fn bucket_members(&self, bucket: u16) -> Result<Option<BucketEntries>, ProjectionError> {
        digest::bucket_members(self.0, bucket).map(Some)
    }

    fn wallet(&self, member: &MemberId) -> Result<Option<WalletState>, ProjectionError> {
        views::load_wallet(self.0, member)
    }

    fn member_hash(&self, member: &MemberId) -> Result<Option<Vec<u8>>, ProjectionError> {
        Ok(self
            .0
            .get(tables::MEMBER_HASHES, &digest::member_hash_key(member))?)
    }

    fn log(&self) -> &dyn Snapshot {
        self.0
    }
}

/// How a build derives wallet state from the log. Production uses [`ThisBuild`]; tests plug in
/// a deliberately changed fold to prove the gate catches it.
pub trait Derive {
    /// Folds the whole log: the digest bucket sums and the number of members with a wallet.
    fn buckets(&self, snap: &dyn Snapshot) -> Result<(Vec<BucketSum>, u64), ProjectionError>;
    /// One member's wallet, folded from its own stream.
    fn member(
        &self,
        snap: &dyn Snapshot,
        member: &MemberId,
    ) -> Result<Option<WalletState>, ProjectionError>;
}

/// This build's fold: [`crate::fold`] over `WalletState::apply`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThisBuild;

impl Derive for ThisBuild {
    fn buckets(&self, snap: &dyn Snapshot) -> Result<(Vec<BucketSum>, u64), ProjectionError> {
        let mut builder = DigestBuilder::default();
        let mut members = 0u64;
        let mut sink = |states: BTreeMap<MemberId, Option<WalletState>>| {
            for (member, state) in states {
                if let Some(state) = state {
                    members += 1;
                    builder.add(&member, &digest::member_hash(&state));
                }
            }
            Ok(())
        };
        let mut progress = |_| {};
        fold::fold_log(snap, FoldOptions::new(AsOf::Head, &mut progress), &mut sink)?;
        Ok((builder.buckets().to_vec(), members))
    }

    fn member(
        &self,
        snap: &dyn Snapshot,
        member: &MemberId,
    ) -> Result<Option<WalletState>, ProjectionError> {
        fold::fold_member(snap, member, AsOf::Head)
    }
}

/// A [`Derive`] over one snapshot, as the "after" side of the pre-deploy gate.
struct Derived<'a> {
    snap: &'a dyn Snapshot,
    derive: &'a dyn Derive,
}

impl Side for Derived<'_> {
    fn bucket_members(&self, _: u16) -> Result<Option<BucketEntries>, ProjectionError> {
        // Listing a bucket's members would mean folding the whole log again.
        Ok(None)
    }

    fn wallet(&self, member: &MemberId) -> Result<Option<WalletState>, ProjectionError> {
        self.derive.member(self.snap, member)
    }

    fn member_hash(&self, member: &MemberId) -> Result<Option<Vec<u8>>, ProjectionError> {
        Ok(self
            .wallet(member)?
            .map(|state| digest::member_hash(&state).to_vec()))
    }

    fn log(&self) -> &dyn Snapshot {
        self.snap
    }
}

/// The gate of one operation, between its before and after figures.
#[derive(Debug)]
pub struct Gate {
    operation: &'static str,
    before: Figures,
}

impl Gate {
    /// Opens the gate of `operation` (named in failures: `reset`, `migration`) with the figures
    /// taken before it.
    pub fn begin(operation: &'static str, before: Figures) -> Gate {
        Gate { operation, before }
    }

    /// The figures before.
    pub fn before(&self) -> &Figures {
        &self.before
    }

    /// Why the operation must not start: the store fails `check` before. `None`: go ahead.
    pub fn refusal(&self) -> Option<String> {
        (!self.before.ok()).then(|| {
            format!(
                "the store fails `check` before the {}; nothing was done",
                self.operation
            )
        })
    }

    /// Ends without after figures: the operation did not run, or stopped before the gate could
    /// take them, for `reasons` (at least one).
    pub fn refuse(self, reasons: Vec<String>) -> GateReport {
        assert!(!reasons.is_empty(), "a refusal says why");
        GateReport {
            operation: self.operation,
            before: self.before,
            after: None,
            failures: reasons,
            differing_buckets: Vec::new(),
            diffs: Vec::new(),
            differing_members: 0,
        }
    }

    /// Compares `after` with the figures before under `declared` (the rules in the module doc),
    /// finding differing members by reading `stored` (the store the operation started from) and
    /// `derived` (its result). `Err` only when a store cannot be read.
    pub fn finish(
        self,
        declared: Declared,
        after: Figures,
        stored: &dyn Side,
        derived: &dyn Side,
    ) -> Result<GateReport, ProjectionError> {
        let before = &self.before;
        let mut failures: Vec<String> = self.refusal().into_iter().collect();
        for inv in after.invariants.iter().flatten().filter(|i| !i.ok) {
            failures.push(format!(
                "invariant {} held before and fails after: {}",
                inv.name,
                inv.details.join("; ")
            ));
        }
        failures.extend(head_failure(
            self.operation,
            &declared,
            before.head,
            after.head,
        ));
        if after.members != before.members {
            failures.push(format!(
                "members with a wallet: {} before, {} after",
                before.members, after.members
            ));
        }
        let no_credits = BTreeMap::new();
        let credited = declared.credits().unwrap_or(&no_credits);
        // The bucket sums the declaration explains: before's, with each credited member's hash
        // swapped for its hash after. Anything else that differs is undeclared.
        let expected = credited_buckets(&before.buckets, credited, stored, derived)?;
        let explained = digest::root_of(&expected);
        if after.digest != explained {
            failures.push(if credited.is_empty() {
                format!(
                    "wallet digest changed from {} to {}",
                    before.digest, after.digest
                )
            } else {
                format!(
                    "wallet digest changed from {} to {}; the {} credited members explain {}",
                    before.digest,
                    after.digest,
                    credited.len(),
                    explained
                )
            });
        }
        if let (Some(was), Some(now)) = (before.balances_yen, after.balances_yen) {
            let declared_yen = declared.credited_yen();
            if now != was + declared_yen {
                failures.push(format!(
                    "sum of balances went from {was} to {now} yen; the {} declares a rise of \
                     {declared_yen} yen",
                    self.operation
                ));
            }
        }
        let mut buckets: BTreeSet<u16> = digest::differing_buckets(&expected, &after.buckets)
            .into_iter()
            .collect();
        let mut invalid = Vec::new();
        for side in [before, &after] {
            let Some(rows) = &side.rows else { continue };
            let damaged = digest::differing_buckets(&side.buckets, &rows.buckets);
            if !damaged.is_empty() {
                failures.push(format!(
                    "the stored wallet rows of {} digest bucket(s) do not sum to the stored \
                     bucket sums (rows changed behind the views' hashes)",
                    damaged.len()
                ));
            }
            buckets.extend(damaged);
            invalid.extend(rows.invalid.iter().cloned());
        }
        let mut found = localise(&buckets, &invalid, stored, derived, credited)?;
        if !buckets.is_empty() && found.count == 0 {
            failures.push(format!(
                "digest buckets {} differ but no member's wallet or hash does: the bucket sums \
                 are damaged",
                bucket_list(&buckets)
            ));
        }
        check_credits(credited, stored, derived, &mut found, &mut failures)?;
        Ok(GateReport {
            operation: self.operation,
            before: self.before,
            after: Some(after),
            failures,
            differing_buckets: buckets.into_iter().collect(),
            diffs: found.shown,
            differing_members: found.count,
        })
    }
}

/// Whether the head moved as declared; the failure if not.
fn head_failure(operation: &str, declared: &Declared, before: Head, after: Head) -> Option<String> {
    match *declared {
        Declared::Nothing if after != before => Some(format!(
            "head moved from {} ({}) to {} ({}); the {operation} declares no change",
            before.position, before.hash, after.position, after.hash
        )),
        Declared::RecordsRewritten if after.position != before.position => Some(format!(
            "head position moved from {} to {} (the {operation} keeps every position)",
            before.position, after.position
        )),
        Declared::IdentityAppends { events } | Declared::Credits { events, .. }
            if after.position.0 != before.position.0 + events =>
        {
            Some(format!(
                "head moved to {} but the {operation} appended {events} events from {}",
                after.position, before.position
            ))
        }
        _ => None,
    }
}

/// `before`'s bucket sums with each credited member's hash (as `stored` holds it) swapped for
/// its hash as `derived` holds it: the sums the declared credits explain. A side without the
/// member (or with a hash of another width) contributes nothing; [`check_credits`] names it.
fn credited_buckets(
    before: &[BucketSum],
    credited: &BTreeMap<MemberId, u64>,
    stored: &dyn Side,
    derived: &dyn Side,
) -> Result<Vec<BucketSum>, ProjectionError> {
    let mut sums = before.to_vec();
    let hash = |bytes: Option<Vec<u8>>| bytes.and_then(|b| <[u8; 32]>::try_from(b).ok());
    for member in credited.keys() {
        let sum = &mut sums[usize::from(digest::bucket_of(member))];
        if let Some(old) = hash(stored.member_hash(member)?) {
            sum.sub(&old);
        }
        if let Some(new) = hash(derived.member_hash(member)?) {
            sum.add(&new);
        }
    }
    Ok(sums)
}

/// Rule 6: every credited member's wallet differs in its balance only, by exactly its yen.
/// A wallet changed otherwise is also a differing member (described in `found`).
fn check_credits(
    credited: &BTreeMap<MemberId, u64>,
    stored: &dyn Side,
    derived: &dyn Side,
    found: &mut Found,
    failures: &mut Vec<String>,
) -> Result<(), ProjectionError> {
    for (member, &yen) in credited {
        let declared = format!("member {member} was declared a credit of {yen} yen");
        let (s, d) = (read_wallet(stored, member)?, read_wallet(derived, member)?);
        let (Ok(Some(a)), Ok(Some(b))) = (&s, &d) else {
            let side = |w: &Result<Option<WalletState>, ()>| match w {
                Ok(Some(_)) => "a wallet",
                Ok(None) => "no wallet",
                Err(()) => "an unreadable wallet view",
            };
            failures.push(format!(
                "{declared} but has {} before and {} after",
                side(&s),
                side(&d)
            ));
            continue;
        };
        let fields = differing_fields(a, b);
        if fields.is_empty() {
            failures.push(format!(
                "{declared} but its wallet did not change (balance {} yen)",
                a.balance().0
            ));
            continue;
        }
        let rose = b.balance().0.checked_sub(a.balance().0);
        if fields == ["balance"] && rose == Some(yen) {
            continue;
        }
        failures.push(format!(
            "{declared} to its balance only, but its balance went from {} to {} yen and {} \
             differ",
            a.balance().0,
            b.balance().0,
            fields.join(", ")
        ));
        found.add(MemberDiff {
            member: member.to_string(),
            fields,
            stored: Some(WalletJson::of(a)),
            derived: Some(WalletJson::of(b)),
        });
    }
    Ok(())
}

/// The first few buckets of a set, for a message.
fn bucket_list(buckets: &BTreeSet<u16>) -> String {
    let mut shown: Vec<String> = buckets.iter().take(10).map(u16::to_string).collect();
    if buckets.len() > shown.len() {
        shown.push(format!("... ({} in all)", buckets.len()));
    }
    shown.join(", ")
}

/// Differing members found: the first few described, all counted.
#[derive(Default)]
struct Found {
    shown: Vec<MemberDiff>,
    count: u64,
}

impl Found {
    fn add(&mut self, diff: MemberDiff) {
        self.count += 1;
        if self.shown.len() < MAX_MEMBERS_SHOWN {
            self.shown.push(diff);
        }
    }
}

/// Finds and describes the members that differ in `buckets`, plus the `invalid` row names;
/// `credited` members are left to [`check_credits`].
fn localise(
    buckets: &BTreeSet<u16>,
    invalid: &[String],
    stored: &dyn Side,
    derived: &dyn Side,
    credited: &BTreeMap<MemberId, u64>,
) -> Result<Found, ProjectionError> {
    let mut candidates: BTreeSet<String> = invalid.iter().cloned().collect();
    for &bucket in buckets {
        let listed = (
            stored.bucket_members(bucket)?,
            derived.bucket_members(bucket)?,
        );
        match listed {
            // Both listed: an entry in both is the same member with the same hash.
            (Some(s), Some(d)) => candidates.extend(
                s.iter()
                    .filter(|e| !d.contains(e))
                    .chain(d.iter().filter(|e| !s.contains(e)))
                    .map(|(m, _)| m.clone()),
            ),
            (Some(one), None) | (None, Some(one)) => {
                candidates.extend(one.into_iter().map(|(m, _)| m))
            }
            (None, None) => {}
        }
    }
    candidates.retain(|name| {
        MemberId::new(name.as_str()).map_or(true, |member| !credited.contains_key(&member))
    });
    let mut found = Found::default();
    for name in &candidates {
        if let Some(diff) = describe(name, stored, derived)? {
            found.add(diff);
        }
    }
    // A bucket can differ only because a member has a wallet in the log and no trace at all in
    // the stored views (no hash, no row): those are found by the wallet streams of the bucket.
    if found.count == 0 && !buckets.is_empty() {
        for name in digest::wallet_members_in(derived.log(), buckets)? {
            let is_credited =
                MemberId::new(name.as_str()).is_ok_and(|member| credited.contains_key(&member));
            if !candidates.contains(&name) && !is_credited {
                if let Some(diff) = describe(&name, stored, derived)? {
                    found.add(diff);
                }
            }
        }
    }
    Ok(found)
}

/// A side's wallet of `member`: `Err(())` when its stored view does not decode.
fn read_wallet(
    side: &dyn Side,
    member: &MemberId,
) -> Result<Result<Option<WalletState>, ()>, ProjectionError> {
    match side.wallet(member) {
        Ok(wallet) => Ok(Ok(wallet)),
        Err(ProjectionError::View { .. }) => Ok(Err(())),
        Err(e) => Err(e),
    }
}

/// Compares one member between the sides; `None` when wallet and hash are equal.
fn describe(
    name: &str,
    stored: &dyn Side,
    derived: &dyn Side,
) -> Result<Option<MemberDiff>, ProjectionError> {
    let Ok(member) = MemberId::new(name) else {
        return Ok(Some(MemberDiff {
            member: name.to_owned(),
            fields: vec!["view".into()],
            stored: None,
            derived: None,
        }));
    };
    let (s, d) = (
        read_wallet(stored, &member)?,
        read_wallet(derived, &member)?,
    );
    let mut fields = match (&s, &d) {
        (Err(()), _) | (_, Err(())) => vec!["view".to_owned()],
        (Ok(None), Ok(None)) => Vec::new(),
        (Ok(Some(_)), Ok(None)) | (Ok(None), Ok(Some(_))) => vec!["wallet".to_owned()],
        (Ok(Some(a)), Ok(Some(b))) => differing_fields(a, b),
    };
    if fields.is_empty() && stored.member_hash(&member)? != derived.member_hash(&member)? {
        fields.push("member_hash".to_owned());
    }
    if fields.is_empty() {
        return Ok(None);
    }
    let shown = |w: &Result<Option<WalletState>, ()>| w.as_ref().ok()?.as_ref().map(WalletJson::of);
    Ok(Some(MemberDiff {
        member: name.to_owned(),
        fields,
        stored: shown(&s),
        derived: shown(&d),
    }))
}

/// Top-level fields of the canonical state (its serde form) that differ between two wallets,
/// and `holds` when the pending holds differ (the serde form skips them).
pub fn differing_fields(a: &WalletState, b: &WalletState) -> Vec<String> {
    let object = |s: &WalletState| {
        let value = serde_json::to_value(s)
            .expect("a WalletState serializes: its map keys are strings, its values integers");
        match value {
            serde_json::Value::Object(map) => map,
            other => unreachable!("a WalletState (a struct) serialized as {other}"),
        }
    };
    let mut fields: Vec<String> = {
        let (a, b) = (object(a), object(b));
        let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect()
    };
    // The serde form skips the pending holds (see `WalletState`): compared here.
    if a.holds() != b.holds() || a.held() != b.held() {
        fields.push("holds".to_owned());
    }
    fields
}

/// Sums of the stored wallet rows per digest bucket (one scan, nothing decoded).
pub fn row_sums(snap: &dyn Snapshot) -> Result<RowSums, ProjectionError> {
    let mut sums = RowSums {
        buckets: vec![BucketSum::default(); digest::BUCKET_COUNT],
        members: 0,
        invalid: Vec::new(),
    };
    let mut last: Option<(Vec<u8>, Option<u16>)> = None;
    for rows in TableChunks::new(snap, tables::ROWS, SCAN_CHUNK) {
        for (key, value) in &rows? {
            let name = key.split(|&b| b == 0).next().unwrap_or_default();
            let bucket = match &last {
                Some((n, b)) if n.as_slice() == name => *b,
                _ => {
                    let member = std::str::from_utf8(name)
                        .ok()
                        .and_then(|n| MemberId::new(n).ok());
                    let b = member.as_ref().map(digest::bucket_of);
                    match b {
                        Some(_) => sums.members += 1,
                        None => sums
                            .invalid
                            .push(String::from_utf8_lossy(name).into_owned()),
                    }
                    last = Some((name.to_vec(), b));
                    b
                }
            };
            if let Some(b) = bucket {
                sums.buckets[usize::from(b)].add(&views::row_hash(key, value));
            }
        }
    }
    Ok(sums)
}

/// The pre-deploy gate's report and where its time went.
#[derive(Clone, Debug)]
pub struct PreDeploy {
    /// The comparison.
    pub report: GateReport,
    /// Folding the log with the deploying build (F).
    pub fold: Duration,
    /// Reading the stored sums (S) and summing the stored rows (V).
    pub views: Duration,
    /// Comparing and describing the differing members.
    pub localise: Duration,
}

/// The pre-deploy gate over one snapshot: is what `derive` derives from the log exactly what
/// the running build stored? Before = the stored views (S, and V from their rows), after = the
/// fold (F), nothing declared.
pub fn predeploy(snap: &dyn Snapshot, derive: &dyn Derive) -> Result<PreDeploy, ProjectionError> {
    let (head, _) = ledger::log::read_head(snap)?;
    let started = Instant::now();
    let (fresh, members) = derive.buckets(snap)?;
    let fold = started.elapsed();
    let started = Instant::now();
    let stored = digest::stored_buckets(snap)?;
    let rows = row_sums(snap)?;
    let views = started.elapsed();
    let before = Figures {
        head,
        digest: digest::root_of(&stored),
        members: rows.members,
        invariants: None,
        buckets: stored,
        rows: Some(rows),
        balances_yen: None,
    };
    let after = Figures {
        head,
        digest: digest::root_of(&fresh),
        members,
        invariants: None,
        buckets: fresh,
        rows: None,
        balances_yen: None,
    };
    let started = Instant::now();
    let report = Gate::begin("deploy", before).finish(
        Declared::Nothing,
        after,
        &StoredViews(snap),
        &Derived { snap, derive },
    )?;
    Ok(PreDeploy {
        report,
        fold,
        views,
        localise: started.elapsed(),
    })
}

/// The pre-deploy gate of this build ([`predeploy`] with [`ThisBuild`]) over one snapshot:
/// what `migrate-tool gate` runs, and what a service runs on a snapshot of its own store while
/// it serves.
pub fn predeploy_report(snap: &dyn Snapshot) -> Result<PreDeploy, ProjectionError> {
    predeploy(snap, &ThisBuild)
}

/// Before or after figures as JSON: head, head hash, digest, members, whether every invariant
/// holds and the invariants (both `null` where that side proves none: the pre-deploy gate).
pub fn figures_json(f: &Figures) -> Value {
    json!({
        "head": f.head.position.0,
        "head_hash": f.head.hash.to_hex(),
        "digest": f.digest.to_hex(),
        "members": f.members,
        "ok": f.invariants.as_ref().map(|_| f.ok()),
        "invariants": f.invariants,
    })
}

/// The keys every gate's JSON document has: `ok`, `before`, `after`, `digest_unchanged`,
/// `failures`, `differing_buckets` (a count), `differing_members` (a count) and
/// `changed_members` (`{member, fields, stored, derived}` each, at most [`MAX_MEMBERS_SHOWN`]).
/// Each operation adds its own keys (see [`predeploy_json`]).
pub fn report_fields(report: &GateReport) -> Map<String, Value> {
    let mut doc = Map::new();
    doc.insert("ok".into(), json!(report.ok()));
    doc.insert("before".into(), figures_json(&report.before));
    doc.insert(
        "after".into(),
        report.after.as_ref().map_or(Value::Null, figures_json),
    );
    doc.insert("digest_unchanged".into(), json!(report.digest_unchanged()));
    doc.insert("failures".into(), json!(report.failures));
    doc.insert(
        "differing_buckets".into(),
        json!(report.differing_buckets.len()),
    );
    doc.insert("differing_members".into(), json!(report.differing_members));
    doc.insert("changed_members".into(), json!(report.diffs));
    doc
}

/// The pre-deploy gate's JSON document: [`report_fields`] plus where its time went (`fold_ms`,
/// `views_ms`, `localise_ms`). One owner, so `migrate-tool gate --json` and a service's
/// `POST /v1/gate` print the same document for the same run.
pub fn predeploy_json(run: &PreDeploy) -> Value {
    let mut doc = report_fields(&run.report);
    doc.insert("fold_ms".into(), json!(run.fold.as_millis() as u64));
    doc.insert("views_ms".into(), json!(run.views.as_millis() as u64));
    doc.insert("localise_ms".into(), json!(run.localise.as_millis() as u64));
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{self, no_progress, CheckReport};
    use crate::test_store;
    use ledger::domain::{apply_wallet_event, FoldError, ToppedUp, WalletEvent, Yen};
    use ledger::{Engine, StreamVersion};

    /// A fold whose logic changed: every top-up credits one yen more (a "fee" refactor gone
    /// wrong). Built only here, never in a binary.
    struct ChangedFold;

    fn changed_apply(
        state: &mut Option<WalletState>,
        event: &WalletEvent,
        position: u64,
    ) -> Result<(), ProjectionError> {
        let changed = match event {
            WalletEvent::ToppedUp(e) => WalletEvent::ToppedUp(ToppedUp {
                amount: Yen(e.amount.0 + 1),
            }),
            other => other.clone(),
        };
        apply_wallet_event(state, &changed).map_err(|e: FoldError| ProjectionError::Event {
            position,
            reason: e.to_string(),
        })
    }

    impl Derive for ChangedFold {
        fn buckets(&self, snap: &dyn Snapshot) -> Result<(Vec<BucketSum>, u64), ProjectionError> {
            let mut states: BTreeMap<MemberId, Option<WalletState>> = BTreeMap::new();
            for record in ledger::log::events(snap, ledger::Position(1)) {
                let record = record?;
                if let Some((m, e)) = crate::hook::wallet_event_of(&record)? {
                    changed_apply(states.entry(m).or_default(), &e, record.position.0)?;
                }
            }
            let mut builder = DigestBuilder::default();
            for (m, s) in &states {
                builder.add(m, &digest::member_hash(s.as_ref().expect("opened wallets")));
            }
            Ok((builder.buckets().to_vec(), states.len() as u64))
        }

        fn member(
            &self,
            snap: &dyn Snapshot,
            member: &MemberId,
        ) -> Result<Option<WalletState>, ProjectionError> {
            let stream = ledger::domain::wallet_stream(member);
            let mut state = None;
            for r in ledger::log::stream_events(snap, &stream, StreamVersion(1)) {
                let r = r?;
                if let Some((_, e)) = crate::hook::wallet_event_of(&r)? {
                    changed_apply(&mut state, &e, r.position.0)?;
                }
            }
            Ok(state)
        }
    }

    fn figures(engine: &dyn Engine) -> Figures {
        let snap = engine.snapshot().expect("a snapshot");
        let report = check::check_snapshot(&*snap, &no_progress).expect("the store reads");
        Figures::of_check(report, &*snap).expect("the store reads")
    }

    // Proves the pre-deploy gate passes for this build's fold and, for a fold whose logic
    // changed, fails naming exactly the member whose wallet it derives differently, and the
    // field, with the stored and the derived wallet.
    #[test]
    fn predeploy_catches_a_changed_fold_naming_member_and_field() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = test_store::setup(tmp.path());
        let snap = engine.snapshot().expect("a snapshot");
        let same = predeploy(&*snap, &ThisBuild)
            .expect("the store reads")
            .report;
        assert!(same.ok(), "{same:?}");
        assert_eq!(same.after.as_ref().map(|a| a.members), Some(2));
        let changed = predeploy(&*snap, &ChangedFold)
            .expect("the store reads")
            .report;
        assert!(!changed.ok());
        assert_eq!(changed.differing_members, 1);
        assert_eq!(changed.differing_buckets.len(), 1);
        let diff = &changed.diffs[0];
        assert_eq!(diff.member, "m1");
        assert_eq!(diff.fields, ["balance"]);
        let balance = |w: &Option<WalletJson>| w.as_ref().expect("both have a wallet").balance;
        assert_eq!(
            (balance(&diff.stored), balance(&diff.derived)),
            (4300, 4301)
        );
        assert!(
            changed.failures[0].starts_with("wallet digest changed from "),
            "{:?}",
            changed.failures
        );
    }

    // Proves the pre-deploy gate catches a wallet row changed behind the views' hashes (S = F,
    // but the rows' own sums V differ), naming the member and the field.
    #[test]
    fn predeploy_catches_a_row_damaged_in_storage() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = test_store::setup(tmp.path());
        let m2 = MemberId::new("m2").expect("a valid id");
        let mut state = views::load_wallet(&*engine.snapshot().expect("a snapshot"), &m2)
            .expect("the store reads")
            .expect("m2 has a wallet");
        state
            .apply(&WalletEvent::ToppedUp(ToppedUp { amount: Yen(9) }))
            .expect("a top-up applies");
        let mut batch = ledger::WriteBatch::new();
        views::put_wallet(&mut batch, &state);
        engine.commit(batch).expect("the damage commits");
        let snap = engine.snapshot().expect("a snapshot");
        let report = predeploy(&*snap, &ThisBuild)
            .expect("the store reads")
            .report;
        assert!(!report.ok());
        assert_eq!(report.digest_unchanged(), Some(true));
        assert_eq!(report.differing_members, 1);
        assert_eq!(report.diffs[0].member, "m2");
        assert_eq!(report.diffs[0].fields, ["balance"]);
        assert_eq!(report.diffs[0].stored.as_ref().map(|w| w.balance), Some(9));
        assert_eq!(report.diffs[0].derived.as_ref().map(|w| w.balance), Some(0));
    }

    /// Copies the store directory `from` (its files and subdirectories) into `to`, which must
    /// not exist; `to` may lie inside `from`: it is skipped.
    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir(to).expect("a fresh dir");
        for entry in std::fs::read_dir(from).expect("the store dir lists") {
            let entry = entry.expect("an entry");
            let path = entry.path();
            if path == to {
                continue;
            }
            if entry.file_type().expect("a type").is_dir() {
                copy_dir(&path, &to.join(entry.file_name()));
            } else {
                std::fs::copy(&path, to.join(entry.file_name())).expect("the store copies");
            }
        }
    }

    /// The reset's gate (one identity event declared) from `before`, taken on `old`, to `after`,
    /// a check of `new`.
    fn reset_gate(
        before: Figures,
        old: &dyn Snapshot,
        new: &dyn Snapshot,
        after: CheckReport,
    ) -> GateReport {
        Gate::begin("reset", before)
            .finish(
                Declared::IdentityAppends { events: 1 },
                Figures::of_check(after, new).expect("the store reads"),
                &StoredViews(old),
                &StoredViews(new),
            )
            .expect("the stores read")
    }

    // Proves the gate between two stores: an operation that declared identity appends only but
    // changed a wallet fails on the digest and the head, and names the member with the stored
    // (before) and derived (after) wallets; the honest one passes.
    #[test]
    fn a_wallet_changed_by_an_identity_operation_is_named() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = test_store::setup(tmp.path());
        let before = figures(&*engine);
        let before_copy = tmp.path().join("before");
        drop(engine);
        // The whole store directory (index file and segments), closed, is the store as it was.
        copy_dir(tmp.path(), &before_copy);
        let old =
            ledger::store::open_engine(&before_copy, ledger::Create::No, ledger::Backend::Redb)
                .expect("the copy opens");
        let old_snap = old.snapshot().expect("a snapshot");
        let honest = test_store::store_with(tmp.path(), &[test_store::RESET_M1]);
        let new_snap = honest.snapshot().expect("a snapshot");
        let after = check::check_snapshot(&*new_snap, &no_progress).expect("the store reads");
        let passed = reset_gate(before.clone(), &*old_snap, &*new_snap, after);
        assert!(passed.ok(), "{passed:?}");
        drop(new_snap);
        drop(honest);
        // The same store with a wallet event on top: head 11 where 10 was declared.
        let faulty = test_store::store_with(tmp.path(), &[test_store::TOP_UP_M2]);
        let new_snap = faulty.snapshot().expect("a snapshot");
        let after = check::check_snapshot(&*new_snap, &no_progress).expect("the store reads");
        let report = reset_gate(before, &*old_snap, &*new_snap, after);
        assert!(!report.ok());
        let has = |wanted: &str| report.failures.iter().any(|f| f.starts_with(wanted));
        assert!(has("wallet digest changed from"), "{:?}", report.failures);
        assert!(
            has("head moved to 11 but the reset appended 1 events from 9"),
            "{:?}",
            report.failures
        );
        assert_eq!(report.differing_members, 1);
        let diff = &report.diffs[0];
        assert_eq!(
            (diff.member.as_str(), diff.fields.as_slice()),
            ("m2", &["balance".to_owned()][..])
        );
        assert_eq!(diff.stored.as_ref().map(|w| w.balance), Some(0));
        assert_eq!(diff.derived.as_ref().map(|w| w.balance), Some(5));
    }

    /// `compensate` of m1's payment of 700 yen (position 3 of [`test_store::SETUP`]).
    const COMPENSATE_M1: &str = r#"{"id":"k1","type":"compensate","member":"m1","incident":"7pay","original":3,"amount":700}"#;
    /// A badge for m1: a wallet change that is not a credit.
    const BADGE_M1: &str = r#"{"id":"b9","type":"award_badge","member":"m1","badge":"sorry"}"#;

    /// The credits' declaration of `members` (member, yen) and `events`.
    fn credits(events: u64, members: &[(&str, u64)]) -> Declared {
        Declared::Credits {
            events,
            members: members
                .iter()
                .map(|(m, y)| (MemberId::new(*m).expect("a valid id"), *y))
                .collect(),
        }
    }

    /// The gate between the [`test_store::SETUP`] store and the same store after `work`,
    /// under `declared`, with full checks on both sides; `tamper` may change the after
    /// figures first.
    fn credit_gate(
        work: &[&str],
        declared: Declared,
        tamper: impl FnOnce(&mut Figures),
    ) -> GateReport {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = test_store::setup(tmp.path());
        let before = figures(&*engine);
        drop(engine);
        let before_copy = tmp.path().join("before");
        copy_dir(tmp.path(), &before_copy);
        let old =
            ledger::store::open_engine(&before_copy, ledger::Create::No, ledger::Backend::Redb)
                .expect("the copy opens");
        let old_snap = old.snapshot().expect("a snapshot");
        let new = test_store::store_with(tmp.path(), work);
        let mut after = figures(&*new);
        tamper(&mut after);
        let new_snap = new.snapshot().expect("a snapshot");
        Gate::begin("compensation", before)
            .finish(
                declared,
                after,
                &StoredViews(&*old_snap),
                &StoredViews(&*new_snap),
            )
            .expect("the stores read")
    }

    fn has(report: &GateReport, wanted: &str) -> bool {
        report.failures.iter().any(|f| f.contains(wanted))
    }

    // Proves a credit of exactly the declared yen to exactly the declared member passes: the
    // digest differs, but only through the credited member, and the sum of balances rose by
    // exactly the credit. (Planted defect caught: `credited_buckets` not swapping the credited
    // member's hash fails it with "wallet digest changed".)
    #[test]
    fn credits_pass_when_exactly_the_declared_balances_rise() {
        let report = credit_gate(&[COMPENSATE_M1], credits(1, &[("m1", 700)]), |_| {});
        assert!(report.ok(), "{:?}", report.failures);
        assert_eq!(report.digest_unchanged(), Some(false));
        assert_eq!(report.before.balances_yen, Some(4300));
        assert_eq!(
            report.after.as_ref().and_then(|a| a.balances_yen),
            Some(5000)
        );
    }

    // Proves a declared member credited another amount than declared is a failure naming it
    // with both balances, and the sum of balances disagrees too.
    #[test]
    fn a_credit_of_another_amount_fails_naming_the_member() {
        let report = credit_gate(&[COMPENSATE_M1], credits(1, &[("m1", 500)]), |_| {});
        assert!(!report.ok());
        assert!(
            has(&report, "member m1 was declared a credit of 500 yen to its balance only, but its balance went from 4300 to 5000 yen"),
            "{:?}",
            report.failures
        );
        assert!(
            has(&report, "sum of balances went from 4300 to 5000 yen; the compensation declares a rise of 500 yen"),
            "{:?}",
            report.failures
        );
        assert_eq!(report.diffs[0].member, "m1");
    }

    // Proves a wallet the declaration does not name that changed (m2 topped up alongside the
    // credit of m1) fails the gate and is named, with its field and both wallets; the credited
    // member is not listed as differing.
    #[test]
    fn an_undeclared_wallet_change_is_named() {
        let report = credit_gate(
            &[COMPENSATE_M1, test_store::TOP_UP_M2],
            credits(2, &[("m1", 700)]),
            |_| {},
        );
        assert!(!report.ok());
        assert!(
            has(&report, "wallet digest changed from"),
            "{:?}",
            report.failures
        );
        assert_eq!(report.differing_members, 1);
        let diff = &report.diffs[0];
        assert_eq!(
            (diff.member.as_str(), diff.fields.as_slice()),
            ("m2", &["balance".to_owned()][..])
        );
        assert_eq!(diff.stored.as_ref().map(|w| w.balance), Some(0));
        assert_eq!(diff.derived.as_ref().map(|w| w.balance), Some(5));
    }

    // Proves a declared member whose wallet did not change is a failure naming it.
    #[test]
    fn a_declared_member_that_did_not_change_fails() {
        let report = credit_gate(
            &[COMPENSATE_M1],
            credits(1, &[("m1", 700), ("m2", 5)]),
            |_| {},
        );
        assert!(!report.ok());
        assert!(
            has(&report, "member m2 was declared a credit of 5 yen but its wallet did not change (balance 0 yen)"),
            "{:?}",
            report.failures
        );
    }

    // Proves a declared member whose wallet changed beyond its balance (a badge with the
    // credit) is a failure naming the member and the other field.
    #[test]
    fn a_declared_member_changed_beyond_its_balance_fails() {
        let report = credit_gate(
            &[COMPENSATE_M1, BADGE_M1],
            credits(2, &[("m1", 700)]),
            |_| {},
        );
        assert!(!report.ok());
        assert!(
            has(&report, "member m1 was declared a credit of 700 yen to its balance only, but its balance went from 4300 to 5000 yen and badges, balance differ"),
            "{:?}",
            report.failures
        );
        assert_eq!(report.diffs[0].fields, ["badges", "balance"]);
    }

    // Proves the head must move by exactly the declared events under a credit.
    #[test]
    fn credits_fail_when_the_head_moves_otherwise() {
        let report = credit_gate(&[COMPENSATE_M1], credits(2, &[("m1", 700)]), |_| {});
        assert!(
            has(
                &report,
                "head moved to 10 but the compensation appended 2 events from 9"
            ),
            "{:?}",
            report.failures
        );
    }

    // Proves the sum-of-balances rule fails on its own: after figures whose sum of balances
    // is one yen off (as a check that summed differently would give) fail the gate.
    #[test]
    fn credits_fail_when_the_sum_of_balances_disagrees() {
        let report = credit_gate(&[COMPENSATE_M1], credits(1, &[("m1", 700)]), |after| {
            after.balances_yen = after.balances_yen.map(|b| b + 1);
        });
        assert_eq!(
            report.failures,
            ["sum of balances went from 4300 to 5001 yen; the compensation declares a rise of 700 yen"]
        );
    }

    // Proves a store that fails `check` before is refused: the refusal names the operation, and
    // finishing anyway can never pass.
    #[test]
    fn a_store_failing_check_before_is_refused() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = test_store::setup(tmp.path());
        let mut before = figures(&*engine);
        before
            .invariants
            .as_mut()
            .expect("a check proves invariants")[2]
            .fail("planted".into());
        let gate = Gate::begin("migration", before.clone());
        assert_eq!(
            gate.refusal().as_deref(),
            Some("the store fails `check` before the migration; nothing was done")
        );
        let snap = engine.snapshot().expect("a snapshot");
        let mut after = before.clone();
        after.invariants = figures(&*engine).invariants;
        let report = gate
            .finish(
                Declared::Nothing,
                after,
                &StoredViews(&*snap),
                &StoredViews(&*snap),
            )
            .expect("the store reads");
        assert!(!report.ok());
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    }

    // Proves each declaration of the head: what it allows and the failure otherwise.
    #[test]
    fn the_head_moves_only_as_declared() {
        let at = |p: u64, h: u8| Head {
            position: ledger::Position(p),
            hash: Hash([h; 32]),
        };
        assert_eq!(
            head_failure("deploy", &Declared::Nothing, at(9, 1), at(9, 1)),
            None
        );
        assert!(head_failure("deploy", &Declared::Nothing, at(9, 1), at(9, 2)).is_some());
        assert_eq!(
            head_failure("migration", &Declared::RecordsRewritten, at(9, 1), at(9, 2)),
            None
        );
        assert_eq!(
            head_failure(
                "migration",
                &Declared::RecordsRewritten,
                at(9, 1),
                at(10, 2)
            )
            .as_deref(),
            Some("head position moved from 9 to 10 (the migration keeps every position)")
        );
        let appends = Declared::IdentityAppends { events: 3 };
        assert_eq!(head_failure("reset", &appends, at(9, 1), at(12, 2)), None);
        assert_eq!(
            head_failure("reset", &appends, at(9, 1), at(11, 2)).as_deref(),
            Some("head moved to 11 but the reset appended 3 events from 9")
        );
    }
}
