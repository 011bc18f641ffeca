//! `walletd`: serve a wallet store over HTTP, or manage its keys. See docs/walletd.md.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use walletd::config::{Config, Given};

/// The wallet core service over HTTP: commands with idempotency keys, wallets, statements,
/// the live event feed, Prometheus metrics and an auditor console, on a ledger store.
///
/// Start:   walletd --store ./ledger-data --listen 127.0.0.1:8080 --keys keys.toml
/// Keys:    walletd keys add --keys keys.toml --name backend --scope service
#[derive(Parser)]
#[command(name = "walletd", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Manage API keys (the file stores only their hashes).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a key, store its hash under NAME with its scopes, and print the key once.
    Add {
        /// The key file (created if missing).
        #[arg(long, env = "WALLETD_KEYS")]
        keys: PathBuf,
        /// The key's owner name, [A-Za-z0-9._-]{1,48}; it scopes the key's idempotency keys.
        #[arg(long)]
        name: String,
        /// `service`, `auditor`, `operator` or `member:<id>`; repeat for several.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML file with any of the settings below (flags and environment win over it).
    #[arg(long, env = "WALLETD_CONFIG")]
    config: Option<PathBuf>,
    /// Store directory (created on first start) [default: ./ledger-data].
    #[arg(long, env = "WALLETD_STORE")]
    store: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free one [default: 127.0.0.1:8080].
    #[arg(long, env = "WALLETD_LISTEN")]
    listen: Option<String>,
    /// Key file made by `walletd keys add`.
    #[arg(long, env = "WALLETD_KEYS")]
    keys: Option<PathBuf>,
    /// Largest request body in bytes [default: 65536].
    #[arg(long, env = "WALLETD_BODY_LIMIT_BYTES")]
    body_limit_bytes: Option<usize>,
    /// Longest a request may take, in ms (not the event feed or export) [default: 30000].
    #[arg(long, env = "WALLETD_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// Longest an idle keep-alive connection is kept, in ms [default: 60000].
    #[arg(long, env = "WALLETD_IDLE_TIMEOUT_MS")]
    idle_timeout_ms: Option<u64>,
    /// Requests per second per key, 0 for no limit [default: 20000].
    #[arg(long, env = "WALLETD_RATE_LIMIT_PER_SEC")]
    rate_limit_per_sec: Option<u32>,
    /// How long SIGTERM waits for requests in flight, in ms [default: 30000].
    #[arg(long, env = "WALLETD_SHUTDOWN_GRACE_MS")]
    shutdown_grace_ms: Option<u64>,
    /// `json` or `text` [default: json when stderr is not a terminal].
    #[arg(long, env = "WALLETD_LOG_FORMAT")]
    log_format: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Keys(KeysCommand::Add { keys, name, scopes })) => {
            walletd::keys::add_key(&keys, &name, &scopes)
                .map(|key| {
                    println!("{key}");
                    eprintln!(
                        "key `{name}` added to {}; the key above is shown only now",
                        keys.display()
                    );
                })
                .map_err(anyhow::Error::from)
        }
        None => run(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walletd: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: ServeArgs) -> anyhow::Result<()> {
    let given = Given {
        config: args.config,
        store: args.store,
        listen: args.listen,
        keys: args.keys,
        body_limit_bytes: args.body_limit_bytes,
        request_timeout_ms: args.request_timeout_ms,
        idle_timeout_ms: args.idle_timeout_ms,
        rate_limit_per_sec: args.rate_limit_per_sec,
        shutdown_grace_ms: args.shutdown_grace_ms,
        log_format: args.log_format,
    };
    let config = Config::resolve(given, std::io::stderr().is_terminal())?;
    walletd::telemetry::init_logs(config.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(walletd::serve(config))
}
