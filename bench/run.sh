#!/usr/bin/env bash
# CRM Suite customer-service benchmark. See bench/README.md.
#
#   bench/run.sh
#
# Knobs (environment, all optional):
#   CRM_BENCH_CUSTOMERS    customers to seed                           (100000)
#   CRM_BENCH_DURATION     target measured seconds per scenario        (10)
#   CRM_BENCH_WARMUP       warm-up seconds per scenario, not measured  (3)
#   CRM_BENCH_MIN_REQUESTS fewest measured requests per scenario       (200)
#   CRM_BENCH_CONNECTIONS  h2load connections (-c)                     (4)
#   CRM_BENCH_STREAMS      concurrent streams per connection (-m)      (8)
#   CRM_BENCH_SKIP_BUILD   1 = use the existing target/release binaries
#   CRM_BENCH_STRICT       1 = exit 3 when a target is missed
#
# Exits non-zero when a correctness check fails (a scenario's request does not return
# grpc-status 0 with a non-empty response), so the numbers are never numbers of errors.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/stack.sh
source "$BENCH_DIR/../scripts/lib/stack.sh"
ROOT="$CRM_ROOT"
cd "$ROOT"

CUSTOMERS="${CRM_BENCH_CUSTOMERS:-100000}"
DURATION="${CRM_BENCH_DURATION:-10}"
WARMUP="${CRM_BENCH_WARMUP:-3}"
CONNS="${CRM_BENCH_CONNECTIONS:-4}"
STREAMS="${CRM_BENCH_STREAMS:-8}"
CONCURRENCY=$((CONNS * STREAMS))
DB_NAME=crm_bench

ADDR_A=127.0.0.1:50071      # normal: Redis + in-process cache tier
ADDR_B=127.0.0.1:50072      # cache off (REDIS_URL=""): every read goes to PostgreSQL
ADDR_C=127.0.0.1:50099      # the ceiling (examples/bench_ceiling.rs)
METRICS_A=127.0.0.1:59071
METRICS_B=127.0.0.1:59072

WORK="$CRM_LOCAL/bench"     # logs, bodies, h2load per-request logs (git-ignored .local/)
RESULTS_DIR="$BENCH_DIR/results"
CRM_BIN="$ROOT/target/release/crm"
CEILING_BIN="$ROOT/target/release/examples/bench_ceiling"
PROTO_ARGS=(-import-path "$ROOT/proto" -proto crm/customer/v1/customer_service.proto)
SERVICE=crm.customer.v1.CustomerService

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

now() { date +%s.%N; }

# ---------------------------------------------------------------------------------------------
# Tools and services
# ---------------------------------------------------------------------------------------------
ensure_h2load() {
  command -v h2load >/dev/null 2>&1 && return 0
  apt_install nghttp2-client || die "h2load is missing and could not be installed; install nghttp2-client (Debian/Ubuntu) or nghttp2 (brew)"
  command -v h2load >/dev/null 2>&1 || die "nghttp2-client did not install h2load"
}

command -v python3 >/dev/null 2>&1 || die "python3 is needed (bench/grpc_body.py, bench/report.py)"
command -v curl >/dev/null 2>&1 || die "curl is needed for the wire-level correctness check"
ensure_postgres
ensure_redis
ensure_grpcurl
ensure_h2load

for port in "${ADDR_A##*:}" "${ADDR_B##*:}" "${ADDR_C##*:}" "${METRICS_A##*:}" "${METRICS_B##*:}"; do
  port_open 127.0.0.1 "$port" && die "port $port is already in use (a server left over from an earlier run?); stop it first"
done

