//! The fold's fast decoder of wallet payloads: the events that carry strings, decoded from
//! borrowed bytes without a per-string allocation.
//!
//! Why a second decoder: the fold decodes every wallet event of the log, and the owned decoder
//! of `hook` (`decode_wallet_event`) allocates each string, the merchant included, which no
//! fold reads. This one is an optimisation only: it never decides what an event means.
//!
//! Invariants kept:
//! - For every payload it accepts, it gives exactly the reference decoder's event (with an empty
//!   merchant); anything else (another codec, version, currency, an invalid id, bad bytes, a
//!   payload over [`FAST_PAYLOAD_MAX`]) is `None`, and the caller takes the reference decoder,
//!   which gives the event or the exact error.
//! - Debug builds (all tests) check every fast decode against the reference decoder, and the
//!   test below checks every truncation and single-byte change of each event type.

use serde::Deserialize;

use ledger::domain::{
    CommandId, CouponExpired, CouponId, CouponIssued, CouponRedeemed, Currency, MemberId,
    MerchantCategory, Paid, Refunded, TransferredIn, TransferredOut, WalletEvent, Yen,
};
use ledger::record::RecordView;
use ledger::Codec;

/// Payloads up to this size take [`decode_fast`]. Below it, the 1 MiB allocation limit of
/// [`Codec::decode`] cannot be reached (a payload claims at most 16 bytes per encoded byte), so
/// both decoders accept exactly the same payloads.
const FAST_PAYLOAD_MAX: usize = 32 << 10;

// Borrowed mirrors of the payload structs of `ledger::domain::events` with string fields (same
// fields, same order, same serde shapes: a `&str` reads exactly what a `String` reads, and
// checks UTF-8 the same way), so decoding them allocates only the ids the state keeps.

#[derive(Deserialize)]
struct PaidRef<'a> {
    payment: &'a str,
    amount: Yen,
    /// Not part of any fold result (read, and checked to be UTF-8, then dropped).
    #[allow(dead_code)]
    merchant: &'a str,
    currency: &'a str,
    merchant_category: Option<MerchantCategory>,
}

#[derive(Deserialize)]
struct PaymentAmountRef<'a> {
    payment: &'a str,
    amount: Yen,
}

#[derive(Deserialize)]
struct MemberAmountRef<'a> {
    member: &'a str,
    amount: Yen,
}

#[derive(Deserialize)]
struct CouponIssuedRef<'a> {
    coupon: &'a str,
    value: Yen,
    expires_at: ledger::Timestamp,
}

#[derive(Deserialize)]
struct CouponRef<'a> {
    coupon: &'a str,
}

/// A whole bincode payload (trailing bytes refused, as [`Codec::decode`] does).
fn borrowed<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Option<T> {
    let (value, used) =
        bincode::serde::borrow_decode_from_slice::<T, _>(payload, bincode::config::standard())
            .ok()?;
    (used == payload.len()).then_some(value)
}

