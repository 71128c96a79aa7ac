#!/usr/bin/env bash
# scripts/services.sh - make sure the services the connector talks to run on 127.0.0.1.
#
# Usage: scripts/services.sh [up|down|status|env|queues NAME...]      (default: up)
#
#   up      Idempotent. Reuses whatever already answers, starts only what is missing:
#     1. RabbitMQ on 127.0.0.1:$RABBITMQ_PORT (guest/guest).
#        - Reused if the port answers the AMQP 0-9-1 protocol header with Connection.Start.
#        - Otherwise: installs the Debian package `rabbitmq-server` if absent (apt-get, noninteractive;
#          policy-rc.d may keep the package from starting a broker, so we do not rely on it), then
#          starts a private node owned by this clone: node name lamassu<PORT>@localhost, data, logs,
#          config and Erlang cookie under $STATE_DIR/rabbitmq-<PORT>, listening on 127.0.0.1 only.
#          It runs under setsid/nohup so it outlives the calling shell. Ready = port accepts, then
#          `rabbitmqctl await_startup` (only after the port accepts: before the node has registered
#          it fails at once), within $SERVICES_TIMEOUT seconds.
#        - Management plugin (:15672, optional, nothing may depend on it): on a node we start it is
#          enabled through its enabled_plugins file (free, no restart); on a reused system broker it
#          is enabled online with `rabbitmq-plugins enable` (no restart) when RABBITMQ_MANAGEMENT=1.
#     2. An SQS endpoint on 127.0.0.1:$SQS_PORT.
#        - Reused if /_localstack/health reports sqs running/available (LocalStack), or if it is
#          the moto server this clone started earlier.
#        - Otherwise LocalStack (localstack-core[runtime]==$LOCALSTACK_VERSION) is run on the host.
#          It needs Python >= 3.12: found under $(pyenv root)/versions (3.13, 3.12, then newer),
#          else python3.13/python3.12/python3 on PATH (each one is run to check it: pyenv shims
#          exist on PATH even for versions they refuse to run).
#          Its venv lives OUTSIDE the clone, in $SERVICES_HOME/localstack-venv, so fresh clones
#          reuse it; it is (re)built only if the marker file (written last, holding the pip
#          requirements) is missing or different, or `import localstack` fails in it.
#          Started with `python -m localstack.runtime.main` under setsid/nohup, pid in
#          $STATE_DIR/sqs-<PORT>.pid, log in $STATE_DIR/localstack.log, files in
#          FILESYSTEM_ROOT=$STATE_DIR/localstack-fs (its state part is wiped at each start,
#          PERSISTENCE=0; its cache is kept). OVERRIDE_IN_DOCKER=0: this sandbox looks like a
#          container to LocalStack, which would then ignore FILESYSTEM_ROOT (writing /var/lib/localstack,
#          /etc/localstack) and ping Docker bridge addresses (172.17.0.1, 172.18.0.1) at import;
#          DOCKER_BRIDGE_IP=127.0.0.1 too, so no such probe leaves loopback either way.
#          LOCALSTACK_HOST=127.0.0.1:PORT makes queue URLs http://127.0.0.1:PORT/queue/us-east-1/
#          000000000000/NAME (its default host, localhost.localstack.cloud, needs public DNS).
#          Ready = health reports sqs running/available, within $SERVICES_TIMEOUT seconds; else
#          the log tail is printed and the script exits non-zero.
#        - Fallback, with a warning, when no Python >= 3.12 exists or the LocalStack install fails:
#          moto server (moto[server] in $SERVICES_HOME/moto-venv built with the default python3),
#          `moto_server -H 127.0.0.1 -p PORT`; ready = any HTTP answer on /moto-api/.
#     Prints at the end, on stdout, one line per service, e.g.
#       rabbitmq: amqp://guest:***@127.0.0.1:5672/ (reused)
#       sqs: http://127.0.0.1:4566 (localstack 2026.3.0, started)
#     Progress and warnings go to stderr.
#   down    Stops only what THIS CLONE started: the SQS server by the pid file in $STATE_DIR, RabbitMQ
#           only if the marker $STATE_DIR/rabbitmq-<PORT>/started-by-services-sh names a live node.
#           A service another clone (or anyone else) started is left alone, and so is one recorded
#           by an older services.sh in $SERVICES_HOME (its owner cannot be known).
#   status  One line per service (up/down, and whether this clone started it); exit 0 only if both
#           are up. Reads only: it creates and changes nothing.
#   env     Prints export lines (AMQP_URL, SQS_ENDPOINT_URL, AWS_* dummy credentials) for `eval`.
#   queues NAME...  Creates SQS queues on the endpoint (CreateQueue over the SQS JSON protocol with
#           curl --aws-sigv4, dummy credentials test/test, region us-east-1); names ending in .fifo
#           become FIFO queues with ContentBasedDeduplication=false. Prints one queue URL a line.
#
# Ownership. Every clone keeps its own state in $STATE_DIR (default: the clone's .services/, which
# git ignores): the pid files and "started by" markers, the logs, LocalStack's files and RabbitMQ's
# node directory. A record names the pid, the process start time (so a recycled pid is not taken for
# ours) and the clone's path; a service counts as this clone's only if all three match. So a clone
# reuses whatever already answers, but its `status` never claims, and its `down` never stops, a
# LocalStack or RabbitMQ that another clone started. What clones share is $SERVICES_HOME: the
# LocalStack and moto venvs (big, slow to build) and the lock that serialises `up` and `down`.
#
# Environment (all optional):
#   LAMASSU_SERVICES_HOME  shared cache: venvs, lock (default ${XDG_CACHE_HOME:-$HOME/.cache}/lamassu-aws-connector)
#   LAMASSU_SERVICES_STATE this clone's state dir (default <clone>/.services)
#   SQS_PORT               SQS endpoint port (default 4566)
#   RABBITMQ_PORT          AMQP port (default 5672)
#   LAMASSU_SQS_BACKEND    auto (default: LocalStack, else moto) | localstack (no fallback) | moto
#   LOCALSTACK_VERSION     localstack-core version to install (default 2026.3.0)
#   LOCALSTACK_PYTHON      Python >= 3.12 interpreter to build the LocalStack venv with
#   SERVICES_TIMEOUT       seconds to wait for each service to become ready (default 60)
#   RABBITMQ_MANAGEMENT    0 (default) / 1: enable the management plugin (changes a reused broker)
#   RABBITMQ_MANAGEMENT_PORT  management port for a node this script starts (default 15672)
#   GATEWAY_SERVER         passed to LocalStack if set (its default twisted server listens on
#                          0.0.0.0 whatever GATEWAY_LISTEN says; hypercorn honours 127.0.0.1 but is slower)
#
# Concurrent runs are serialised with flock on $SERVICES_HOME/.lock.
set -euo pipefail

