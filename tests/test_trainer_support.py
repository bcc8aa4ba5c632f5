"""Helpers for the trainer tests (no tests here): a tiny model directory with the toy
tokenizer, toy training data, a synthetic reward, and a slow but simple reference
elastic sampler with the signature of `e1jax.sampling.generate` (injected as
`generate_fn`, so the trainer is tested independently of the real sampler).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

TINY_MODEL = dict(arch="qwen2", hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=8, max_position_embeddings=256)


def make_model_dir(path: Path, seed: int = 0) -> Path:
    """A random tiny Qwen2 (e1jax init, saved as a HF directory) with the toy tokenizer."""
    from e1jax.models.config import ModelConfig
    from e1jax.models.hf import save_hf
    from e1jax.models.params import abstract_params
    from e1jax.toy.tokenizer import save_toy_tokenizer

    import jax

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = save_toy_tokenizer(path)
    config = ModelConfig(vocab_size=len(tokenizer), **TINY_MODEL)
    rng = np.random.default_rng(seed)
    # NumPy weights from the abstract shapes: no compilation, so the fixture is instant.
    params = jax.tree.map(lambda x: rng.normal(0.0, 0.3, x.shape).astype(np.float32), abstract_params(config))
    save_hf(params, config, path)
    return path


def write_toy_records(path: Path, n: int = 32, seed: int = 0) -> Path:
    from e1jax.toy.task import ToyTaskConfig, generate_problems

    rows = [{"problem": r["problem"], "answer": r["ground_truth"]}
            for r in generate_problems(n, seed, ToyTaskConfig(min_steps=2, max_steps=4))]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def reward_fn(responses, records):
    """Synthetic reward: the share of digit characters in the response (varies within groups)."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in responses]


def binary_reward_fn(responses, records):
    """1 when the response holds `</think>` and at least two digits, else 0."""
    return [1.0 if "</think>" in text and sum(c.isdigit() for c in text) >= 2 else 0.0 for text in responses]


_FORWARD = {}


def _forward(config):
    import jax

    from e1jax.models.qwen import model_for, positions_from_mask

    if config not in _FORWARD:
        def fn(params, tokens, mask, last):  # params in the sampler's (decode) layout
            logits, _ = model_for(config, params).apply({"params": params}, tokens, positions_from_mask(mask), mask)
            return jax.numpy.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]

        _FORWARD[config] = jax.jit(fn)
    return _FORWARD[config]


