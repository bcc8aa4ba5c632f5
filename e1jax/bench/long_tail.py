"""The long-tail case: requests whose lengths follow a heavy-tailed distribution like real
reasoning traces (median about a quarter of the longest), through the continuous-batching
engine and through the lockstep sampler (batches of `slots` requests, each decoding until its
longest is done), counting only the tokens the requests asked for."""

from __future__ import annotations

import time

import numpy as np

from e1jax.bench.decode import BENCH_IDS, GREEDY, _laid_out, _prompts
from e1jax.engine import Engine, EngineConfig, Request
from e1jax.models.config import ModelConfig
from e1jax.models.params import init_params
from e1jax.sampling import generate


def tail_lengths(count: int, longest: int, seed: int = 0) -> np.ndarray:
    """Log-normal lengths with median longest / 4 (sigma 1), clipped to [8, longest]."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(rng.lognormal(np.log(longest / 4), 1.0, count)), 8, longest).astype(np.int64)


def long_tail_case(config: ModelConfig, *, requests: int, slots: int, longest: int, prompt_len: int, log,
                   page_size: int = 16, steps_per_call: int = 16) -> dict:
    params, _ = _laid_out(init_params(config, 0))
    prompts = _prompts(config, requests, prompt_len, seed=2)
    lengths = tail_lengths(requests, longest)

    def lockstep():
        emitted = 0
        for start in range(0, requests, slots):
            out = generate(config, params, prompts[start:start + slots], ids=BENCH_IDS, mode="plain",
                           max_new_tokens=lengths[start:start + slots].tolist(), sampling=GREEDY)
            emitted += int(out.lengths.sum())
        return emitted

    def engine():
        eng = Engine(config, params, BENCH_IDS, EngineConfig(slots=slots, page_size=page_size,
                                                             steps_per_call=steps_per_call),
                     max_response=longest, max_prompt=prompt_len, sampling=GREEDY)
        done = eng.run([Request(tuple(p), None, int(n), sample_id=i) for i, (p, n) in enumerate(zip(prompts, lengths))])
        return sum(len(c.tokens) for c in done), eng.stats

    log(f"long tail: {requests} requests, lengths median {int(np.median(lengths))} max {int(lengths.max())}: compiling ...")
    lockstep()
    engine()
    start = time.perf_counter()
    lockstep_tokens = lockstep()
    lockstep_s = time.perf_counter() - start
    start = time.perf_counter()
    engine_tokens, stats = engine()
    engine_s = time.perf_counter() - start
    if engine_tokens != lockstep_tokens or engine_tokens != int(lengths.sum()):
        raise RuntimeError(f"long tail: the engine emitted {engine_tokens} tokens, the lockstep sampler "
                           f"{lockstep_tokens}, the requests asked for {int(lengths.sum())}")
    return {
        "requests": requests, "slots": slots, "longest": longest, "prompt_tokens": prompt_len,
        "median_length": float(np.median(lengths)), "mean_length": float(lengths.mean()),
        "emitted_tokens": engine_tokens,
        "engine_tokens_per_s": engine_tokens / engine_s, "lockstep_tokens_per_s": lockstep_tokens / lockstep_s,
        "ratio": lockstep_s / engine_s, "engine_s": engine_s, "lockstep_s": lockstep_s,
        "engine_slot_utilisation": stats["emitted_tokens"] / max(stats["slot_steps"], 1),
        "engine_decode_calls": stats["decode_calls"],
    }
