"""The continuous-batching engine: its tokens equal the lockstep sampler's for the same seeds and
budgets (mixed per-request budgets, plain lengths, the original's EOS rule, evictions under a
small page pool), its ragged attention equals the gathered one, and its errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from e1jax.engine import Engine, EngineConfig, Request, response_width
from e1jax.engine.paged import PagedCache, RaggedReader, TableReader
from e1jax.errors import E1Error
from e1jax.models import ModelConfig
from e1jax.models.params import init_params
from e1jax.sampling import SamplingParams, SpecialIds, generate
from test_sampler import CLOSE, IDS, PAD, SMALL, prompts_for as _prompts
from test_sampler import MODEL as QWEN3


@pytest.fixture(scope="module")
def small_params():
    return init_params(SMALL, 0)


def _engine_run(config, params, prompts, tb, sb, n, seed, sampling, engine=EngineConfig(slots=4, page_size=4,
                steps_per_call=4), eos_in_thinking="stop"):
    plain = tb is None
    requests = [Request(tuple(p), None if plain else int(tb[i]), int(sb[i]), sample_id=i * n + j)
                for i, p in enumerate(prompts) for j in range(n)]
    eng = Engine(config, params, IDS, engine, max_response=response_width(requests, IDS, eos_in_thinking),
                 max_prompt=16, sampling=sampling, seed=seed, eos_in_thinking=eos_in_thinking)
    return eng.run(requests), eng


def _assert_same(done, ref):
    assert len(done) == len(ref)
    for row, c in enumerate(done):
        want = ref.response_ids(row)
        assert list(c.tokens) == want, row
        np.testing.assert_allclose(c.logprobs, ref.logprobs[row, :len(want)], rtol=1e-4, atol=1e-5)
        assert (c.forced == ref.forced[row, :len(want)]).all()
        assert c.truncated == bool(ref.truncated[row])


def test_elastic_tokens_equal_the_lockstep_sampler_with_mixed_budgets(small_params):
    prompts = _prompts(12, 6)
    tb, sb = [3, 8, 5, 12, 2, 7], [4, 6, 3, 9, 5, 2]
    sampling = SamplingParams(1.0)
    ref = generate(SMALL, small_params, prompts, ids=IDS, think_budget=tb, solution_budget=sb, sampling=sampling,
                   n=3, seed=4)
    done, eng = _engine_run(SMALL, small_params, prompts, tb, sb, 3, 4, sampling)
    _assert_same(done, ref)
    reasons = {ref.finish_reason[r] for r in range(len(ref))}
    assert len(reasons) >= 2 and ref.truncated.any()  # the phases and finish reasons are exercised
    # 18 samples through 4 slots: requests entered as slots freed up; siblings copied the prompt's pages
    assert eng.stats["decode_calls"] > 3 and eng.stats["copied_prompts"] > 0
    assert not eng.running and len(eng.free_pages) == eng.cache.pages - 1  # every page returned


def test_plain_and_top_p_on_qwen3_equal_the_lockstep_sampler():
    params = init_params(QWEN3, 1)
    prompts = _prompts(64, 5, seed=1)
    lengths = [3, 17, 9, 30, 1]
    sampling = SamplingParams(0.8, top_p=0.9)
    ref = generate(QWEN3, params, prompts, ids=IDS, mode="plain", max_new_tokens=lengths, sampling=sampling, n=2,
                   seed=9)
    done, _ = _engine_run(QWEN3, params, prompts, None, lengths, 2, 9, sampling,
                          engine=EngineConfig(slots=3, page_size=8, steps_per_call=5))
    _assert_same(done, ref)


def test_original_eos_rule_and_evictions_keep_the_samples(small_params):
    prompts = _prompts(12, 4, seed=3)
    tb, sb = [10, 10, 10, 10], [6, 6, 6, 6]
    sampling = SamplingParams(1.0)
    ref = generate(SMALL, small_params, prompts, ids=IDS, think_budget=tb, solution_budget=sb, sampling=sampling,
                   n=4, seed=2, eos_in_thinking="append_close")
    # a pool of two requests' pages for 4 slots: slots run dry, the youngest give their pages back
    small_pool = EngineConfig(slots=4, page_size=4, steps_per_call=4, kv_tokens=2 * 4 * 8)
    done, eng = _engine_run(SMALL, small_params, prompts, tb, sb, 4, 2, sampling, engine=small_pool,
                            eos_in_thinking="append_close")
    _assert_same(done, ref)
    assert eng.stats["evictions"] > 0


def test_ragged_attention_equals_the_gathered_pages():
    rng = np.random.default_rng(0)
    config = ModelConfig("qwen2", 16, 16, 32, 1, 4, 2, 8, max_position_embeddings=256)
    cache = PagedCache.zeros(config, 12, 4)
    k, v = (jnp.asarray(rng.normal(size=x.shape).astype(np.float32)) for x in (cache.k[0], cache.v[0]))
    held = [[3, 7, 1], [5], [2, 9, 10]]
    lengths = np.array([10, 3, 12])
    table = np.zeros((3, 3), np.int32)
    for s, pages in enumerate(held):
        table[s, :len(pages)] = pages
    q = jnp.asarray(rng.normal(size=(3, 1, 4, 8)).astype(np.float32))
    positions = jnp.asarray(lengths[:, None] - 1)
    want = TableReader(jnp.asarray(table)).attend(q, k, v, positions, jnp.asarray(lengths), jnp.float32)
    flat = [(p, s, j * 4) for s, pages in enumerate(held) for j, p in enumerate(pages)] + [(0, 3, 0)] * 2
    reader = RaggedReader(*(jnp.asarray(x, jnp.int32) for x in zip(*flat)))
    got = reader.attend(q, k, v, positions, jnp.asarray(lengths), jnp.float32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_completions_arrive_as_they_finish(small_params):
    never_ends = SpecialIds(think_close_ids=(CLOSE,), eos_ids=(-1,), pad_id=PAD)  # each runs to its length
    eng = Engine(SMALL, small_params, never_ends, EngineConfig(slots=2, page_size=4, steps_per_call=2),
                 max_response=64, max_prompt=16, sampling=SamplingParams(0.0))
    for i, length in enumerate([40, 3, 5]):
        eng.submit(Request((6, 7, 8), None, length, sample_id=i, tag=i))
    done = list(eng.completions())
    assert [len(c.tokens) for c in done] == [3, 5, 40]
    assert [c.request.tag for c in done] == [1, 2, 0]  # the short ones finish (and the third enters) while the long one runs


def test_bad_requests_are_refused(small_params):
    eng = Engine(SMALL, small_params, IDS, EngineConfig(slots=2, page_size=4), max_response=64, max_prompt=8)
    with pytest.raises(E1Error, match="longer than the engine's max_prompt 8"):
        eng.submit(Request(tuple(range(6, 16)), 4, 4))
    with pytest.raises(E1Error, match="more than the engine's max_response 64"):
        eng.submit(Request((6, 7), 60, 60))
    with pytest.raises(E1Error, match="prompt is empty"):
        eng.submit(Request((), 4, 4))
    with pytest.raises(E1Error, match="budgets must be positive"):
        eng.submit(Request((6,), 0, 4))
    tight = Engine(SMALL, small_params, IDS, EngineConfig(slots=2, page_size=4, kv_tokens=16), max_response=64,
                   max_prompt=8)
    with pytest.raises(E1Error, match="2 prompt tokens and up to 17 new ones needs 5 KV pages; kv_tokens=16 holds 4"):
        tight.submit(Request((6, 7), 8, 8))
    with pytest.raises(E1Error, match="engine slots must be positive"):
        EngineConfig(slots=0)
