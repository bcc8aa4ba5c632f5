"""The GRPO trainer in process, with the reference sampler of test_trainer_support injected:
end-to-end outputs, resume after a simulated kill during a save, validation, recipes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_trainer_support import make_model_dir, reference_generate, reward_fn, tiny_overrides, write_toy_records

from e1jax.errors import E1Error
from e1jax.rl.config import load_train_config
from e1jax.rl.metrics import deterministic_view, read_metrics

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STEPS = 4


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("trainer")
    model = make_model_dir(base / "model")
    data = write_toy_records(base / "toy.jsonl", n=24)
    return base, model, data


def _config(tiny, name, **extra):
    base, model, data = tiny
    values = {"run.steps": STEPS, "checkpoint.every": 1, "checkpoint.keep": 3,
              "run.validation.datasets": f"[{data}]", "run.validation.every": 2,
              "run.validation.think_budgets": "[2,6]", "run.validation.solution_budget": 3,
              "run.validation.max_problems": 4, "run.validation.n": 2, "run.validation.grader": "reward"}
    values.update(extra)
    return load_train_config(None, tiny_overrides(model, data, base / name, **values))


@pytest.fixture(scope="module")
def straight_run(tiny):
    """An uninterrupted run of STEPS steps."""
    from e1jax.rl.trainer import train

    cfg = _config(tiny, "straight")
    result = train(cfg, generate_fn=reference_generate)
    return cfg, result


def test_run_writes_metrics_tensorboard_and_checkpoints(straight_run):
    cfg, result = straight_run
    out = Path(cfg.run.out_dir)
    assert result.start_step == 0 and result.final_step == STEPS
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("reward/mean", "reward/accuracy", "groups/solved_all", "groups/solved_none",
                "response/thinking_mean", "response/solution_mean", "response/truncation_rate",
                "actor/kl", "actor/entropy", "actor/clip_frac", "actor/grad_norm", "actor/learning_rate",
                "perf/rollout_tokens_per_s", "perf/update_tokens_per_s",
                "time/rollout_s", "time/grading_s", "time/update_s"):
        assert key in rows[-1], key
    assert rows[0]["actor/learning_rate"] == pytest.approx(1e-2)
    assert rows[0]["actor/grad_norm"] > 0 and rows[0]["actor/entropy"] > 0
    # the trainer recomputes exactly what the sampler sampled with (same fp32 model)
    assert all(r["rollout/logp_diff"] < 1e-4 for r in rows)
    # the policy moves: the KL to the frozen reference is 0 at step 1's first update, then grows
    assert rows[-1]["actor/kl"] > 0
    # validation (e1jax eval's metrics) at steps 2 and 4, per thinking budget
    for r in rows:
        assert ("val/toy/t2/avg_at_n" in r) == (r["step"] % 2 == 0)
    val = rows[1]
    for budget in (2, 6):
        assert 0 <= val[f"val/toy/t{budget}/avg_at_n"] <= val[f"val/toy/t{budget}/pass_at_n"] <= 1
        assert 0 < val[f"val/toy/t{budget}/mean_tokens"] <= budget + 1 + 3
        assert val[f"val/toy/t{budget}/mean_thinking_tokens"] <= budget
    # the same thinking cut later is never more often truncated
    assert val["val/toy/t6/truncation_rate"] <= val["val/toy/t2/truncation_rate"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [STEPS - 2, STEPS - 1, STEPS]  # keep=3
    assert json.loads((out / "config.json").read_text())["rollout"]["n"] == 4


def test_trained_checkpoint_exports_to_hf(tiny, straight_run, tmp_path):
    import jax
    import numpy as np

    from e1jax.__main__ import main
    from e1jax.models.hf import load_model
    from e1jax.rl.checkpoint import CheckpointStore, abstract_like

    cfg, _ = straight_run
    assert main(["convert", "--from-orbax", str(cfg.checkpoint_dir), "--to-hf", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    _, exported = load_model(tmp_path / "hf")
    _, initial = load_model(tiny[1])
    with CheckpointStore(cfg.checkpoint_dir, read_only=True) as store:
        assert store.latest_step() == STEPS
        saved = store.restore(None, params=abstract_like(exported))["params"]
    jax.tree.map(np.testing.assert_array_equal, exported, saved)
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), exported, initial)
    assert all(jax.tree.leaves(changed))  # training moved every tensor


def test_resume_after_kill_during_save_reproduces_the_metrics(tiny, straight_run):
    """Kill at step 3 just after its checkpoint save started, with that save left incomplete
    (and a metrics line cut short): the resumed run restarts from checkpoint 2 and its rows
    equal the uninterrupted run's, timings aside."""
    from e1jax.rl.trainer import train

    _, straight = straight_run
    cfg = _config(tiny, "killed")
    out = Path(cfg.run.out_dir)

    def kill_at_save_of_3(event, step):
        if event == "save_started" and step == 3:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, generate_fn=reference_generate, callback=kill_at_save_of_3)
    ckpt = out / "checkpoints"
    # What a kill during the asynchronous save leaves: step 3 never renamed into place.
    shutil.move(ckpt / "3", ckpt / "3.orbax-checkpoint-tmp")
    shutil.rmtree(ckpt / "3.orbax-checkpoint-tmp" / "params")
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "reward/me')

    result = train(cfg, generate_fn=reference_generate)
    assert result.start_step == 2 and result.final_step == STEPS
    resumed = [deterministic_view(r) for r in read_metrics(out)]
    expected = [deterministic_view(r) for r in read_metrics(straight.out_dir)]
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    assert resumed == expected
    assert sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) == [2, 3, 4]

    # A finished run has nothing left to do; starting over in the same checkpoint directory
    # or resuming with another run seed is refused.
    again = train(cfg, generate_fn=reference_generate)
    assert again.start_step == STEPS and again.final_step == STEPS
    with pytest.raises(E1Error, match="already holds checkpoints"):
        train(_config(tiny, "killed", **{"checkpoint.resume": False}), generate_fn=reference_generate)
    with pytest.raises(E1Error, match="run.seed"):
        train(_config(tiny, "killed", **{"run.seed": 1, "run.steps": STEPS + 1}), generate_fn=reference_generate)


