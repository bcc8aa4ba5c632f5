"""Host API of the sampler: elastic / plain generation and the one-pass budget sweep."""

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
from e1jax.models.qwen import constrain_cache, extend_cache, map_cache_rows, model_for
from e1jax.sampling import loop
from e1jax.sampling.ops import SamplingParams
from e1jax.sharding import activate, from_host, named_sharding, to_host

Mode = Literal["elastic", "plain"]


@dataclasses.dataclass
class GenerationOutput:
    """Per-sample results (host numpy). Sample j of prompt i is row i * n + j."""

    prompt_index: np.ndarray  # (N,)
    tokens: np.ndarray  # (N, L) response tokens, pad after `lengths`
    logprobs: np.ndarray  # (N, L) log-prob under softmax(logits / temperature)
    forced: np.ndarray  # (N, L) True where the close was forced
    lengths: np.ndarray  # (N,)
    thinking_tokens: np.ndarray  # (N,) tokens before the close
    solution_tokens: np.ndarray  # (N,) tokens after the close (EOS included)
    truncated: np.ndarray  # (N,) the close was forced at the thinking budget
    finish_reason: list[str]
    think_budget: np.ndarray  # (N,)
    solution_budget: np.ndarray  # (N,)

    def response_ids(self, row: int) -> list[int]:
        return self.tokens[row, : self.lengths[row]].tolist()

    def __len__(self) -> int:
        return len(self.lengths)


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def prompt_bucket(length: int) -> int:
    """Prompt lengths round up to a power of two (at least 16)."""
    return max(16, 1 << (max(length, 1) - 1).bit_length())


def generation_bucket(steps: int) -> int:
    return _round_up(max(steps, 1), 64 if steps <= 512 else 256)


def batch_bucket(batch: int, multiple: int = 1) -> int:
    return _round_up(1 << (max(batch, 1) - 1).bit_length(), multiple)


def _per_prompt(value: int | Sequence[int], count: int, name: str) -> np.ndarray:
    arr = np.full(count, value, np.int64) if np.isscalar(value) else np.asarray(value, np.int64)
    if arr.shape != (count,):
        raise E1Error(f"{name} must be one value or one per prompt ({count}), got {arr.shape[0] if arr.ndim else 1}")
    if np.any(arr <= 0):
        raise E1Error(f"{name} must be positive, got {int(arr.min())}")
    return arr


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    think_close_ids: tuple[int, ...]  # forced at the thinking budget (default: the single </think>)
    eos_ids: tuple[int, ...]
    pad_id: int
    natural_close_id: int | None = None  # the token that ends thinking when sampled (default: the last close id)

    @property
    def natural_close(self) -> int:
        return self.natural_close_id if self.natural_close_id is not None else self.think_close_ids[-1]


def _data_multiple(mesh: Mesh | None) -> int:
    if mesh is None:
        return 1
    return mesh.shape["data"] * mesh.shape["fsdp"]


