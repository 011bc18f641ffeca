//! The event record decoder (`EventRecord::decode` and `view`) on arbitrary bytes: never panics,
//! the two agree, and an accepted record has exactly one encoding (re-encoding gives the input
//! back, which `EventRecord::stored_hash` relies on). The payload is then handed to the domain
//! event decoder under the record's type name, which must not panic either.
#![no_main]

use ledger::domain::DomainEvent;
use ledger::EventRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = EventRecord::decode(data);
    let view = EventRecord::view(data);
    assert_eq!(decoded.is_ok(), view.is_ok(), "decode and view disagree");
    let Ok(record) = decoded else {
        return;
    };
    assert_eq!(view.expect("checked above").to_record(), record);
    assert_eq!(
        record.encode(),
        data,
        "an accepted record re-encodes to other bytes"
    );
    assert_eq!(record.encoded_len(), data.len());
    let _ = EventRecord::stored_hash(data, &record.prev_hash);
    let _ = DomainEvent::decode(
        &record.event_type,
        record.schema_version,
        record.codec,
        &record.payload,
    );
});
