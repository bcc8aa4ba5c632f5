"""`e1jax eval` end to end on a tiny random model: files, metrics from samples, resuming, errors."""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from e1jax.__main__ import main
from e1jax.rewards.types import GradeResult
from e1jax.eval import EvalSettings, Evaluation, summarize
from e1jax.rewards.math import grade_math
from e1jax.task import RewardSpec, Task
from e1jax.toy.task import ToyTaskConfig, generate_problems
from e1jax.toy.tokenizer import save_toy_tokenizer
from hf_fixtures import make_hf_model

CONTEXT = 64
N = 2
BUDGETS = (4, 8)
SOLUTION = 4
MAX_NEW = 12
COMMON = ["--think-budgets", "4,8", "--solution-budget", str(SOLUTION), "--n", str(N), "--temperature", "1.0",
          "--top-p", "0.95", "--batch-size", "2", "--seed", "3"]


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["eval", *map(str, argv)])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    model = root / "model"
    tokenizer = save_toy_tokenizer(model)
    make_hf_model(model, "qwen2", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                  num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=CONTEXT)
    # 2-4 steps keep every prompt in one length bucket (one compile per pass)
    config = ToyTaskConfig(min_steps=2, max_steps=4)
    data = {}
    for name, count, seed in (("sums", 3, 0), ("more", 2, 1)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"problem": r["problem"], "answer": r["ground_truth"]}) + "\n"
                                for r in generate_problems(count, seed, config)))
        data[name] = path
    return {"root": root, "model": model, "data": data}


@pytest.fixture(scope="module")
def cli_run(env):
    out = env["root"] / "out"
    rc, stdout, stderr = run_cli(["--model", env["model"], "--data", f"{env['data']['sums']},{env['data']['more']}",
                                  *COMMON, "--mode", "both", "--max-new-tokens", MAX_NEW, "--out", out])
    assert rc == 0, stderr
    return out, stdout, stderr


def read_samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_cli_writes_all_outputs_and_metrics_match_samples(env, cli_run):
    out, stdout, stderr = cli_run
    for name in ("results.json", "samples.jsonl", "results.md", "accuracy_vs_tokens.png", "state.json"):
        assert (out / name).is_file(), name
    assert (out / "accuracy_vs_tokens.png").read_bytes()[:4] == b"\x89PNG"
    assert "eval:" in stderr and "problem" in stderr  # the progress bar

    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "model"
    assert results["settings"]["think_budgets"] == list(BUDGETS) and results["settings"]["n"] == N
    assert list(results["datasets"]) == ["sums", "more"]
    assert list(results["datasets"]["sums"]["budgets"]) == ["plain", "4", "8"]
    assert list(results["average"]) == ["plain", "4", "8"]

    samples = read_samples(out)
    assert len(samples) == (3 + 2) * N * 3
    seen = {(s["dataset"], s["problem_id"], s["sample"], s["budget"]) for s in samples}
    assert len(seen) == len(samples)
    from e1jax.tokenizer import Tokenizer

    tok = Tokenizer.load(env["model"])
    truths = {name: [json.loads(line)["answer"] for line in path.read_text().splitlines()] for name, path in env["data"].items()}
    for s in samples:
        assert s["tokens"] == len(s["token_ids"])
        assert s["response"] == tok.decode([t for t in s["token_ids"] if t not in tok.eos_ids])
        if s["budget"] == "plain":
            assert s["tokens"] <= MAX_NEW and s["truncated"] == (s["finish_reason"] == "length")
        else:
            assert s["thinking_tokens"] <= s["budget"] and s["solution_tokens"] <= SOLUTION
            if s["truncated"]:
                assert s["thinking_tokens"] == s["budget"] and s["token_ids"][s["budget"]] == tok.think_close_id
        grade = grade_math(s["response"], truths[s["dataset"]][s["problem_id"]])
        assert (s["correct"], s["reward"], s["reason"], s["extracted"]) == (grade.correct, grade.reward, grade.reason, grade.extracted)

    recomputed = summarize(samples, ["sums", "more"])
    for name in ("sums", "more"):
        assert results["datasets"][name]["budgets"] == recomputed["datasets"][name]["budgets"]
    assert results["average"] == recomputed["average"]
    cell = results["datasets"]["sums"]["budgets"]["8"]
    assert cell["num_samples"] == 3 * N and sum(cell["finish_reasons"].values()) == 3 * N
    # thinking cut at budget 8 is never more often truncated than at budget 4 (same thinking, shorter cut)
    assert cell["truncation_rate"] <= results["datasets"]["sums"]["budgets"]["4"]["truncation_rate"]

    table = (out / "results.md").read_text()
    assert "## sums (3 problems)" in table and "## Average over sums, more" in table
    assert "| Model | Unconstrained Tokens | Unconstrained Acc | t=4 Tokens | t=4 Acc | t=8 Tokens | t=8 Acc |" in table
    assert table.strip() == stdout.strip()


