"""Tokenizer, chat template and the E1 prompt; special ids come from the tokenizer itself."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from e1jax.data.prompts import e1_user_message
from e1jax.errors import E1Error

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def _single_token_id(tokenizer: Any, text: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(text)
    if token_id is not None and token_id != tokenizer.unk_token_id and isinstance(token_id, int):
        return token_id
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


@dataclasses.dataclass
class Tokenizer:
    """A transformers tokenizer with the ids E1 needs."""

    hf: Any
    think_open_id: int | None
    think_close_id: int
    eos_ids: tuple[int, ...]
    pad_id: int

    @classmethod
    def load(cls, model_dir: str | Path) -> "Tokenizer":
        from transformers import AutoTokenizer

        model_dir = Path(model_dir)
        if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")):
            raise E1Error(f"no tokenizer files in {model_dir} (pass token ids instead, or add tokenizer.json)")
        try:
            if _declares_generic_backend(model_dir):
                # transformers 5's AutoTokenizer swaps in the model type's own tokenizer class
                # (Qwen2Tokenizer for a qwen2 config.json), rebuilding a custom tokenizer.json
                # (such as the demo's word-level one) wrongly; the generic class reads it as saved.
                from transformers import PreTrainedTokenizerFast

                hf = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
            else:
                hf = AutoTokenizer.from_pretrained(str(model_dir))
        except Exception as err:
            raise E1Error(f"cannot load the tokenizer in {model_dir}: {err}".splitlines()[0]) from err
        return cls.from_hf(hf, model_dir)

    @classmethod
    def from_hf(cls, hf: Any, model_dir: str | Path | None = None) -> "Tokenizer":
        close_id = _single_token_id(hf, THINK_CLOSE)
        if close_id is None:
            raise E1Error("the tokenizer has no single </think> token; elastic reasoning needs one")
        eos_ids = []
        if hf.eos_token_id is not None:
            eos_ids.append(int(hf.eos_token_id))
        if model_dir is not None:
            eos_ids += _generation_config_eos(Path(model_dir))
        eos_ids = tuple(dict.fromkeys(eos_ids))
        if not eos_ids:
            raise E1Error("the tokenizer defines no EOS token")
        pad_id = hf.pad_token_id if hf.pad_token_id is not None else eos_ids[0]
        return cls(hf, _single_token_id(hf, THINK_OPEN), close_id, eos_ids, int(pad_id))

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def prompt_text(self, problem: str, *, chat_template: bool = True, e1_instruction: bool = True) -> str:
        message = e1_user_message(problem) if e1_instruction else problem
        if not chat_template:
            return message
        if not self.has_chat_template:
            raise E1Error("the tokenizer has no chat template; pass --no-chat-template")
        return self.hf.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)

    def encode_prompt(self, problem: str, *, chat_template: bool = True, e1_instruction: bool = True) -> list[int]:
        text = self.prompt_text(problem, chat_template=chat_template, e1_instruction=e1_instruction)
        # The rendered template already holds BOS and special tokens.
        return self.encode(text, add_special_tokens=not chat_template)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _declares_generic_backend(model_dir: Path) -> bool:
    import json

    path = model_dir / "tokenizer_config.json"
    if not (path.is_file() and (model_dir / "tokenizer.json").is_file()):
        return False
    try:
        declared = json.loads(path.read_text()).get("tokenizer_class")
    except json.JSONDecodeError:
        return False
    return declared in ("TokenizersBackend", "PreTrainedTokenizerFast")


def _generation_config_eos(model_dir: Path) -> list[int]:
    import json

    path = model_dir / "generation_config.json"
    if not path.is_file():
        return []
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except json.JSONDecodeError:
        return []
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]
