"""The longest-prefix walk over one context, and the per-endpoint score. Pure.

Called by ``kvsync.index.PrefixIndex.match`` under the callers' lock; reads the context only.
Raises nothing for valid token ids (``OverflowError`` from the C walk otherwise).

The walk (in C: ``kvsync._native.KeyTable.walk``) hashes the query block by block as it goes
(a lookup that stops early never hashes the rest of a long prompt) and ANDs each block's holder
mask into the set of endpoints still matching; an endpoint's run ends at the first block it does
not hold, even if another endpoint holds it. Most blocks have only the plain
copy (GPU, group 0), so the walk notes just the few blocks with other copies, and scoring is
one multiplication per endpoint unless its run covers one of those.
"""

from collections.abc import Mapping, Sequence
from typing import Final

from kvsync import keys
from kvsync.contexts import Context, Copy
from kvsync.model import GPU

OTHER_MEDIUM_WEIGHT: Final = 0.5  # any medium the weights do not name (STORAGE, DISK, ...)
ANY_MEDIUM: Final = "*"  # the key of a weights mapping that overrides OTHER_MEDIUM_WEIGHT

# (block position, its full copy breakdown) for matched blocks with a non-plain copy
OddBlocks = list[tuple[int, dict[Copy, int]]]


def walk(
    ctx: Context, token_ids: Sequence[int], cache_salt: str | None, allowed: int
) -> tuple[dict[int, int], OddBlocks]:
    """Per slot in ``allowed`` (a mask), how many leading query blocks it holds; and the odd
    blocks among those matched."""
    salt = None if cache_salt is None else keys.salt_extra(cache_salt)
    copies = ctx.copies
    runs, matched = ctx.table.walk(token_ids, salt, allowed, bool(copies))
    if not matched:
        return runs, []
    return runs, [(position, copies[key]) for position, key in enumerate(matched) if key in copies]


def score(
    slot: int, run: int, odd: OddBlocks, weights: Mapping[str, float], other: float
) -> tuple[float, dict[str, int]]:
    """(score, by_medium) of ``slot``'s first ``run`` blocks: each block counts once in every
    medium it is held in, and adds the best weight among them (``other`` for a medium
    ``weights`` does not name) to the score."""
    gpu_weight = weights.get(GPU, other)
    if not odd or odd[0][0] >= run:  # the common case: every block a plain GPU copy
        return run * gpu_weight, {GPU: run}
    by_medium = {GPU: run}  # assume the plain copy, then correct the odd blocks
    best = {GPU: run}  # blocks per best medium held: score = sum of count x weight
    bit = 1 << slot
    for position, detail in odd:
        if position >= run:
            break
        media = {medium for (medium, _), mask in detail.items() if mask & bit}
        by_medium[GPU] -= 1
        best[GPU] -= 1
        for medium in media:
            by_medium[medium] = by_medium.get(medium, 0) + 1
        top = max(media, key=lambda m: weights.get(m, other))
        best[top] = best.get(top, 0) + 1
    if not by_medium[GPU]:
        del by_medium[GPU]
    return sum(n * weights.get(m, other) for m, n in best.items() if n), by_medium
