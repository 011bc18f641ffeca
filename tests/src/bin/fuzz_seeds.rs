//! `fuzz_seeds`: writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) from
//! a real store, so the fuzzer starts from bytes the ledger writes instead of searching for
//! them. The corpora are committed; run this again only when a format changes:
//!
//! ```sh
//! cargo run -p ledger-tests --bin fuzz_seeds -- tests/fuzz/corpus
//! ```
//!
//! Seeds per target: `parse_command` command lines (valid, near-valid, odd); `record_decode`
//! event records of every wallet and identity event type; `frame_decode` frames (a mode byte,
//! then the frame); `segment_recover` segment files (flags byte, then the file without its
//! zero tail, whole and torn); `store_open` damage recipes for the template store the target
//! makes itself (see tests/fuzz/fuzz_targets/store_open.rs).

use std::path::{Path, PathBuf};

use anyhow::Context;
use ledger::domain::{
    Badge, BadgeAwarded, CommandId, CouponId, CouponIssued, Currency, DomainEvent, IdentityEvent,
    LotId, MemberId, Miles, MilesEarned, Paid, PasswordReset, Registered, ToppedUp, WalletEvent,
    WalletOpened, Yen,
};
use ledger::{
    AppendRequest, Backend, Create, ExpectedVersion, Ledger, LedgerOptions, Position, StreamAppend,
    Timestamp,
};

const LINES: &[&str] = &[
    r#"{"id":"o1","type":"open_wallet","member":"m1"}"#,
    r#"{"id":"t1","type":"top_up","member":"m1","amount":1000,"at":"2019-07-01T09:00:00+09:00"}"#,
    r#"{"id":"p1","type":"pay","member":"m1","amount":300,"merchant":"Café 7"}"#,
    r#"{"id":"r1","type":"refund","member":"m1","payment":"p1","amount":100}"#,
    r#"{"id":"x1","type":"transfer","from":"m1","to":"m2","amount":5}"#,
    r#"{"id":"e1","type":"earn_miles","member":"m1","miles":50,"expires_at":"2030-01-01T00:00:00Z"}"#,
    r#"{"id":"d1","type":"redeem_miles","member":"m1","miles":20}"#,
    r#"{"id":"b1","type":"award_badge","member":"m1","badge":"gold star"}"#,
    r#"{"id":"c1","type":"issue_coupon","member":"m1","coupon":"c-1","value":0,"expires_at":"2030-01-01T00:00:00.123456Z"}"#,
    r#"{"id":"c2","type":"redeem_coupon","member":"m1","coupon":"c-1"}"#,
    r#"{"id":"x2","type":"expire","as_of":"2031-01-01T00:00:00Z"}"#,
    r#"{"id":"x3","type":"expire","as_of":"2031-01-01T00:00:00Z","member":"m1"}"#,
    r#"{"id":"g1","type":"register","member":"m1","login":"m1@example.com"}"#,
    r#"{"id":"g2","type":"change_password","member":"m1"}"#,
    r#"{"id":"g3","type":"reset_password","member":"m1","reason":"locked out"}"#,
    r#"{ "type" : "open_wallet" , "member" : "m1" , "id" : "o2" }"#,
    r#"{"id":"o1","type":"open_wallet","member":"m1","member":"m2"}"#,
    r#"{"id":"o1","type":"open_wallet","member":"m1","amount":1}"#,
    r#"{"id":"t1","type":"top_up","member":"m1","amount":"100"}"#,
    r#"{"id":"t1","type":"top_up","member":"m1","amount":1.5}"#,
    r#"{"id":"t1","type":"top_up","member":"m1","amount":1e30}"#,
    r#"{"id":"t1","type":"top_up","member":"m1","amount":-1}"#,
    r#"{"id":"t1","type":"top_up","member":"m1"}"#,
    r#"{"id":"t1","type":"top_upp","member":"m1","amount":1}"#,
    r#"{"id":"","type":"open_wallet","member":"bad id"}"#,
    r#"{"id":"e1","type":"earn_miles","member":"m1","miles":5,"expires_at":"2030-13-01T00:00:00Z"}"#,
    r#"{"id":"o\u0000","type":"open_wallet","member":"m\u00e9"}"#,
    "\u{feff}{\"id\":\"o1\",\"type\":\"open_wallet\",\"member\":\"m1\"}",
    r#"[{"id":"o1"}]"#,
    r#"{"id":"o1","type":"open_wallet","member":{"nested":[1,2,{"a":null}]}}"#,
];

fn write(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(dir.join(name), bytes).with_context(|| format!("write seed {name}"))
}

fn events() -> Vec<DomainEvent> {
    let m = |s: &str| MemberId::new(s).expect("seed member ids are valid");
    let at = Timestamp(1_893_456_000_000_000);
    vec![
        DomainEvent::Wallet(WalletEvent::WalletOpened(WalletOpened { member: m("m1") })),
        DomainEvent::Wallet(WalletEvent::ToppedUp(ToppedUp { amount: Yen(1000) })),
        DomainEvent::Wallet(WalletEvent::Paid(Paid {
            payment: CommandId::new("p1").expect("valid"),
            amount: Yen(300),
            merchant: "Café 7".into(),
            currency: Currency::JPY,
            merchant_category: None,
            device: None,
        })),
        DomainEvent::Wallet(WalletEvent::MilesEarned(MilesEarned {
            lot: LotId(3),
            miles: Miles(50),
            expires_at: at,
        })),
        DomainEvent::Wallet(WalletEvent::BadgeAwarded(BadgeAwarded {
            badge: Badge::new("gold star").expect("valid"),
        })),
        DomainEvent::Wallet(WalletEvent::CouponIssued(CouponIssued {
            coupon: CouponId::new("c-1").expect("valid"),
            value: Yen(0),
            expires_at: at,
        })),
        DomainEvent::Identity(IdentityEvent::Registered(Registered {
            login: "m1@example.com".into(),
        })),
        DomainEvent::Identity(IdentityEvent::PasswordReset(PasswordReset {
            reason: Some("locked out".into()),
            operator: false,
        })),
    ]
}

