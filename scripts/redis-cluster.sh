#!/usr/bin/env bash
# A real Redis Cluster (or one plain node) on loopback, for kvsync's Redis backend tests and for
# trying the backend by hand. Debian's redis-server (7.0 on bookworm), installed when missing.
#
#   scripts/redis-cluster.sh install                  install redis-server + redis-cli from Debian
#                                                     (needs root; a no-op when both are present)
#   scripts/redis-cluster.sh start RUN_DIR [--single] [--port BASE]
#                                                     3 masters + 3 replicas on 127.0.0.1 (or one
#                                                     node without cluster mode: --single), each in
#                                                     RUN_DIR/node-PORT/; waits until the cluster
#                                                     is healthy; prints the seed URL on stdout
#   scripts/redis-cluster.sh stop RUN_DIR             stop every node by PID (TERM, then KILL)
#   scripts/redis-cluster.sh status RUN_DIR           one line per node: port, pid, role, state
#   scripts/redis-cluster.sh env RUN_DIR              KVSYNC_REDIS_URL=redis://127.0.0.1:PORT
#   scripts/redis-cluster.sh wait RUN_DIR [SECONDS]   wait until healthy (below), default 30 s
#   scripts/redis-cluster.sh kill-node RUN_DIR PORT   kill -9 one node (a failover test's fault)
#   scripts/redis-cluster.sh restart-node RUN_DIR PORT
#                                                     start a killed node again from its own dir
#                                                     (its nodes.conf: it rejoins the cluster)
#
# Healthy means, on every node: cluster_state:ok, all 16384 slots assigned and ok, every node
# known and none flagged fail or pfail, and every replica's link to its master up (a replica
# that never synced would not be promoted). Polled with a deadline, never a fixed sleep.
#
# Ports: BASE .. BASE+5 for clients, +10000 for the cluster bus. Without --port (or
# KVSYNC_REDIS_PORT) a free range is picked between 10000 and 20000 (bus ports stay below the
# kernel's ephemeral range) and another one tried if a node cannot bind. Node settings:
# cluster-enabled, no persistence (appendonly no, save ""), cluster-node-timeout 1000 ms so a
# failover takes seconds, repl-diskless-sync-delay 0 so replicas sync at once; everything else is
# Redis's default: the backend must work on a stock cluster.
set -euo pipefail

CACHE="${KVSYNC_TEST_CACHE:-$HOME/.cache/kvsync-test}"
NODE_TIMEOUT_MS="${KVSYNC_REDIS_NODE_TIMEOUT_MS:-1000}"
CLUSTER_NODES=6 # 3 masters + 3 replicas

log() { echo "redis-cluster.sh: $*" >&2; }
die() {
    log "$*"
    exit 1
}

install() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "redis-server is missing; install it as root: apt-get install redis-server"
    mkdir -p "$CACHE"
    # One installer at a time: parallel test runs share the machine's package database.
    exec 9>"$CACHE/.redis-install.lock"
    flock 9
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        log "installing redis-server from Debian"
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            redis-server redis-tools >&2
    fi
    exec 9>&-
    command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after apt-get"
    # Debian's package enables and starts its own instance on 6379; the tests use their own nodes.
    log "$(redis-server --version)"
}

run_dir() {
    [ -n "${1:-}" ] || die "usage: $0 $CMD RUN_DIR"
    mkdir -p "$1"
    (cd "$1" && pwd)
}

ports() { # RUN_DIR: the nodes' client ports, one per line
    [ -f "$1/ports" ] || die "no cluster in $1 (no ports file)"
    cat "$1/ports"
}

