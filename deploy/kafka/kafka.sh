#!/usr/bin/env bash
# A local Apache Kafka 4.1.1 broker (KRaft, broker+controller in one JVM) from Maven Central,
# without Docker.
#
#   deploy/kafka/kafka.sh fetch          jars into deploy/kafka/jars/ (once; a stamp makes reruns instant)
#   deploy/kafka/kafka.sh start [PORT]   start a broker, wait until it answers metadata, print 127.0.0.1:PORT
#   deploy/kafka/kafka.sh stop [PORT]    SIGTERM, then SIGKILL after KAFKA_STOP_TIMEOUT seconds
#   deploy/kafka/kafka.sh status [PORT]  "running ..." (exit 0) or "not running" (exit 1)
#   deploy/kafka/kafka.sh cluster start [N]  N brokers (default 3) in one KRaft quorum, replication
#                                         min(3, N), min.insync.replicas min(2, N); prints host:port,...
#   deploy/kafka/kafka.sh cluster stop|status
#
# A node of a cluster is also a broker of its own to `start`/`stop`/`status PORT` (with KAFKA_DATA_DIR set
# to its directory, KAFKA_CLUSTER_DIR/node-I): its data dir keeps its place in the cluster (node.env).
#
# Environment:
#   KAFKA_PORT           default port (9092)
#   KAFKA_DATA_DIR       data dir (default .run/kafka-PORT in the repository); a restart on the
#                        same dir keeps topics, messages and committed offsets
#   KAFKA_HEAP           JVM heap options (default -Xmx512m)
#   KAFKA_START_TIMEOUT  seconds to wait for the broker (default 60)
#   KAFKA_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (default 30)
#   KAFKA_EXTRA_PROPERTIES  extra server.properties lines, newline-separated (they win over the defaults)
#   KAFKA_PARENT_PID     when set, a watchdog stops the broker once that process is gone (tests use
#                        it so that a killed test run leaves no broker behind)
#   KAFKA_CLUSTER_DIR    the cluster's directory (default .run/kafka-cluster); a restart keeps its ports
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml" | head -n 1)"
REPO="$(cd "$HERE/../.." && pwd)"
JARS="$HERE/jars"
STAMP="$JARS/.fetched"

die() { echo "kafka.sh: $*" >&2; exit 1; }
log() { echo "kafka.sh: $*" >&2; }
now_ms() {
    if [ -n "${EPOCHREALTIME:-}" ]; then local t="${EPOCHREALTIME/[.,]/}"; echo "${t:0:${#t}-3}"; else date +%s%3N; fi
}

need_java() {
    command -v java >/dev/null 2>&1 \
        || die "java not found: Apache Kafka $KAFKA_VERSION needs Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless, or run deploy/system-deps.sh)"
    local version major
    version="$(java -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')"
    major="${version%%.*}"
    [ "$major" = "1" ] && major="$(echo "$version" | cut -d. -f2)"
    if [[ "$major" =~ ^[0-9]+$ ]] && [ "$major" -lt 17 ]; then
        die "java $version found, but Apache Kafka $KAFKA_VERSION needs Java 17 or newer"
    fi
}

need_python() {
    command -v python3 >/dev/null 2>&1 || die "python3 not found: it is used to check that the broker answers"
}

pom_hash() { sha256sum "$HERE/pom.xml" | cut -d' ' -f1; }

