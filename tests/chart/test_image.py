"""The container image recipe: hadolint-clean, and the shape the chart relies on.

No Docker engine here, so the Dockerfile is linted and read, not built: a non-root numeric user
that matches the chart's runAsUser, exec-form entrypoint (SIGTERM reaches kvsync), a C compiler
in the build stage only, only the venv in the final stage, and a build context limited to what
the package needs.
"""

import json
import re
import subprocess

import pytest

from tests.chart.rendering import REPO, Tools, load_values

pytestmark = pytest.mark.timeout(300)  # the first test may install the tools (scripts/tools.sh)

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_hadolint_passes_with_every_rule_on(tools: Tools) -> None:
    proc = subprocess.run(
        [tools.hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_two_stages_from_one_overridable_base() -> None:
    steps = instructions()
    assert steps[0] == ("ARG", "BASE=python:3.11-slim")
    froms = [args for word, args in steps if word == "FROM"]
    assert froms == ["${BASE} AS build", "${BASE}"]


def test_compiler_in_the_build_stage_only() -> None:
    # kvsync._native is built by pip in the first stage; the image that runs it has no toolchain.
    steps = instructions()
    second = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    build_runs = " ".join(args for word, args in steps[:second] if word == "RUN")
    final_runs = " ".join(args for word, args in steps[second:] if word == "RUN")
    assert "apt-get install -y --no-install-recommends gcc libc6-dev" in build_runs
    assert "import kvsync._native" in build_runs  # the build fails if the extension does not load
    assert "apt-get" not in final_runs
    assert "gcc" not in final_runs


def test_final_stage_copies_only_the_venv_and_runs_kvsync_unprivileged() -> None:
    steps = instructions()
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    copies = [args for word, args in final if word in {"COPY", "ADD"}]
    assert copies == ["--from=build /opt/kvsync /opt/kvsync"]
    (user,) = [args for word, args in final if word == "USER"]
    uid, _, gid = user.partition(":")
    security = load_values()["securityContext"]
    assert int(uid) == security["runAsUser"] != 0
    assert int(gid) == security["runAsGroup"] != 0
    env = " ".join(args for word, args in final if word == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    # Exec form, so kvsync is PID 1 and gets SIGTERM itself; `serve` is the default command.
    (entrypoint,) = [args for word, args in final if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["kvsync"]
    (cmd,) = [args for word, args in final if word == "CMD"]
    assert json.loads(cmd) == ["serve"]
    exposed = [args for word, args in final if word == "EXPOSE"]
    assert exposed == [str(load_values()["config"]["httpPort"])]


def test_build_context_holds_only_what_the_package_needs() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # ignore everything, then allow the package sources back in
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {"pyproject.toml", "setup.py", "README.md", "kvsync"}
    copied = {
        part.rstrip("/")
        for word, args in instructions()
        if word == "COPY" and not args.startswith("--from")
        for part in args.split()[:-1]
    }
    assert copied <= allowed
    assert "setup.py" in copied  # it declares the C extension: without it pip builds no module
