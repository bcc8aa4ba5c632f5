"""The peer: transformers' PyTorch `generate`, run in its own process by `e1jax bench`.

e1jax never imports torch; this script is executed as a subprocess and prints JSON.
Usage: python -m e1jax.bench.peer_transformers MODEL_DIR BATCH PROMPT_LEN NEW_TOKENS [THREADS]
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> None:
    import torch
    import transformers

    model_dir, batch, prompt_len, new_tokens = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    if len(argv) > 4:
        torch.set_num_threads(int(argv[4]))
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, vocab, (batch, prompt_len), generator=generator)
    mask = torch.ones_like(prompts)

    def run():
        with torch.no_grad():
            return model.generate(prompts, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, pad_token_id=0, eos_token_id=None)

    run()  # warm-up
    start = time.perf_counter()
    out = run()
    elapsed = time.perf_counter() - start
    generated = (out.shape[1] - prompt_len) * batch
    print(json.dumps({"tokens_per_s": generated / elapsed, "seconds": elapsed, "generated": generated}))


if __name__ == "__main__":
    main(sys.argv[1:])