def test_no_kl_keeps_no_reference_and_compat_trains_the_forced_close(tiny):
    from e1jax.rl.trainer import train

    cfg = _config(tiny, "nokl", **{"grpo.kl_coef": 0.0, "run.steps": 1, "compat.original_compat": True,
                                   "run.validation.every": 1, "run.validation.grader": "eval",
                                   "run.validation.batch_size": 3, "checkpoint.async_save": False})
    eff = cfg.effective()
    assert eff.grpo.train_forced_tokens and eff.grpo.unclipped_objective
    assert eff.rollout.eos_in_thinking == "append_close"
    row = train(cfg, generate_fn=reference_generate).last_metrics
    assert "actor/kl" not in row  # no reference log-probs were computed
    assert row["actor/clip_frac"] >= 0
    # validated by e1jax eval with its math grader (and its EOS rule, not the compat one):
    # the random model never writes a boxed answer
    assert row["val/toy/t2/avg_at_n"] == row["val/toy/t6/pass_at_n"] == 0.0
    assert 0 < row["val/toy/t6/mean_tokens"] <= 6 + 1 + 3


def test_effective_config_derives_temperature_and_schedule_length():
    cfg = load_train_config(None, ["model.path=m", "data.train_files=[d]", "rollout.temperature=0.9",
                                   "run.steps=10"])
    eff = cfg.effective()
    assert eff.grpo.temperature == 0.9
    assert eff.optim.total_steps == 10 * 2  # 128 prompts / mini-batch 64 = 2 updates per step
    assert not eff.grpo.train_forced_tokens and eff.rollout.eos_in_thinking == "stop"


