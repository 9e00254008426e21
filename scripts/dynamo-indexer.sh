#!/usr/bin/env bash
# Installs the peer the serving benchmark compares kvsync with, NVIDIA Dynamo's standalone KV
# indexer (PyPI ai-dynamo-runtime, `python -m dynamo.indexer`), idempotently, into its own venv
# under ~/.cache/kvsync-test/dynamo-venv (override the cache with KVSYNC_TEST_CACHE). Its own
# venv because it pins pydantic <= 2.13.5, which breaks the kubernetes client kvsync's .venv
# needs. A second run only checks the stamp. Prints the venv's python on stdout, progress on
# stderr.
#
#   scripts/dynamo-indexer.sh     install (or verify); then run
#   "$(scripts/dynamo-indexer.sh)" -m dynamo.indexer --port P --block-size 16
#
# Needs: python3 (>= 3.10, with venv), flock.
set -euo pipefail

CACHE="${KVSYNC_TEST_CACHE:-$HOME/.cache/kvsync-test}"
VENV="$CACHE/dynamo-venv"
DYNAMO_PIP="ai-dynamo-runtime==1.6.1"

say() { echo "dynamo-indexer.sh: $*" >&2; }

mkdir -p "$CACHE"
# One installer at a time: parallel sessions share the cache.
exec 9>"$CACHE/.dynamo.lock"
flock 9

# The stamp names the pinned requirement, so a new pin reinstalls.
stamp="$VENV/.installed-$(echo "$DYNAMO_PIP" | cksum | cut -d' ' -f1)"
if [[ ! -f "$stamp" ]]; then
    say "installing $DYNAMO_PIP into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$DYNAMO_PIP"
    touch "$stamp"
fi
# A stamp alone does not prove the module imports (a half-deleted venv): check it every time.
if ! "$VENV/bin/python" -c 'import dynamo.indexer' 2>/dev/null; then
    say "dynamo.indexer does not import from $VENV; remove it and run again"
    exit 1
fi
echo "$VENV/bin/python"
