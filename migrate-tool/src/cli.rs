//! Command-line arguments. Every command's help ends with an example.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Operator tool for the wallet ledger: import commands, inspect wallets, audit the log, and run
/// bulk operations behind the migration gate.
#[derive(Parser, Debug)]
#[command(
    name = "migrate-tool",
    version,
    after_help = "Exit codes: 0 success, 1 rejected or check failed, 2 could not do its job.\n\
                  Example:\n  migrate-tool --store ./ledger-data demo --members 2000\n  \
                  migrate-tool --store ./ledger-data check"
)]
pub struct Cli {
    /// Store directory (created on first write).
    #[arg(
        long,
        global = true,
        env = "LEDGER_STORE",
        default_value = "./ledger-data"
    )]
    pub store: PathBuf,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Apply JSON Lines commands (SPEC section 2); rejected lines are reported as `line N: <reason>`.
    #[command(after_help = "Example:\n  migrate-tool import commands.jsonl\n  \
                            cat commands.jsonl | migrate-tool import -")]
    Import {
        /// File of one JSON command per line; `-` reads stdin.
        file: String,
    },
    /// A member's wallet: balance, outstanding miles, badges, coupons.
    #[command(after_help = "Example:\n  migrate-tool show m1 --json\n  \
                            migrate-tool show m1 --as-of 2019-07-30T13:00:00+09:00\n  \
                            migrate-tool show m1 --as-of @1200")]
    Show {
        /// Member id.
        member: String,
        /// Business time (RFC 3339) or `@N` (log position).
        #[arg(long)]
        as_of: Option<String>,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// A member's statement: wallet events with position, command id and running balance.
    ///
    /// For an audit: every event of the member's wallet in stream order with its log position,
    /// business time, type, command id, the change of the balance and the running balance after
    /// it, then the final balance. Events that move no money (miles, badges, coupons, the
    /// opening) are listed with a change of 0.
    ///
    /// `--from` and `--to` (RFC 3339 business time, both inclusive) choose which lines are
    /// shown, not where the balance starts: it is carried from the wallet's first event, so
    /// every balance shown is the real one and the final balance is the wallet's. The output is
    /// written as it is read, so a member with millions of events costs no more memory than one
    /// with ten. It works beside a running writer (it then reads the segment files, like `log`).
    /// Exit 1 when the member has no wallet.
    #[command(after_help = "Example:\n  migrate-tool statement m1\n  \
                            migrate-tool statement m1 --from 2019-07-01T00:00:00+09:00 --to 2019-07-31T23:59:59+09:00 --csv > m1-july.csv\n  \
                            migrate-tool statement m1 --json | jq '.lines[] | select(.delta_yen < 0)'\n\n\
                            CSV columns: position,at,event_type,command_id,delta_yen,balance_yen")]
    Statement {
        /// Member id.
        member: String,
        /// Show lines with business time at or after T (RFC 3339).
        #[arg(long, value_name = "T")]
        from: Option<String>,
        /// Show lines with business time at or before T (RFC 3339).
        #[arg(long, value_name = "T")]
        to: Option<String>,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// CSV with a header row on stdout.
        #[arg(long, conflicts_with = "json")]
        csv: bool,
    },
    /// One JSON line per member with a wallet, sorted by member id.
    #[command(after_help = "Example:\n  migrate-tool export > wallets.jsonl\n  \
                            migrate-tool export --as-of 2019-07-30T04:00:00Z")]
    Export {
        /// Business time (RFC 3339) or `@N` (log position).
        #[arg(long)]
        as_of: Option<String>,
    },
    /// The digest (hex) over every member's wallet state.
    #[command(after_help = "Example:\n  migrate-tool digest\n  migrate-tool digest --as-of @5000")]
    Digest {
        /// Business time (RFC 3339) or `@N` (log position).
        #[arg(long)]
        as_of: Option<String>,
    },
    /// Events in log order.
    #[command(
        after_help = "Example:\n  migrate-tool log --stream wallet-m1 --json\n  \
                            migrate-tool log --from 100 --limit 10"
    )]
    Log {
        /// Only this stream, e.g. `wallet-m1` or `identity-m1`.
        #[arg(long)]
        stream: Option<String>,
        /// First log position.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// At most this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Hash chain, gap-free positions and stream versions, unique ids, every frame's checksum,
    /// the indexes and the command fingerprints against the log; with `--since`, that the log
    /// still extends a head published earlier (see `head`). Exit 1 names the first bad position.
    #[command(after_help = "Example:\n  migrate-tool verify --json\n  \
                            migrate-tool verify --since 1200:9f3ad1c0...e07b (the anchor `head` printed)")]
    Verify {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// An anchor `POSITION:HASH` (64 hex digits) printed by `head` earlier: the event at
        /// POSITION must still have HASH and the chain must verify from it to the head, so a
        /// truncated or rewritten log fails (exit 1).
        #[arg(long, value_name = "POS:HASH")]
        since: Option<ledger::verify::Anchor>,
    },
    /// The log head as a checkpoint to publish elsewhere (position and hash, the anchor for
    /// `verify --since`), with the time of the last event and the segment and frame counts.
    /// Works beside a running writer (reads the segment files without its lock).
    #[command(after_help = "Example:\n  migrate-tool head --json\n  \
                            migrate-tool verify --since \"$(migrate-tool head --anchor)\"")]
    Head {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
        /// Print only the anchor `POSITION:HASH` (for scripts).
        #[arg(long, conflicts_with = "json")]
        anchor: bool,
    },
    /// Every invariant of SPEC section 4; exit 1 if any fails.
    #[command(after_help = "Example:\n  migrate-tool check --json")]
    Check {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Drop and re-derive every projection from the log.
    #[command(after_help = "Example:\n  migrate-tool rebuild")]
    Rebuild,
    /// Forced password reset behind the migration gate (SPEC section 5).
    #[command(
        group = clap::ArgGroup::new("who").required(true).args(["all", "member"]),
        after_help = "Example:\n  migrate-tool reset-credentials --all --reason leak-2019-07 --dry-run --json\n  \
                      migrate-tool reset-credentials --member m1 --member m2"
    )]
    ResetCredentials {
        /// Every member with an identity stream.
        #[arg(long)]
        all: bool,
        /// A member to reset (repeatable).
        #[arg(long)]
        member: Vec<String>,
        /// Recorded with each reset (1-256 characters).
        #[arg(long)]
        reason: Option<String>,
        /// Run everything, then roll back (or work on a scratch copy): the store is not touched.
        #[arg(long)]
        dry_run: bool,
        /// One JSON report on stdout.
        #[arg(long)]
        json: bool,
        /// Test-only flags (`--fault-touch-wallet`), with the feature `fault-injection` only.
        #[command(flatten)]
        faults: crate::faults::ResetFaults,
    },
    /// Named migrations behind the gate of SPEC section 5: copy-transform, prove, cut over.
    #[command(
        subcommand,
        after_help = "Example:\n  migrate-tool migrate list\n  \
                      migrate-tool migrate run upcast --dry-run --json\n  \
                      migrate-tool migrate status\n  migrate-tool migrate rollback"
    )]
    Migrate(MigrateCmd),
    /// Pre-deploy gate: this binary re-derives every projection from the log and compares it
    /// with the stored views; exit 1 names the members and fields that differ.
    #[command(after_help = "Example:\n  migrate-tool gate --json")]
    Gate {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Expire every miles lot and active coupon with `expires_at <= T` over the whole store
    /// (SPEC 2 `expire` without a member): one atomic append per member with something due,
    /// with a progress bar of members done. Running it again with the same `T` (or `--id`)
    /// finishes a run that was stopped and writes nothing twice; once done it is a duplicate.
    #[command(after_help = "Example:\n  \
                            migrate-tool expire --as-of 2019-07-31T00:00:00+09:00\n  \
                            migrate-tool expire --as-of 2019-07-31T00:00:00+09:00 --id nightly-2019-07-31 --json\n\n\
                            The command id defaults to expire-<T in UTC>, e.g. expire-2019-07-30T15:00:00Z.")]
    Expire {
        /// Business time (RFC 3339, e.g. 2019-07-31T00:00:00+09:00): what expires at or before it expires.
        #[arg(long, value_name = "T", value_parser = crate::expire::parse_as_of)]
        as_of: ledger::Timestamp,
        /// Command id (the idempotency key, 1-128 characters); default `expire-<T in UTC>`.
        #[arg(long, value_parser = crate::expire::parse_id)]
        id: Option<ledger::domain::CommandId>,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Incident defence (SPEC section 7): list the members an account takeover hit, and
    /// compensate them behind the gate.
    #[command(
        subcommand,
        after_help = "Example:\n  migrate-tool incident victims --from 2019-07-01T00:00:00+09:00 --to 2019-07-04T23:59:59+09:00 --ip 203.0.113.7 --json > victims.json\n  \
                      migrate-tool incident compensate victims.json --incident 7pay-2019-07 --dry-run"
    )]
    Incident(IncidentCmd),
    /// Write deterministic, realistic activity into the store; with `--takeover K`, the 7Pay
    /// account takeover of SPEC section 7 among it, and its true answer in
    /// `<store>.takeover.json`.
    #[command(
        after_help = "Example:\n  migrate-tool demo --members 2000 --events-per-member 8 --seed 7\n  \
                      migrate-tool demo --members 1000000 --takeover 808\n  \
                      migrate-tool demo --members 1000000 --takeover 808 --policy 24:5000"
    )]
    Demo(crate::demo::Args),
}

