"""notebooks/e1jax_colab.ipynb cannot rot: its CPU-safe cells run in a real kernel, and its Hub
cells (tagged needs-hub / needs-accelerator) are rehearsed on the demo's own E1 model.

One kernel (this venv's python3, working in a temporary folder) runs, in the notebook's order:
- the untagged cells as written, except the demo cell, whose `demo --quick` becomes the same
  three stages at a smaller size (the tested notebook still holds the real command);
- then the tagged cells, with the Hub settings (model id, budgets, problems) swapped for the
  demo's E1 model, toy problems and toy budgets: the same API calls, on the CPU, offline.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "e1jax_colab.ipynb"
TAGS = {"needs-hub", "needs-accelerator"}
DEMO_COMMAND = "-m e1jax demo --quick --out demo_quick"
# What needs the checkpoint (or its results): every cell using one must carry both tags.
HUB_CALLS = ("load_model(", "Tokenizer.load(", "generate(", "budget_sweep(", "params", "rows")

SMOKE_DEMO = """
import dataclasses

from e1jax.toy import demo

# test stand-in for `demo --quick`: the same stages and outputs at a smaller size
demo.QUICK = dataclasses.replace(demo.QUICK, sft_problems=64, sft_steps=2, sft_batch=8, grpo_problems=32,
                                 grpo_steps=1, eval_problems=4, eval_n=1, hidden=32, layers=1, max_new_tokens=64)
demo.run_demo("demo_quick", quick=True)
# Run in this kernel (the notebook runs it as a subprocess), the demo's plotting switched
# matplotlib to Agg; give the notebook back the inline backend it would have had.
%matplotlib inline
"""

REHEARSAL_SETTINGS = """
from e1jax.toy.task import generate_problems

MODEL = "demo_quick/e1"
DTYPE = "float32"
THINK_BUDGET = 24
SHORT_THINK_BUDGET = 2
SWEEP_BUDGETS = [4, 8, 16]
SOLUTION_BUDGET = 16
SAMPLES = 2
PROBLEMS = [(r["problem"], r["ground_truth"]) for r in generate_problems(4, 7)]
"""


def tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def by_id(nb, cell_id: str):
    matches = [c for c in nb.cells if c.get("id") == cell_id]
    assert len(matches) == 1, f"notebook has {len(matches)} cells with id {cell_id!r}"
    return matches[0]


def text_of(cell) -> str:
    """stdout, markdown and plain-text outputs of an executed cell, joined."""
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            parts.append(out["text"])
        for mime in ("text/markdown", "text/plain"):
            if mime in out.get("data", {}):
                parts.append(out["data"][mime])
    return "".join(parts)


def cell_seconds(nb) -> dict[str, float]:
    """Execution time of each executed cell (nbclient's timestamps)."""
    from datetime import datetime

    seconds = {}
    for cell in nb.cells:
        times = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in times and "shell.execute_reply" in times:
            start, end = (datetime.fromisoformat(times[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            seconds[cell.get("id")] = round((end - start).total_seconds(), 1)
    return seconds


def has_png(cell) -> bool:
    return any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


@pytest.fixture(scope="module")
def notebook():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def test_notebook_structure(notebook):
    from IPython.core.inputtransformer2 import TransformerManager

    ids = [c.get("id") for c in notebook.cells]
    assert len(ids) == len(set(ids))
    code = [c for c in notebook.cells if c.cell_type == "code"]
    transform = TransformerManager().transform_cell
    for cell in code:
        compile(transform(cell.source), cell.get("id"), "exec")  # every cell, also those never run here
        assert tags(cell) <= TAGS, cell.get("id")
        assert not cell.get("outputs"), f"cell {cell.get('id')} is saved with outputs"
        uses_hub = any(call in cell.source for call in HUB_CALLS)
        assert tags(cell) == (TAGS if uses_hub else set()), f"cell {cell.get('id')}: tags {tags(cell)}"
    assert DEMO_COMMAND in by_id(notebook, "run-demo").source
    assert 'MODEL = "Salesforce/E1-Math-1.5B"' in by_id(notebook, "hub-settings").source
    assert [c.get("id") for c in code if tags(c)] == ["load-model", "generate", "sweep", "sweep-plot"]
    # every step is explained: a markdown cell precedes each run of code cells
    for before, cell in zip(notebook.cells, notebook.cells[1:]):
        if cell.cell_type == "code" and before.cell_type == "code":
            assert cell.get("id") in {"devices", "show-plot", "sweep-plot"}, cell.get("id")


def test_notebook_runs_cpu_cells_and_rehearses_hub_cells(notebook, tmp_path, monkeypatch):
    pytest.importorskip("e1jax.commands.demo", reason="the demo command (e1jax/commands/demo.py) has not landed yet")
    pytest.importorskip("e1jax.toy.demo", reason="the demo (e1jax/toy/demo.py) has not landed yet")
    nbclient = pytest.importorskip("nbclient")

    nb = copy.deepcopy(notebook)
    cpu = [c for c in nb.cells if c.cell_type == "code" and not tags(c)]
    hub = [c for c in nb.cells if c.cell_type == "code" and tags(c)]
    demo = by_id(nb, "run-demo")
    demo.source = SMOKE_DEMO
    rehearsal = copy.deepcopy(by_id(nb, "hub-settings"))
    rehearsal.id = "rehearsal-settings"
    rehearsal.source = REHEARSAL_SETTINGS
    nb.cells = cpu + [rehearsal] + hub

    # The kernel inherits this environment (and conftest's 8 simulated devices: the Hub cells take
    # their multi-device path, as on a TPU with several chips).
    for name, value in {"JAX_PLATFORMS": "cpu", "E1JAX_DISTRIBUTED": "0", "TQDM_DISABLE": "1"}.items():
        monkeypatch.setenv(name, value)
    start = time.perf_counter()
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    print(f"notebook executed in {time.perf_counter() - start:.1f}s:", cell_seconds(nb))

    assert "from " + str(REPO / "e1jax") in text_of(by_id(nb, "install"))  # installed already: nothing to do
    assert "on cpu" in text_of(by_id(nb, "devices"))
    for name in ("results.md", "results.json", "accuracy_vs_tokens.png", "baseline/config.json", "e1/config.json"):
        assert (tmp_path / "demo_quick" / name).is_file(), name
    table = text_of(by_id(nb, "show-table"))
    assert "| Model |" in table and "E1" in table and "t=8 Tokens" in table
    assert has_png(by_id(nb, "show-plot"))
    summary = text_of(by_id(nb, "show-summary"))
    assert "seconds per stage" in summary and "model.safetensors" in summary

    generated = text_of(by_id(nb, "generate"))
    assert "=== thinking budget 24:" in generated and "=== thinking budget 2:" in generated
    sweep = text_of(by_id(nb, "sweep"))
    assert "| thinking budget | mean tokens |" in sweep
    for budget in (4, 8, 16):
        assert f"\n| {budget} |" in sweep
    assert has_png(by_id(nb, "sweep-plot"))
