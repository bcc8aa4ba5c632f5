"""The grain training pipeline: filtering, shuffling, epochs, sharding, checkpointing."""

from __future__ import annotations

import itertools
import json

import pytest

from e1jax.data.pipeline import make_train_iterator, tokenize_and_filter
from e1jax.errors import E1Error


def make_records(n: int) -> list[dict]:
    # problem i has (i % 17) + 1 words, so its token count is known
    return [{"id": i, "data_source": "toy", "ability": "math", "problem": " ".join(["w"] * ((i % 17) + 1)),
             "ground_truth": str(i)} for i in range(n)]


def tokenize(record: dict) -> list[int]:
    return [len(word) + 100 * record["id"] for word in record["problem"].split()]


def ids(batch: list[dict]) -> list[int]:
    return [r["id"] for r in batch]


def take(iterator, n: int) -> list[list[int]]:
    return [ids(b) for b in itertools.islice(iterator, n)]


def test_filter_drops_long_prompts_and_adds_ids():
    records = make_records(100)
    result = tokenize_and_filter(records, tokenize, max_prompt_len=10)
    expected_kept = [r["id"] for r in records if (r["id"] % 17) + 1 <= 10]
    assert [r["id"] for r in result.kept] == expected_kept
    assert result.num_dropped == 100 - len(expected_kept)
    assert all(r["prompt_ids"] == tokenize(r) for r in result.kept)
    assert "prompt_ids" not in records[0]  # inputs untouched
    with pytest.raises(E1Error, match="max_prompt_len"):
        tokenize_and_filter(records, tokenize, max_prompt_len=0)


def test_iterator_filters_and_counts():
    it = make_train_iterator(make_records(100), tokenize, batch_size=8, max_prompt_len=10, seed=0,
                             shard_index=0, shard_count=1, num_epochs=1)
    kept = [i for i in range(100) if (i % 17) + 1 <= 10]
    assert it.num_dropped == 100 - len(kept) and it.num_records == len(kept)
    batches = list(it)
    assert len(batches) == it.batches_per_epoch == len(kept) // 8
    seen = [r["id"] for b in batches for r in b]
    assert len(seen) == len(set(seen)) == len(batches) * 8  # one epoch: no repeats, partial batch dropped
    assert set(seen) <= set(kept)
    assert all(len(r["prompt_ids"]) <= 10 and r["prompt_ids"] == tokenize(r) for b in batches for r in b)


def test_same_seed_same_order_different_seed_different():
    records = make_records(64)

    def first(seed):
        return take(make_train_iterator(records, tokenize, batch_size=8, max_prompt_len=100, seed=seed,
                                        shard_index=0, shard_count=1), 8)

    assert first(1) == first(1)
    assert first(1) != first(2)
    assert sorted(sum(first(1), [])) == list(range(64))  # a permutation, not the identity
    assert sum(first(1), []) != list(range(64))


def test_epochs_reshuffle_and_finite_epochs_stop():
    it = make_train_iterator(make_records(32), tokenize, batch_size=8, max_prompt_len=100, seed=3,
                             shard_index=0, shard_count=1, num_epochs=3)
    batches = take(it, 100)
    assert len(batches) == 12
    epochs = [sum(batches[i:i + 4], []) for i in range(0, 12, 4)]
    assert all(sorted(e) == list(range(32)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert it.step == 12 and it.epoch == 3


def test_infinite_by_default():
    it = make_train_iterator(make_records(10), tokenize, batch_size=5, max_prompt_len=100, seed=0,
                             shard_index=0, shard_count=1)
    assert len(take(it, 50)) == 50


@pytest.mark.parametrize("shard_count", [2, 4])
def test_shards_partition_the_global_batches(shard_count):
    records = make_records(48)
    kwargs = dict(batch_size=8, max_prompt_len=100, seed=5, num_epochs=2)
    single = take(make_train_iterator(records, tokenize, shard_index=0, shard_count=1, **kwargs), 100)
    shards = [take(make_train_iterator(records, tokenize, shard_index=s, shard_count=shard_count, **kwargs), 100)
              for s in range(shard_count)]
    assert all(len(s) == len(single) == 12 for s in shards)
    for step, global_batch in enumerate(single):
        parts = [shard[step] for shard in shards]
        assert all(len(p) == 8 // shard_count for p in parts)
        assert sorted(sum(parts, [])) == sorted(global_batch)  # disjoint and complete
        assert all(p == global_batch[s::shard_count] for s, p in enumerate(parts))


def test_default_shard_is_this_jax_process():
    it = make_train_iterator(make_records(16), tokenize, batch_size=4, max_prompt_len=100, seed=0)
    assert (it.shard_index, it.shard_count) == (0, 1)
    assert len(next(it)) == 4


def test_checkpoint_restore_is_exact():
    records = make_records(40)
    kwargs = dict(batch_size=6, max_prompt_len=12, seed=11, shard_index=1, shard_count=2)
    it = make_train_iterator(records, tokenize, **kwargs)
    take(it, 9)  # crosses an epoch boundary (5 batches per epoch)
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON round trip
    expected = [[dict(r) for r in b] for b in itertools.islice(it, 7)]

    fresh = make_train_iterator(records, tokenize, **kwargs)
    take(fresh, 2)  # restoring must not depend on where the fresh iterator was
    fresh.set_state(state)
    assert [list(b) for b in itertools.islice(fresh, 7)] == expected
    assert fresh.step == 16


def test_state_restores_on_another_shard_count():
    records = make_records(40)
    kwargs = dict(batch_size=8, max_prompt_len=100, seed=2)
    one = make_train_iterator(records, tokenize, shard_index=0, shard_count=1, **kwargs)
    take(one, 3)
    state = one.get_state()
    global_batch = ids(next(one))
    half = make_train_iterator(records, tokenize, shard_index=1, shard_count=2, **kwargs)
    half.set_state(state)
    assert ids(next(half)) == global_batch[1::2]


def test_state_from_another_pipeline_is_rejected():
    records = make_records(40)
    it = make_train_iterator(records, tokenize, batch_size=8, max_prompt_len=100, seed=1, shard_index=0, shard_count=1)
    state = it.get_state()
    other_seed = make_train_iterator(records, tokenize, batch_size=8, max_prompt_len=100, seed=2,
                                     shard_index=0, shard_count=1)
    with pytest.raises(E1Error, match="seed"):
        other_seed.set_state(state)
    other_data = make_train_iterator(records[:-1], tokenize, batch_size=8, max_prompt_len=100, seed=1,
                                     shard_index=0, shard_count=1)
    with pytest.raises(E1Error, match="data_fingerprint"):
        other_data.set_state(state)


def test_bad_arguments():
    records = make_records(20)
    with pytest.raises(E1Error, match="multiple of the shard count"):
        make_train_iterator(records, tokenize, batch_size=6, max_prompt_len=100, seed=0, shard_index=0, shard_count=4)
    with pytest.raises(E1Error, match="shard_index 4"):
        make_train_iterator(records, tokenize, batch_size=8, max_prompt_len=100, seed=0, shard_index=4, shard_count=4)
    with pytest.raises(E1Error, match="fewer than batch_size"):
        make_train_iterator(records, tokenize, batch_size=8, max_prompt_len=1, seed=0, shard_index=0, shard_count=1)
    with pytest.raises(E1Error, match="num_epochs"):
        make_train_iterator(records, tokenize, batch_size=8, max_prompt_len=100, seed=0, shard_index=0,
                            shard_count=1, num_epochs=0)
