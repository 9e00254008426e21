"""What a request must be before a route acts on it. I/O edge (ASGI messages).

The bearer token, the body within its size and time limits (``read_body``), strict decoding
(``strict_decode``: 400 malformed JSON, 422 the wrong shape), the one-of rule of token ids,
prompt and messages (``check_prompt``) and the vLLM ``/tokenize`` body a prompt becomes
(``tokenize_body``: the tokenize cache's key too). Every failure is a ``Rejected``: the status,
the metric label and the message of the ``{"error"}`` answer.
"""

import asyncio
import hmac
from typing import Final, TypeVar

import msgspec
from starlette.types import Receive

from kvsync.http import schemas

JSON: Final = "application/json"
T = TypeVar("T")
_ENCODE: Final = msgspec.json.Encoder()


class Rejected(Exception):  # noqa: N818  # control flow inside the handler: an answer, not a fault
    """A request answered with an error status; ``result`` is the metric label."""

    def __init__(self, status: int, result: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.result = result
        self.message = message


def check_token(expected: bytes | None, authorization: bytes | None) -> None:
    """401 unless the request carries the bearer token (when the server has one)."""
    if expected is None:
        return
    if not hmac.compare_digest(authorization or b"", expected):
        raise Rejected(401, "unauthorized", "missing or wrong bearer token")


async def read_body(
    headers: dict[bytes, bytes], receive: Receive, limit: int, timeout_s: float
) -> bytes | None:
    """The request body within the limits; None when the client went away meanwhile."""
    raw_type = headers.get(b"content-type", b"").decode("latin-1")
    media_type = raw_type.partition(";")[0].strip().lower()
    if media_type != JSON:
        raise Rejected(415, "unsupported_media_type", "Content-Type must be application/json")
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, "too_large", f"body over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    deadline = timeout_s
    try:
        async with asyncio.timeout(deadline):  # a client that stalls mid-body is cut off
            while True:
                message = await receive()
                if message["type"] != "http.request":  # http.disconnect
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:  # chunked or lying about its length: stop reading now
                    raise Rejected(413, "too_large", f"body over the limit of {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise Rejected(408, "timeout", f"body not received within {deadline} s") from None
    if size == 0:
        raise Rejected(400, "empty_body", "empty body")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def strict_decode(decoder: "msgspec.json.Decoder[T]", body: bytes) -> T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise Rejected(422, "bad_shape", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise Rejected(400, "bad_json", f"malformed JSON: {exc}") from None


def check_prompt(request: schemas.MatchRequest) -> None:
    """A request without token ids: exactly one of prompt and messages, well formed (422)."""
    if (request.prompt is None) == (request.messages is None):
        raise Rejected(422, "bad_shape", "give one of token_ids, prompt or messages")
    if request.messages is not None:
        if not request.messages:
            raise Rejected(422, "bad_shape", "messages is empty")
        for position, message in enumerate(request.messages):
            if not isinstance(message.get("role"), str):
                raise Rejected(422, "bad_shape", f"messages[{position}] has no string role")
        if request.add_generation_prompt and request.continue_final_message:
            raise Rejected(
                422,
                "bad_shape",
                "add_generation_prompt and continue_final_message exclude each other",
            )


def tokenize_body(request: schemas.MatchRequest) -> bytes:
    """vLLM's ``/tokenize`` body for a checked prompt or chat request (its forms' defaults
    left to the engine when the request leaves ``add_special_tokens`` out)."""
    payload: dict[str, object] = {"model": request.model}
    if request.prompt is not None:
        payload["prompt"] = request.prompt
    else:
        payload["messages"] = request.messages
        payload["add_generation_prompt"] = request.add_generation_prompt
        payload["continue_final_message"] = request.continue_final_message
    if request.add_special_tokens is not None:
        payload["add_special_tokens"] = request.add_special_tokens
    return _ENCODE.encode(payload)
