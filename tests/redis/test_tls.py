"""The Redis backend over TLS (``rediss://`` and ``--redis-tls-ca-file``) against a real
redis-server with a certificate signed by a CA made for the test (openssl), and refused when the
CA does not match."""

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kvsync.errors import IndexUnavailableError
from kvsync.index.backend import BackendSettings, RedisSettings, open_backend
from kvsync.index.values import EndpointContext, Query
from kvsync.model import BlockStored, EndpointId, encode_tokens
from tests.redis.nodes import ensure_redis_server

pytestmark = pytest.mark.redis


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(directory: Path, name: str) -> None:
    key, crt = f"{name}.key", f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
             "-days", "1", "-subj", f"/CN={name}", cwd=directory)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """(rediss:// URL, the CA that signed the server's certificate, an unrelated CA)."""
    ensure_redis_server()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    _ca(tmp_path, "ca")
    _ca(tmp_path, "other")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
             "server.csr", "-subj", "/CN=127.0.0.1", cwd=tmp_path)  # fmt: skip
    (tmp_path / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "ext",
             cwd=tmp_path)  # fmt: skip
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:  # until it answers over TLS (there is no event to wait on)
            try:
                with redis.Redis.from_url(url, ssl_ca_certs=str(tmp_path / "ca.crt")) as probe:
                    probe.ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None, "redis-server exited"
                assert time.monotonic() < deadline, "redis-server did not answer over TLS"
                time.sleep(0.05)
        yield url, tmp_path / "ca.crt", tmp_path / "other.crt"
    finally:
        server.terminate()
        server.wait(10)


def test_the_backend_speaks_tls_with_the_given_ca(tls_redis: tuple[str, Path, Path]) -> None:
    url, ca, _ = tls_redis
    backend = open_backend(
        "redis", BackendSettings(redis=RedisSettings(url=url, tls_ca_file=str(ca)))
    )
    try:
        endpoint = EndpointId("ns/pod-a", 0)
        ids = list(range(32))
        stored = BlockStored([1, 2], None, encode_tokens(ids), 16)
        assert backend.resume(endpoint, "uid") is None
        backend.apply(endpoint, EndpointContext("m"), [stored], 0.0, 0)
        assert backend.flush()
        result = backend.match(Query("m", ids), 0.0)
        assert [(m.endpoint, m.matched_blocks) for m in result.matches] == [(endpoint, 2)]
    finally:
        backend.close()


def test_a_server_certificate_from_another_ca_is_refused(tls_redis: tuple[str, Path, Path]) -> None:
    url, _, other = tls_redis
    with pytest.raises(IndexUnavailableError, match="certificate"):
        open_backend("redis", BackendSettings(redis=RedisSettings(url=url, tls_ca_file=str(other))))
