"""The miniature Elastic Reasoning experiment behind `python -m e1jax demo`.

Stage 1 (supervised): a tiny Qwen2 learns full thinking traces of the toy task —
the "reasoning model" baseline. Stage 2 (E1): budget-constrained GRPO from that
model with e1jax's trainer, sampler and math reward (configs/toy_e1.yaml), twice:
as e1jax runs it and with compat.original_compat=true (the original's quirks), on
the same prompts and seeds. Stage 3: the three models through the elastic
evaluation, unconstrained and at four thinking budgets, on held-out problems; a
paper-style table, JSON and a plot. Several seeds repeat the three stages per seed
and add the mean, spread and a per-seed check of the paper's claim.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Mapping, Sequence
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


FULL = DemoSize(sft_problems=6000, sft_steps=1500, sft_batch=32, grpo_problems=4000, grpo_steps=40, eval_problems=500, eval_n=4,
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


def stage_grpo(size: DemoSize, out: Path, seed: int, baseline: Path, quick: bool, *, name: str = "e1",
               extra_overrides: Sequence[str] = ()) -> Path:
    from e1jax.checkpoints import orbax_to_hf
    from e1jax.rl.config import load_train_config
    from e1jax.rl.trainer import train
    from e1jax.toy.task import generate_problems

    config_path = REPO_CONFIGS / "toy_e1.yaml"
    if not config_path.is_file():
        raise E1Error(f"demo config not found: {config_path} (run the demo from a checkout of e1jax)")
    train_file = write_jsonl(generate_problems(size.grpo_problems, seed + 1), out / "grpo_prompts.jsonl")
    run_dir = out / f"{name}_run"
    overrides = [
        f"model.path={baseline}",
        f"data.train_files=[{train_file}]",
        f"data.seed={seed}",
        f"run.seed={seed}",
        f"run.steps={size.grpo_steps}",
        f"run.out_dir={run_dir}",
        *extra_overrides,
    ]
    cfg = load_train_config(config_path, overrides)
    variant = f"{name}: {' '.join(extra_overrides)}" if extra_overrides else name
    log(f"stage 2 ({variant}): E1 budget-constrained GRPO ({cfg.run.steps} steps x {cfg.batch.prompts_per_step} prompts x "
        f"{cfg.rollout.n} samples, thinking budget {cfg.rollout.think_budget}, solution budget {cfg.rollout.solution_budget})")
    train(cfg)
    e1_dir, step = orbax_to_hf(cfg.checkpoint_dir, out / name, tokenizer_from=str(baseline))
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


# The rows of the demo's table: (results key, label, model folder, stage-2 config overrides).
# Both E1 rows of a seed start from that seed's one stage-1 model, on the same prompts and seeds.
BASELINE = ("baseline", "baseline (SFT)", "baseline", None)
E1_ROWS = (
    ("E1", "E1 (GRPO, budget-constrained)", "e1", ()),
    ("E1_original", "E1, compat.original_compat=true", "e1_original", ("compat.original_compat=true",)),
)
ROWS = (BASELINE, *E1_ROWS)
DATASET = "toy"
# The paper's claim, checked for every seed: E1 more accurate than the baseline at every truncated
# budget and, unconstrained, at least 25% shorter with accuracy at most 2 points lower.
MIN_TOKEN_SAVING = 0.25
MAX_ACCURACY_DROP_POINTS = 2.0


def run_seed(size: DemoSize, out: Path, seed: int, quick: bool, tokenizer, hf_tokenizer) -> dict[str, Any]:
    """Stages 1-3 of one seed in `out`: one stage-1 model, one stage-2 run per E1 row, every row evaluated."""
    from e1jax.eval.report import comparison_markdown, plot_accuracy_vs_tokens, write_comparison_table

    start = time.time()
    baseline = stage_sft(size, out, seed, tokenizer, hf_tokenizer)
    seconds = {"sft": time.time() - start}
    models = {BASELINE[0]: baseline}
    for key, _, folder, overrides in E1_ROWS:
        t = time.time()
        models[key] = stage_grpo(size, out, seed, baseline, quick, name=folder, extra_overrides=overrides)
        seconds[f"grpo_{key}"] = time.time() - t
    t = time.time()
    results = stage_eval(size, out, seed, models)
    seconds["eval"] = time.time() - t
    seconds["total"] = time.time() - start
    by_key = dict(zip(models, results))
    names = [label for _, label, _, _ in ROWS]
    write_comparison_table(results, names, out / "results.md")
    with open(out / "results.md", "a") as f:
        f.write("\n" + "\n".join(checks_markdown({seed: by_key}, size.think_budgets)) + "\n")
    plot_accuracy_vs_tokens(results, names, out / "accuracy_vs_tokens.png")
    losses = json.loads((out / "sft_losses.json").read_text())
    summary = {
        "seed": seed,
        "quick": quick,
        "size": dataclasses.asdict(size),
        "seconds": seconds,
        "sft_final_loss": losses[-1],
        "models": {k: str(v) for k, v in models.items()},
        "checks": {key: check_claims(by_key, key, size.think_budgets) for key, *_ in E1_ROWS},
        "results": by_key,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    return summary


def _cells(results: Mapping) -> Mapping[str, Mapping]:
    return results["datasets"][DATASET]["budgets"]


def check_claims(results: Mapping[str, Mapping], key: str, think_budgets: Sequence[int]) -> dict[str, Any]:
    """Whether row `key` of one seed's `results` ({row key: evaluation results}) beats the baseline as E1 should."""
    base, e1 = _cells(results[BASELINE[0]]), _cells(results[key])
    beats = {str(t): bool(e1[str(t)]["avg_at_n"] > base[str(t)]["avg_at_n"]) for t in think_budgets}
    saving = 1.0 - e1["plain"]["mean_tokens"] / base["plain"]["mean_tokens"]
    drop = 100.0 * (base["plain"]["avg_at_n"] - e1["plain"]["avg_at_n"])
    return {"beats_baseline_at": beats, "token_saving": float(saving), "accuracy_drop_points": float(drop),
            "holds": bool(all(beats.values()) and saving >= MIN_TOKEN_SAVING and drop <= MAX_ACCURACY_DROP_POINTS)}


