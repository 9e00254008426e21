"""The test Redis deployments work: a cluster serving every slot, one plain node, a failover.

They run against the nodes of tests/conftest.py (scripts/redis-cluster.sh), so a broken script or
fixture fails here first rather than inside a backend test.
"""

from redis.cluster import RedisCluster

from tests.redis.nodes import SLOTS, RedisNodes, parse_cluster_nodes

A, B, C, D = ("a" * 40, "b" * 40, "c" * 40, "d" * 40)  # node ids are 40 hex digits
NODES_TEXT = f"""\
{D} 127.0.0.1:30004@31004 slave {A} 0 1426238317239 4 connected
{B} 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
{C} 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 connected 10923-16383 [10925->-{A}]
{A} 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 7000
"""


def test_cluster_nodes_lines_parse_into_roles_flags_and_slots() -> None:
    nodes = {n.port: n for n in parse_cluster_nodes(NODES_TEXT)}
    assert nodes[30004].master_id == A
    assert not nodes[30004].is_master
    assert nodes[30004].slots == ()
    assert nodes[30003].failed
    assert nodes[30003].slots == ((10923, 16383),)  # the migrating slot is not counted as owned
    assert nodes[30001].slots == ((0, 5460), (7000, 7000))
    assert nodes[30001].master_id is None
    assert not nodes[30002].failed


def test_cluster_has_three_masters_each_with_a_replica_and_every_slot(
    redis_cluster: RedisNodes,
) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    assert sum(last - first + 1 for m in masters for first, last in m.slots) == SLOTS
    for port in redis_cluster.ports:
        info = redis_cluster.cluster_info(port)
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_ok"] == str(SLOTS)
        assert info["cluster_known_nodes"] == "6"
    seen = redis_cluster.cluster_nodes(masters[0].port)
    for master in masters:
        assert [n.port for n in seen if n.master_id == master.node_id], f"{master} has no replica"
    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.ports[0]}"


def test_cluster_client_sets_and_gets_keys_on_every_master(redis_cluster: RedisNodes) -> None:
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        keys = [f"smoke:{i}" for i in range(200)]
        for i, key in enumerate(keys):
            client.set(key, i)
        assert [int(client.get(key)) for key in keys] == list(range(200))  # type: ignore[arg-type]  # bytes
        per_master = []
        for master in redis_cluster.masters():
            with redis_cluster.node(master.port) as node:
                per_master.append(node.dbsize())
        assert sum(per_master) == 200
        assert all(count > 0 for count in per_master), per_master  # the keys span the slots
    finally:
        client.close()


def test_keyspace_is_empty_at_the_start_of_a_test(redis_cluster: RedisNodes) -> None:
    for master in redis_cluster.masters():
        with redis_cluster.node(master.port) as node:
            assert node.dbsize() == 0


def test_single_node_serves_keys_without_cluster_mode(redis_single: RedisNodes) -> None:
    client = redis_single.client()
    try:
        client.set("smoke", b"one")
        assert client.get("smoke") == b"one"
        assert client.info("cluster")["cluster_enabled"] == 0
    finally:
        client.close()


def test_killed_master_is_replaced_by_its_replica_and_rejoins_as_replica(
    redis_cluster: RedisNodes,
) -> None:
    before = RedisCluster.from_url(redis_cluster.url)
    try:
        keys = [f"failover:{i}" for i in range(100)]
        for key in keys:
            before.set(key, key)
    finally:
        before.close()
    for master in redis_cluster.masters():  # the writes reached the replicas before the fault
        with redis_cluster.node(master.port) as node:
            node.execute_command("WAIT", 1, 5000)

    killed = redis_cluster.kill_master()
    assert redis_cluster.down() == [killed.port]
    promoted = redis_cluster.wait_promoted(killed)
    assert promoted in killed.replica_ports

    survivor = next(p for p in redis_cluster.ports if p != killed.port)
    after = RedisCluster(host="127.0.0.1", port=survivor)
    try:
        assert [after.get(key) for key in keys] == [key.encode() for key in keys]
    finally:
        after.close()

    redis_cluster.restart_node(killed.port)
    redis_cluster.wait_healthy()
    rejoined = {n.port: n for n in redis_cluster.cluster_nodes(killed.port)}
    new_master = rejoined[promoted]
    assert not rejoined[killed.port].is_master
    assert rejoined[killed.port].master_id == new_master.node_id
    assert new_master.slots == killed.slots
