# kvsync developer commands. `make test` is what CI runs (via .ci/run); `make demo` runs the
# embedded default: a simulated vLLM fleet on loopback with the daemon in front of it.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install lint types arch unit test demo bench e2e chart clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check kvsync tests benchmarks
	$(VENV)/bin/ruff format --check kvsync tests benchmarks

types: install
	$(VENV)/bin/mypy

arch: install
	$(VENV)/bin/lint-imports

unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test: lint types arch
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

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
	$(PY) benchmarks/sim_bench.py
	$(PY) benchmarks/discovery_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
