"""The toy task's tokenizer: a word-level vocabulary of under 100 tokens.

Each vocabulary string is matched literally (longest first) by a regex
pre-tokenizer, and decoding concatenates tokens, so every task text round-trips
exactly. Spaces belong to the token they precede (`` b``, `` check``), which
keeps the traces as short as their visible pieces. Digits are one token each,
``\\boxed{`` is one token, and the whole E1 instruction is one token, so the toy
prompt goes through the same E1 prompt builder as real models.

The chat template mimics DeepSeek-R1-Distill: ``<|User|>{content}<|Assistant|><think>``
with the generation prompt; an assistant message renders as its content followed by
EOS, so prompt + response + EOS equals the rendered conversation. As in R1-Distill,
``<think>``/``</think>`` are added but not special (they survive
``skip_special_tokens``); EOS = pad = ``<|endoftext|>``; there is no BOS.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from e1jax.data.prompts import E1_INSTRUCTION
from e1jax.toy.vocab import ASSISTANT, EOS, SPECIAL_TOKENS, THINK_OPEN, THINK_TOKENS, UNK, USER, word_vocabulary

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] }}"
    "{%- elif message['role'] == 'user' -%}" + USER + "{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}" + ASSISTANT + THINK_OPEN + "{{ message['content'] }}" + EOS +
    "{%- else -%}{{ raise_exception('toy chat template: unknown role ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ASSISTANT + THINK_OPEN + "{%- endif -%}"
)


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    words = word_vocabulary()
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    # Any character outside the vocabulary becomes its own piece, hence <unk>.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(f"{alternatives}|[\\s\\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in (*THINK_TOKENS, E1_INSTRUCTION)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=UNK,
        extra_special_tokens=[USER, ASSISTANT],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )


def save_toy_tokenizer(directory: str | Path) -> PreTrainedTokenizerFast:
    """Write the toy tokenizer to `directory` (loadable with AutoTokenizer) and return it."""
    tokenizer = build_toy_tokenizer()
    tokenizer.save_pretrained(str(directory))
    return tokenizer
