"""The hint side index (TTL, confirmation, reset, size bound) and the tokenize cache's bounds."""

from array import array

from kvsync.http.hints import HintIndex
from kvsync.http.tokenize import TokenCache, Tokenized
from kvsync.model import EndpointId

A, B = EndpointId("a"), EndpointId("b", 1)
CTX = ("m", None, 16)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_hinted_blocks_count_contiguously_after_the_matched_ones() -> None:
    hints = HintIndex(clock=Clock())
    hints.add(CTX, A, [12, 13, 14], 2.0)  # blocks 2..4 of the query below
    query = [10, 11, 12, 13, 14, 15]
    assert hints.speculative(CTX, query, {A: 2}) == {A: 3}
    assert hints.speculative(CTX, query, {A: 1}) == {}  # block 1 neither held nor hinted
    assert hints.speculative(("m", "lora", 16), query, {A: 2}) == {}  # another context
    assert hints.speculative(CTX, [99, *query], {A: 2}) == {}


def test_matched_blocks_confirm_their_hints_and_the_ttl_expires_the_rest() -> None:
    clock = Clock()
    hints = HintIndex(clock=clock)
    hints.add(CTX, A, [1, 2, 3, 4], 2.0)
    assert len(hints) == 4
    assert hints.speculative(CTX, [1, 2, 3, 4], {A: 2}) == {A: 2}
    assert len(hints) == 2  # blocks 1 and 2 are stored now: confirmed, dropped
    clock.now += 1.0
    hints.add(CTX, A, [4], 2.0)  # hinted again: the later expiry holds
    clock.now += 1.5
    assert hints.speculative(CTX, [1, 2, 3, 4], {A: 2}) == {}  # 3 expired, so no run
    assert len(hints) == 1
    assert hints.speculative(CTX, [1, 2, 3, 4], {A: 3}) == {A: 1}
    clock.now += 1.0
    assert hints.speculative(CTX, [1, 2, 3, 4], {A: 3}) == {}
    assert len(hints) == 0
    assert hints.contexts() == frozenset()


def test_forget_drops_an_endpoints_hints_only() -> None:
    hints = HintIndex(clock=Clock())
    hints.add(CTX, A, [1, 2], 5.0)
    hints.add(CTX, B, [1, 2, 3], 5.0)
    assert hints.forget(A) == 2
    assert hints.forget(A) == 0
    assert hints.speculative(CTX, [1, 2, 3], {}) == {B: 3}


def test_the_index_is_bounded_oldest_hints_first() -> None:
    hints = HintIndex(max_blocks=5, clock=Clock())
    hints.add(CTX, A, [1, 2, 3], 5.0)
    hints.add(CTX, B, [7, 8, 9], 5.0)
    assert len(hints) == 3  # A's hint went to make room
    assert hints.speculative(CTX, [1, 2, 3], {}) == {}
    assert hints.speculative(CTX, [7, 8, 9], {}) == {B: 3}


def _tokens(n: int) -> Tokenized:
    return Tokenized(memoryview(array("I", range(n))), "m", None, "pod", cached=True)


def test_the_tokenize_cache_is_an_lru_bounded_by_entries_and_by_tokens() -> None:
    cache = TokenCache(entries=2, tokens=100)
    cache.put(("m", b"1"), _tokens(10))
    cache.put(("m", b"2"), _tokens(10))
    assert cache.get(("m", b"1")) is not None  # 1 is now the most recent
    cache.put(("m", b"3"), _tokens(10))
    assert (cache.get(("m", b"2")), len(cache)) == (None, 2)
    cache.put(("m", b"4"), _tokens(95))  # over the token bound: the oldest go
    assert len(cache) == 1
    assert cache.get(("m", b"4")) is not None
    cache.put(("m", b"5"), _tokens(101))  # larger than the whole cache: not kept
    assert cache.get(("m", b"5")) is None
    assert len(TokenCache(entries=0, tokens=100)) == 0
