"""Simulated traffic: deterministic, shares prefixes the way real traffic does, bounded."""

from kvsync.sim import Adapter, Mix, PromptLibrary, QuerySampler, Request, Workload

LORA = Adapter(1, "sql-adapter")


def _requests(seed: int, count: int = 300, mix: Mix | None = None) -> list[Request]:
    workload = Workload(PromptLibrary(mix or Mix(), seed=1), seed=seed, adapter=LORA)
    return [workload.next_request() for _ in range(count)]


def test_same_seed_same_requests_and_other_seed_other_requests() -> None:
    assert _requests(5) == _requests(5)
    assert _requests(5) != _requests(6)


def test_new_conversations_start_with_a_shared_system_prompt() -> None:
    library = PromptLibrary(Mix(), seed=1)
    requests = _requests(3)
    starts = [r for r in requests if any(r.prompt[: len(p)] == p for p in library.prompts)]
    assert len(starts) == len(requests)  # follow-ups extend a conversation that started so
    used = {p for p in library.prompts for r in requests if r.prompt[: len(p)] == p}
    assert len(used) > 1


def test_follow_ups_extend_an_earlier_turn_with_its_adapter_and_salt() -> None:
    requests = _requests(3, count=400, mix=Mix(salt_share=0.3))
    follow_ups = 0
    for i, request in enumerate(requests):
        earlier = [
            r
            for r in requests[:i]
            if len(r.tokens) < len(request.prompt) and request.prompt[: len(r.tokens)] == r.tokens
        ]
        if earlier:
            follow_ups += 1
            assert (request.adapter, request.cache_salt) == (
                earlier[-1].adapter,
                earlier[-1].cache_salt,
            )
    assert 100 < follow_ups < 300  # follow_up_share 0.5


def test_lora_and_salt_shares_and_token_bounds() -> None:
    mix = Mix(lora_share=0.5, salt_share=0.2, max_tokens=1024)
    requests = _requests(9, count=500, mix=mix)
    assert 100 < sum(r.adapter == LORA for r in requests) < 400
    assert 20 < sum(r.cache_salt is not None for r in requests) < 200
    assert all(len(r.tokens) <= mix.max_tokens for r in requests)
    assert all(0 <= t < mix.vocab for r in requests for t in r.tokens)


def test_no_salts_and_no_adapter_when_disabled() -> None:
    workload = Workload(PromptLibrary(Mix(salt_share=1.0)), seed=1, salts=False)
    requests = [workload.next_request() for _ in range(100)]
    assert all(r.adapter is None and r.cache_salt is None for r in requests)


def test_queries_mix_recent_prefixes_system_prompts_and_misses() -> None:
    library = PromptLibrary(Mix(), seed=1)
    recent = _requests(4, count=50)
    sampler = QuerySampler(library, model="m", block_size=16, seed=2)
    queries = [sampler.sample(recent) for _ in range(300)]
    again = QuerySampler(library, model="m", block_size=16, seed=2)
    assert queries == [again.sample(recent) for _ in range(300)]
    from_recent = [q for q in queries if any(r.tokens[:16] == q.token_ids[:16] for r in recent)]
    assert len(from_recent) > 100
    assert any(q.lora_name == "sql-adapter" for q in from_recent)
    assert all(q.model == "m" for q in queries)
    lengths = {len(q.token_ids) // 16 for q in from_recent}
    assert len(lengths) > 10  # various depths
    assert QuerySampler(library, model="m", block_size=16).sample([]).token_ids


def test_query_body_is_the_http_api_shape() -> None:
    library = PromptLibrary(Mix(), seed=1)
    query = QuerySampler(library, model="m", block_size=16).sample(_requests(4, count=5))
    body = query.body()
    assert body["model"] == "m"
    assert body["token_ids"] == list(query.token_ids)
    assert set(body) <= {"model", "token_ids", "lora_name", "lora_id", "cache_salt"}


def test_requests_never_exceed_the_context_window() -> None:
    mix = Mix(max_tokens=100)  # shorter than some system prompts
    requests = _requests(2, count=200, mix=mix)
    assert max(len(r.tokens) for r in requests) == 100
    assert all(r.prompt for r in requests)