def test_report_merges_runs_into_one_table(env, cli_run, tmp_path):
    out, _, _ = cli_run
    rc, stdout, stderr = run_cli(["--report", out, out, "--names", "baseline,E1", "--out", tmp_path / "cmp"])
    assert rc == 0, stderr
    lines = stdout.splitlines()
    start = lines.index("## sums (3 problems)")
    assert lines[start + 4].startswith("| baseline |") and lines[start + 5].startswith("| E1 |")
    assert lines[start + 4].split("|")[2:] == lines[start + 5].split("|")[2:]
    assert (tmp_path / "cmp" / "results.md").read_text().strip() == stdout.strip()
    assert (tmp_path / "cmp" / "accuracy_vs_tokens.png").is_file()


def test_interrupted_run_resumes_to_identical_results(env, cli_run, tmp_path):
    from e1jax.models.hf import load_model
    from e1jax.tokenizer import Tokenizer
    from e1jax.data.registry import resolve_dataset

    reference, _, _ = cli_run
    config, params = load_model(env["model"], param_dtype="float32", dtype="float32")
    tokenizer = Tokenizer.load(env["model"])
    datasets = dict(resolve_dataset(env["data"][name]) for name in ("sums", "more"))
    settings = EvalSettings(mode="both", think_budgets=BUDGETS, solution_budget=SOLUTION, max_new_tokens=MAX_NEW, n=N,
                            temperature=1.0, top_p=0.95, seed=3)
    task = Task(tokenizer)
    identity = {"model_path": str(env["model"].resolve()), "dtype": "float32"}

    def evaluation(out_dir, **kwargs):
        return Evaluation(task, datasets, settings, model_config=config, batch_size=2, out_dir=out_dir,
                          model_name="model", identity=identity)

    out = tmp_path / "resumed"
    chunks = []

    def stop_after_first(info):
        chunks.append(info)
        raise RuntimeError("simulated interruption")

    with pytest.raises(RuntimeError, match="simulated"):
        evaluation(out).run(config, params, progress=False, on_chunk=stop_after_first)
    assert chunks == [{"kind": "sweep", "dataset": "sums", "problem_ids": [0, 1]}]
    assert not (out / "results.json").exists()
    assert len(read_samples(out)) == 2 * N * len(BUDGETS)
    with (out / "samples.jsonl").open("a") as f:  # a commit torn between samples and state
        f.write('{"dataset": "sums", "problem_id": 2')

    resumed = []
    results = evaluation(out).run(config, params, progress=False, on_chunk=resumed.append)
    # 2 passes x (sums: 2 chunks, more: 1 chunk), less the committed one
    assert len(resumed) == 5 and {"kind": "sweep", "dataset": "sums", "problem_ids": [0, 1]} not in resumed
    assert json.loads((out / "results.json").read_text()) == json.loads((reference / "results.json").read_text())
    assert results == json.loads((reference / "results.json").read_text())
    key = lambda s: (s["dataset"], str(s["budget"]), s["problem_id"], s["sample"])  # noqa: E731
    assert sorted(read_samples(out), key=key) == sorted(read_samples(reference), key=key)

    again = []
    evaluation(out).run(config, params, progress=False, on_chunk=again.append)
    assert again == [] and json.loads((out / "results.json").read_text()) == results

    # in memory: no files, the same numbers, samples independent of the chunk size
    elastic = EvalSettings(think_budgets=BUDGETS, solution_budget=SOLUTION, n=N, temperature=1.0, top_p=0.95, seed=3)
    in_memory = Evaluation(task, {"sums": datasets["sums"]}, elastic, model_config=config, batch_size=1).run(
        config, params, progress=False, keep_samples=True)
    assert in_memory["datasets"]["sums"]["budgets"] == {k: v for k, v in results["datasets"]["sums"]["budgets"].items() if k != "plain"}
    ref = {key(s): s["token_ids"] for s in read_samples(reference) if s["dataset"] == "sums" and s["budget"] != "plain"}
    assert {key(s): s["token_ids"] for s in in_memory["samples"]} == ref


