//! Nothing to use here: `migrate-tool` is a binary (`src/main.rs`).
//!
//! Why this library exists at all: the package turns its test-only feature `fault-injection`
//! on for its own tests through a dev-dependency on itself (see `Cargo.toml`), and cargo can
//! only depend on a package that has a library target.
