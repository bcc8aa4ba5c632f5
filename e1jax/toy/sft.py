"""Stage 1 of the demo: supervised next-token training on full thinking traces."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from e1jax.models.config import ModelConfig
from e1jax.models.scoring import next_token_logprobs
from e1jax.toy.task import Style, response_text


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0


def encode_examples(records: list[dict], tokenizer, style: Style | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + EOS) of each toy record: the E1 prompt in the tokenizer's
    chat template (an `e1jax.tokenizer.Tokenizer`) and the trace in `style` (default: the record's)."""
    eos = tokenizer.eos_ids[0]
    return [(tokenizer.encode_prompt(r["problem"]), tokenizer.encode(response_text(r, style)) + [eos]) for r in records]


def tokenize_examples(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, np.ndarray]:
    """Left-padded prompt+response rows and a mask of the response tokens to learn.

    `loss_mask[:, t]` marks the prediction of token t + 1 (aligned with next_token_logprobs).
    """
    width = max(len(p) + len(r) for p, r in examples)
    tokens = np.full((len(examples), width), pad_id, np.int32)
    attention = np.zeros((len(examples), width), bool)
    loss_mask = np.zeros((len(examples), width - 1), np.float32)
    for i, (prompt, response) in enumerate(examples):
        seq = prompt + response
        start = width - len(seq)
        tokens[i, start:] = seq
        attention[i, start:] = True
        loss_mask[i, start + len(prompt) - 1 :] = 1.0
    return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask}


def make_optimizer(cfg: SFTConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps, max(cfg.steps, cfg.warmup_steps + 1), cfg.learning_rate * 0.05)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adamw(schedule, weight_decay=cfg.weight_decay))


def sft_loss(config: ModelConfig, params: Any, batch: dict[str, jax.Array]) -> jax.Array:
    """Mean negative log-likelihood of the response tokens (fp32)."""
    logp = next_token_logprobs(config, params, batch["tokens"], batch["attention_mask"])
    mask = batch["loss_mask"]
    return -jnp.sum(logp * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def train_sft(
    config: ModelConfig,
    params: Any,
    data: dict[str, np.ndarray],
    cfg: SFTConfig,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[Any, list[float]]:
    """Train on `data` (from tokenize_examples) with batches drawn by a seeded permutation."""
    optimizer = make_optimizer(cfg)
    opt_state = optimizer.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(functools.partial(sft_loss, config))(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(cfg.seed)
    count = len(data["tokens"])
    order = rng.permutation(count)
    cursor = 0
    losses = []
    for i in range(cfg.steps):
        if cursor + cfg.batch_size > count:
            order, cursor = rng.permutation(count), 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        batch = {k: jnp.asarray(v[idx]) for k, v in data.items()}
        params, opt_state, loss = step(params, opt_state, batch)
        if on_step is not None and (i % 25 == 0 or i == cfg.steps - 1):
            value = float(loss)
            losses.append(value)
            on_step(i, value)
    return params, losses
