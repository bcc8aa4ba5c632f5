"""`python -m e1jax train`: bad configurations refused up front (exit 1, one line naming the
key), and a real end-to-end run (real sampler) killed during an asynchronous checkpoint
save, then resumed by the CLI, matching an uninterrupted CLI run row for row."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_trainer_support import TESTS_DIR, make_model_dir, tiny_overrides, write_toy_records

from e1jax.__main__ import main
from e1jax.config import merge
from e1jax.rl.metrics import deterministic_view, read_metrics

REPO = TESTS_DIR.parent
STEPS = 5


def _refused(capsys, argv):
    rc = main(["train", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1, err
    return err


def _write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize("values, key", [
    ({"rollout": {"n": 8, "think_budgt": 10}}, "rollout.think_budgt"),
    ({"batchsize": 3}, "batchsize"),
    ({"grpo": {"kl_coef": "high"}}, "grpo.kl_coef"),
    ({"run": {"validation": {"every": [1]}}}, "run.validation.every"),
    ({"checkpoint": {"async_save": "maybe"}}, "checkpoint.async_save"),
    ({"rollout": "n=8"}, "rollout"),
])
def test_bad_yaml_is_refused_naming_the_key(tmp_path, capsys, values, key):
    out = tmp_path / "run"
    base = {"model": {"path": str(tmp_path)}, "data": {"train_files": ["x.json"]}, "run": {"out_dir": str(out)}}
    values = merge(base, values)
    err = _refused(capsys, ["--config", str(_write_yaml(tmp_path / "bad.yaml", values))])
    assert f"'{key}'" in err
    assert not out.exists()  # refused before anything started


@pytest.mark.parametrize("override, key", [
    ("rollout.nn=3", "rollout.nn"),
    ("rollout.n=eight", "rollout.n"),
    ("model.remat=sometimes", "model.remat"),
    ("optim.learning_rate=[1]", "optim.learning_rate"),
])
def test_bad_overrides_are_refused_naming_the_key(tmp_path, capsys, override, key):
    err = _refused(capsys, [f"model.path={tmp_path}", "data.train_files=[x.json]", override])
    assert f"'{key}'" in err


def test_inconsistent_values_are_refused(tmp_path, capsys):
    err = _refused(capsys, [f"model.path={tmp_path}", "data.train_files=[x.json]", "batch.mini_batch=48"])
    assert "batch.mini_batch" in err
    err = _refused(capsys, ["data.train_files=[x.json]"])
    assert "model.path" in err
    err = _refused(capsys, ["--config", str(tmp_path / "missing.yaml")])
    assert "not found" in err


def test_print_config_shows_the_effective_config(capsys):
    assert main(["train", "--config", str(REPO / "configs" / "e1_math_1.5b_1k_1k.yaml"),
                 "compat.original_compat=true", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["grpo"]["unclipped_objective"] is True and printed["grpo"]["train_forced_tokens"] is True
    assert printed["rollout"]["eos_in_thinking"] == "stop" and printed["grpo"]["loss_scale"] == "verl"
    assert printed["grpo"]["phantom_eos"] is True and printed["reward"]["grader"] == "original"
    assert printed["optim"]["total_steps"] == 400


def test_print_config_imports_no_jax():
    """Loading and checking a recipe is jax-free: `python -m e1jax train --print-config`, run as
    `-m` runs it, leaves no jax (nor flax, optax) module imported."""
    code = ("import runpy, sys\n"
            "sys.argv = ['e1jax', 'train', '--config', sys.argv[1], '--print-config']\n"
            "try:\n"
            "    runpy.run_module('e1jax', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as exit:\n"
            "    assert not exit.code, exit.code\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax'))\n"
            "print('loaded:', loaded, file=sys.stderr)\n"
            "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "configs" / "e1_math_1.5b_1k_1k.yaml")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded: []" in result.stderr
    assert yaml.safe_load(result.stdout)["optim"]["total_steps"] == 400


def _env(cache_dir: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")])
    # The three runs compile the same programs: share them through JAX's persistent cache.
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return env


def test_cli_run_killed_during_async_save_resumes_exactly(tmp_path):
    pytest.importorskip("e1jax.sampling")
    model = make_model_dir(tmp_path / "model")
    data = write_toy_records(tmp_path / "toy.jsonl", n=24)
    env = _env(tmp_path / "jax_cache")
    extra = {"run.steps": STEPS, "checkpoint.every": 2, "checkpoint.keep": 2, "checkpoint.async_save": True}
    config = _write_yaml(tmp_path / "tiny.yaml", {"run": {"log_every": 1}})

    def cli(out_dir: Path) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "e1jax", "train", "--config", str(config),
                *tiny_overrides(model, data, out_dir, **extra)]
        return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    straight = cli(tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "trained steps 1..5" in straight.stderr

    killed_dir = tmp_path / "killed"
    driver = ("import sys, test_trainer_support as s; "
              "s.run_and_kill(sys.argv[1], sys.argv[2:-1], int(sys.argv[-1]))")
    killed = subprocess.run(
        [sys.executable, "-c", driver, str(config), *tiny_overrides(model, data, killed_dir, **extra), "4"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    rows = read_metrics(killed_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    complete = sorted(int(p.name) for p in (killed_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert complete in ([2], [2, 4])  # step 4's save was in flight: complete or not, never partial

    resumed = cli(killed_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    start = complete[-1]
    assert f"trained steps {start + 1}..5" in resumed.stderr
    expected = [deterministic_view(r) for r in read_metrics(tmp_path / "straight")]
    got = [deterministic_view(r) for r in read_metrics(killed_dir)]
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert got == expected
    for out in (tmp_path / "straight", killed_dir):
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
        assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [4, 5]
