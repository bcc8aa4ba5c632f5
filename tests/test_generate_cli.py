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


def test_generate_per_prompt_budgets_from_jsonl(model_dir, capsys, tmp_path):
    """Each .jsonl line may set its own budgets; the engine decodes them together and each sample
    keeps its own; the same samples as the lockstep sampler's for the same seed."""
    from e1jax.models.hf import load_model
    from e1jax.sampling import SamplingParams, generate
    from e1jax.task import Task
    from e1jax.tokenizer import Tokenizer

    path = tmp_path / "prompts.jsonl"
    rows = [{"problem": "1 + 2", "think_budget": 2, "solution_budget": 3},
            {"problem": "3 + 4 + 5"},
            {"problem": "6 + 7", "think_budget": 9, "solution_budget": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = run_cli(["generate", "--model", str(model_dir), "--prompts-file", str(path), "--think-budget", "5",
                              "--solution-budget", "4", "--n", "3", "--temperature", "1.0", "--top-p", "1.0",
                              "--seed", "7", "--slots", "4", "--json"], capsys)
    assert code == 0, err
    assert "generate" in err and "sample" in err  # the progress bar
    records = [json.loads(line) for line in out.splitlines()]
    limits = [(2, 3), (5, 4), (9, 1)]
    for i, r in enumerate(records):
        t, s = limits[i // 3]
        assert r["thinking_tokens"] <= t and r["solution_tokens"] <= s
    task = Task(Tokenizer.load(model_dir))
    config, params = load_model(model_dir)
    ref = generate(config, params, [task.prompt_for_text(r["problem"]) for r in rows], ids=task.special_ids,
                   think_budget=[2, 5, 9], solution_budget=[3, 4, 1], sampling=SamplingParams(1.0, 1.0), n=3, seed=7)
    assert [r["token_ids"] for r in records] == [ref.response_ids(i) for i in range(len(ref))]


def test_generate_bad_budget_line_is_refused(model_dir, capsys, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "1 + 2", "think_budget": 0}\n')
    code, _, err = run_cli(["generate", "--model", str(model_dir), "--prompts-file", str(path)], capsys)
    assert code == 1 and "bad.jsonl line 1: 'think_budget' must be a positive integer, got 0" in err
