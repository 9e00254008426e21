"""Real Redis nodes on loopback for the tests, started and stopped by scripts/redis-cluster.sh.

``RedisNodes`` is either a Redis Cluster of 3 masters + 3 replicas or one plain node, each node in
its own directory under the run directory. Beside the clients it offers the faults a failover test
needs: kill -9 a master, wait until one of its replicas is promoted (``CLUSTER NODES`` polled on
every surviving node, with a deadline), restart the killed node (it rejoins as a replica) and
wait until the cluster is healthy again.

Where redis-server is missing and cannot be installed (not root, no package registry) the tests
that need it skip, unless ``KVSYNC_REQUIRE_REDIS=1`` (CI's ``.ci/run``): then they fail.
"""

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "redis-cluster.sh"
REQUIRE_ENV = "KVSYNC_REQUIRE_REDIS"
SLOTS = 16384


@dataclass(frozen=True)
class ClusterNode:
    """One line of ``CLUSTER NODES``, as one node sees another."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return "fail" in self.flags or "fail?" in self.flags


def parse_cluster_nodes(text: str) -> list[ClusterNode]:
    """``CLUSTER NODES`` output → one ``ClusterNode`` per line (slot ranges; migrations ignored)."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        node_id, address, flags, master, _ping, _pong, _epoch, _link, *slots = line.split()
        port = int(address.split("@", 1)[0].rsplit(":", 1)[1])
        ranges = []
        for slot in slots:
            if slot.startswith("["):  # a slot being imported or migrated
                continue
            first, _, last = slot.partition("-")
            ranges.append((int(first), int(last or first)))
        nodes.append(
            ClusterNode(
                node_id=node_id,
                port=port,
                flags=frozenset(flags.split(",")),
                master_id=None if master == "-" else master,
                slots=tuple(ranges),
            )
        )
    return nodes


@dataclass(frozen=True)
class KilledMaster:
    """A master killed by ``RedisNodes.kill_master``: what its promotion is checked against."""

    port: int
    node_id: str
    slots: tuple[tuple[int, int], ...]
    replica_ports: tuple[int, ...]


def ensure_redis_server() -> None:
    """Install redis-server when missing (the script's ``install``); skip, or fail in CI."""
    done = subprocess.run(
        [str(SCRIPT), "install"], capture_output=True, text=True, timeout=600, check=False
    )
    if done.returncode != 0:
        reason = f"redis-server unavailable: {done.stderr.strip()}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_ENV}=1)")
        pytest.skip(reason)