alive() { # PID: true while the process runs (a zombie nobody reaped counts as gone)
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

node_pid() { # RUN_DIR PORT
    cat "$1/node-$2/pid" 2>/dev/null || true
}

cli() { # PORT ARGS...
    local port="$1"
    shift
    redis-cli -h 127.0.0.1 -p "$port" "$@"
}

port_in_use() { # PORT: something listens there
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_base() { # COUNT: a base port with BASE .. BASE+COUNT-1 and their bus ports free
    local count="$1" base i try
    for try in $(seq 50); do
        base=$((10000 + (RANDOM * 32768 + RANDOM) % 9990))
        for ((i = 0; i < count; i++)); do
            if port_in_use $((base + i)) || port_in_use $((base + i + 10000)); then
                continue 2
            fi
        done
        echo "$base"
        return 0
    done
    die "no free port range after $try tries"
}

write_conf() { # RUN_DIR PORT MODE
    local dir="$1/node-$2"
    mkdir -p "$dir"
    {
        echo "port $2"
        echo "bind 127.0.0.1"
        echo "dir $dir"
        echo "logfile $dir/redis.log"
        echo "appendonly no"
        echo 'save ""'
        if [ "$3" = cluster ]; then
            echo "cluster-enabled yes"
            echo "cluster-config-file $dir/nodes.conf"
            echo "cluster-node-timeout $NODE_TIMEOUT_MS"
            # A replica's first sync starts at once instead of after the default 5 s wait for
            # more replicas: start-up and a killed node's return are seconds shorter.
            echo "repl-diskless-sync-delay 0"
        fi
    } >"$dir/redis.conf"
}

start_node() { # RUN_DIR PORT: start from the node's own config; wait until it answers PING
    local dir="$1/node-$2" pid deadline=$((SECONDS + 10))
    redis-server "$dir/redis.conf" </dev/null >/dev/null 2>&1 &
    pid=$!
    echo "$pid" >"$dir/pid"
    until [ "$(cli "$2" ping 2>/dev/null)" = PONG ]; do
        if ! alive "$pid"; then
            log "node $2 exited: $(tail -3 "$dir/redis.log" 2>/dev/null | tr '\n' ' ')"
            return 1
        fi
        [ "$SECONDS" -lt "$deadline" ] || {
            log "node $2 not answering after 10 s"
            return 1
        }
        sleep 0.05 # polling a foreign process: no event to wait on
    done
}

stop_pid() { # PID: TERM, wait up to 10 s, then KILL
    local pid="$1"
    [ -n "$pid" ] || return 0
    grep -qs redis-server "/proc/$pid/cmdline" || return 0 # gone, or the pid was reused
    kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 200); do
        alive "$pid" || return 0
        sleep 0.05 # waiting for a foreign process to exit
    done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    local run port
    run="$(run_dir "${1:-}")"
    [ -f "$run/ports" ] || return 0
    for port in $(ports "$run"); do
        stop_pid "$(node_pid "$run" "$port")"
        rm -f "$run/node-$port/pid"
    done
}

# Prints nothing and succeeds when healthy, else prints why not.
unhealthy() { # RUN_DIR
    local run="$1" port info nodes total
    total="$(ports "$run" | wc -l)"
    for port in $(ports "$run"); do
        info="$(cli "$port" cluster info 2>/dev/null | tr -d '\r')" || {
            echo "node $port not answering"
            return 0
        }
        for want in cluster_state:ok cluster_slots_assigned:16384 cluster_slots_ok:16384 \
            "cluster_known_nodes:$total"; do
            grep -qx "$want" <<<"$info" || {
                echo "node $port: not $want"
                return 0
            }
        done
        nodes="$(cli "$port" cluster nodes 2>/dev/null)"
        if awk '$3 ~ /fail/ {found=1} END {exit !found}' <<<"$nodes"; then
            echo "node $port sees a failing node"
            return 0
        fi
        if cli "$port" info replication 2>/dev/null | tr -d '\r' | grep -qx role:slave &&
            ! cli "$port" info replication 2>/dev/null | tr -d '\r' | grep -qx master_link_status:up; then
            echo "replica $port not synced with its master"
            return 0
        fi
    done
}

wait_healthy() { # RUN_DIR SECONDS
    local run="$1" deadline=$((SECONDS + ${2:-30})) why
    while why="$(unhealthy "$run")" && [ -n "$why" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "cluster not healthy after ${2:-30} s: $why"
            return 1
        fi
        sleep 0.05 # polling CLUSTER INFO: the cluster has no event to wait on
    done
}

launch() { # RUN_DIR BASE MODE COUNT: start the nodes (and form the cluster); fails if one cannot
    local run="$1" base="$2" mode="$3" count="$4" port addrs=()
    : >"$run/ports"
    for ((i = 0; i < count; i++)); do
        port=$((base + i))
        rm -rf "$run/node-$port"
        write_conf "$run" "$port" "$mode"
        echo "$port" >>"$run/ports"
        start_node "$run" "$port" || return 1
        addrs+=("127.0.0.1:$port")
    done
    [ "$mode" = cluster ] || return 0
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$run/create.log" 2>&1 || {
        log "redis-cli --cluster create failed: $(tail -5 "$run/create.log" | tr '\n' ' ')"
        return 1
    }
    wait_healthy "$run" 30
}

start() {
    local run mode=cluster base="${KVSYNC_REDIS_PORT:-}" count attempt
    run="$(run_dir "${1:-}")"
    shift || true
    while [ $# -gt 0 ]; do
        case "$1" in
        --single) mode=single ;;
        --port)
            base="${2:?--port needs a value}"
            shift
            ;;
        *) die "unknown option $1" ;;
        esac
        shift
    done
    install
    if [ -f "$run/ports" ]; then stop "$run"; fi
    count=$CLUSTER_NODES
    [ "$mode" = cluster ] || count=1
    for attempt in 1 2 3 4 5; do
        local try_base="$base"
        [ -n "$try_base" ] || try_base="$(pick_base "$count")" || die "no free port range"
        if launch "$run" "$try_base" "$mode" "$count"; then
            echo "$mode" >"$run/mode"
            echo "KVSYNC_REDIS_URL=redis://127.0.0.1:$try_base" >"$run/env"
            log "$mode ready: redis://127.0.0.1:$try_base ($count node(s) under $run)"
            echo "redis://127.0.0.1:$try_base"
            return 0
        fi
        stop "$run"
        [ -z "$base" ] || break # an explicit port is not moved
        log "attempt $attempt failed; trying other ports"
    done
    die "could not start the $mode nodes"
}

