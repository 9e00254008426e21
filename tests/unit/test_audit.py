"""The audit: answers kept per query, judged against what the engine reported."""

import array

from kvsync.audit.ledger import Audit, Counters, Outcome, Report, Verdict
from kvsync.audit.memo import AnswerMemo, digest, query_key
from kvsync.index.values import Match, MatchResult, Query
from kvsync.model import Endpoint, EndpointId

A = EndpointId("default/vllm-a", 0)
B = EndpointId("default/vllm-b", 1)
TOKENS = list(range(100))  # 6 full blocks of 16, and 4 tokens: at most 6 blocks are reusable


def _result(**matched_blocks: int) -> MatchResult:
    endpoints = {"a": A, "b": B}
    matches = [Match(endpoints[name], blocks, float(blocks), {"GPU": blocks}, 16)
               for name, blocks in matched_blocks.items()]  # fmt: skip
    return MatchResult(block_size=16, query_blocks=len(TOKENS) // 16, matches=matches)


def _report(endpoint: EndpointId, cached: int, tokens: list[int] = TOKENS) -> Report:
    return Report(model="llama", token_ids=tokens, endpoint=endpoint, cached_tokens=cached)


def test_the_digest_is_the_same_for_the_c_parsers_buffer_and_a_list() -> None:
    as_buffer = memoryview(array.array("I", TOKENS).tobytes()).cast("I")
    assert digest(as_buffer) == digest(TOKENS)
    assert digest(TOKENS) != digest(TOKENS[:-1])


def test_exact_over_under_and_unknown() -> None:
    seen: list[tuple[str, Verdict]] = []
    audit = Audit(AnswerMemo(), on_verdict=lambda model, v: seen.append((model, v)))
    audit.memo.remember(Query("llama", TOKENS), _result(a=4, b=2), now=0.0)
    assert audit.judge(_report(A, 64), now=1.0) == Verdict(Outcome.EXACT, 64, 64, 0)
    assert audit.judge(_report(B, 16), now=1.0) == Verdict(Outcome.OVER, 32, 16, 16)
    other = EndpointId("default/vllm-c", 0)  # not in the answer: kvsync predicted nothing
    assert audit.judge(_report(other, 48), now=1.0) == Verdict(Outcome.UNDER, 0, 48, -48)
    never_asked = _report(A, 0, tokens=TOKENS[:50])
    assert audit.judge(never_asked, now=1.0) == Verdict(Outcome.UNKNOWN, None, 0, None)
    assert [v.outcome for _, v in seen] == ["exact", "over", "under", "unknown"]
    view = audit.endpoint(A)
    assert view is not None
    assert (view.requests, view.exact, view.unknown) == (2, 1, 1)


def test_a_prompt_held_whole_predicts_what_vllm_reuses() -> None:
    tokens = list(range(96))  # exactly 6 blocks: vLLM computes the last token again
    audit = Audit(AnswerMemo())
    result = MatchResult(16, 6, [Match(A, 6, 6.0, {"GPU": 6}, 16)])
    audit.memo.remember(Query("llama", tokens), result, now=0.0)
    verdict = audit.judge(_report(A, 80, tokens=tokens), now=0.0)
    assert (verdict.outcome, verdict.predicted_tokens) == (Outcome.EXACT, 80)


def test_the_query_must_be_the_same_and_recent() -> None:
    memo = AnswerMemo(window_s=10.0, max_answers=2)
    audit = Audit(memo)
    memo.remember(Query("llama", TOKENS, lora_name="sql"), _result(a=4), now=0.0)
    assert audit.judge(_report(A, 64), now=1.0).outcome is Outcome.UNKNOWN  # no adapter
    salted = Report("llama", TOKENS, A, 64, lora_name="sql", cache_salt="s")
    assert audit.judge(salted, now=1.0).outcome is Outcome.UNKNOWN
    same = Report("llama", TOKENS, A, 64, lora_name="sql")
    assert audit.judge(same, now=1.0).outcome is Outcome.EXACT
    assert audit.judge(same, now=10.5).outcome is Outcome.UNKNOWN  # out of the window
    for n in range(3):  # bounded: the oldest answer goes first
        memo.remember(Query("llama", TOKENS[: 20 + n]), _result(a=1), now=20.0)
    assert len(memo) == 2


def test_a_pod_filtered_out_of_the_question_is_unknown() -> None:
    audit = Audit(AnswerMemo())
    audit.memo.remember(Query("llama", TOKENS, pods=frozenset({A.pod})), _result(a=4), now=0)
    assert audit.judge(_report(B, 0), now=0).outcome is Outcome.UNKNOWN
    assert audit.judge(_report(A, 64), now=0).outcome is Outcome.EXACT


def test_the_latest_answer_for_a_query_is_the_one_judged() -> None:
    audit = Audit(AnswerMemo())
    audit.memo.remember(Query("llama", TOKENS), _result(a=1), now=0.0)
    audit.memo.remember(Query("llama", TOKENS), _result(a=5), now=1.0)
    assert audit.judge(_report(A, 80), now=2.0).predicted_tokens == 80


def test_drift_is_predicted_minus_the_engines_own_hit_rate() -> None:
    counters = {A: Counters(epoch=5.0, queries=0, hits=0)}
    audit = Audit(AnswerMemo(), counters=counters.get)
    audit.memo.remember(Query("llama", TOKENS), _result(a=4), now=0.0)
    audit.judge(_report(A, 32), now=1.0)  # kvsync promised 64 of 100 tokens, the engine had 32
    counters[A] = Counters(epoch=5.0, queries=100, hits=32)
    view = audit.endpoint(A)
    assert view is not None
    assert (view.predicted_hit_rate, view.reported_hit_rate, view.engine_hit_rate) == (
        0.64, 0.32, 0.32)  # fmt: skip
    assert view.drift == 0.32
    assert (view.over, view.exact) == (1, 0)
    # The engine restarted (a new epoch): the sums start again with the next report.
    counters[A] = Counters(epoch=9.0, queries=0, hits=0)
    assert audit.endpoint(A).engine_hit_rate is None  # type: ignore[union-attr]
    audit.judge(_report(A, 64), now=2.0)
    view = audit.endpoint(A)
    assert view is not None
    assert (view.requests, view.exact, view.over) == (1, 1, 0)


def test_reports_about_endpoints_kvsync_does_not_serve_keep_no_sums() -> None:
    audit = Audit(AnswerMemo(), known_only=True, max_endpoints=2)
    audit.set_endpoint(Endpoint(A, "llama", "tcp://10.0.0.1:5557"))
    audit.memo.remember(Query("llama", TOKENS), _result(a=4), now=0.0)
    stranger = EndpointId("made/up", 0)
    assert audit.judge(_report(stranger, 0), now=0.0).outcome is Outcome.EXACT  # still judged
    assert audit.endpoint(stranger) is None
    assert audit.judge(_report(A, 64), now=0.0).outcome is Outcome.EXACT
    assert audit.endpoint(A) is not None
    audit.remove_endpoint(A)
    assert audit.endpoint(A) is None
    audit.judge(_report(stranger, 0), now=0.0)  # the next judgement drops the removed sums
    assert audit._sums == {}


def test_at_most_max_endpoints_are_kept() -> None:
    audit = Audit(AnswerMemo(), max_endpoints=2)
    audit.memo.remember(Query("llama", TOKENS), _result(a=4), now=0.0)
    for n in range(5):
        audit.judge(_report(EndpointId(f"pod-{n}", 0), 0), now=0.0)
    assert len(audit._sums) == 2


def test_the_memo_is_bounded_by_the_endpoint_entries_it_keeps() -> None:
    memo = AnswerMemo(max_matches=5)
    for n in range(4):  # 2 matching endpoints per answer: the oldest go past 5 entries
        memo.remember(Query("llama", TOKENS[: 20 + n]), _result(a=1, b=1), now=0.0)
    assert len(memo) == 2
    assert memo.recall(query_key("llama", TOKENS[:23]), now=0.0) is not None
    assert memo.recall(query_key("llama", TOKENS[:20]), now=0.0) is None
