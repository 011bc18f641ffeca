#!/usr/bin/env bash
# pg_peer.sh: the PostgreSQL peer of SPEC section 6 ("peer: PostgreSQL").
#
# Runs the append-1 / append-100 workloads of tests/src/bin/bench_append.rs (--workload append, the
# default) and a PostgreSQL wallet doing the commands mix of tests/src/bin/bench_wallet.rs
# (--workload wallet) against a throw-away PostgreSQL server with durable settings, using pgbench,
# and prints events/s (commands/s) and p50/p99 per-call latency in the same shape as bench_append
# and bench_wallet, so the two can be compared row by row.
# Run `bash scripts/pg_peer.sh --help` for the details.
set -euo pipefail

readonly PAYLOAD_BYTES=200   # per event, as in bench_append (SPEC section 6)
readonly WARMUP_CALLS=2      # untimed calls per writer, as in bench_append
readonly FUNDING_YEN=100000000   # each wallet's starting balance, as bench_wallet's FUNDING_YEN
# Payload bytes per wallet event: about the size of our bincode payloads of the same events
# (a payment: a 36-character command id, amount, merchant, currency; a transfer: the other
# member's id and the amount; and so on), so that both sides write comparable rows.
readonly PAY_PAYLOAD_BYTES=68
readonly TOP_UP_PAYLOAD_BYTES=4
readonly TRANSFER_PAYLOAD_BYTES=14
readonly EARN_PAYLOAD_BYTES=14
readonly REDEEM_PAYLOAD_BYTES=7
readonly OPENED_PAYLOAD_BYTES=10
readonly ISSUED_PAYLOAD_BYTES=16