status() {
    local run port pid role state
    run="$(run_dir "${1:-}")"
    for port in $(ports "$run"); do
        pid="$(node_pid "$run" "$port")"
        if [ -n "$pid" ] && alive "$pid"; then
            role="$(cli "$port" info replication 2>/dev/null | tr -d '\r' | sed -n 's/^role://p')"
            state="$(cli "$port" cluster info 2>/dev/null | tr -d '\r' | sed -n 's/^cluster_state://p')"
            echo "127.0.0.1:$port pid=$pid role=${role:-?} cluster_state=${state:-none}"
        else
            echo "127.0.0.1:$port down"
        fi
    done
}

kill_node() { # RUN_DIR PORT
    local run pid
    run="$(run_dir "${1:-}")"
    [ -n "${2:-}" ] || die "usage: $0 kill-node RUN_DIR PORT"
    pid="$(node_pid "$run" "$2")"
    [ -n "$pid" ] && alive "$pid" || die "node $2 is not running"
    kill -9 "$pid"
    while alive "$pid"; do sleep 0.01; done # SIGKILL: gone within milliseconds
    rm -f "$run/node-$2/pid"
}

restart_node() { # RUN_DIR PORT
    local run
    run="$(run_dir "${1:-}")"
    [ -n "${2:-}" ] && [ -f "$run/node-$2/redis.conf" ] || die "no node $2 in $run"
    start_node "$run" "$2"
}

CMD="${1:-}"
case "$CMD" in
install) install ;;
start)
    shift
    start "$@"
    ;;
stop) stop "${2:-}" ;;
status) status "${2:-}" ;;
env) cat "$(run_dir "${2:-}")/env" ;;
wait) wait_healthy "$(run_dir "${2:-}")" "${3:-30}" ;;
kill-node) kill_node "${2:-}" "${3:-}" ;;
restart-node) restart_node "${2:-}" "${3:-}" ;;
*)
    echo "usage: $0 install | start RUN_DIR [--single] [--port BASE] | stop RUN_DIR | status RUN_DIR" \
        "| env RUN_DIR | wait RUN_DIR [SECONDS] | kill-node RUN_DIR PORT | restart-node RUN_DIR PORT" >&2
    exit 2
    ;;
esac
