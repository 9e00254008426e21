# kvsync container image. Two stages: the first builds a virtualenv with kvsync and its
# dependencies, the second copies only that venv onto a clean base. BASE can point at a local or
# mirrored python:3.11-slim (both stages must use the same Python, the venv links to it).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# A C compiler and libc headers for the extension kvsync._native (python:3.11-slim has Python's
# own headers). This stage only: the final image gets the built venv and no toolchain. Unpinned on
# purpose: BASE is overridable, and a pinned Debian version breaks with every point release of it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY kvsync ./kvsync
# A non-editable install: the venv holds kvsync itself, so the source tree is not needed later.
# setup.py downloads xxhash.h (a pinned, checksummed sdist from PyPI) as pip fetches the deps.
# -P: import the installed kvsync, not the source tree in the working directory.
RUN python -m venv /opt/kvsync \
    && /opt/kvsync/bin/pip install --no-cache-dir . \
    && /opt/kvsync/bin/python -P -c 'import kvsync._native' \
    && /opt/kvsync/bin/kvsync --version

FROM ${BASE}
LABEL org.opencontainers.image.title="kvsync" \
      org.opencontainers.image.description="vLLM KV-cache event sync daemon: longest-prefix answers for routers" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed, numeric non-root UID/GID, so Kubernetes' runAsNonRoot can verify it; the chart's
# securityContext uses the same numbers.
RUN groupadd --system --gid 10001 kvsync \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kvsync
COPY --from=build /opt/kvsync /opt/kvsync
# Bytecode was compiled at install time; the root filesystem is read-only in the pod.
ENV PATH=/opt/kvsync/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080
# Exec form: kvsync is PID 1 and receives SIGTERM itself (it drains, then stops in order).
ENTRYPOINT ["kvsync"]
CMD ["serve"]
