"""`python -m e1jax generate`: JSON records, budgets honoured, one-line errors."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from e1jax.__main__ import main  # noqa: E402
from e1jax.toy.tokenizer import save_toy_tokenizer  # noqa: E402
from hf_fixtures import make_hf_model  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen_model")
    tokenizer = save_toy_tokenizer(path)
    make_hf_model(path, "qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return path


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_json_records(model_dir, capsys):
    code, out, err = run_cli(["generate", "--model", str(model_dir), "--prompt", "1 + 2", "--prompt", "3 + 4 + 5",
                              "--think-budget", "3", "--solution-budget", "4", "--n", "2", "--temperature", "1.0",
                              "--top-p", "1.0", "--json"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 4
    assert [r["prompt"] for r in records] == ["1 + 2", "1 + 2", "3 + 4 + 5", "3 + 4 + 5"]
    for r in records:
        assert set(r) >= {"prompt", "text", "thinking", "solution", "token_ids", "thinking_tokens", "solution_tokens", "truncated", "finish_reason"}
        assert r["thinking_tokens"] <= 3 and r["solution_tokens"] <= 4
        if r["finish_reason"] != "eos_in_thinking":
            assert "</think>" in r["text"]
            assert len(r["token_ids"]) == r["thinking_tokens"] + 1 + r["solution_tokens"]
        if r["truncated"]:
            assert r["thinking_tokens"] == 3


def test_generate_plain_mode_text_output(model_dir, capsys):
    code, out, err = run_cli(["generate", "--model", str(model_dir), "--prompt", "2 + 2", "--mode", "plain",
                              "--max-new-tokens", "5", "--temperature", "0"], capsys)
    assert code == 0, err
    assert out.startswith("=== prompt 0 sample 0")


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--think-budget", "0"], "thinking budget must be positive, got 0"),
        (["--solution-budget", "-1"], "solution budget must be positive, got -1"),
        (["--think-budget", "200", "--solution-budget", "100"], "exceed the model's context"),
        (["--top-p", "1.5"], "top-p must be in (0, 1]"),
        (["--top-p", "0"], "top-p must be in (0, 1]"),
        (["--max-prompt-len", "2"], "longer than the limit"),
    ],
)
def test_generate_bad_input_is_one_line(model_dir, capsys, extra, message):
    code, out, err = run_cli(["generate", "--model", str(model_dir), "--prompt", "1 + 2"] + extra, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_generate_missing_model_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "e1jax", "generate", "--model", str(tmp_path / "nope"), "--prompt", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"e1jax generate: error: model directory not found: {tmp_path / 'nope'}"]
