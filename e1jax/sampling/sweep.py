"""One-pass budget sweep: think once up to the largest budget, then solve for every budget.

Pass 1 decodes thinking up to max(budgets) and pauses (the KV cache is kept).
Pass 2 tiles that cache once per budget and, for each budget b, masks out the
thinking after the cut min(natural end, b), re-feeds the last kept token at a
fresh slot (same position, so identical logits), forces the close where the
budget cut and decodes the solution - all budgets in one batch.

Each sample's key comes from (seed, sample id) alone, and each token's from that key
and the token's index in the response (`loop.sample_keys`, the solve pass continuing
at index cut), so budget b's result is exactly what a separate run at budget b draws:
a truncation of the longest thinking, followed by its own solution.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.models.params import decode_layout
from e1jax.models.qwen import constrain_cache, extend_cache, map_cache_rows
from e1jax.sampling import loop, prepare
from e1jax.sampling.ops import SamplingParams
from e1jax.sharding import activate, to_host


@functools.partial(jax.jit, static_argnames=("config", "n", "cache_len", "out_width"))
def _think_jit(params, tokens, mask, max_budget, sample_ids, seed, settings, *, config, n, cache_len, out_width):
    cache, pending, position = loop.prefill(config, params, tokens, mask, n, cache_len)
    budget = jnp.full(pending.shape, max_budget, jnp.int32)
    keys = loop.sample_keys(seed, sample_ids)
    phase = jnp.full(pending.shape, loop.THINK, jnp.int32)
    state = loop.initial_state(cache, pending, position, phase, budget, budget, keys, out_width, settings.pad_id)
    final = loop.run_loop(config, params, state, settings, pause_thinking=True)
    return final.cache, {
        "tokens": final.tokens,
        "logprobs": final.logprobs,
        "used": final.think_used,
        "finish": final.finish,
        "first_position": position,
    }


@functools.partial(jax.jit, static_argnames=("config", "prompt_width", "out_width", "eos_forces_close"))
def _solve_jit(params, cache, think, budgets, solution_budget, sample_ids, seed, settings, *, config, prompt_width, out_width, eos_forces_close):
    cache = extend_cache(cache, out_width + 2)  # the thinking ran on a cache without the solution's slots
    rows = think["used"].shape[0]
    k = budgets.shape[0]
    used = think["used"]
    last = jnp.take_along_axis(think["tokens"], jnp.maximum(used - 1, 0)[:, None], axis=1)[:, 0]
    natural = (think["finish"] == loop.PAUSED) & (used > 0) & (last == settings.natural_close_id)
    eos = think["finish"] == loop.EOS_IN_THINKING
    ended = natural | eos

    b = budgets[:, None]  # (K, 1)
    early = ended[None, :] & (used[None, :] <= b)
    cut = jnp.where(early, used[None, :], b)  # (K, B)
    eos_phase = loop.CLOSE if eos_forces_close else loop.DONE
    phase = jnp.where(early & natural[None, :], loop.SOLVE, jnp.where(early & eos[None, :], eos_phase, loop.CLOSE))
    finish = jnp.where(early & eos[None, :] & (not eos_forces_close), loop.EOS_IN_THINKING, loop.RUNNING)
    pending = jnp.take_along_axis(jnp.broadcast_to(think["tokens"], (k,) + think["tokens"].shape), (cut - 1)[..., None], axis=2)[..., 0]
    position = think["first_position"][None, :] + cut

    slots = jnp.arange(cache["mask"].shape[1])
    keep = slots[None, None, :] < (prompt_width + cut - 1)[..., None]  # (K, B, S)
    tiled = map_cache_rows(lambda x: jnp.tile(x, (k,) + (1,) * (x.ndim - 1)), cache)
    tiled["mask"] = (cache["mask"][None] & keep).reshape(k * rows, -1)
    flat = lambda x: x.reshape((k * rows,) + x.shape[2:])  # noqa: E731
    state = loop.initial_state(
        constrain_cache(tiled),
        flat(pending),
        flat(position),
        flat(phase).astype(jnp.int32),
        flat(jnp.broadcast_to(b, (k, rows))).astype(jnp.int32),
        jnp.tile(solution_budget, k),
        jnp.tile(loop.sample_keys(seed, sample_ids), k),
        out_width,
        settings.pad_id,
    )
    state = state.replace(
        truncated=flat(~early),
        finish=flat(finish).astype(jnp.int32),
        think_used=flat(cut).astype(jnp.int32),
        key_offset=flat(cut).astype(jnp.int32),
    )
    final = loop.run_loop(config, params, state, settings, eos_forces_close=eos_forces_close)
    unflat = lambda x: x.reshape((k, rows) + x.shape[1:])  # noqa: E731
    return {
        "cut": cut,
        "tokens": unflat(final.tokens),
        "logprobs": unflat(final.logprobs),
        "forced": unflat(final.forced),
        "lengths": unflat(final.out_len),
        "truncated": unflat(final.truncated),
        "finish": unflat(final.finish),
    }


def budget_sweep(config: ModelConfig, params: Any, prompts: Sequence[Sequence[int]], *, ids: prepare.SpecialIds,
                 think_budgets: Sequence[int], solution_budget: int, sampling: SamplingParams = SamplingParams(),
                 n: int = 1, seed: int = 0, sample_ids: Sequence[int] | None = None, mesh: Mesh | None = None,
                 eos_in_thinking: prepare.EosInThinking = "stop",
                 max_prompt_len: int | None = None) -> dict[int, prepare.GenerationOutput]:
    """Elastic generation at every thinking budget, sharing the thinking: {budget: output}.
    Takes `generate`'s keyword arguments of the same names (elastic mode, one solution budget)."""
    budgets = sorted(set(int(b) for b in think_budgets))
    if not budgets:
        raise E1Error("no thinking budgets given")
    if budgets[0] <= 0 or solution_budget <= 0:
        raise E1Error(f"budgets must be positive, got thinking {budgets} and solution {solution_budget}")
    prompts = [list(map(int, p)) for p in prompts]
    count = len(prompts)
    sb = np.full(count, solution_budget, np.int64)
    prepare.check_context(config, prompts, ids=ids, think_budget=budgets[-1], solution_budget=solution_budget,
                  max_prompt_len=max_prompt_len)
    close_len = len(ids.think_close_ids)

    width = prepare.prompt_bucket(max(len(p) for p in prompts))
    think_width = prepare.generation_bucket(budgets[-1] + 1)
    solve_width = prepare.generation_bucket(solution_budget + 2 * close_len + 1)
    think_cache_len = width + think_width + 2
    rows = prepare.batch_bucket(count, prepare.data_multiple(mesh))
    tokens, mask = prepare.pad_prompts(prompts, width, rows, ids.pad_id)
    id_rows = prepare.sample_id_rows(sample_ids, count, n, rows)
    sb_rows = np.full(rows * n, solution_budget, np.int32)
    placed = prepare.place(mesh, {"tokens": tokens, "mask": mask, "ids": id_rows, "sb": sb_rows})
    think_settings = prepare.loop_settings(sampling, ids, think_width + 1)
    solve_settings = prepare.loop_settings(sampling, ids, solve_width + 1)

    params = decode_layout(params)
    with activate(mesh):
        cache, think = _think_jit(
            params, placed["tokens"], placed["mask"], jnp.int32(budgets[-1]), placed["ids"], jnp.uint32(seed),
            think_settings, config=config, n=n, cache_len=think_cache_len, out_width=think_width,
        )
        solved = _solve_jit(
            params, cache, think, jnp.asarray(budgets, jnp.int32), placed["sb"], placed["ids"], jnp.uint32(seed),
            solve_settings, config=config, prompt_width=width, out_width=solve_width,
            eos_forces_close=eos_in_thinking == "append_close",
        )
    think = jax.tree.map(to_host, think)
    solved = jax.tree.map(to_host, solved)
    results = {}
    total = count * n
    for i, budget in enumerate(budgets):
        cut = solved["cut"][i, :total]
        lengths = cut + solved["lengths"][i, :total]
        width_out = int(lengths.max()) if total else 0
        tokens_out = np.full((total, max(width_out, 1)), ids.pad_id, np.int32)
        logp_out = np.zeros_like(tokens_out, np.float32)
        forced_out = np.zeros_like(tokens_out, bool)
        for r in range(total):
            c, tail = cut[r], solved["lengths"][i, r]
            tokens_out[r, :c] = think["tokens"][r, :c]
            tokens_out[r, c : c + tail] = solved["tokens"][i, r, :tail]
            logp_out[r, :c] = think["logprobs"][r, :c]
            logp_out[r, c : c + tail] = solved["logprobs"][i, r, :tail]
            forced_out[r, c : c + tail] = solved["forced"][i, r, :tail]
        out = {
            "tokens": tokens_out,
            "logprobs": logp_out,
            "forced": forced_out,
            "lengths": lengths,
            "truncated": solved["truncated"][i, :total],
            "finish": solved["finish"][i, :total],
        }
        results[budget] = prepare.assemble(out, count, n, ids, False, np.full(count, budget), sb)
    return results
