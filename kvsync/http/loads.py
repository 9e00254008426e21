"""The engines' load in answers: the ``LoadViews`` seam and the load-weighted score. Pure.

``http`` and ``load`` are sibling stages: the runtime hands the API a ``LoadViews``
(``kvsync.daemon.load_views.TableViews`` over the load table). ``weigh`` turns an answer into the
cache-versus-load ranking of README's ``load_weight``: every endpoint serving the model, scored
``(1 - w) x cache + w x (1 - load)``. Raises nothing.
"""

from collections.abc import Callable, Sequence
from typing import Final, Protocol

import msgspec

from kvsync.http import schemas
from kvsync.model import EndpointId

# (running + waiting, KV-cache usage) of an engine whose last scrape succeeded
Figures = tuple[float, float | None]


class LoadViews(Protocol):
    """What the answers ask of the load scraper."""

    def encoded(self, endpoint: EndpointId, now: float) -> msgspec.Raw | None:
        """The endpoint's ``schemas.EndpointLoad`` at ``now`` (``time.monotonic()``) as JSON;
        None: not scraped."""
        ...

    def figures(self, endpoint: EndpointId) -> Figures | None:
        """The queue and KV-cache usage of an endpoint whose last scrape succeeded."""
        ...

    def endpoints_of(self, model: str) -> Sequence[EndpointId]:
        """Every scraped endpoint serving ``model``: the candidates of a load-weighted answer."""
        ...


class _NoLoad:
    def encoded(self, endpoint: EndpointId, now: float) -> msgspec.Raw | None:
        return None

    def figures(self, endpoint: EndpointId) -> Figures | None:
        return None

    def endpoints_of(self, model: str) -> Sequence[EndpointId]:
        return ()


NO_LOAD: Final[LoadViews] = _NoLoad()


def load_of(figures: Figures | None, busiest: float) -> float:
    """0..1, the load half of a load-weighted score: the mean of the engine's queue (running +
    waiting, over the busiest candidate's) and its KV-cache usage. An engine whose figures are
    unknown or stale (its last scrape failed) counts as fully loaded."""
    if figures is None:
        return 1.0
    queue, usage = figures
    queued = queue / busiest if busiest > 0 else 0.0
    if usage is None:
        return min(1.0, queued)
    return min(1.0, (queued + usage) / 2)


def weigh(
    matches: list[schemas.EndpointMatch],
    *,
    weight: float,
    model: str,
    pods: frozenset[str] | None,
    query_blocks: int,
    load: LoadViews,
    seen: float,
    event_age: Callable[[EndpointId], float | None],
) -> list[schemas.EndpointMatch]:
    """Every endpoint of ``model`` (``pods`` only, if given), scored and sorted."""
    held = {EndpointId(m.pod, m.dp_rank) for m in matches}
    matches = matches + [
        schemas.EndpointMatchWire(
            pod=endpoint.pod,
            dp_rank=endpoint.dp_rank,
            matched_blocks=0,
            matched_tokens=0,
            percent=0,
            score=0.0,
            by_medium={},
            last_event_age_s=event_age(endpoint),
            load=load.encoded(endpoint, seen),
        )
        for endpoint in load.endpoints_of(model)
        if endpoint not in held and (pods is None or endpoint.pod in pods)
    ]
    figures = [load.figures(EndpointId(m.pod, m.dp_rank)) for m in matches]
    busiest = max((f[0] for f in figures if f is not None), default=0.0)
    weighed = [
        msgspec.structs.replace(
            m,
            score=round(
                (1 - weight) * (m.score / query_blocks if query_blocks else 0.0)
                + weight * (1 - load_of(f, busiest)),
                6,
            ),
        )
        for m, f in zip(matches, figures, strict=True)
    ]
    weighed.sort(key=lambda m: (-m.score, -m.matched_blocks, m.pod, m.dp_rank))
    return weighed
