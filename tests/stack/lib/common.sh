# Shared settings and helpers for the local test stack. Sourced, never run.
# shellcheck shell=bash

# Binaries and downloaded artifacts, keyed by version, survive between runs and clones.
STREAMJOB_CACHE="${STREAMJOB_CACHE:-$HOME/.cache/streamjob}"
# Runtime state of the running stack: data dirs, pid files, logs, certificates.
STREAMJOB_STATE="${STREAMJOB_STATE:-${TMPDIR:-/tmp}/streamjob-stack}"
STACK_BIN="$STREAMJOB_CACHE/bin"
STACK_LOGS="$STREAMJOB_STATE/logs"

mkdir -p "$STREAMJOB_CACHE" "$STACK_BIN" "$STREAMJOB_STATE" "$STACK_LOGS"

# shellcheck source=versions.env
source "$(dirname "${BASH_SOURCE[0]}")/versions.env"

log() { printf '[stack] %s\n' "$*" >&2; }

# die PART LOGFILE MESSAGE: fail naming the part that broke and where to look.
die() {
  local part="$1" logfile="$2"
  shift 2
  printf '[stack] ERROR (%s): %s\n' "$part" "$*" >&2
  if [[ -n "$logfile" && -f "$logfile" ]]; then
    printf '[stack] log: %s (last lines below)\n' "$logfile" >&2
    tail -n 20 "$logfile" >&2
  fi
  exit 1
}

# wait_until PART LOGFILE TIMEOUT_SECONDS COMMAND...: poll COMMAND until it succeeds.
wait_until() {
  local part="$1" logfile="$2" timeout="$3"
  shift 3
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      die "$part" "$logfile" "did not become ready within ${timeout}s (waiting for: $*)"
    fi
    sleep 0.5
  done
}

# pid_alive PIDFILE: true when the process recorded in PIDFILE runs.
pid_alive() {
  [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

# start_daemon NAME LOGFILE COMMAND...: start COMMAND in the background unless already running.
start_daemon() {
  local name="$1" logfile="$2"
  shift 2
  local pidfile="$STREAMJOB_STATE/$name.pid"
  if pid_alive "$pidfile"; then
    return 0
  fi
  setsid "$@" >>"$logfile" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

# stop_daemon NAME: TERM the process (and its group), then KILL after a grace period.
stop_daemon() {
  local pidfile="$STREAMJOB_STATE/$1.pid"
  pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  local pid
  pid="$(cat "$pidfile")"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# Go builds share one module and build cache inside STREAMJOB_CACHE, so a fresh machine
# rebuilds from the registries while later runs reuse the cache.
export GOMODCACHE="$STREAMJOB_CACHE/go/mod"
export GOCACHE="$STREAMJOB_CACHE/go/build"
export GOFLAGS="${GOFLAGS:-} -modcacherw"
export GOTOOLCHAIN=local
mkdir -p "$GOMODCACHE" "$GOCACHE"