/// `migrate` subcommands.
#[derive(Subcommand, Debug)]
pub enum MigrateCmd {
    /// The migrations this build knows and what each declares it changes.
    #[command(after_help = "Example:\n  migrate-tool migrate list --json")]
    List {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Run a migration inside the gate; exit 1 (store untouched) on any undeclared difference.
    #[command(
        after_help = "Example:\n  migrate-tool migrate run upcast --dry-run\n  \
                            migrate-tool migrate run recode --json"
    )]
    Run {
        /// Migration name (see `migrate list`).
        name: String,
        /// Run everything on a scratch store; the store is not touched.
        #[arg(long)]
        dry_run: bool,
        /// One JSON report on stdout.
        #[arg(long)]
        json: bool,
        /// Test-only flags (`--fault`), with the feature `fault-injection` only.
        #[command(flatten)]
        faults: crate::faults::MigrateFaults,
    },
    /// Lock holder, encodings and schema versions in the log, applied migrations, kept stores.
    #[command(after_help = "Example:\n  migrate-tool migrate status --json")]
    Status {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Put back the store kept by the last cut-over (the migrated one is kept beside it).
    #[command(after_help = "Example:\n  migrate-tool migrate rollback")]
    Rollback {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `incident` subcommands.
#[derive(Subcommand, Debug)]
pub enum IncidentCmd {
    /// Members with a credential event in [FROM, TO] followed by outgoing value from that
    /// event's device (`exact`), or within 72 hours of it without a device (`window`).
    #[command(
        after_help = "Example:\n  migrate-tool incident victims --from 2019-07-01T00:00:00+09:00 --to 2019-07-04T23:59:59+09:00\n  \
                      migrate-tool incident victims --from 2019-07-01T00:00:00+09:00 --to 2019-07-04T23:59:59+09:00 --ip 203.0.113.7,203.0.113.8 --json > victims.json"
    )]
    Victims {
        /// Start of the interval of credential events (RFC 3339 business time, inclusive).
        #[arg(long, value_name = "T1")]
        from: String,
        /// End of the interval (inclusive).
        #[arg(long, value_name = "T2")]
        to: String,
        /// Only logins from these addresses count as evidence (comma-separated, repeatable).
        #[arg(long, value_name = "IP,...", value_delimiter = ',')]
        ip: Vec<String>,
        /// The report as one JSON document on stdout (carries its own BLAKE3 hash).
        #[arg(long)]
        json: bool,
    },
    /// One `compensate` per `exact` outgoing event of each `exact` victim of REPORT, behind the
    /// gate: the sum of balances rises by the report's total and no other wallet changes.
    #[command(
        after_help = "Example:\n  migrate-tool incident compensate victims.json --incident 7pay-2019-07 --dry-run\n  \
                      migrate-tool incident compensate victims.json --incident 7pay-2019-07 --json"
    )]
    Compensate {
        /// The JSON report written by `incident victims --json`.
        report: std::path::PathBuf,
        /// The incident id recorded with each compensation (1-64 characters).
        #[arg(long)]
        incident: String,
        /// Run everything, then roll back (or work on a scratch copy): the store is not touched.
        #[arg(long)]
        dry_run: bool,
        /// One JSON report on stdout.
        #[arg(long)]
        json: bool,
        /// Test-only flags (`--fault-extra-credit`), with the feature `fault-injection` only.
        #[command(flatten)]
        faults: crate::faults::CompensateFaults,
    },
}