def reference_generate(config, params, prompts, *, ids, mode="elastic", think_budget=1024, solution_budget=1024,
                       max_new_tokens=None, sampling=None, n=1, seed=0, sample_ids=None, mesh=None,
                       eos_in_thinking="stop", max_prompt_len=None):
    """Elastic sampling by full re-forward per token (tests only: tiny models, short budgets).

    Same output layout as e1jax.sampling.generate: sample j of prompt i is row i * n + j;
    the natural close counts against the thinking budget; at the budget the close is
    forced (logprob 0, forced True); EOS ends the sample.
    """
    import jax
    import jax.numpy as jnp

    assert mode == "elastic"
    temperature = sampling.temperature if sampling is not None else 0.6
    close = int(ids.think_close_ids[-1])
    eos = set(int(e) for e in ids.eos_ids)
    rows = len(prompts) * n
    width = think_budget + 1 + solution_budget
    p_width = max(len(p) for p in prompts)
    tokens = np.full((rows, p_width + width), ids.pad_id, np.int32)
    mask = np.zeros(tokens.shape, bool)
    for r in range(rows):
        p = prompts[r // n]
        tokens[r, p_width - len(p):p_width] = p
        mask[r, p_width - len(p):p_width] = True
    out_len = np.zeros(rows, np.int64)
    think_used = np.zeros(rows, np.int64)
    sol_used = np.zeros(rows, np.int64)
    phase = np.zeros(rows, np.int64)  # 0 think, 1 solve, 2 done
    truncated = np.zeros(rows, bool)
    forced = np.zeros((rows, width), bool)
    logprobs = np.zeros((rows, width), np.float32)
    finish = ["running"] * rows
    forward = _forward(config)
    # one key per sample id, as the real sampler: samples do not depend on the batching
    sample_ids = np.arange(rows) if sample_ids is None else np.asarray(sample_ids)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.asarray(sample_ids, jnp.uint32))
    for t in range(width):
        if np.all(phase == 2):
            break
        last = p_width + out_len - 1
        logits = forward(params, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(last, jnp.int32))
        logp = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, t))(keys)
        sampled = np.asarray(jax.vmap(jax.random.categorical)(step_keys, logp))
        logp = np.asarray(logp)
        for r in range(rows):
            if phase[r] == 2:
                continue
            if phase[r] == 1 and sol_used[r] >= solution_budget:
                phase[r], finish[r] = 2, "solution_budget"
                continue
            j = out_len[r]
            if phase[r] == 0 and think_used[r] >= think_budget:
                tok, forced[r, j], truncated[r], phase[r] = close, True, True, 1
            else:
                tok = int(sampled[r])
                logprobs[r, j] = logp[r, tok]
                if phase[r] == 0:
                    think_used[r] += 1
                    if tok == close:
                        phase[r] = 1
                    elif tok in eos:
                        phase[r], finish[r] = 2, "eos_in_thinking"
                else:
                    sol_used[r] += 1
                    if tok in eos:
                        phase[r], finish[r] = 2, "eos"
            tokens[r, p_width + j] = tok
            mask[r, p_width + j] = True
            out_len[r] += 1
    for r in range(rows):
        if phase[r] != 2:
            finish[r] = "solution_budget"
    response = tokens[:, p_width:].copy()
    response[np.arange(width)[None, :] >= out_len[:, None]] = ids.pad_id
    thinking = np.zeros(rows, np.int64)
    solution = np.zeros(rows, np.int64)
    for r in range(rows):
        row = response[r, :out_len[r]].tolist()
        if close in row:
            at = row.index(close)
            thinking[r], solution[r] = at, out_len[r] - at - 1
        else:
            thinking[r] = out_len[r]
    return SimpleNamespace(
        prompt_index=np.repeat(np.arange(len(prompts)), n), tokens=response, logprobs=logprobs, forced=forced,
        lengths=out_len, thinking_tokens=thinking, solution_tokens=solution, truncated=truncated,
        finish_reason=finish, think_budget=np.full(rows, think_budget), solution_budget=np.full(rows, solution_budget),
    )


def tiny_overrides(model_dir: Path, data_file: Path, out_dir: Path, **extra) -> list[str]:
    """key=value overrides of a tiny, fast training run."""
    values = {
        "model.path": str(model_dir),
        "model.remat": "none",
        "data.train_files": f"[{data_file}]",
        "data.max_prompt_len": 64,
        "rollout.n": 4,
        "rollout.think_budget": 6,
        "rollout.solution_budget": 4,
        "rollout.temperature": 1.0,
        "batch.prompts_per_step": 4,
        "batch.mini_batch": 2,
        "batch.micro_batch": 8,  # the mini-batch's 8 rows over 8 devices
        "optim.learning_rate": 1e-2,
        "mesh": "fsdp=-1",
        "reward.kind": "test_trainer_support:reward_fn",
        "run.out_dir": str(out_dir),
        "run.steps": 3,
        "run.progress": False,
        "checkpoint.every": 1,
        "checkpoint.keep": 3,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def run_and_kill(config_path: str, overrides: list[str], kill_step: int) -> None:
    """Subprocess entry point: train with the real sampler and SIGKILL this process right
    after step `kill_step`'s checkpoint save was handed to orbax (still writing, usually)."""
    import os
    import signal

    from e1jax.rl.config import load_train_config
    from e1jax.rl.trainer import train

    def callback(event: str, step: int) -> None:
        if event == "save_started" and step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)

    train(load_train_config(config_path, overrides), callback=callback)
    raise SystemExit("the run was not killed")
