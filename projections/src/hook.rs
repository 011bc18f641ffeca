//! The commit hook that keeps the wallet rows, their indexes, member hashes, digest buckets and
//! the checkpoint in the same transaction as the events they fold, and that the writer decides
//! commands against.
//!
//! Per group commit ([`ProjectionHook::begin`]): check that the views are exactly at the log head
//! the group builds on and in this build's layout; then, as the writer plans each request, fold
//! its wallet events row by row into an [`Overlay`] of the snapshot
//! ([`ledger::domain::wallet_row_changes`] reads the rows an event touches, [`views::write_changes`]
//! writes them with their index entries and the member-hash delta). Commands later in the group
//! are decided against that overlay, so they see every earlier decision. At the end, the overlay,
//! the changed member hashes and bucket sums, and the new checkpoint go into the batch. Identity
//! events change no view; they are kept so that identity commands later in the group see them.
//!
//! Cost per event: the rows it touches, each a B-tree lookup; never the member's history.

use std::collections::HashMap;
use std::sync::Arc;

use ledger::domain::{
    apply_identity_event, member_of_stream, wallet_row_changes, Badge, CommandId, Coupon, CouponId,
    DomainEvent, Hold, IdentityState, LotId, MemberId, MilesLot, Payment, PolicySet, ReadFailure,
    SecurityRow, StateReader, StreamKind, Visit, WalletEvent, WalletSummary,
};
use ledger::record::RecordView;
use ledger::{
    CommitHook, EventRecord, GroupHook, HookError, Position, Snapshot, Timestamp, WriteBatch,
};

use crate::digest::{self, BucketSum};
use crate::service::load_identity;
use crate::views::{self, tables, Overlay, Rows};
use crate::ProjectionError;

/// Plug this into [`ledger::LedgerOptions::hooks`] to maintain the wallet views.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProjectionHook;

impl ProjectionHook {
    /// The hook's name, recorded in the store's `meta.hooks` by its writer.
    pub const NAME: &'static str = "wallet-views";
}

/// Decodes a record as a wallet event of `member`, or `None` for identity and other streams.
pub fn wallet_event_of(
    record: &EventRecord,
) -> Result<Option<(MemberId, WalletEvent)>, ProjectionError> {
    let Some((StreamKind::Wallet, member)) = member_of_stream(&record.stream) else {
        return Ok(None);
    };
    decode_wallet_event(&record.as_view()).map(|event| Some((member, event)))
}

/// Decodes the payload of a record known to be in a wallet stream; an identity event there is
/// an error.
pub fn decode_wallet_event(record: &RecordView<'_>) -> Result<WalletEvent, ProjectionError> {
    let event = DomainEvent::decode(
        record.event_type,
        record.schema_version,
        record.codec,
        record.payload,
    )
    .map_err(|e| ProjectionError::Event {
        position: record.position.0,
        reason: e.to_string(),
    })?;
    match event {
        DomainEvent::Wallet(e) => {
            opened_in_own_stream(record, &e)?;
            Ok(e)
        }
        DomainEvent::Identity(_) | DomainEvent::Policy(_) => Err(ProjectionError::Event {
            position: record.position.0,
            reason: format!("event {} in wallet stream", record.event_type),
        }),
    }
}

/// Refuses a `wallet.opened` whose member is not its stream's: a wallet is its stream's, and the
/// folds (rows keyed by the stream, whole states keyed by the event) must never disagree on whose
/// it is. `decide` never writes one; only a damaged log or a raw append can hold it.
pub(crate) fn opened_in_own_stream(
    record: &RecordView<'_>,
    event: &WalletEvent,
) -> Result<(), ProjectionError> {
    let WalletEvent::WalletOpened(opened) = event else {
        return Ok(());
    };
    let stream = ledger::domain::wallet_stream(&opened.member);
    if stream == record.stream {
        return Ok(());
    }
    Err(ProjectionError::Event {
        position: record.position.0,
        reason: format!(
            "wallet.opened of member {} in stream {}",
            opened.member, record.stream
        ),
    })
}

impl CommitHook for ProjectionHook {
    fn name(&self) -> &'static str {
        ProjectionHook::NAME
    }

    fn begin<'s>(&'s self, snap: &'s dyn Snapshot) -> Result<Box<dyn GroupHook + 's>, HookError> {
        Group::begin(snap)
            .map(|g| Box::new(g) as Box<dyn GroupHook + 's>)
            .map_err(HookError::new)
    }
}

