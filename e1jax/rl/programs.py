"""The device programs of one GRPO step, built once per run and shared by `train` and `plan`.

  rollout   the sampler's decode call (`e1jax.sampling.generate`'s jitted loop) on the decode
            copy of the weights (`inference`: compute dtype, inference mesh);
  logprobs  the behaviour / reference log-prob pass over the step's sequences;
  update    one optimizer step on one mini-batch (e1jax.rl.update.step_update runs a step's).

`StepShapes` gives the largest shapes a recipe can produce (prompts at data.max_prompt_len,
the full budgets): the ones `plan` compiles.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import numpy as np
import optax
from jax.sharding import Mesh

from e1jax.errors import E1Error
from e1jax.models.config import ModelConfig
from e1jax.rl.config import GRPOConfig, OptimConfig, TrainConfig
from e1jax.rl.update import logprobs_program, make_optimizer, make_update_fn
from e1jax.sampling.generate import DecodeShapes, decode_steps
from e1jax.sampling.inference import InferenceLayout, inference_layout
from e1jax.sampling.prepare import SpecialIds, prompt_bucket
from e1jax.sampling.prepare import check_context as check_context_of
from e1jax.sharding import mesh_description


@dataclasses.dataclass(frozen=True)
class StepPrograms:
    model_config: ModelConfig
    mesh: Mesh
    optimizer: optax.GradientTransformation
    update: Callable  # update(state, mini-batch) -> (state, metrics)
    inference: InferenceLayout  # the rollout's weights: InferenceLayout(params) -> decode copy
    grpo: GRPOConfig  # the objective; its temperature divides the logits of the log-prob pass
    update_rows: int  # rows of one optimizer step (batch.mini_batch x rollout.n)
    micro_batch: int  # rows per forward(/backward) pass of the log-prob pass and the update

    def logprobs(self, rows: int, response_width: int) -> tuple[Callable, int]:
        """The log-prob pass over `rows` sequences scored on their last `response_width` tokens."""
        return logprobs_program(self.model_config, rows, self.micro_batch, self.mesh, False, response_width)


def update_rows(cfg: TrainConfig) -> int:
    return cfg.batch.mini_batch * cfg.rollout.n


def micro_batch_rows(cfg: TrainConfig) -> int:
    return cfg.batch.micro_batch or update_rows(cfg)


def check_batch_split(cfg: TrainConfig, mesh: Mesh) -> None:
    """The micro-batch (the rows of one forward/backward) must split over the batch axes."""
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = micro_batch_rows(cfg)
    if micro % ways:
        raise E1Error(f"batch.micro_batch={micro} rows do not split over the mesh's {ways} batch devices "
                      f"(data x fsdp of mesh {mesh_description(mesh)}): use a multiple of {ways}, or a mesh with "
                      f"a tensor axis")


def check_context(cfg: TrainConfig, model_config: ModelConfig, ids: SpecialIds) -> None:
    """The longest prompt (data.max_prompt_len) plus the budgets, of the rollouts and of the
    validation, fit the model's context (`e1jax.sampling.check_context`)."""
    check = functools.partial(check_context_of, model_config, longest_prompt=cfg.data.max_prompt_len, ids=ids)
    check(think_budget=cfg.rollout.think_budget, solution_budget=cfg.rollout.solution_budget + int(cfg.grpo.phantom_eos),
          where="data.max_prompt_len with the rollout budgets" + (" and the phantom EOS" if cfg.grpo.phantom_eos else ""))
    v = cfg.run.validation
    if v.datasets and v.every:
        check(think_budget=max(v.think_budgets), solution_budget=v.solution_budget,
              where="data.max_prompt_len with the run.validation budgets")


@functools.lru_cache(maxsize=8)
def _programs(model_config: ModelConfig, grpo: GRPOConfig, optim: OptimConfig, rows: int, micro_batch: int,
              mesh: Mesh, hbm_bytes: int | None, tensor_parallel: int) -> StepPrograms:
    optimizer = make_optimizer(optim)
    update = make_update_fn(model_config, grpo, optimizer, micro_batch=micro_batch, mesh=mesh)
    inference = inference_layout(model_config, mesh, hbm_bytes=hbm_bytes, tensor_parallel=tensor_parallel)
    return StepPrograms(model_config=model_config, mesh=mesh, optimizer=optimizer, update=update,
                        inference=inference, grpo=grpo, update_rows=rows, micro_batch=micro_batch)


def step_programs(cfg: TrainConfig, model_config: ModelConfig, mesh: Mesh, hbm_bytes: int | None = None) -> StepPrograms:
    """The programs of `cfg` (an effective TrainConfig) for `model_config` on `mesh`; cached, so
    repeated train() calls in one process compile once. `hbm_bytes`: one chip's memory (default:
    what the devices report), which decides whether the decode copy is replicated."""
    check_batch_split(cfg, mesh)
    return _programs(model_config, cfg.grpo, cfg.optim, update_rows(cfg), micro_batch_rows(cfg), mesh, hbm_bytes,
                     cfg.rollout.tensor_parallel)


@dataclasses.dataclass(frozen=True)
class StepShapes:
    """The largest shapes of one step of a recipe."""

    decode: DecodeShapes  # one sampler call (rollout.chunk_prompts prompts, or all of the step's)
    sequences: int  # rows of the log-prob pass (prompts_per_step x n)
    update_rows: int  # rows of one optimizer step (mini_batch x n)
    prompt_width: int  # P of the training sequences
    response_width: int  # L of the training sequences

    @property
    def sequence_length(self) -> int:
        return self.prompt_width + self.response_width

    @classmethod
    def of(cls, cfg: TrainConfig, ids: SpecialIds, inference_mesh: Mesh | None) -> "StepShapes":
        r, b = cfg.rollout, cfg.batch
        steps = decode_steps(np.array([r.think_budget]), np.array([r.solution_budget]), ids, False, r.eos_in_thinking)
        prompts = min(r.chunk_prompts or b.prompts_per_step, b.prompts_per_step)
        decode = DecodeShapes.of(prompts, cfg.data.max_prompt_len, n=r.n, steps=steps, mesh=inference_mesh,
                                 eos_in_thinking=r.eos_in_thinking)
        return cls(decode=decode, sequences=b.prompts_per_step * r.n, update_rows=update_rows(cfg),
                   prompt_width=prompt_bucket(cfg.data.max_prompt_len),
                   response_width=decode.out_width + int(cfg.grpo.phantom_eos))


def placeholder_ids() -> SpecialIds:
    """Special ids of the usual shape (one close token, one EOS): only their count shapes a program."""
    return SpecialIds(think_close_ids=(1,), eos_ids=(2,), pad_id=2)
