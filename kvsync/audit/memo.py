"""The answers kvsync gave, kept for a bounded time so a router's feedback can be judged. Pure.

A prediction must be the one made when the router asked: once the engine has run the request
it holds its prompt's blocks, so asking again after the response would predict a full hit every
time. ``AnswerMemo.remember`` keeps, per query, what each endpoint matched; ``recall`` finds it
for the same query (model, adapter, salt and the exact token ids) until ``window_s`` has passed
or ``max_answers`` newer ones pushed it out (oldest first). The same query asked again
replaces the earlier answer: the latest is what the router acted on.

The key holds a 128-bit xxh3 digest of the token ids as uint32 (under a microsecond for 8k
tokens), not the tokens. An answer keeps its endpoints as a tuple (the index's own
``EndpointId`` objects) and their matched blocks as a uint32 array (and their block sizes when a
context mixes them): about 12 bytes per matching endpoint plus 300 per answer, bounded by
``max_answers`` and by ``max_matches`` (the endpoint entries of every answer kept; a fleet where
200 pods hold the system prompt answers 200 per query). Remembering costs about 5 µs per lookup
with 16 matching endpoints (BENCHMARKS.md, ``## Load``).
"""

import array
import operator
from collections.abc import Sequence
from typing import Final

import msgspec
import xxhash

from kvsync.index.values import MatchResult, Query
from kvsync.model import EndpointId

DEFAULT_WINDOW_S: Final = 300.0
DEFAULT_MAX_ANSWERS: Final = 100_000
DEFAULT_MAX_MATCHES: Final = 4_000_000  # about 50 MB of endpoint entries

_ENDPOINT: Final = operator.attrgetter("endpoint")
_MATCHED_BLOCKS: Final = operator.attrgetter("matched_blocks")
_BLOCK_SIZE: Final = operator.attrgetter("block_size")

QueryKey = tuple[str, str | None, int | None, str | None, int]


def digest(token_ids: Sequence[int]) -> int:
    """128-bit xxh3 of the token ids as native uint32 (the C parser's buffer is hashed as is)."""
    if isinstance(token_ids, memoryview):
        return xxhash.xxh3_128_intdigest(token_ids)
    return xxhash.xxh3_128_intdigest(array.array("I", token_ids).tobytes())


def query_key(
    model: str,
    token_ids: Sequence[int],
    lora_name: str | None = None,
    lora_id: int | None = None,
    cache_salt: str | None = None,
) -> QueryKey:
    return (model, lora_name, lora_id, cache_salt, digest(token_ids))


class Answer(msgspec.Struct, frozen=True, gc=False):
    """What kvsync answered for one query: matched tokens per endpoint and the block sizes.

    A msgspec Struct: built in C on every lookup (a frozen dataclass costs a microsecond more)."""

    at: float  # wall-clock seconds
    prompt_tokens: int
    block_size: int  # the answer's (for endpoints that matched nothing)
    endpoints: tuple[EndpointId, ...]  # the endpoints that matched, in the answer's order
    blocks: "array.array[int]"  # their matched blocks
    block_sizes: "array.array[int] | None"  # theirs, when a context mixes sizes; else None
    pods: frozenset[str] | None  # the query's pod filter: others were not asked about

    def matched(self, endpoint: EndpointId) -> tuple[int, int]:
        """(matched tokens, block size) of ``endpoint``; (0, the answer's) when it matched none."""
        for i, found in enumerate(self.endpoints):
            if found == endpoint:
                sizes = self.block_sizes
                size = self.block_size if sizes is None else sizes[i]
                return self.blocks[i] * size, size
        return 0, self.block_size


class AnswerMemo:
    """Answers by query, oldest first, bounded in time and count. One writer and one reader
    thread at most call it at once (the HTTP loop does both)."""

    def __init__(
        self,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        max_answers: int = DEFAULT_MAX_ANSWERS,
        max_matches: int = DEFAULT_MAX_MATCHES,
    ) -> None:
        self.window_s = window_s
        self.max_answers = max_answers
        self.max_matches = max_matches
        # insertion-ordered: the oldest first (a re-asked query is moved to the end)
        self._answers: dict[QueryKey, Answer] = {}
        self._enabled = window_s > 0 and max_answers > 0 and max_matches > 0
        self._matches = 0  # endpoint entries over every answer kept

    def __len__(self) -> int:
        return len(self._answers)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def remember(self, query: Query, result: MatchResult, now: float) -> None:
        if not self._enabled:
            return
        key = query_key(
            query.model, query.token_ids, query.lora_name, query.lora_id, query.cache_salt
        )
        matches = result.matches
        block_size = result.block_size
        found_sizes = list(map(_BLOCK_SIZE, matches))  # C loops: this runs on every lookup
        sizes = None
        if found_sizes.count(block_size) + found_sizes.count(0) != len(found_sizes):
            sizes = array.array("I", [size or block_size for size in found_sizes])
        answer = Answer(
            now,
            len(query.token_ids),
            block_size,
            tuple(map(_ENDPOINT, matches)),
            array.array("I", map(_MATCHED_BLOCKS, matches)),
            sizes,
            query.pods,
        )
        answers = self._answers
        old = answers.pop(key, None)
        if old is not None:
            self._matches -= len(old.endpoints)
        answers[key] = answer
        self._matches += len(matches)
        self._expire(now)

    def recall(self, key: QueryKey, now: float) -> Answer | None:
        self._expire(now)
        return self._answers.get(key)

    def _expire(self, now: float) -> None:
        answers = self._answers
        oldest = now - self.window_s
        while answers and (
            len(answers) > self.max_answers
            or self._matches > self.max_matches
            or next(iter(answers.values())).at < oldest
        ):
            gone = answers.pop(next(iter(answers)))
            self._matches -= len(gone.endpoints)
