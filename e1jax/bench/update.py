"""Throughput of the GRPO update step: tokens/s, compile time, model FLOP utilisation."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.models.params import init_params
from e1jax.rl.batch import TrainBatch, shard_batch
from e1jax.rl.config import GRPOConfig, OptimConfig
from e1jax.rl.update import init_train_state, make_optimizer, make_update_fn


def matmul_params(config: ModelConfig) -> int:
    """Parameters used in matmuls: all but the embedding table (a lookup) unless it is
    tied, when it serves as the output head."""
    n = config.num_params()
    return n if config.tie_word_embeddings else n - config.vocab_size * config.hidden_size


def update_flops(config: ModelConfig, batch_size: int, seq_len: int) -> float:
    """Model FLOPs of one forward+backward over batch_size x seq_len tokens:
    6 * N_matmul per token plus attention (QK^T and PV, full T x T as computed:
    forward 4 * T * heads * head_dim per token and layer, x3 for training)."""
    tokens = batch_size * seq_len
    dense = 6.0 * matmul_params(config) * tokens
    attention = 12.0 * config.num_layers * config.num_heads * config.head_dim * seq_len * tokens
    return dense + attention


def _synthetic_batch(config: ModelConfig, batch_size: int, seq_len: int, prompt_len: int, with_ref: bool, seed: int) -> TrainBatch:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (batch_size, seq_len), dtype=np.int32)
    attention = np.ones((batch_size, seq_len), bool)
    loss_mask = np.ones((batch_size, seq_len - prompt_len), bool)
    old = (-rng.random(loss_mask.shape) * 5).astype(np.float32)
    ref = (old + rng.normal(0, 0.1, old.shape)).astype(np.float32) if with_ref else None
    adv = rng.normal(size=batch_size).astype(np.float32)
    return TrainBatch(tokens, attention, loss_mask, adv, old, ref)


def bench_update(
    config: ModelConfig,
    *,
    batch_size: int = 8,
    seq_len: int = 512,
    prompt_len: int | None = None,
    micro_batch: int = 2,
    steps: int = 2,
    warmup: int = 1,
    grpo_cfg: GRPOConfig | None = None,
    optim_cfg: OptimConfig | None = None,
    mesh: Mesh | None = None,
    peak_flops: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time `steps` update steps on random params and a synthetic batch (after `warmup`
    untimed ones; compilation is timed separately). `peak_flops` is the peak FLOP/s of
    all devices together; with it the result has `mfu`."""
    if steps < 1 or warmup < 0:
        raise E1Error(f"bench needs steps >= 1 and warmup >= 0, got {steps}/{warmup}")
    if seq_len < 2:
        raise E1Error(f"seq_len must be >= 2, got {seq_len}")
    prompt_len = seq_len // 4 if prompt_len is None else prompt_len
    if not 1 <= prompt_len < seq_len:
        raise E1Error(f"prompt_len must be in [1, seq_len), got {prompt_len}")
    grpo_cfg = grpo_cfg or GRPOConfig()
    optimizer = make_optimizer(optim_cfg or OptimConfig())

    params = init_params(config, seed, mesh=mesh)
    state = init_train_state(params, optimizer)
    batch = shard_batch(_synthetic_batch(config, batch_size, seq_len, prompt_len, grpo_cfg.use_kl, seed), mesh)
    update = make_update_fn(config, grpo_cfg, optimizer, micro_batch=micro_batch, mesh=mesh)

    start = time.perf_counter()
    compiled = update.lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    metrics = None
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)

    step_s = float(np.mean(times))
    tokens = batch_size * seq_len
    flops = update_flops(config, batch_size, seq_len)
    result: dict[str, Any] = {
        "num_params": config.num_params(),
        "param_dtype": config.param_dtype,
        "dtype": config.dtype,
        "remat": config.remat,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "micro_batch": micro_batch,
        "devices": mesh.size if mesh is not None else 1,
        "platform": jax.devices()[0].platform,
        "compile_s": compile_s,
        "step_s": step_s,
        "step_s_min": float(np.min(times)),
        "tokens_per_s": tokens / step_s,
        "response_tokens_per_s": batch_size * (seq_len - prompt_len) / step_s,
        "flops_per_step": flops,
        "flops_per_s": flops / step_s,
        "loss": float(metrics["loss"]),
    }
    if peak_flops:
        result["peak_flops"] = peak_flops
        result["mfu"] = flops / step_s / peak_flops
    return result


def main() -> None:  # python -m e1jax.bench.update [preset] [batch] [seq] [micro] [steps]
    import json
    import sys

    from e1jax.models.config import PRESETS

    name = sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-0.5b"
    args = [int(a) for a in sys.argv[2:6]]
    batch, seq, micro, steps = args + [8, 512, 2, 1][len(args):]
    result = bench_update(PRESETS[name], batch_size=batch, seq_len=seq, micro_batch=micro, steps=steps, warmup=0)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
