"""Lookups against Redis: the registry, one ``kvsync_match`` call per node, the answers in order.

Called on the HTTP side (any thread; it keeps only a cache of the copy bits). A lookup reads the
(model, adapter)'s registry (which endpoints hold blocks in which block size: one ``HGETALL``),
computes the query's keys per block size in C (``kvsync.index.keys``), and sends every node one
``kvsync_match`` with the keys and the data hashes of the endpoints it holds, all sent before
any reply is read. Scores, ``by_medium``, the merge over block sizes and the order are the
memory backend's (``kvsync.index.memory.lookup``): each block counts once in every medium it is
held in and adds the best weight among them. Raises ``IndexUnavailableError`` when Redis cannot
answer.
"""

from collections.abc import Mapping
from typing import Any, cast

from kvsync.index import keys
from kvsync.index.redis import layout
from kvsync.index.redis.connection import Nodes
from kvsync.index.values import Match, MatchResult, Query
from kvsync.model import GPU, EndpointId

Copy = tuple[str, int]


class Reader:
    """Lookups; see the module docstring."""

    def __init__(
        self,
        nodes: Nodes,
        *,
        weights: Mapping[str, float],
        other_weight: float,
        default_block_size: int,
    ) -> None:
        self._nodes = nodes
        self._weights = weights
        self._other = other_weight
        self._default_block_size = default_block_size
        self._copies: dict[int, Copy] = {}  # bit -> (medium, group): grows, never changes

    def match(self, query: Query) -> MatchResult:
        adapter: layout.Adapter = query.lora_name if query.lora_name is not None else query.lora_id
        client = self._nodes.client
        registry_key = layout.registry_key(query.model, adapter)
        registry = cast(
            dict[bytes, bytes], self._nodes.guarded(lambda: client.hgetall(registry_key))
        )
        by_size: dict[int, list[tuple[str, EndpointId]]] = {}
        for field, value in registry.items():
            block_size, tag = layout.parse_registry_field(field)
            endpoint = layout.endpoint_from_json(value)
            if query.pods is None or endpoint.pod in query.pods:
                by_size.setdefault(block_size, []).append((tag, endpoint))
        if not by_size:
            bs = self._default_block_size
            return MatchResult(bs, len(query.token_ids) // bs, ())
        sizes = sorted(by_size)
        best: dict[EndpointId, Match] = {}
        for bs in sizes:
            for match in self._match_size(query, adapter, bs, by_size[bs]):
                old = best.get(match.endpoint)
                if old is None or (match.matched_tokens, match.score) > (
                    old.matched_tokens,
                    old.score,
                ):
                    best[match.endpoint] = match
        matches = [best[endpoint] for endpoint in sorted(best)]
        matches.sort(key=lambda m: (m.score, m.matched_blocks), reverse=True)  # stable
        bs = matches[0].block_size if matches else sizes[0]
        return MatchResult(bs, len(query.token_ids) // bs, matches)

    def _match_size(
        self,
        query: Query,
        adapter: layout.Adapter,
        block_size: int,
        endpoints: list[tuple[str, EndpointId]],
    ) -> list[Match]:
        chain = keys.query_keys(query.token_ids, block_size, query.cache_salt)
        if not chain:
            return []
        blob = layout.pack_keys(chain)
        context = layout.context_tag((query.model, adapter, block_size))
        per_node: dict[Any, list[tuple[str, EndpointId]]] = {}
        for tag, endpoint in endpoints:
            node = self._nodes.node_of(layout.meta_key(tag))
            per_node.setdefault(node, []).append((layout.data_key(tag, context), endpoint))
        nodes = list(per_node)
        replies = self._nodes.call_on_each(
            [
                (node, ("FCALL_RO", "kvsync_match", 0, blob, *(k for k, _ in per_node[node])))
                for node in nodes
            ]
        )
        matches = []
        for node, reply in zip(nodes, replies, strict=True):
            for (_, endpoint), answer in zip(per_node[node], reply, strict=True):
                run = int(answer[0])
                if run:
                    matches.append(self._answer(endpoint, run, answer[1:], block_size))
        return matches

    def _answer(self, endpoint: EndpointId, run: int, odd: list[Any], block_size: int) -> Match:
        weights, other = self._weights, self._other
        gpu_weight = weights.get(GPU, other)
        if not odd:
            return Match(endpoint, run, run * gpu_weight, {GPU: run}, block_size)
        plain = run
        by_medium: dict[str, int] = {}
        score = 0.0
        for i in range(0, len(odd), 2):
            mask, n = int(odd[i]), int(odd[i + 1])
            plain -= n
            media = {medium for medium, _ in self._copies_of(mask)}
            for medium in media:
                by_medium[medium] = by_medium.get(medium, 0) + n
            score += n * max(weights.get(m, other) for m in media)
        if plain:
            by_medium[GPU] = by_medium.get(GPU, 0) + plain
            score += plain * gpu_weight
        return Match(endpoint, run, score, by_medium, block_size)

    def _copies_of(self, mask: int) -> list[Copy]:
        bits = [bit for bit in range(layout.MAX_COPY_BITS) if mask >> bit & 1]
        if any(bit not in self._copies for bit in bits):
            raw = cast(
                dict[bytes, bytes],
                self._nodes.guarded(lambda: self._nodes.client.hgetall(layout.COPIES_KEY)),
            )
            self._copies = {int(bit): layout.parse_copy_field(f) for f, bit in raw.items()}
        return [self._copies[bit] for bit in bits if bit in self._copies]
