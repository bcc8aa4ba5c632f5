"""The GRPO training loop: rollout -> grading -> advantages -> log-probs -> updates -> logs/checkpoints.

Per step:
  1. take the step's prompts from the grain iterator (its state is checkpointed);
  2. sample n elastic responses per prompt with the current params (seed derived
     from (run seed, step)), grade them, compute group advantages;
  3. place the step's one TrainBatch and recompute the behaviour log-probs with the
     trainer (logits / rollout temperature), and the reference log-probs from the
     frozen initial params when kl_coef > 0 (e1jax.rl.update.step_batch);
  4. one optimizer update per mini-batch, in order (e1jax.rl.update.step_update);
  5. log metrics (process 0), validate every k steps, checkpoint every k steps.

Nothing random is carried between steps outside the checkpoint, so a run
resumed from checkpoint k produces exactly the rows k+1.. of an uninterrupted
run (timings aside).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e1jax.config import to_dict
from e1jax.rl.config import TrainConfig
from e1jax.rl.initial_state import initial_state
from e1jax.rl.metrics import MetricsLogger, to_float
from e1jax.rl.rollout import (
    GenerateFn,
    build_sequences,
    rollout_metrics,
    run_rollout,
    step_seed,
)
from e1jax.rl.validation import Validation
from e1jax.rl.verl_scale import verl_batch

# (event, step): "step_end" after a step's metrics are written, "save_started" once a
# checkpoint save has been handed to orbax (it may still be writing).
Callback = Callable[[str, int], None]


@dataclasses.dataclass
class TrainResult:
    start_step: int  # the step resumed from (0: fresh start)
    final_step: int
    last_metrics: dict[str, Any]
    out_dir: Path


def make_task(cfg: TrainConfig, tokenizer: Any):
    """The run's episode: its prompts (data.*) and its reward (reward.*)."""
    from e1jax.task import PromptSpec, Task

    prompt = PromptSpec(chat_template=cfg.data.chat_template, instruction=cfg.data.instruction, key=cfg.data.prompt_key)
    return Task(tokenizer, prompt=prompt, reward=cfg.reward)


def load_records(task: Any, specs: Sequence[str]) -> list[dict]:
    return [record for records in task.load(specs).values() for record in records]


# ------------------------------------------------------------------ the loop


VALIDATION_CONSOLE_METRIC = "/avg_at_n"


def _console_line(step: int, row: dict[str, Any]) -> str:
    keys = [("reward/mean", "reward"), ("reward/accuracy", "acc"), ("response/length_mean", "len"),
            ("response/truncation_rate", "trunc"), ("actor/kl", "kl"), ("actor/entropy", "ent"),
            ("actor/grad_norm", "gnorm"), ("time/step_s", "s")]
    parts = [f"step {step}"] + [f"{short} {row[key]:.4g}" for key, short in keys if key in row]
    parts += [f"{key} {value:.4g}" for key, value in row.items()
              if key.startswith("val/") and key.endswith(VALIDATION_CONSOLE_METRIC)]
    return "  ".join(parts)


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclasses.dataclass
class _Run:
    """Everything a step needs that does not change from step to step."""

    cfg: TrainConfig
    mesh: Any
    model_dir: Path
    model_config: Any
    task: Any  # e1jax.task.Task
    iterator: Any
    validation: Validation
    programs: Any  # e1jax.rl.programs.StepPrograms
    generate_fn: GenerateFn | None


def _prepare(cfg: TrainConfig, generate_fn: GenerateFn | None) -> _Run:
    from e1jax.data.pipeline import make_train_iterator
    from e1jax.dtypes import resolve_dtype
    from e1jax.models.hf import load_config as load_model_config
    from e1jax.models.hf import resolve_model_dir
    from e1jax.rl.programs import check_context, step_programs
    from e1jax.sharding import make_mesh
    from e1jax.tokenizer import Tokenizer

    mesh = make_mesh(cfg.mesh)
    model_dir = resolve_model_dir(cfg.model.path)
    model_config = load_model_config(model_dir, param_dtype=cfg.model.param_dtype,
                                     dtype=resolve_dtype(cfg.model.dtype), remat=cfg.model.remat)
    task = make_task(cfg, Tokenizer.load(model_dir))
    check_context(cfg, model_config, task.special_ids)
    # Every host reads the whole global batch; the sampler and the update shard it.
    iterator = make_train_iterator(load_records(task, cfg.data.train_files), task.prompt,
                                   batch_size=cfg.batch.prompts_per_step, max_prompt_len=cfg.data.max_prompt_len,
                                   seed=cfg.data.seed, shard_index=0, shard_count=1)
    programs = step_programs(cfg, model_config, mesh)
    return _Run(cfg=cfg, mesh=mesh, model_dir=model_dir, model_config=model_config, task=task, iterator=iterator,
                validation=Validation.of(cfg, task), programs=programs, generate_fn=generate_fn)


