#!/usr/bin/env bash
# The 7Pay takeover story (SPEC section 7) in commands, on the embedded default store (redb).
# 1. demo with K takeover victims: attackers log in from their own devices and addresses on
#    2019-07-01..04 and pay from them; ordinary members log in from new phones the same days;
#    the true answer goes to <store>.takeover.json.
# 2. incident victims with the attacker addresses: the list, compared with the true answer.
# 3. incident compensate, behind the gate; run twice: the second adds nothing. 4. check.
# 5. The same replay with a hold policy (24 h, 5,000 yen): what the holds kept in the wallets.
# Usage: bash scripts/takeover.sh [MEMBERS (20000)] [VICTIMS (808)]
set -euo pipefail
cd "$(dirname "$0")/.."
members="${1:-20000}"
victims="${2:-808}"
store="${LEDGER_STORE:-./ledger-data}-takeover"
held="$store-holds"
from=2019-07-01T00:00:00+09:00
to=2019-07-04T23:59:59+09:00
tool() { "${MIGRATE_TOOL:-target/release/migrate-tool}" "$@"; }

[ -n "${MIGRATE_TOOL:-}" ] || cargo build --quiet --release -p migrate-tool
rm -rf "$store" "$store.takeover.json" "$held" "$held.takeover.json"
echo "== demo: $members members, $victims of them taken over, into $store"
tool --store "$store" demo --members "$members" --takeover "$victims" --seed 7
truth="$store.takeover.json"
ips=$(tr -d ' \n' < "$truth" | sed 's/.*"attacker_ips":\[\([^]]*\)\].*/\1/' | tr -d '"')
echo "== the attacker addresses (from the fraud team): $ips"
echo "== incident victims, broad (every credential event counts)"
tool --store "$store" incident victims --from "$from" --to "$to" --json > "$store.broad.json"
tool --store "$store" incident victims --from "$from" --to "$to" | tail -4
echo "== incident victims --ip <attacker addresses>"
tool --store "$store" incident victims --from "$from" --to "$to" --ip "$ips" --json > "$store.victims.json"
tool --store "$store" incident victims --from "$from" --to "$to" --ip "$ips" | tail -4
echo "== the list against the true answer"
listed=$(tr -d ' \n' < "$store.victims.json" | grep -o '"member":"[^"]*","confidence":"exact"' | cut -d'"' -f4 | sort)
wanted=$(tr -d ' \n' < "$truth" | sed 's/.*"victims":\[\([^]]*\)\].*/\1/' | tr ',' '\n' | tr -d '"' | sort)
both=$(comm -12 <(echo "$listed") <(echo "$wanted") | grep -c . || true)
echo "exact: $(echo "$listed" | grep -c . || true) listed, $(echo "$wanted" | grep -c .) true victims, $both in both"
echo "== incident compensate (dry run, then for real, then again)"
tool --store "$store" incident compensate "$store.victims.json" --incident 7pay-2019-07 --dry-run | tail -3
tool --store "$store" incident compensate "$store.victims.json" --incident 7pay-2019-07
tool --store "$store" incident compensate "$store.victims.json" --incident 7pay-2019-07 | tail -3
echo "== check"
tool --store "$store" check
echo "== the same replay with holds on: set_policy 24 h / 5,000 yen before it"
tool --store "$held" demo --members "$members" --takeover "$victims" --seed 7 --policy 24:5000
tr -d ' \n' < "$held.takeover.json" | grep -o '"held":{[^}]*}' | tr ',' '\n'
echo "== incident victims --ip on the held replay: what still left the wallets"
tool --store "$held" incident victims --from "$from" --to "$to" --ip "$ips" | tail -4