def test_validation_rows_are_the_shared_evaluation(tiny, straight_run):
    """Step 4's val/ metrics are exactly e1jax.eval.evaluate of the step-4 params (restored from
    the checkpoint) with the step's validation seed, the run's grader and its sampling settings."""
    from e1jax.eval import evaluate
    from e1jax.eval.metrics import AVERAGED
    from e1jax.models.hf import load_config, load_params
    from e1jax.rl.checkpoint import CheckpointStore, abstract_like
    from e1jax.rl.rollout import make_reward_fn, step_seed
    from e1jax.rl.trainer import VALIDATION_STREAM, load_validation_sets, validation_metrics
    from e1jax.sampling import SamplingParams
    from e1jax.sharding import make_mesh
    from e1jax.tokenizer import Tokenizer

    cfg, result = straight_run
    _, model_dir, _ = tiny
    v = cfg.run.validation
    mesh = make_mesh(cfg.mesh)
    config = load_config(model_dir, param_dtype="float32", dtype="float32", remat="none")
    with CheckpointStore(cfg.checkpoint_dir, read_only=True) as store:
        params = store.restore(STEPS, params=abstract_like(load_params(model_dir, config, mesh)))["params"]
    tok = Tokenizer.load(model_dir)
    sets = load_validation_sets(cfg, tok)
    assert list(sets) == ["toy"] and len(sets["toy"]) == v.max_problems
    results = evaluate(config, params, tok, sets, think_budgets=v.think_budgets, solution_budget=v.solution_budget,
                       n=v.n, sampling=SamplingParams(v.temperature, v.top_p),
                       seed=step_seed(cfg.run.seed, STEPS, VALIDATION_STREAM), batch_size=len(sets["toy"]),
                       mesh=mesh, max_prompt_len=cfg.data.max_prompt_len, progress=False,
                       reward_fn=make_reward_fn(cfg.reward.kind), keep_samples=True)
    row = read_metrics(result.out_dir)[STEPS - 1]
    val = {k: v for k, v in row.items() if k.startswith("val/")}
    assert val == validation_metrics(results)
    assert set(val) == {f"val/toy/t{b}/{m}" for b in (2, 6) for m in AVERAGED}
    # graded by the run's (custom) reward: the share of digits, correct only when all digits
    for s in results["samples"]:
        assert s["reward"] == pytest.approx(reward_fn([s["response"]], [{}])[0]) and s["reason"] == "custom"


def test_validation_settings_are_checked(tiny):
    with pytest.raises(E1Error, match="run.validation.batch_size"):
        _config(tiny, "bad", **{"run.validation.batch_size": -1})
    with pytest.raises(E1Error, match="run.validation.grader"):
        _config(tiny, "bad", **{"run.validation.grader": "exact"})
    with pytest.raises(E1Error, match="top_p"):
        _config(tiny, "bad", **{"run.validation.top_p": 0})


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml") if "toy" not in p.name),
                         ids=lambda p: p.name)
def test_recipes_load(path):
    cfg = load_train_config(path)
    assert cfg.model.path and cfg.data.train_files
    assert cfg.rollout.n == 8 and cfg.batch.prompts_per_step == 128 and cfg.batch.mini_batch == 64


def test_math_recipe_matches_the_paper():
    cfg = load_train_config(CONFIGS / "e1_math_1.5b_1k_1k.yaml")
    assert cfg.model.path == "agentica-org/DeepScaleR-1.5B-Preview"
    assert (cfg.rollout.think_budget, cfg.rollout.solution_budget, cfg.rollout.temperature, cfg.rollout.top_p) == \
        (1024, 1024, 0.6, 1.0)
    assert (cfg.grpo.kl_coef, cfg.grpo.entropy_coef, cfg.grpo.clip_low, cfg.grpo.clip_high) == (0.001, 0.001, 0.2, 0.2)
    assert (cfg.optim.learning_rate, cfg.optim.weight_decay, cfg.optim.grad_clip) == (1e-6, 0.01, 1.0)
    assert cfg.run.steps == 200 and cfg.data.max_prompt_len == 1024 and cfg.reward.kind == "math"


def test_code_recipe_matches_the_paper():
    cfg = load_train_config(CONFIGS / "e1_code_14b.yaml")
    assert cfg.model.path == "agentica-org/DeepCoder-14B-Preview"
    assert (cfg.grpo.kl_coef, cfg.grpo.entropy_coef, cfg.grpo.clip_low, cfg.grpo.clip_high) == (0.0, 0.0, 0.2, 0.28)
    assert cfg.run.steps == 300 and cfg.data.max_prompt_len == 2048 and cfg.reward.kind == "code"
