"""The GRPO training loop: rollout -> grading -> advantages -> log-probs -> updates -> logs/checkpoints.

Per step:
  1. take the step's prompts from the grain iterator (its state is checkpointed);
  2. sample n elastic responses per prompt with the current params (seed derived
     from (run seed, step)), grade them, compute group advantages;
  3. recompute the behaviour log-probs with the trainer (logits / rollout
     temperature), and the reference log-probs from the frozen initial params
     when kl_coef > 0;
  4. one optimizer update per mini-batch, in order;
  5. log metrics (process 0), validate every k steps, checkpoint every k steps.

Nothing random is carried between steps outside the checkpoint, so a run
resumed from checkpoint k produces exactly the rows k+1.. of an uninterrupted
run (timings aside).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from e1jax.config import to_dict
from e1jax.errors import E1Error
from e1jax.rl.config import TrainConfig
from e1jax.rl.metrics import MetricsLogger, mean_of, to_float
from e1jax.rl.rollout import (
    GenerateFn,
    RewardFn,
    RolloutSettings,
    build_sequences,
    make_reward_fn,
    mini_batches,
    rollout_metrics,
    run_rollout,
    step_seed,
)

# (event, step): "step_end" after a step's metrics are written, "save_started" once a
# checkpoint save has been handed to orbax (it may still be writing).
Callback = Callable[[str, int], None]
VALIDATION_STREAM = 1


@dataclasses.dataclass
class TrainResult:
    start_step: int  # the step resumed from (0: fresh start)
    final_step: int
    last_metrics: dict[str, Any]
    out_dir: Path


def compute_dtype(name: str) -> str:
    if name != "auto":
        return name
    import jax

    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def load_records(files: Sequence[str]) -> list[dict]:
    from e1jax.data.registry import resolve_dataset

    records = []
    for spec in files:
        _, part = resolve_dataset(spec)
        records.extend(part)
    if not records:
        raise E1Error(f"no training records in {', '.join(files)}")
    return records


def make_tokenize(tokenizer: Any, data_cfg: Any) -> Callable[[dict], list[int]]:
    key = data_cfg.prompt_key

    def tokenize(record: dict) -> list[int]:
        if key not in record:
            raise E1Error(f"training record {record.get('id')} has no '{key}' field (data.prompt_key)")
        return tokenizer.encode_prompt(record[key], chat_template=data_cfg.chat_template,
                                       e1_instruction=data_cfg.e1_instruction)

    return tokenize


def special_ids(tokenizer: Any):
    from e1jax.sampling import SpecialIds

    return SpecialIds(think_close_ids=(tokenizer.think_close_id,), eos_ids=tuple(tokenizer.eos_ids),
                      pad_id=tokenizer.pad_id)


def decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)


# --------------------------------------------------------------- validation


def load_validation_sets(cfg: TrainConfig, tokenizer: Any) -> dict[str, list[dict]]:
    """{name: records} of run.validation.datasets: the first max_problems problems whose prompt
    (as `e1jax eval` builds it) fits data.max_prompt_len."""
    from e1jax.data.registry import resolve_dataset
    from e1jax.eval.runner import encode_prompt

    v = cfg.run.validation
    sets = {}
    if not v.datasets or not v.every:
        return sets
    for spec in v.datasets:
        name, records = resolve_dataset(spec)
        kept = []
        for record in records:
            if len(encode_prompt(tokenizer, record, cfg.data.chat_template)) <= cfg.data.max_prompt_len:
                kept.append(record)
            if v.max_problems and len(kept) >= v.max_problems:
                break
        if not kept:
            raise E1Error(f"validation set {spec} has no prompt within data.max_prompt_len={cfg.data.max_prompt_len}")
        sets[name] = kept
    return sets


def validation_metrics(results: dict) -> dict[str, float]:
    """An `e1jax.eval.evaluate` result as flat metrics: val/<set>/t<budget>/<metric> for the
    metrics averaged over sets (avg@n, pass@n, token means, truncation rate), plus
    val/average/t<budget>/<metric> over several sets."""
    from e1jax.eval.metrics import AVERAGED

    cells = {name: d["budgets"] for name, d in results["datasets"].items()}
    if len(cells) > 1:
        cells["average"] = results["average"]
    return {f"val/{name}/t{budget}/{metric}": float(values[metric])
            for name, budgets in cells.items() for budget, values in budgets.items() for metric in AVERAGED}


# ------------------------------------------------------------------ the loop


def _abstract_state(model_config, optimizer, mesh):
    """Abstract TrainState (shapes, dtypes, shardings) to restore a checkpoint into."""
    import jax

    from e1jax.models.params import abstract_params
    from e1jax.rl.update import train_state_shardings

    params = abstract_params(model_config)
    shardings = train_state_shardings(model_config, optimizer, mesh)
    opt_state = jax.eval_shape(optimizer.init, params)

    def with_sharding(x, s):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return (jax.tree.map(with_sharding, params, shardings.params),
            jax.tree.map(with_sharding, opt_state, shardings.opt_state),
            shardings.step)


def _combine_update_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    from e1jax.rl.grpo import MAX_METRICS, MIN_METRICS

    host = [{k: to_float(v) for k, v in row.items()} for row in rows]
    out = mean_of(host)
    for key in MAX_METRICS:
        if key in out:
            out[key] = max(r[key] for r in host)
    for key in MIN_METRICS:
        if key in out:
            out[key] = min(r[key] for r in host)
    return {f"actor/{k}": v for k, v in out.items()}


def _console_line(step: int, row: dict[str, Any]) -> str:
    keys = [("reward/mean", "reward"), ("reward/accuracy", "acc"), ("response/length_mean", "len"),
            ("response/truncation_rate", "trunc"), ("actor/kl", "kl"), ("actor/entropy", "ent"),
            ("actor/grad_norm", "gnorm"), ("time/step_s", "s")]
    parts = [f"step {step}"] + [f"{short} {row[key]:.4g}" for key, short in keys if key in row]
    return "  ".join(parts)


@functools.cache
def _helpers():
    import jax
    import jax.numpy as jnp

    def masked_abs_diff(a, b, mask):
        mask = mask.astype(jnp.float32)
        return jnp.sum(jnp.abs(a - b) * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    def split_rows(x, parts):
        rows = x.shape[0] // parts
        return [x[i * rows:(i + 1) * rows] for i in range(parts)]

    return (jax.jit(masked_abs_diff), jax.jit(split_rows, static_argnums=1),
            jax.jit(lambda tree: jax.tree.map(jnp.copy, tree)))


def _masked_abs_diff(a, b, mask):
    return _helpers()[0](a, b, mask)


def _split_rows(x, parts):
    return _helpers()[1](x, parts)


def _copy_tree(tree):
    return _helpers()[2](tree)


@dataclasses.dataclass
class _Run:
    """Everything a step needs that does not change from step to step."""

    cfg: TrainConfig
    mesh: Any
    model_dir: Path
    model_config: Any
    tokenizer: Any
    ids: Any
    decode: Callable[[list[int]], str]
    reward_fn: RewardFn
    iterator: Any
    validation_sets: dict[str, list[dict]]
    programs: Any  # e1jax.rl.programs.StepPrograms
    generate_fn: GenerateFn | None

    @property
    def settings(self) -> RolloutSettings:
        return RolloutSettings.from_config(self.cfg.rollout)


def _prepare(cfg: TrainConfig, generate_fn: GenerateFn | None) -> _Run:
    from e1jax.data.pipeline import make_train_iterator
    from e1jax.models.hf import load_config as load_model_config
    from e1jax.models.hf import resolve_model_dir
    from e1jax.rl.programs import check_context, step_programs
    from e1jax.sharding import make_mesh
    from e1jax.tokenizer import Tokenizer

    reward_fn = make_reward_fn(cfg.reward.kind, workers=cfg.reward.workers, timeout_s=cfg.reward.timeout_s)
    mesh = make_mesh(cfg.mesh)
    model_dir = resolve_model_dir(cfg.model.path)
    model_config = load_model_config(model_dir, param_dtype=cfg.model.param_dtype,
                                     dtype=compute_dtype(cfg.model.dtype), remat=cfg.model.remat)
    check_context(cfg, model_config)
    tokenizer = Tokenizer.load(model_dir)
    tokenize = make_tokenize(tokenizer, cfg.data)
    # Every host reads the whole global batch; the sampler and the update shard it.
    iterator = make_train_iterator(load_records(cfg.data.train_files), tokenize,
                                   batch_size=cfg.batch.prompts_per_step, max_prompt_len=cfg.data.max_prompt_len,
                                   seed=cfg.data.seed, shard_index=0, shard_count=1)
    programs = step_programs(cfg, model_config, mesh)
    return _Run(cfg=cfg, mesh=mesh, model_dir=model_dir, model_config=model_config, tokenizer=tokenizer,
                ids=special_ids(tokenizer), decode=decoder(tokenizer),
                reward_fn=reward_fn,
                iterator=iterator, validation_sets=load_validation_sets(cfg, tokenizer),
                programs=programs, generate_fn=generate_fn)


def _initial_state(run: _Run, store: Any) -> tuple[Any, Any, int]:
    """(train state, reference params or None, step): fresh from the model, or the
    latest complete checkpoint (which also restores the data iterator)."""
    import jax
    import jax.numpy as jnp

    from e1jax.models.hf import load_params
    from e1jax.rl.update import TrainState, init_train_state

    cfg = run.cfg
    use_kl = cfg.grpo.kl_coef > 0
    resume_step = store.latest_step()
    if resume_step is not None and not cfg.checkpoint.resume:
        raise E1Error(f"{store.directory} already holds checkpoints (latest step {resume_step}) and "
                      "checkpoint.resume is false: use another checkpoint.dir or resume")
    if resume_step is None:
        params = load_params(run.model_dir, run.model_config, run.mesh)
        ref_params = _copy_tree(params) if use_kl else None  # the update donates `params`
        return init_train_state(params, run.programs.optimizer), ref_params, 0
    params, opt_state, step_sharding = _abstract_state(run.model_config, run.programs.optimizer, run.mesh)
    restored = store.restore(resume_step, params=params, opt_state={
        "opt_state": opt_state, "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=step_sharding)})
    meta = restored["meta"]
    if meta.get("run_seed") != cfg.run.seed:
        raise E1Error(f"checkpoint {store.directory}/{resume_step} was made with run.seed={meta.get('run_seed')}, "
                      f"not {cfg.run.seed}; use the same seed or a new checkpoint.dir")
    run.iterator.set_state(meta["data"])
    state = TrainState(params=restored["params"], opt_state=restored["opt_state"]["opt_state"],
                       step=restored["opt_state"]["step"])
    ref_params = load_params(run.model_dir, run.model_config, run.mesh) if use_kl else None
    return state, ref_params, resume_step


def _train_step(run: _Run, state: Any, ref_params: Any, step: int) -> tuple[Any, dict[str, float]]:
    """One rollout batch and its optimizer updates -> (new state, metrics)."""
    import jax

    from e1jax.rl.update import UpdateBatch, compute_logprobs, shard_batch
    from e1jax.sharding import named_sharding

    cfg, mesh, settings, programs = run.cfg, run.mesh, run.settings, run.programs
    t_step = time.perf_counter()
    inference = programs.inference
    sampler_params = inference(state.params)  # the decode copy, made once per step
    rollout = run_rollout(inference.config, sampler_params, next(run.iterator), settings=settings, ids=run.ids,
                          decode=run.decode, reward_fn=run.reward_fn, seed=step_seed(cfg.run.seed, step),
                          mesh=inference.mesh, max_prompt_len=cfg.data.max_prompt_len, adv_eps=cfg.grpo.adv_eps,
                          generate_fn=run.generate_fn)
    del sampler_params  # its memory is the update's
    seqs = build_sequences(rollout, pad_id=run.ids.pad_id, train_forced_tokens=cfg.grpo.train_forced_tokens)

    def put(x):
        return jax.device_put(x, named_sharding(("batch", "length"), x.shape, mesh))

    t_logp = time.perf_counter()
    micro = programs.micro_batch
    tokens, mask = put(seqs.tokens), put(seqs.attention_mask)
    temperature = cfg.grpo.temperature
    width = seqs.loss_mask.shape[1]
    old_logp = compute_logprobs(run.model_config, state.params, tokens, mask, temperature, micro, mesh=mesh,
                                response_width=width)
    ref_logp = (compute_logprobs(run.model_config, ref_params, tokens, mask, temperature, micro, mesh=mesh,
                                 response_width=width)
                if ref_params is not None else None)
    logp_diff = _masked_abs_diff(old_logp, put(seqs.sampler_logp), put(seqs.loss_mask))
    jax.block_until_ready((old_logp, ref_logp))
    logprob_s = time.perf_counter() - t_logp

    t_update = time.perf_counter()
    parts = mini_batches(seqs, cfg.batch.mini_batch, settings.n)
    old_parts = _split_rows(old_logp, len(parts))
    ref_parts = _split_rows(ref_logp, len(parts)) if ref_logp is not None else [None] * len(parts)
    update_metrics = []
    for part, old_part, ref_part in zip(parts, old_parts, ref_parts):
        batch = UpdateBatch(tokens=part.tokens, attention_mask=part.attention_mask, loss_mask=part.loss_mask,
                            advantages=part.advantages, old_logp=old_part, ref_logp=ref_part)
        state, metrics = programs.update(state, shard_batch(batch, mesh))
        update_metrics.append(metrics)
    update_metrics = jax.device_get(update_metrics)
    update_s = time.perf_counter() - t_update

    metrics = rollout_metrics(rollout)
    metrics.update(_combine_update_metrics(update_metrics))
    # sampler vs trainer log-probs of the trained tokens: ~0 when both sides agree
    metrics["rollout/logp_diff"] = to_float(jax.device_get(logp_diff))
    metrics["data/epoch"] = float(run.iterator.epoch)
    if run.validation_sets and step % cfg.run.validation.every == 0:
        t_val = time.perf_counter()
        metrics.update(_validate(run, state.params, step))
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


def _validate(run: _Run, params: Any, step: int) -> dict[str, float]:
    """`e1jax eval` of the validation sets (its EOS rule, the run's chat template and prompt bucket),
    seeded by (run seed, step) so a resumed run validates identically."""
    from e1jax.eval import evaluate
    from e1jax.sampling import SamplingParams

    cfg = run.cfg
    v = cfg.run.validation
    inference = run.programs.inference
    results = evaluate(
        inference.config, inference(params), run.tokenizer, run.validation_sets, think_budgets=v.think_budgets,
        solution_budget=v.solution_budget, n=v.n, sampling=SamplingParams(v.temperature, v.top_p),
        seed=step_seed(cfg.run.seed, step, VALIDATION_STREAM),
        batch_size=v.batch_size or cfg.rollout.chunk_prompts or max(map(len, run.validation_sets.values())),
        mesh=inference.mesh, chat_template=cfg.data.chat_template, max_prompt_len=cfg.data.max_prompt_len,
        progress=False, grade_workers=cfg.reward.workers or None,
        reward_fn=run.reward_fn if v.grader == "reward" else None)
    return validation_metrics(results)


def train(cfg: TrainConfig, *, generate_fn: GenerateFn | None = None, callback: Callback | None = None) -> TrainResult:
    """Run (or resume) the GRPO run described by `cfg`; `generate_fn` replaces the rollout sampler
    (same signature as e1jax.sampling.generate; validation always runs e1jax.eval's budget sweep)."""
    import jax

    from e1jax.rl.checkpoint import CheckpointStore, model_meta

    cfg = cfg.effective()
    is_main = jax.process_index() == 0
    out_dir = Path(cfg.run.out_dir)
    run = _prepare(cfg, generate_fn)
    store = CheckpointStore(cfg.checkpoint_dir, keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    logger = progress = None
    try:
        state, ref_params, start_step = _initial_state(run, store)
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
        for step in range(start_step + 1, cfg.run.steps + 1):
            state, metrics = _train_step(run, state, ref_params, step)
            row = logger.log(step, metrics)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(reward=f"{row['reward/mean']:.3f}", len=f"{row['response/length_mean']:.0f}")
            if is_main and step % cfg.run.log_every == 0:
                if progress is not None:
                    progress.write(_console_line(step, row))
                else:
                    print(_console_line(step, row), file=sys.stderr, flush=True)
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
