"""The training batch of one GRPO step: one `TrainBatch`, laid out by the rollout, placed once.

Sequences are [left-padded prompt (P) | right-padded response (L)]; the loss mask and the
log-probs are in response coordinates (entry j scores token P + j), so only the L response
positions go through the head. `build_sequences` (rl/rollout.py) fills the host fields;
`e1jax.rl.update.step_batch` places them and adds the old (and reference) log-probs;
`e1jax.rl.update` cuts the placed batch into mini- and micro-batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from e1jax.sharding import named_sharding


@flax.struct.dataclass
class TrainBatch:
    tokens: Any  # (N, P + L) int32
    attention_mask: Any  # (N, P + L) bool
    loss_mask: Any  # (N, L) bool: the response tokens trained on
    advantages: Any  # (N,) f32
    old_logp: Any = None  # (N, L) f32: behaviour log-probs (the trainer's, under the step's params)
    ref_logp: Any = None  # (N, L) f32: reference-policy log-probs; None without KL
    # (N, L) f32: the sampler's, where loss_mask (the rollout/logp_diff diagnostic); NaN on a trained
    # token it never sampled (the phantom EOS)
    sampler_logp: Any = None
    token_weight: Any = None  # (N,) f32: each trained token's loss weight; None: 1 / the mini-batch's token count

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def response_width(self) -> int:
        return self.loss_mask.shape[1]

    @property
    def prompt_width(self) -> int:
        return self.tokens.shape[1] - self.loss_mask.shape[1]


BATCH_LOGICAL_AXES = TrainBatch(
    tokens=("batch", "length"),
    attention_mask=("batch", "length"),
    loss_mask=("batch", "length"),
    advantages=("batch",),
    old_logp=("batch", "length"),
    ref_logp=("batch", "length"),
    sampler_logp=("batch", "length"),
    token_weight=("batch",),
)


def map_axes(fn: Callable[[str, tuple, Any], Any], batch: TrainBatch) -> TrainBatch:
    """fn(name, logical_axes, field) over the batch's fields (None fields stay None)."""
    return TrainBatch(**{f.name: None if getattr(batch, f.name) is None
                         else fn(f.name, getattr(BATCH_LOGICAL_AXES, f.name), getattr(batch, f.name))
                         for f in dataclasses.fields(TrainBatch)})


def shard_batch(batch: TrainBatch, mesh: Mesh | None) -> TrainBatch:
    """Put a host batch on `mesh`, batch dimension over the data axes (same global value on
    every process); without a mesh, on the default device."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, batch)

    def put(name, axes, x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        return jax.device_put(x, named_sharding(axes, x.shape, mesh, f"train batch {name}"))

    return map_axes(put, batch)
