#!/usr/bin/env bash
# A local Redis for development and tests: in memory only (no RDB, no AOF), on 127.0.0.1.
#
#   deploy/redis/redis.sh start [PORT]   start redis-server, wait for PING, print redis://127.0.0.1:PORT/0
#   deploy/redis/redis.sh stop [PORT]    SIGTERM, then SIGKILL after REDIS_STOP_TIMEOUT seconds
#   deploy/redis/redis.sh status [PORT]  "running ..." (exit 0) or "not running" (exit 1)
#
# Environment: REDIS_PORT (default 6379), REDIS_DIR (default .run/redis-PORT in the repository),
# REDIS_STOP_TIMEOUT (default 10), REDIS_PARENT_PID (when set, a watchdog stops the server once
# that process is gone, so that a killed test run leaves no server behind).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

die() { echo "redis.sh: $*" >&2; exit 1; }
log() { echo "redis.sh: $*" >&2; }

resolve_port() {
    local port="${1:-${REDIS_PORT:-6379}}"
    [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] \
        || die "port must be a number 1-65535, got '$port'"
    echo "$port"
}

resolve_dir() { # port [create]
    local dir="${REDIS_DIR:-$REPO/.run/redis-$1}"
    if [ "${2:-}" = create ]; then mkdir -p "$dir"; fi
    if [ -d "$dir" ]; then (cd "$dir" && pwd); else echo "$dir"; fi
}

read_pid() { [ -f "$1" ] && tr -dc '0-9' <"$1" || true; }

is_our_server() { # pid
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null && ps -ww -o args= -p "$1" 2>/dev/null | grep -q 'redis-server'
}

# exit 0 when a Redis on 127.0.0.1:$1 answers PING with PONG
pong() (
    reply=""
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || true
    [ "${reply%$'\r'}" = "+PONG" ]
)

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

cmd_start() {
    local port dir pidfile pid ticks
    port="$(resolve_port "${1:-}")"
    command -v redis-server >/dev/null 2>&1 \
        || die "redis-server not found (Debian: apt-get install redis-server, or run deploy/system-deps.sh)"
    dir="$(resolve_dir "$port" create)"
    pidfile="$dir/redis.pid"
    pid="$(read_pid "$pidfile")"
    if is_our_server "$pid" && pong "$port" 2>/dev/null; then
        log "already running (pid $pid, dir $dir)"
        echo "redis://127.0.0.1:$port/0"
        return 0
    fi
    rm -f "$pidfile"
    if port_open "$port"; then
        die "port $port is already in use by another process; pick another: $0 start PORT"
    fi
    # REDIS_APPENDONLY=yes: what Redis acknowledged survives its restart (appendfsync everysec)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly "${REDIS_APPENDONLY:-no}" --daemonize yes \
        --pidfile "$pidfile" --dir "$dir" --logfile "$dir/redis.log" </dev/null >/dev/null 2>&1 \
        || die "redis-server failed to start; see $dir/redis.log"
    ticks=100
    until pong "$port" 2>/dev/null; do
        ticks=$((ticks - 1))
        if [ $ticks -le 0 ]; then
            tail -n 20 "$dir/redis.log" >&2 2>/dev/null || true
            die "redis-server did not answer PING on 127.0.0.1:$port within 10s; see $dir/redis.log"
        fi
        sleep 0.1
    done
    ticks=50
    while [ ! -s "$pidfile" ] && [ $ticks -gt 0 ]; do sleep 0.02; ticks=$((ticks - 1)); done
    pid="$(read_pid "$pidfile")"
    if [ -n "${REDIS_PARENT_PID:-}" ] && [ -n "$pid" ]; then
        [[ "$REDIS_PARENT_PID" =~ ^[0-9]+$ ]] || die "REDIS_PARENT_PID must be a process id, got '$REDIS_PARENT_PID'"
        setsid bash -c '
            while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
            kill -TERM "$2" 2>/dev/null || true
        ' redis-watchdog "$REDIS_PARENT_PID" "$pid" </dev/null >/dev/null 2>&1 &
        echo $! >"$dir/watchdog.pid"
    fi
    log "ready on 127.0.0.1:$port (pid $pid, dir $dir)"
    echo "redis://127.0.0.1:$port/0"
}

cmd_stop() {
    local port dir pidfile pid ticks watchdog
    port="$(resolve_port "${1:-}")"
    dir="$(resolve_dir "$port")"
    pidfile="$dir/redis.pid"
    pid="$(read_pid "$pidfile")"
    if ! is_our_server "$pid"; then
        rm -f "$pidfile"
        log "no redis-server running for port $port (dir $dir)"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    ticks=$(( ${REDIS_STOP_TIMEOUT:-10} * 10 ))
    while kill -0 "$pid" 2>/dev/null && [ $ticks -gt 0 ]; do sleep 0.1; ticks=$((ticks - 1)); done
    if kill -0 "$pid" 2>/dev/null; then
        log "redis-server (pid $pid) still running after ${REDIS_STOP_TIMEOUT:-10}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    watchdog="$(read_pid "$dir/watchdog.pid")"
    if [ -n "$watchdog" ]; then kill -TERM "$watchdog" 2>/dev/null || true; fi
    rm -f "$pidfile" "$dir/watchdog.pid"
    log "stopped redis-server on port $port (pid $pid)"
}

cmd_status() {
    local port dir pid
    port="$(resolve_port "${1:-}")"
    dir="$(resolve_dir "$port")"
    pid="$(read_pid "$dir/redis.pid")"
    if is_our_server "$pid"; then
        echo "running: redis://127.0.0.1:$port/0 (pid $pid, dir $dir)"
        return 0
    fi
    echo "not running: redis://127.0.0.1:$port/0 (dir $dir)"
    return 1
}

usage() {
    sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) shift; cmd_status "$@" ;;
    *) usage ;;
esac
