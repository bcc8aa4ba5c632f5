"""The training prompt stream: tokenize, filter, shuffle, batch, repeat, shard (grain).

Order of operations, and why:
1. every host tokenizes and filters the whole dataset (prompts longer than
   `max_prompt_len` tokens are dropped, as the original's RLHFDataset does),
   so all hosts agree on the surviving prompts;
2. grain shuffles them with the seed, cuts each epoch into global batches of
   `batch_size` prompts (the last partial batch of an epoch is dropped, like
   the original's DataLoader with drop_last=True) and repeats, reshuffling
   every epoch;
3. each host keeps records shard_index::shard_count of every global batch.

Step i's global batch is therefore the same whatever the number of hosts, and
the iterator state (the global step) can be restored on a different host count.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grain
import numpy as np

from e1jax.data.readers import Record
from e1jax.errors import E1Error

STATE_VERSION = 1


@dataclass(frozen=True)
class FilterResult:
    kept: list[Record]  # input records (copies) with a `prompt_ids` field added
    num_dropped: int


def tokenize_and_filter(records: Sequence[Record], tokenize: Callable[[Record], Sequence[int]],
                        max_prompt_len: int) -> FilterResult:
    """Add `prompt_ids` to each record; drop those with more than `max_prompt_len` tokens."""
    if max_prompt_len <= 0:
        raise E1Error(f"max_prompt_len must be positive, got {max_prompt_len}")
    kept = []
    for record in records:
        ids = [int(t) for t in tokenize(record)]
        if len(ids) <= max_prompt_len:
            kept.append({**record, "prompt_ids": ids})
    return FilterResult(kept=kept, num_dropped=len(records) - len(kept))


class TrainIterator:
    """Yields this shard's list of records per step; get_state()/set_state() are JSON-safe."""

    def __init__(self, kept: list[Record], *, num_dropped: int, batch_size: int, seed: int,
                 shard_index: int, shard_count: int, num_epochs: int | None):
        self.num_records = len(kept)
        self.num_dropped = num_dropped
        self.batch_size = batch_size
        self.shard_batch_size = batch_size // shard_count
        self.batches_per_epoch = len(kept) // batch_size
        self.shard_index = shard_index
        self.shard_count = shard_count
        self._identity = {"seed": int(seed), "batch_size": batch_size,
                          "data_fingerprint": _fingerprint(kept)}

        take = slice(shard_index, None, shard_count)
        dataset = (
            grain.MapDataset.source(kept)
            .shuffle(seed=_shuffle_seed(seed))
            .batch(batch_size, drop_remainder=True, batch_fn=list)
            .repeat(num_epochs)  # reseeds the shuffle for each epoch
            .map(lambda batch: batch[take])
        )
        # Elements are in-memory dicts: no reader threads, so state is exactly the step.
        self._iter = dataset.to_iter_dataset(
            grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).__iter__()

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> list[Record]:
        return next(self._iter)

    @property
    def step(self) -> int:
        """Number of batches taken so far (global, identical on every shard)."""
        return int(self._iter.get_state()["next_index"])

    @property
    def epoch(self) -> int:
        return self.step // self.batches_per_epoch

    def get_state(self) -> dict[str, Any]:
        state = {"version": STATE_VERSION, **self._identity, "grain": self._iter.get_state()}
        json.dumps(state)  # the trainer stores it as JSON; fail here, not at save time
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise E1Error(f"data iterator state has version {state.get('version')}, expected {STATE_VERSION}")
        for key, value in self._identity.items():
            if state.get(key) != value:
                raise E1Error(f"data iterator state does not match this pipeline: {key} is "
                              f"{state.get(key)!r} in the checkpoint, {value!r} now")
        self._iter.set_state(state["grain"])


def make_train_iterator(records: Sequence[Record], tokenize: Callable[[Record], Sequence[int]], *,
                        batch_size: int, max_prompt_len: int, seed: int,
                        shard_index: int | None = None, shard_count: int | None = None,
                        num_epochs: int | None = None) -> TrainIterator:
    """Training iterator over `records`.

    `batch_size` is the global number of prompts per step; each shard yields
    batch_size // shard_count of them. Shard defaults: jax.process_index() /
    jax.process_count(). `num_epochs=None` repeats forever.
    """
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if shard_count <= 0 or not 0 <= shard_index < shard_count:
        raise E1Error(f"shard_index {shard_index} is not in [0, shard_count={shard_count})")
    if batch_size <= 0 or batch_size % shard_count:
        raise E1Error(f"batch_size {batch_size} must be a positive multiple of the shard count {shard_count}")
    if num_epochs is not None and num_epochs <= 0:
        raise E1Error(f"num_epochs must be positive or None (forever), got {num_epochs}")
    filtered = tokenize_and_filter(records, tokenize, max_prompt_len)
    if len(filtered.kept) < batch_size:
        raise E1Error(f"only {len(filtered.kept)} of {len(records)} prompts fit max_prompt_len="
                      f"{max_prompt_len}, fewer than batch_size={batch_size}")
    return TrainIterator(filtered.kept, num_dropped=filtered.num_dropped, batch_size=batch_size,
                         seed=seed, shard_index=shard_index, shard_count=shard_count,
                         num_epochs=num_epochs)


def _shuffle_seed(seed: int) -> int:
    # grain folds the epoch into the seed as seed + epoch; hashing the user seed first
    # keeps seed s, epoch 1 from replaying seed s + 1, epoch 0.
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def _fingerprint(records: Sequence[Record]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(f"{record.get('data_source')}\x00{record.get('id')}\x00{len(record['prompt_ids'])}\x00"
                      .encode())
        digest.update(record["problem"].encode())
    return digest.hexdigest()[:16]