def aggregate(per_seed: Mapping[Any, Mapping[str, Mapping]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{row key: {budget key: {metric: {mean, std, min, max, values}}}} over seeds, for the metrics
    mean_tokens and avg_at_n; `per_seed` maps a seed to {row key: evaluation results}. std is the
    sample standard deviation (0 for one seed)."""
    if not per_seed:
        raise E1Error("no seeds to aggregate")
    seeds = list(per_seed)
    rows = list(per_seed[seeds[0]])
    out: dict = {}
    for row in rows:
        keys = [k for k in _cells(per_seed[seeds[0]][row]) if all(k in _cells(per_seed[s][row]) for s in seeds)]
        out[row] = {}
        for k in keys:
            out[row][k] = {}
            for metric in ("mean_tokens", "avg_at_n"):
                values = np.asarray([_cells(per_seed[s][row])[k][metric] for s in seeds], np.float64)
                out[row][k][metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                       "min": float(values.min()), "max": float(values.max()), "values": values.tolist()}
    return out


def _column(key: str) -> str:
    return "Unconstrained" if key == "plain" else f"t={key}"


def aggregate_markdown(agg: Mapping, labels: Mapping[str, str], spread: str) -> list[str]:
    """A paper-style table of `agg` (from aggregate): cells 'mean ± std' (spread='std') or 'min–max'."""
    first = next(iter(agg.values()))
    keys = list(first)
    header = ["Model"] + [f"{_column(k)} {part}" for k in keys for part in ("Tokens", "Acc")]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]

    def fmt(stats: Mapping, scale: float, digits: int) -> str:
        if spread == "std":
            return f"{scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f}"
        return f"{scale * stats['min']:.{digits}f}–{scale * stats['max']:.{digits}f}"

    for row, cells in agg.items():
        values = []
        for k in keys:
            values += [fmt(cells[k]["mean_tokens"], 1.0, 1), fmt(cells[k]["avg_at_n"], 100.0, 1)]
        lines.append("| " + " | ".join([labels[row]] + values) + " |")
    return lines


def checks_markdown(per_seed: Mapping[int, Mapping[str, Mapping]], think_budgets: Sequence[int]) -> list[str]:
    """One line per seed and E1 row: does E1 beat the baseline as the paper says?"""
    lines = [f"## Checks: E1 vs. the baseline (more accurate at t={', '.join(map(str, think_budgets))}; unconstrained "
             f">= {MIN_TOKEN_SAVING:.0%} fewer tokens, accuracy within {MAX_ACCURACY_DROP_POINTS:g} points)", "",
             "| Seed | Row | Beats baseline at | Token saving | Accuracy drop (points) | Holds |", "|---|---|---|---:|---:|---|"]
    labels = {key: label for key, label, _, _ in ROWS}
    for seed, results in per_seed.items():
        for key, *_ in E1_ROWS:
            if key not in results:
                continue
            c = check_claims(results, key, think_budgets)
            beats = ", ".join(f"t={t}" for t, ok in c["beats_baseline_at"].items() if ok) or "none"
            lines.append(f"| {seed} | {labels[key]} | {beats} | {100 * c['token_saving']:.1f}% | "
                         f"{c['accuracy_drop_points']:.1f} | {'yes' if c['holds'] else 'no'} |")
    return lines


def multi_seed_markdown(per_seed: Mapping[int, Mapping[str, Mapping]], think_budgets: Sequence[int]) -> str:
    """results.md of a multi-seed demo: mean ± std and min–max tables, the checks, every seed's table."""
    from e1jax.eval.report import comparison_markdown, plot_accuracy_vs_tokens, write_comparison_table

    seeds = list(per_seed)
    agg = aggregate(per_seed)
    labels = {key: label for key, label, _, _ in ROWS}
    first = per_seed[seeds[0]]
    problems = first[BASELINE[0]]["datasets"][DATASET]["num_problems"]
    names = [labels[k] for k in first]
    lines = [f"# Miniature E1 demo over seeds {', '.join(map(str, seeds))}", "",
             "Tokens: mean response length (thinking + `</think>` + solution). Acc: avg@n in %. t: thinking budget. "
             f"Each seed trains its own stage-1 model and its E1 rows from it; {problems} held-out problems a seed.", "",
             f"## Mean ± std over {len(seeds)} seeds", ""]
    lines += aggregate_markdown(agg, labels, "std")
    lines += ["", f"## Min–max over {len(seeds)} seeds", ""]
    lines += aggregate_markdown(agg, labels, "range")
    lines += [""] + checks_markdown(per_seed, think_budgets) + [""]
    for seed in seeds:
        table = comparison_markdown(list(per_seed[seed].values()), names)
        lines += [f"## Seed {seed}", ""]
        lines += ["#" + line if line.startswith("#") else line for line in table.splitlines()[2:]]
        lines.append("")
    return "\n".join(lines)


def _mean_results(cells: Mapping[str, Mapping]) -> dict:
    """An evaluation-results-shaped dict of one row's seed means (`cells`: a row of aggregate), for the plot."""
    return {"datasets": {DATASET: {"budgets": {k: {m: s[m]["mean"] for m in ("mean_tokens", "avg_at_n")}
                                              for k, s in cells.items()}}}}


def run_demo(out: str | Path, *, seed: int | None = None, seeds: Sequence[int] | None = None,
             quick: bool = False) -> dict[str, Any]:
    """The demo for one seed (`seed`, default 0: every file in `out`) or several (`seeds`: each
    seed's files in out/seed_<n>, the tables over seeds in `out`)."""
    from e1jax.eval.report import comparison_markdown, plot_accuracy_vs_tokens
    from e1jax.tokenizer import Tokenizer
    from e1jax.toy.tokenizer import build_toy_tokenizer

    if seed is not None and seeds is not None:
        raise E1Error("give seed or seeds, not both")
    seeds = [0 if seed is None else seed] if seeds is None else list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise E1Error(f"demo seeds must be distinct and at least one, got {seeds}")
    size = QUICK if quick else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    hf_tokenizer = build_toy_tokenizer()
    tokenizer = Tokenizer.from_hf(hf_tokenizer)
    names = [label for _, label, _, _ in ROWS]
    if len(seeds) == 1:
        summary = run_seed(size, out, seeds[0], quick, tokenizer, hf_tokenizer)
        print(comparison_markdown(list(summary["results"].values()), names))
        log(f"done in {time.time() - start:.0f}s: {out / 'results.md'}, {out / 'results.json'}, "
            f"{out / 'accuracy_vs_tokens.png'}, models in {', '.join(summary['models'].values())}")
        return summary

    per_seed = {}
    for s in seeds:
        log(f"seed {s} ({seeds.index(s) + 1} of {len(seeds)})")
        per_seed[s] = run_seed(size, out / f"seed_{s}", s, quick, tokenizer, hf_tokenizer)
    results = {s: r["results"] for s, r in per_seed.items()}
    agg = aggregate(results)
    markdown = multi_seed_markdown(results, size.think_budgets)
    (out / "results.md").write_text(markdown + "\n")
    labels = {key: label for key, label, _, _ in ROWS}
    plot_accuracy_vs_tokens([_mean_results(cells) for cells in agg.values()], [f"{labels[k]}, mean of {len(seeds)} seeds" for k in agg],
                            out / "accuracy_vs_tokens.png")
    summary = {
        "seeds": seeds,
        "quick": quick,
        "size": dataclasses.asdict(size),
        "seconds": {"total": time.time() - start, "per_seed": {str(s): r["seconds"] for s, r in per_seed.items()}},
        "aggregate": agg,
        "checks": {str(s): r["checks"] for s, r in per_seed.items()},
        "holds_for_every_seed": all(c["holds"] for r in per_seed.values() for c in r["checks"].values()),
        "per_seed": {str(s): {k: v for k, v in r.items() if k != "results"} | {"results_json": str(out / f"seed_{s}" / "results.json")}
                     for s, r in per_seed.items()},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    print(markdown)
    log(f"done in {time.time() - start:.0f}s: {out / 'results.md'}, {out / 'results.json'}, {out / 'accuracy_vs_tokens.png'}")
    return summary


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value))