jars_ready() { [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(pom_hash)" ]; }

cmd_fetch() {
    if jars_ready; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 \
        || die "mvn not found: Maven fetches Apache Kafka $KAFKA_VERSION from Maven Central (Debian: apt-get install maven, or run deploy/system-deps.sh)"
    need_java
    mkdir -p "$REPO/.run"
    # one fetch at a time (parallel test sessions); the second one finds the stamp
    exec 9>"$REPO/.run/kafka-fetch.lock"
    if command -v flock >/dev/null 2>&1; then flock 9; fi
    if jars_ready; then
        exec 9>&-
        return 0
    fi
    local started tmp out rc
    started="$(now_ms)"
    tmp="$(mktemp -d "$REPO/.run/kafka-fetch.XXXXXX")"
    out="$tmp/maven.log"
    log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central ..."
    set +e
    mvn -B -q -Dstyle.color=never -f "$HERE/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp/jars" >"$out" 2>&1
    rc=$?
    set -e
    if [ $rc -ne 0 ] || ! compgen -G "$tmp/jars/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null; then
        echo "kafka.sh: Maven could not fetch Apache Kafka $KAFKA_VERSION (mvn exit status $rc)." >&2
        echo "kafka.sh: it needs Maven Central (https://repo.maven.apache.org) or the jars in ~/.m2; its output:" >&2
        tail -n 40 "$out" >&2 || true
        rm -rf "$tmp"
        exit 1
    fi
    rm -rf "$JARS"
    mv "$tmp/jars" "$JARS"
    rm -rf "$tmp"
    pom_hash >"$STAMP"
    exec 9>&-
    log "$(find "$JARS" -name '*.jar' | wc -l | tr -d ' ') jars in $JARS ($(( ($(now_ms) - started) / 1000 ))s)"
}

# --- helpers for start/stop/status -------------------------------------------------------

resolve_port() {
    local port="${1:-${KAFKA_PORT:-9092}}"
    [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] \
        || die "port must be a number 1-65535, got '$port'"
    echo "$port"
}

resolve_data_dir() { # port [create]
    local dir="${KAFKA_DATA_DIR:-$REPO/.run/kafka-$1}"
    if [ "${2:-}" = create ]; then mkdir -p "$dir"; fi
    if [ -d "$dir" ]; then (cd "$dir" && pwd); else echo "$dir"; fi
}

# exit 0 when a Kafka broker on 127.0.0.1:$1 answers a Metadata request with at least one broker,
# 2 when the port is closed, other codes when it is open but not (yet) a working broker
broker_answers() {
    python3 - "$1" <<'PY'
import socket, struct, sys

try:
    sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
except OSError:
    sys.exit(2)
with sock:
    sock.settimeout(5)
    client = b"kafka.sh"
    # Metadata v4: all topics (null array), no auto-creation
    body = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", -1, 0)
    try:
        sock.sendall(struct.pack(">i", len(body)) + body)

        def read(n):
            buf = b""
            while len(buf) < n:
                chunk = sock.recv(n - len(buf))
                if not chunk:
                    raise EOFError
                buf += chunk
            return buf

        (size,) = struct.unpack(">i", read(4))
        correlation, _throttle, brokers = struct.unpack(">iii", read(size)[:12])
    except (OSError, EOFError, struct.error):
        sys.exit(3)
sys.exit(0 if correlation == 7 and brokers > 0 else 4)
PY
}

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

is_our_broker() { # pid
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null && ps -ww -o args= -p "$1" 2>/dev/null | grep -q 'kafka\.Kafka'
}

read_pid() { [ -f "$1" ] && tr -dc '0-9' <"$1" || true; }

write_log4j() { # file, log file
    cat >"$1" <<EOF
# written by deploy/kafka/kafka.sh
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $2
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.clients.name = org.apache.kafka
logger.clients.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

write_log4j_tools() { # file
    cat >"$1" <<EOF
# written by deploy/kafka/kafka.sh: for StorageTool
status = warn
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

write_properties() { # file, port, controller port, data dir
    # a node of a cluster: its id, the quorum and the replication come from its node.env (`cluster start`)
    local node_id="${KAFKA_NODE_ID:-1}" voters="${KAFKA_QUORUM_VOTERS:-1@127.0.0.1:$3}"
    local replication="${KAFKA_REPLICATION:-1}" min_isr="${KAFKA_MIN_ISR:-1}"
    cat >"$1" <<EOF
# written by deploy/kafka/kafka.sh at each start; a KRaft broker (broker and controller in one JVM) for
# development and tests: node $node_id of the quorum $voters
process.roles=broker,controller
node.id=$node_id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$2,CONTROLLER://127.0.0.1:$3
advertised.listeners=PLAINTEXT://127.0.0.1:$2
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$4/logs
num.partitions=1
auto.create.topics.enable=true
default.replication.factor=$replication
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replication
transaction.state.log.replication.factor=$replication
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replication
share.coordinator.state.topic.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
# keep everything: tests and backfills produce records with old timestamps
log.retention.ms=-1
EOF
    if [ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]; then
        printf '# KAFKA_EXTRA_PROPERTIES\n%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$1"
    fi
}

start_watchdog() { # broker pid, data dir
    local parent="${KAFKA_PARENT_PID:-}"
    [ -n "$parent" ] || return 0
    [[ "$parent" =~ ^[0-9]+$ ]] || die "KAFKA_PARENT_PID must be a process id, got '$parent'"
    setsid bash -c '
        while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
        if kill -0 "$2" 2>/dev/null; then
            kill -TERM "$2" 2>/dev/null
            for _ in $(seq 1 150); do kill -0 "$2" 2>/dev/null || exit 0; sleep 0.2; done
            kill -KILL "$2" 2>/dev/null
        fi
    ' kafka-watchdog "$parent" "$1" </dev/null >/dev/null 2>&1 &
    echo $! >"$2/watchdog.pid"
}

cmd_start() {
    local port data pidfile pid started cport java_args tool cluster_id deadline rc elapsed
    port="$(resolve_port "${1:-}")"
    data="$(resolve_data_dir "$port" create)"
    pidfile="$data/kafka.pid"
    need_python
    if [ -f "$data/node.env" ]; then  # a node of a cluster: its id, quorum and replication
        # shellcheck disable=SC1091
        . "$data/node.env"
        [ "$KAFKA_PORT" = "$port" ] || die "$data is node $KAFKA_NODE_ID of a cluster on port $KAFKA_PORT, not $port"
    fi

    pid="$(read_pid "$pidfile")"
    if is_our_broker "$pid"; then
        if broker_answers "$port"; then
            log "already running (pid $pid, data $data)"
            echo "127.0.0.1:$port"
            return 0
        fi
        die "a broker (pid $pid) runs on data dir $data but does not answer on port $port; run: $0 stop $port"
    fi
    rm -f "$pidfile"
    if port_open "$port"; then
        die "port $port is already in use by another process; pick another: $0 start PORT"
    fi

    cmd_fetch
    need_java
    started="$(now_ms)"

    # the controller port is kept in the data dir so that a restart uses the same quorum address
    cport="$(read_pid "$data/controller.port")"
    if [ -z "$cport" ] || [ "$cport" = "$port" ] || port_open "$cport"; then
        cport="$(free_port)"
        while [ "$cport" = "$port" ]; do cport="$(free_port)"; done
        echo "$cport" >"$data/controller.port"
    fi
    write_properties "$data/server.properties" "$port" "$cport" "$data"
    write_log4j "$data/log4j2.properties" "$data/server.log"
    java_args=(-cp "$JARS/*" "-Dlog4j2.configurationFile=$data/log4j2.properties" -Djava.awt.headless=true)

    if [ ! -f "$data/logs/meta.properties" ]; then
        # short-lived tools: quick JIT, warnings only, to format.log
        write_log4j_tools "$data/log4j2-tools.properties"
        tool=(java -XX:TieredStopAtLevel=1 -cp "$JARS/*" "-Dlog4j2.configurationFile=$data/log4j2-tools.properties"
              kafka.tools.StorageTool)
        cluster_id="${KAFKA_CLUSTER_ID:-$("${tool[@]}" random-uuid 2>>"$data/format.log" | tail -n 1)}"
        [ -n "$cluster_id" ] || die "kafka.tools.StorageTool random-uuid printed nothing; see $data/format.log"
        if ! "${tool[@]}" format -t "$cluster_id" -c "$data/server.properties" >>"$data/format.log" 2>&1; then
            tail -n 20 "$data/format.log" >&2
            die "formatting the log dir $data/logs failed; see $data/format.log"
        fi
    fi

    # own session: a Ctrl-C in the terminal must not kill the broker before its clients shut down
    # shellcheck disable=SC2016
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' kafka-start "$pidfile" \
        java ${KAFKA_HEAP:--Xmx512m} -XX:+UseG1GC "${java_args[@]}" kafka.Kafka "$data/server.properties" \
        </dev/null >"$data/kafka.out" 2>&1 &
    for _ in $(seq 1 50); do [ -s "$pidfile" ] && break; sleep 0.02; done
    pid="$(read_pid "$pidfile")"
    [ -n "$pid" ] || die "the broker did not start; see $data/kafka.out"
    start_watchdog "$pid" "$data"

    deadline=$(( $(now_ms) + ${KAFKA_START_TIMEOUT:-60} * 1000 ))
    while true; do
        rc=0
        broker_answers "$port" || rc=$?
        [ $rc -eq 0 ] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "kafka.sh: the broker exited during start-up; last lines of $data/server.log and kafka.out:" >&2
            tail -n 30 "$data/server.log" "$data/kafka.out" >&2 2>/dev/null || true
            rm -f "$pidfile"
            exit 1
        fi
        if [ "$(now_ms)" -ge "$deadline" ]; then
            echo "kafka.sh: the broker (pid $pid) did not answer on 127.0.0.1:$port within ${KAFKA_START_TIMEOUT:-60}s; last lines of $data/server.log:" >&2
            tail -n 30 "$data/server.log" >&2 2>/dev/null || true
            stop_pid "$pid" "$pidfile" "$data" 10
            exit 1
        fi
        sleep 0.1
    done
    elapsed=$(( $(now_ms) - started ))
    log "ready on 127.0.0.1:$port in $((elapsed / 1000)).$(printf '%03d' $((elapsed % 1000)))s (pid $pid, data $data)"
    echo "127.0.0.1:$port"
}

stop_pid() { # pid, pidfile, data dir, timeout seconds
    local pid="$1" ticks
    kill -TERM "$pid" 2>/dev/null || true
    ticks=$(( $4 * 10 ))
    while kill -0 "$pid" 2>/dev/null && [ $ticks -gt 0 ]; do sleep 0.1; ticks=$((ticks - 1)); done
    if kill -0 "$pid" 2>/dev/null; then
        log "broker (pid $pid) still running after ${4}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    local watchdog
    watchdog="$(read_pid "$3/watchdog.pid")"
    [ -n "$watchdog" ] && kill -TERM "$watchdog" 2>/dev/null || true
    rm -f "$2" "$3/watchdog.pid"
}

cmd_stop() {
    local port data pidfile pid
    port="$(resolve_port "${1:-}")"
    data="$(resolve_data_dir "$port")"
    pidfile="$data/kafka.pid"
    pid="$(read_pid "$pidfile")"
    if ! is_our_broker "$pid"; then
        rm -f "$pidfile"
        log "no broker running for port $port (data $data)"
        return 0
    fi
    stop_pid "$pid" "$pidfile" "$data" "${KAFKA_STOP_TIMEOUT:-30}"
    log "stopped broker on port $port (pid $pid)"
}

cmd_status() {
    local port data pid
    port="$(resolve_port "${1:-}")"
    data="$(resolve_data_dir "$port")"
    pid="$(read_pid "$data/kafka.pid")"
    if is_our_broker "$pid"; then
        if broker_answers "$port"; then
            echo "running: 127.0.0.1:$port (pid $pid, data $data)"
        else
            echo "starting or unhealthy: 127.0.0.1:$port (pid $pid, data $data)"
        fi
        return 0
    fi
    echo "not running: 127.0.0.1:$port (data $data)"
    return 1
}

# --- a cluster of N nodes, each a broker and a voter of the controller quorum -----------------------------

cluster_dir() { echo "${KAFKA_CLUSTER_DIR:-$REPO/.run/kafka-cluster}"; }

cluster_nodes() { # the node directories of the cluster, in node order
    local dir
    dir="$(cluster_dir)"
    [ -d "$dir" ] || return 0
    find "$dir" -mindepth 2 -maxdepth 2 -name node.env -printf '%h\n' | sort -V
}

node_port() { (. "$1/node.env" && echo "$KAFKA_PORT"); }

new_cluster() { # n, dir: ports, the quorum and one cluster id, kept in each node's node.env
    local n="$1" dir="$2" ports=() cports=() voters="" cluster_id i node
    cmd_fetch
    need_java
    mkdir -p "$dir"
    while [ ${#ports[@]} -lt $((2 * n)) ]; do
        i="$(free_port)"
        [[ " ${ports[*]} " == *" $i "* ]] || ports+=("$i")
    done
    cports=("${ports[@]:n}")
    ports=("${ports[@]:0:n}")
    for i in $(seq 1 "$n"); do voters+="${voters:+,}$i@127.0.0.1:${cports[$((i - 1))]}"; done
    cluster_id="$(java -XX:TieredStopAtLevel=1 -cp "$JARS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    [ -n "$cluster_id" ] || die "kafka.tools.StorageTool random-uuid printed nothing"
    for i in $(seq 1 "$n"); do
        node="$dir/node-$i"
        mkdir -p "$node"
        echo "${cports[$((i - 1))]}" >"$node/controller.port"
        cat >"$node/node.env" <<EOF
KAFKA_PORT=${ports[$((i - 1))]}
KAFKA_NODE_ID=$i
KAFKA_QUORUM_VOTERS=$voters
KAFKA_CLUSTER_ID=$cluster_id
KAFKA_REPLICATION=$((n < 3 ? n : 3))
KAFKA_MIN_ISR=$((n < 2 ? n : 2))
EOF
    done
}

cmd_cluster_start() {
    local n="${1:-3}" dir nodes=() node pids=() pid failed=0 bootstrap=""
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || die "cluster size must be a number >= 1, got '$n'"
    dir="$(cluster_dir)"
    mapfile -t nodes < <(cluster_nodes)
    if [ ${#nodes[@]} -eq 0 ]; then
        new_cluster "$n" "$dir"
        mapfile -t nodes < <(cluster_nodes)
    fi
    # every node at once: none answers before a majority of the quorum runs
    for node in "${nodes[@]}"; do
        KAFKA_DATA_DIR="$node" "${BASH_SOURCE[0]}" start "$(node_port "$node")" >/dev/null &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    [ $failed -eq 0 ] || die "a node of the cluster in $dir did not start (see the lines above)"
    for node in "${nodes[@]}"; do bootstrap+="${bootstrap:+,}127.0.0.1:$(node_port "$node")"; done
    log "cluster of ${#nodes[@]} ready: $bootstrap"
    echo "$bootstrap"
}

cmd_cluster_status() {
    local node rc=0
    for node in $(cluster_nodes); do
        KAFKA_DATA_DIR="$node" "${BASH_SOURCE[0]}" status "$(node_port "$node")" || rc=1
    done
    return $rc
}

cmd_cluster_stop() { # every node at once: the last one alone would wait for a quorum to shut down cleanly
    local node pids=() pid rc=0
    for node in $(cluster_nodes); do
        KAFKA_DATA_DIR="$node" "${BASH_SOURCE[0]}" stop "$(node_port "$node")" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    return $rc
}

cmd_cluster() {
    case "${1:-}" in
        start) shift; cmd_cluster_start "$@" ;;
        stop) cmd_cluster_stop ;;
        status) cmd_cluster_status ;;
        *) usage ;;
    esac
}

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

case "${1:-}" in
    fetch) cmd_fetch ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) shift; cmd_status "$@" ;;
    cluster) shift; cmd_cluster "$@" ;;
    *) usage ;;
esac
