"""`python -m e1jax demo --quick` end to end: every file, models loadable, table recomputable from samples."""

import json
from collections import defaultdict

import numpy as np
import pytest

from e1jax.__main__ import main


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--seed", "3"]) == 0
    return out


def test_demo_writes_every_file(demo_out):
    for name in ("results.md", "results.json", "accuracy_vs_tokens.png", "sft_losses.json"):
        assert (demo_out / name).is_file(), name
    assert (demo_out / "accuracy_vs_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for model in ("baseline", "e1"):
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (demo_out / model / name).is_file(), f"{model}/{name}"
    table = (demo_out / "results.md").read_text()
    assert "baseline (SFT)" in table and "E1 (GRPO, budget-constrained)" in table
    for budget in (8, 16, 24, 32):
        assert f"t={budget} Tokens" in table
    losses = json.loads((demo_out / "sft_losses.json").read_text())
    assert losses[-1] < losses[0] / 2  # stage 1 learned something


def test_demo_table_is_recomputable_from_samples(demo_out):
    summary = json.loads((demo_out / "results.json").read_text())
    for name, folder in (("baseline", "eval_baseline"), ("E1", "eval_E1")):
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
            if line.startswith("| E1" if name == "E1" else "| baseline"):
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
