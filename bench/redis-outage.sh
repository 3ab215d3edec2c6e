#!/usr/bin/env bash
# Redis outage under load, across two crm instances. See bench/README.md ("Redis outage").
#
#   bench/redis-outage.sh
#
# Starts a private redis-server on a free port, a fresh database on the shared PostgreSQL, and
# three `crm serve all` servers: A and B share that Redis (the two instances), C has an empty
# redis.url (cache off: the baseline). Then, under 32 concurrent GetCustomer callers on A:
#   baseline      the same load on C
#   redis-up      Redis running
#   redis-killed  Redis SIGKILLed just before the phase starts, down for the whole phase
#   redis-back    Redis restarted (empty) just before the phase starts
# Throughout, bench/staleness_probe.py renames one customer through B every 250 ms and reads it
# through A in a loop, to measure stale reads. Writes bench/results/redis-outage.{md,json}.
#
# Knobs (environment, all optional):
#   CRM_OUTAGE_PHASE_SECONDS  target seconds per phase                    (10)
#   CRM_BENCH_WARMUP          warm-up seconds before baseline / redis-up  (3)
#   CRM_BENCH_CUSTOMERS       customers to seed                           (2000)
#   CRM_BENCH_CONNECTIONS     h2load connections (-c)                     (4)
#   CRM_BENCH_STREAMS         concurrent streams per connection (-m)      (8)
#   CRM_BENCH_SKIP_BUILD      1 = use the existing release binary
#   CRM_BENCH_BIN             the crm binary to run (implies no build)    ($CARGO_TARGET_DIR/release/crm)
#   CRM_BENCH_STRICT          1 = exit 3 when a target is missed
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/stack.sh
source "$BENCH_DIR/../scripts/lib/stack.sh"
ROOT="$CRM_ROOT"
cd "$ROOT"

PHASE_SECONDS="${CRM_OUTAGE_PHASE_SECONDS:-10}"
WARMUP="${CRM_BENCH_WARMUP:-3}"
CUSTOMERS="${CRM_BENCH_CUSTOMERS:-2000}"
CONNS="${CRM_BENCH_CONNECTIONS:-4}"
STREAMS="${CRM_BENCH_STREAMS:-8}"
MIN_REQUESTS=200
WORK="$CRM_LOCAL/bench-outage"   # logs, h2load per-request logs, probe log (git-ignored)
RESULTS_DIR="$BENCH_DIR/results"
CRM_BIN="${CRM_BENCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/crm}"
SERVICE=crm.customer.v1.CustomerService

PIDS=()
REDIS_PID=""
DB_NAME=""
cleanup() {
  local pid
  [[ -n "${WORK:-}" && -d "$WORK" ]] && touch "$WORK/probe.stop"
  for pid in "${PIDS[@]}" $REDIS_PID; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}" $REDIS_PID; do
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$DB_NAME" ]]; then
    psql -X -q -d "$PG_BASE_URL" -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

command -v python3 >/dev/null 2>&1 || die "python3 is needed"
command -v curl >/dev/null 2>&1 || die "curl is needed"
if ! command -v h2load >/dev/null 2>&1; then
  apt_install nghttp2-client || die "h2load is missing; install nghttp2-client (Debian/Ubuntu) or nghttp2 (brew)"
fi
REDIS_SERVER="$(find_redis_server)" || die "redis-server is needed (the outage kills a private one)"
ensure_postgres
ensure_grpcurl

if [[ "${CRM_BENCH_SKIP_BUILD:-0}" != 1 && -z "${CRM_BENCH_BIN:-}" ]]; then
  log "building the release binary"
  cargo build --release --locked -p crm --bins
fi
[[ -x "$CRM_BIN" ]] || die "missing $CRM_BIN"

rm -rf "$WORK"
mkdir -p "$WORK" "$RESULTS_DIR"

# Free ports for Redis, the three servers and their metrics.
read -r REDIS_PORT PORT_A PORT_B PORT_C METRICS_A METRICS_B METRICS_C < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(7)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')
REDIS_URL_PRIVATE="redis://127.0.0.1:$REDIS_PORT"

