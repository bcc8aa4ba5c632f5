"""`generate` through the engine: the lockstep sampler's signature and GenerationOutput, each
sample a request (budgets may differ per prompt), decoded by continuous batching."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from e1jax.engine.engine import Engine, EngineConfig, Request, response_width
from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.sampling import prepare
from e1jax.sampling.ops import SamplingParams


def engine_generate(
    config: ModelConfig,
    params: Any,
    prompts: Sequence[Sequence[int]],
    *,
    ids: prepare.SpecialIds,
    mode: str = "elastic",
    think_budget: int | Sequence[int] = 1024,
    solution_budget: int | Sequence[int] = 1024,
    max_new_tokens: int | Sequence[int] | None = None,
    sampling: SamplingParams = SamplingParams(),
    n: int = 1,
    seed: int = 0,
    sample_ids: Sequence[int] | None = None,
    eos_in_thinking: prepare.EosInThinking = "stop",
    max_prompt_len: int | None = None,
    engine: EngineConfig = EngineConfig(),
    progress: bool = False,
) -> prepare.GenerationOutput:
    """n samples per prompt, as `e1jax.sampling.generate` returns them (same tokens for the same
    seed and budgets), decoded by an Engine sized for these requests."""
    prompts = [list(map(int, p)) for p in prompts]
    count = len(prompts)
    if not count:
        raise E1Error("no prompts given")
    plain, tb, sb = prepare.request_budgets(config, prompts, ids=ids, mode=mode, n=n, think_budget=think_budget,
                                            solution_budget=solution_budget, max_new_tokens=max_new_tokens,
                                            max_prompt_len=max_prompt_len)
    stream = np.arange(count * n) if sample_ids is None else np.asarray(sample_ids, np.int64)
    if stream.shape != (count * n,):
        raise E1Error(f"sample_ids must have one id per sample ({count * n})")
    requests = [Request(tuple(p), None if plain else int(tb[i]), int(sb[i]), sample_id=int(stream[i * n + j]))
                for i, p in enumerate(prompts) for j in range(n)]
    width = response_width(requests, ids, eos_in_thinking)
    runner = Engine(config, params, ids, engine, max_response=width, max_prompt=max(map(len, prompts)),
                    sampling=sampling, seed=seed, eos_in_thinking=eos_in_thinking, progress=progress)
    done = runner.run(requests)
    out = {"tokens": np.full((len(done), width), ids.pad_id, np.int32), "logprobs": np.zeros((len(done), width), np.float32),
           "forced": np.zeros((len(done), width), bool), "lengths": np.zeros(len(done), np.int64),
           "truncated": np.zeros(len(done), bool), "finish": np.zeros(len(done), np.int64)}
    for row, c in enumerate(done):
        length = len(c.tokens)
        out["tokens"][row, :length] = c.tokens
        out["logprobs"][row, :length] = c.logprobs
        out["forced"][row, :length] = c.forced
        out["lengths"][row], out["truncated"][row], out["finish"][row] = length, c.truncated, c.finish
    return prepare.assemble(out, count, n, ids, plain, tb, sb)
