"""The elastic sampler: budget invariants, parity, log-probs, recompilation, sweep, sharding."""

import jax
import numpy as np
import pytest

from e1jax.errors import E1Error
from e1jax.models import ModelConfig
from e1jax.models.params import init_params
from e1jax.models.scoring import next_token_logprobs
from e1jax.sampling import SamplingParams, SpecialIds, budget_sweep, check_context, generate, prompt_bucket
import importlib  # noqa: E402

generate_module = importlib.import_module("e1jax.sampling.generate")

CLOSE, EOS, PAD = 5, 1, 0
IDS = SpecialIds(think_close_ids=(CLOSE,), eos_ids=(EOS, 2), pad_id=PAD)
# A tiny vocabulary makes </think> and EOS come up naturally under sampling.
SMALL = ModelConfig("qwen2", 12, 32, 64, 2, 4, 2, 8, max_position_embeddings=512)
MODEL = ModelConfig("qwen3", 64, 32, 64, 2, 4, 2, 8, max_position_embeddings=512)


@pytest.fixture(scope="module")
def small_params():
    return init_params(SMALL, 0)


@pytest.fixture(scope="module")
def params():
    return init_params(MODEL, 1)


def prompts_for(vocab, count, seed=0):
    rng = np.random.RandomState(seed)
    return [list(rng.randint(6, vocab, rng.randint(2, 9))) for _ in range(count)]


def check_invariants(out, ids=IDS):
    close_len = len(ids.think_close_ids)
    seen = set()
    for r in range(len(out)):
        t, s = out.think_budget[r], out.solution_budget[r]
        ids_r = out.response_ids(r)
        length = out.lengths[r]
        thinking, solution = out.thinking_tokens[r], out.solution_tokens[r]
        assert (out.tokens[r, length:] == ids.pad_id).all(), "tokens written after done"
        assert thinking <= t
        assert solution <= s
        reason = out.finish_reason[r]
        seen.add((reason, bool(out.truncated[r])))
        if reason == "eos_in_thinking":
            assert ids_r[-1] in ids.eos_ids and CLOSE not in ids_r and not out.forced[r].any()
            assert length == thinking
            continue
        assert length == thinking + (close_len if out.truncated[r] else 1) + solution
        if out.truncated[r]:
            # the forced close stands exactly where the thinking budget ran out
            assert thinking == t
            assert ids_r[t : t + close_len] == list(ids.think_close_ids)
            assert out.forced[r, t : t + close_len].all() and out.forced[r].sum() == close_len
            assert not any(tok == ids.natural_close for tok in ids_r[:t])
        else:
            # the model's own </think> before the budget is kept, not forced
            assert ids_r[thinking] == ids.natural_close and not out.forced[r].any()
        assert not any(tok in ids.eos_ids for tok in ids_r[:thinking])
        if reason == "eos":
            assert ids_r[-1] in ids.eos_ids
            assert not any(tok in ids.eos_ids for tok in ids_r[thinking + 1 : -1])
        else:
            assert reason == "solution_budget" and solution == s
    return seen


def test_budget_invariants_with_sampling_and_mixed_budgets(small_params):
    prompts = prompts_for(SMALL.vocab_size, 8)
    think = [1, 2, 3, 5, 8, 13, 4, 6]
    sol = [1, 3, 2, 6, 4, 5, 7, 2]
    seen = set()
    for seed in range(3):
        out = generate(SMALL, small_params, prompts, ids=IDS, think_budget=think, solution_budget=sol,
                       sampling=SamplingParams(1.0), n=4, seed=seed)
        assert list(out.think_budget) == list(np.repeat(think, 4))
        seen |= check_invariants(out)
    # every path of the state machine was exercised
    assert {("eos", True), ("eos", False), ("solution_budget", True), ("solution_budget", False), ("eos_in_thinking", False)} <= seen


def test_multi_token_close_and_eos_compat(small_params):
    ids = SpecialIds(think_close_ids=(7, 8, CLOSE), eos_ids=(EOS,), pad_id=PAD)
    out = generate(SMALL, small_params, prompts_for(SMALL.vocab_size, 6), ids=ids, think_budget=3, solution_budget=4,
                   sampling=SamplingParams(1.0), n=4, seed=1)
    check_invariants(out, ids)
    assert out.truncated.any()
    compat = generate(SMALL, small_params, prompts_for(SMALL.vocab_size, 6), ids=IDS, think_budget=6, solution_budget=3,
                      sampling=SamplingParams(1.0), n=8, seed=2, eos_in_thinking="append_close")
    eos_rows = [r for r in range(len(compat)) if EOS in compat.response_ids(r)[: compat.thinking_tokens[r]]]
    assert eos_rows, "no EOS while thinking in this draw"
    for r in eos_rows:
        ids_r = compat.response_ids(r)
        e = ids_r.index(EOS)
        assert ids_r[e + 1] == CLOSE and compat.forced[r, e + 1]  # the original appends </think> after EOS
        assert "eos_in_thinking" not in compat.finish_reason


