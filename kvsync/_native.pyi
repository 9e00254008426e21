"""Types of ``kvsync._native``, the C hot paths of the pure core (sources: ``kvsync/csrc/``).

Every function raises ``ValueError`` (message starting ``tokens:``) for token ids that are not
a msgpack array of ints in [0, 2^32), ``OverflowError``/``TypeError`` for ids given as Python
objects out of that range or of another type, and ``MemoryError``; nothing else.
"""

from collections.abc import Sequence
from typing import Final

import msgspec

ROOT: Final[int]  # the key a chain starts from

def token_count(msgpack_array: msgspec.Raw | bytes, /) -> int:
    """Validate a msgpack array of token ids; returns how many there are."""

def json_token_ids(json_array: msgspec.Raw | bytes, /) -> bytes:
    """A JSON array of ints in [0, 2^32) as native uint32 (``memoryview(...).cast("I")`` reads
    it); ``ValueError`` for any other JSON value. Parsed without the GIL."""

def chain(
    parent: int,
    token_ids: Sequence[int] | msgspec.Raw,
    block_size: int,
    extras: list[bytes | None] | None,
    /,
) -> list[int]:
    """Keys of every full block of ``token_ids`` (ints, or a msgpack array), chained from
    ``parent``; ``extras`` holds one entry per block (bytes folded into its key, or None)."""

class KeyTable:
    """One index context: block keys, their holder slots, parent links and recency, and per
    slot the engine hash -> key map. The semantics are ``kvsync.index.memory.context.Context``'s."""

    def __init__(self, block_size: int) -> None: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: int) -> bool: ...
    def store(
        self,
        slot: int,
        parent: int,
        hashes: list[int],
        token_ids: Sequence[int] | msgspec.Raw,
        extras: list[bytes | None] | None,
        /,
    ) -> int:
        """Store the chain of ``token_ids`` (ints, or a msgpack array; ``len(hashes)`` blocks)
        after ``parent`` for ``slot``; returns the keys the slot newly holds."""

    def store_keys(self, slot: int, parent: int, hashes: list[int], keys: list[int], /) -> int:
        """``store`` with the keys already computed."""

    def remove_plain(
        self, slot: int, hashes: list[int], removed_keys: list[int] = ..., /
    ) -> tuple[int, list[int]]:
        """Drop ``slot``'s mapping and hold of each engine hash; returns (keys it no longer
        holds, the hashes it does not map). With ``removed_keys``, the keys of the blocks it
        no longer holds are appended to it."""

    def holders(self, key: int, /) -> int:
        """Slot mask of the endpoints holding ``key`` (0 when absent)."""

    def resolve(self, slot: int, engine_hash: int, /) -> int | None:
        """The key ``slot`` stored ``engine_hash`` as, if mapped."""

    def unmap(self, slot: int, engine_hash: int, /) -> None:
        """Forget ``slot``'s mapping of ``engine_hash``."""

    def release(self, slot: int, key: int, /) -> bool:
        """``slot`` stops holding ``key``; False when it did not hold it."""

    def clear_slot(self, slot: int, /) -> int:
        """Drop everything ``slot`` holds or maps; returns the keys it held."""

    def evict(self, target: int, /) -> int:
        """Evict least recently stored leaf keys until at most ``target`` remain."""

    def evict_keys(self, target: int, /) -> list[int]:
        """``evict``, returning the keys it evicted."""

    def count(self, slot: int, /) -> int:
        """Keys ``slot`` holds."""

    def sizes(self) -> tuple[int, int, int, list[int]]:
        """(entries: (key, slot) pairs held, engine hashes mapped, bytes allocated, slots in
        use)."""

    def walk(
        self, token_ids: Sequence[int], salt: bytes | None, allowed: int, want_keys: bool, /
    ) -> tuple[dict[int, int], list[int] | None]:
        """Per slot of ``allowed`` (a mask) holding block 0, its run of leading query blocks;
        and, with ``want_keys``, the keys of the blocks some allowed slot matched."""
