# kvsync developer commands. `make test` is what CI runs (via .ci/run); `make demo` runs the
# embedded default: a simulated vLLM fleet on loopback with the daemon in front of it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install lint types arch unit test sanitize demo bench e2e chart clean

# The editable install also builds the C extension kvsync._native, in place (kvsync/_native*.so
# beside the Python sources, where the editable finder imports it from). setuptools goes into the
# venv as well, for the rule below.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77'
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# Then a change under kvsync/csrc/ (an edited, added or removed file) or to setup.py rebuilds just
# the extension, in place, before any target that runs kvsync. The file name carries the ABI tag of
# the venv's Python (python3's before the venv exists). --force: make has decided, and setuptools'
# own timestamp check would miss a change of flags in setup.py. In a new venv this repeats pip's
# build once (make saw no .so before pip ran): a second or two.
EXT_SUFFIX := $(shell $(if $(wildcard $(PY)),$(PY),python3) -c \
    'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
NATIVE := kvsync/_native$(EXT_SUFFIX)

$(NATIVE): $(wildcard kvsync/csrc kvsync/csrc/*) setup.py | $(STAMP)
	$(PY) setup.py -q build_ext --inplace --force

install: $(NATIVE)

lint: install
	$(VENV)/bin/ruff check kvsync tests benchmarks setup.py
	$(VENV)/bin/ruff format --check kvsync tests benchmarks setup.py

types: install
	$(VENV)/bin/mypy

arch: install
	$(VENV)/bin/lint-imports

unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test: lint types arch
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

# The C extension under AddressSanitizer + UndefinedBehaviorSanitizer, with the tests that drive
# it (scripts/sanitize.sh).
sanitize: install
	PY=$(PY) bash scripts/sanitize.sh

# Helm chart and image checks with the real tools (helm, kubernetes-validate, hadolint), installed
# into ~/.cache/kvsync-test by scripts/tools.sh. A failed install fails here (in `make test` the
# chart tests would only skip).
chart: install
	bash scripts/tools.sh check
	$(PY) -m pytest tests/chart $(PYTEST_ARGS)

# The e2e tier: a real kube-apiserver + etcd on loopback (built once from Debian's kubernetes
# source package and cached in ~/.cache/kvsync-test; the first build takes several minutes).
e2e: install
	bash scripts/kube-apiserver.sh build
	bash scripts/tools.sh >/dev/null
	$(PY) -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/kvsync demo

bench: install
	$(PY) benchmarks/decode_bench.py
	$(PY) benchmarks/index_bench.py
	$(PY) benchmarks/ingest_bench.py
	$(PY) benchmarks/api_bench.py
	$(PY) benchmarks/prompt_bench.py
	$(PY) benchmarks/serve_bench.py
	$(PY) benchmarks/sim_bench.py
	$(PY) benchmarks/discovery_bench.py
	$(PY) benchmarks/fuzz_campaign.py

# build/ holds setuptools' objects and the downloaded xxhash.h (fetched again on the next build).
clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build kvsync/_native*.so
