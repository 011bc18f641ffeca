#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of untrusted bytes (issue 13, item 5), with cargo-fuzz
# (libFuzzer) on the nightly toolchain. Installs what it needs (nightly, cargo-fuzz), then runs
# each target in turn, one process (one core) at a time, for SECONDS each.
#
#   bash scripts/fuzz.sh                 # every target, 60 s each
#   bash scripts/fuzz.sh 600 store_open  # one target, 10 minutes
#
# Targets (tests/fuzz/fuzz_targets/): parse_command, record_decode, frame_decode,
# segment_recover, store_open. Each starts from its committed seeds (tests/fuzz/corpus/TARGET,
# written by `cargo run -p ledger-tests --bin fuzz_seeds`) plus what earlier runs found
# (tests/fuzz/target/work-corpus/TARGET, not committed). A crash is saved under
# tests/fuzz/artifacts/TARGET/ and reproduced with
#   cargo +nightly fuzz run --fuzz-dir tests/fuzz -O TARGET tests/fuzz/artifacts/TARGET/crash-...
# and then becomes a regression test in the stable suite (see RELIABILITY.md).
# Scratch stores go to a tmpfs (/dev/shm) when there is one: fsync is free there.
# Exit status: 0, or 1 when a target crashed. tests/fuzz/target can grow to a few GB: remove it
# when done.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(parse_command record_decode frame_decode segment_recover store_open)
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=$(mktemp -d /dev/shm/ledger-fuzz.XXXXXX)
  trap 'rm -rf "$TMPDIR"' EXIT
fi
export CARGO_INCREMENTAL=0

cargo +nightly fuzz build --fuzz-dir tests/fuzz -O

failed=0
summary=""
for target in "${TARGETS[@]}"; do
  work=tests/fuzz/target/work-corpus/$target
  artifacts=tests/fuzz/artifacts/$target
  mkdir -p "$work" "$artifacts"
  log=tests/fuzz/target/$target.log
  before=$(ls "$artifacts" | wc -l)
  echo "== $target: $SECONDS_EACH s (log $log)" >&2
  # -fork=1: one child process at a time, restarted after a crash (-ignore_*), so one finding
  # does not end the run; every failing input is saved under $artifacts.
  cargo +nightly fuzz run --fuzz-dir tests/fuzz -O "$target" "$work" "tests/fuzz/corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -timeout=20 -rss_limit_mb=2048 \
    -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1 || true
  runs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  found=$(( $(ls "$artifacts" | wc -l) - before ))
  if [ "$found" -ne 0 ]; then
    failed=1
    summary+="$target: ${runs:-?} runs in $SECONDS_EACH s, $found FAILING INPUTS ($cov); see $log and $artifacts"$'\n'
    grep -m3 -A2 'panicked at\|ERROR: libFuzzer\|ERROR: AddressSanitizer' "$log" >&2 || true
  else
    summary+="$target: ${runs:-?} runs in $SECONDS_EACH s, no crash ($cov)"$'\n'
  fi
done
printf '%s' "$summary"
exit $failed
