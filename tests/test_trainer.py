"""The GRPO trainer in process, with the reference sampler of test_trainer_support injected:
end-to-end outputs, resume after a simulated kill during a save, validation, recipes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_trainer_support import make_model_dir, reference_generate, tiny_overrides, write_toy_records

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
              "run.validation.max_problems": 4, "run.validation.n": 2}
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
    # validation at steps 2 and 4, per budget; a larger thinking budget is never shorter on average
    for r in rows:
        assert ("val/toy/t2/accuracy" in r) == (r["step"] % 2 == 0)
    assert rows[1]["val/toy/t2/tokens"] <= 2 + 1 + 3 and rows[1]["val/toy/t6/tokens"] <= 6 + 1 + 3
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
                                   "run.validation.every": 0, "checkpoint.async_save": False})
    eff = cfg.effective()
    assert eff.grpo.train_forced_tokens and eff.grpo.unclipped_objective
    assert eff.rollout.eos_in_thinking == "append_close"
    row = train(cfg, generate_fn=reference_generate).last_metrics
    assert "actor/kl" not in row  # no reference log-probs were computed
    assert row["actor/clip_frac"] >= 0


def test_effective_config_derives_temperature_and_schedule_length():
    cfg = load_train_config(None, ["model.path=m", "data.train_files=[d]", "rollout.temperature=0.9",
                                   "run.steps=10"])
    eff = cfg.effective()
    assert eff.grpo.temperature == 0.9
    assert eff.optim.total_steps == 10 * 2  # 128 prompts / mini-batch 64 = 2 updates per step
    assert not eff.grpo.train_forced_tokens and eff.rollout.eos_in_thinking == "stop"


def test_evaluate_budgets_accuracy_and_lengths(tiny):
    from test_trainer_support import binary_reward_fn

    from e1jax.models.hf import load_model
    from e1jax.rl.rollout import make_reward_fn
    from e1jax.rl.trainer import decoder, evaluate_budgets, special_ids
    from e1jax.tokenizer import Tokenizer

    _, model_dir, _ = tiny
    config, params = load_model(model_dir)
    tok = Tokenizer.load(model_dir)
    records = [{"prompt_ids": tok.encode_prompt(p), "problem": p} for p in ("Sum mod 10: a1 b2", "Sum mod 10: a3")]
    calls = []

    def counting_generate(*args, **kwargs):
        calls.append(kwargs["think_budget"])
        return reference_generate(*args, **kwargs)

    fn = make_reward_fn("test_trainer_support:binary_reward_fn")
    results = evaluate_budgets(config, params, records, think_budgets=[1, 5], solution_budget=2,
                               ids=special_ids(tok), decode=decoder(tok), reward_fn=fn, n=3, seed=0,
                               chunk_prompts=1, generate_fn=counting_generate)
    assert calls == [1, 1, 5, 5]  # one call per budget and prompt chunk
    assert set(results) == {1, 5}
    for budget, values in results.items():
        assert 0 <= values["accuracy"] <= 1
        assert values["tokens"] <= budget + 1 + 2
    # chunks carry the global sample ids, so chunking does not change the samples; accuracy is
    # the mean of the grader's verdicts over problems x samples
    gen = reference_generate(config, params, [r["prompt_ids"] for r in records], ids=special_ids(tok),
                             think_budget=5, solution_budget=2, n=3, seed=0)
    texts = [tok.decode(gen.tokens[i, :gen.lengths[i]].tolist()) for i in range(6)]
    assert results[5]["tokens"] == pytest.approx(gen.lengths.mean())
    assert results[5]["accuracy"] == pytest.approx(sum(binary_reward_fn(texts, [{}] * 6)) / 6)


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
