#!/usr/bin/env bash
# ImportCustomers throughput beside COPY of the same rows into the same table. See bench/README.md
# ("Import benchmark").
#
#   bench/import.sh
#
# Knobs (environment, all optional):
#   CRM_BENCH_IMPORT_ROWS  rows to import, then to COPY                (50000)
#   CRM_BENCH_SKIP_BUILD   1 = use the existing release binary of $CARGO_TARGET_DIR (or target/)
#   CRM_BENCH_CRM_BIN      a crm binary to use instead (implies no build; the report names it)
#
# Exits non-zero when the import does not answer every row OK, or the table does not hold
# every row afterwards, so the figures are never figures of errors.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source-path=SCRIPTDIR source=../scripts/lib/stack.sh
source "$BENCH_DIR/../scripts/lib/stack.sh"
ROOT="$CRM_ROOT"
cd "$ROOT"

ROWS="${CRM_BENCH_IMPORT_ROWS:-50000}"
DB_NAME=crm_bench_import
ADDR=127.0.0.1:50073
SERVICE=crm.customer.v1.CustomerService
WORK="$CRM_LOCAL/bench-import"   # bodies, responses, logs (git-ignored .local/)
RESULTS_DIR="$BENCH_DIR/results"
CRM_BIN="${CRM_BENCH_CRM_BIN:-$(crm_target_dir)/release/crm}"
# The CSV's columns, in the order bench/import_rows.py writes them.
COPY_COLUMNS="id, display_name, given_name, family_name, email, phone, company_name, source, tags, created_by_kind, created_by, updated_by_kind, updated_by"

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

now() { date +%s.%N; }

command -v python3 >/dev/null 2>&1 || die "python3 is needed (bench/import_rows.py)"
command -v curl >/dev/null 2>&1 || die "curl is needed to stream the import"
ensure_postgres
ensure_redis
ensure_grpcurl
port_open 127.0.0.1 "${ADDR##*:}" && die "port ${ADDR##*:} is already in use (a server left over from an earlier run?); stop it first"

if [[ "${CRM_BENCH_SKIP_BUILD:-0}" != 1 && -z "${CRM_BENCH_CRM_BIN:-}" ]]; then
  log "building the release binaries (cargo build --release --locked -p crm --bins)"
  cargo build --release --locked -p crm --bins
fi
[[ -x "$CRM_BIN" ]] || die "missing $CRM_BIN"

rm -rf "$WORK"
mkdir -p "$WORK" "$RESULTS_DIR"
LOADAVG_START="$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"

log "PostgreSQL: recreating database $DB_NAME"
psql -X -q -d "$PG_BASE_URL" -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null
psql -X -q -d "$PG_BASE_URL" -v ON_ERROR_STOP=1 -c "CREATE DATABASE $DB_NAME" >/dev/null
DB_URL="$(pg_url_with_db "$PG_BASE_URL" "$DB_NAME")"
export DATABASE_URL="$DB_URL"
export CRM__AUTH__JWT_SECRET="$(random_hex)"
export REDIS_URL="$REDIS_BASE_URL"
"$CRM_BIN" migrate all >"$WORK/migrate.log" 2>&1 || { tail -n 30 "$WORK/migrate.log" >&2; die "crm migrate failed"; }
TOKEN="$("$CRM_BIN" token --subject bench-import | tail -n 1)"

RUN_ID="$(random_hex | cut -c1-12)"
log "writing $ROWS rows (gRPC body and CSV of the same customers)"
python3 "$BENCH_DIR/import_rows.py" make "$ROWS" "$WORK/rows.bin" "$WORK/rows.csv" "$RUN_ID"
BODY_BYTES="$(stat -c %s "$WORK/rows.bin")"

log "starting the server on $ADDR"
CRM__SERVER__LISTEN_ADDR="$ADDR" CRM__TELEMETRY__METRICS_ADDR="" CRM__CACHE__LOCAL_CAPACITY=0 \
  CRM__REDIS__KEY_PREFIX="bench-import-$RUN_ID" "$CRM_BIN" serve customer >"$WORK/server.log" 2>&1 &
PIDS+=("$!"); PID="$!"
for ((i = 0; i < 120; i++)); do
  kill -0 "$PID" 2>/dev/null || { tail -n 30 "$WORK/server.log" >&2; die "the server exited during start-up"; }
  out="$("$GRPCURL" -plaintext -max-time 2 "$ADDR" grpc.health.v1.Health/Check 2>/dev/null || true)"
  [[ "$out" == *SERVING* && "$out" != *NOT_SERVING* ]] && break
  sleep 0.5
done
[[ "$out" == *SERVING* && "$out" != *NOT_SERVING* ]] || die "the server did not report SERVING within 60s"

# The whole import is one call: curl sends the framed rows as fast as HTTP/2 flow control lets
# it while it reads the answers, so the time is the server's, from first row to summary.
log "ImportCustomers: $ROWS rows in one stream"
t0="$(now)"
curl -sS --http2-prior-knowledge -X POST --max-time 600 \
  -H 'content-type: application/grpc' -H 'te: trailers' -H "authorization: Bearer $TOKEN" \
  --data-binary "@$WORK/rows.bin" -D "$WORK/import.headers" -o "$WORK/import.body" \
  "http://$ADDR/$SERVICE/ImportCustomers" || die "curl could not call ImportCustomers"