def digits_reward(responses, records):
    """A custom reward: the number of digits in the response."""
    return [GradeResult(float(sum(c.isdigit() for c in text)), sum(c.isdigit() for c in text) >= 2, None, "digits")
            for text in responses]


def test_the_task_s_reward_grades_every_sample(env):
    """The task's custom reward grades every sample (as a trainer's custom reward does); the
    metrics follow its verdicts, the samples are the default graders' samples, and the reward
    is part of what must match to resume."""
    from e1jax.data.registry import resolve_dataset
    from e1jax.errors import E1Error
    from e1jax.models.hf import load_model
    from e1jax.tokenizer import Tokenizer

    config, params = load_model(env["model"], param_dtype="float32", dtype="float32")
    tokenizer = Tokenizer.load(env["model"])
    datasets = dict([resolve_dataset(env["data"]["sums"])])
    settings = EvalSettings(think_budgets=BUDGETS, solution_budget=SOLUTION, n=N, temperature=1.0, top_p=0.95, seed=3)

    def evaluate(task, out_dir=None):
        return Evaluation(task, datasets, settings, model_config=config, batch_size=2, out_dir=out_dir).run(
            config, params, progress=False, keep_samples=True)

    custom = Task(tokenizer, reward=RewardSpec(kind="test_eval:digits_reward"))
    results = evaluate(custom, env["root"] / "digits")
    samples = results["samples"]
    assert len(samples) == 3 * N * len(BUDGETS)
    for s in samples:
        count = sum(c.isdigit() for c in s["response"])
        assert (s["reward"], s["correct"], s["reason"]) == (float(count), count >= 2, "digits")
    assert results["datasets"]["sums"]["budgets"] == summarize(samples)["datasets"]["sums"]["budgets"]
    default = evaluate(Task(tokenizer))
    assert [s["token_ids"] for s in default["samples"]] == [s["token_ids"] for s in samples]
    assert {s["reason"] for s in default["samples"]} != {"digits"}
    with pytest.raises(E1Error, match="different settings.*reward.kind"):
        evaluate(Task(tokenizer), env["root"] / "digits")


def test_rerun_with_other_settings_is_refused(env, cli_run):
    out, _, _ = cli_run
    before = (out / "samples.jsonl").read_bytes()
    argv = ["--model", env["model"], "--data", f"{env['data']['sums']},{env['data']['more']}", *COMMON,
            "--mode", "both", "--max-new-tokens", MAX_NEW, "--out", out]
    rc, _, stderr = run_cli([*argv, "--n", "3"])
    assert rc == 1 and len(stderr.strip().splitlines()) == 1
    assert "different settings (settings.n: 2 -> 3)" in stderr
    rc, _, stderr = run_cli([*argv, "--limit", "1"])
    assert rc == 1 and "different settings" in stderr and "num_problems" in stderr
    assert (out / "samples.jsonl").read_bytes() == before


@pytest.fixture(scope="module")
def bad_rows(env):
    path = env["root"] / "bad.jsonl"
    path.write_text('{"problem": "Sum mod 10: a1 b2", "answer": "3"}\n{"problem": "x"}\n')
    return path


