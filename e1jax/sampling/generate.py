"""Host API of the sampler: elastic / plain generation (the one-pass budget sweep is `sweep`)."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.models.params import decode_layout
from e1jax.sampling import loop, prepare
from e1jax.sampling.ops import SamplingParams
from e1jax.sharding import activate, named_sharding, to_host

__all__ = ["DecodeShapes", "Mode", "abstract_generate_args", "decode_steps", "generate"]

Mode = Literal["elastic", "plain"]


@functools.partial(jax.jit, static_argnames=("config", "n", "cache_len", "out_width", "plain", "eos_forces_close"))
def _generate_jit(params, tokens, mask, think_budget, solution_budget, sample_ids, seed, settings, *, config, n, cache_len, out_width, plain, eos_forces_close):
    cache, pending, position = loop.prefill(config, params, tokens, mask, n, cache_len)
    phase = jnp.full(pending.shape, loop.SOLVE if plain else loop.THINK, jnp.int32)
    keys = loop.sample_keys(seed, sample_ids)
    state = loop.initial_state(cache, pending, position, phase, think_budget, solution_budget, keys, out_width, settings.pad_id)
    final = loop.run_loop(config, params, state, settings, eos_forces_close=eos_forces_close)
    return {
        "tokens": final.tokens,
        "logprobs": final.logprobs,
        "forced": final.forced,
        "lengths": final.out_len,
        "truncated": final.truncated,
        "finish": final.finish,
    }


def decode_steps(think_budget: np.ndarray, solution_budget: np.ndarray, ids: prepare.SpecialIds, plain: bool,
                 eos_in_thinking: str) -> int:
    """The most tokens a sample may write: t + close + s (plus the close after an EOS in thinking)."""
    if plain:
        return int(np.max(solution_budget))
    close_len = len(ids.think_close_ids)
    return int(np.max(think_budget + solution_budget)) + close_len + (close_len if eos_in_thinking == "append_close" else 0)


@dataclasses.dataclass(frozen=True)
class DecodeShapes:
    """The shapes of one `_generate_jit` call: `rows` prompt rows (a bucket, padded with filler
    rows), prompts left-padded to `width`, `n` samples each, `out_width` response columns."""

    rows: int
    width: int
    n: int
    out_width: int
    plain: bool = False
    eos_forces_close: bool = False

    @classmethod
    def of(cls, count: int, longest_prompt: int, *, n: int, steps: int, mesh: Mesh | None, plain: bool = False,
           eos_in_thinking: str = "stop") -> "DecodeShapes":
        return cls(rows=prepare.batch_bucket(count, prepare.data_multiple(mesh)),
                   width=prepare.prompt_bucket(longest_prompt), n=n, out_width=prepare.generation_bucket(steps),
                   plain=plain, eos_forces_close=eos_in_thinking == "append_close")

    @property
    def cache_len(self) -> int:
        return self.width + self.out_width + 2

    @property
    def max_steps(self) -> int:
        return self.out_width + 1

    def statics(self, config: ModelConfig) -> dict[str, Any]:
        return dict(config=config, n=self.n, cache_len=self.cache_len, out_width=self.out_width, plain=self.plain,
                    eos_forces_close=self.eos_forces_close)


def abstract_generate_args(shapes: DecodeShapes, params: Any, ids: prepare.SpecialIds, mesh: Mesh | None) -> tuple:
    """ShapeDtypeStructs (with the placements `generate` gives them) of `_generate_jit`'s
    arguments for `shapes`, after `params` (abstract, already placed)."""
    def arg(shape, dtype, sharded=True):
        sharding = None
        if mesh is not None:
            axes = (("batch",) + (None,) * (len(shape) - 1)) if sharded else (None,) * len(shape)
            sharding = named_sharding(axes, shape, mesh)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    rows, samples = shapes.rows, shapes.rows * shapes.n
    settings = prepare.loop_settings(SamplingParams(), ids, shapes.max_steps)
    settings = jax.tree.map(lambda x: arg(x.shape, x.dtype, sharded=False), settings)
    return (params, arg((rows, shapes.width), jnp.int32), arg((rows, shapes.width), jnp.bool_), arg((samples,), jnp.int32),
            arg((samples,), jnp.int32), arg((samples,), jnp.uint32), arg((), jnp.uint32, sharded=False), settings)


def generate(
    config: ModelConfig,
    params: Any,
    prompts: Sequence[Sequence[int]],
    *,
    ids: prepare.SpecialIds,
    mode: Mode = "elastic",
    think_budget: int | Sequence[int] = 1024,
    solution_budget: int | Sequence[int] = 1024,
    max_new_tokens: int | None = None,
    sampling: SamplingParams = SamplingParams(),
    n: int = 1,
    seed: int = 0,
    sample_ids: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    eos_in_thinking: prepare.EosInThinking = "stop",
    max_prompt_len: int | None = None,
) -> prepare.GenerationOutput:
    """Generate n samples per prompt (token ids, no padding) in elastic or plain mode."""
    prompts = [list(map(int, p)) for p in prompts]
    count = len(prompts)
    plain, tb, sb = prepare.request_budgets(config, prompts, ids=ids, mode=mode, n=n, think_budget=think_budget,
                                            solution_budget=solution_budget, max_new_tokens=max_new_tokens,
                                            max_prompt_len=max_prompt_len)

    shapes = DecodeShapes.of(count, max(len(p) for p in prompts), n=n, steps=decode_steps(tb, sb, ids, plain, eos_in_thinking),
                             mesh=mesh, plain=plain, eos_in_thinking=eos_in_thinking)
    rows = shapes.rows
    tokens, mask = prepare.pad_prompts(prompts, shapes.width, rows, ids.pad_id)
    pad_rows = rows - count
    tb_rows = np.concatenate([tb, np.full(pad_rows, tb[0])]).repeat(n).astype(np.int32)
    sb_rows = np.concatenate([sb, np.full(pad_rows, sb[0])]).repeat(n).astype(np.int32)
    id_rows = prepare.sample_id_rows(sample_ids, count, n, rows)

    placed = prepare.place(mesh, {"tokens": tokens, "mask": mask, "tb": tb_rows, "sb": sb_rows, "ids": id_rows})
    params = decode_layout(params)
    with activate(mesh):
        out = _generate_jit(
            params, placed["tokens"], placed["mask"], placed["tb"], placed["sb"], placed["ids"], jnp.uint32(seed),
            prepare.loop_settings(sampling, ids, shapes.max_steps), **shapes.statics(config),
        )
    out = jax.tree.map(lambda x: to_host(x)[: count * n], out)
    return prepare.assemble(out, count, n, ids, plain, tb, sb)