if [[ "${CRM_BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "building release binaries (crm, example bench_ceiling)"
  cargo build --release -p crm --bin crm --example bench_ceiling
fi
[[ -x "$CRM_BIN" && -x "$CEILING_BIN" ]] || die "missing $CRM_BIN or $CEILING_BIN"

rm -rf "$WORK"
mkdir -p "$WORK" "$RESULTS_DIR"
# Other work on the machine skews every number: record it, and warn. (CPU use over 2 s rather
# than the load average, which still remembers the build that just finished.)
cpu_busy_pct() {
  local a b
  a="$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat)"
  sleep 2
  b="$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8}' /proc/stat)"
  awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.0f\n", 100 * (y[1] - x[1]) / (y[2] - x[2])}'
}
CPU_BUSY_START="$(cpu_busy_pct 2>/dev/null || echo unknown)"
LOADAVG_START="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
if [[ "$CPU_BUSY_START" =~ ^[0-9]+$ ]] && ((CPU_BUSY_START > 20)); then
  warn "the CPUs are ${CPU_BUSY_START}% busy before the bench starts: other work is running, results will be lower and noisier"
fi

# ---------------------------------------------------------------------------------------------
# Database: fresh crm_bench, migrated and seeded
# ---------------------------------------------------------------------------------------------
log "PostgreSQL: recreating database $DB_NAME"
psql -X -q -d "$PG_BASE_URL" -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null
psql -X -q -d "$PG_BASE_URL" -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB_NAME" >/dev/null
DB_URL="$(pg_url_with_db "$PG_BASE_URL" "$DB_NAME")"

JWT_SECRET="$(random_hex)"
export DATABASE_URL="$DB_URL"
export CRM__AUTH__JWT_SECRET="$JWT_SECRET"
export REDIS_URL="$REDIS_BASE_URL"

log "migrating"
"$CRM_BIN" migrate all >"$WORK/migrate.log" 2>&1 || { tail -n 30 "$WORK/migrate.log" >&2; die "crm migrate failed"; }

log "seeding $CUSTOMERS customers"
t0="$(now)"
"$CRM_BIN" seed --customers "$CUSTOMERS" >"$WORK/seed.log" 2>&1 || { tail -n 30 "$WORK/seed.log" >&2; die "crm seed failed"; }
t1="$(now)"
SEED_SECONDS="$(python3 -c "print(round($t1 - $t0, 1))")"
SEEDED="$(psql -X -q -At -d "$DB_URL" -c "SELECT count(*) FROM customer.customers WHERE source = 'seed'")"
[[ "$SEEDED" == "$CUSTOMERS" ]] || die "expected $CUSTOMERS seeded customers, found $SEEDED"
log "seeded $SEEDED customers in ${SEED_SECONDS}s ($(python3 -c "print(round($SEEDED / ($t1 - $t0)))") customers/s)"
psql -X -q -d "$DB_URL" -c "ANALYZE" >/dev/null

# The customer every GetCustomer scenario asks for: one from the middle of the table.
GET_ID="$(psql -X -q -At -d "$DB_URL" -c "SELECT id FROM customer.customers WHERE source = 'seed' ORDER BY id OFFSET $((CUSTOMERS / 2)) LIMIT 1")"
[[ -n "$GET_ID" ]] || die "could not pick a customer id"

TOKEN="$("$CRM_BIN" token --subject bench | tail -n 1)"
[[ -n "$TOKEN" ]] || die "crm token printed nothing"

# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------
start_crm() { # NAME LISTEN METRICS REDIS_URL
  local name="$1" listen="$2" metrics="$3" redis="$4"
  log "starting server $name on $listen (metrics $metrics, REDIS_URL=${redis:-<empty: no cache>})"
  REDIS_URL="$redis" CRM__SERVER__LISTEN_ADDR="$listen" CRM__TELEMETRY__METRICS_ADDR="$metrics" \
    "$CRM_BIN" serve all >"$WORK/server-$name.log" 2>&1 &
  PIDS+=("$!")
  LAST_PID="$!"
}

wait_serving() { # NAME ADDR PID
  local name="$1" addr="$2" pid="$3" i out
  for ((i = 0; i < 120; i++)); do
    kill -0 "$pid" 2>/dev/null || { tail -n 30 "$WORK/server-$name.log" >&2; die "server $name exited during start-up"; }
    out="$("$GRPCURL" -plaintext -max-time 2 "$addr" grpc.health.v1.Health/Check 2>/dev/null || true)"
    if [[ "$out" == *SERVING* && "$out" != *NOT_SERVING* ]]; then
      log "server $name is SERVING"
      return 0
    fi
    sleep 0.5
  done
  tail -n 30 "$WORK/server-$name.log" >&2
  die "server $name did not report SERVING within 60s"
}

start_crm a "$ADDR_A" "$METRICS_A" "$REDIS_BASE_URL"; PID_A="$LAST_PID"
start_crm b "$ADDR_B" "$METRICS_B" ""; PID_B="$LAST_PID"
log "starting the ceiling on $ADDR_C"
"$CEILING_BIN" "$ADDR_C" >"$WORK/server-ceiling.log" 2>&1 &
PIDS+=("$!"); PID_C="$!"
wait_serving a "$ADDR_A" "$PID_A"
wait_serving b "$ADDR_B" "$PID_B"
for ((i = 0; i < 60; i++)); do port_open 127.0.0.1 "${ADDR_C##*:}" && break; kill -0 "$PID_C" || die "the ceiling exited"; sleep 0.5; done
port_open 127.0.0.1 "${ADDR_C##*:}" || die "the ceiling does not listen on $ADDR_C"
log "$(head -n 1 "$WORK/server-ceiling.log")"

# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------
RESULTS_JSONL="$WORK/results.jsonl"
: >"$RESULTS_JSONL"
MIN_REQUESTS="${CRM_BENCH_MIN_REQUESTS:-200}"


# check NAME ADDR METHOD EXPECT_KEY BODY_FILE JSON
# 1. grpcurl sends the request (as JSON) and must get status OK and a response with EXPECT_KEY.
# 2. curl sends the exact bytes h2load will send and must see the trailer grpc-status: 0 and a
#    non-empty gRPC message; its size is what every load-run response should look like.
CHECK_BYTES=0
check() {
  local name="$1" addr="$2" method="$3" key="$4" body="$5" json="$6" size status
  if ! "$GRPCURL" -plaintext "${PROTO_ARGS[@]}" -H "authorization: Bearer $TOKEN" -d "$json" \
      "$addr" "$SERVICE/$method" >"$WORK/$name.grpcurl.out" 2>&1; then
    cat "$WORK/$name.grpcurl.out" >&2
    die "correctness check failed for $name: $method did not return OK"
  fi
  grep -q "\"$key\"" "$WORK/$name.grpcurl.out" ||
    { cat "$WORK/$name.grpcurl.out" >&2; die "correctness check failed for $name: no \"$key\" in the response"; }
  curl -sS --http2-prior-knowledge -X POST --max-time 10 \
    -H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $TOKEN" \
    --data-binary "@$body" -D "$WORK/$name.curl.headers" -o "$WORK/$name.curl.body" \
    "http://$addr/$SERVICE/$method" ||
    die "correctness check failed for $name: curl could not call $method"
  status="$(tr -d '\r' <"$WORK/$name.curl.headers" | awk -F': ' 'tolower($1) == "grpc-status" {print $2}' | tail -n 1)"
  size="$(stat -c %s "$WORK/$name.curl.body")"
  if [[ "$status" != 0 || "$size" -le 5 ]]; then
    cat "$WORK/$name.curl.headers" >&2
    die "correctness check failed for $name: wire-level call of $method gave grpc-status '${status:-none}' and a $size-byte body"
  fi
  CHECK_BYTES="$size"
}

# scenario NAME SERVER_LABEL ADDR METRICS|- METHOD EXPECT_KEY KIND [key=value ...]
# SC_CONNS / SC_STREAMS / SC_MIN_REQUESTS override the defaults for one scenario.
scenario() {
  local name="$1" label="$2" addr="$3" metrics="$4" method="$5" key="$6" kind="$7"
  shift 7
  local conns="${SC_CONNS:-$CONNS}" streams="${SC_STREAMS:-$STREAMS}" min="${SC_MIN_REQUESTS:-$MIN_REQUESTS}"
  local body="$WORK/$name.body" json
  json="$(python3 "$BENCH_DIR/grpc_body.py" "$kind" "$body" "$@")"
  log "scenario $name: $method on $label $json"
  check "$name" "$addr" "$method" "$key" "$body" "$json"
  local before=() after=()
  local h2=(h2load -t 1 -c "$conns" -m "$streams"
    -H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $TOKEN"
    -d "$body")
  local url="http://$addr/$SERVICE/$method" rps n
  # Warm-up: a timed run (connections, cache, PostgreSQL plans and buffers), not measured. It
  # also calibrates the measured run's request count so that it lasts about $DURATION s.
  "${h2[@]}" -D "$WARMUP" "$url" >"$WORK/$name.warmup.out" 2>&1 ||
    { cat "$WORK/$name.warmup.out" >&2; die "h2load warm-up failed for $name"; }
  rps="$(awk '/^finished in/ {print $4}' "$WORK/$name.warmup.out")"
  n="$(python3 -c "print(max($min, round(float('${rps:-0}') * $DURATION)))")"
  if [[ "$metrics" != - ]]; then
    python3 "$BENCH_DIR/report.py" snapshot "http://$metrics/metrics" "$WORK/$name.metrics.before"
    before=(--before "$WORK/$name.metrics.before")
    after=(--after "$WORK/$name.metrics.after")
  fi
  # Measured: a fixed request count, so h2load waits for every response (a timed run resets
  # the calls still in flight when it stops, which the server counts as errors).
  echo "    warm-up ${WARMUP}s at ${rps:-?} req/s; measuring $n requests"
  "${h2[@]}" -n "$n" --log-file "$WORK/$name.h2load.log" "$url" >"$WORK/$name.h2load.out" 2>&1 ||
    { cat "$WORK/$name.h2load.out" >&2; die "h2load failed for $name"; }
  if [[ "$metrics" != - ]]; then
    python3 "$BENCH_DIR/report.py" snapshot "http://$metrics/metrics" "$WORK/$name.metrics.after"
  fi
  python3 "$BENCH_DIR/report.py" scenario --results "$RESULTS_JSONL" --name "$name" \
    --server "$label" --method "$method" --concurrency $((conns * streams)) --h2load-out "$WORK/$name.h2load.out" \
    --log "$WORK/$name.h2load.log" --expected-bytes "$CHECK_BYTES" "${before[@]}" "${after[@]}"
}

# Reads first, writes last: CreateCustomer adds rows, which would change List/Search results.
scenario ceiling-get "ceiling" "$ADDR_C" - GetCustomer customer get "id=$GET_ID"
scenario get-cache-hit "A" "$ADDR_A" "$METRICS_A" GetCustomer customer get "id=$GET_ID"
scenario get-cache-miss "B" "$ADDR_B" "$METRICS_B" GetCustomer customer get "id=$GET_ID"
scenario list "A" "$ADDR_A" "$METRICS_A" ListCustomers customers list page_size=50 \
  "filter=lifecycle_stage = CUSTOMER AND tags:vip"
scenario search "A" "$ADDR_A" "$METRICS_A" SearchCustomers results search query=lovelace page_size=20
# The same search from a single caller: the query's own latency, without queueing.
SC_CONNS=1 SC_STREAMS=1 SC_MIN_REQUESTS=20 \
  scenario search-1-caller "A" "$ADDR_A" "$METRICS_A" SearchCustomers results search query=lovelace page_size=20
scenario create "A" "$ADDR_A" "$METRICS_A" CreateCustomer customer create "display_name=Bench Customer"

# ---------------------------------------------------------------------------------------------
# Memory, conditions, report
# ---------------------------------------------------------------------------------------------
hwm_mb() { # PID -> peak RSS in MB (VmHWM)
  awk '/^VmHWM:/ {printf "%.1f\n", $2 / 1024}' "/proc/$1/status" 2>/dev/null || echo null
}
RSS_A="$(hwm_mb "$PID_A")"
RSS_B="$(hwm_mb "$PID_B")"
RSS_C="$(hwm_mb "$PID_C")"

# Anything the servers logged at WARN or ERROR level during the whole bench.
LOG_WARNINGS="$(cat "$WORK/server-a.log" "$WORK/server-b.log" | grep -ciE '"level":"(WARN|ERROR)"|\b(WARN|ERROR)\b' || true)"

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | head -n 1)" ]]; then
  COMMIT="$COMMIT-dirty"
fi
CPU="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || echo unknown)"
PG_VERSION="$(psql -X -q -At -d "$DB_URL" -c 'SHOW server_version' 2>/dev/null || echo unknown)"
REDIS_VERSION="$(redis-cli -u "$REDIS_BASE_URL" INFO server 2>/dev/null | tr -d '\r' | awk -F: '/^redis_version/ {print $2}' || true)"

python3 - "$WORK/meta.json" <<EOF
import json, sys
meta = {
    "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
    "commit": "$COMMIT",
    "cores": $(nproc),
    "cpu": """$CPU""".strip(),
    "kernel": "$(uname -r)",
    "concurrency": $CONCURRENCY,
    "h2load_args": "-t 1 -c $CONNS -m $STREAMS, warm-up -D $WARMUP, then -n (about $DURATION s, at least $MIN_REQUESTS)",
    "duration_s": $DURATION,
    "warmup_s": $WARMUP,
    "customers": $SEEDED,
    "cpu_busy_at_start": "$CPU_BUSY_START%",
    "load_average_at_start": "$LOADAVG_START",
    "seed_seconds": $SEED_SECONDS,
    "postgres": "$PG_VERSION ($PG_KIND)",
    "redis": "${REDIS_VERSION:-unknown} ($REDIS_KIND)",
    "h2load_version": "$(h2load --version 2>&1 | head -n 1)",
    "get_id": "$GET_ID",
    "server_log_warnings": $LOG_WARNINGS,
    "rss_a_mb": $RSS_A,
    "rss_b_mb": $RSS_B,
    "rss_ceiling_mb": $RSS_C,
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF

strict=()
[[ "${CRM_BENCH_STRICT:-0}" == 1 ]] && strict=(--strict)
python3 "$BENCH_DIR/report.py" finish --results "$RESULTS_JSONL" --meta "$WORK/meta.json" \
  --server-log "A=$WORK/server-a.log" --server-log "B=$WORK/server-b.log" --md "$RESULTS_DIR/latest.md" --json "$RESULTS_DIR/latest.json" "${strict[@]}"
if [[ "$LOG_WARNINGS" != 0 ]]; then
  warn "the servers logged $LOG_WARNINGS WARN/ERROR lines; see $WORK/server-a.log and $WORK/server-b.log"
fi
log "logs and per-request latencies: $WORK"
