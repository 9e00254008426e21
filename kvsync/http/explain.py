"""``POST /v1/explain``: per endpoint, how far it matches and why it stops there. I/O edge (pure
logic over what the backend and ingest remember).

The backend's part (``kvsync.index.explain``: the walk, the block it stopped at, a removal or an
eviction it remembers) is joined with ingest's (``EndpointView``: state, the latest resets) and
the seq of the removing batch (``removal_seq``). The reason given for a run that stops at block
k, first that applies:

1. ``replaying``: the endpoint is replaying missed batches now (blocks show once applied);
2. the later of what the backend remembers of block k (``removed`` at t, seq s; ``evicted`` by
   capacity at t) and the endpoint's latest reset (``reset`` at t, ``cause`` the reason:
   restart, hole, gap, replay_failed, lost_removal, undecodable, all_blocks_cleared);
3. ``context_evicted``: the whole (model, adapter, block size) was evicted (max_contexts,
   idle_ttl);
4. ``never_stored``: nothing is remembered (never stored, or the capped memory forgot it).

A run over every query block says ``query_end``. Raises nothing.
"""

from collections.abc import Callable, Mapping, Sequence

from kvsync.http import schemas
from kvsync.http.views import EndpointView
from kvsync.index.explain import BlockMemory, EndpointRun, Explanation
from kvsync.model import EndpointId

RemovalSeq = Callable[[EndpointId, float], int | None]


def _cause(
    run: EndpointRun,
    query_blocks: int,
    view: EndpointView | None,
    gone: BlockMemory | None,
    removal_seq: RemovalSeq,
) -> schemas.BlockCause:
    if run.stopped_at >= query_blocks:
        if not query_blocks:
            return schemas.BlockCause("query_end", "the query has no full block")
        return schemas.BlockCause("query_end", "holds every full block of the query")
    block = f"block {run.stopped_at}"
    if view is not None and view.state == "replaying":
        return schemas.BlockCause("replaying", f"replaying missed batches; {block} may follow")
    memo = run.memory
    reset = view.resets[-1] if view is not None and view.resets else None
    if memo is not None and (reset is None or memo.at >= reset[0]):
        if memo.reason == "removed":
            seq = removal_seq(run.endpoint, memo.at)
            where = "" if seq is None else f" by the batch of seq {seq}"
            return schemas.BlockCause("removed", f"{block} was removed{where}", memo.at, seq)
        return schemas.BlockCause(
            "evicted", f"{block} was evicted by kvsync ({memo.cause})", memo.at, cause=memo.cause
        )
    if reset is not None:
        at, reason = reset
        detail = f"the endpoint was reset ({reason}): blocks stored before it are unknown"
        return schemas.BlockCause("reset", detail, at, cause=reason)
    if gone is not None:
        detail = f"the context was evicted by kvsync ({gone.cause})"
        return schemas.BlockCause("context_evicted", detail, gone.at, cause=gone.cause)
    return schemas.BlockCause("never_stored", f"{block} was never stored (or is forgotten)")


def explain_response(
    explanation: Explanation,
    *,
    model: str,
    index_model: str,
    lora_name: str | None,
    token_count: int,
    views: Sequence[EndpointView],
    removal_seq: RemovalSeq,
    speculative: Mapping[EndpointId, int],
    ages: Callable[[EndpointId], float | None],
    pods: frozenset[str] | None,
    tokenized: schemas.TokenizedBy | None,
) -> schemas.ExplainResponse:
    """The answer: the backend's runs, then the model's endpoints that never stored into it."""
    by_id = {view.id: view for view in views}
    runs = list(explanation.runs)
    seen = {run.endpoint for run in runs}
    runs.extend(
        EndpointRun(view.id, 0, 0, None)  # subscribed for the model, nothing in this context
        for view in views
        if view.model == index_model
        and view.id not in seen
        and (pods is None or view.id.pod in pods)
    )
    endpoints = []
    for run in runs:
        found = by_id.get(run.endpoint)
        why = _cause(run, explanation.query_blocks, found, explanation.context_gone, removal_seq)
        endpoints.append(
            schemas.EndpointExplanation(
                pod=run.endpoint.pod,
                dp_rank=run.endpoint.dp_rank,
                matched_blocks=run.matched_blocks,
                stopped_at=run.stopped_at,
                why=why,
                state="unknown" if found is None else found.state,
                last_seq=None if found is None else found.last_seq,
                last_event_age_s=ages(run.endpoint),
                speculative_blocks=speculative.get(run.endpoint, 0),
            )
        )
    return schemas.ExplainResponse(
        model=model,
        lora_name=lora_name,
        block_size=explanation.block_size,
        query_blocks=explanation.query_blocks,
        token_count=token_count,
        endpoints=endpoints,
        tokenized=tokenized,
    )
