"""`python -m e1jax demo --quick` end to end: every file, models loadable, table recomputable from samples."""

import json
from collections import defaultdict

import numpy as np
import pytest

from e1jax.__main__ import main
from e1jax.errors import E1Error
from e1jax.toy.demo import ROWS, aggregate, check_claims, multi_seed_markdown, run_demo


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--seed", "3"]) == 0
    return out


def test_demo_writes_every_file(demo_out):
    for name in ("results.md", "results.json", "accuracy_vs_tokens.png", "sft_losses.json"):
        assert (demo_out / name).is_file(), name
    assert (demo_out / "accuracy_vs_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for model in ("baseline", "e1", "e1_original"):
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (demo_out / model / name).is_file(), f"{model}/{name}"
    table = (demo_out / "results.md").read_text()
    for _, label, _, _ in ROWS:
        assert f"| {label} |" in table, label
    assert "## Checks" in table
    for budget in (8, 16, 24, 32):
        assert f"t={budget} Tokens" in table
    losses = json.loads((demo_out / "sft_losses.json").read_text())
    assert losses[-1] < losses[0] / 2  # stage 1 learned something


def test_demo_table_is_recomputable_from_samples(demo_out):
    summary = json.loads((demo_out / "results.json").read_text())
    assert set(summary["results"]) == {"baseline", "E1", "E1_original"}
    assert set(summary["checks"]) == {"E1", "E1_original"}
    config = json.loads((demo_out / "e1_original_run" / "config.json").read_text())
    assert config["compat"]["original_compat"] is True
    assert json.loads((demo_out / "e1_run" / "config.json").read_text())["compat"]["original_compat"] is False
    labels = {key: label for key, label, _, _ in ROWS}
    for name in summary["results"]:
        folder = f"eval_{name}"
        cells = summary["results"][name]["datasets"]["toy"]["budgets"]
        samples = [json.loads(line) for line in (demo_out / folder / "samples.jsonl").read_text().splitlines()]
        by_budget = defaultdict(list)
        for s in samples:
            by_budget[str(s["budget"])].append(s)
        assert set(by_budget) == set(cells) == {"plain", "8", "16", "24", "32"}
        for key, rows in by_budget.items():
            assert cells[key]["avg_at_n"] == pytest.approx(np.mean([r["correct"] for r in rows]))
            assert cells[key]["mean_tokens"] == pytest.approx(np.mean([r["tokens"] for r in rows]))
            assert cells[key]["truncation_rate"] == pytest.approx(np.mean([r["truncated"] for r in rows]))
            if key != "plain":
                assert max(r["thinking_tokens"] for r in rows) <= int(key)
        for line in (demo_out / "results.md").read_text().splitlines():
            if line.startswith(f"| {labels[name]} |"):
                cell = f"{100 * cells['8']['avg_at_n']:.1f}"
                assert cell in line


def test_demo_models_load_in_e1jax_and_transformers_with_equal_logits(demo_out):
    torch = pytest.importorskip("torch")
    import transformers

    from e1jax.models.hf import load_model
    from e1jax.models.scoring import next_token_logprobs
    from e1jax.tokenizer import Tokenizer

    config, params = load_model(demo_out / "e1")
    tokenizer = Tokenizer.load(demo_out / "e1")
    ids = tokenizer.encode_prompt("Sum mod 10: a3 b7 c5") + tokenizer.encode("a3 b0 c5</think>The answer is \\boxed{5}.")
    tokens = np.asarray([ids])
    ours = np.asarray(next_token_logprobs(config, params, tokens, np.ones_like(tokens, bool)))
    model = transformers.AutoModelForCausalLM.from_pretrained(demo_out / "e1", torch_dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor(tokens)).logits.float()
    theirs = torch.log_softmax(logits[:, :-1], -1).gather(-1, torch.tensor(tokens)[:, 1:, None])[..., 0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    text = "Sum mod 10: a3 b7 c5"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    generic = transformers.PreTrainedTokenizerFast.from_pretrained(demo_out / "e1")
    assert generic.encode(text) == tokenizer.encode(text)


def _fake_results(cells: dict[str, tuple[float, float]]) -> dict:
    """An evaluation result with {budget key: (mean tokens, accuracy)} cells."""
    return {"settings": {"n": 4, "temperature": 0.6, "top_p": 0.95, "solution_budget": 16, "max_new_tokens": 192},
            "datasets": {"toy": {"num_problems": 10, "budgets": {
                k: {"mean_tokens": t, "avg_at_n": a, "pass_at_n": a, "truncation_rate": 0.0} for k, (t, a) in cells.items()}}}}


def _fake_seed(base_acc: float, e1_plain: tuple[float, float]) -> dict:
    baseline = {"plain": (40.0, base_acc), "8": (17.0, 0.2), "16": (24.0, 0.4), "24": (29.0, 0.6), "32": (34.0, 0.7)}
    e1 = {"plain": e1_plain, "8": (17.0, 0.25), "16": (23.0, 0.5), "24": (27.0, 0.8), "32": (29.0, 0.95)}
    original = dict(e1, **{"8": (17.0, 0.1)})
    return {"baseline": _fake_results(baseline), "E1": _fake_results(e1), "E1_original": _fake_results(original)}


def test_multi_seed_aggregation_on_fake_results():
    per_seed = {0: _fake_seed(1.0, (28.0, 0.99)), 1: _fake_seed(0.98, (30.0, 0.95)), 2: _fake_seed(0.99, (29.0, 0.97))}
    agg = aggregate(per_seed)
    assert set(agg) == {"baseline", "E1", "E1_original"}
    assert list(agg["E1"]) == ["plain", "8", "16", "24", "32"]
    tokens, acc = agg["E1"]["plain"]["mean_tokens"], agg["E1"]["plain"]["avg_at_n"]
    assert tokens["mean"] == pytest.approx(29.0) and tokens["std"] == pytest.approx(1.0)  # sample std
    assert (tokens["min"], tokens["max"], tokens["values"]) == (28.0, 30.0, [28.0, 30.0, 29.0])
    assert acc["mean"] == pytest.approx(0.97) and acc["std"] == pytest.approx(0.02)
    assert agg["baseline"]["8"]["avg_at_n"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert aggregate({5: per_seed[0]})["E1"]["plain"]["mean_tokens"]["std"] == 0.0  # one seed: no spread

    checks = {s: check_claims(r, "E1", (8, 16, 24, 32)) for s, r in per_seed.items()}
    assert checks[0]["holds"] and checks[0]["token_saving"] == pytest.approx(0.3)
    assert checks[0]["accuracy_drop_points"] == pytest.approx(1.0)
    assert not checks[1]["holds"] and checks[1]["accuracy_drop_points"] == pytest.approx(3.0)  # 98 -> 95
    original = check_claims(per_seed[0], "E1_original", (8, 16, 24, 32))
    assert original["beats_baseline_at"] == {"8": False, "16": True, "24": True, "32": True} and not original["holds"]

    table = multi_seed_markdown(per_seed, (8, 16, 24, 32))
    lines = table.splitlines()
    e1_rows = [line for line in lines if line.startswith("| E1 (GRPO, budget-constrained) |")]
    assert len(e1_rows) == 2 + 3  # mean ± std, min–max, one per seed
    assert "| 29.0 ± 1.0 | 97.0 ± 2.0 |" in e1_rows[0] and "| 28.0–30.0 | 95.0–99.0 |" in e1_rows[1]
    for seed in per_seed:
        assert f"## Seed {seed}" in table
    assert table.count("### toy (10 problems)") == 3
    assert sum(line.startswith("| 1 | E1 (GRPO") and line.endswith("| no |") for line in lines) == 1
    assert sum(line.startswith("| 0 | E1 (GRPO") and line.endswith("| yes |") for line in lines) == 1


def test_demo_seed_arguments(tmp_path):
    with pytest.raises(E1Error, match="not both"):
        run_demo(tmp_path, seed=0, seeds=[0, 1])
    with pytest.raises(E1Error, match="distinct"):
        run_demo(tmp_path, seeds=[1, 1])
    assert main(["demo", "--out", str(tmp_path), "--seeds", "0,x"]) != 0
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path), "--seed", "0", "--seeds", "0,1"])


