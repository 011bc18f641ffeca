#!/usr/bin/env bash
# Serves a store over HTTP with walletd: builds it, makes a key file with one key per scope
# the first time (printing the keys once; only their hashes are stored), and starts walletd.
#   bash scripts/serve.sh [STORE] [LISTEN]      (defaults: ./ledger-data, 127.0.0.1:8080)
# Run `bash scripts/demo.sh` first for a store with the 7Pay story in it.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE="${1:-./ledger-data}"
LISTEN="${2:-127.0.0.1:8080}"
KEYS="${WALLETD_KEYS:-./walletd-keys.toml}"
cargo build --release -q -p walletd
WALLETD=./target/release/walletd
if [ ! -f "$KEYS" ]; then
    echo "== making $KEYS (the keys are printed only now: keep them)"
    for pair in backend:service auditor:auditor operator:operator; do
        name="${pair%%:*}"; scope="${pair##*:}"
        key=$("$WALLETD" keys add --keys "$KEYS" --name "$name" --scope "$scope" 2>/dev/null)
        echo "   $name ($scope): $key"
    done
fi
echo "== walletd on $STORE; console at http://$LISTEN/console; Ctrl-C stops it cleanly"
exec "$WALLETD" --store "$STORE" --listen "$LISTEN" --keys "$KEYS" --log-format text