@pytest.mark.parametrize("args, message", [
    (["--data", "nosuch"], "unknown dataset 'nosuch'"),
    (["--data", "missing/none.jsonl"], "dataset file not found"),
    (["--data", "BAD"], "bad.jsonl line 2: missing field 'answer'"),
    (["--think-budgets", "0,4"], "thinking budgets must be positive, got 0"),
    (["--think-budgets", "4,x"], "--think-budgets must be comma-separated integers"),
    (["--think-budgets", "4,60"], "exceed the model's context of 64"),
    (["--mode", "plain", "--max-new-tokens", "100"], "exceed the model's context of 64"),
    (["--top-p", "1.5"], "top-p must be in (0, 1]"),
    (["--top-p", "0"], "top-p must be in (0, 1]"),
    (["--solution-budget", "0"], "the solution budget must be positive"),
    (["--mode", "plain"], "mode plain needs max_new_tokens"),
    (["--n", "0"], "n must be at least 1"),
    (["--grade-workers", "-1"], "reward workers must be >= 0"),
])
def test_cli_errors_are_one_line(env, bad_rows, tmp_path, args, message):
    base = {"--data": str(env["data"]["sums"]), "--think-budgets": "4,8", "--solution-budget": "4", "--n": "2"}
    argv = ["--model", str(env["model"]), "--out", str(tmp_path / "o")]
    given = dict(zip(args[::2], args[1::2]))
    for flag, value in {**base, **given}.items():
        argv += [flag, str(bad_rows) if value == "BAD" else value]
    rc, stdout, stderr = run_cli(argv)
    assert rc == 1
    assert stderr.startswith("e1jax eval: error: ") and len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr
    assert not (tmp_path / "o" / "samples.jsonl").exists()


def test_cli_report_errors_and_exit_code(env, tmp_path):
    rc, _, stderr = run_cli(["--report", tmp_path])
    assert rc == 1 and "no results.json" in stderr
    rc, _, stderr = run_cli(["--data", "aime"])
    assert rc == 1 and "--model is required" in stderr
    proc = subprocess.run([sys.executable, "-m", "e1jax", "eval", "--model", str(env["model"]), "--data", "nosuch",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "e1jax eval: error: " + proc.stderr.strip().split("error: ", 1)[1]) and "unknown dataset" in proc.stderr


def test_cli_on_a_mesh_matches_single_device_samples(env, cli_run, tmp_path):
    reference, _, _ = cli_run
    # the toy vocabulary (55) splits over no tensor axis: a mesh that would need it to is an error
    rc, _, stderr = run_cli(["--model", env["model"], "--data", env["data"]["sums"], *COMMON, "--limit", "2",
                             "--mesh", "data=2,tensor=4", "--no-progress", "--out", tmp_path / "refused"])
    assert rc == 1 and "vocab = 55" in stderr and "tensor" in stderr and len(stderr.strip().splitlines()) == 1, stderr
    out = tmp_path / "mesh"
    rc, _, stderr = run_cli(["--model", env["model"], "--data", env["data"]["sums"], *COMMON, "--limit", "2",
                             "--mesh", "data=2,fsdp=4", "--no-progress", "--out", out])
    assert rc == 0, stderr
    key = lambda s: (s["problem_id"], s["sample"], s["budget"])  # noqa: E731
    want = {key(s): s["token_ids"] for s in read_samples(reference)
            if s["dataset"] == "sums" and s["problem_id"] < 2 and s["budget"] != "plain"}
    assert {key(s): s["token_ids"] for s in read_samples(out)} == want


def test_original_compat_evaluates_as_main_generation(env, tmp_path):
    """--original-compat: EOS while thinking gets </think> appended and its solution graded, by the
    original's grader; both are recorded in the run's settings."""
    out = tmp_path / "compat"
    rc, _, stderr = run_cli(["--model", env["model"], "--data", env["data"]["more"], *COMMON, "--limit", "1",
                             "--original-compat", "--out", out])
    assert rc == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["eos_in_thinking"] == "append_close"
    from e1jax.eval.store import STATE_FILE

    assert json.loads((out / STATE_FILE).read_text())["fingerprint"]["reward"]["grader"] == "original"
