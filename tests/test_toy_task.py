"""The toy task of the miniature demo and its tokenizer."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from e1jax.data.prompts import E1_INSTRUCTION, e1_user_message
from e1jax.errors import E1Error
from e1jax.tokenizer import Tokenizer
from e1jax.toy.sft import encode_examples
from e1jax.toy.task import ToyTaskConfig, generate_problems, response_text, trace_style
from e1jax.toy.tokenizer import build_toy_tokenizer, save_toy_tokenizer
from e1jax.toy.vocab import LABELS

CONFIG = ToyTaskConfig()


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return generate_problems(2000, seed=7, config=CONFIG)


@pytest.fixture(scope="module")
def tokenizer():
    return build_toy_tokenizer()


@pytest.fixture(scope="module")
def e1_tokenizer(tokenizer):
    return Tokenizer.from_hf(tokenizer)


def _parse_problem(problem: str) -> list[int]:
    match = re.fullmatch(r"Sum mod 10: ((?:[a-t]\d ?)+)", problem)
    assert match, problem
    items = match.group(1).split(" ")
    assert [item[0] for item in items] == list(LABELS[: len(items)])
    return [int(item[1]) for item in items]


# ---------------------------------------------------------------- generation


def test_generation_is_deterministic_by_seed():
    first = generate_problems(50, seed=3)
    assert first == generate_problems(50, seed=3)
    assert [r["problem"] for r in first] != [r["problem"] for r in generate_problems(50, seed=4)]
    assert [r["id"] for r in first] == list(range(50))
    assert generate_problems(0, seed=3) == []


def test_records_have_the_e1jax_shape(records):
    for r in records[:20]:
        assert r["data_source"] == "toy"
        assert isinstance(r["problem"], str) and isinstance(r["ground_truth"], str)
        assert r["solution"] == f"The answer is \\boxed{{{r['ground_truth']}}}."
        assert r["sft_style"] in ("verbose", "concise")


def test_difficulty_spread_and_style_mix(records):
    steps = Counter(r["num_steps"] for r in records)
    assert set(steps) == set(range(CONFIG.min_steps, CONFIG.max_steps + 1))
    assert min(steps.values()) > len(records) / len(steps) / 2
    verbose_share = np.mean([r["sft_style"] == "verbose" for r in records])
    assert abs(verbose_share - CONFIG.verbose_fraction) < 0.04
    answers = Counter(r["ground_truth"] for r in records)
    assert set(answers) == {str(d) for d in range(10)}
    # Longer problems think longer, in both styles; verbose is several times longer.
    by_k = {k: [r for r in records if r["num_steps"] == k] for k in steps}
    for style in ("verbose", "concise"):
        lengths = [np.mean([len(r[f"thinking_{style}"]) for r in by_k[k]]) for k in sorted(by_k)]
        assert all(a < b for a, b in zip(lengths, lengths[1:]))


def test_config_is_checked():
    for bad in (
        dict(min_steps=0),
        dict(min_steps=5, max_steps=4),
        dict(max_steps=len(LABELS) + 1),
        dict(verbose_fraction=1.5),
        dict(check_every=-1),
    ):
        with pytest.raises(E1Error):
            ToyTaskConfig(**bad)
    with pytest.raises(E1Error):
        generate_problems(-1, seed=0)
    with pytest.raises(E1Error):
        response_text(generate_problems(1, seed=0)[0], "terse")
    extreme = generate_problems(200, seed=1, config=ToyTaskConfig(min_steps=1, max_steps=20, verbose_fraction=1.0))
    assert {r["sft_style"] for r in extreme} == {"verbose"}
    assert max(r["num_steps"] for r in extreme) == 20


def test_traces_are_correct(records):
    """Recompute every trace from the problem text alone."""
    for r in records:
        digits = _parse_problem(r["problem"])
        assert len(digits) == r["num_steps"] == len(r["digits"])
        assert r["ground_truth"] == str(sum(digits) % 10)

        concise = r["thinking_concise"].split(" ")
        total = 0
        for i, (item, d) in enumerate(zip(concise, digits, strict=True)):
            total = (total + d) % 10
            assert item == f"{LABELS[i]}{d}={total}"

        total, i = 0, 0
        for step in r["thinking_verbose"].split(" "):
            if step.startswith("check"):
                s, d, prev = (int(g) for g in re.fullmatch(r"check:(\d)-(\d)=(\d)", step).groups())
                assert i % CONFIG.check_every == 0
                assert (s, d, prev) == (total, digits[i - 1], (total - digits[i - 1]) % 10)
                continue
            if step == "ok":
                continue
            m = re.fullmatch(r"([a-t])(\d):(\d)\+(\d)=(\d)", step)
            label, shown, prev, d, s = m.group(1), *(int(g) for g in m.groups()[1:])
            assert (label, shown, prev, d) == (LABELS[i], digits[i], total, digits[i])
            total = (total + d) % 10
            assert s == total
            i += 1
        assert i == len(digits)


def test_trace_style_reads_the_first_step(records):
    for r in records[:100]:
        assert trace_style(response_text(r, "verbose")) == "verbose"
        assert trace_style(response_text(r, "concise")) == "concise"
        assert trace_style(r["thinking_concise"][:3]) == "concise"
    assert trace_style("</think>The answer is \\boxed{3}.") is None
    assert trace_style("b3=3") is None


def test_sft_examples_are_the_chat_template_conversation(records, tokenizer, e1_tokenizer):
    r = next(x for x in records if x["sft_style"] == "concise")
    prompt = e1_tokenizer.prompt_text(r["problem"])
    assert prompt == "<|User|>" + e1_user_message(r["problem"]) + "<|Assistant|><think>"
    assert E1_INSTRUCTION in prompt
    assert response_text(r) == r["thinking_concise"] + "</think>" + r["solution"]
    assert response_text(r, "verbose") == r["thinking_verbose"] + "</think>" + r["solution"]
    messages = [{"role": "user", "content": e1_user_message(r["problem"])}]
    for style in ("verbose", "concise"):
        [(prompt_ids, response_ids)] = encode_examples([r], e1_tokenizer, style)
        conversation = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": response_text(r, style)}], tokenize=False)
        assert prompt_ids == _ids(tokenizer, prompt)
        assert prompt_ids + response_ids == _ids(tokenizer, conversation)


def test_rendered_responses_grade_with_the_math_reward(records):
    grade_math = pytest.importorskip("e1jax.rewards.math").grade_math
    for r in records[:50]:
        for style in ("verbose", "concise"):
            result = grade_math(response_text(r, style), r["ground_truth"])
            assert result.correct and result.reason == "correct", (r, result)
    r = records[0]
    wrong = str((int(r["ground_truth"]) + 1) % 10)
    wrong_response = r["thinking_concise"] + "</think>" + r["solution"].replace(r["ground_truth"], wrong)
    assert grade_math(wrong_response, r["ground_truth"]).reason == "mismatch"
    # Truncated thinking closed by the forced </think> still needs a boxed answer after it.
    assert grade_math(r["thinking_verbose"][:10], r["ground_truth"]).reason == "format_error"
    assert grade_math(r["thinking_verbose"][:10] + "</think>" + r["solution"], r["ground_truth"]).correct


# ----------------------------------------------------------------- tokenizer


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_tokenizer_round_trips_every_task_text(records, tokenizer, e1_tokenizer):
    assert len(tokenizer) < 100
    for r in records[:300]:
        prompt = e1_tokenizer.prompt_text(r["problem"])
        for text in (prompt, r["problem"], r["thinking_verbose"], r["thinking_concise"], r["solution"]):
            ids = _ids(tokenizer, text)
            assert tokenizer.unk_token_id not in ids, text
            assert tokenizer.decode(ids) == text
        full = prompt + response_text(r, "verbose")
        assert tokenizer.decode(_ids(tokenizer, full)) == full


def test_tokenizer_pieces(tokenizer):
    assert tokenizer.convert_ids_to_tokens(_ids(tokenizer, "The answer is \\boxed{7}.")) == [
        "The", " answer", " is", " \\boxed{", "7", "}", ".",
    ]
    assert len(_ids(tokenizer, E1_INSTRUCTION)) == 1
    assert len(_ids(tokenizer, "a:0+13=3;")) == 9  # digits are one token each
    assert _ids(tokenizer, "a3 b0") == _ids(tokenizer, "a3") + _ids(tokenizer, " b0")
    # Text outside the vocabulary degrades to <unk> instead of failing.
    assert _ids(tokenizer, "x") == [tokenizer.unk_token_id]


def test_special_tokens(tokenizer):
    vocab = tokenizer.get_vocab()
    for token in ("<|endoftext|>", "<think>", "</think>", "<|User|>", "<|Assistant|>"):
        assert token in vocab
        assert _ids(tokenizer, token) == [vocab[token]]
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == vocab["<|endoftext|>"]
    assert tokenizer.bos_token is None
    # Like R1-Distill, the think tags are not special: decoding without specials keeps them.
    text = "a3</think>The answer is \\boxed{3}.<|endoftext|>"
    assert tokenizer.decode(_ids(tokenizer, text), skip_special_tokens=True) == text.removesuffix("<|endoftext|>")


def test_saved_tokenizer_loads_with_autotokenizer_and_chat_template(tmp_path, records, e1_tokenizer):
    transformers = pytest.importorskip("transformers")
    save_toy_tokenizer(tmp_path)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    r = records[0]
    user = e1_user_message(r["problem"])
    messages = [{"role": "user", "content": user}]
    rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == e1_tokenizer.prompt_text(r["problem"])
    assert rendered.endswith("<think>")
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert ids == _ids(tok, rendered)
    assert ids[-1] == tok.convert_tokens_to_ids("<think>")
    # A whole conversation renders as prompt + response + EOS.
    response = response_text(r)
    conversation = tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    assert conversation == rendered + response + tok.eos_token
    assert tok.decode(_ids(tok, rendered + response)) == rendered + response
    assert tok.eos_token_id == tok.pad_token_id == build_toy_tokenizer().eos_token_id


def test_token_lengths(records, tokenizer, e1_tokenizer):
    """The lengths the demo's budgets are sized for (printed with -s)."""
    lengths = {
        "prompt": [len(e1_tokenizer.encode_prompt(r["problem"])) for r in records],
        "verbose": [len(_ids(tokenizer, r["thinking_verbose"])) for r in records],
        "concise": [len(_ids(tokenizer, r["thinking_concise"])) for r in records],
        "solution": [len(_ids(tokenizer, r["solution"])) for r in records],
    }
    for name, values in lengths.items():
        p = np.percentile(values, [0, 50, 90, 100])
        print(f"{name}: min {p[0]:.0f} median {p[1]:.0f} p90 {p[2]:.0f} max {p[3]:.0f} mean {np.mean(values):.1f}")
    steps = np.array([r["num_steps"] for r in records])
    assert lengths["concise"] == list(4 * steps)
    assert lengths["verbose"] == list(8 * steps + 8 * (steps // CONFIG.check_every))
    assert set(lengths["solution"]) == {7}
    assert max(lengths["prompt"]) <= 2 * CONFIG.max_steps + 5