def _running(pid_file: Path) -> bool:
    try:
        stat = Path(f"/proc/{int(pid_file.read_text())}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state follows the command name


class RedisNodes:
    """Redis nodes under ``run_dir``: a cluster (3 masters + 3 replicas) or one plain node."""

    def __init__(self, run_dir: Path, *, single: bool = False) -> None:
        self.run_dir = run_dir
        self.single = single
        self.url = ""
        self.ports: tuple[int, ...] = ()

    def _script(self, *args: str, timeout_s: float = 120) -> str:
        done = subprocess.run(
            [str(SCRIPT), args[0], str(self.run_dir), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"redis-cluster.sh {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self) -> None:
        self.url = self._script("start", *(["--single"] if self.single else [])).strip()
        self.ports = tuple(int(p) for p in (self.run_dir / "ports").read_text().split())

    def stop(self) -> None:
        self._script("stop")

    # --- clients -------------------------------------------------------------------------------

    def client(self) -> "RedisCluster | redis.Redis":
        """A client of the whole deployment: ``RedisCluster`` from the seed, or the one node."""
        if self.single:
            return redis.Redis.from_url(self.url)
        return RedisCluster.from_url(self.url)

    def node(self, port: int) -> redis.Redis:
        """A plain client of one node (its own keyspace, CLUSTER commands)."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def _on_node(self, port: int, *command: str) -> str:
        with self.node(port) as conn:
            # Raw text: redis-py's parsers of CLUSTER replies vary between releases.
            reply = conn.execute_command(*command, NEVER_DECODE=True)
        return bytes(reply).decode()

    def cluster_nodes(self, port: int) -> list[ClusterNode]:
        """The cluster as the node on ``port`` sees it."""
        return parse_cluster_nodes(self._on_node(port, "CLUSTER", "NODES"))

    def cluster_info(self, port: int) -> dict[str, str]:
        lines = self._on_node(port, "CLUSTER", "INFO").splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def masters(self) -> list[ClusterNode]:
        """The masters owning slots, as the first answering node sees them, by port."""
        for port in self.ports:
            try:
                seen = self.cluster_nodes(port)
            except redis.ConnectionError:
                continue
            return sorted((n for n in seen if n.is_master and n.slots), key=lambda n: n.port)
        raise RuntimeError("no node answers")

    def flush(self) -> None:
        """Empty the keyspace (FLUSHALL on every master, replicated before returning).

        Functions loaded with FUNCTION LOAD stay: FLUSHALL removes keys only.
        """
        targets = [m.port for m in self.masters()] if not self.single else list(self.ports)
        for port in targets:
            with self.node(port) as conn:
                conn.flushall()
                if not self.single:
                    conn.execute_command("WAIT", 1, 5000)

    # --- faults --------------------------------------------------------------------------------

    def kill_master(self, port: int | None = None) -> KilledMaster:
        """kill -9 a master (the one on ``port``, default the lowest port's)."""
        masters = self.masters()
        victim = masters[0] if port is None else next(m for m in masters if m.port == port)
        seen = self.cluster_nodes(victim.port)
        replicas = tuple(n.port for n in seen if n.master_id == victim.node_id)
        self._script("kill-node", str(victim.port))
        return KilledMaster(victim.port, victim.node_id, victim.slots, replicas)

    def wait_promoted(self, killed: KilledMaster, timeout_s: float = 20.0) -> int:
        """Wait until every surviving node sees ``killed`` failed and one of its replicas
        promoted to master of its slots, with ``cluster_state:ok``; returns the new master's port.
        """
        deadline = time.monotonic() + timeout_s
        survivors = [p for p in self.ports if p != killed.port]
        while True:
            promoted = self._promotion(killed, survivors)
            if promoted is not None:
                return promoted
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no replica of {killed.port} promoted within {timeout_s}s: "
                    f"{self._script('status').strip()}"
                )
            time.sleep(0.05)  # polling the cluster's view: there is no event to wait on

    def _promotion(self, killed: KilledMaster, survivors: list[int]) -> int | None:
        views = set()
        for port in survivors:
            try:
                nodes = {n.node_id: n for n in self.cluster_nodes(port)}
                state = self.cluster_info(port).get("cluster_state")
            except redis.ConnectionError:
                return None
            old = nodes.get(killed.node_id)
            new = [
                n
                for n in nodes.values()
                if n.port in killed.replica_ports and n.is_master and n.slots == killed.slots
            ]
            if state != "ok" or old is None or "fail" not in old.flags or len(new) != 1:
                return None
            views.add(new[0].port)
        return views.pop() if len(views) == 1 else None

    def restart_node(self, port: int) -> None:
        """Start a killed node again from its own directory (it rejoins the cluster)."""
        self._script("restart-node", str(port))

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Every node up, every slot served, no failure flags, replicas in sync."""
        if not self.single:
            self._script("wait", str(int(timeout_s)), timeout_s=timeout_s + 10)

    def down(self) -> list[int]:
        """Ports of the nodes not running (killed and not restarted): no pid file, or its process
        gone (a zombie nobody reaped counts as gone, as in the script)."""
        return [port for port in self.ports if not _running(self.run_dir / f"node-{port}" / "pid")]

    def heal(self) -> None:
        """Restart every node that is down and wait until the cluster is healthy again."""
        down = self.down()
        for port in down:
            self.restart_node(port)
        if down:
            self.wait_healthy()
