#!/usr/bin/env bash
# A real kube-apiserver + etcd on loopback for the kvsync e2e tier, without Docker.
#
#   scripts/kube-apiserver.sh build          install etcd/Go from Debian, build kube-apiserver once
#                                            (cached under ~/.cache/kvsync-test/; a second run is instant)
#   scripts/kube-apiserver.sh start RUN_DIR  start etcd + apiserver on 127.0.0.1, write RUN_DIR/kubeconfig,
#                                            RUN_DIR/env (ports, token) and the PID files; waits for /readyz
#   scripts/kube-apiserver.sh stop RUN_DIR   stop the apiserver then etcd, by PID
#   scripts/kube-apiserver.sh restart-apiserver RUN_DIR   stop and start only the apiserver (etcd keeps data)
#
# Debian bookworm's `kubernetes` source package (1.20.5+really1.20.2) carries the upstream tree with its
# vendored dependencies, so the build needs no network beyond Debian. Ports come from the environment
# (KVSYNC_ETCD_PORT, KVSYNC_APISERVER_PORT) so parallel runs can pick free ones.
set -euo pipefail

CACHE="${KVSYNC_TEST_CACHE:-$HOME/.cache/kvsync-test}"
APISERVER_BIN="$CACHE/bin/kube-apiserver"
SRC_SHA256="b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc"
SRC_TARBALL="kubernetes_1.20.5+really1.20.2.orig.tar.gz"

log() { echo "kube-apiserver.sh: $*" >&2; }

