//! Shared helpers for the cross-crate tests and benchmark programs.
//!
//! # Layout
//! - [`bench`]: the shared core of the benchmark programs (percentiles, formatting, RNG, JSON
//!   output, the driver's child runner and summary table).
//! - [`child`]: run a real child process and SIGKILL it (the crash tests' harness).
//! - [`crash_content`]: the crash writer's event content, shared with the crash test.
//! - [`frames`]: read and rewrite a store's segment frames behind its back (tamper tests).
//! - [`fixture`]: temporary store directories for every backend, and request builders.
//! - [`queue`]: put requests into the ledger writer's queue in a known order without waiting,
//!   so a held writer's next group commit holds all of them.
//! - [`procfs`]: memory, CPU, load and I/O readings from `/proc` for the benchmark programs.
//! - [`simdisk`]: an in-memory disk (a `ledger::vfs::Vfs`) that loses unsynced writes at a
//!   power cut, tears the last one, fails reads, writes and syncs, and rots bits.
//! - [`simulate`]: the seeded reliability simulator on that disk (binary `simulate`, test
//!   `simulate`).
//! - [`faulty`]: an [`ledger::Engine`] wrapper that can hold or fail commits on demand, so the
//!   tests can put several appends into one group commit and make that commit fail.

pub mod bench;
pub mod child;
pub mod crash_content;
pub mod faulty;
pub mod fixture;
pub mod frames;
pub mod procfs;
pub mod queue;
pub mod simdisk;
pub mod simulate;
pub mod wallet;

pub use faulty::FaultyEngine;
pub use fixture::{
    append_request, backends, new_event, stream_append, TestStore, BASE_TIME_MICROS,
};

/// Generates one `#[test]` per listed function and backend, named `on_<backend>::<function>`:
/// each function takes the `ledger::Backend` to run on (sled only with the `sled` feature).
#[macro_export]
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod on_redb {
            $(#[test] fn $name() { super::$name(ledger::Backend::Redb) })*
        }
        #[cfg(feature = "sled")]
        mod on_sled {
            $(#[test] fn $name() { super::$name(ledger::Backend::Sled) })*
        }
    };
}
