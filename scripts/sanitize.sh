#!/usr/bin/env bash
# `make sanitize`: the C extension built with AddressSanitizer and UndefinedBehaviorSanitizer,
# then the tests that drive it (index, keys, decoder, ingest and API over real sockets) run
# against that build. Any out-of-bounds access, use after free or undefined behaviour in
# kvsync/csrc aborts the run. Leak checking is off: CPython's own allocations would drown it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TREE=build/sanitize
libasan=$(gcc -print-file-name=libasan.so)
libubsan=$(gcc -print-file-name=libubsan.so)
if [[ ! -e $libasan || ! -e $libubsan ]]; then
    echo "sanitize: gcc's libasan/libubsan are missing (Debian: libgcc-12-dev)" >&2
    exit 1
fi
rm -rf "$TREE" build/sanitize-temp
mkdir -p "$TREE"
# A copy of the package and the tests: run from there, `import kvsync` finds the sanitized
# module before the editable install's.
cp -r kvsync tests scripts pyproject.toml "$TREE"/  # scripts: the Redis test cluster
find "$TREE" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
LDFLAGS="-fsanitize=address,undefined" \
    "$PY" setup.py -q build_ext --build-lib "$TREE" --build-temp build/sanitize-temp --force
cd "$TREE"
LD_PRELOAD="$libasan:$libubsan" ASAN_OPTIONS=detect_leaks=0 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "../../$PY" -m pytest -q -p no:cacheprovider \
    tests/unit/test_keytable_model.py tests/unit/test_keys.py tests/unit/test_index.py \
    tests/unit/test_index_model.py tests/unit/test_index_contexts.py \
    tests/unit/test_index_fast_paths.py tests/unit/test_golden_index.py \
    tests/unit/test_decoder.py tests/unit/test_decoder_fuzz.py \
    tests/integration/test_subscribers.py tests/integration/test_subscribers_faults.py \
    tests/integration/test_api.py tests/integration/test_api_hostile.py