def _pad_prompts(prompts: list[list[int]], width: int, rows: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.full((rows, width), pad_id, np.int32)
    mask = np.zeros((rows, width), bool)
    for i in range(rows):
        seq = prompts[i] if i < len(prompts) else prompts[0]  # filler rows copy prompt 0
        tokens[i, width - len(seq) :] = seq
        mask[i, width - len(seq) :] = True
    return tokens, mask


def sample_id_rows(sample_ids: Sequence[int] | None, count: int, n: int, rows: int) -> np.ndarray:
    """Per-row random-stream ids (default 0..count*n-1), zero for the filler rows."""
    ids = np.arange(count * n) if sample_ids is None else np.asarray(sample_ids, np.int64)
    if ids.shape != (count * n,):
        raise E1Error(f"sample_ids must have one id per sample ({count * n})")
    return np.concatenate([ids, np.zeros((rows - count) * n, np.int64)]).astype(np.uint32)


def _settings(sampling: SamplingParams, ids: SpecialIds, max_steps: int) -> loop.LoopSettings:
    arrays = sampling.as_arrays()
    return loop.LoopSettings(
        temperature=arrays["temperature"],
        top_p=arrays["top_p"],
        top_k=arrays["top_k"],
        close_ids=jnp.asarray(ids.think_close_ids, jnp.int32),
        natural_close_id=jnp.int32(ids.natural_close),
        eos_ids=jnp.asarray(ids.eos_ids, jnp.int32),
        pad_id=jnp.int32(ids.pad_id),
        max_steps=jnp.int32(max_steps),
    )


def _prefill(config: ModelConfig, params, tokens, mask, n: int, cache_len: int):
    """Prefill all but the last prompt token once per prompt (whole-sequence attention, no head),
    give the cache its remaining empty slots, then repeat it n times."""
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
    _, cache = model_for(config, params).apply({"params": params}, tokens[:, :-1], positions[:, :-1], mask[:, :-1],
                                               return_hidden=True, collect_cache=True)
    cache = extend_cache(cache, cache_len - (tokens.shape[1] - 1))
    if n > 1:
        cache = map_cache_rows(lambda x: jnp.repeat(x, n, axis=0), cache)
    cache = constrain_cache(cache)
    pending = jnp.repeat(tokens[:, -1], n)
    position = jnp.repeat(positions[:, -1], n)
    return cache, pending, position


def _new_state(cache, pending, position, phase, think_budget, solution_budget, keys, out_width, pad_id):
    rows = pending.shape[0]
    zeros = jnp.zeros((rows,), jnp.int32)
    return loop.DecodeState(
        cache=cache,
        pending=pending,
        position=position,
        phase=phase,
        think_used=zeros,
        sol_used=zeros,
        force_pos=zeros,
        truncated=jnp.zeros((rows,), bool),
        finish=zeros,
        out_len=zeros,
        tokens=jnp.full((rows, out_width), pad_id, jnp.int32),
        logprobs=jnp.zeros((rows, out_width), jnp.float32),
        forced=jnp.zeros((rows, out_width), bool),
        think_budget=think_budget,
        solution_budget=solution_budget,
        keys=keys,
        key_offset=zeros,
        step=jnp.int32(0),
    )


def _sample_keys(seed, sample_ids):
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(sample_ids)


@functools.partial(jax.jit, static_argnames=("config", "n", "cache_len", "out_width", "plain", "eos_forces_close"))
def _generate_jit(params, tokens, mask, think_budget, solution_budget, sample_ids, seed, settings, *, config, n, cache_len, out_width, plain, eos_forces_close):
    cache, pending, position = _prefill(config, params, tokens, mask, n, cache_len)
    rows = pending.shape[0]
    phase = jnp.full((rows,), loop.SOLVE if plain else loop.THINK, jnp.int32)
    state = _new_state(cache, pending, position, phase, think_budget, solution_budget, _sample_keys(seed, sample_ids), out_width, settings.pad_id)
    final = loop.run_loop(config, params, state, settings, eos_forces_close=eos_forces_close)
    return _outputs(final)


def _outputs(state: loop.DecodeState) -> dict[str, jax.Array]:
    return {
        "tokens": state.tokens,
        "logprobs": state.logprobs,
        "forced": state.forced,
        "lengths": state.out_len,
        "truncated": state.truncated,
        "finish": state.finish,
    }


def _split_counts(tokens: np.ndarray, forced: np.ndarray, lengths: np.ndarray, natural_close: int, close_len: int, plain: bool):
    thinking = np.zeros(len(lengths), np.int64)
    solution = np.zeros(len(lengths), np.int64)
    for i, length in enumerate(lengths):
        row = tokens[i, :length]
        forced_at = np.flatnonzero(forced[i, :length])
        natural_at = np.flatnonzero(row == natural_close)
        if len(forced_at) and (not len(natural_at) or forced_at[0] < natural_at[0]):
            start, width = int(forced_at[0]), close_len
        elif len(natural_at):
            start, width = int(natural_at[0]), 1
        else:
            thinking[i] = length if not plain else length
            continue
        thinking[i] = start
        solution[i] = length - start - width
    return thinking, solution


def decode_steps(think_budget: np.ndarray, solution_budget: np.ndarray, ids: SpecialIds, plain: bool,
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
        return cls(rows=batch_bucket(count, _data_multiple(mesh)), width=prompt_bucket(longest_prompt), n=n,
                   out_width=generation_bucket(steps), plain=plain, eos_forces_close=eos_in_thinking == "append_close")

    @property
    def cache_len(self) -> int:
        return self.width + self.out_width + 2

    @property
    def max_steps(self) -> int:
        return self.out_width + 1

    def statics(self, config: ModelConfig) -> dict[str, Any]:
        return dict(config=config, n=self.n, cache_len=self.cache_len, out_width=self.out_width, plain=self.plain,
                    eos_forces_close=self.eos_forces_close)


def abstract_generate_args(shapes: DecodeShapes, params: Any, ids: SpecialIds, mesh: Mesh | None) -> tuple:
    """ShapeDtypeStructs (with the placements `generate` gives them) of `_generate_jit`'s
    arguments for `shapes`, after `params` (abstract, already placed)."""
    def arg(shape, dtype, sharded=True):
        sharding = None
        if mesh is not None:
            axes = (("batch",) + (None,) * (len(shape) - 1)) if sharded else (None,) * len(shape)
            sharding = named_sharding(axes, shape, mesh)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    rows, samples = shapes.rows, shapes.rows * shapes.n
    settings = jax.tree.map(lambda x: arg(x.shape, x.dtype, sharded=False), _settings(SamplingParams(), ids, shapes.max_steps))
    return (params, arg((rows, shapes.width), jnp.int32), arg((rows, shapes.width), jnp.bool_), arg((samples,), jnp.int32),
            arg((samples,), jnp.int32), arg((samples,), jnp.uint32), arg((), jnp.uint32, sharded=False), settings)


def _validate(prompts, think_budget, solution_budget, config, ids, max_prompt_len):
    if not prompts:
        raise E1Error("no prompts given")
    if not ids.think_close_ids or not ids.eos_ids:
        raise E1Error("think_close_ids and eos_ids must not be empty")
    limit = max_prompt_len or config.max_position_embeddings
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise E1Error(f"prompt {i} is empty")
        if len(p) > limit:
            raise E1Error(f"prompt {i} is {len(p)} tokens, longer than the limit {limit}")
        if min(p) < 0 or max(p) >= config.vocab_size:
            raise E1Error(f"prompt {i} has a token id outside the vocabulary (size {config.vocab_size})")
    longest = max(len(p) for p in prompts)
    total = longest + int(np.max(think_budget + solution_budget)) + len(ids.think_close_ids)
    if total > config.max_position_embeddings:
        raise E1Error(
            f"prompt ({longest}) + budgets ({int(np.max(think_budget))} + {len(ids.think_close_ids)} + "
            f"{int(np.max(solution_budget))}) = {total} tokens exceed the model's context {config.max_position_embeddings}"
        )


def _place(mesh, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in arrays.items()}
    out = {}
    for k, v in arrays.items():
        axes = ("batch",) + (None,) * (v.ndim - 1)
        out[k] = from_host(v, named_sharding(axes, v.shape, mesh))
    return out


def generate(
    config: ModelConfig,
    params: Any,
    prompts: Sequence[Sequence[int]],
    *,
    ids: SpecialIds,
    mode: Mode = "elastic",
    think_budget: int | Sequence[int] = 1024,
    solution_budget: int | Sequence[int] = 1024,
    max_new_tokens: int | None = None,
    sampling: SamplingParams = SamplingParams(),
    n: int = 1,
    seed: int = 0,
    sample_ids: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    eos_in_thinking: Literal["stop", "append_close"] = "stop",
    max_prompt_len: int | None = None,
) -> GenerationOutput:
    """Generate n samples per prompt (token ids, no padding) in elastic or plain mode."""
    prompts = [list(map(int, p)) for p in prompts]
    count = len(prompts)
    if n < 1:
        raise E1Error(f"n must be >= 1, got {n}")
    plain = mode == "plain"
    if mode not in ("elastic", "plain"):
        raise E1Error(f"mode must be elastic or plain, got {mode}")
    if plain:
        if max_new_tokens is None:
            raise E1Error("plain mode needs max_new_tokens")
        tb = np.ones(count, np.int64)
        sb = _per_prompt(max_new_tokens, count, "max_new_tokens")
    else:
        tb = _per_prompt(think_budget, count, "thinking budget")
        sb = _per_prompt(solution_budget, count, "solution budget")
    _validate(prompts, tb if not plain else np.zeros(count, np.int64), sb, config, ids, max_prompt_len)

    shapes = DecodeShapes.of(count, max(len(p) for p in prompts), n=n, steps=decode_steps(tb, sb, ids, plain, eos_in_thinking),
                             mesh=mesh, plain=plain, eos_in_thinking=eos_in_thinking)
    rows = shapes.rows
    tokens, mask = _pad_prompts(prompts, shapes.width, rows, ids.pad_id)
    pad_rows = rows - count
    tb_rows = np.concatenate([tb, np.full(pad_rows, tb[0])]).repeat(n).astype(np.int32)
    sb_rows = np.concatenate([sb, np.full(pad_rows, sb[0])]).repeat(n).astype(np.int32)
    id_rows = sample_id_rows(sample_ids, count, n, rows)

    placed = _place(mesh, {"tokens": tokens, "mask": mask})
    params = decode_layout(params)
    placed_rows = _place(mesh, {"tb": tb_rows, "sb": sb_rows, "ids": id_rows})
    with activate(mesh):
        out = _generate_jit(
            params, placed["tokens"], placed["mask"], placed_rows["tb"], placed_rows["sb"], placed_rows["ids"], jnp.uint32(seed),
            _settings(sampling, ids, shapes.max_steps), **shapes.statics(config),
        )
    out = jax.tree.map(lambda x: to_host(x)[: count * n], out)
    return _assemble(out, count, n, ids, plain, tb, sb)


def _finish_name(code: int, plain: bool) -> str:
    if plain and code == loop.SOLUTION_BUDGET:
        return "length"
    return loop.FINISH_NAMES[code]


def _assemble(out, count, n, ids, plain, tb, sb) -> GenerationOutput:
    lengths = out["lengths"].astype(np.int64)
    thinking, solution = _split_counts(out["tokens"], out["forced"], lengths, ids.natural_close, len(ids.think_close_ids), plain)
    return GenerationOutput(
        prompt_index=np.repeat(np.arange(count), n),
        tokens=out["tokens"],
        logprobs=out["logprobs"],
        forced=out["forced"],
        lengths=lengths,
        thinking_tokens=thinking,
        solution_tokens=solution,
        truncated=out["truncated"].astype(bool),
        finish_reason=[_finish_name(int(f), plain) for f in out["finish"]],
        think_budget=np.repeat(tb, n),
        solution_budget=np.repeat(sb, n),
    )
