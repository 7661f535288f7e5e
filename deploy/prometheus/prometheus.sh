#!/usr/bin/env bash
# A local Prometheus (Debian's `prometheus` binary) for `make up` / `make down`.
#
#   deploy/prometheus/prometheus.sh start [PORT]    start on PORT (default 9090), wait until ready
#   deploy/prometheus/prometheus.sh stop [PORT]     stop it
#   deploy/prometheus/prometheus.sh status [PORT]
#
# It scrapes the local worker (127.0.0.1:6066) and collector (127.0.0.1:8080) with
# deploy/prometheus/prometheus.local.yml, and evaluates targets.yml and alerts.yml.
# State (TSDB, log, pid) lives under .run/prometheus-PORT/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
config="$here/prometheus.local.yml"

usage() {
  echo "usage: $0 start|stop|status [PORT]" >&2
  exit 2
}

[ $# -ge 1 ] || usage
cmd="$1"
port="${2:-9090}"
[[ "$port" =~ ^[0-9]+$ ]] || { echo "prometheus.sh: PORT must be a number, got '$port'" >&2; exit 2; }
dir="$root/.run/prometheus-$port"
pidfile="$dir/prometheus.pid"
log="$dir/prometheus.log"
url="http://127.0.0.1:$port"

running_pid() {
  [ -f "$pidfile" ] || return 1
  local pid
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # a stale pid file whose pid now belongs to something else
  if [ -r "/proc/$pid/cmdline" ]; then
    local arg0
    arg0="$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -n 1)"
    [[ "$(basename "$arg0")" == prometheus* ]] || return 1
  fi
  echo "$pid"
}

ready() {
  curl -fsS -o /dev/null --max-time 2 "$url/-/ready" 2>/dev/null
}

start() {
  local bin pid
  bin="$(command -v prometheus || true)"
  if [ -z "$bin" ]; then
    echo "prometheus.sh: no 'prometheus' binary; run 'make system-deps' (Debian package prometheus)" >&2
    exit 1
  fi
  if pid="$(running_pid)"; then
    echo "prometheus already running (pid $pid): $url"
    exit 0
  fi
  if ready; then
    echo "prometheus.sh: port $port already answers /-/ready but was not started by this script" >&2
    exit 1
  fi
  mkdir -p "$dir/data"
  rm -f "$pidfile"
  # Own session, so it outlives the shell that ran `make up`; the pid file holds
  # prometheus's own pid (exec).
  setsid bash -c 'echo $$ > "$1"; shift; exec "$@"' _ "$pidfile" \
    "$bin" \
    --config.file="$config" \
    --storage.tsdb.path="$dir/data" \
    --storage.tsdb.retention.time=7d \
    --web.listen-address="127.0.0.1:$port" \
    --web.enable-lifecycle \
    >"$log" 2>&1 </dev/null &
  for _ in $(seq 1 150); do
    if ready; then
      echo "prometheus ready: $url (alerts: $url/alerts, log: ${log#"$root"/})"
      return 0
    fi
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      break  # exited: the log says why
    fi
    sleep 0.2
  done
  echo "prometheus.sh: prometheus did not become ready on port $port; last lines of $log:" >&2
  tail -n 20 "$log" >&2 || true
  stop_pid
  exit 1
}

stop_pid() {
  local pid
  pid="$(running_pid)" || { rm -f "$pidfile"; return 1; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    sleep 0.1
  done
  echo "prometheus.sh: pid $pid did not stop in 10s, killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  return 0
}

stop() {
  if stop_pid; then
    echo "prometheus stopped (port $port)"
  else
    echo "prometheus not running (port $port)"
  fi
}

status() {
  local pid
  if pid="$(running_pid)"; then
    echo "prometheus running (pid $pid): $url"
  else
    echo "prometheus not running (port $port)"
    exit 1
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