: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME   # pyenv, pip and Erlang need it; CI-like environments may not set it
SERVICES_HOME=${LAMASSU_SERVICES_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/lamassu-aws-connector}
CLONE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
STATE_DIR=${LAMASSU_SERVICES_STATE:-$CLONE_DIR/.services}
SQS_PORT=${SQS_PORT:-4566}
RABBITMQ_PORT=${RABBITMQ_PORT:-5672}
SQS_BACKEND=${LAMASSU_SQS_BACKEND:-auto}
LOCALSTACK_VERSION=${LOCALSTACK_VERSION:-2026.3.0}
SERVICES_TIMEOUT=${SERVICES_TIMEOUT:-60}
RABBITMQ_MANAGEMENT=${RABBITMQ_MANAGEMENT:-0}
RABBITMQ_MANAGEMENT_PORT=${RABBITMQ_MANAGEMENT_PORT:-15672}
HOST=127.0.0.1

LOCALSTACK_VENV=$SERVICES_HOME/localstack-venv
LOCALSTACK_REQS=("localstack-core[runtime]==$LOCALSTACK_VERSION" "cbor2<6" "pyopenssl==25.1.0"
  "cryptography>=45,<46" "service-identity")
MOTO_VENV=$SERVICES_HOME/moto-venv
MOTO_REQS=("moto[server]>=5,<6")

# This clone's files of the SQS server and the RabbitMQ node; suffixed by port only when it is not
# the default.
sqs_suffix=""; [[ $SQS_PORT == 4566 ]] || sqs_suffix="-$SQS_PORT"
SQS_PIDFILE=$STATE_DIR/sqs-$SQS_PORT.pid             # "<pid> <localstack|moto> <start time> <clone>"
LOCALSTACK_LOG=$STATE_DIR/localstack$sqs_suffix.log
LOCALSTACK_FS=$STATE_DIR/localstack-fs$sqs_suffix
MOTO_LOG=$STATE_DIR/moto$sqs_suffix.log
RMQ_DIR=$STATE_DIR/rabbitmq-$RABBITMQ_PORT
RMQ_NODE=lamassu$RABBITMQ_PORT@localhost
RMQ_MARKER=$RMQ_DIR/started-by-services-sh           # "<pid> <node> <start time> <clone>"
# Where services.sh kept them before state was per clone: shared by every clone, so not proof of
# ownership. Only reported.
LEGACY_SQS_PIDFILE=$SERVICES_HOME/sqs-$SQS_PORT.pid
LEGACY_RMQ_MARKER=$SERVICES_HOME/rabbitmq-$RABBITMQ_PORT/started-by-services-sh
RMQ_BIN=/usr/lib/rabbitmq/bin

