//! Helpers shared by the fuzz targets: an independent frame checksum (so a target can tell on
//! its own whether the decoder accepted a frame that does not check) and re-sealing (so the
//! fuzzer can mutate what lies behind a checksum, which it could never forge by chance).
//!
//! The checksum is written out again here from docs/format.md ("Format 2", frame header):
//! BLAKE3 of the header's first 32 bytes and the payload, first 16 bytes, stored at 32..48.
//! Reusing the ledger's own function would make the oracle agree with any bug in it.

use std::path::{Path, PathBuf};

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: usize = 48;
/// Bytes of a segment file header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// The frame magic.
pub const FRAME_MAGIC: &[u8; 4] = b"FRM2";

/// The payload length a frame header at the start of `bytes` claims, if there is a header.
pub fn claimed_payload_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < FRAME_HEADER_BYTES || &bytes[..4] != FRAME_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    Some(len as usize)
}

/// The checksum the frame starting at `frame[0]` must carry, when all its bytes are there.
pub fn expected_checksum(frame: &[u8]) -> Option<[u8; 16]> {
    let payload_len = claimed_payload_len(frame)?;
    let payload = frame.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES.checked_add(payload_len)?)?;
    let mut h = blake3::Hasher::new();
    h.update(&frame[..32]);
    h.update(payload);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Some(out)
}

/// True when the frame at the start of `frame` is whole and its stored checksum matches.
pub fn checksum_holds(frame: &[u8]) -> bool {
    expected_checksum(frame).is_some_and(|sum| frame[32..48] == sum)
}

/// Writes the right checksum into the frame at the start of `frame`, if it is whole.
/// Returns the frame's length.
pub fn reseal(frame: &mut [u8]) -> Option<usize> {
    let sum = expected_checksum(frame)?;
    frame[32..48].copy_from_slice(&sum);
    Some(FRAME_HEADER_BYTES + claimed_payload_len(frame)?)
}

/// Re-seals every frame of a segment file's bytes, walking them back to back from the header
/// the way the writer lays them out, until the bytes stop looking like a whole frame.
/// Returns where the walk stopped.
pub fn reseal_segment(bytes: &mut [u8]) -> usize {
    let mut at = SEGMENT_HEADER_BYTES.min(bytes.len());
    while let Some(len) = reseal(&mut bytes[at..]) {
        at += len;
    }
    at
}

/// A scratch directory under `$TMPDIR` (scripts/fuzz.sh points it at a tmpfs, so fsync is
/// free and nothing reaches the disk), removed on drop.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("the fuzzing temp dir is writable")
}

/// Copies the files of directory `from` (one level of subdirectories) into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's directory");
    for entry in std::fs::read_dir(from).expect("list the template") {
        let entry = entry.expect("list the template");
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a template file");
        }
    }
}