def test_plain_greedy_equals_transformers_generate(tmp_path):
    torch = pytest.importorskip("torch")
    from hf_fixtures import make_hf_model

    from e1jax.models.hf import load_model

    torch_model = make_hf_model(tmp_path, "qwen2", vocab_size=90)
    config, params = load_model(tmp_path)
    prompts = prompts_for(90, 3, seed=4)
    out = generate(config, params, prompts, ids=SpecialIds((CLOSE,), (EOS,), PAD), mode="plain", max_new_tokens=12,
                   sampling=SamplingParams(0.0))
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            ref = torch_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=EOS,
                                       pad_token_id=PAD, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        expected = ref[0, len(prompt):].tolist()
        if EOS in expected:
            expected = expected[: expected.index(EOS) + 1]
        assert out.response_ids(i) == expected


def test_unbound_elastic_equals_plain(params):
    prompts = prompts_for(MODEL.vocab_size, 4, seed=2)
    for temperature in (0.0, 1.0):
        plain = generate(MODEL, params, prompts, ids=IDS, mode="plain", max_new_tokens=24, sampling=SamplingParams(temperature), n=2, seed=5)
        elastic = generate(MODEL, params, prompts, ids=IDS, think_budget=24, solution_budget=24, sampling=SamplingParams(temperature), n=2, seed=5)
        for r in range(len(plain)):
            a, b = plain.response_ids(r), elastic.response_ids(r)
            if plain.finish_reason[r] == "length":
                assert len(a) == 24 and b[:24] == a
            else:
                assert plain.finish_reason[r] == "eos" and b == a
                assert elastic.finish_reason[r] in ("eos", "eos_in_thinking") and not elastic.truncated[r]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_equal_scoring(params, temperature):
    prompts = prompts_for(MODEL.vocab_size, 3, seed=3)
    out = generate(MODEL, params, prompts, ids=IDS, think_budget=6, solution_budget=6, sampling=SamplingParams(temperature, top_p=0.9), n=2, seed=0)
    for r in range(len(out)):
        prompt, response = prompts[out.prompt_index[r]], out.response_ids(r)
        seq = np.asarray([prompt + response])
        logp = next_token_logprobs(MODEL, params, seq, np.ones_like(seq, bool), temperature=temperature)
        np.testing.assert_allclose(out.logprobs[r, : len(response)], np.asarray(logp)[0, len(prompt) - 1 :], atol=1e-4)


def test_top_k_one_is_greedy(params):
    prompts = prompts_for(MODEL.vocab_size, 2, seed=6)
    greedy = generate(MODEL, params, prompts, ids=IDS, think_budget=5, solution_budget=5, sampling=SamplingParams(0.0))
    topk = generate(MODEL, params, prompts, ids=IDS, think_budget=5, solution_budget=5, sampling=SamplingParams(1.3, top_k=1), seed=9)
    for r in range(len(greedy)):
        assert greedy.response_ids(r) == topk.response_ids(r)


def test_no_recompilation_for_budgets_seeds_settings_and_same_bucket_prompts(params):
    run = generate_module._generate_jit
    generate(MODEL, params, prompts_for(MODEL.vocab_size, 3, seed=0), ids=IDS, think_budget=4, solution_budget=4, n=2, seed=0)
    size = run._cache_size()
    generate(MODEL, params, prompts_for(MODEL.vocab_size, 3, seed=1), ids=IDS, think_budget=[2, 9, 5], solution_budget=7, n=2, seed=3,
             sampling=SamplingParams(0.9, top_p=0.8, top_k=5))
    generate(MODEL, params, prompts_for(MODEL.vocab_size, 4, seed=2), ids=IDS, think_budget=10, solution_budget=2, n=2, seed=4,
             sampling=SamplingParams(0.0))
    assert run._cache_size() == size
    sweep = budget_sweep(MODEL, params, prompts_for(MODEL.vocab_size, 3), ids=IDS, think_budgets=[2, 4], solution_budget=3, n=2)
    from e1jax.sampling import sweep as sweep_module

    sizes = sweep_module._think_jit._cache_size(), sweep_module._solve_jit._cache_size()
    budget_sweep(MODEL, params, prompts_for(MODEL.vocab_size, 3, seed=5), ids=IDS, think_budgets=[3, 7], solution_budget=4, n=2, seed=8)
    assert (sweep_module._think_jit._cache_size(), sweep_module._solve_jit._cache_size()) == sizes
    assert len(sweep) == 2


