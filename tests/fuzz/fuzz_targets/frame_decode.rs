//! The frame decoder (`Frame::parse`) and its commands section and record table on arbitrary
//! bytes. The first input byte chooses: odd, the bytes are parsed as they are (a frame whose
//! checksum does not hold must be refused); even, the rest is re-sealed first, so the fuzzer
//! reaches the offsets table, the commands section and the records behind the checksum.
#![no_main]

use ledger::segments::{Frame, Location};
use ledger::EventRecord;
use ledger_fuzz::{checksum_holds, reseal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode % 2 == 0 {
        reseal(&mut bytes);
    }
    let Ok(frame) = Frame::parse(Location::START, &bytes) else {
        return;
    };
    assert!(
        checksum_holds(&bytes),
        "a frame whose checksum fails was accepted"
    );
    let _ = frame.commands();
    let mut total = 0usize;
    for record in frame.records() {
        total += record.len();
        let _ = EventRecord::view(record);
    }
    assert!(total <= bytes.len(), "records overlap or leave the frame");
});