t1="$(now)"
STATUS="$(tr -d '\r' <"$WORK/import.headers" | awk -F': ' 'tolower($1) == "grpc-status" {print $2}' | tail -n 1)"
[[ "$STATUS" == 0 ]] || { cat "$WORK/import.headers" >&2; die "ImportCustomers ended with grpc-status '${STATUS:-none}'"; }
CHECK="$(python3 "$BENCH_DIR/import_rows.py" check "$WORK/import.body" "$ROWS")" ||
  die "the import did not answer every row OK: $CHECK"
STORED="$(psql -X -q -At -d "$DB_URL" -c "SELECT count(*) FROM customer.customers")"
EVENTS="$(psql -X -q -At -d "$DB_URL" -c "SELECT count(*) FROM customer.change_events")"
REQUEST_IDS="$(psql -X -q -At -d "$DB_URL" -c "SELECT count(*) FROM customer.request_ids WHERE response IS NOT NULL")"
[[ "$STORED" == "$ROWS" && "$EVENTS" == "$ROWS" && "$REQUEST_IDS" == "$ROWS" ]] ||
  die "after the import: $STORED customers, $EVENTS change events, $REQUEST_IDS request ids (expected $ROWS each)"
IMPORT_S="$(python3 -c "print(round($t1 - $t0, 3))")"
IMPORT_RATE="$(python3 -c "print(round($ROWS / ($t1 - $t0)))")"
log "ImportCustomers: $ROWS rows in ${IMPORT_S}s = $IMPORT_RATE rows/s ($CHECK)"

# COPY of the same customers into the same table, emptied (TRUNCATE: fresh storage, as the
# import had), with its indexes: the floor of what writing these rows costs PostgreSQL.
kill -TERM "$PID" 2>/dev/null || true
wait "$PID" 2>/dev/null || true
PIDS=()
psql -X -q -d "$DB_URL" -v ON_ERROR_STOP=1 -c "TRUNCATE customer.customers CASCADE" >/dev/null
log "COPY: the same $ROWS customers into customer.customers"
t0="$(now)"
psql -X -q -d "$DB_URL" -v ON_ERROR_STOP=1 \
  -c "\\copy customer.customers ($COPY_COLUMNS) FROM '$WORK/rows.csv' WITH (FORMAT csv)" >/dev/null
t1="$(now)"
COPIED="$(psql -X -q -At -d "$DB_URL" -c "SELECT count(*) FROM customer.customers")"
[[ "$COPIED" == "$ROWS" ]] || die "COPY stored $COPIED customers, expected $ROWS"
COPY_S="$(python3 -c "print(round($t1 - $t0, 3))")"
COPY_RATE="$(python3 -c "print(round($ROWS / ($t1 - $t0)))")"
log "COPY: $ROWS rows in ${COPY_S}s = $COPY_RATE rows/s"

COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT-dirty"
PG_VERSION="$(psql -X -q -At -d "$DB_URL" -c 'SHOW server_version' 2>/dev/null || echo unknown)"
DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
CORES="$(nproc)"
RATIO="$(python3 -c "print(round(100 * $IMPORT_RATE / $COPY_RATE, 1))")"
TARGET=5000
RESULT="$( ((IMPORT_RATE >= TARGET)) && echo PASS || echo MISS)"

cat >"$RESULTS_DIR/import.json" <<JSON
{"date": "$DATE", "commit": "$COMMIT", "binary": "$CRM_BIN", "cores": $CORES, "load_average_at_start": "$LOADAVG_START", "rows": $ROWS, "body_bytes": $BODY_BYTES,
 "import": {"seconds": $IMPORT_S, "rows_per_s": $IMPORT_RATE, "answers": $CHECK},
 "copy": {"seconds": $COPY_S, "rows_per_s": $COPY_RATE},
 "import_vs_copy_pct": $RATIO, "target_rows_per_s": $TARGET, "result": "$RESULT",
 "postgres": "$PG_VERSION"}
JSON
cat >"$RESULTS_DIR/import.md" <<MD
# ImportCustomers beside COPY

Run $DATE on commit \`$COMMIT\` with \`${CRM_BIN#"$ROOT"/}\` — $CORES cores (load average at start: $LOADAVG_START), $ROWS rows ($BODY_BYTES bytes of gRPC body, ~$((BODY_BYTES / ROWS)) bytes a row), a fresh database, one server (\`crm serve customer\`, Redis on, in-process tier off), client and server on this machine.

| how | rows | seconds | rows/s |
|---|---:|---:|---:|
| ImportCustomers, one stream (curl, as fast as flow control allows) | $ROWS | $IMPORT_S | $IMPORT_RATE |
| \`COPY customer.customers FROM\` the same rows (psql \\\\copy) | $ROWS | $COPY_S | $COPY_RATE |

Import / COPY: **$RATIO %**. Target ≥ $TARGET rows/s: **$RESULT**.

The import did more than COPY: every row validated, answered (\`$CHECK\`), given a request-id record
with its stored response and a change event; after it the table held $STORED customers, $EVENTS
change events and $REQUEST_IDS request ids. COPY wrote the customers only, into the same table
(truncated first) with the same indexes.

PostgreSQL $PG_VERSION.
MD
log "results: $RESULTS_DIR/import.md"
printf 'ImportCustomers: %s rows/s   COPY: %s rows/s   (%s %%)   target >= %s: %s\n' \
  "$IMPORT_RATE" "$COPY_RATE" "$RATIO" "$TARGET" "$RESULT"