def test_budget_sweep_equals_separate_runs(small_params):
    prompts = prompts_for(SMALL.vocab_size, 5, seed=7)
    budgets = [1, 3, 6, 10]
    sweep = budget_sweep(SMALL, small_params, prompts, ids=IDS, think_budgets=budgets, solution_budget=4,
                         sampling=SamplingParams(1.0), n=3, seed=11)
    assert sorted(sweep) == budgets
    for budget in budgets:
        alone = generate(SMALL, small_params, prompts, ids=IDS, think_budget=budget, solution_budget=4,
                         sampling=SamplingParams(1.0), n=3, seed=11)
        got = sweep[budget]
        for r in range(len(alone)):
            assert got.response_ids(r) == alone.response_ids(r)
            assert got.finish_reason[r] == alone.finish_reason[r]
            assert got.truncated[r] == alone.truncated[r]
            np.testing.assert_allclose(got.logprobs[r, : got.lengths[r]], alone.logprobs[r, : alone.lengths[r]], atol=1e-5)
        check_invariants(got)


def test_budget_sweep_fills_its_cache_to_the_last_slot():
    """Thinking and solution both run to the edge of their buckets (64 each; EOS never matches and
    the close, one token of 4096, is not drawn here): the thinking pass's shorter cache, extended
    for the solutions, must hold it all."""
    config = SMALL.replace(vocab_size=4096)
    params = init_params(config, 1)
    ids = SpecialIds(think_close_ids=(3,), eos_ids=(-1,), pad_id=PAD)
    prompts = prompts_for(config.vocab_size, 3, seed=5)
    sweep = budget_sweep(config, params, prompts, ids=ids, think_budgets=[40, 63], solution_budget=61,
                         sampling=SamplingParams(1.0), seed=3)
    for budget in (40, 63):
        alone = generate(config, params, prompts, ids=ids, think_budget=budget, solution_budget=61,
                         sampling=SamplingParams(1.0), seed=3)
        got = sweep[budget]
        assert list(got.thinking_tokens) == [budget] * 3 and list(got.solution_tokens) == [61] * 3
        for r in range(3):
            assert got.response_ids(r) == alone.response_ids(r)
            np.testing.assert_allclose(got.logprobs[r, : got.lengths[r]], alone.logprobs[r, : alone.lengths[r]], atol=1e-5)


@pytest.mark.parametrize("mesh_spec,sweep", [("data=2,tensor=4", False), ("fsdp=8", True)])
def test_sharded_equals_single_device(mesh_spec, sweep):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    from e1jax.sharding import make_mesh

    config = ModelConfig("qwen2", 64, 32, 64, 2, 8, 4, 8, max_position_embeddings=512)
    prompts = prompts_for(config.vocab_size, 4, seed=8)
    mesh = make_mesh(mesh_spec)
    single_params, sharded_params = init_params(config, 2), init_params(config, 2, mesh=mesh)
    if not sweep:
        single = generate(config, single_params, prompts, ids=IDS, think_budget=6, solution_budget=6, sampling=SamplingParams(0.0), n=2)
        sharded = generate(config, sharded_params, prompts, ids=IDS, think_budget=6, solution_budget=6, sampling=SamplingParams(0.0), n=2, mesh=mesh)
        pairs = [(single, sharded)]
    else:
        kwargs = dict(ids=IDS, think_budgets=[2, 5], solution_budget=3, sampling=SamplingParams(1.0), n=2, seed=3)
        single = budget_sweep(config, single_params, prompts, **kwargs)
        sharded = budget_sweep(config, sharded_params, prompts, mesh=mesh, **kwargs)
        pairs = [(single[b], sharded[b]) for b in (2, 5)]
    for a, b in pairs:
        for r in range(len(a)):
            assert b.response_ids(r) == a.response_ids(r)
            np.testing.assert_allclose(b.logprobs[r, : b.lengths[r]], a.logprobs[r, : a.lengths[r]], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(think_budget=0), "thinking budget must be positive"),
        (dict(solution_budget=-3), "solution budget must be positive"),
        (dict(think_budget=400, solution_budget=200), "exceed the model's context"),
        (dict(max_prompt_len=3), "longer than the limit"),
    ],
)
def test_bad_requests_raise_clear_errors(params, kwargs, message):
    with pytest.raises(E1Error, match=message):
        generate(MODEL, params, [[6, 7, 8, 9]], ids=IDS, **kwargs)


def test_bad_top_p_refused():
    for value in (0.0, 1.5):
        with pytest.raises(E1Error, match="top-p"):
            SamplingParams(0.6, top_p=value)


def test_prompt_bucket_is_a_power_of_two_of_at_least_16():
    assert [prompt_bucket(n) for n in (0, 1, 16, 17, 100, 1024)] == [16, 16, 16, 32, 128, 1024]


