"""The miniature Elastic Reasoning experiment behind `python -m e1jax demo`.

Stage 1 (supervised): a tiny Qwen2 learns full thinking traces of the toy task —
the "reasoning model" baseline. Stage 2 (E1): budget-constrained GRPO from that
model with e1jax's trainer, sampler and math reward (configs/toy_e1.yaml).
Stage 3: both models through the elastic evaluation, unconstrained and at four
thinking budgets, on held-out problems; a paper-style table, JSON and a plot.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from e1jax.errors import E1Error

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Half the supervised traces verbose, half concise: the baseline uses both ways of reasoning
# and has learned the concise arithmetic well.
SFT_TASK_VERBOSE_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class DemoSize:
    sft_problems: int
    sft_steps: int
    sft_batch: int
    grpo_problems: int
    grpo_steps: int
    eval_problems: int
    eval_n: int
    think_budgets: tuple[int, ...]
    solution_budget: int
    max_new_tokens: int
    hidden: int
    layers: int


FULL = DemoSize(sft_problems=6000, sft_steps=1500, sft_batch=32, grpo_problems=4000, grpo_steps=60, eval_problems=500, eval_n=4,
                think_budgets=(8, 16, 24, 32), solution_budget=16, max_new_tokens=192, hidden=96, layers=3)
QUICK = DemoSize(sft_problems=1500, sft_steps=150, sft_batch=32, grpo_problems=500, grpo_steps=3, eval_problems=40, eval_n=2,
                 think_budgets=(8, 16, 24, 32), solution_budget=16, max_new_tokens=192, hidden=64, layers=2)


def log(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def model_config(size: DemoSize, vocab_size: int):
    from e1jax.models.config import ModelConfig

    heads = 4
    return ModelConfig("qwen2", vocab_size, size.hidden, 3 * size.hidden, size.layers, heads, 2, size.hidden // heads,
                       max_position_embeddings=512)


def write_jsonl(records: list[dict], path: Path) -> Path:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps({k: r[k] for k in ("id", "data_source", "problem", "ground_truth")}) + "\n")
    return path


def stage_sft(size: DemoSize, out: Path, seed: int, tokenizer, hf_tokenizer) -> Path:
    from e1jax.models.hf import save_hf
    from e1jax.models.params import init_params
    from e1jax.toy.sft import SFTConfig, encode_examples, tokenize_examples, train_sft
    from e1jax.toy.task import ToyTaskConfig, generate_problems

    records = generate_problems(size.sft_problems, seed, ToyTaskConfig(verbose_fraction=SFT_TASK_VERBOSE_FRACTION))
    data = tokenize_examples(encode_examples(records, tokenizer), tokenizer.pad_id)
    config = model_config(size, len(hf_tokenizer))
    params = init_params(config, seed)
    log(f"stage 1: supervised training of a {config.num_params() / 1e6:.2f}M-parameter Qwen2 on {len(records)} traces "
        f"({size.sft_steps} steps)")
    from tqdm import tqdm

    bar = tqdm(total=size.sft_steps, desc="stage 1 sft", file=sys.stderr, leave=False)

    def on_step(step: int, loss: float) -> None:
        bar.n = step + 1
        bar.set_postfix(loss=f"{loss:.3f}")
        bar.refresh()

    params, losses = train_sft(config, params, data, SFTConfig(steps=size.sft_steps, batch_size=size.sft_batch, seed=seed), on_step)
    bar.close()
    baseline = out / "baseline"
    save_hf(params, config, baseline)
    hf_tokenizer.save_pretrained(str(baseline))
    (out / "sft_losses.json").write_text(json.dumps(losses))
    log(f"stage 1 done: final loss {losses[-1]:.3f}; model in {baseline}")
    return baseline


def stage_grpo(size: DemoSize, out: Path, seed: int, baseline: Path, quick: bool) -> Path:
    from e1jax.checkpoints import orbax_to_hf
    from e1jax.rl.config import load_train_config
    from e1jax.rl.trainer import train
    from e1jax.toy.task import generate_problems

    config_path = REPO_CONFIGS / "toy_e1.yaml"
    if not config_path.is_file():
        raise E1Error(f"demo config not found: {config_path} (run the demo from a checkout of e1jax)")
    train_file = write_jsonl(generate_problems(size.grpo_problems, seed + 1), out / "grpo_prompts.jsonl")
    run_dir = out / "e1_run"
    overrides = [
        f"model.path={baseline}",
        f"data.train_files=[{train_file}]",
        f"data.seed={seed}",
        f"run.seed={seed}",
        f"run.steps={size.grpo_steps}",
        f"run.out_dir={run_dir}",
    ]
    cfg = load_train_config(config_path, overrides)
    log(f"stage 2: E1 budget-constrained GRPO ({cfg.run.steps} steps x {cfg.batch.prompts_per_step} prompts x "
        f"{cfg.rollout.n} samples, thinking budget {cfg.rollout.think_budget}, solution budget {cfg.rollout.solution_budget})")
    train(cfg)
    e1_dir, step = orbax_to_hf(cfg.checkpoint_dir, out / "e1", tokenizer_from=str(baseline))
    log(f"stage 2 done: step {step} exported to {e1_dir}")
    return e1_dir


def stage_eval(size: DemoSize, out: Path, seed: int, models: dict[str, Path]) -> list[dict]:
    from e1jax.eval import EvalSettings, Evaluation
    from e1jax.models.hf import load_model
    from e1jax.task import Task
    from e1jax.tokenizer import Tokenizer
    from e1jax.toy.task import generate_problems

    # Held-out problems: a seed the training stages never use.
    heldout = generate_problems(size.eval_problems, seed + 1_000_003)
    results = []
    for name, model_dir in models.items():
        config, params = load_model(model_dir)
        tokenizer = Tokenizer.load(model_dir)
        log(f"stage 3: evaluating {name} on {len(heldout)} held-out problems x {size.eval_n} samples, "
            f"unconstrained and at thinking budgets {list(size.think_budgets)}")
        settings = EvalSettings(mode="both", think_budgets=size.think_budgets, solution_budget=size.solution_budget,
                                max_new_tokens=size.max_new_tokens, n=size.eval_n, temperature=0.6, top_p=0.95,
                                seed=seed)
        evaluation = Evaluation(Task(tokenizer), {"toy": heldout}, settings, model_config=config, batch_size=64,
                                out_dir=out / f"eval_{name}", model_name=name)
        results.append(evaluation.run(config, params))
    return results


def run_demo(out: str | Path, *, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    from e1jax.eval import plot_accuracy_vs_tokens, write_comparison_table
    from e1jax.eval.report import comparison_markdown
    from e1jax.tokenizer import Tokenizer
    from e1jax.toy.tokenizer import build_toy_tokenizer

    size = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    hf_tokenizer = build_toy_tokenizer()
    tokenizer = Tokenizer.from_hf(hf_tokenizer)

    baseline = stage_sft(size, out, seed, tokenizer, hf_tokenizer)
    t1 = time.time()
    e1_dir = stage_grpo(size, out, seed, baseline, quick)
    t2 = time.time()
    results = stage_eval(size, out, seed, {"baseline": baseline, "E1": e1_dir})
    t3 = time.time()

    names = ["baseline (SFT)", "E1 (GRPO, budget-constrained)"]
    write_comparison_table(results, names, out / "results.md")
    plot_accuracy_vs_tokens(results, names, out / "accuracy_vs_tokens.png")
    summary = {
        "seed": seed,
        "quick": quick,
        "size": dataclasses.asdict(size),
        "seconds": {"sft": t1 - start, "grpo": t2 - t1, "eval": t3 - t2, "total": t3 - start},
        "models": {"baseline": str(baseline), "E1": str(e1_dir)},
        "results": {name: r for name, r in zip(["baseline", "E1"], results)},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    print(comparison_markdown(results, names))
    log(f"done in {t3 - start:.0f}s: {out / 'results.md'}, {out / 'results.json'}, {out / 'accuracy_vs_tokens.png'}, "
        f"models in {baseline} and {e1_dir}")
    return summary


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value))
