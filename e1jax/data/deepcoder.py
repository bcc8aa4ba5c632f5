"""The DeepCoder dataset (agentica-org/DeepCoder-Preview-Dataset), as the original uses it.

The Hub repository has one folder per config: `lcbv5` (LiveCodeBench v5, splits train
and test), `primeintellect` (train), `taco` (train) and `codeforces` (test). The
original trains on PrimeIntellect, TACO and LiveCodeBench train
(scripts/data/deepcoder_dataset.py writes them to deepcoder_train.parquet) and
evaluates on LiveCodeBench test (2024-08 to 2025-01) and Codeforces.

LiveCodeBench prompts are the problem wrapped as rllm/data/utils.py's
fetch_live_code_bench_system_prompt does (a system message first, then the starter
code or the stdin instructions), and functional problems take the name of the
function to call from the row's `metadata.func_name`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from e1jax.errors import E1Error

REPO = "agentica-org/DeepCoder-Preview-Dataset"
TRAIN_SPLITS = ("primeintellect/train", "taco/train", "lcbv5/train")
TEST_SPLITS = ("lcbv5/test", "codeforces/test")
# The original's data_source of each config (it names LiveCodeBench v5 "livecodebench").
CONFIG_SOURCES = {"lcbv5": "livecodebench"}
LIVECODEBENCH = "livecodebench"

# rllm/system_prompts.py
LCB_SYSTEM_MESSAGE_GENERIC = (
    "You are an expert Python programmer. You will be given a question (problem specification) and will "
    "generate a correct Python program that matches the specification and passes all tests."
)
LCB_FORMATTING_MESSAGE_WITH_STARTER_CODE = (
    "You will use the following starter code to write the solution to the problem and enclose your code "
    "within delimiters."
)
LCB_FORMATTING_WITHOUT_STARTER_CODE = (
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on the "
    "sample inputs). Enclose your code within delimiters as follows. Ensure that when the python program runs, "
    "it reads the inputs, runs the algorithm and writes output to STDOUT."
)


def config_source(config: str) -> str:
    """The data_source of a Hub config's records."""
    return CONFIG_SOURCES.get(config, config)


def lcb_prompt(problem: str, starter_code: str | None = None) -> str:
    """The original's LiveCodeBench prompt; a problem already so wrapped is returned as is."""
    if problem.startswith(LCB_SYSTEM_MESSAGE_GENERIC):
        return problem
    prompt = LCB_SYSTEM_MESSAGE_GENERIC + "\n\n" + problem
    if starter_code:
        prompt += f"### Format: {LCB_FORMATTING_MESSAGE_WITH_STARTER_CODE}\n"
        prompt += f"```python\n{starter_code}\n```\n\n"
    else:
        prompt += f"### Format: {LCB_FORMATTING_WITHOUT_STARTER_CODE}\n"
        prompt += "```python\n# YOUR CODE HERE\n```\n\n"
    return prompt + "### Answer: (use the provided format with backticks)\n\n"


def with_func_name(tests: Any, metadata: Any, where: str) -> Any:
    """Tests with the row's metadata (holding func_name) attached, as deepcoder_dataset.py does."""
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata or "{}")
        except json.JSONDecodeError as exc:
            raise E1Error(f"{where}: field 'metadata' is text but not JSON ({exc.msg})") from None
    if not isinstance(metadata, Mapping) or not metadata.get("func_name"):
        return tests
    metadata = {"func_name": str(metadata["func_name"])}
    if isinstance(tests, Mapping):
        return {**tests, "metadata": metadata}
    if isinstance(tests, list):
        return [{**t, "metadata": metadata} if isinstance(t, Mapping) else t for t in tests]
    return tests