/// A store with the seed events in a few commands (several frames, two streams).
fn make_store(dir: &Path) -> anyhow::Result<()> {
    let ledger = Ledger::open(
        dir,
        LedgerOptions {
            create: Create::IfMissing,
            backend: Backend::Redb,
            hooks: Vec::new(),
        },
    )?;
    let at = Timestamp(1_704_067_200_000_000);
    for (i, event) in events().iter().enumerate() {
        let stream = match event {
            DomainEvent::Identity(_) => "identity-m1",
            _ => "wallet-m1",
        };
        let new = event.to_new_event(at)?;
        ledger.append_blocking(AppendRequest {
            command_id: format!("seed-{i}"),
            fingerprint: None,
            streams: vec![StreamAppend {
                stream: stream.into(),
                expected: ExpectedVersion::Any,
                events: vec![new],
            }],
        })?;
    }
    // One frame with two streams and two events each.
    let two = |stream: &str| -> anyhow::Result<StreamAppend> {
        Ok(StreamAppend {
            stream: stream.into(),
            expected: ExpectedVersion::Any,
            events: vec![events()[1].to_new_event(at)?, events()[1].to_new_event(at)?],
        })
    };
    ledger.append_blocking(AppendRequest {
        command_id: "seed-pair".into(),
        fingerprint: None,
        streams: vec![two("wallet-m1")?, two("wallet-m2")?],
    })?;
    Ok(())
}

/// The frames of a segment file: (offset, bytes).
fn frames(segment: &[u8]) -> Vec<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 32;
    while segment.len() >= at + 48 && &segment[at..at + 4] == b"FRM2" {
        let len = 48 + u32::from_le_bytes(segment[at + 4..at + 8].try_into().expect("4")) as usize;
        out.push((at, segment[at..at + len].to_vec()));
        at += len;
    }
    out
}

/// Deterministic bytes for the damage recipes.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or("tests/fuzz/corpus".into()),
    );
    let dir_for = |target: &str| -> anyhow::Result<PathBuf> {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    };

    let parse = dir_for("parse_command")?;
    for (i, line) in LINES.iter().enumerate() {
        write(&parse, &format!("line-{i:02}"), line.as_bytes())?;
    }

    let tmp = tempfile::tempdir()?;
    let store = tmp.path().join("store");
    make_store(&store)?;
    let ledger = Ledger::open(
        &store,
        LedgerOptions {
            create: Create::No,
            backend: Backend::Redb,
            hooks: Vec::new(),
        },
    )?;
    let records = ledger.read_all(Position(1), 1_000)?;
    drop(ledger);
    let record_dir = dir_for("record_decode")?;
    for (i, r) in records.iter().enumerate() {
        write(&record_dir, &format!("record-{i:02}"), &r.encode())?;
    }
    let mut old_layout = records[0].encode();
    old_layout[1] = 0;
    write(&record_dir, "record-layout-0", &old_layout)?;
    write(&record_dir, "record-cut", &records[0].encode()[..60])?;

    let segment = std::fs::read(store.join("segments").join("0000000001.seg"))?;
    let found = frames(&segment);
    let frame_dir = dir_for("frame_decode")?;
    for (i, (_, frame)) in found.iter().enumerate() {
        for mode in [0u8, 1] {
            let mut seed = vec![mode];
            seed.extend_from_slice(frame);
            write(&frame_dir, &format!("frame-{i:02}-mode{mode}"), &seed)?;
        }
    }

    let end = found.last().map_or(32, |(at, f)| at + f.len());
    let recover_dir = dir_for("segment_recover")?;
    let cuts = [
        ("whole", end),
        ("one-frame", found.get(1).map_or(end, |(at, _)| *at)),
        ("torn-last", end - 7),
        ("header-only", 32),
        ("zero-tail", (end + 64).min(segment.len())),
    ];
    for (name, cut) in cuts {
        for flags in [0u8, 3, 4, 7] {
            let mut seed = vec![flags];
            seed.extend_from_slice(&segment[..cut]);
            write(&recover_dir, &format!("segment-{name}-f{flags}"), &seed)?;
        }
    }

    let open_dir = dir_for("store_open")?;
    write(&open_dir, "untouched-index", &[0])?;
    write(&open_dir, "untouched-segment", &[1])?;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..24u32 {
        let mode = (i % 4) as u8;
        let mut seed = vec![mode];
        if mode & 2 != 0 {
            seed.extend_from_slice(&((xorshift(&mut state) % 600_000) as u32).to_le_bytes());
        }
        for _ in 0..(1 + i % 3) {
            // Mostly the first pages (headers, the region and table roots), some anywhere.
            let span = if i % 2 == 0 { 8_192 } else { u32::MAX as u64 };
            let offset = (xorshift(&mut state) % span) as u32;
            let len = (xorshift(&mut state) % 8 + 1) as u8;
            seed.extend_from_slice(&offset.to_le_bytes());
            seed.push(len);
            for _ in 0..len {
                seed.push(xorshift(&mut state) as u8);
            }
        }
        write(&open_dir, &format!("damage-{i:02}"), &seed)?;
    }
    println!("seed corpora written to {}", out.display());
    Ok(())
}