start_redis() {
  "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$WORK" >>"$WORK/redis.log" 2>&1 &
  REDIS_PID="$!"
  local i
  for ((i = 0; i < 50; i++)); do
    redis_ping 127.0.0.1 "$REDIS_PORT" && return 0
    sleep 0.1
  done
  die "the private redis-server does not answer on port $REDIS_PORT"
}
log "starting a private redis-server on port $REDIS_PORT"
start_redis

DB_NAME="crm_bench_outage_$(random_hex | cut -c1-8)"
log "PostgreSQL: creating database $DB_NAME"
psql -X -q -d "$PG_BASE_URL" -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB_NAME" >/dev/null
DB_URL="$(pg_url_with_db "$PG_BASE_URL" "$DB_NAME")"
export DATABASE_URL="$DB_URL"
export CRM__AUTH__JWT_SECRET="$(random_hex)"
"$CRM_BIN" migrate all >"$WORK/migrate.log" 2>&1 || { tail -n 30 "$WORK/migrate.log" >&2; die "crm migrate failed"; }
log "seeding $CUSTOMERS customers"
"$CRM_BIN" seed --customers "$CUSTOMERS" >"$WORK/seed.log" 2>&1 || { tail -n 30 "$WORK/seed.log" >&2; die "crm seed failed"; }
psql -X -q -d "$DB_URL" -c "ANALYZE" >/dev/null
read -r GET_ID PROBE_ID < <(psql -X -q -At -F ' ' -d "$DB_URL" -c \
  "SELECT (SELECT id FROM customer.customers ORDER BY id OFFSET $((CUSTOMERS / 2)) LIMIT 1),
          (SELECT id FROM customer.customers ORDER BY id OFFSET $((CUSTOMERS / 3)) LIMIT 1)")
[[ -n "$GET_ID" && -n "$PROBE_ID" ]] || die "could not pick customer ids"
TOKEN="$("$CRM_BIN" token --subject bench | tail -n 1)"

start_crm() { # NAME PORT METRICS_PORT REDIS_URL
  REDIS_URL="$4" CRM__SERVER__LISTEN_ADDR="127.0.0.1:$2" CRM__TELEMETRY__METRICS_ADDR="127.0.0.1:$3" \
    CRM__TELEMETRY__LOG_FORMAT=json "$CRM_BIN" serve all >"$WORK/server-$1.log" 2>&1 &
  PIDS+=("$!")
}
wait_serving() { # NAME PORT
  local i out
  for ((i = 0; i < 120; i++)); do
    out="$("$GRPCURL" -plaintext -max-time 2 "127.0.0.1:$2" grpc.health.v1.Health/Check 2>/dev/null || true)"
    [[ "$out" == *SERVING* && "$out" != *NOT_SERVING* ]] && return 0
    sleep 0.5
  done
  tail -n 30 "$WORK/server-$1.log" >&2
  die "server $1 did not report SERVING within 60s"
}
log "starting A and B (Redis on port $REDIS_PORT) and C (cache off)"
start_crm a "$PORT_A" "$METRICS_A" "$REDIS_URL_PRIVATE"
start_crm b "$PORT_B" "$METRICS_B" "$REDIS_URL_PRIVATE"
start_crm c "$PORT_C" "$METRICS_C" ""
wait_serving a "$PORT_A"
wait_serving b "$PORT_B"
wait_serving c "$PORT_C"

BODY="$WORK/get.body"
python3 "$BENCH_DIR/grpc_body.py" get "$BODY" "id=$GET_ID" >/dev/null
for port in "$PORT_A" "$PORT_C"; do
  status="$(curl -sS --http2-prior-knowledge -X POST --max-time 10 -H 'content-type: application/grpc' \
    -H 'te: trailers' -H "authorization: Bearer $TOKEN" --data-binary "@$BODY" -o /dev/null -D - \
    "http://127.0.0.1:$port/$SERVICE/GetCustomer" | tr -d '\r' | awk -F': ' 'tolower($1) == "grpc-status" {print $2}')"
  [[ "$status" == 0 ]] || die "correctness check: GetCustomer on port $port gave grpc-status '${status:-none}'"
done

RESULTS_JSONL="$WORK/results.jsonl"
PHASES_JSON="$WORK/phases.jsonl"
: >"$RESULTS_JSONL"
: >"$PHASES_JSON"
H2=(h2load -t 1 -c "$CONNS" -m "$STREAMS" -H 'content-type: application/grpc' -H 'te: trailers'
  -H "authorization: Bearer $TOKEN" -d "$BODY")

warmup_rps() { # PORT -> req/s of a timed warm-up run
  "${H2[@]}" -D "$WARMUP" "http://127.0.0.1:$1/$SERVICE/GetCustomer" >"$WORK/warmup-$1.out" 2>&1 ||
    { cat "$WORK/warmup-$1.out" >&2; die "h2load warm-up failed"; }
  awk '/^finished in/ {print $4}' "$WORK/warmup-$1.out"
}

phase() { # NAME SERVER PORT METRICS_PORT RPS
  local name="$1" server="$2" port="$3" metrics="$4" rps="$5" n start end
  n="$(python3 -c "print(max($MIN_REQUESTS, round(float('${rps:-0}') * $PHASE_SECONDS)))")"
  log "phase $name: $n GetCustomer calls on $server"
  python3 "$BENCH_DIR/report.py" snapshot "http://127.0.0.1:$metrics/metrics" "$WORK/$name.before"
  start="$(date +%s.%N)"
  "${H2[@]}" -n "$n" --log-file "$WORK/$name.h2load.log" "http://127.0.0.1:$port/$SERVICE/GetCustomer" \
    >"$WORK/$name.h2load.out" 2>&1 || { cat "$WORK/$name.h2load.out" >&2; die "h2load failed in $name"; }
  end="$(date +%s.%N)"
  python3 "$BENCH_DIR/report.py" snapshot "http://127.0.0.1:$metrics/metrics" "$WORK/$name.after"
  python3 "$BENCH_DIR/report.py" scenario --results "$RESULTS_JSONL" --name "$name" --server "$server" \
    --method GetCustomer --concurrency $((CONNS * STREAMS)) --h2load-out "$WORK/$name.h2load.out" \
    --log "$WORK/$name.h2load.log" --expected-bytes 0 --before "$WORK/$name.before" --after "$WORK/$name.after"
  printf '{"phase": "%s", "start": %s, "end": %s}\n' "$name" "$start" "$end" >>"$PHASES_JSON"
}

log "starting the staleness probe (writes through B, reads through A)"
python3 "$BENCH_DIR/staleness_probe.py" --reader "127.0.0.1:$PORT_A" --writer "127.0.0.1:$PORT_B" \
  --token "$TOKEN" --id "$PROBE_ID" --out "$WORK/probe.jsonl" --stop-file "$WORK/probe.stop" &
PROBE_PID="$!"
PIDS+=("$PROBE_PID")

BASE_RPS="$(warmup_rps "$PORT_C")"
phase baseline "C (cache off)" "$PORT_C" "$METRICS_C" "$BASE_RPS"
UP_RPS="$(warmup_rps "$PORT_A")"
phase redis-up A "$PORT_A" "$METRICS_A" "$UP_RPS"
log "SIGKILL redis-server"
kill -KILL "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
KILLED_AT="$(date +%s.%N)"
phase redis-killed A "$PORT_A" "$METRICS_A" "$BASE_RPS"
log "restarting redis-server (empty)"
start_redis
BACK_AT="$(date +%s.%N)"
phase redis-back A "$PORT_A" "$METRICS_A" "$UP_RPS"
touch "$WORK/probe.stop"
wait "$PROBE_PID" || true

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | head -n 1)" ]] && COMMIT="$COMMIT-dirty"
strict=()
[[ "${CRM_BENCH_STRICT:-0}" == 1 ]] && strict=(--strict)
python3 "$BENCH_DIR/redis_outage_report.py" --results "$RESULTS_JSONL" --phases "$PHASES_JSON" \
  --probe "$WORK/probe.jsonl" --server-log "A=$WORK/server-a.log" --server-log "B=$WORK/server-b.log" \
  --killed-at "$KILLED_AT" --back-at "$BACK_AT" --commit "$COMMIT" --cores "$(nproc)" \
  --binary "$CRM_BIN" \
  --h2load-args "-t 1 -c $CONNS -m $STREAMS; -n sized for ~${PHASE_SECONDS}s at the warm-up rate (redis-killed: at C's)" \
  --md "$RESULTS_DIR/redis-outage.md" --json "$RESULTS_DIR/redis-outage.json" "${strict[@]}"
log "logs and per-request latencies: $WORK"
