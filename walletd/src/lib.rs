//! walletd: the wallet core service over HTTP.
//!
//! It embeds [`projections::WalletService`], the same writer, rules, views and log that
//! `migrate-tool import` uses, and adds what a payments backend in any language expects of a
//! network service: API keys with scopes, idempotency keys, RFC 9457 problem documents, cursor
//! pagination, a live event feed that resumes where it stopped, Prometheus metrics, health
//! checks, graceful shutdown and an auditor console. docs/walletd.md is the contract.
//!
//! # Layout
//! - [`config`]: flags, environment and the optional TOML file, merged once at start.
//! - [`keys`]: the key file (hashes only), scopes, what each scope may do.
//! - [`auth`]: the request's caller (bearer key -> [`keys::Principal`]) and its rate limit.
//! - [`problem`]: every error answer, one stable `type` per cause.
//! - [`api`]: the handlers: commands, reads, the event feed, operator endpoints.
//! - [`feed`]: the log's tail, read and encoded once for every live event feed.
//! - [`telemetry`]: logs (JSON off a terminal), request ids, Prometheus metrics.
//! - [`openapi`]: the OpenAPI 3.1 document generated from the handlers' annotations.
//! - [`console`]: the auditor console, a static page compiled into the binary.
//! - [`server`]: the accept loop (timeouts, graceful shutdown) and the holder file.
//!
//! Data flows one way, as everywhere in the ledger: a request becomes a
//! [`ledger::domain::Command`], the writer decides it in log order, its events are durable
//! before the answer is sent, and reads come from the views the same commit wrote.

pub mod api;
pub mod auth;
pub mod config;
pub mod console;
pub mod feed;
pub mod keys;
pub mod openapi;
pub mod problem;
pub mod server;
pub mod telemetry;

pub use config::Config;
pub use server::{serve, start, Running};
