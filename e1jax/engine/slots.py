"""The engine's device programs: the decode slots' state, prefill of one prompt into its
pages, admission of requests into slots, and a run of decode steps.

A slot carries one sample through E1's phase machine (`e1jax.sampling.loop.advance`, the
same rules and finish reasons as the lockstep sampler) and writes its tokens at its own
response length, so requests start and end independently. Each sample's random stream is
keyed by (seed, sample id, response index), so its tokens do not depend on which slot runs it
or when.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from e1jax.engine.model import DecodeWeights, forward
from e1jax.engine.paged import PagedCache, RaggedReader, TableReader
from e1jax.models.config import ModelConfig
from e1jax.sampling import loop


@flax.struct.dataclass
class SlotState:
    pending: jax.Array  # (S,) token to feed next
    position: jax.Array  # (S,) its position (= the slot's filled positions)
    phase: jax.Array  # (S,) loop.THINK / CLOSE / SOLVE / DONE; idle slots are DONE
    think_used: jax.Array
    sol_used: jax.Array
    force_pos: jax.Array
    truncated: jax.Array
    finish: jax.Array
    out_len: jax.Array
    think_budget: jax.Array
    solution_budget: jax.Array
    keys: jax.Array  # (S,) typed PRNG keys, one per sample
    key_offset: jax.Array
    tokens: jax.Array  # (S, W)
    logprobs: jax.Array  # (S, W)
    forced: jax.Array  # (S, W) bool

    @classmethod
    def idle(cls, slots: int, width: int, pad_id: int) -> "SlotState":
        def zeros():  # one buffer per field: the programs donate the state
            return jnp.zeros((slots,), jnp.int32)

        return cls(pending=zeros(), position=zeros(), phase=jnp.full((slots,), loop.DONE, jnp.int32),
                   think_used=zeros(), sol_used=zeros(), force_pos=zeros(), truncated=jnp.zeros((slots,), bool),
                   finish=zeros(), out_len=zeros(), think_budget=zeros(), solution_budget=zeros(),
                   keys=loop.sample_keys(jnp.uint32(0), jnp.zeros((slots,), jnp.uint32)), key_offset=zeros(),
                   tokens=jnp.full((slots, width), pad_id, jnp.int32),
                   logprobs=jnp.zeros((slots, width), jnp.float32), forced=jnp.zeros((slots, width), bool))


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("cache",))
def prefill(weights: DecodeWeights, cache: PagedCache, tokens: jax.Array, positions: jax.Array, write: jax.Array,
            page_table: jax.Array, kv_len: jax.Array, *, config: ModelConfig) -> PagedCache:
    """Keys and values of prompt tokens (S, T) into their slots' pages (no head)."""
    return forward(config, weights, cache, tokens, positions, write, page_table, TableReader(page_table), kv_len,
                   logits=False)[1]


@functools.partial(jax.jit, donate_argnames=("cache",))
def copy_pages(cache: PagedCache, source: jax.Array, dest: jax.Array) -> PagedCache:
    return cache.copy_pages(source, dest)


@functools.partial(jax.jit, donate_argnames=("state",))
def admit(state: SlotState, slots: jax.Array, pending: jax.Array, position: jax.Array, phase: jax.Array,
          think_budget: jax.Array, solution_budget: jax.Array, seed: jax.Array, sample_ids: jax.Array,
          pad_id: jax.Array) -> SlotState:
    """Start requests in `slots` (A,): their pending token and position, phase and budgets, every
    counter and output column cleared. A slot given phase DONE is freed (an evicted request)."""
    def put(field, value):
        return field.at[slots].set(value)

    zeros = jnp.zeros(slots.shape, jnp.int32)
    return state.replace(
        pending=put(state.pending, pending), position=put(state.position, position), phase=put(state.phase, phase),
        think_used=put(state.think_used, zeros), sol_used=put(state.sol_used, zeros),
        force_pos=put(state.force_pos, zeros), truncated=put(state.truncated, zeros.astype(bool)),
        finish=put(state.finish, zeros), out_len=put(state.out_len, zeros),
        think_budget=put(state.think_budget, think_budget), solution_budget=put(state.solution_budget, solution_budget),
        keys=state.keys.at[slots].set(loop.sample_keys(seed, sample_ids)), key_offset=put(state.key_offset, zeros),
        tokens=state.tokens.at[slots].set(pad_id), logprobs=state.logprobs.at[slots].set(0.0),
        forced=state.forced.at[slots].set(False),
    )


@functools.partial(jax.jit, static_argnames=("config", "steps", "eos_forces_close"), donate_argnames=("cache", "state"))
def decode(weights: DecodeWeights, cache: PagedCache, state: SlotState, page_table: jax.Array, reader: RaggedReader,
           settings: loop.LoopSettings, *, config: ModelConfig, steps: int, eos_forces_close: bool):
    """Up to `steps` decode steps of every live slot (fewer when all are done); the page table
    (and `reader`'s list of the slots' pages) must already hold the pages those steps write.
    Returns (cache, state, steps run)."""
    rows = jnp.arange(state.pending.shape[0])
    width = state.tokens.shape[1]

    def body(carry):
        cache, st, i = carry
        live = st.phase != loop.DONE
        logits, cache = forward(config, weights, cache, st.pending[:, None], st.position[:, None], live[:, None],
                                page_table, reader, st.position + 1)
        new, out = loop.advance(st, logits, settings, eos_forces_close=eos_forces_close)
        column = jnp.minimum(st.out_len, width - 1)
        active = out["active"]

        def put(buffer, value):
            return buffer.at[rows, column].set(jnp.where(active, value, buffer[rows, column]))

        full = (new.phase != loop.DONE) & (new.out_len >= width)
        new = new.replace(tokens=put(st.tokens, out["token"]), logprobs=put(st.logprobs, out["logp"]),
                          forced=put(st.forced, out["forced"]),
                          finish=jnp.where(full, loop.LENGTH, new.finish), phase=jnp.where(full, loop.DONE, new.phase))
        return cache, new, i + 1

    def cond(carry):
        _, st, i = carry
        return (i < steps) & jnp.any(st.phase != loop.DONE)

    return jax.lax.while_loop(cond, body, (cache, state, jnp.int32(0)))
