#!/usr/bin/env bash
# The 7Pay story in a few commands, on the embedded default store (redb).
# 1. demo writes realistic, deterministic wallet activity for N members (default 10000);
# 2. export every wallet; 3. reset every member's password, as 7Pay did on 2019-07-30, through
# the migration gate; 4. export again and diff: every wallet survived; 5. check every invariant;
# 6. the account takeover story (scripts/takeover.sh): list the victims, compensate, check, holds.
set -euo pipefail
cd "$(dirname "$0")/.."
members="${1:-10000}"
store="${LEDGER_STORE:-./ledger-data}"
export LEDGER_STORE="$store"
tool() { cargo run --quiet --release -p migrate-tool -- "$@"; }

cargo build --quiet --release -p migrate-tool
rm -rf "$store"
echo "== demo: $members members into $store"
tool demo --members "$members" --seed 7
echo "== export before the reset"
tool export > "$store.before.jsonl"
tool digest
echo "== reset-credentials --all (the 7Pay mass reset), with the migration gate"
tool reset-credentials --all --reason "7iD credential stuffing, 2019-07-30"
echo "== export after the reset, and diff"
tool export > "$store.after.jsonl"
if cmp -s "$store.before.jsonl" "$store.after.jsonl"; then
  echo "exports identical: $(wc -l < "$store.after.jsonl") wallets, every balance, mile, badge and coupon kept"
else
  echo "EXPORTS DIFFER" >&2; diff "$store.before.jsonl" "$store.after.jsonl" | head >&2; exit 1
fi
tool digest
echo "== check"
tool check
echo "== one member's wallet"
tool show m00000001
echo
echo "== the account takeover story (scripts/takeover.sh)"
bash scripts/takeover.sh 20000
