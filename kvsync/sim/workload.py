"""Realistic request traffic and router queries for the simulated fleet. Pure and seeded.

- ``PromptLibrary``: system prompts shared by the whole fleet (so several pods cache the same
  prefixes, as behind a real router).
- ``Workload``: one engine's request stream: new conversations (a shared system prompt + a user
  message), later turns of earlier conversations (the previous prompt + the previous answer + a new
  user message, so they extend cached prefixes), a share of LoRA requests and of salted ones.
- ``QuerySampler``: what a router asks kvsync: a recent request cut at a random block boundary, or
  extended with tokens nobody has seen, or a system prompt + a new message, or a total miss.

Same seed, same sequence. Raises nothing.
"""

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from kvsync.sim.records import Adapter, Request, SimQuery


@dataclass(frozen=True, slots=True, kw_only=True)
class Mix:
    """The shape of the traffic. Token counts are (low, high) inclusive ranges."""

    system_prompts: int = 4
    system_prompt_tokens: tuple[int, int] = (64, 512)
    user_tokens: tuple[int, int] = (8, 256)
    output_tokens: tuple[int, int] = (8, 192)
    follow_up_share: float = 0.5  # requests that continue an open conversation
    open_conversations: int = 16  # per engine; the oldest is dropped when a new one starts
    max_tokens: int = 2048  # a conversation longer than this ends
    lora_share: float = 0.2  # of new conversations, when the fleet has an adapter
    salt_share: float = 0.05  # of new conversations
    vocab: int = 32_000


class PromptLibrary:
    """The system prompts of a fleet, derived from ``seed`` only."""

    def __init__(self, mix: Mix, seed: int = 0) -> None:
        rng = random.Random(seed)  # noqa: S311  # a simulation, not cryptography
        self.mix = mix
        self.prompts: tuple[tuple[int, ...], ...] = tuple(
            _tokens(rng, rng.randint(*mix.system_prompt_tokens), mix.vocab)
            for _ in range(mix.system_prompts)
        )


def _tokens(rng: random.Random, count: int, vocab: int) -> tuple[int, ...]:
    return tuple(rng.randrange(vocab) for _ in range(count))


class Workload:
    """One engine's stream of requests; ``adapter`` is the LoRA adapter its pod serves, if any."""

    def __init__(
        self,
        library: PromptLibrary,
        *,
        seed: int = 0,
        adapter: Adapter | None = None,
        salts: bool = True,
    ) -> None:
        self._library = library
        self._mix = library.mix
        self._rng = random.Random(seed)  # noqa: S311  # a simulation, not cryptography
        self._adapter = adapter
        self._salts = salts
        self._open: deque[Request] = deque(maxlen=self._mix.open_conversations)

    def next_request(self) -> Request:
        mix, rng = self._mix, self._rng
        if self._open and rng.random() < mix.follow_up_share:
            previous = self._open[rng.randrange(len(self._open))]
            self._open.remove(previous)
            request = self._follow_up(previous)
        else:
            request = self._new_conversation()
        if len(request.tokens) > mix.max_tokens:  # a context window, as the engine enforces
            prompt = request.prompt[: mix.max_tokens]
            output = request.output[: mix.max_tokens - len(prompt)]
            request = Request(prompt, output, request.adapter, request.cache_salt)
        if len(request.tokens) < mix.max_tokens:
            self._open.append(request)
        return request

    def _new_conversation(self) -> Request:
        mix, rng = self._mix, self._rng
        system = self._library.prompts[rng.randrange(len(self._library.prompts))]
        adapter = self._adapter if self._adapter and rng.random() < mix.lora_share else None
        salt = (
            f"salt-{rng.randrange(1 << 16)}"
            if self._salts and rng.random() < mix.salt_share
            else None
        )
        return Request(
            prompt=system + _tokens(rng, rng.randint(*mix.user_tokens), mix.vocab),
            output=_tokens(rng, rng.randint(*mix.output_tokens), mix.vocab),
            adapter=adapter,
            cache_salt=salt,
        )

    def _follow_up(self, previous: Request) -> Request:
        mix, rng = self._mix, self._rng
        prompt = previous.tokens + _tokens(rng, rng.randint(*mix.user_tokens), mix.vocab)
        output = _tokens(rng, rng.randint(*mix.output_tokens), mix.vocab)
        budget = mix.max_tokens - len(prompt)
        if budget < 1:  # the conversation outgrew the context: start it over from its prompt
            return self._new_conversation()
        return Request(prompt, output[:budget], previous.adapter, previous.cache_salt)


class QuerySampler:
    """Router questions about a fleet's recent traffic; ``sample(recent)`` picks one."""

    def __init__(
        self, library: PromptLibrary, *, model: str, block_size: int, seed: int = 0
    ) -> None:
        self._library = library
        self._model = model
        self._block_size = block_size
        self._rng = random.Random(seed)  # noqa: S311  # a simulation, not cryptography

    def sample(self, recent: Sequence[Request]) -> SimQuery:
        rng, vocab = self._rng, self._library.mix.vocab
        roll = rng.random()
        if recent and roll < 0.6:
            request = recent[rng.randrange(len(recent))]
            tokens = request.tokens
            blocks = rng.randint(1, max(1, len(tokens) // self._block_size))
            cut = tokens[: blocks * self._block_size]
            if rng.random() < 0.5:  # diverge after the shared prefix
                cut += _tokens(rng, rng.randint(1, 4 * self._block_size), vocab)
            return self._query(cut, request.adapter, request.cache_salt)
        if roll < 0.85:
            system = self._library.prompts[rng.randrange(len(self._library.prompts))]
            return self._query(system + _tokens(rng, rng.randint(1, 64), vocab), None, None)
        return self._query(_tokens(rng, rng.randint(1, 512), vocab), None, None)  # a miss

    def _query(
        self, tokens: tuple[int, ...], adapter: Adapter | None, salt: str | None
    ) -> SimQuery:
        return SimQuery(
            model=self._model,
            token_ids=tokens,
            lora_name=adapter.name if adapter else None,
            cache_salt=salt,
        )
