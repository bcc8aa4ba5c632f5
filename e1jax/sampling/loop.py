"""The jitted decode loop: per-sequence phases and budgets inside one lax.while_loop.

Each iteration feeds every live sequence's pending token to the model (one
lockstep cache slot), then chooses the next token by the sequence's phase:

  THINK  sample; a natural `</think>` moves to SOLVE; hitting the thinking budget
         moves to CLOSE (the close sequence is forced); EOS ends the sample
         (or, in the original's compatibility mode, forces the close after it).
  CLOSE  emit the next token of the close sequence (forced), then SOLVE.
  SOLVE  sample; EOS or the solution budget ends the sample.
  DONE   nothing more is written.

Budgets, seeds and sampling settings are traced; shapes depend only on the
batch, the prompt-length bucket and the generation-length bucket.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from e1jax.models.config import ModelConfig
from e1jax.models.qwen import constrain_cache, extend_cache, map_cache_rows, model_for, positions_from_mask
from e1jax.sampling.ops import sample_tokens, token_logprob

THINK, CLOSE, SOLVE, DONE = 0, 1, 2, 3

# finish reasons
RUNNING, EOS, SOLUTION_BUDGET, EOS_IN_THINKING, LENGTH, PAUSED = 0, 1, 2, 3, 4, 5
FINISH_NAMES = {
    RUNNING: "running",
    EOS: "eos",
    SOLUTION_BUDGET: "solution_budget",
    EOS_IN_THINKING: "eos_in_thinking",
    LENGTH: "length",
    PAUSED: "paused",
}


@flax.struct.dataclass
class DecodeState:
    cache: dict
    pending: jax.Array  # (B,) token to feed next
    position: jax.Array  # (B,) RoPE position of the pending token
    phase: jax.Array  # (B,)
    think_used: jax.Array  # (B,) thinking tokens emitted (a natural close included)
    sol_used: jax.Array  # (B,)
    force_pos: jax.Array  # (B,) index into the close sequence
    truncated: jax.Array  # (B,) bool, the close was forced
    finish: jax.Array  # (B,)
    out_len: jax.Array  # (B,)
    tokens: jax.Array  # (B, G)
    logprobs: jax.Array  # (B, G)
    forced: jax.Array  # (B, G) bool
    think_budget: jax.Array  # (B,)
    solution_budget: jax.Array  # (B,)
    keys: jax.Array  # (B,) typed PRNG keys, one per sample
    key_offset: jax.Array  # (B,) response index of out_len 0 (non-zero when continuing a prefix)
    step: jax.Array  # () iterations done


@flax.struct.dataclass
class LoopSettings:
    """Traced settings of one call."""

    temperature: jax.Array
    top_p: jax.Array
    top_k: jax.Array
    close_ids: jax.Array  # (C,) the forced close sequence
    natural_close_id: jax.Array  # () the token that ends thinking when sampled
    eos_ids: jax.Array  # (E,)
    pad_id: jax.Array
    max_steps: jax.Array  # () upper bound on iterations


def _in(tokens: jax.Array, ids: jax.Array) -> jax.Array:
    return jnp.any(tokens[:, None] == ids[None, :], axis=-1)


def sample_keys(seed: jax.Array, sample_ids: jax.Array) -> jax.Array:
    """One typed PRNG key per sample, from (seed, sample id) only."""
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(sample_ids)


def _token_keys(keys: jax.Array, index: jax.Array) -> jax.Array:
    # Token randomness depends only on (sample, index in the response): a run at another
    # budget, a budget sweep and plain mode all share the random stream of a common prefix.
    return jax.vmap(jax.random.fold_in)(keys, index)


def prefill(config: ModelConfig, params: Any, tokens: jax.Array, mask: jax.Array, n: int, cache_len: int):
    """Prefill all but the last prompt token once per prompt (whole-sequence attention, no head),
    give the cache its remaining empty slots, then repeat it n times.
    Returns (cache, pending last prompt token, its position), one row per sample."""
    positions = positions_from_mask(mask)
    _, cache = model_for(config, params).apply({"params": params}, tokens[:, :-1], positions[:, :-1], mask[:, :-1],
                                               return_hidden=True, collect_cache=True)
    cache = extend_cache(cache, cache_len - (tokens.shape[1] - 1))
    if n > 1:
        cache = map_cache_rows(lambda x: jnp.repeat(x, n, axis=0), cache)
    return constrain_cache(cache), jnp.repeat(tokens[:, -1], n), jnp.repeat(positions[:, -1], n)


# DecodeState fields that start at zero for every row.
_ZERO_COUNTERS = ("think_used", "sol_used", "force_pos", "finish", "out_len", "key_offset")


def initial_state(cache: dict, pending: jax.Array, position: jax.Array, phase: jax.Array, think_budget: jax.Array,
                  solution_budget: jax.Array, keys: jax.Array, out_width: int, pad_id: jax.Array) -> DecodeState:
    """The state before the first decode step: nothing written, every counter at zero."""
    rows = pending.shape[0]
    counters = {name: jnp.zeros((rows,), jnp.int32) for name in _ZERO_COUNTERS}
    return DecodeState(
        cache=cache, pending=pending, position=position, phase=phase, truncated=jnp.zeros((rows,), bool),
        tokens=jnp.full((rows, out_width), pad_id, jnp.int32), logprobs=jnp.zeros((rows, out_width), jnp.float32),
        forced=jnp.zeros((rows, out_width), bool), think_budget=think_budget, solution_budget=solution_budget,
        keys=keys, step=jnp.int32(0), **counters,
    )


def advance(rows: Any, logits: jax.Array, s: LoopSettings, *, pause_thinking: bool = False,
            eos_forces_close: bool = False) -> tuple[Any, dict[str, jax.Array]]:
    """One token of the phase machine for every row, from the rows' logits (B, V).

    `rows`: a flax dataclass with the per-row fields of DecodeState (pending, position, phase,
    the counters, budgets, keys); returned with them advanced, and this step's
    {"token", "logp", "forced", "active"} (B,): what each active row writes at its `out_len`."""
    live = rows.phase != DONE
    phase = rows.phase

    # Thinking budget exhausted before this token: force the close (or pause, for a sweep).
    over = (phase == THINK) & (rows.think_used >= rows.think_budget)
    if pause_thinking:
        finish = jnp.where(over, PAUSED, rows.finish)
        phase = jnp.where(over, DONE, phase)
    else:
        finish = rows.finish
        phase = jnp.where(over, CLOSE, phase)
    truncated = rows.truncated | (over & (not pause_thinking))
    active = live & (phase != DONE)

    in_think = phase == THINK
    keys = _token_keys(rows.keys, rows.key_offset + rows.out_len)
    sampled = sample_tokens(logits, keys, s.temperature, s.top_p, s.top_k)
    close_len = s.close_ids.shape[0]
    forced_token = s.close_ids[jnp.clip(rows.force_pos, 0, close_len - 1)]
    is_forced = phase == CLOSE
    token = jnp.where(is_forced, forced_token, sampled)
    logp = token_logprob(logits, token, s.temperature)
    token = jnp.where(active, token, s.pad_id)

    is_eos = _in(token, s.eos_ids)
    think_used = rows.think_used + (active & in_think)
    sol_used = rows.sol_used + (active & (phase == SOLVE))
    force_pos = rows.force_pos + (active & is_forced)

    new_phase = phase
    # THINK transitions
    natural_close = active & in_think & (token == s.natural_close_id)
    eos_think = active & in_think & is_eos
    new_phase = jnp.where(natural_close, SOLVE, new_phase)
    if pause_thinking:
        new_phase = jnp.where(natural_close | eos_think, DONE, new_phase)
        finish = jnp.where(natural_close, PAUSED, finish)
        finish = jnp.where(eos_think, EOS_IN_THINKING, finish)
    elif eos_forces_close:
        new_phase = jnp.where(eos_think, CLOSE, new_phase)
    else:
        new_phase = jnp.where(eos_think, DONE, new_phase)
        finish = jnp.where(eos_think, EOS_IN_THINKING, finish)
    # CLOSE transitions
    new_phase = jnp.where(active & is_forced & (force_pos >= close_len), SOLVE, new_phase)
    # SOLVE transitions
    in_solve = active & (phase == SOLVE)
    new_phase = jnp.where(in_solve & is_eos, DONE, new_phase)
    finish = jnp.where(in_solve & is_eos, EOS, finish)
    budget_done = in_solve & ~is_eos & (sol_used >= rows.solution_budget)
    new_phase = jnp.where(budget_done, DONE, new_phase)
    finish = jnp.where(budget_done, SOLUTION_BUDGET, finish)

    rows = rows.replace(
        pending=jnp.where(active, token, rows.pending),
        position=rows.position + active,
        phase=new_phase,
        think_used=think_used,
        sol_used=sol_used,
        force_pos=force_pos,
        truncated=truncated,
        finish=finish,
        out_len=rows.out_len + active,
    )
    return rows, {"token": token, "logp": logp, "forced": is_forced, "active": active}


def decode_step(config: ModelConfig, params: Any, state: DecodeState, s: LoopSettings, *, pause_thinking: bool, eos_forces_close: bool) -> DecodeState:
    live = state.phase != DONE
    logits, cache = model_for(config, params).apply(
        {"params": params},
        state.pending[:, None],
        state.position[:, None],
        live[:, None],
        state.cache,
    )
    new, out = advance(state, logits[:, 0], s, pause_thinking=pause_thinking, eos_forces_close=eos_forces_close)

    # Every active row has written exactly `step` tokens (rows only ever stop), so this step's
    # tokens go to column `step` of every row: a local column write wherever the rows live.
    written = out["active"] & (state.step < state.tokens.shape[1])

    def write(buffer, value):
        old = jax.lax.dynamic_index_in_dim(buffer, state.step, axis=1, keepdims=False)
        return jax.lax.dynamic_update_index_in_dim(buffer, jnp.where(written, value, old), state.step, axis=1)

    return new.replace(
        cache=cache,
        tokens=write(state.tokens, out["token"]),
        logprobs=write(state.logprobs, out["logp"]),
        forced=write(state.forced, out["forced"]),
        step=state.step + 1,
    )


def run_loop(config: ModelConfig, params: Any, state: DecodeState, settings: LoopSettings, *, pause_thinking: bool = False, eos_forces_close: bool = False) -> DecodeState:
    def cond(st: DecodeState):
        return jnp.any(st.phase != DONE) & (st.step < settings.max_steps)

    def body(st: DecodeState):
        return decode_step(config, params, st, settings, pause_thinking=pause_thinking, eos_forces_close=eos_forces_close)

    final = jax.lax.while_loop(cond, body, state)
    # Anything still running when the step bound is reached ran out of room.
    stopped = final.phase != DONE
    return final.replace(finish=jnp.where(stopped, LENGTH, final.finish), phase=jnp.where(stopped, DONE, final.phase))