def test_multi_seed_demo_writes_tables_over_seeds(tmp_path, monkeypatch):
    """run_demo's multi-seed path (folders, results.md/json, plot) with stage 1-3 replaced by fake results."""
    import e1jax.toy.demo as demo

    fake = {0: _fake_seed(1.0, (28.0, 0.99)), 1: _fake_seed(0.98, (30.0, 0.95))}

    def fake_run_seed(size, out, seed, quick, tokenizer, hf_tokenizer):
        out.mkdir(parents=True)
        checks = {key: check_claims(fake[seed], key, size.think_budgets) for key, *_ in demo.E1_ROWS}
        return {"seed": seed, "seconds": {"total": 1.0}, "sft_final_loss": 0.02, "models": {}, "checks": checks,
                "results": fake[seed]}

    monkeypatch.setattr(demo, "run_seed", fake_run_seed)
    summary = run_demo(tmp_path, seeds=[0, 1], quick=True)
    assert (tmp_path / "seed_0").is_dir() and (tmp_path / "seed_1").is_dir()
    assert (tmp_path / "accuracy_vs_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["holds_for_every_seed"] is False == summary["holds_for_every_seed"]
    assert saved["aggregate"]["E1"]["plain"]["mean_tokens"]["values"] == [28.0, 30.0]
    assert saved["checks"]["0"]["E1"]["holds"] and not saved["checks"]["1"]["E1"]["holds"]
    assert set(saved["per_seed"]) == {"0", "1"} and "results" not in saved["per_seed"]["0"]
    assert (tmp_path / "results.md").read_text().startswith("# Miniature E1 demo over seeds 0, 1")