apt_install() {
    local missing=()
    for cmd_pkg in etcd:etcd-server etcdctl:etcd-client go:golang-go rsync:rsync make:make \
        openssl:openssl curl:curl; do
        command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || missing+=("${cmd_pkg#*:}")
    done
    [ -f /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

fetch_source() {
    local dir="$CACHE/src"
    mkdir -p "$dir"
    if [ ! -f "$dir/$SRC_TARBALL" ]; then
        if ! grep -qs 'deb-src' /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null; then
            log "enabling deb-src"
            sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources
            apt-get update -q
        fi
        (cd "$dir" && apt-get source --download-only kubernetes)
    fi
    echo "$SRC_SHA256  $dir/$SRC_TARBALL" | sha256sum -c --quiet -
}

build() {
    if [ -x "$APISERVER_BIN" ]; then
        log "cached: $APISERVER_BIN"
        return 0
    fi
    apt_install
    fetch_source
    local work="$CACHE/build"
    rm -rf "$work" && mkdir -p "$work/home"
    tar xzf "$CACHE/src/$SRC_TARBALL" -C "$work"
    cat >"$work/version.env" <<'V'
KUBE_GIT_COMMIT='faecb196815e248d3ecfb03c680a4507229c2a56'
KUBE_GIT_TREE_STATE='clean'
KUBE_GIT_VERSION='v1.20.2'
KUBE_GIT_MAJOR='1'
KUBE_GIT_MINOR='20'
V
    log "building kube-apiserver (several minutes, once)"
    # make, not `go build`: code generation runs in the make rules. GOPROXY=off: vendored tree only.
    (cd "$work/kubernetes-1.20.2" &&
        HOME="$work/home" GOPROXY=off KUBE_GIT_VERSION_FILE="$work/version.env" \
            make WHAT=cmd/kube-apiserver)
    mkdir -p "$CACHE/bin"
    cp "$work/kubernetes-1.20.2/_output/bin/kube-apiserver" "$APISERVER_BIN.tmp"
    mv "$APISERVER_BIN.tmp" "$APISERVER_BIN"
    rm -rf "$work"
    log "built $APISERVER_BIN"
}

ETCD_PORT="${KVSYNC_ETCD_PORT:-12379}"
APISERVER_PORT="${KVSYNC_APISERVER_PORT:-16443}"
ADMIN_TOKEN="kvsync-e2e-admin-token"

run_dir() {
    [ -n "${1:-}" ] || { echo "usage: $0 $CMD RUN_DIR" >&2; exit 2; }
    mkdir -p "$1"
    (cd "$1" && pwd)
}

wait_ready() { # RUN_DIR: poll /readyz until it answers ok, or fail after 60 s
    local run="$1" deadline=$((SECONDS + 60))
    until curl -sf --cacert "$run/certs/apiserver.crt" -H "Authorization: Bearer $ADMIN_TOKEN" \
        "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ] || ! kill -0 "$(cat "$run/apiserver.pid")" 2>/dev/null; then
            log "apiserver not ready; last log lines:"
            tail -20 "$run/apiserver.log" >&2
            return 1
        fi
        sleep 0.2 # polling a process we do not control; no event to wait on
    done
}

start_etcd() {
    local run="$1"
    etcd --name kvsync-e2e --data-dir "$run/etcd" --unsafe-no-fsync \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
        --initial-cluster "kvsync-e2e=http://127.0.0.1:$((ETCD_PORT + 1))" \
        >"$run/etcd.log" 2>&1 &
    echo $! >"$run/etcd.pid"
}

start_apiserver() { # RUN_DIR; extra flags from KVSYNC_APISERVER_ARGS (e.g. --watch-cache-sizes=pods#0)
    local run="$1"
    # shellcheck disable=SC2086  # word splitting of the extra flags is intended
    "$APISERVER_BIN" --etcd-servers="http://127.0.0.1:$ETCD_PORT" --bind-address=127.0.0.1 \
        --advertise-address=127.0.0.1 --secure-port="$APISERVER_PORT" --insecure-port=0 \
        --cert-dir="$run/certs" --token-auth-file="$run/tokens.csv" --authorization-mode=RBAC \
        --disable-admission-plugins=ServiceAccount --endpoint-reconciler-type=none \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$run/certs/sa.pub" \
        --service-account-signing-key-file="$run/certs/sa.key" \
        --service-cluster-ip-range=10.96.0.0/16 ${KVSYNC_APISERVER_ARGS:-} \
        >>"$run/apiserver.log" 2>&1 &
    echo $! >"$run/apiserver.pid"
    wait_ready "$run"
}

stop_pid() { # PID_FILE: TERM, wait up to 10 s, then KILL
    local file="$1" pid
    [ -f "$file" ] || return 0
    pid="$(cat "$file")"
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1 # waiting for a foreign process to exit
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

start() {
    local run
    run="$(run_dir "${1:-}")"
    [ -x "$APISERVER_BIN" ] || build
    apt_install # etcd, etcdctl, curl, openssl (a no-op when present)
    mkdir -p "$run/certs"
    [ -f "$run/certs/sa.key" ] || {
        openssl genrsa -out "$run/certs/sa.key" 2048 2>/dev/null
        openssl rsa -in "$run/certs/sa.key" -pubout -out "$run/certs/sa.pub" 2>/dev/null
    }
    echo "$ADMIN_TOKEN,kvsync-admin,kvsync-admin-uid,system:masters" >"$run/tokens.csv"
    start_etcd "$run"
    start_apiserver "$run"
    cat >"$run/kubeconfig" <<K
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://127.0.0.1:$APISERVER_PORT", certificate-authority: "$run/certs/apiserver.crt"}
users:
- name: admin
  user: {token: "$ADMIN_TOKEN"}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
K
    cat >"$run/env" <<E
KUBECONFIG=$run/kubeconfig
KVSYNC_E2E_SERVER=https://127.0.0.1:$APISERVER_PORT
KVSYNC_E2E_CA=$run/certs/apiserver.crt
KVSYNC_E2E_TOKEN=$ADMIN_TOKEN
KVSYNC_E2E_ETCD=http://127.0.0.1:$ETCD_PORT
E
    log "apiserver ready on https://127.0.0.1:$APISERVER_PORT (kubeconfig: $run/kubeconfig)"
}

stop() {
    local run
    run="$(run_dir "${1:-}")"
    stop_pid "$run/apiserver.pid"
    stop_pid "$run/etcd.pid"
}

restart_apiserver() {
    local run
    run="$(run_dir "${1:-}")"
    stop_pid "$run/apiserver.pid"
    start_apiserver "$run"
}

CMD="${1:-}"
case "$CMD" in
build) build ;;
start) start "${2:-}" ;;
stop) stop "${2:-}" ;;
restart-apiserver) restart_apiserver "${2:-}" ;;
*)
    echo "usage: $0 build | start RUN_DIR | stop RUN_DIR | restart-apiserver RUN_DIR" >&2
    exit 2
    ;;
esac
