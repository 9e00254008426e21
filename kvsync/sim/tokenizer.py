"""The simulated model's tokenizer: a small byte-level BPE trained on the fly, and a chat template.

``SimTokenizer.trained(seed)`` trains a ``tokenizers`` BPE (Hugging Face's Rust library, the one
vLLM's fast tokenizers are) on a corpus of made-up words drawn from ``seed``: nothing is
downloaded, the same seed gives the same vocabulary, and training takes about 0.1 s (cached per
process and seed). Byte-level, so any text tokenizes without unknown tokens.

It behaves as a vLLM server's tokenizer does for ``POST /tokenize`` (``kvsync.sim.engine_http``):

- ``encode(prompt, add_special_tokens=True)``: the completion form; special tokens are a BOS.
- ``chat(messages, add_generation_prompt=True, continue_final_message=False,
  add_special_tokens=False)``: the chat form; the template renders each message as
  ``<|role|>\\ncontent<|end|>\\n`` and the generation prompt as ``<|assistant|>\\n``; the
  final message is left open with ``continue_final_message``. Role markers and ``<|end|>`` are
  single special tokens, as in real chat templates.

``tokenizers`` is the optional dependency ``kvsync[sim]`` (in ``[test]`` too), imported when a
tokenizer is first trained. Pure apart from the training; raises ``SimError`` for a message that
is not ``{"role": str, "content": str}`` or for both generation flags at once (vLLM answers 400
to both).
"""

import functools
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from kvsync.sim.records import SimError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BOS: Final = "<s>"
EOS: Final = "</s>"
END: Final = "<|end|>"
ROLES: Final = ("system", "user", "assistant", "tool")
SPECIAL_TOKENS: Final = (BOS, EOS, END, *(f"<|{role}|>" for role in ROLES))
_SYLLABLES: Final = (
    "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "pe", "du", "ma", "ri", "so", "te", "lu",
    "na", "zo", "be", "fi", "go", "an", "el", "or", "us", "ix",
)  # fmt: skip


def _corpus(seed: int, sentences: int = 3000) -> list[str]:
    rng = random.Random(seed)  # noqa: S311  # a simulation, not cryptography
    words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(sentences)
    ]


@functools.cache
def _train(seed: int, vocab_size: int) -> "Tokenizer":
    # Imported here: the extra `kvsync[sim]`, needed only by a fleet that serves /tokenize.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: PLC0415

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer)
    bos = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, bos)]
    )
    return tokenizer


class SimTokenizer:
    """A trained BPE plus the chat template; thread-safe (the Rust tokenizer is)."""

    def __init__(self, tokenizer: "Tokenizer") -> None:
        self._tokenizer = tokenizer

    @classmethod
    def trained(cls, seed: int = 0, vocab_size: int = 4096) -> "SimTokenizer":
        """The tokenizer of ``seed`` (trained once per process, then shared)."""
        return cls(_train(seed, vocab_size))

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def encode(self, prompt: str, *, add_special_tokens: bool = True) -> list[int]:
        """The token ids of a completion prompt (with a BOS when ``add_special_tokens``)."""
        return list(self._tokenizer.encode(prompt, add_special_tokens=add_special_tokens).ids)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def render_chat(
        self,
        messages: Sequence[Mapping[str, object]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
    ) -> str:
        """The chat template's text for ``messages`` (OpenAI chat form, text content only)."""
        if add_generation_prompt and continue_final_message:
            raise SimError("cannot set both continue_final_message and add_generation_prompt")
        parts: list[str] = []
        for position, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if role not in ROLES or not isinstance(content, str):
                raise SimError(f"message {position}: expected a role in {ROLES} and text content")
            last_open = continue_final_message and position == len(messages) - 1
            parts.append(f"<|{role}|>\n{content}" + ("" if last_open else f"{END}\n"))
        if add_generation_prompt:
            parts.append("<|assistant|>\n")
        return "".join(parts)

    def chat(
        self,
        messages: Sequence[Mapping[str, object]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        add_special_tokens: bool = False,
    ) -> list[int]:
        """The token ids of a chat request, as vLLM's ``/tokenize`` chat form gives them."""
        text = self.render_chat(
            messages,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
        )
        return self.encode(text, add_special_tokens=add_special_tokens)