def _train_step(run: _Run, state: Any, ref_params: Any, step: int) -> tuple[Any, dict[str, float]]:
    """One rollout batch and its optimizer updates -> (new state, metrics)."""
    import jax

    from e1jax.rl.update import sampler_logp_diff, step_batch, step_update

    cfg, programs = run.cfg, run.programs
    t_step = time.perf_counter()
    inference = programs.inference
    sampler_params = inference(state.params)  # the decode copy, made once per step
    rollout = run_rollout(inference.config, sampler_params, next(run.iterator), settings=cfg.rollout, task=run.task,
                          seed=step_seed(cfg.run.seed, step),
                          mesh=inference.mesh, max_prompt_len=cfg.data.max_prompt_len, adv_eps=cfg.grpo.adv_eps,
                          generate_fn=run.generate_fn)
    del sampler_params  # its memory is the update's
    ids = run.task.special_ids
    seqs = build_sequences(rollout, pad_id=ids.pad_id, train_forced_tokens=cfg.grpo.train_forced_tokens,
                           phantom_eos_id=ids.eos_ids[0] if cfg.grpo.phantom_eos else None)
    if cfg.grpo.loss_scale == "verl":
        seqs = verl_batch(seqs, update_rows=programs.update_rows, world_size=cfg.grpo.verl_world_size,
                          max_token_len=cfg.grpo.verl_max_token_len)

    t_logp = time.perf_counter()
    batch = step_batch(programs, seqs, state.params, ref_params)  # placed once, old (and reference) log-probs in
    logp_diff = sampler_logp_diff(batch)
    jax.block_until_ready((batch.old_logp, batch.ref_logp))
    logprob_s = time.perf_counter() - t_logp

    t_update = time.perf_counter()
    state, update_metrics = step_update(programs, state, batch)
    del batch
    update_s = time.perf_counter() - t_update

    metrics = rollout_metrics(rollout)
    metrics.update({f"actor/{k}": v for k, v in update_metrics.items()})
    # sampler vs trainer log-probs of the trained tokens: ~0 when both sides agree
    metrics["rollout/logp_diff"] = to_float(jax.device_get(logp_diff))
    metrics["data/epoch"] = float(run.iterator.epoch)
    if run.validation.due(step):
        t_val = time.perf_counter()
        metrics.update(run.validation(programs.inference, state.params, step))
        metrics["time/validation_s"] = time.perf_counter() - t_val
    metrics["perf/rollout_tokens_per_s"] = float(np.sum(rollout.gen.lengths)) / max(rollout.generate_s, 1e-9)
    # every sequence (prompt + response) goes through one forward/backward pass
    metrics["perf/update_tokens_per_s"] = float(np.sum(seqs.attention_mask)) / max(update_s, 1e-9)
    metrics["time/rollout_s"] = rollout.generate_s
    metrics["time/grading_s"] = rollout.grading_s
    metrics["time/logprob_s"] = logprob_s
    metrics["time/update_s"] = update_s
    metrics["time/step_s"] = time.perf_counter() - t_step
    return state, metrics


def train(cfg: TrainConfig, *, generate_fn: GenerateFn | None = None, callback: Callback | None = None) -> TrainResult:
    """Run (or resume) the GRPO run described by `cfg`; `generate_fn` replaces the rollout sampler
    (same signature as e1jax.sampling.generate; validation always runs e1jax.eval's budget sweep)."""
    import jax

    from e1jax.checkpoints import CheckpointStore, model_meta

    cfg = cfg.effective()
    is_main = jax.process_index() == 0
    out_dir = Path(cfg.run.out_dir)
    run = _prepare(cfg, generate_fn)
    store = CheckpointStore(cfg.checkpoint_dir, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    logger = progress = None
    try:
        state, ref_params, start_step = initial_state(cfg, model_dir=run.model_dir, model_config=run.model_config,
                                                      mesh=run.mesh, optimizer=run.programs.optimizer, store=store,
                                                      iterator=run.iterator)
        meta_static = {"run_seed": cfg.run.seed, "config": to_dict(cfg),
                       **model_meta(run.model_config, run.model_dir)}
        logger = MetricsLogger(out_dir, tensorboard=cfg.run.tensorboard, resume_step=start_step, active=is_main)
        if is_main:
            (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
            if cfg.run.progress:
                from tqdm.auto import tqdm

                progress = tqdm(total=cfg.run.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        row: dict[str, Any] = {}
        step = start_step
        if start_step == 0 and cfg.run.validation.before_train and run.validation.sets:
            t_val = time.perf_counter()
            metrics = run.validation(run.programs.inference, state.params, 0)
            metrics["time/validation_s"] = time.perf_counter() - t_val
            row = logger.log(0, metrics)
            if is_main:
                (progress.write if progress is not None else _stderr_line)(_console_line(0, row))
        for step in range(start_step + 1, cfg.run.steps + 1):
            state, metrics = _train_step(run, state, ref_params, step)
            row = logger.log(step, metrics)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(reward=f"{row['reward/mean']:.3f}", len=f"{row['response/length_mean']:.0f}")
            if is_main and step % cfg.run.log_every == 0:
                (progress.write if progress is not None else _stderr_line)(_console_line(step, row))
            if callback is not None:
                callback("step_end", step)
            every = cfg.checkpoint.every
            if (every and step % every == 0) or step == cfg.run.steps:
                store.save(step, params=state.params, opt_state={"opt_state": state.opt_state, "step": state.step},
                           meta={**meta_static, "data": run.iterator.get_state()})
                if callback is not None:
                    callback("save_started", step)
    finally:
        if progress is not None:
            progress.close()
        if logger is not None:
            logger.close()
        store.close()  # waits for a pending asynchronous save
    return TrainResult(start_step=start_step, final_step=step, last_metrics=row, out_dir=out_dir)