usage() {
    cat <<'EOF'
pg_peer.sh: the PostgreSQL peer of SPEC section 6 (append-1 / append-100 on PostgreSQL, and a
PostgreSQL wallet doing bench_wallet's commands mix)

Usage: bash scripts/pg_peer.sh [--workload append|wallet|all] [--writers 1,8,64] [--batch 1,100]
                               [--members 10000] [--seconds 5] [--dir /tmp] [--json] [--keep]
                               [--pg-bin DIR] [--help]

What it does
  1. Finds the PostgreSQL server binaries (/usr/lib/postgresql/*/bin, newest first, or --pg-bin);
     if there are none it runs `apt-get install -y postgresql` (needs root).
  2. Creates a temp dir under --dir with a fresh cluster (initdb), starts a private server on a
     unix socket in that dir (clients use the socket) and on 127.0.0.1 at a free port, with
     durable settings: fsync=on, synchronous_commit=on, full_page_writes=on, wal_sync_method left
     at its default; shared_buffers=1GB, max_connections=200, max_wal_size=8GB (no WAL-size
     checkpoint inside a run), track_wal_io_timing=on. The settings are printed back with SHOW.
     As root, initdb/postgres run as the OS user `postgres` (created if missing), which owns the
     temp dir. The server is stopped and the temp dir removed on exit, failure or Ctrl-C.
  3. Schema: events(position bigserial primary key, event_id uuid not null unique,
     stream text not null, version bigint not null, event_type text not null,
     recorded_at timestamptz not null default now(), payload bytea not null, unique (stream, version)).
  4. For each --batch K and each --writers C: TRUNCATE (RESTART IDENTITY) and CHECKPOINT, then
     pgbench -c C -j min(C,2) -n -M prepared over the unix socket: 2 untimed warm-up calls per
     client (-t 2), then the timed run (-T seconds) with per-transaction logs (-l). One call =
     one transaction = one INSERT ... SELECT of K rows to the client's own stream
     'bench-NNNN' (NNNN = pgbench client_id), versions max(version)+1 .. max(version)+K of that
     stream computed in the same statement (unique (stream, version) rejects a concurrent writer,
     which would abort the run), event_id = a time-ordered UUID v7 (--event-ids v7, the default:
     our ledger's event ids are UUID v7 too) or gen_random_uuid() (--event-ids random), K
     payloads of 200 bytes sent by the
     client as a bound parameter on every call (a text[] of hex strings, decoded by the server).
     Each run is then verified with SQL: rows = (C*2 + txns) * K, every stream's versions are
     exactly 1..count, C streams; any mismatch fails the script.
  5. --workload wallet (or all): for each --writers C, the wallet tables are reset to what
     bench_wallet `commands` prepares (--members wallets with 100,000,000 yen, version 2 + N,
     N coupons each, N = ceil(seconds * 10,000 / members), at least 4, and those events), then
     pgbench runs one command of the commands mix per transaction, the usual way: SELECT ...
     FOR UPDATE the wallet row (both rows, in member order, for a transfer), INSERT the command
     id and the event row(s) (payloads about our bincode sizes), UPDATE the balance / miles /
     coupon and the wallet's version. Mix: 40% pay, 20% top_up, 20% transfer (2 events), 10%
     earn_miles, 10% redeem_coupon; client c owns members c, c + C, ... as in bench_wallet.
     Verified with SQL: every stream gap-free, every wallet's version at its stream's head, no
     negative balance, one command row per applied transaction.

Figures (one row per run; wallet rows count commands instead of events)
  events/s   = logged transactions * K / wall, wall = first logged transaction start to last
               logged transaction end (from the -l log: "acknowledged events / wall time", as in
               bench_append). pgbench's own "tps (without initial connection time)" * K is shown
               next to it as a cross-check (pgb ev/s).
  p50/p99    = nearest-rank percentiles of the per-transaction latency (3rd column of the log, µs):
               from sending the transaction to receiving COMMIT's answer, i.e. the durable ack.
  commits/sync, WAL B/ev, FPI/s, sync ms = from pg_stat_wal (reset before each timed run):
               transactions per WAL fsync (PostgreSQL's group commit), WAL bytes per event, full
               page images per second, mean WAL sync time.
  srv/pgb/host cpu% = CPU of the server processes (postmaster + children incl. exited backends),
               of pgbench, and of the whole machine, over the run's wall time (100 = one core).

Options
  --workload W     append (append-K rows), wallet (commands rows) or all   [append]
  --writers LIST   concurrent writers (pgbench clients), comma separated   [1,8,64]
  --batch LIST     events per call, comma separated (1 = append-1, 100 = append-100)   [1,100]
  --members N      wallets of the wallet workload (>= 2 x the largest --writers)   [10000]
  --seconds N      seconds per timed run (integer, pgbench -T)   [5]
  --dir DIR        where the temp dir (cluster, socket, logs) goes   [/tmp]
  --event-ids v7|random  event_id of each row: time-ordered UUID v7 (like ours) or gen_random_uuid()  [v7]
  --json           one JSON document on stdout (progress and info on stderr): append rows
                   in "runs", wallet rows in "wallet_runs"
  --keep           keep the temp dir (server log, pgbench logs) instead of removing it
  --pg-bin DIR     PostgreSQL bin dir (initdb, pg_ctl, postgres, pgbench, psql)
  -h, --help       this text

Exit status: 0 ok, 1 a run failed its verification or pgbench failed, 2 bad arguments / set-up.
EOF
}

die() { echo "pg_peer: error: $*" >&2; exit "${EXIT_CODE:-2}"; }
info() { echo "pg_peer: $*" >&2; }

# ---------------------------------------------------------------- arguments
WORKLOAD=append
WRITERS="1,8,64"
MEMBERS=10000
BATCH="1,100"
RUN_SECONDS=5
BASE_DIR=/tmp
JSON=0
EVENT_IDS=v7
KEEP=0
PG_BIN=""
while (($# > 0)); do
    case "$1" in
        --workload) WORKLOAD="${2:?--workload needs a value}"; shift 2 ;;
        --workload=*) WORKLOAD="${1#*=}"; shift ;;
        --members) MEMBERS="${2:?--members needs a value}"; shift 2 ;;
        --members=*) MEMBERS="${1#*=}"; shift ;;
        --writers) WRITERS="${2:?--writers needs a value}"; shift 2 ;;
        --writers=*) WRITERS="${1#*=}"; shift ;;
        --batch) BATCH="${2:?--batch needs a value}"; shift 2 ;;
        --batch=*) BATCH="${1#*=}"; shift ;;
        --seconds) RUN_SECONDS="${2:?--seconds needs a value}"; shift 2 ;;
        --seconds=*) RUN_SECONDS="${1#*=}"; shift ;;
        --dir) BASE_DIR="${2:?--dir needs a value}"; shift 2 ;;
        --dir=*) BASE_DIR="${1#*=}"; shift ;;
        --pg-bin) PG_BIN="${2:?--pg-bin needs a value}"; shift 2 ;;
        --pg-bin=*) PG_BIN="${1#*=}"; shift ;;
        --event-ids) EVENT_IDS="${2:?--event-ids needs a value}"; shift 2 ;;
        --event-ids=*) EVENT_IDS="${1#*=}"; shift ;;
        --json) JSON=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

IFS=, read -r -a WRITER_LIST <<<"$WRITERS"
IFS=, read -r -a BATCH_LIST <<<"$BATCH"
((${#WRITER_LIST[@]} > 0)) || die "--writers is empty"
((${#BATCH_LIST[@]} > 0)) || die "--batch is empty"
for c in "${WRITER_LIST[@]}"; do
    [[ $c =~ ^[0-9]+$ ]] && ((c >= 1 && c <= 180)) && continue
    die "--writers: '$c' is not an integer in 1..180 (max_connections is 200)"
done
for k in "${BATCH_LIST[@]}"; do
    [[ $k =~ ^[0-9]+$ ]] && ((k >= 1 && k <= 300)) && continue
    die "--batch: '$k' is not an integer in 1..300 (K payloads travel in one command-line -D value, < 128 KiB)"
done
if ! [[ $RUN_SECONDS =~ ^[0-9]+$ ]] || ((RUN_SECONDS < 1)); then
    die "--seconds: '$RUN_SECONDS' is not a positive integer (pgbench -T takes whole seconds)"
fi
[[ $WORKLOAD == append || $WORKLOAD == wallet || $WORKLOAD == all ]] ||
    die "--workload: '$WORKLOAD' must be append, wallet or all"
if [[ $WORKLOAD != append ]]; then
    [[ $MEMBERS =~ ^[0-9]+$ ]] || die "--members: '$MEMBERS' is not an integer"
    for c in "${WRITER_LIST[@]}"; do
        ((MEMBERS >= 2 * c)) || die "--members $MEMBERS: need at least 2 x --writers ($c), as bench_wallet"
    done
fi
# Coupons per wallet, as bench_wallet `commands` sizes them (never running dry at 100k commands/s).
COUPONS=$(((RUN_SECONDS * 10000 + MEMBERS - 1) / MEMBERS))
((COUPONS >= 4)) || COUPONS=4
[[ $EVENT_IDS == v7 || $EVENT_IDS == random ]] || die "--event-ids: '$EVENT_IDS' must be v7 or random"
[[ -d $BASE_DIR ]] || die "--dir: '$BASE_DIR' is not a directory"
BASE_DIR=$(cd "$BASE_DIR" && pwd)

# In --json mode stdout carries only the JSON document; human output goes to stdout otherwise.
say() { if ((JSON)); then echo "$*" >&2; else echo "$*"; fi; }

# ---------------------------------------------------------------- PostgreSQL binaries
find_pg_bin() {
    local dir
    # Newest major version first; the bin dir must have everything this script runs.
    while read -r dir; do
        if [[ -x $dir/postgres && -x $dir/initdb && -x $dir/pg_ctl && -x $dir/pgbench && -x $dir/psql ]]; then
            echo "$dir"
            return 0
        fi
    done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
    return 1
}

if [[ -z $PG_BIN ]]; then
    if ! PG_BIN=$(find_pg_bin); then
        info "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: installing the Debian package"
        ((EUID == 0)) || die "installing PostgreSQL needs root (or pass --pg-bin DIR)"
        command -v apt-get >/dev/null || die "no apt-get: install PostgreSQL and pass --pg-bin DIR"
        # The Debian package may create and start a 'main' cluster on port 5432; we never use it.
        DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2 ||
            die "apt-get install -y postgresql failed (try apt-get update first)"
        PG_BIN=$(find_pg_bin) || die "postgresql installed but no complete bin dir under /usr/lib/postgresql"
    fi
fi
for tool in postgres initdb pg_ctl pgbench psql; do
    [[ -x $PG_BIN/$tool ]] || die "$PG_BIN/$tool is missing or not executable"
done

# initdb and postgres refuse to run as root: as root we run them as the OS user 'postgres'.
PG_OS_USER=$(id -un)
if ((EUID == 0)); then
    PG_OS_USER=postgres
    if ! id "$PG_OS_USER" >/dev/null 2>&1; then
        info "creating the system user '$PG_OS_USER' to run the server"
        useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin "$PG_OS_USER" ||
            die "could not create the system user '$PG_OS_USER'"
    fi
fi
as_pg() {
    if ((EUID == 0)); then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

# ---------------------------------------------------------------- temp dir, cleanup
TMP=$(mktemp -d "$BASE_DIR/pg-peer.XXXXXX") || die "cannot create a temp dir under $BASE_DIR"
DATA="$TMP/data"
SERVER_STARTED=0
cleanup() {
    local rc=$?
    set +e
    if ((SERVER_STARTED)); then
        # immediate: no shutdown checkpoint, the data is thrown away anyway.
        as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1
    fi
    if ((KEEP)); then
        info "kept $TMP (server log: $TMP/server.log, pgbench logs: $TMP/logs)"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cd "$TMP"   # initdb/pg_ctl (run as another user) need a current directory they can read
if ((EUID == 0)); then
    chown "$PG_OS_USER" "$TMP"
    as_pg test -w "$TMP" ||
        die "user '$PG_OS_USER' cannot write to $TMP (a parent of --dir is not searchable by it?)"
fi
mkdir "$TMP/logs"

# A free local port: the first port after a random start that nobody accepts connections on.
PORT=""
start_port=$((54000 + RANDOM % 1000))
for ((p = start_port; p < start_port + 200; p++)); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        PORT=$p
        break
    fi
done
[[ -n $PORT ]] || die "no free local port in $start_port..$((start_port + 199))"

# ---------------------------------------------------------------- cluster and server
info "initdb in $DATA ($("$PG_BIN/postgres" --version))"
as_pg "$PG_BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
    >"$TMP/initdb.log" 2>&1 || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }

# Appended last, so these win over initdb's defaults. Durability settings are the defaults but
# set explicitly so that the run documents them; wal_sync_method is left at its platform default.
cat >>"$DATA/postgresql.conf" <<EOF

# ---- pg_peer.sh
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$TMP'
max_connections = 200            # 180 writers + psql
shared_buffers = '1GB'           # the whole benchmark's data fits in memory
fsync = on                       # durable: WAL is flushed to disk ...
synchronous_commit = on          # ... before COMMIT is acknowledged
full_page_writes = on            # torn-page protection, as in any durable production set-up
max_wal_size = '8GB'             # no WAL-size-triggered checkpoint inside a 5 s run
checkpoint_timeout = '30min'     # no timed checkpoint either; each run starts after a CHECKPOINT
track_wal_io_timing = on         # pg_stat_wal.wal_sync_time
EOF

info "starting the server (socket $TMP/.s.PGSQL.$PORT, 127.0.0.1:$PORT)"
SERVER_STARTED=1
as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$TMP/server.log" -w -t 60 start >/dev/null ||
    { tail -n 20 "$TMP/server.log" >&2; die "the server did not start (log above)"; }
POSTMASTER_PID=$(head -n 1 "$DATA/postmaster.pid")

# psql as the database superuser over the unix socket; -X: ignore ~/.psqlrc, -At: bare values.
sql() {
    "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$TMP" -p "$PORT" -U postgres -d "${DB:-bench}" "$@"
}
DB=postgres sql -c "CREATE DATABASE bench"
sql <<'EOF'
CREATE TABLE events (
    position    bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    stream      text        NOT NULL,
    version     bigint      NOT NULL,
    event_type  text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    payload     bytea       NOT NULL,
    UNIQUE (stream, version)
);
-- UUID v7 layout (RFC 9562): 48-bit Unix milliseconds, version 7, variant 10, random rest.
-- PostgreSQL 15 has no uuidv7(); time-ordered ids keep the event_id index growing at its right
-- edge, as our ledger's v7 event ids do, so neither side pays for random index pages.
CREATE FUNCTION uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $f$
    SELECT (lpad(to_hex(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
            || '7' || substr(md5(random()::text), 1, 3)
            || to_hex(8 + floor(random() * 4)::int) || substr(md5(random()::text), 1, 15))::uuid
$f$;
-- The wallet peer (--workload wallet): balances in one row per member, locked FOR UPDATE by each
-- command; events in a table shaped like `events` (plus the command id); one row per command
-- (the command index: a retried command id would hit the primary key).
CREATE FUNCTION member_key(i bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $f$
    SELECT 'm' || lpad(i::text, 8, '0')
$f$;
CREATE TABLE wallets (
    member  text   PRIMARY KEY,
    balance bigint NOT NULL,
    miles   bigint NOT NULL,
    version bigint NOT NULL   -- the head of the member's event stream
);
CREATE TABLE coupons (
    member      text        NOT NULL,
    n           int         NOT NULL,
    value       bigint      NOT NULL,
    redeemed_at timestamptz,
    PRIMARY KEY (member, n)
);
CREATE TABLE commands (
    command_id uuid PRIMARY KEY,
    member     text NOT NULL,
    kind       text NOT NULL
);
CREATE TABLE wallet_events (
    position    bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    command_id  uuid        NOT NULL,
    stream      text        NOT NULL,
    version     bigint      NOT NULL,
    event_type  text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    payload     bytea       NOT NULL,
    UNIQUE (stream, version)
);
EOF

# ---------------------------------------------------------------- settings, printed back
SETTING_NAMES=(server_version fsync synchronous_commit full_page_writes wal_sync_method wal_level
    shared_buffers wal_buffers max_connections max_wal_size checkpoint_timeout commit_delay
    data_checksums autovacuum track_wal_io_timing)
declare -A SETTINGS=()
for name in "${SETTING_NAMES[@]}"; do
    SETTINGS[$name]=$(sql -c "SHOW $name")
done
PG_VERSION=${SETTINGS[server_version]%% *}
CORES=$(nproc)
CLK_TCK=$(getconf CLK_TCK)

say "pg_peer: PostgreSQL ${SETTINGS[server_version]}, $CORES cores, data dir under $BASE_DIR"
for name in "${SETTING_NAMES[@]:1}"; do
    say "$(printf '  %-20s %s' "$name" "${SETTINGS[$name]}")"
done
say "each run: ${RUN_SECONDS} s timed after $WARMUP_CALLS untimed calls per writer; pgbench -n -M prepared over the unix socket"

# ---------------------------------------------------------------- the pgbench script
# One call = one transaction = one statement. The stream's next version is computed in the same
# statement from the (stream, version) index; K payloads arrive as one bound text[] parameter.
if [[ $EVENT_IDS == v7 ]]; then EVENT_ID_FN=uuid_v7; else EVENT_ID_FN=gen_random_uuid; fi
cat >"$TMP/append.sql" <<EOF
INSERT INTO events (event_id, stream, version, event_type, payload)
SELECT $EVENT_ID_FN(), w.stream, w.base + p.n, 'bench.appended', decode(p.hex, 'hex')
FROM (SELECT s.stream,
             coalesce((SELECT max(e.version) FROM events e WHERE e.stream = s.stream), 0) AS base
      FROM (SELECT 'bench-' || lpad(:client_id::text, 4, '0') AS stream) s) w,
     unnest(:payloads::text[]) WITH ORDINALITY AS p(hex, n);
EOF

# ---------------------------------------------------------------- the wallet peer's pgbench script
# One command of bench_wallet's `commands` mix = one transaction, written the usual way for a
# PostgreSQL wallet: SELECT ... FOR UPDATE the wallet row(s) (a transfer locks both rows in member
# order, so two opposite transfers cannot deadlock), check the rule, INSERT the command id and the
# event row(s), UPDATE the balance. The mix, as in bench_wallet `run_client` / `mix_command`:
# client c owns members c, c + C, c + 2C, ... and picks one uniformly; 40% pay 1-8,000 yen, 20%
# top_up 500-20,499 yen, 20% transfer 1-3,000 yen to a uniformly random other member (2 events),
# 10% earn_miles 10-500, 10% redeem_coupon (the member's lowest unredeemed coupon; a top_up of 500
# yen when none is left, as bench_wallet falls back). A refused command (balance too low: never
# with the funding) commits nothing.
cat >"$TMP/wallet.sql" <<'EOF'
\set r random(0, 99)
\set own (:members - :client_id + :clients - 1) / :clients
\set m :client_id + :clients * random(0, :own - 1)
BEGIN;
\if :r < 40
\set amount random(1, 8000)
SELECT balance, version FROM wallets WHERE member = member_key(:m) FOR UPDATE \gset
\if :balance >= :amount
WITH c AS (INSERT INTO commands (command_id, member, kind) VALUES (uuid_v7(), member_key(:m), 'pay') RETURNING command_id)
INSERT INTO wallet_events (event_id, command_id, stream, version, event_type, payload)
SELECT uuid_v7(), c.command_id, 'wallet-' || member_key(:m), :version + 1, 'wallet.paid', decode(:pay_payload, 'hex') FROM c;
UPDATE wallets SET balance = balance - :amount, version = version + 1 WHERE member = member_key(:m);
\endif
\elif :r < 60
\set amount random(500, 20499)
SELECT version FROM wallets WHERE member = member_key(:m) FOR UPDATE \gset
WITH c AS (INSERT INTO commands (command_id, member, kind) VALUES (uuid_v7(), member_key(:m), 'top_up') RETURNING command_id)
INSERT INTO wallet_events (event_id, command_id, stream, version, event_type, payload)
SELECT uuid_v7(), c.command_id, 'wallet-' || member_key(:m), :version + 1, 'wallet.topped_up', decode(:top_up_payload, 'hex') FROM c;
UPDATE wallets SET balance = balance + :amount, version = version + 1 WHERE member = member_key(:m);
\elif :r < 80
\set to random(0, :members - 1)
\if :to = :m
\set to (:to + 1) % :members
\endif
\set amount random(1, 3000)
SELECT max(balance) FILTER (WHERE member = member_key(:m)) AS balance,
       max(version) FILTER (WHERE member = member_key(:m)) AS version,
       max(version) FILTER (WHERE member = member_key(:to)) AS to_version
FROM (SELECT member, balance, version FROM wallets
      WHERE member IN (member_key(:m), member_key(:to)) ORDER BY member FOR UPDATE) locked \gset
\if :balance >= :amount
WITH c AS (INSERT INTO commands (command_id, member, kind) VALUES (uuid_v7(), member_key(:m), 'transfer') RETURNING command_id)
INSERT INTO wallet_events (event_id, command_id, stream, version, event_type, payload)
SELECT uuid_v7(), c.command_id, e.stream, e.version, e.event_type, decode(:transfer_payload, 'hex')
FROM c, (VALUES ('wallet-' || member_key(:m), :version + 1, 'wallet.transferred_out'),
                ('wallet-' || member_key(:to), :to_version + 1, 'wallet.transferred_in')) AS e(stream, version, event_type);
UPDATE wallets SET balance = balance + (CASE WHEN member = member_key(:m) THEN -1 ELSE 1 END) * :amount,
                   version = version + 1
WHERE member IN (member_key(:m), member_key(:to));
\endif
\elif :r < 90
\set miles random(10, 500)
SELECT version FROM wallets WHERE member = member_key(:m) FOR UPDATE \gset
WITH c AS (INSERT INTO commands (command_id, member, kind) VALUES (uuid_v7(), member_key(:m), 'earn_miles') RETURNING command_id)
INSERT INTO wallet_events (event_id, command_id, stream, version, event_type, payload)
SELECT uuid_v7(), c.command_id, 'wallet-' || member_key(:m), :version + 1, 'wallet.miles_earned', decode(:earn_payload, 'hex') FROM c;
UPDATE wallets SET miles = miles + :miles, version = version + 1 WHERE member = member_key(:m);
\else
SELECT version FROM wallets WHERE member = member_key(:m) FOR UPDATE \gset
SELECT coalesce(min(n), 0) AS coupon FROM coupons WHERE member = member_key(:m) AND redeemed_at IS NULL \gset
\if :coupon > 0
WITH c AS (INSERT INTO commands (command_id, member, kind) VALUES (uuid_v7(), member_key(:m), 'redeem_coupon') RETURNING command_id)
INSERT INTO wallet_events (event_id, command_id, stream, version, event_type, payload)
SELECT uuid_v7(), c.command_id, 'wallet-' || member_key(:m), :version + 1, 'wallet.coupon_redeemed', decode(:redeem_payload, 'hex') FROM c;
UPDATE coupons SET redeemed_at = now() WHERE member = member_key(:m) AND n = :coupon;
UPDATE wallets SET version = version + 1 WHERE member = member_key(:m);
\else
WITH c AS (INSERT INTO commands (command_id, member, kind) VALUES (uuid_v7(), member_key(:m), 'top_up') RETURNING command_id)
INSERT INTO wallet_events (event_id, command_id, stream, version, event_type, payload)
SELECT uuid_v7(), c.command_id, 'wallet-' || member_key(:m), :version + 1, 'wallet.topped_up', decode(:top_up_payload, 'hex') FROM c;
UPDATE wallets SET balance = balance + 500, version = version + 1 WHERE member = member_key(:m);
\endif
\endif
END;
EOF

# The payload bytes of bench_append: byte i = i * 31 mod 251, as hex.
PAYLOAD_HEX=""
for ((i = 0; i < PAYLOAD_BYTES; i++)); do
    PAYLOAD_HEX+=$(printf '%02x' $((i * 31 % 251)))
done
payload_hex() { # N bytes of the same pattern, as hex
    local n=$1 out="" i
    for ((i = 0; i < n; i++)); do
        out+=$(printf '%02x' $((i * 31 % 251)))
    done
    echo "$out"
}
payload_array() { # K copies as a text[] literal: {hex,hex,...}
    local k=$1 out="{" j
    for ((j = 0; j < k; j++)); do
        ((j > 0)) && out+=","
        out+=$PAYLOAD_HEX
    done
    echo "$out}"
}

# ---------------------------------------------------------------- CPU accounting
# Server CPU ticks: the postmaster's own and its reaped children's (cutime/cstime: exited
# backends), plus every live child's. A child alive at the first sample and reaped before the
# second is counted by both, which cancels out to its CPU in between.
proc_ticks() { # pid -> its utime + stime in ticks ("0" if it is gone)
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    rest=${stat##*) } # fields after "pid (comm) ": $1 = field 3 (state), ${12} = field 14 (utime)
    # shellcheck disable=SC2086 # word splitting of the stat fields is the point
    set -- $rest
    echo $((${12} + ${13}))
}
server_ticks() {
    local stat rest total child children=()
    stat=$(cat "/proc/$POSTMASTER_PID/stat") || die "the server (pid $POSTMASTER_PID) is gone"
    rest=${stat##*) }
    # shellcheck disable=SC2086
    set -- $rest
    total=$((${12} + ${13} + ${14} + ${15}))
    # The children file is one line of space-separated pids.
    read -r -a children <"/proc/$POSTMASTER_PID/task/$POSTMASTER_PID/children" || true
    for child in "${children[@]}"; do
        total=$((total + $(proc_ticks "$child")))
    done
    echo "$total"
}
host_ticks() { # busy ticks and total ticks of the machine (all cores), from /proc/stat
    local _cpu user nice system idle iowait irq softirq steal _rest
    read -r _cpu user nice system idle iowait irq softirq steal _rest </proc/stat
    echo "$((user + nice + system + irq + softirq + steal)) $((user + nice + system + idle + iowait + irq + softirq + steal))"
}

# ---------------------------------------------------------------- one run
wait_for_no_clients() { # backends of the last pgbench must have exited (they flush their stats)
    local i
    for ((i = 0; i < 100; i++)); do
        [[ $(sql -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()") == 0 ]] && return 0
        sleep 0.1
    done
    die "pgbench's backends did not exit within 10 s"
}

# timed_run LABEL C PREFIX PGBENCH_ARGS...: WARMUP_CALLS untimed transactions per client, then
# pg_stat_wal reset and the timed run (-T RUN_SECONDS, per-transaction log -l). Sets R_TXNS,
# R_WALL_US, R_P50, R_P99 (µs, nearest rank), R_TPS (pgbench's, without connection time), and
# R_AWK: the -v arguments every row's awk needs (the above plus WAL and CPU figures).
timed_run() {
    local label=$1 c=$2 prefix=$3
    shift 3
    local threads=$((c < 2 ? c : 2))
    local common=(-h "$TMP" -p "$PORT" -U postgres -n -M prepared -c "$c" -j "$threads" "$@")
    info "$label: warm-up ($WARMUP_CALLS calls per writer)"
    "$PG_BIN/pgbench" "${common[@]}" -t "$WARMUP_CALLS" bench >"$prefix.warmup.out" 2>&1 ||
        { cat "$prefix.warmup.out" >&2; EXIT_CODE=1 die "$label: warm-up pgbench failed"; }
    wait_for_no_clients
    sql -c "SELECT pg_stat_reset_shared('wal')" >/dev/null

    info "$label: timed run, $RUN_SECONDS s"
    local srv0 srv1 host0 host1 pgb_user pgb_sys rc=0
    srv0=$(server_ticks)
    host0=$(host_ticks)
    # bash's `time` gives pgbench's own user+sys CPU (TIMEFORMAT: seconds, 3 decimals).
    local TIMEFORMAT='%3U %3S'
    # In the background + `wait`, so that a signal to this script runs the cleanup trap at once
    # (stopping the server, which ends pgbench) instead of after the -T seconds.
    { time "$PG_BIN/pgbench" "${common[@]}" -T "$RUN_SECONDS" -l --log-prefix="$prefix" bench \
        >"$prefix.out" 2>&1; } 2>"$prefix.time" &
    wait "$!" || rc=$?
    wait_for_no_clients
    srv1=$(server_ticks)
    host1=$(host_ticks)
    if ((rc != 0)); then
        cat "$prefix.out" >&2
        EXIT_CODE=1 die "$label: pgbench exited with $rc"
    fi
    read -r pgb_user pgb_sys <"$prefix.time"

    # pgbench's own figures: transactions processed, failures, tps without connection time.
    local pgb_txns pgb_failed
    pgb_txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$prefix.out")
    pgb_failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$prefix.out")
    R_TPS=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$prefix.out")
    [[ -n $pgb_txns && -n $R_TPS ]] ||
        { cat "$prefix.out" >&2; EXIT_CODE=1 die "$label: cannot parse pgbench's summary"; }
    [[ ${pgb_failed:-0} == 0 ]] ||
        { cat "$prefix.out" >&2; EXIT_CODE=1 die "$label: $pgb_failed failed transactions"; }

    # Per-transaction log lines: client_id txn_no latency_us script_no epoch_s epoch_us
    # (epoch = when the transaction ended). Latencies sorted for the percentiles; wall time =
    # earliest start (end - latency) to latest end.
    cat "$prefix".[0-9]* >"$prefix.log"
    awk '{print $3}' "$prefix.log" | sort -n >"$prefix.lat"
    R_TXNS=$(wc -l <"$prefix.lat")
    ((R_TXNS > 0)) || EXIT_CODE=1 die "$label: no transaction in the pgbench log"
    ((R_TXNS == pgb_txns)) ||
        EXIT_CODE=1 die "$label: log has $R_TXNS transactions, pgbench reported $pgb_txns"
    R_WALL_US=$(awk 'NR == 1 { lo = hi = 0 }
        { end = $5 * 1000000 + $6; start = end - $3
          if (NR == 1 || start < lo) lo = start
          if (NR == 1 || end > hi) hi = end }
        END { printf "%.0f", hi - lo }' "$prefix.log")
    R_P50=$(sed -n "$(((R_TXNS * 50 + 99) / 100))p" "$prefix.lat")
    R_P99=$(sed -n "$(((R_TXNS * 99 + 99) / 100))p" "$prefix.lat")

    # WAL figures of the timed run.
    local wal_records wal_fpi wal_bytes wal_sync wal_sync_ms
    IFS='|' read -r wal_records wal_fpi wal_bytes wal_sync wal_sync_ms < <(sql -c \
        "SELECT wal_records, wal_fpi, wal_bytes, wal_sync, round(wal_sync_time::numeric, 3) FROM pg_stat_wal")
    R_AWK=(-v c="$c" -v txns="$R_TXNS" -v wall_us="$R_WALL_US" -v tps="$R_TPS" -v p50="$R_P50"
        -v p99="$R_P99" -v rec="$wal_records" -v fpi="$wal_fpi" -v wb="$wal_bytes"
        -v syncs="$wal_sync" -v sync_ms="$wal_sync_ms" -v srv="$((srv1 - srv0))"
        -v pu="$pgb_user" -v ps="$pgb_sys" -v hb="$((${host1% *} - ${host0% *}))"
        -v ht="$((${host1#* } - ${host0#* }))" -v cores="$CORES" -v tck="$CLK_TCK"
        -v secs="$RUN_SECONDS" -v json="$JSON")
}

# The figures every row derives the same way from R_AWK (awk for floating point): wall (s),
# commits per WAL sync, full page images per second, mean sync ms, CPU of server, pgbench, host.
readonly AWK_COMMON='
    function common() {
        wall = wall_us / 1e6
        cps = (syncs > 0) ? txns / syncs : 0
        fps = fpi / wall; sms = (syncs > 0) ? sync_ms / syncs : 0
        srv_cpu = 100 * srv / tck / wall; pgb_cpu = 100 * (pu + ps) / wall
        host_cpu = (ht > 0) ? 100 * cores * hb / ht : 0
    }'

ROWS_HUMAN=()
ROWS_JSON=()
WALLET_HUMAN=()
WALLET_JSON=()

# append-K at C writers: one row of ROWS_*.
run_append() {
    local k=$1 c=$2
    local workload="append-$k" prefix="$TMP/logs/k${k}-c${c}"
    info "$workload C=$c: truncate, checkpoint"
    sql -c "TRUNCATE events RESTART IDENTITY" -c "CHECKPOINT"
    timed_run "$workload C=$c" "$c" "$prefix" -f "$TMP/append.sql" -D "payloads=$(payload_array "$k")"
    local txns=$R_TXNS

    # Verification: every acknowledged row is there, every stream is gap-free from version 1.
    local rows streams bad_streams max_pos expected=$(((c * WARMUP_CALLS + txns) * k))
    IFS='|' read -r rows streams bad_streams max_pos < <(sql -c "
        SELECT (SELECT count(*) FROM events),
               (SELECT count(DISTINCT stream) FROM events),
               (SELECT count(*) FROM (SELECT stream FROM events GROUP BY stream
                                      HAVING count(*) <> max(version) OR min(version) <> 1) g),
               (SELECT coalesce(max(position), 0) FROM events)")
    ((rows == expected)) ||
        EXIT_CODE=1 die "$workload C=$c: table holds $rows rows, expected ($c*$WARMUP_CALLS + $txns) * $k = $expected"
    ((streams == c)) || EXIT_CODE=1 die "$workload C=$c: $streams streams, expected $c"
    ((bad_streams == 0)) || EXIT_CODE=1 die "$workload C=$c: $bad_streams streams have a version gap"
    ((max_pos == rows)) || info "$workload C=$c: note: positions have gaps (max $max_pos, rows $rows)"

    local row
    row=$(awk "${R_AWK[@]}" -v k="$k" -v w="$workload" "$AWK_COMMON"'
        BEGIN {
            common(); events = txns * k; eps = events / wall; wpe = wb / events
            if (json)
                printf "{\"workload\":\"%s\",\"writers\":%d,\"batch\":%d,\"seconds\":%.1f,\"wall_s\":%.3f,\"txns\":%d,\"events\":%d,\"events_per_s\":%.0f,\"pgbench_events_per_s\":%.0f,\"p50_us\":%d,\"p99_us\":%d,\"wal\":{\"records\":%d,\"fpi\":%d,\"bytes\":%d,\"syncs\":%d,\"sync_time_ms\":%.3f,\"mean_sync_ms\":%.3f,\"commits_per_sync\":%.2f,\"bytes_per_event\":%.0f,\"records_per_event\":%.2f},\"cpu_percent\":{\"server\":%.0f,\"pgbench\":%.0f,\"host\":%.0f},\"verified_rows\":true}\n",
                    w, c, k, secs, wall, txns, events, eps, tps * k, p50, p99, rec, fpi, wb, syncs, sync_ms, sms, cps, wpe, rec / events, srv_cpu, pgb_cpu, host_cpu
            else
                printf "%-10s %4d %11.0f %8.2f %8.2f %8d %11.0f %8.1f %9.0f %8.0f %8.3f %5.0f %5.0f %5.0f\n",
                    w, c, eps, p50 / 1000, p99 / 1000, txns, tps * k, cps, wpe, fps, sms, srv_cpu, pgb_cpu, host_cpu
        }')
    if ((JSON)); then ROWS_JSON+=("$row"); else ROWS_HUMAN+=("$row"); fi
    info "$workload C=$c: ok ($rows rows verified, $c gap-free streams)"
}

# The wallet tables back to the prepared state of bench_wallet `commands`: MEMBERS wallets, each
# opened, topped up with FUNDING_YEN and holding COUPONS coupons, with those events in its stream.
seed_wallets() {
    sql -v members="$MEMBERS" -v coupons="$COUPONS" -v funding="$FUNDING_YEN" \
        -v opened="$(payload_hex "$OPENED_PAYLOAD_BYTES")" \
        -v topped="$(payload_hex "$TOP_UP_PAYLOAD_BYTES")" \
        -v issued="$(payload_hex "$ISSUED_PAYLOAD_BYTES")" <<'EOF'
TRUNCATE wallets, coupons, commands, wallet_events RESTART IDENTITY;
INSERT INTO wallets (member, balance, miles, version)
SELECT member_key(i), :funding, 0, 2 + :coupons FROM generate_series(0, :members - 1) i;
INSERT INTO coupons (member, n, value)
SELECT member_key(i), n, 500 FROM generate_series(0, :members - 1) i, generate_series(1, :coupons) n;
INSERT INTO wallet_events (event_id, command_id, stream, version, event_type, payload)
SELECT uuid_v7(), '00000000-0000-7000-8000-000000000000', 'wallet-' || member_key(i), v,
       CASE v WHEN 1 THEN 'wallet.opened' WHEN 2 THEN 'wallet.topped_up' ELSE 'wallet.coupon_issued' END,
       decode(CASE v WHEN 1 THEN :'opened' WHEN 2 THEN :'topped' ELSE :'issued' END, 'hex')
FROM generate_series(0, :members - 1) i, generate_series(1, 2 + :coupons) v
ORDER BY i, v;
VACUUM ANALYZE wallets, coupons, wallet_events;
CHECKPOINT;
EOF
}

# The commands mix at C clients: one row of WALLET_*.
run_wallet() {
    local c=$1
    local prefix="$TMP/logs/wallet-c${c}"
    info "commands C=$c: seed $MEMBERS wallets ($COUPONS coupons each), checkpoint"
    seed_wallets
    local applied0 events0
    timed_run "commands C=$c" "$c" "$prefix" -f "$TMP/wallet.sql" -D "members=$MEMBERS" \
        -D "clients=$c" -D "pay_payload=$(payload_hex "$PAY_PAYLOAD_BYTES")" \
        -D "top_up_payload=$(payload_hex "$TOP_UP_PAYLOAD_BYTES")" \
        -D "transfer_payload=$(payload_hex "$TRANSFER_PAYLOAD_BYTES")" \
        -D "earn_payload=$(payload_hex "$EARN_PAYLOAD_BYTES")" \
        -D "redeem_payload=$(payload_hex "$REDEEM_PAYLOAD_BYTES")"
    local txns=$R_TXNS

    # Verification: every stream gap-free from version 1 and its wallet's version at its head;
    # no balance below zero; one commands row per applied command (warm-up included), so
    # txns - applied (timed) is the number the rules refused.
    local commands events bad_streams stale negative seeded=$((MEMBERS * (2 + COUPONS)))
    IFS='|' read -r commands events bad_streams stale negative < <(sql -c "
        SELECT (SELECT count(*) FROM commands),
               (SELECT count(*) FROM wallet_events),
               (SELECT count(*) FROM (SELECT stream FROM wallet_events GROUP BY stream
                                      HAVING count(*) <> max(version) OR min(version) <> 1) g),
               (SELECT count(*) FROM wallets w WHERE w.version <> (SELECT max(version)
                    FROM wallet_events e WHERE e.stream = 'wallet-' || w.member)),
               (SELECT count(*) FROM wallets WHERE balance < 0)")
    ((bad_streams == 0)) || EXIT_CODE=1 die "commands C=$c: $bad_streams streams have a version gap"
    ((stale == 0)) || EXIT_CODE=1 die "commands C=$c: $stale wallets' versions differ from their stream's head"
    ((negative == 0)) || EXIT_CODE=1 die "commands C=$c: $negative wallets below zero"
    local warm=$((c * WARMUP_CALLS)) rejected
    rejected=$((warm + txns - commands))
    ((rejected >= 0)) || EXIT_CODE=1 die "commands C=$c: $commands commands rows but $warm + $txns transactions"
    local timed_events=$((events - seeded))

    local row
    row=$(awk "${R_AWK[@]}" -v members="$MEMBERS" -v events="$timed_events" \
        -v rejected="$rejected" "$AWK_COMMON"'
        BEGIN {
            common(); cmds = txns / wall
            if (json)
                printf "{\"workload\":\"commands\",\"writers\":%d,\"members\":%d,\"seconds\":%.1f,\"wall_s\":%.3f,\"txns\":%d,\"commands\":%d,\"rejected_incl_warmup\":%d,\"commands_per_s\":%.0f,\"pgbench_commands_per_s\":%.0f,\"events_incl_warmup\":%d,\"events_per_command\":%.3f,\"p50_us\":%d,\"p99_us\":%d,\"wal\":{\"records\":%d,\"fpi\":%d,\"bytes\":%d,\"syncs\":%d,\"sync_time_ms\":%.3f,\"mean_sync_ms\":%.3f,\"commits_per_sync\":%.2f,\"bytes_per_command\":%.0f},\"cpu_percent\":{\"server\":%.0f,\"pgbench\":%.0f,\"host\":%.0f},\"verified_rows\":true}\n",
                    c, members, secs, wall, txns, txns, rejected, cmds, tps, events, events / (txns + 2 * c), p50, p99, rec, fpi, wb, syncs, sync_ms, sms, cps, wb / txns, srv_cpu, pgb_cpu, host_cpu
            else
                printf "%-10s %4d %11.0f %8.2f %8.2f %8d %11.0f %8.1f %9.0f %8.0f %8.3f %5.0f %5.0f %5.0f\n",
                    "commands", c, cmds, p50 / 1000, p99 / 1000, txns, tps, cps, wb / txns, fps, sms, srv_cpu, pgb_cpu, host_cpu
        }')
    if ((JSON)); then WALLET_JSON+=("$row"); else WALLET_HUMAN+=("$row"); fi
    info "commands C=$c: ok ($commands commands, $events events; streams gap-free, wallets at their heads, $rejected refused)"
}

if [[ $WORKLOAD == append || $WORKLOAD == all ]]; then
    for k in "${BATCH_LIST[@]}"; do
        for c in "${WRITER_LIST[@]}"; do
            run_append "$k" "$c"
        done
    done
fi
if [[ $WORKLOAD == wallet || $WORKLOAD == all ]]; then
    for c in "${WRITER_LIST[@]}"; do
        run_wallet "$c"
    done
fi

# ---------------------------------------------------------------- output
if ((JSON)); then
    settings_json=""
    for name in "${SETTING_NAMES[@]:1}"; do
        settings_json+="${settings_json:+,}\"$name\":\"${SETTINGS[$name]}\""
    done
    runs_json=$(IFS=,; echo "${ROWS_JSON[*]}")
    wallet_json=$(IFS=,; echo "${WALLET_JSON[*]}")
    printf '{"system":"postgresql","workload":"%s","event_ids":"'"$EVENT_IDS"'","version":"%s","version_full":"%s","settings":{%s},"cores":%d,"seconds_per_run":%.1f,"warmup_calls_per_writer":%d,"events_per_s_from":"pgbench -l log: txns*batch / (last txn end - first txn start)","runs":[%s],"wallet_members":%d,"wallet_coupons_per_member":%d,"wallet_runs":[%s]}\n' \
        "$WORKLOAD" "$PG_VERSION" "${SETTINGS[server_version]}" "$settings_json" "$CORES" "$RUN_SECONDS" \
        "$WARMUP_CALLS" "$runs_json" "$MEMBERS" "$COUPONS" "$wallet_json"
else
    if ((${#ROWS_HUMAN[@]} > 0)); then
        printf '%-10s %4s %11s %8s %8s %8s %11s %8s %9s %8s %8s %5s %5s %5s\n' workload C events/s \
            "p50 ms" "p99 ms" txns "pgb ev/s" com/sync "WAL B/ev" FPI/s "sync ms" srv% pgb% host%
        printf '%s\n' "${ROWS_HUMAN[@]}"
        cat <<'EOF'
events/s: logged txns * K / (last txn end - first txn start); pgb ev/s: pgbench tps (without
initial connection time) * K; p50/p99: per-call latency to COMMIT's ack; com/sync: transactions
per WAL fsync (pg_stat_wal); WAL B/ev: WAL bytes per event; FPI/s: full page images per second;
sync ms: mean WAL fsync time; srv%/pgb%/host%: CPU of the server, of pgbench, of the whole
machine over the run (100 = one core).
EOF
    fi
    if ((${#WALLET_HUMAN[@]} > 0)); then
        ((${#ROWS_HUMAN[@]} > 0)) && echo
        printf '%-10s %4s %11s %8s %8s %8s %11s %8s %9s %8s %8s %5s %5s %5s\n' workload C commands/s \
            "p50 ms" "p99 ms" txns "pgb cmd/s" com/sync "WAL B/cmd" FPI/s "sync ms" srv% pgb% host%
        printf '%s\n' "${WALLET_HUMAN[@]}"
        cat <<EOF
commands: the bench_wallet commands mix over $MEMBERS wallets ($COUPONS coupons each), one
transaction per command (SELECT ... FOR UPDATE, INSERT the events and the command id, UPDATE the
wallet); commands/s: logged txns / (last txn end - first txn start); other columns as above, per
command.
EOF
    fi
fi