/// A payload of a version that appended the device to its previous version's `fields`: the
/// event `event` makes of both.
fn with_device<'a, T: Deserialize<'a>>(
    payload: &'a [u8],
    event: fn(T, Option<&'a str>) -> Option<WalletEvent>,
) -> Option<WalletEvent> {
    // bincode lays a tuple out as its elements one after the other, as it does a struct's
    // fields: `(fields, device)` reads exactly the newer version's payload.
    let (fields, device): (T, Option<&'a str>) = borrowed(payload)?;
    event(fields, device)
}

/// `wallet.paid` (v2, v3 with its device); `None` for any currency but JPY (the reference
/// decoder gives the event).
fn paid(e: PaidRef<'_>, device: Option<&str>) -> Option<WalletEvent> {
    if e.currency != Currency::JPY.as_str() {
        return None;
    }
    Some(WalletEvent::Paid(Paid {
        payment: CommandId::new(e.payment).ok()?,
        amount: e.amount,
        merchant: String::new(),
        currency: Currency::JPY,
        merchant_category: e.merchant_category,
        device: device.map(str::to_owned),
    }))
}

/// `wallet.transferred_out` (v1, v2 with its device).
fn transferred_out(e: MemberAmountRef<'_>, device: Option<&str>) -> Option<WalletEvent> {
    Some(WalletEvent::TransferredOut(TransferredOut {
        to: MemberId::new(e.member).ok()?,
        amount: e.amount,
        device: device.map(str::to_owned),
    }))
}

/// `wallet.coupon_redeemed` (v1, v2 with its device).
fn coupon_redeemed(e: CouponRef<'_>, device: Option<&str>) -> Option<WalletEvent> {
    Some(WalletEvent::CouponRedeemed(CouponRedeemed {
        coupon: CouponId::new(e.coupon).ok()?,
        device: device.map(str::to_owned),
    }))
}

/// The fold's decoder for the wallet events that carry strings: the same event as
/// [`decode_wallet_event`](crate::hook::decode_wallet_event) without its per-string allocations
/// (`wallet.paid`'s merchant, which no fold reads, is left empty). `None`: not one of these, or
/// anything unusual (another codec, an invalid id, a non-JPY currency, bytes that do not decode):
/// then the caller takes `decode_wallet_event`, which gives the event or the exact error.
pub(super) fn decode_fast(record: &RecordView<'_>) -> Option<WalletEvent> {
    let payload = record.payload;
    if record.codec != Codec::Bincode2 || payload.len() > FAST_PAYLOAD_MAX {
        return None;
    }
    // The versions that added a device (`wallet.paid` v3, `wallet.transferred_out` v2,
    // `wallet.coupon_redeemed` v2) are the previous version's fields followed by the device:
    // one conversion per event type serves both.
    let event = match (record.event_type, record.schema_version) {
        ("wallet.paid", 2) => paid(borrowed(payload)?, None)?,
        ("wallet.paid", 3) => with_device(payload, paid)?,
        ("wallet.transferred_out", 1) => transferred_out(borrowed(payload)?, None)?,
        ("wallet.transferred_out", 2) => with_device(payload, transferred_out)?,
        ("wallet.coupon_redeemed", 1) => coupon_redeemed(borrowed(payload)?, None)?,
        ("wallet.coupon_redeemed", 2) => with_device(payload, coupon_redeemed)?,
        ("wallet.miles_redeemed", 2) => WalletEvent::MilesRedeemed(borrowed(payload)?),
        ("wallet.refunded", 1) => {
            let e: PaymentAmountRef<'_> = borrowed(payload)?;
            WalletEvent::Refunded(Refunded {
                payment: CommandId::new(e.payment).ok()?,
                amount: e.amount,
            })
        }
        ("wallet.transferred_in", 1) => {
            let e: MemberAmountRef<'_> = borrowed(payload)?;
            WalletEvent::TransferredIn(TransferredIn {
                from: MemberId::new(e.member).ok()?,
                amount: e.amount,
            })
        }
        ("wallet.coupon_issued", 1) => {
            let e: CouponIssuedRef<'_> = borrowed(payload)?;
            WalletEvent::CouponIssued(CouponIssued {
                coupon: CouponId::new(e.coupon).ok()?,
                value: e.value,
                expires_at: e.expires_at,
            })
        }
        ("wallet.coupon_expired", 1) => {
            let e: CouponRef<'_> = borrowed(payload)?;
            WalletEvent::CouponExpired(CouponExpired {
                coupon: CouponId::new(e.coupon).ok()?,
            })
        }
        // No strings: the payload structs themselves, without the type-name dispatch of
        // `DomainEvent::decode`.
        ("wallet.topped_up", 1) => WalletEvent::ToppedUp(borrowed(payload)?),
        ("wallet.miles_earned", 1) => WalletEvent::MilesEarned(borrowed(payload)?),
        ("wallet.miles_redeemed", 1) => {
            let e: ledger::domain::MilesRedeemedV1 = borrowed(payload)?;
            WalletEvent::MilesRedeemed(e.upcast())
        }
        ("wallet.miles_expired", 1) => WalletEvent::MilesExpired(borrowed(payload)?),
        _ => return None,
    };
    #[cfg(debug_assertions)]
    {
        // Tests run debug builds: every fast decode is checked against the reference decoder.
        let mut reference = crate::hook::decode_wallet_event(record).ok();
        if let Some(WalletEvent::Paid(p)) = &mut reference {
            p.merchant.clear();
        }
        debug_assert_eq!(reference.as_ref(), Some(&event), "decode_fast diverged");
    }
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook::decode_wallet_event;

    /// A record view of one payload (the envelope fields other than these do not matter).
    fn view<'a>(
        event_type: &'a str,
        version: u16,
        codec: Codec,
        payload: &'a [u8],
    ) -> RecordView<'a> {
        RecordView {
            codec,
            position: ledger::Position(1),
            stream: "wallet-m1",
            version: ledger::StreamVersion(1),
            event_id: Default::default(),
            command_id: "c1",
            event_type,
            schema_version: version,
            at: ledger::Timestamp(0),
            recorded_at: ledger::Timestamp(0),
            payload,
            prev_hash: ledger::Hash::default(),
            hash: ledger::Hash::default(),
        }
    }

    /// `decode_fast` gives the reference decoder's event (the merchant aside) or defers to it.
    fn check_fast(event_type: &str, version: u16, codec: Codec, payload: &[u8]) -> bool {
        let record = view(event_type, version, codec, payload);
        let Some(fast) = decode_fast(&record) else {
            return false;
        };
        let mut reference = decode_wallet_event(&record).expect("fast decode of a bad payload");
        if let WalletEvent::Paid(p) = &mut reference {
            p.merchant.clear();
        }
        assert_eq!(fast, reference, "{event_type} v{version}");
        true
    }

    /// A legacy payload struct's bytes, as its version was written.
    fn legacy<T: serde::Serialize>(payload: &T) -> Vec<u8> {
        Codec::Bincode2
            .encode(payload)
            .expect("a payload struct always encodes")
    }

    /// Checks `payload` of `event_type` v`version`, every truncation, one byte more and every
    /// single-byte change of it, and that the next version does not read it (a newer version's
    /// payload is longer); whether the payload itself took the fast path.
    fn exercise(event_type: &str, version: u16, payload: &[u8]) -> bool {
        let took_fast = check_fast(event_type, version, Codec::Bincode2, payload);
        for n in 0..payload.len() {
            check_fast(event_type, version, Codec::Bincode2, &payload[..n]);
        }
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(!check_fast(event_type, version, Codec::Bincode2, &longer));
        for i in 0..payload.len() {
            for b in [0u8, 1, 0x1f, 0x41, 0x7f, 0x80, 0xfb, 0xfc, 0xff] {
                let mut changed = payload.to_vec();
                changed[i] = b;
                check_fast(event_type, version, Codec::Bincode2, &changed);
            }
        }
        let next = view(event_type, version + 1, Codec::Bincode2, payload);
        assert!(
            decode_fast(&next).is_none(),
            "{event_type} v{version} read as the next"
        );
        took_fast
    }

    // Proves the fold's fast payload decoder accepts exactly what `decode_wallet_event` accepts
    // and gives the same event: for each wallet event type, the payload, every truncation and
    // every single-byte change of it, for the current versions and the older ones it still reads;
    // and that other codecs, versions and currencies defer.
    #[test]
    fn fast_decode_matches_the_reference_decoder() {
        use ledger::domain::*;
        let t = ledger::Timestamp(1_562_000_000_000);
        let paid = |currency: &str| {
            WalletEvent::Paid(Paid {
                payment: CommandId::new("pay-1").unwrap(),
                amount: Yen(700),
                merchant: "Loft \u{5c71}".into(),
                currency: Currency::try_from(currency.to_string()).unwrap(),
                merchant_category: MerchantCategory::try_from(5411).ok(),
                device: Some("phone-a".into()),
            })
        };
        let events = [
            WalletEvent::WalletOpened(WalletOpened {
                member: MemberId::new("m1").unwrap(),
            }),
            WalletEvent::ToppedUp(ToppedUp { amount: Yen(1000) }),
            paid("JPY"),
            WalletEvent::Refunded(Refunded {
                payment: CommandId::new("pay-1").unwrap(),
                amount: Yen(300),
            }),
            WalletEvent::TransferredOut(TransferredOut {
                to: MemberId::new("m2").unwrap(),
                amount: Yen(5),
                device: Some("phone-a".into()),
            }),
            WalletEvent::TransferredIn(TransferredIn {
                from: MemberId::new("m2").unwrap(),
                amount: Yen(5),
            }),
            WalletEvent::MilesEarned(MilesEarned {
                lot: LotId(1),
                miles: Miles(300),
                expires_at: t,
            }),
            WalletEvent::MilesRedeemed(MilesRedeemed {
                miles: Miles(30),
                consumed: vec![(LotId(1), Miles(10)), (LotId(2), Miles(20))],
                device: None,
            }),
            WalletEvent::MilesExpired(MilesExpired {
                lot: LotId(1),
                miles: Miles(3),
            }),
            WalletEvent::BadgeAwarded(BadgeAwarded {
                badge: Badge::new("gold").unwrap(),
            }),
            WalletEvent::CouponIssued(CouponIssued {
                coupon: CouponId::new("cp-1").unwrap(),
                value: Yen(100),
                expires_at: t,
            }),
            WalletEvent::CouponRedeemed(CouponRedeemed {
                coupon: CouponId::new("cp-1").unwrap(),
                device: Some("phone-a".into()),
            }),
            WalletEvent::CouponExpired(CouponExpired {
                coupon: CouponId::new("cp-1").unwrap(),
            }),
        ];
        let mut fast = 0;
        for event in &events {
            let (name, version) = (event.event_type(), event.schema_version());
            if exercise(name, version, &event.encode(Codec::Bincode2).unwrap()) {
                fast += 1;
            }
            let postcard = event.encode(Codec::Postcard).unwrap();
            assert!(decode_fast(&view(name, version, Codec::Postcard, &postcard)).is_none());
        }
        // The older versions the fast decoder still reads, each the newer one without its device.
        let older = [
            (
                "wallet.paid",
                2,
                legacy(&PaidV2 {
                    payment: CommandId::new("pay-1").unwrap(),
                    amount: Yen(700),
                    merchant: "Loft".into(),
                    currency: Currency::JPY,
                    merchant_category: MerchantCategory::try_from(5411).ok(),
                }),
            ),
            (
                "wallet.transferred_out",
                1,
                legacy(&TransferredOutV1 {
                    to: MemberId::new("m2").unwrap(),
                    amount: Yen(5),
                }),
            ),
            (
                "wallet.coupon_redeemed",
                1,
                legacy(&CouponRedeemedV1 {
                    coupon: CouponId::new("cp-1").unwrap(),
                }),
            ),
            (
                "wallet.miles_redeemed",
                1,
                legacy(&MilesRedeemedV1 {
                    miles: Miles(30),
                    consumed: vec![(LotId(1), Miles(30))],
                }),
            ),
        ];
        for (name, version, payload) in &older {
            assert!(exercise(name, *version, payload), "{name} v{version}");
        }
        // Every type with a fast path took it (all but opened and badge).
        assert_eq!(fast, events.len() - 2);
        let usd = paid("USD").encode(Codec::Bincode2).unwrap();
        assert!(!check_fast("wallet.paid", 3, Codec::Bincode2, &usd));
    }
}
