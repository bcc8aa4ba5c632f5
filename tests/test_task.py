"""The E1 episode owner: prompts, special ids, response texts, grading dispatch, datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from e1jax.errors import E1Error
from e1jax.rewards.types import GradeResult
from e1jax.task import PromptSpec, RewardSpec, Task

CODE_TESTS = [{"input": "1 2\n", "output": "3\n"}, {"input": "4 5\n", "output": "9\n"}]
MATH = {"problem": "Sum mod 10: a1 b2", "ground_truth": "3", "ability": "math"}
CODE = {"problem": "Sum mod 10: a1 b2", "ground_truth": CODE_TESTS, "ability": "code"}
GOOD_CODE = "</think>```python\na, b = map(int, input().split())\nprint(a + b)\n```"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from e1jax.tokenizer import Tokenizer
    from e1jax.toy.tokenizer import save_toy_tokenizer

    folder = tmp_path_factory.mktemp("toy_tok")
    save_toy_tokenizer(folder)
    return Tokenizer.load(folder)


def test_prompt_rule_math_gets_the_instruction_code_does_not(tokenizer):
    task = Task(tokenizer)
    assert task.prompt(MATH) == tokenizer.encode_prompt(MATH["problem"])
    assert task.prompt(CODE) == tokenizer.encode_prompt(CODE["problem"], e1_instruction=False) != task.prompt(MATH)
    always = Task(tokenizer, prompt=PromptSpec(instruction="always"))
    assert always.prompt(CODE) == task.prompt(MATH)
    never = Task(tokenizer, prompt=PromptSpec(instruction="never", chat_template=False))
    assert tokenizer.decode(never.prompt(MATH)) == MATH["problem"]
    keyed = Task(tokenizer, prompt=PromptSpec(key="question"))
    assert keyed.prompt({"question": MATH["problem"]}) == task.prompt(MATH)
    with pytest.raises(E1Error, match="no 'question' field"):
        keyed.prompt(MATH)
    with pytest.raises(E1Error, match="instruction must be one of"):
        PromptSpec(instruction="sometimes")


def test_special_ids_and_the_close_text(tokenizer):
    ids = Task(tokenizer).special_ids
    assert ids.think_close_ids == (tokenizer.think_close_id,) and ids.natural_close == tokenizer.think_close_id
    assert ids.eos_ids == tuple(tokenizer.eos_ids) and ids.pad_id == tokenizer.pad_id
    long_close = Task(tokenizer, close="a1 </think>").special_ids
    assert long_close.think_close_ids == tuple(tokenizer.encode("a1 </think>"))
    assert len(long_close.think_close_ids) > 1 and long_close.natural_close == tokenizer.think_close_id
    with pytest.raises(E1Error, match="only grade"):
        Task().special_ids


def test_text_strips_trailing_stop_tokens_and_keeps_think_close(tokenizer):
    task = Task(tokenizer)
    eos, pad = tokenizer.eos_ids[0], tokenizer.pad_id
    body = tokenizer.encode("a1 </think>") + [eos, pad, pad]
    assert task.text(body) == tokenizer.decode(tokenizer.encode("a1 </think>"))
    assert "</think>" in task.text(body)
    assert task.text(np.asarray(body), 1) == tokenizer.decode(body[:1])


def test_grade_dispatches_by_ability_unless_the_kind_is_forced():
    texts = ["</think>The answer is \\boxed{3}.", GOOD_CODE, "</think>```python\nprint(0)\n```", "no code"]
    records = [MATH, CODE, CODE, CODE]
    graded = Task(reward=RewardSpec(workers=2)).grade(texts, records)
    assert [(g.correct, g.reason) for g in graded] == [
        (True, "correct"), (True, "correct"), (False, "wrong_answer"), (False, "no_code")]
    assert graded[0].extracted == "3" and graded[1].reward == 1.0
    # forced math: the code answers have no boxed answer
    as_math = Task(reward=RewardSpec(kind="math")).grade(texts[:2], [MATH, {**CODE, "ground_truth": "3"}])
    assert [g.correct for g in as_math] == [True, False]
    lenient = Task(reward=RewardSpec(kind="math", require_think_close=False))
    assert lenient.grade(["\\boxed{3}"], [MATH])[0].correct
    assert Task(reward=RewardSpec(kind="math")).grade(["\\boxed{3}"], [MATH])[0].reason == "format_error"
    with pytest.raises(E1Error, match="2 responses but 1 records"):
        Task().grade(texts[:2], records[:1])
    with pytest.raises(E1Error, match="no 'ground_truth'"):
        Task().grade(["x"], [{"problem": "p"}])


def binary_reward(responses, records):
    return [1.0 if r.endswith("12") else 0.0 for r in responses]


def graded_reward(responses, records):
    return [GradeResult(0.5, False, "x", "partial") for _ in responses]


def test_custom_reward_callables():
    task = Task(reward=RewardSpec(kind="test_task:binary_reward"))
    grades = task.grade(["x</think>12", "x</think>1"], [{}, {}])
    assert [(g.reward, g.correct, g.reason) for g in grades] == [(1.0, True, "custom"), (0.0, False, "custom")]
    assert Task(reward=RewardSpec(kind="test_task:graded_reward")).grade(["a"], [{}])[0].reason == "partial"
    with pytest.raises(E1Error, match="cannot import"):
        Task(reward=RewardSpec(kind="no_such_module_e1:fn"))
    with pytest.raises(E1Error, match="no attribute"):
        Task(reward=RewardSpec(kind="test_task:missing"))
    with pytest.raises(E1Error, match="expected a number"):
        Task(reward=RewardSpec(kind="test_task:bad_reward")).grade(["a"], [{}])
    with pytest.raises(E1Error, match="returned 0 values"):
        Task(reward=RewardSpec(kind="test_task:no_values")).grade(["a"], [{}])
    with pytest.raises(E1Error, match="not one of auto, math, code"):
        RewardSpec(kind="poetry")


def bad_reward(responses, records):
    return ["nope" for _ in responses]


def no_values(responses, records):
    return []


def test_load_names_files_and_limits(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"problem": f"p{i}", "answer": str(i)}) + "\n" for i in range(5)))
    task = Task()
    sets = task.load([str(path)], limit=2)
    assert list(sets) == ["mine"] and [r["ground_truth"] for r in sets["mine"]] == ["0", "1"]
    with pytest.raises(E1Error, match="two datasets are named 'mine'"):
        task.load([str(path), str(path)])
    with pytest.raises(E1Error, match="limit must be positive"):
        task.load([str(path)], limit=0)
    with pytest.raises(E1Error, match="dataset file not found"):
        task.load([str(tmp_path / "missing.json")])