# MODEL: vocabulary 64, context 512
@pytest.mark.parametrize(
    "prompts,kwargs,message",
    [
        ([], dict(think_budget=4, solution_budget=4), "no prompts given"),
        ([[6, 7], []], dict(think_budget=4, solution_budget=4), "^prompt 1 is empty$"),
        ([[6] * 9, [7] * 2, [8] * 10], dict(think_budget=4, solution_budget=4, max_prompt_len=8),
         r"^prompt 0 is 9 tokens, longer than the limit 8 \(2 of the 3 prompts are\)$"),
        ([[6] * 600], dict(think_budget=4, solution_budget=4), "prompt 0 is 600 tokens, longer than the limit 512"),
        ([[6, 64]], dict(think_budget=4, solution_budget=4), "prompt 0 has token id 64 outside the model's vocabulary .size 64."),
        ([[-1, 6]], dict(max_new_tokens=4), "prompt 0 has token id -1 outside"),
        ([[6] * 3, [7] * 10], dict(think_budget=400, solution_budget=102),
         "^prompt 1 .10 tokens. . thinking budget 400 . close 1 . solution budget 102 = 513 tokens exceed the model's context of 512$"),
        ([[6] * 3, [7] * 10], dict(think_budget=[500, 100], solution_budget=10),
         "^prompt 0 .3 tokens. . thinking budget 500 . close 1 . solution budget 10 = 514 tokens exceed the model's context of 512$"),
        ([[6] * 10], dict(max_new_tokens=503), "^prompt 0 .10 tokens. . max new tokens 503 = 513 tokens exceed the model's context of 512$"),
        ([[6] * 10], dict(think_budget=0, solution_budget=5), "thinking budget must be positive, got 0"),
        ([[6] * 10], dict(think_budget=[4, 4], solution_budget=5), "thinking budget must be one value or one per prompt .1."),
        ([[6] * 10], dict(), "give a thinking budget .elastic. or max_new_tokens .plain."),
    ],
)
def test_check_context_refusals(prompts, kwargs, message):
    with pytest.raises(E1Error, match=message):
        check_context(MODEL, prompts, ids=IDS, **kwargs)


def test_check_context_accepts_what_fits():
    check_context(MODEL, [[6] * 10, [7] * 3], ids=IDS, think_budget=[400, 407], solution_budget=100)  # 511, 511
    check_context(MODEL, [[6] * 10], ids=IDS, max_new_tokens=502, max_prompt_len=10)
    check_context(MODEL, longest_prompt=256, ids=IDS, think_budget=[128, 200], solution_budget=55)  # 256 + 200 + 1 + 55


def test_check_context_counts_the_real_close_length():
    prompt = [[6] * 10]
    one, three = IDS, SpecialIds(think_close_ids=(CLOSE, 6, 7), eos_ids=(EOS,), pad_id=PAD)
    check_context(MODEL, prompt, ids=one, think_budget=400, solution_budget=101)  # 10 + 400 + 1 + 101 = 512
    with pytest.raises(E1Error, match="close 3 . solution budget 101 = 514 tokens exceed"):
        check_context(MODEL, prompt, ids=three, think_budget=400, solution_budget=101)
    with pytest.raises(E1Error, match="exceed"):  # and generate refuses the same request
        generate(MODEL, None, prompt, ids=three, think_budget=400, solution_budget=101)


def test_check_context_names_the_dataset_and_problem_or_the_training_setting():
    with pytest.raises(E1Error, match="^dataset 'aime': problem 1 is empty$"):
        check_context(MODEL, [[6], []], ids=IDS, think_budget=4, solution_budget=4, label="problem", where="dataset 'aime'")
    with pytest.raises(E1Error, match="^dataset 'aime': problem 0 .3 tokens. . max new tokens 510 = 513 tokens exceed"):
        check_context(MODEL, [[6] * 3], ids=IDS, max_new_tokens=510, label="problem", where="dataset 'aime'")
    with pytest.raises(E1Error, match="^item #2 is empty$"):
        check_context(MODEL, [[6], [6], []], ids=IDS, max_new_tokens=4, label=lambda i: f"item #{i}")
    with pytest.raises(E1Error, match="^data.max_prompt_len with the rollout budgets: the longest prompt .300 tokens. . "
                                      "thinking budget 200 . close 1 . solution budget 12 = 513 tokens exceed the model's context of 512$"):
        check_context(MODEL, longest_prompt=300, ids=IDS, think_budget=200, solution_budget=12,
                      where="data.max_prompt_len with the rollout budgets")


def test_budget_sweep_checks_its_largest_budget():
    with pytest.raises(E1Error, match="thinking budget 500 . close 1 . solution budget 9 = 513 tokens exceed"):
        budget_sweep(MODEL, None, [[6, 7, 8]], ids=IDS, think_budgets=[4, 500], solution_budget=9)
