"""Discovery cost of a re-list: pods → endpoints → diff, against parsing the list body alone.

A re-list (start-up, or after 410 Gone) parses the API's JSON list body and then maps every pod
to endpoints and diffs the result against the current table. The JSON parse is the part no
implementation avoids, so it is the baseline: the interesting number is how much discovery adds
on top. Realistic pods: labels, annotations, container statuses and the spec noise a real pod
carries (about 3 KB of JSON each); 1 in 4 pods has DP size 2. Both steps run in the same
process, interleaved round by round; medians of CPU time are compared (the machine is shared
and noisy). Prints one JSON document.

    .venv/bin/python benchmarks/discovery_bench.py [--pods N] [--rounds R]
"""

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from kvsync.discovery.base import EndpointTable
from kvsync.discovery.kubernetes import pods
from kvsync.discovery.kubernetes.pods import PodDefaults, Skipped
from kvsync.model import Endpoint


def pod(number: int, rng: random.Random) -> dict[str, Any]:
    name = f"vllm-{number:05d}"
    annotations = {"kvsync.io/dp-size": "2"} if number % 4 == 0 else {}
    annotations["kubectl.kubernetes.io/last-applied-configuration"] = "x" * 1200
    return {
        "metadata": {
            "name": name, "namespace": "serving", "uid": f"{rng.getrandbits(128):032x}",
            "resourceVersion": str(1000 + number),
            "labels": {"model.aibrix.ai/name": "llama-3-8b", "app": "vllm",
                       "model.aibrix.ai/kv-events-enabled": "true",
                       "pod-template-hash": "5d9f7c8b6"},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r"}],
        },
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.33.0",
                                 "args": ["--model", "llama", "--kv-events-config", "{}"] * 8,
                                 "env": [{"name": f"E{i}", "value": "v"} for i in range(20)]}]},
        "status": {"phase": "Running", "podIP": f"10.{number // 65536}.{number // 256 % 256}."
                   f"{number % 256}", "containerStatuses": [{"name": "vllm", "restartCount": 0,
                   "ready": True, "image": "vllm", "imageID": "sha256:abc"}]},
    }  # fmt: skip


def relist(items: list[Any], table: EndpointTable, defaults: PodDefaults) -> int:
    """What the informer does with a listed body: map every pod, diff against the table."""
    desired: dict[str, list[Endpoint]] = {}
    for raw in items:
        view = pods.read_pod(raw)
        found = view if isinstance(view, Skipped) else pods.pod_endpoints(view, defaults)
        if isinstance(view, pods.PodView):
            desired[view.key] = [] if isinstance(found, Skipped) else found
    return len(table.replace_all(desired))


def cpu(step: Callable[[], object]) -> float:
    start = time.process_time()
    step()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    rng = random.Random(7)
    body = json.dumps({"metadata": {"resourceVersion": "1"},
                       "items": [pod(n, rng) for n in range(args.pods)]}).encode()  # fmt: skip
    defaults, table = PodDefaults(), EndpointTable()
    items = json.loads(body)["items"]
    first_commands = relist(items, table, defaults)  # the start-up list: every endpoint is new
    parse_s, relist_s = [], []
    commands = 0
    for _ in range(args.rounds):
        parse_s.append(cpu(lambda: json.loads(body)))
        relist_s.append(cpu(lambda: relist(items, table, defaults)))
        commands += relist(items, table, defaults)  # unchanged pods: must stay 0
    parse, mapped = statistics.median(parse_s), statistics.median(relist_s)
    print(json.dumps({
        "benchmark": "discovery_relist",
        "pods": args.pods,
        "endpoints": len(table.endpoints()),
        "body_bytes": len(body),
        "rounds": args.rounds,
        "first_list_commands": first_commands,
        "unchanged_relist_commands": commands,
        "baseline_json_parse": {"median_cpu_s": round(parse, 4),
                                "pods_per_s": round(args.pods / parse)},
        "discovery_map_and_diff": {"median_cpu_s": round(mapped, 4),
                                   "pods_per_s": round(args.pods / mapped)},
        "discovery_cost_vs_parse": round(mapped / parse, 2),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
