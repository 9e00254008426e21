"""Loads the golden captures of real vLLM publishers (tests/data/vectors, see its README)."""

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).parent / "data" / "vectors"
FILES = sorted(VECTORS.glob("vllm-*.json"))


@dataclass(frozen=True)
class Capture:
    """One capture: live frames per seq, the replay exchange, and the expected records."""

    name: str
    doc: dict[str, Any]

    @property
    def live(self) -> list[list[bytes]]:
        return [[base64.b64decode(f) for f in m["frames_b64"]] for m in self.doc["live"]]

    @property
    def replay_request(self) -> list[bytes]:
        return [base64.b64decode(f) for f in self.doc["replay"]["request_frames_b64"]]

    @property
    def replay_reply(self) -> list[list[bytes]]:
        return [[base64.b64decode(f) for f in m["frames_b64"]] for m in self.doc["replay"]["reply"]]

    @property
    def expected(self) -> list[dict[str, Any]]:
        return list(self.doc["expected"])

    @property
    def block_size(self) -> int:
        return int(self.doc["block_size"])


def load(path: Path) -> Capture:
    return Capture(path.stem, json.loads(path.read_text()))


def all_captures() -> list[Capture]:
    return [load(p) for p in FILES]


def expected_hash(text: str) -> int | bytes:
    """Expected hashes are decimal strings (maybe negative in 0.10.1) or 64 hex characters."""
    if len(text) == 64 and not text.lstrip("-").isdigit():
        return bytes.fromhex(text)
    return int(text) & ((1 << 64) - 1)