/// A member's hash as the group changes it.
struct MemberHash {
    bucket: u16,
    /// As stored before the group.
    before: BucketSum,
    /// After the group's events so far.
    now: BucketSum,
}

/// One group commit's view of the rows.
struct Group<'s> {
    rows: Overlay<'s>,
    /// The checkpoint when the group began.
    start: Position,
    /// The last position folded: `start`, then each applied record's.
    at: Position,
    members: HashMap<MemberId, MemberHash>,
    /// Identity records of this group, per member, for identity commands later in it.
    identities: HashMap<MemberId, Vec<Arc<EventRecord>>>,
}

impl<'s> Group<'s> {
    fn begin(snap: &'s dyn Snapshot) -> Result<Group<'s>, ProjectionError> {
        views::require_layout(snap)?;
        let checkpoint = views::checkpoint(snap)?;
        Ok(Group {
            rows: Overlay::new(snap),
            start: checkpoint,
            at: checkpoint,
            members: HashMap::new(),
            identities: HashMap::new(),
        })
    }

    fn apply_record(&mut self, record: &Arc<EventRecord>) -> Result<(), ProjectionError> {
        if record.position.0 != self.at.0 + 1 {
            return Err(ProjectionError::Behind {
                checkpoint: self.at.0,
                head: record.position.0 - 1,
            });
        }
        self.at = record.position;
        views::write_side_rows(&mut self.rows, &record.as_view())?;
        match member_of_stream(&record.stream) {
            Some((StreamKind::Wallet, member)) => {
                let event = decode_wallet_event(&record.as_view())?;
                self.apply_wallet(record.position, member, &event)
            }
            Some((StreamKind::Identity, member)) => {
                // Decoded only if an identity command later in the group asks (a mass reset
                // appends millions of these and no command reads them).
                self.identities
                    .entry(member)
                    .or_default()
                    .push(Arc::clone(record));
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn apply_wallet(
        &mut self,
        position: Position,
        member: MemberId,
        event: &WalletEvent,
    ) -> Result<(), ProjectionError> {
        let changes = wallet_row_changes(&Rows::new(&self.rows), &member, event).map_err(|e| {
            ProjectionError::Event {
                position: position.0,
                reason: e.to_string(),
            }
        })?;
        if !self.members.contains_key(&member) {
            let bucket = digest::bucket_of(&member);
            let key = digest::member_hash_key_in(bucket, &member);
            let before = stored_sum(self.rows.snapshot(), tables::MEMBER_HASHES, &key)?;
            self.members.insert(
                member.clone(),
                MemberHash {
                    bucket,
                    before,
                    now: before,
                },
            );
        }
        let hash = self.members.get_mut(&member).expect("inserted just above");
        views::write_changes(&mut self.rows, &member, changes, &mut hash.now)
    }

    /// Everything the group wrote: rows, index entries, changed member hashes and bucket sums,
    /// and the checkpoint.
    fn finish_into(self, batch: &mut WriteBatch) -> Result<(), ProjectionError> {
        if self.at == self.start {
            return Ok(());
        }
        let snap = self.rows.snapshot();
        let mut buckets: HashMap<u16, BucketSum> = HashMap::new();
        for (member, hash) in &self.members {
            if hash.now == hash.before {
                continue;
            }
            batch.put(
                tables::MEMBER_HASHES,
                digest::member_hash_key_in(hash.bucket, member),
                hash.now.to_bytes().to_vec(),
            );
            let sum = match buckets.entry(hash.bucket) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(stored_sum(
                    snap,
                    tables::DIGEST_BUCKETS,
                    &hash.bucket.to_be_bytes(),
                )?),
            };
            sum.add(&hash.now.to_bytes());
            sum.sub(&hash.before.to_bytes());
        }
        for (bucket, sum) in buckets {
            batch.put(
                tables::DIGEST_BUCKETS,
                bucket.to_be_bytes().to_vec(),
                sum.to_bytes().to_vec(),
            );
        }
        views::put_checkpoint(batch, self.at);
        self.rows.into_batch(batch);
        Ok(())
    }
}

impl GroupHook for Group<'_> {
    fn apply(&mut self, records: &[Arc<EventRecord>]) -> Result<(), HookError> {
        records
            .iter()
            .try_for_each(|r| self.apply_record(r))
            .map_err(HookError::new)
    }

    fn reader(&self) -> Option<&dyn StateReader> {
        Some(self)
    }

    fn finish(self: Box<Self>, batch: &mut WriteBatch) -> Result<(), HookError> {
        self.finish_into(batch).map_err(HookError::new)
    }
}

/// Commands are decided against the group's rows; identities are folded from their (short)
/// streams plus this group's identity events.
impl StateReader for Group<'_> {
    fn summary(&self, member: &MemberId) -> Result<Option<WalletSummary>, ReadFailure> {
        Rows::new(&self.rows).summary(member)
    }

    fn payment(&self, member: &MemberId, id: &CommandId) -> Result<Option<Payment>, ReadFailure> {
        Rows::new(&self.rows).payment(member, id)
    }

    fn coupon(&self, member: &MemberId, id: &CouponId) -> Result<Option<Coupon>, ReadFailure> {
        Rows::new(&self.rows).coupon(member, id)
    }

    fn has_badge(&self, member: &MemberId, badge: &Badge) -> Result<bool, ReadFailure> {
        Rows::new(&self.rows).has_badge(member, badge)
    }

    fn lot(&self, member: &MemberId, lot: LotId) -> Result<Option<MilesLot>, ReadFailure> {
        Rows::new(&self.rows).lot(member, lot)
    }

    fn lots_by_expiry(
        &self,
        member: &MemberId,
        after: Option<Timestamp>,
        visit: &mut dyn FnMut(&MilesLot) -> Visit,
    ) -> Result<(), ReadFailure> {
        Rows::new(&self.rows).lots_by_expiry(member, after, visit)
    }

    fn active_coupons_by_expiry(
        &self,
        member: &MemberId,
        visit: &mut dyn FnMut(&CouponId, &Coupon) -> Visit,
    ) -> Result<(), ReadFailure> {
        Rows::new(&self.rows).active_coupons_by_expiry(member, visit)
    }

    fn hold(&self, member: &MemberId, id: &CommandId) -> Result<Option<Hold>, ReadFailure> {
        Rows::new(&self.rows).hold(member, id)
    }

    fn holds_by_until(
        &self,
        member: &MemberId,
        visit: &mut dyn FnMut(&CommandId, &Hold) -> Visit,
    ) -> Result<(), ReadFailure> {
        Rows::new(&self.rows).holds_by_until(member, visit)
    }

    fn security(&self, member: &MemberId) -> Result<Option<SecurityRow>, ReadFailure> {
        Rows::new(&self.rows).security(member)
    }

    fn device_seen(&self, member: &MemberId, device: &str) -> Result<bool, ReadFailure> {
        Rows::new(&self.rows).device_seen(member, device)
    }

    fn policy(&self) -> Result<Option<PolicySet>, ReadFailure> {
        Rows::new(&self.rows).policy()
    }

    fn compensated(&self, incident: &str, original: Position) -> Result<bool, ReadFailure> {
        Rows::new(&self.rows).compensated(incident, original)
    }

    /// Events of this group are not in the snapshot yet: a compensation must name an event
    /// committed before its group (the incident tools name events long committed).
    fn stream_at(&self, position: Position) -> Result<Option<(StreamKind, MemberId)>, ReadFailure> {
        Rows::new(&self.rows).stream_at(position)
    }

    fn identity(&self, member: &MemberId) -> Result<Option<IdentityState>, ReadFailure> {
        let unreadable = |e: String| ReadFailure {
            reason: format!("identity of member {member}: {e}"),
        };
        let mut state =
            load_identity(self.rows.snapshot(), member).map_err(|e| unreadable(e.to_string()))?;
        for record in self.identities.get(member).into_iter().flatten() {
            let event = DomainEvent::decode(
                &record.event_type,
                record.schema_version,
                record.codec,
                &record.payload,
            )
            .map_err(|e| unreadable(format!("position {}: {e}", record.position)))?;
            if let DomainEvent::Identity(event) = event {
                apply_identity_event(&mut state, &event).map_err(|e| unreadable(e.to_string()))?;
            }
        }
        Ok(state)
    }
}

fn stored_sum(snap: &dyn Snapshot, table: &str, key: &[u8]) -> Result<BucketSum, ProjectionError> {
    match snap.get(table, key)? {
        None => Ok(BucketSum::default()),
        Some(bytes) => <[u8; 32]>::try_from(bytes.as_slice())
            .map(|b| BucketSum::from_bytes(&b))
            .map_err(|_| ProjectionError::View {
                member: format!("({table} entry {key:02x?})"),
                reason: format!("value has {} bytes, expected 32", bytes.len()),
            }),
    }
}
