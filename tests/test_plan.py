"""`e1jax plan`: accelerator types, the trainer's own programs with the trainer's own inputs, and
ahead-of-time compiles for a TPU slice (when libtpu is installed)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from test_trainer_support import make_model_dir, tiny_overrides, write_toy_records

from e1jax.errors import E1Error
from e1jax.plan.tpu import parse_accelerator_type, topology_devices

ROOT = Path(__file__).resolve().parents[1]
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason='libtpu is not installed (pip install -e ".[tpu]")')


def test_accelerator_types():
    cases = {"v4-8": ("v4:2x2x1", 4), "v4-32": ("v4:2x2x4", 16), "v5litepod-1": ("v5e:1x1", 1),
             "v5litepod-32": ("v5e:4x8", 32), "v5e-8": ("v5e:2x4", 8), "v5p-8": ("v5p:2x2x1", 4),
             "v5p-128": ("v5p:4x4x4", 64), "v6e-1": ("v6e:1x1", 1), "v6e-256": ("v6e:16x16", 256)}
    for name, (topology, chips) in cases.items():
        tpu = parse_accelerator_type(name)
        assert (tpu.topology_name, tpu.chips) == (topology, chips), name
    assert parse_accelerator_type("v4-8").topology_kwargs() == {"chip_config_name": "megacore"}
    assert parse_accelerator_type("v6e-1").topology_kwargs() == {"chips_per_host_bounds": (1, 1, 1)}
    assert parse_accelerator_type("v5p-8").chip.hbm_bytes == 95 * 10**9
    for bad in ("v4-6", "v3-8", "tpu-32", "v5litepod-3"):
        with pytest.raises(E1Error):
            parse_accelerator_type(bad)


def test_without_libtpu_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "libtpu", None)  # import libtpu -> ImportError
    with pytest.raises(E1Error, match=r'pip install -e "\.\[tpu\]"'):
        topology_devices(parse_accelerator_type("v4-8"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("plan")
    model = make_model_dir(base / "model")
    data = write_toy_records(base / "toy.jsonl", n=16)
    return base, model, data


def _recipe(tiny, name: str, **extra) -> Path:
    base, model, data = tiny
    values = dict(item.split("=", 1) for item in tiny_overrides(model, data, base / name, **extra))
    tree: dict = {}
    for key, value in values.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_plan_compiles_the_programs_train_runs_with_the_inputs_train_gives_them(tiny, monkeypatch):
    """One real training step on CPU, recording what the trainer calls: the same three jitted
    functions plan lowers, with arguments of the shapes, dtypes and placements plan gives them."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    import importlib

    import e1jax.rl.programs as programs_module
    import e1jax.rl.update as update_module

    generate_module = importlib.import_module("e1jax.sampling.generate")  # the package re-exports generate()
    from e1jax.models.hf import load_config
    from e1jax.plan.plan import step_inputs
    from e1jax.rl.config import load_train_config
    from e1jax.rl.programs import StepShapes, placeholder_ids
    from e1jax.rl.trainer import train
    from e1jax.sharding import make_mesh
    from e1jax.tokenizer import Tokenizer

    base, model, data = tiny
    tokenizer = Tokenizer.load(model)
    longest = max(len(tokenizer.encode_prompt(json.loads(line)["problem"])) for line in data.read_text().splitlines())
    # prompts at the recipe's limit, so the trainer's prompt bucket is the one plan compiles
    cfg = load_train_config(None, tiny_overrides(model, data, base / "spy", **{
        "data.max_prompt_len": longest, "run.steps": 1, "checkpoint.every": 0, "batch.prompts_per_step": 16,
        "batch.mini_batch": 8, "rollout.n": 2, "rollout.chunk_prompts": 8})).effective()
    calls: dict[str, list] = {"rollout": [], "logprobs": [], "update": []}

    def recording(name, fn):
        def call(*args, **kwargs):
            calls[name].append((fn, args, kwargs))
            return fn(*args, **kwargs)
        return call

    original_generate = generate_module._generate_jit
    monkeypatch.setattr(generate_module, "_generate_jit", recording("rollout", original_generate))
    original_program = update_module.logprobs_program

    def logprobs_program(*args, **kwargs):
        fn, rows = original_program(*args, **kwargs)
        return recording("logprobs", fn), rows

    monkeypatch.setattr(update_module, "logprobs_program", logprobs_program)
    original_programs = programs_module.step_programs
    built = []

    def step_programs(*args, **kwargs):
        programs = original_programs(*args, **kwargs)
        # the accelerator layout (layers split by the reshard program), runnable on CPU too
        programs = dataclasses.replace(programs, inference=dataclasses.replace(programs.inference, platform="tpu"))
        built.append(programs)
        return dataclasses.replace(programs, update=recording("update", programs.update))

    monkeypatch.setattr(programs_module, "step_programs", step_programs)
    train(cfg, generate_fn=None)

    programs = built[0]
    model_config = load_config(model, param_dtype="float32", dtype="float32", remat="none")
    assert programs.model_config == model_config and programs.mesh == make_mesh(cfg.mesh)
    shapes = StepShapes.of(cfg, placeholder_ids(), programs.inference.mesh)
    planned = step_inputs(cfg, programs, shapes, placeholder_ids())

    def described(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return [(jax.tree_util.keystr(path), tuple(x.shape), np.dtype(x.dtype).name, _spec(x)) for path, x in leaves]

    assert len(calls["rollout"]) == 2 and len(calls["update"]) == cfg.updates_per_step
    assert len(calls["logprobs"]) == (2 if cfg.grpo.use_kl else 1)  # behaviour (and reference) log-probs
    for name, recorded in calls.items():
        fn, args, kwargs = recorded[0]
        want = planned[name]
        assert fn is want.fn, name
        assert kwargs == want.kwargs, name
        got, expected = described(args), described(want.args)
        assert [g[:3] for g in got] == [w[:3] for w in expected], name  # paths, shapes, dtypes
        for g, w in zip(got, expected):  # placements, where the trainer's argument has one on the mesh
            assert g[3] is None or g[3] == w[3], (name, g, w)


def _spec(x):
    sharding = getattr(x, "sharding", None)
    if sharding is None or not hasattr(sharding, "spec"):
        return None
    spec = tuple(sharding.spec) + (None,) * (len(x.shape) - len(sharding.spec))
    return spec


def _plan(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALLOW_MULTIPLE_LIBTPU_LOAD": "1", "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "e1jax", "plan", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)


@needs_libtpu
def test_plan_on_a_v4_8_reports_every_program(tiny):
    recipe = _recipe(tiny, "v4", **{"batch.micro_batch": 8})
    result = _plan(["--config", str(recipe), "--topology", "v4-8", "--json"])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["topology"] == "v4-8" and report["devices"] == 4 and report["chip"]["name"] == "TPU v4"
    assert set(report["chip"]) == {"name", "hbm_bytes", "peak_flops", "hbm_bytes_per_s"}
    assert report["mesh"] == "data=1,fsdp=4,tensor=1" and report["decode_mesh"] == "data=4,fsdp=1,tensor=1"
    assert report["model"]["attention"] == "SplashAttention" and report["fits"]
    for name in ("rollout", "logprobs", "update"):
        p = report["programs"][name]
        for key in ("argument_bytes", "temp_bytes", "output_bytes", "peak_bytes", "flops", "bytes_accessed",
                    "estimated_s", "fits"):
            assert key in p, (name, key)
        assert p["peak_bytes"] == (p["argument_bytes"] + p["temp_bytes"] + p["output_bytes"] - p["alias_bytes"]
                                   + p["resident_bytes"])
        assert p["fits"] and p["flops"] > 0 and p["bytes_accessed"] >= p["hbm_bytes"] > 0
        assert p["estimated_s"] == pytest.approx(max(p["flops"] / report["chip"]["peak_flops"],
                                                     p["hbm_bytes"] / report["chip"]["hbm_bytes_per_s"]))
    rollout = report["programs"]["rollout"]
    assert rollout["decode_loop_weight_gathers"] == 0
    assert rollout["decode_step"]["hbm_bytes"] > 0 and rollout["decode_steps"] > 1
    # the update donates the training state: its output aliases its input
    assert report["programs"]["update"]["alias_bytes"] > 0


@needs_libtpu
def test_plan_names_the_program_that_does_not_fit(tiny, tmp_path):
    """A wide two-layer model whose fp32 training state alone exceeds one v5e chip."""
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 32000, "hidden_size": 4096,
              "intermediate_size": 16384, "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 8,
              "max_position_embeddings": 4096}
    model = tmp_path / "wide"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(config))
    recipe = _recipe(tiny, "wide", **{"model.path": str(model), "batch.micro_batch": 8})
    result = _plan(["--config", str(recipe), "--topology", "v5litepod-1"])
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("e1jax plan:")]
    assert errors, result.stderr[-3000:]
    assert any("update does not fit on v5litepod-1" in line and "batch.micro_batch" in line for line in errors), errors
    assert "update" in result.stdout and "NO" in result.stdout
