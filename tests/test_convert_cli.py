"""`python -m e1jax convert`: Hugging Face -> orbax -> Hugging Face, and a trained
checkpoint -> Hugging Face, each loaded back by transformers with equal logits."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from hf_fixtures import make_hf_model, torch_logits

from e1jax.__main__ import main

TOKENS = np.array([[3, 17, 5, 40, 2, 9, 11, 30], [1, 2, 3, 4, 5, 6, 7, 8]], np.int32)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    from e1jax.toy.tokenizer import save_toy_tokenizer

    path = tmp_path_factory.mktemp("convert") / "base"
    path.mkdir()
    save_toy_tokenizer(path)
    model = make_hf_model(path, vocab_size=64)
    return path, model


def _transformers_logits(path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype="float32").eval()
    return torch_logits(model, TOKENS)


def _ours_logits(config, params):
    from e1jax.models.qwen import Qwen, positions_from_mask

    mask = np.ones_like(TOKENS, bool)
    logits, _ = Qwen(config).apply({"params": params}, TOKENS, positions_from_mask(mask), mask)
    return np.asarray(logits)


def test_hf_to_orbax_to_hf_round_trip(hf_model, tmp_path, capsys):
    base, torch_model = hf_model
    assert main(["convert", "--from-hf", str(base), "--to-orbax", str(tmp_path / "ckpt")]) == 0
    assert (tmp_path / "ckpt" / "0" / "params").is_dir()
    assert not (tmp_path / "ckpt" / "0" / "opt_state").exists()
    assert main(["convert", "--from-orbax", str(tmp_path / "ckpt"), "--to-hf", str(tmp_path / "hf")]) == 0
    assert "from checkpoint step 0" in capsys.readouterr().err
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert exported["architectures"] == ["Qwen2ForCausalLM"]
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    np.testing.assert_allclose(_transformers_logits(tmp_path / "hf"), torch_logits(torch_model, TOKENS),
                               rtol=1e-5, atol=1e-5)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path / "hf")).decode([40]) != ""


def test_trained_checkpoint_to_hf(hf_model, tmp_path, capsys):
    """A checkpoint as the trainer writes it (params, optimizer state, meta) at two steps:
    the latest and an explicit --step export the right parameters."""
    import optax

    from e1jax.models.hf import load_model
    from e1jax.checkpoints import CheckpointStore, model_meta

    base, _ = hf_model
    config, params = load_model(base)
    trained = {}
    with CheckpointStore(tmp_path / "ckpt", keep=3, async_save=True) as store:
        for step in (5, 10):
            rng = np.random.default_rng(step)
            trained[step] = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(np.float32), params)
            opt = optax.adamw(1e-3).init(trained[step])
            store.save(step, params=trained[step], opt_state={"opt_state": opt, "step": np.int32(step)},
                       meta={"run_seed": 0, "data": {}, **model_meta(config, base)})
    assert main(["convert", "--from-orbax", str(tmp_path / "ckpt"), "--to-hf", str(tmp_path / "latest")]) == 0
    assert main(["convert", "--from-orbax", str(tmp_path / "ckpt"), "--step", "5",
                 "--to-hf", str(tmp_path / "five")]) == 0
    assert "step 5" in capsys.readouterr().err
    for name, step in (("latest", 10), ("five", 5)):
        np.testing.assert_allclose(_transformers_logits(tmp_path / name), _ours_logits(config, trained[step]),
                                   rtol=1e-4, atol=1e-4)
    # the base model's dtype is kept unless --dtype says otherwise
    assert json.loads((tmp_path / "latest" / "config.json").read_text())["dtype"] == "float32"
    assert main(["convert", "--from-orbax", str(tmp_path / "ckpt"), "--dtype", "bfloat16",
                 "--to-hf", str(tmp_path / "bf16")]) == 0
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("argv, message", [
    (["--from-orbax", "{tmp}/none", "--to-hf", "{tmp}/out"], "not found"),
    (["--from-orbax", "{tmp}", "--to-orbax", "{tmp}/out"], "--from-orbax goes with --to-hf"),
    (["--from-hf", "{tmp}", "--to-orbax", "{tmp}/out", "--step", "3"], "--step"),
    (["--from-orbax", "{tmp}/empty", "--to-hf", "{tmp}/out"], "no complete checkpoint"),
])
def test_bad_requests_are_one_line_errors(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    rc = main(["convert", *[a.format(tmp=tmp_path) for a in argv]])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and message in err, err


def test_missing_step_is_named(hf_model, tmp_path, capsys):
    base, _ = hf_model
    assert main(["convert", "--from-hf", str(base), "--to-orbax", str(tmp_path / "ckpt")]) == 0
    capsys.readouterr()
    rc = main(["convert", "--from-orbax", str(tmp_path / "ckpt"), "--step", "7", "--to-hf", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "no checkpoint for step 7" in err[0] and "steps: 0" in err[0]
