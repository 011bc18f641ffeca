#!/usr/bin/env bash
# Proves the shipped `migrate-tool` has no test-only switch (issue 13 item 8): builds it as a
# release is built (`cargo build --release -p migrate-tool`: no dev-dependency, so the feature
# `fault-injection` is off), then checks that
#   - no help text lists a fault flag,
#   - `migrate run NAME --fault F`, `reset-credentials --fault-touch-wallet` and `incident
#     compensate --fault-extra-credit` are usage errors (exit 2, clap's "unexpected argument"),
#     before anything opens a store,
#   - the binary does not even contain the flags' names (the faulty code is not compiled in).
# The tests' own binary has the flags: migrate-tool/tests/{migrate,cli,incident_compensate}.rs
# prove the gates refuse the faulty transform, reset and compensation with it.
#
#   bash scripts/check-release-flags.sh            # release build (what ships)
#   PROFILE=dev bash scripts/check-release-flags.sh   # debug build, same features, quicker
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${PROFILE:-release}"
dir=release
[ "$profile" = dev ] && dir=debug
cargo build --quiet --profile "$profile" -p migrate-tool
bin="${CARGO_TARGET_DIR:-target}/$dir/migrate-tool"
store="$(mktemp -d)/store"
fail=0

for help in "--help" "reset-credentials --help" "migrate run --help" "incident compensate --help"; do
    # shellcheck disable=SC2086 # the words of $help are separate arguments
    if "$bin" $help | grep -q -- "--fault"; then
        echo "FAIL: \`migrate-tool $help\` mentions a fault flag" >&2
        fail=1
    fi
done

usage_error() {
    local out code=0
    out="$("$bin" --store "$store" "$@" 2>&1)" || code=$?
    if [ "$code" -ne 2 ] || ! grep -q "unexpected argument '--fault" <<<"$out"; then
        echo "FAIL: \`migrate-tool $*\` exited $code, expected a usage error (2):" >&2
        echo "$out" >&2
        fail=1
    fi
}
usage_error migrate run upcast --fault drop-one
usage_error reset-credentials --all --fault-touch-wallet
usage_error incident compensate victims.json --incident 7pay --fault-extra-credit
if [ -e "$store" ]; then
    echo "FAIL: a rejected flag created the store $store" >&2
    fail=1
fi

for name in fault-touch-wallet fault-extra-credit drop-one alter-amount; do
    if grep -qa -- "$name" "$bin"; then
        echo "FAIL: $bin contains \"$name\": the test-only code is compiled in" >&2
        fail=1
    fi
done

rm -rf "$(dirname "$store")"
[ "$fail" -eq 0 ] && echo "ok: the $profile migrate-tool has no test-only flag"
exit "$fail"
