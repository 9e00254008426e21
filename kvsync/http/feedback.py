"""``POST /v1/feedback``'s body → the audit's ``Report``, and its verdict → the answer. Pure.

The route tokenizes a prompt as ``/v1/match`` does and builds the query the same way
(``answers.query_of``), so the report names the context and tokens the answer was kept under
(``kvsync.audit.memo``). Raises nothing.
"""

from kvsync.audit.ledger import Report, Verdict
from kvsync.http import schemas
from kvsync.index import values
from kvsync.model import EndpointId


def report_of(feedback: schemas.FeedbackRequest, query: values.Query) -> Report:
    return Report(
        model=query.model,
        token_ids=query.token_ids,
        endpoint=EndpointId(feedback.pod, feedback.dp_rank),
        cached_tokens=feedback.cached_tokens,
        lora_name=query.lora_name,
        lora_id=query.lora_id,
        cache_salt=query.cache_salt,
    )


def verdict_response(verdict: Verdict) -> schemas.FeedbackResponse:
    return schemas.FeedbackResponse(
        outcome=verdict.outcome,
        predicted_tokens=verdict.predicted_tokens,
        cached_tokens=verdict.cached_tokens,
        error_tokens=verdict.error_tokens,
    )
