//! The content of the crash writer's events, derived from (command id, index) only, so that the
//! crash test can recompute the exact bytes of every acknowledged event. One definition serves
//! the writer (`src/bin/crash_writer.rs`) and the checker (`tests/crash.rs`).

use ledger::Timestamp;

use crate::wallet::splitmix64;

/// Payload size of every event, as in SPEC section 6.
pub const PAYLOAD_BYTES: usize = 200;

/// Type, business time and payload of event `index` of command `command_id`.
pub fn event_content(command_id: &str, index: u32) -> (String, Timestamp, Vec<u8>) {
    let mut state = fnv1a64(command_id.as_bytes()) ^ u64::from(index).wrapping_mul(0x9E37_79B9);
    let mut payload = Vec::with_capacity(PAYLOAD_BYTES);
    while payload.len() < PAYLOAD_BYTES {
        payload.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
    payload.truncate(PAYLOAD_BYTES);
    let at = Timestamp(1_600_000_000_000_000 + (splitmix64(&mut state) % 1_000_000_000_000) as i64);
    (format!("crash.kind{}", index % 3), at, payload)
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01B3)
    })
}
