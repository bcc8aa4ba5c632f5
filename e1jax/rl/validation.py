"""Periodic validation of a GRPO run: `e1jax eval`'s budget sweep of the current policy on the
run's validation sets, reported as val/<set>/t<budget>/<metric>."""

from __future__ import annotations

import dataclasses
from typing import Any

from e1jax.errors import E1Error
from e1jax.rl.config import TrainConfig
from e1jax.rl.rollout import step_seed

VALIDATION_STREAM = 1  # the random stream of validation sampling, beside the rollouts' 0


def validation_task(cfg: TrainConfig, task: Any):
    """The task validation grades with: the run's (grader "reward"), or e1jax eval's graders."""
    from e1jax.task import Task

    if cfg.run.validation.grader == "reward":
        return task
    return Task(task.tokenizer, prompt=task.prompt_spec, reward=dataclasses.replace(cfg.reward, kind="auto"))


def load_validation_sets(cfg: TrainConfig, task: Any) -> dict[str, list[dict]]:
    """{name: records} of run.validation.datasets: the first max_problems problems whose prompt
    fits data.max_prompt_len."""
    v = cfg.run.validation
    sets: dict[str, list[dict]] = {}
    if not v.datasets or not v.every:
        return sets
    for name, records in task.load(v.datasets).items():
        kept = []
        for record in records:
            if len(task.prompt(record)) <= cfg.data.max_prompt_len:
                kept.append(record)
            if v.max_problems and len(kept) >= v.max_problems:
                break
        if not kept:
            raise E1Error(f"validation set {name} has no prompt within data.max_prompt_len={cfg.data.max_prompt_len}")
        sets[name] = kept
    return sets


def validation_metrics(results: dict) -> dict[str, float]:
    """An evaluation's results as flat metrics: val/<set>/t<budget>/<metric> for the metrics
    averaged over sets (avg@n, pass@n, token means, truncation rate), plus
    val/average/t<budget>/<metric> over several sets."""
    from e1jax.eval.metrics import AVERAGED

    cells = {name: d["budgets"] for name, d in results["datasets"].items()}
    if len(cells) > 1:
        cells["average"] = results["average"]
    return {f"val/{name}/t{budget}/{metric}": float(values[metric])
            for name, budgets in cells.items() for budget, values in budgets.items() for metric in AVERAGED}


@dataclasses.dataclass(frozen=True)
class Validation:
    """The run's validation, built once: its task and sets; `due(step)` and `__call__`."""

    cfg: TrainConfig
    task: Any  # e1jax.task.Task
    sets: dict[str, list[dict]]

    @classmethod
    def of(cls, cfg: TrainConfig, task: Any) -> "Validation":
        return cls(cfg, validation_task(cfg, task), load_validation_sets(cfg, task))

    def due(self, step: int) -> bool:
        return bool(self.sets) and step % self.cfg.run.validation.every == 0

    def __call__(self, inference: Any, params: Any, step: int) -> dict[str, float]:
        """The metrics of the policy `params` (training layout; `inference` makes the decode copy),
        seeded by (run seed, step) so a resumed run validates identically."""
        from e1jax.eval import EvalSettings, Evaluation

        cfg, v = self.cfg, self.cfg.run.validation
        settings = EvalSettings(think_budgets=v.think_budgets, solution_budget=v.solution_budget, n=v.n,
                                temperature=v.temperature, top_p=v.top_p,
                                seed=step_seed(cfg.run.seed, step, VALIDATION_STREAM),
                                max_prompt_len=cfg.data.max_prompt_len)
        batch_size = v.batch_size or cfg.rollout.chunk_prompts or max(map(len, self.sets.values()))
        evaluation = Evaluation(self.task, self.sets, settings, model_config=inference.config, batch_size=batch_size)
        results = evaluation.run(inference.config, inference(params), mesh=inference.mesh, progress=False)
        return validation_metrics(results)