AMQP_DISPLAY="amqp://guest:***@$HOST:$RABBITMQ_PORT/"
SQS_URL="http://$HOST:$SQS_PORT"

log()  { printf 'services.sh: %s\n' "$*" >&2; }
warn() { printf 'services.sh: WARNING: %s\n' "$*" >&2; }
die()  { printf 'services.sh: ERROR: %s\n' "$*" >&2; exit 1; }

now() { date +%s; }

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

# True if an AMQP 0-9-1 broker answers on port $1: after the protocol header it sends a method
# frame (type 1, Connection.Start). Needs no client library.
amqp_probe() {
  local first
  first=$(timeout 3 bash -c "exec 3<>/dev/tcp/$HOST/$1 && printf 'AMQP\0\0\011\001' >&3 && head -c 1 <&3 | od -An -tx1" 2>/dev/null) || return 1
  [[ ${first// /} == 01 ]]
}

# True if pid $1 runs (a zombie, dead but not yet reaped by its parent, does not).
pid_alive() {
  [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# True if pid $1 is alive and its command line contains $2 (guards against reused pids).
pid_is() {
  pid_alive "$1" || return 1
  tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# The start time of pid $1 (clock ticks since boot, field 22 of /proc/PID/stat); with the pid it
# names one process for good. Empty if there is no such process.
pid_start() {
  local stat fields
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }                   # the command name may hold spaces and parentheses
  read -r -a fields <<<"$stat"
  echo "${fields[19]:-}"
}

# Writes an ownership record: pid $2, what $3, to file $1 (with the start time and this clone).
record_owner() {
  mkdir -p "$(dirname "$1")"
  printf '%s %s %s %s\n' "$2" "$3" "$(pid_start "$2")" "$CLONE_DIR" >"$1"
}

# Reads record $1; prints "<pid> <what>" if it is this clone's and its process still runs with the
# same start time and a command line containing $2.
owned_pid() {
  local file=$1 needle=$2 pid what start clone
  [[ -f $file ]] || return 1
  read -r pid what start clone <"$file" || true
  [[ -n $pid && -n $start && $clone == "$CLONE_DIR" ]] || return 1
  pid_is "$pid" "$needle" || return 1
  [[ $(pid_start "$pid") == "$start" ]] || return 1
  echo "$pid $what"
}

# A note on stderr about a record an older services.sh left in the shared $SERVICES_HOME, if its
# process still runs: some clone started it, which one cannot be known, so it is not claimed.
legacy_note() {
  local file=$1 needle=$2 service=$3 pid rest
  [[ -f $file ]] || return 0
  read -r pid rest <"$file" || true
  pid_is "$pid" "$needle" || return 0
  log "$service: $file (written by an older services.sh, shared by every clone) names pid $pid;" \
    "which clone started it is unknown, so this one does not claim it (stop it yourself if it is yours)"
}

# Sends TERM to the process group led by pid $1 (our children are session leaders via setsid),
# waits up to $2 seconds, then KILLs it.
stop_pid() {
  local pid=$1 wait_s=${2:-15} deadline
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  deadline=$(( $(now) + wait_s ))
  while pid_alive "$pid" && (( $(now) < deadline )); do sleep 0.2; done
  if pid_alive "$pid"; then
    warn "pid $pid still alive after ${wait_s}s, sending KILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
}

# Prints the last lines of log $1 to stderr.
log_tail() {
  [[ -f $1 ]] || return 0
  { printf -- '----- last lines of %s -----\n' "$1"; tail -n "${2:-40}" "$1"; printf -- '-----\n'; } >&2
}

take_lock() {
  mkdir -p "$SERVICES_HOME" "$STATE_DIR"
  exec 9>>"$SERVICES_HOME/.lock"
  flock -w 900 9 || die "could not lock $SERVICES_HOME/.lock within 900 s"
}

# ------------------------------------------------------------------------------------------------
# RabbitMQ
# ------------------------------------------------------------------------------------------------

# Environment of the private node (also needed by rabbitmqctl: same node name and cookie in HOME).
RMQ_ENV=(HOME="$RMQ_DIR"
  RABBITMQ_CONF_ENV_FILE="$RMQ_DIR/rabbitmq-env.conf"
  RABBITMQ_NODENAME="$RMQ_NODE"
  RABBITMQ_NODE_IP_ADDRESS="$HOST"
  RABBITMQ_NODE_PORT="$RABBITMQ_PORT"
  RABBITMQ_DIST_PORT="$((RABBITMQ_PORT + 20000))"
  RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq.conf"
  RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins"
  RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia"
  RABBITMQ_LOG_BASE="$RMQ_DIR/log"
  ERL_EPMD_ADDRESS="$HOST"
  ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}")

# Runs a RabbitMQ command ($1 in $RMQ_BIN) against the private node.
rmq_private() { local cmd=$1; shift; env "${RMQ_ENV[@]}" "$RMQ_BIN/$cmd" "$@"; }

rmq_ours_pid() {
  local owned pid node
  owned=$(owned_pid "$RMQ_MARKER" rabbitmq-server) || return 1
  read -r pid node <<<"$owned"
  [[ $node == "$RMQ_NODE" ]] && { echo "$pid"; return 0; }
  return 1
}

rmq_install() {
  [[ -x $RMQ_BIN/rabbitmq-server ]] && return 0
  command -v apt-get >/dev/null || die "rabbitmq-server is not installed and apt-get is not available"
  log "installing rabbitmq-server with apt-get (one time, ~10-30 s)"
  local t0; t0=$(now)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 </dev/null || warn "apt-get update failed; trying the install anyway"
  if ! apt-get install -y -qq --no-install-recommends rabbitmq-server >&2 </dev/null; then
    # The package's start attempt may fail (no init system); what matters is the files are there.
    [[ -x $RMQ_BIN/rabbitmq-server ]] || die "apt-get install rabbitmq-server failed"
    warn "apt-get install reported an error but rabbitmq-server is installed; continuing"
  fi
  log "rabbitmq-server installed in $(( $(now) - t0 )) s"
}

rmq_start_private() {
  mkdir -p "$RMQ_DIR/mnesia" "$RMQ_DIR/log"
  : >"$RMQ_DIR/rabbitmq-env.conf"   # keep /etc/rabbitmq/rabbitmq-env.conf (NODENAME...) out
  {
    echo "listeners.tcp.default = $HOST:$RABBITMQ_PORT"
    echo "loopback_users.guest = true"
  } >"$RMQ_DIR/rabbitmq.conf"
  if [[ $RABBITMQ_MANAGEMENT == 1 ]] && ! port_open "$RABBITMQ_MANAGEMENT_PORT"; then
    echo "[rabbitmq_management]." >"$RMQ_DIR/enabled_plugins"
    {
      echo "management.tcp.ip = $HOST"
      echo "management.tcp.port = $RABBITMQ_MANAGEMENT_PORT"
    } >>"$RMQ_DIR/rabbitmq.conf"
  else
    echo "[]." >"$RMQ_DIR/enabled_plugins"
  fi
  local out=$RMQ_DIR/log/console.log pid deadline
  log "starting RabbitMQ node $RMQ_NODE on $HOST:$RABBITMQ_PORT (data and logs in $RMQ_DIR)"
  ( cd "$RMQ_DIR" && exec setsid nohup env "${RMQ_ENV[@]}" "$RMQ_BIN/rabbitmq-server" \
  ) >"$out" 2>&1 </dev/null 9>&- &
  pid=$!
  record_owner "$RMQ_MARKER" "$pid" "$RMQ_NODE"
  deadline=$(( $(now) + SERVICES_TIMEOUT ))
  until port_open "$RABBITMQ_PORT"; do
    if ! pid_alive "$pid"; then
      log_tail "$out"; rm -f "$RMQ_MARKER"
      die "RabbitMQ exited during startup (see $out and $RMQ_DIR/log)"
    fi
    if (( $(now) >= deadline )); then
      log_tail "$out"; stop_pid "$pid" 10; rm -f "$RMQ_MARKER"
      die "RabbitMQ did not open $HOST:$RABBITMQ_PORT within ${SERVICES_TIMEOUT}s (see $out)"
    fi
    sleep 0.3
  done
  local left=$(( deadline - $(now) )); (( left > 5 )) || left=5
  if ! rmq_private rabbitmqctl -q await_startup --timeout "$left" >/dev/null 2>&1; then
    log_tail "$out"; stop_pid "$pid" 10; rm -f "$RMQ_MARKER"
    die "rabbitmqctl await_startup failed for $RMQ_NODE within ${SERVICES_TIMEOUT}s (see $out)"
  fi
}

# Online-enables the management plugin on a reused system broker (best effort, no restart).
rmq_enable_management_on_reused() {
  [[ $RABBITMQ_MANAGEMENT == 1 && $RABBITMQ_PORT == 5672 ]] || return 0
  rmq_ours_pid >/dev/null && return 0        # our node got it through enabled_plugins
  port_open 15672 && return 0
  command -v rabbitmq-plugins >/dev/null || return 0
  log "enabling rabbitmq_management on the reused broker (online, no restart)"
  timeout 60 rabbitmq-plugins -q enable rabbitmq_management >/dev/null 2>&1 \
    || warn "could not enable rabbitmq_management on the reused broker (optional; ignored)"
}

rabbitmq_up() {
  if amqp_probe "$RABBITMQ_PORT"; then
    if rmq_ours_pid >/dev/null; then
      RMQ_STATE="reused, node $RMQ_NODE started earlier by this clone"
    else
      RMQ_STATE="reused"
    fi
    rmq_enable_management_on_reused
    return 0
  fi
  if port_open "$RABBITMQ_PORT"; then
    # Something listens but does not (yet) speak AMQP: maybe a broker still starting. Give it time.
    log "$HOST:$RABBITMQ_PORT accepts but does not answer AMQP yet; waiting"
    local deadline=$(( $(now) + SERVICES_TIMEOUT ))
    until amqp_probe "$RABBITMQ_PORT"; do
      (( $(now) < deadline )) || die "$HOST:$RABBITMQ_PORT is taken by something that does not speak AMQP"
      sleep 1
    done
    RMQ_STATE="reused"
    return 0
  fi
  # Our node from an earlier run may still be booting.
  local pid
  if pid=$(rmq_ours_pid); then
    log "RabbitMQ node $RMQ_NODE (pid $pid) is alive but not listening; stopping it to start afresh"
    stop_pid "$pid" 20
  fi
  rm -f "$RMQ_MARKER"
  rmq_install
  # The package may have started the system broker itself (no policy-rc.d).
  if amqp_probe "$RABBITMQ_PORT"; then RMQ_STATE="reused, started by the package install"; return 0; fi
  rmq_start_private
  amqp_probe "$RABBITMQ_PORT" || die "RabbitMQ node started but $HOST:$RABBITMQ_PORT does not answer AMQP"
  RMQ_STATE="started"
}

rabbitmq_down() {
  local pid
  if pid=$(rmq_ours_pid); then
    log "stopping RabbitMQ node $RMQ_NODE (pid $pid)"
    rmq_private rabbitmqctl -q stop >/dev/null 2>&1 || true
    local deadline=$(( $(now) + 20 ))
    while pid_alive "$pid" && (( $(now) < deadline )); do sleep 0.3; done
    pid_alive "$pid" && stop_pid "$pid" 10
    rm -f "$RMQ_MARKER"
    echo "rabbitmq: stopped (node $RMQ_NODE)"
  else
    rm -f "$RMQ_MARKER"
    legacy_note "$LEGACY_RMQ_MARKER" rabbitmq-server rabbitmq
    echo "rabbitmq: not started by this clone; left alone"
  fi
}

# ------------------------------------------------------------------------------------------------
# SQS endpoint (LocalStack, fallback moto)
# ------------------------------------------------------------------------------------------------

ls_health() { curl -fsS -m 3 "$SQS_URL/_localstack/health" 2>/dev/null; }

# True if the LocalStack health JSON on stdin says sqs is running or available.
sqs_ready_in() { grep -qE '"sqs": *"(running|available)"'; }

# Version from the health JSON on stdin (empty if absent).
version_in() { grep -oE '"version": *"[^"]*"' | head -n1 | sed -E 's/.*"([^"]*)"$/\1/' || true; }

moto_answers() {
  local code
  code=$(curl -s -o /dev/null -m 3 -w '%{http_code}' "$SQS_URL/moto-api/" 2>/dev/null) || true
  [[ -n $code && $code != 000 ]]
}

# Reads this clone's pid file: sets SQS_OWN_PID and SQS_OWN_KIND if the recorded process is still
# the one this clone started.
sqs_read_pidfile() {
  SQS_OWN_PID=""; SQS_OWN_KIND=""
  local owned pid kind
  owned=$(owned_pid "$SQS_PIDFILE" localstack.runtime.main) \
    || owned=$(owned_pid "$SQS_PIDFILE" moto_server) || return 1
  read -r pid kind <<<"$owned"
  case $kind in
    localstack) pid_is "$pid" localstack.runtime.main || return 1 ;;
    moto)       pid_is "$pid" moto_server || return 1 ;;
    *)          return 1 ;;
  esac
  SQS_OWN_PID=$pid; SQS_OWN_KIND=$kind
}

# Prints a Python >= 3.12 interpreter that can make venvs, or fails.
find_python312() {
  local cands=() root="" c
  [[ -n ${LOCALSTACK_PYTHON:-} ]] && cands+=("$LOCALSTACK_PYTHON")
  if command -v pyenv >/dev/null; then root=$(pyenv root 2>/dev/null || true); fi
  [[ -d $root/versions ]] || root=${PYENV_ROOT:-$HOME/.pyenv}
  if [[ -d $root/versions ]]; then
    # 3.13 and 3.12 first (newest patch first), then anything newer.
    local known=() newer=()
    shopt -s nullglob
    known=("$root"/versions/3.13.*/bin/python3 "$root"/versions/3.12.*/bin/python3)
    newer=("$root"/versions/3.1[4-9].*/bin/python3)
    shopt -u nullglob
    if (( ${#known[@]} )); then
      while IFS= read -r c; do cands+=("$c"); done < <(printf '%s\n' "${known[@]}" | sort -rV)
    fi
    if (( ${#newer[@]} )); then
      while IFS= read -r c; do cands+=("$c"); done < <(printf '%s\n' "${newer[@]}" | sort -V)
    fi
  fi
  for c in python3.13 python3.12 python3; do
    command -v "$c" >/dev/null && cands+=("$(command -v "$c")")
  done
  for c in "${cands[@]}"; do
    [[ $c == *t/bin/python3 ]] && continue   # free-threaded builds
    if "$c" -c 'import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 12) else 1)' \
        >/dev/null 2>&1 </dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

# Makes venv $1 with interpreter $2 holding requirements $3..., unless its marker (written last)
# already lists the same requirements and `import $module` works. $module is taken from VENV_MODULE.
ensure_venv() {
  local venv=$1 py=$2; shift 2
  local want; want=$(printf '%s\n' "$@")
  if [[ -f $venv/.installed && $(cat "$venv/.installed") == "$want" ]] \
     && "$venv/bin/python" -c "import $VENV_MODULE" >/dev/null 2>&1 </dev/null; then
    return 0
  fi
  local t0 pip_log=$venv.install.log; t0=$(now)
  log "building $venv with $py ($*); one time, cached outside the clone; pip log: $pip_log"
  rm -rf "$venv"
  if ! { "$py" -m venv "$venv" && PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
           "$venv/bin/python" -m pip install "$@"; } >"$pip_log" 2>&1 </dev/null; then
    log_tail "$pip_log" 20; return 1
  fi
  if ! "$venv/bin/python" -c "import $VENV_MODULE" >>"$pip_log" 2>&1 </dev/null; then
    log_tail "$pip_log" 20; return 1
  fi
  printf '%s\n' "$want" >"$venv/.installed"
  log "$venv ready in $(( $(now) - t0 )) s"
}

localstack_start() {
  local venv_py=$LOCALSTACK_VENV/bin/python pid deadline h
  # Fresh state each start (PERSISTENCE=0 keeps it under tmp/); keep var/lib/localstack/cache,
  # whose service catalog makes the next start ~2 s faster.
  rm -rf "$LOCALSTACK_FS/tmp"; mkdir -p "$LOCALSTACK_FS"
  log "starting LocalStack $LOCALSTACK_VERSION on $SQS_URL (log $LOCALSTACK_LOG)"
  local extra=()
  [[ -n ${GATEWAY_SERVER:-} ]] && extra+=("GATEWAY_SERVER=$GATEWAY_SERVER")
  ( cd "$LOCALSTACK_FS" && exec setsid nohup env \
      SERVICES=sqs,s3 GATEWAY_LISTEN="$HOST:$SQS_PORT" DNS_ADDRESS=0 DISABLE_EVENTS=1 \
      PERSISTENCE=0 SKIP_SSL_CERT_DOWNLOAD=1 SQS_ENDPOINT_STRATEGY=path EAGER_SERVICE_LOADING=1 \
      LS_LOG=warn FILESYSTEM_ROOT="$LOCALSTACK_FS" LOCALSTACK_HOST="$HOST:$SQS_PORT" \
      OVERRIDE_IN_DOCKER=0 DOCKER_BRIDGE_IP="$HOST" "${extra[@]}" \
      "$venv_py" -m localstack.runtime.main ) >"$LOCALSTACK_LOG" 2>&1 </dev/null 9>&- &
  pid=$!
  record_owner "$SQS_PIDFILE" "$pid" localstack
  deadline=$(( $(now) + SERVICES_TIMEOUT ))
  while :; do
    if h=$(ls_health) && sqs_ready_in <<<"$h"; then
      SQS_VERSION=$(version_in <<<"$h"); return 0
    fi
    if ! pid_alive "$pid"; then
      log_tail "$LOCALSTACK_LOG"; rm -f "$SQS_PIDFILE"
      warn "LocalStack exited during startup"; return 1
    fi
    if (( $(now) >= deadline )); then
      log_tail "$LOCALSTACK_LOG"; stop_pid "$pid" 10; rm -f "$SQS_PIDFILE"
      warn "LocalStack did not report sqs ready within ${SERVICES_TIMEOUT}s"; return 1
    fi
    sleep 0.3
  done
}

moto_start() {
  local pid deadline
  log "starting moto server on $SQS_URL (log $MOTO_LOG)"
  ( cd "$SERVICES_HOME" && exec setsid nohup "$MOTO_VENV/bin/moto_server" -H "$HOST" -p "$SQS_PORT" \
  ) >"$MOTO_LOG" 2>&1 </dev/null 9>&- &
  pid=$!
  record_owner "$SQS_PIDFILE" "$pid" moto
  deadline=$(( $(now) + SERVICES_TIMEOUT ))
  until moto_answers; do
    if ! pid_alive "$pid"; then
      log_tail "$MOTO_LOG"; rm -f "$SQS_PIDFILE"; die "moto server exited during startup"
    fi
    if (( $(now) >= deadline )); then
      log_tail "$MOTO_LOG"; stop_pid "$pid" 10; rm -f "$SQS_PIDFILE"
      die "moto server did not answer on $SQS_URL within ${SERVICES_TIMEOUT}s"
    fi
    sleep 0.3
  done
}

moto_version() { "$MOTO_VENV/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null || echo "?"; }

sqs_use_moto() {
  local py
  py=$(command -v python3) || die "no python3 for the moto fallback"
  VENV_MODULE=moto.server ensure_venv "$MOTO_VENV" "$py" "${MOTO_REQS[@]}" \
    || die "installing moto[server] into $MOTO_VENV failed"
  moto_start
  SQS_KIND="moto $(moto_version)"; SQS_STATE="started"
}

sqs_up() {
  local h
  # 1. Something healthy already answers: reuse it.
  if h=$(ls_health); then
    if ! sqs_ready_in <<<"$h"; then
      # Maybe our LocalStack is still starting (e.g. a parallel run was killed mid-wait).
      local deadline=$(( $(now) + SERVICES_TIMEOUT ))
      until { h=$(ls_health) && sqs_ready_in <<<"$h"; }; do
        (( $(now) < deadline )) || die "LocalStack on $SQS_URL answers but sqs is not running: $h"
        sleep 0.5
      done
    fi
    sqs_read_pidfile || true
    SQS_KIND="localstack $(version_in <<<"$h")"
    SQS_STATE="reused${SQS_OWN_PID:+, started earlier by this clone, pid $SQS_OWN_PID}"
    return 0
  fi
  if sqs_read_pidfile && [[ $SQS_OWN_KIND == moto ]] && moto_answers; then
    SQS_KIND="moto $(moto_version)"; SQS_STATE="reused, started earlier by this clone, pid $SQS_OWN_PID"
    return 0
  fi
  # 2. Our own process is alive but not healthy: replace it.
  if sqs_read_pidfile; then
    log "our $SQS_OWN_KIND (pid $SQS_OWN_PID) is alive but not healthy; restarting it"
    stop_pid "$SQS_OWN_PID" 15
  fi
  rm -f "$SQS_PIDFILE"
  if port_open "$SQS_PORT"; then
    if [[ $SQS_BACKEND != localstack ]] && moto_answers && curl -fsS -m 3 -o /dev/null "$SQS_URL/moto-api/" 2>/dev/null; then
      SQS_KIND="moto (not started by this clone)"; SQS_STATE="reused"; return 0
    fi
    die "$HOST:$SQS_PORT is taken by something that is neither LocalStack nor moto; set SQS_PORT"
  fi
  # 3. Start one.
  case $SQS_BACKEND in
    moto) sqs_use_moto; return 0 ;;
    auto|localstack) ;;
    *) die "LAMASSU_SQS_BACKEND must be auto, localstack or moto (got '$SQS_BACKEND')" ;;
  esac
  local py
  if ! py=$(find_python312); then
    [[ $SQS_BACKEND == localstack ]] && die "no Python >= 3.12 found for LocalStack"
    warn "no Python >= 3.12 found (pyenv or PATH): LocalStack cannot run; FALLING BACK TO MOTO SERVER (slower, less faithful to AWS)"
    sqs_use_moto; return 0
  fi
  if ! VENV_MODULE=localstack.runtime.main ensure_venv "$LOCALSTACK_VENV" "$py" "${LOCALSTACK_REQS[@]}"; then
    [[ $SQS_BACKEND == localstack ]] && die "installing LocalStack into $LOCALSTACK_VENV failed"
    warn "installing LocalStack into $LOCALSTACK_VENV failed: FALLING BACK TO MOTO SERVER (slower, less faithful to AWS)"
    sqs_use_moto; return 0
  fi
  # A LocalStack that installs but does not start is an error to look at, not a reason for moto.
  localstack_start || die "LocalStack did not start on $SQS_URL (log: $LOCALSTACK_LOG)"
  SQS_KIND="localstack ${SQS_VERSION:-$LOCALSTACK_VERSION}"; SQS_STATE="started"
}

sqs_down() {
  if sqs_read_pidfile; then
    log "stopping $SQS_OWN_KIND (pid $SQS_OWN_PID)"
    stop_pid "$SQS_OWN_PID" 15
    rm -f "$SQS_PIDFILE"
    echo "sqs: stopped ($SQS_OWN_KIND on $SQS_URL)"
  else
    rm -f "$SQS_PIDFILE"
    legacy_note "$LEGACY_SQS_PIDFILE" localstack.runtime.main sqs
    echo "sqs: not started by this clone; left alone"
  fi
}

# ------------------------------------------------------------------------------------------------
# Subcommands
# ------------------------------------------------------------------------------------------------

cmd_up() {
  take_lock
  RMQ_STATE=""; SQS_KIND=""; SQS_STATE=""
  rabbitmq_up
  sqs_up
  echo "rabbitmq: $AMQP_DISPLAY ($RMQ_STATE)"
  echo "sqs: $SQS_URL ($SQS_KIND, $SQS_STATE)"
}

cmd_down() {
  take_lock
  sqs_down
  rabbitmq_down
}

cmd_status() {
  local rc=0 h pid
  if amqp_probe "$RABBITMQ_PORT"; then
    if pid=$(rmq_ours_pid); then
      echo "rabbitmq: $AMQP_DISPLAY (up, node $RMQ_NODE started by this clone, pid $pid)"
    else
      echo "rabbitmq: $AMQP_DISPLAY (up, not started by this clone)"
      legacy_note "$LEGACY_RMQ_MARKER" rabbitmq-server rabbitmq
    fi
  else
    echo "rabbitmq: $AMQP_DISPLAY (down)"; rc=1
  fi
  sqs_read_pidfile || true
  local who="not started by this clone"
  [[ -n $SQS_OWN_PID ]] && who="started by this clone, pid $SQS_OWN_PID"
  [[ -n $SQS_OWN_PID ]] || legacy_note "$LEGACY_SQS_PIDFILE" localstack.runtime.main sqs
  if h=$(ls_health) && sqs_ready_in <<<"$h"; then
    echo "sqs: $SQS_URL (localstack $(version_in <<<"$h"), up, $who)"
  elif moto_answers; then
    echo "sqs: $SQS_URL (moto, up, $who)"
  else
    echo "sqs: $SQS_URL (down)"; rc=1
  fi
  return "$rc"
}

cmd_env() {
  echo "export AMQP_URL=amqp://guest:guest@$HOST:$RABBITMQ_PORT/"
  echo "export SQS_ENDPOINT_URL=$SQS_URL"
  echo "export AWS_ENDPOINT_URL_SQS=$SQS_URL"
  echo "export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1"
}

cmd_queues() {
  (( $# > 0 )) || die "usage: $0 queues NAME..."
  ls_health >/dev/null || moto_answers || die "no SQS endpoint on $SQS_URL; run '$0 up' first"
  local name body resp url rc=0
  for name in "$@"; do
    if [[ ! $name =~ ^[A-Za-z0-9_-]{1,80}$ && ! ( $name =~ ^[A-Za-z0-9_-]{1,75}\.fifo$ ) ]]; then
      warn "invalid queue name '$name' (letters, digits, - and _, at most 80 characters with .fifo)"
      rc=1; continue
    fi
    if [[ $name == *.fifo ]]; then
      body="{\"QueueName\":\"$name\",\"Attributes\":{\"FifoQueue\":\"true\",\"ContentBasedDeduplication\":\"false\"}}"
    else
      body="{\"QueueName\":\"$name\"}"
    fi
    resp=$(curl -sS -m 15 --aws-sigv4 "aws:amz:us-east-1:sqs" --user test:test \
      -H 'Content-Type: application/x-amz-json-1.0' -H 'X-Amz-Target: AmazonSQS.CreateQueue' \
      --data-binary "$body" "$SQS_URL/" 2>&1) || true
    url=$(grep -oE '"QueueUrl": *"[^"]*"' <<<"$resp" | sed -E 's/.*"([^"]*)"$/\1/' || true)
    if [[ -n $url ]]; then
      echo "$url"
    else
      warn "CreateQueue $name failed: $resp"; rc=1
    fi
  done
  return "$rc"
}

main() {
  local cmd=${1:-up}
  (( $# > 0 )) && shift
  case $cmd in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    queues) cmd_queues "$@" ;;
    -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
    *) die "unknown subcommand '$cmd' (up, down, status, env, queues NAME...)" ;;
  esac
}

main "$@"
