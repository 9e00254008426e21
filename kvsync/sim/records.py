"""The simulator's vocabulary: adapters, requests, queries and its one error. Pure values.

A ``Request`` is what a router would send a vLLM engine (prompt and the tokens the engine
generates for it); a ``SimQuery`` is what a router asks kvsync (``POST /v1/match``), with
``body()`` giving the exact JSON object to post. Nothing here does I/O or raises.
"""

from dataclasses import dataclass

from kvsync.errors import KvsyncError


class SimError(KvsyncError):
    """Misuse of the simulator: an impossible request, a bad option, a timeout in a helper."""


class SimTimeoutError(SimError, TimeoutError):
    """A bounded wait of the simulator ran out (no subscriber, publisher did not flush)."""


@dataclass(frozen=True, slots=True)
class Adapter:
    """A LoRA adapter as vLLM knows it: the integer id and the name (``lora_name``)."""

    id: int
    name: str


@dataclass(frozen=True, slots=True)
class Request:
    """One request: prompt tokens, then the tokens generated for it (both cached by vLLM).

    ``cache_salt`` isolates the request's blocks (vLLM folds it into block 0's extra keys).
    """

    prompt: tuple[int, ...]
    output: tuple[int, ...] = ()
    adapter: Adapter | None = None
    cache_salt: str | None = None

    @property
    def tokens(self) -> tuple[int, ...]:
        return self.prompt + self.output


@dataclass(frozen=True, slots=True)
class SimQuery:
    """A ``POST /v1/match`` question; ``block_size`` is not sent, it only guides ground truth."""

    model: str
    token_ids: tuple[int, ...]
    lora_name: str | None = None
    lora_id: int | None = None
    cache_salt: str | None = None

    def body(self) -> dict[str, object]:
        """The JSON object of the HTTP request (the API's optional keys only when set)."""
        body: dict[str, object] = {"model": self.model, "token_ids": list(self.token_ids)}
        if self.lora_name is not None:
            body["lora_name"] = self.lora_name
        if self.lora_id is not None:
            body["lora_id"] = self.lora_id
        if self.cache_salt is not None:
            body["cache_salt"] = self.cache_salt
        return body
