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
    assert [r["step"] for r in rows] == list(range(0, STEPS + 1))
    # step 0: the initial policy's validation (the original's val_before_train), nothing else
    initial, rows = rows[0], rows[1:]
    assert "val/toy/t2/avg_at_n" in initial and "reward/mean" not in initial
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
    from e1jax.checkpoints import CheckpointStore, abstract_like

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
    assert [r["step"] for r in resumed] == list(range(0, STEPS + 1))
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
    assert eff.grpo.train_forced_tokens and eff.grpo.unclipped_objective and eff.grpo.phantom_eos
    assert eff.rollout.eos_in_thinking == "stop" and eff.grpo.loss_scale == "verl"
    row = train(cfg, generate_fn=reference_generate).last_metrics
    assert "actor/kl" not in row  # no reference log-probs were computed
    # validated by e1jax eval with its math grader (and its EOS rule, not the compat one):
    # the random model never writes a boxed answer
    assert row["val/toy/t2/avg_at_n"] == row["val/toy/t6/pass_at_n"] == 0.0
    assert 0 < row["val/toy/t6/mean_tokens"] <= 6 + 1 + 3


def test_clip_fractions_of_a_known_off_policy_batch(tiny):
    """A step's clip metrics, hand-computed: old log-probs shifted by 0.5 on a known set of
    tokens put exactly those outside the clip range (ratio e^0.5 > 1 + clip_high where the
    advantage is positive, e^-0.5 < 1 - clip_low where it is negative), through the trainer's
    own step (placement, 2 mini-batches of 2 strided micro-batches, metric reduction); the
    learning rate is 0, so the second mini-batch sees the same policy as the first."""
    import jax
    import numpy as np

    from e1jax.models.hf import load_config, load_params
    from e1jax.rl.batch import TrainBatch
    from e1jax.rl.programs import step_programs
    from e1jax.rl.update import init_train_state, step_batch, step_update
    from e1jax.sharding import make_mesh

    _, model, _ = tiny
    cfg = _config(tiny, "clip", **{"batch.prompts_per_step": 8, "batch.mini_batch": 4, "batch.micro_batch": 8,
                                   "optim.learning_rate": 0.0, "grpo.clip_high": 0.28}).effective()
    config = load_config(model, param_dtype="float32", dtype="float32", remat="none")
    programs = step_programs(cfg, config, make_mesh(cfg.mesh))
    assert (programs.update_rows, programs.micro_batch) == (16, 8)
    params = load_params(model, config, programs.mesh)
    rng = np.random.default_rng(0)
    rows, p_width, width = 32, 16, 8
    lengths = rng.integers(1, width + 1, rows)
    loss_mask = np.arange(width)[None, :] < lengths[:, None]
    host = TrainBatch(tokens=rng.integers(3, config.vocab_size, (rows, p_width + width)).astype(np.int32),
                      attention_mask=np.concatenate([np.ones((rows, p_width), bool), loss_mask], axis=1),
                      loss_mask=loss_mask, advantages=np.tile(np.float32([1, -1, 0, -1, 1, 1, -1, 0]), rows // 8),
                      sampler_logp=np.zeros((rows, width), np.float32))
    batch = step_batch(programs, host, params, params)
    sign = np.sign(host.advantages)[:, None]
    shifted = rng.random((rows, width)) < 0.5
    old = np.asarray(batch.old_logp) - 0.5 * sign * shifted  # ratio exp(logp - old) = e^(0.5 sign) there
    batch = batch.replace(old_logp=jax.device_put(old.astype(np.float32), batch.old_logp.sharding))
    _, m = step_update(programs, init_train_state(params, programs.optimizer), batch)

    high = shifted & (sign > 0) & loss_mask
    low = shifted & (sign < 0) & loss_mask
    minis = [slice(start, start + 16) for start in (0, 16)]
    expected_high = np.mean([high[r].sum() / loss_mask[r].sum() for r in minis])
    expected_low = np.mean([low[r].sum() / loss_mask[r].sum() for r in minis])
    assert expected_high > 0.1 and expected_low > 0.1  # both kinds of clipping happen
    assert m["clip_frac_high"] == pytest.approx(expected_high, abs=1e-6)
    assert m["clip_frac_low"] == pytest.approx(expected_low, abs=1e-6)
    assert m["clip_frac"] == pytest.approx(expected_high + expected_low, abs=1e-6)
    assert m["ratio_max"] == pytest.approx(np.exp(0.5), rel=1e-5)
    assert m["ratio_min"] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert m["num_tokens"] == np.mean([loss_mask[r].sum() for r in minis])
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the policy


def test_effective_config_derives_temperature_and_schedule_length():
    cfg = load_train_config(None, ["model.path=m", "data.train_files=[d]", "rollout.temperature=0.9",
                                   "run.steps=10"])
    eff = cfg.effective()
    assert eff.grpo.temperature == 0.9
    assert eff.optim.total_steps == 10 * 2  # 128 prompts / mini-batch 64 = 2 updates per step
    assert not eff.grpo.train_forced_tokens and eff.rollout.eos_in_thinking == "stop"


def test_validation_rows_are_the_shared_evaluation(tiny, straight_run):
    """Step 4's val/ metrics are exactly an e1jax.eval Evaluation of the step-4 params (restored
    from the checkpoint) with the step's validation seed, the run's grader and its sampling settings."""
    from e1jax.eval import EvalSettings, Evaluation
    from e1jax.eval.metrics import AVERAGED
    from e1jax.models.hf import load_config, load_params
    from e1jax.checkpoints import CheckpointStore, abstract_like
    from e1jax.rl.rollout import step_seed
    from e1jax.rl.trainer import make_task
    from e1jax.rl.validation import VALIDATION_STREAM, load_validation_sets, validation_metrics, validation_task
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
    task = make_task(cfg, tok)
    sets = load_validation_sets(cfg, task)
    assert list(sets) == ["toy"] and len(sets["toy"]) == v.max_problems
    settings = EvalSettings(think_budgets=v.think_budgets, solution_budget=v.solution_budget, n=v.n,
                            temperature=v.temperature, top_p=v.top_p,
                            seed=step_seed(cfg.run.seed, STEPS, VALIDATION_STREAM), max_prompt_len=cfg.data.max_prompt_len)
    results = Evaluation(validation_task(cfg, task), sets, settings, model_config=config,
                         batch_size=len(sets["toy"])).run(config, params, mesh=mesh, progress=False, keep_samples=True)
    row = read_metrics(result.out_dir)[STEPS]  # rows 0 (the initial validation) to STEPS
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
    # validation as the original: AIME before training and every 10 steps, n 8, temperature 0.6, top-p 0.95
    v = cfg.run.validation
    assert (v.datasets, v.every, v.before_train, v.n, v.temperature, v.top_p) == (("aime",), 10, True, 8, 0.6, 0.95)


def test_code_recipe_matches_the_paper():
    cfg = load_train_config(CONFIGS / "e1_code_14b.yaml")
    assert cfg.model.path == "agentica-org/DeepCoder-14B-Preview"
    assert (cfg.grpo.kl_coef, cfg.grpo.entropy_coef, cfg.grpo.clip_low, cfg.grpo.clip_high) == (0.0, 0.0, 0.2, 0.28)
    assert cfg.run.steps == 300 and cfg.data.max_prompt_len == 2048 and cfg.reward.kind == "code"
    v = cfg.run.validation
    assert (v.datasets, v.every, v.before_train, v.top_p) == (("livecodebench",), 10, True, 0.95)
    assert not any(f.endswith(":lcbv5/test") or f.endswith(":codeforces/test") for f in cfg.data.train_files)
