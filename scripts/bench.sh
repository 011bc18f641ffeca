#!/usr/bin/env bash
# The benchmark suite in one command (issue 7): builds the release binaries, then runs the
# `bench` driver, which prints the machine's facts, runs every SPEC section 6 workload as a child
# process and prints one summary table (figure, same-run baseline, ratio, target, MET/MISSED).
#
#   bash scripts/bench.sh            # default: 5 s append runs, rebuild over >= 10M events
#                                    # (the 10M store is prepared once, ~3-5 min, and kept in DIR)
#   bash scripts/bench.sh --quick    # smoke test: 1 s runs, small stores (a few minutes)
#   bash scripts/bench.sh --full     # adds the 7Pay steps at 16.5M members (~1-1.5 h, ~25 GB)
#
# Options (passed to the driver): --dir DIR (default /tmp/ledger-bench), --no-pg (skip the
# PostgreSQL peer, scripts/pg_peer.sh), --json FILE (the summary as JSON), --keep-stores,
# --seconds S, --rebuild-events N, --demo-members N, --only http (one workload, e.g. the
# walletd rows of issue 14); `target/release/bench --help` lists all.
#
#   bash scripts/bench.sh --only holds           # issue 15: `commands` with holds on against
#                                                # holds off, 3 alternating rounds of 5 s each
#   # or, after a release build, the child alone (prints every round and the load average):
#   # target/release/bench_wallet --dir /tmp commands-holds --seconds 5 --rounds 3
# Exit status: 0, or 1 when a workload FAILED (its stderr tail is in the table), 2 on a build error.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== building release binaries (bench, bench_append, bench_wallet, bench_http, migrate-tool, walletd; sled bench_append in target/bench-sled)" >&2
cargo build --quiet --release -p ledger-tests --bins || exit 2
cargo build --quiet --release -p migrate-tool || exit 2
# The `http` rows (bench_http) start this walletd on loopback.
cargo build --quiet --release -p walletd || exit 2
# The sled backend is a feature of the same binary name; build it in its own target directory
# so that it does not replace the redb-only bench_append.
cargo build --quiet --release -p ledger-tests --features sled --bin bench_append \
  --target-dir target/bench-sled || exit 2

exec target/release/bench \
  --bin-dir target/release \
  --sled-bench target/bench-sled/release/bench_append \
  --pg-script scripts/pg_peer.sh \
  "$@"
