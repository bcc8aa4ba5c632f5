"""Decode throughput of the e1jax sampler, side by side with transformers, and the budget sweep."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from e1jax.models.config import ModelConfig
from e1jax.models.hf import save_hf
from e1jax.models.params import count_params, decode_layout, init_params
from e1jax.models.qwen import KERNEL_INPUT_DIMS, dense, is_unrolled
from e1jax.sampling import SamplingParams, SpecialIds, budget_sweep, generate

# EOS never matches (-1), so every run generates exactly the requested number of tokens.
BENCH_IDS = SpecialIds(think_close_ids=(2,), eos_ids=(-1,), pad_id=0)
GREEDY = SamplingParams(temperature=0.0)


def _prompts(config: ModelConfig, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.RandomState(seed)
    return rng.randint(3, config.vocab_size, (batch, length)).tolist()


def _laid_out(params) -> tuple[object, float]:
    """Params in the decode layout (prepared once, as a server would) and the seconds it took."""
    start = time.perf_counter()
    params = jax.block_until_ready(decode_layout(params))
    return params, time.perf_counter() - start


def time_e1jax(config: ModelConfig, params, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """Throughput of `generate` on `params` (already in the decode layout)."""
    prompts = _prompts(config, batch, prompt_len)
    kwargs = dict(ids=BENCH_IDS, mode="plain", max_new_tokens=new_tokens, sampling=GREEDY)
    start = time.perf_counter()
    generate(config, params, prompts, **kwargs)  # compile + first run
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = generate(config, params, prompts, **kwargs)
    elapsed = time.perf_counter() - start
    generated = int(out.lengths.sum())
    return {"tokens_per_s": generated / elapsed, "seconds": elapsed, "compile_s": max(first - elapsed, 0.0), "generated": generated}


def time_transformers(model_dir: Path, batch: int, prompt_len: int, new_tokens: int) -> dict | None:
    """Run the peer in a subprocess; None when torch is not installed."""
    cmd = [sys.executable, "-m", "e1jax.bench.peer_transformers", str(model_dir), str(batch), str(prompt_len), str(new_tokens)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        if "No module named 'torch'" in proc.stderr:
            return None
        raise RuntimeError(f"transformers peer failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bytes_per_step(config: ModelConfig, params, batch: int, context: int) -> int:
    """Bytes read per decode step: every parameter once, plus the KV cache of every sequence."""
    param_bytes = sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(params))
    kv = 2 * config.num_layers * config.num_kv_heads * config.head_dim * np.dtype(config.dtype).itemsize
    return param_bytes + batch * context * kv


_STEP_PRODUCTS = (("self_attn", "q_proj_kernel"), ("self_attn", "k_proj_kernel"), ("self_attn", "v_proj_kernel"),
                  ("self_attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


def time_matmuls_only(config: ModelConfig, params, batch: int, repeats: int = 5) -> float | None:
    """Seconds of a decode step that did nothing but the model's weight products (every projection
    and the head at `batch` rows, through the sampler's own `dense` on the decode layout): the floor
    XLA's matrix kernels put under a step, whatever the rest of the loop costs. None off CPU."""
    params = decode_layout(params)
    if not is_unrolled(params):
        return None
    layers = []
    for i in range(config.num_layers):
        layer = []
        for group, name in _STEP_PRODUCTS:
            kernel = params[f"layer_{i}"][group][name]
            inputs = math.prod(kernel.shape[kernel.ndim - KERNEL_INPUT_DIMS[name]:])
            layer.append(kernel.reshape(-1, inputs))
        layers.append(layer)
    head = params.get("lm_head", params["embed_tokens"])

    @jax.jit
    def products(layers, head, x):
        outputs = []
        for q, k, v, o, gate, up, down in layers:
            queries = dense(x, q, out_in=True)
            outputs += [dense(x, k, out_in=True), dense(x, v, out_in=True)]
            x = dense(queries, o, out_in=True)
            x = dense(dense(x, gate, out_in=True) * dense(x, up, out_in=True), down, out_in=True)
        return dense(x, head, out_in=True), outputs

    x = jnp.ones((batch, config.hidden_size), config.dtype)
    jax.block_until_ready(products(layers, head, x))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(products(layers, head, x))
        best = min(best, time.perf_counter() - start)
    return best


def decode_case(name: str, config: ModelConfig, batch_sizes: list[int], prompt_len: int, new_tokens: int, bandwidth: float | None, peer: bool, log) -> list[dict]:
    params = init_params(config, 0)
    laid_out, layout_s = _laid_out(params)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if peer:
            save_hf(params, config, tmp)
        for batch in batch_sizes:
            log(f"decode {name} batch {batch}: e1jax ...")
            ours = time_e1jax(config, laid_out, batch, prompt_len, new_tokens)
            theirs = None
            if peer:
                log(f"decode {name} batch {batch}: transformers ...")
                theirs = time_transformers(Path(tmp), batch, prompt_len, new_tokens)
            row = {
                "model": name,
                "params": count_params(params),
                "dtype": config.dtype,
                "batch": batch,
                "prompt_tokens": prompt_len,
                "new_tokens": new_tokens,
                "e1jax_tokens_per_s": ours["tokens_per_s"],
                "e1jax_compile_s": ours["compile_s"],
                "e1jax_layout_s": layout_s,
                "transformers_tokens_per_s": theirs["tokens_per_s"] if theirs else None,
                "ratio": ours["tokens_per_s"] / theirs["tokens_per_s"] if theirs else None,
            }
            matmuls_s = time_matmuls_only(config, laid_out, batch)
            if matmuls_s:
                row["matmuls_only_tokens_per_s"] = batch / matmuls_s
            if bandwidth:
                step_bytes = bytes_per_step(config, params, batch, prompt_len + new_tokens // 2)
                roofline = bandwidth / step_bytes * batch
                row["roofline_tokens_per_s"] = roofline
                row["roofline_fraction"] = ours["tokens_per_s"] / roofline
            rows.append(row)
            log(json.dumps(row))
    return rows


def sweep_case(config: ModelConfig, batch: int, prompt_len: int, budgets: list[int], solution_budget: int, log) -> dict:
    params, _ = _laid_out(init_params(config, 0))
    prompts = _prompts(config, batch, prompt_len, seed=1)
    kwargs = dict(ids=BENCH_IDS, sampling=GREEDY)

    def sweep():
        return budget_sweep(config, params, prompts, think_budgets=budgets, solution_budget=solution_budget, **kwargs)

    def separate():
        return [generate(config, params, prompts, think_budget=b, solution_budget=solution_budget, **kwargs) for b in budgets]

    log("sweep: compiling ...")
    sweep()
    separate()
    start = time.perf_counter()
    sweep()
    sweep_s = time.perf_counter() - start
    start = time.perf_counter()
    separate()
    separate_s = time.perf_counter() - start
    return {"budgets": budgets, "solution_budget": solution_budget, "batch": batch, "sweep_s": sweep_s, "separate_s": separate_s, "ratio": sweep_s / separate_s}
