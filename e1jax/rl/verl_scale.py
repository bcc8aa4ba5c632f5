"""verl's batch layout and loss scale, as the original trains (its vendored verl:
ray_trainer._balance_batch, then dp_actor.update_policy with use_dynamic_bsz).

The step's rows are dealt to `world_size` ranks in equal-size parts balanced by sequence
length; each rank cuts its part, in order, into the step's mini-batches; within a mini-batch
each rank cuts its rows into k micro-batches balanced by length (k = the largest
ceil(tokens / max_token_len) over the ranks). Every micro-batch back-propagates the token
mean of its own trained tokens, and the ranks' gradients are averaged, so a trained token
weighs 1 / (world_size x the trained tokens of its micro-batch): about k times e1jax's
1 / (the mini-batch's trained tokens). Partitions use the largest differencing method with
verl's tie-breaking (seqlen_balancing.karmarkar_karp), so they are verl's own.
"""

from __future__ import annotations

import heapq
import math

import jax
import numpy as np

from e1jax.errors import E1Error
from e1jax.rl.batch import TrainBatch


class _Bin:
    """One part of a partition: its rows and their total length, ordered as verl orders them."""

    __slots__ = ("rows", "total")

    def __init__(self) -> None:
        self.rows: list[tuple[int, int]] = []  # (row, length)
        self.total = 0

    def absorb(self, other: "_Bin") -> None:
        self.rows += other.rows
        self.total += other.total

    def key(self) -> tuple:
        return self.total, len(self.rows), self.rows


class _Partial:
    """k bins, largest first; the heap pops the widest spread first (then the largest bin)."""

    __slots__ = ("bins",)

    def __init__(self, k: int, items: list[tuple[int, int]]) -> None:
        self.bins = [_Bin() for _ in range(k)]
        for part, (row, length) in zip(self.bins, items):
            part.rows.append((row, length))
            part.total = length
        self.bins.sort(key=_Bin.key, reverse=True)

    @property
    def spread(self) -> int:
        return self.bins[0].total - self.bins[-1].total

    def merge(self, other: "_Partial") -> None:
        for mine, theirs in zip(self.bins, reversed(other.bins)):
            mine.absorb(theirs)
        self.bins.sort(key=_Bin.key, reverse=True)

    def __lt__(self, other: "_Partial") -> bool:
        if self.spread != other.spread:
            return self.spread > other.spread
        return self.bins[0].key() > other.bins[0].key()


def balanced_partition(lengths: list[int], k: int, *, equal_size: bool = False) -> list[list[int]]:
    """`lengths`' indices in k parts of near-equal total length (the largest differencing
    method, with verl's tie-breaking), each part sorted; with `equal_size`, k parts of
    len(lengths) / k indices each."""
    if not 1 <= k <= len(lengths):
        raise E1Error(f"cannot cut {len(lengths)} rows into {k} parts")
    if equal_size and len(lengths) % k:
        raise E1Error(f"{len(lengths)} rows do not cut into {k} parts of equal size")
    ordered = [(row, length) for length, row in sorted((int(v), i) for i, v in enumerate(lengths))]
    group = k if equal_size else 1
    heap: list[_Partial] = []
    for start in range(0, len(ordered), group):
        heapq.heappush(heap, _Partial(k, ordered[start:start + group]))
    while len(heap) > 1:
        first, second = heapq.heappop(heap), heapq.heappop(heap)
        first.merge(second)
        heapq.heappush(heap, first)
    return [sorted(row for row, _ in part.rows) for part in heap[0].bins]


def verl_token_weights(seq_lengths: np.ndarray, trained_tokens: np.ndarray, *, update_rows: int,
                       world_size: int, max_token_len: int) -> np.ndarray:
    """(N,) f32: the loss weight of each trained token of a row under verl's scale.

    seq_lengths: (N,) prompt + response tokens of each row (what verl balances);
    trained_tokens: (N,) the row's loss-mask tokens; rows come in mini-batches of
    `update_rows` consecutive rows (e1jax.rl.update.step_update's)."""
    seq_lengths = np.asarray(seq_lengths, np.int64)
    trained_tokens = np.asarray(trained_tokens, np.int64)
    n = len(seq_lengths)
    if n % update_rows or update_rows % world_size:
        raise E1Error(f"{n} rows in mini-batches of {update_rows} do not deal out to {world_size} ranks")
    per_rank = update_rows // world_size
    weights = np.zeros(n, np.float32)
    for start in range(0, n, update_rows):
        blocks = [np.arange(start + r * per_rank, start + (r + 1) * per_rank) for r in range(world_size)]
        k = max(math.ceil(int(seq_lengths[b].sum()) / max_token_len) for b in blocks)
        k = min(max(k, 1), per_rank)
        for block in blocks:
            for part in balanced_partition(seq_lengths[block].tolist(), k):
                rows = block[part]
                tokens = int(trained_tokens[rows].sum())
                weights[rows] = 1.0 / (world_size * tokens) if tokens else 0.0
    return weights


def verl_row_order(seq_lengths: np.ndarray, *, update_rows: int, world_size: int) -> np.ndarray:
    """The permutation that lays a step's rows out as verl trains them: mini-batch m (rows
    m * update_rows onward) holds, rank after rank, that rank's m-th share of its
    length-balanced part of the step."""
    seq_lengths = np.asarray(seq_lengths, np.int64)
    n = len(seq_lengths)
    if n % update_rows or update_rows % world_size:
        raise E1Error(f"{n} rows in mini-batches of {update_rows} do not deal out to {world_size} ranks")
    ranks = balanced_partition(seq_lengths.tolist(), world_size, equal_size=True)
    share = update_rows // world_size
    return np.asarray([row for m in range(n // update_rows) for part in ranks
                       for row in part[m * share:(m + 1) * share]], np.int64)


def verl_batch(batch: TrainBatch, *, update_rows: int, world_size: int, max_token_len: int) -> TrainBatch:
    """A step's host TrainBatch in verl's row order, with verl's token weights."""
    seq_lengths = np.asarray(batch.attention_mask).sum(axis=1)
    order = verl_row_order(seq_lengths, update_rows=update_rows, world_size=world_size)
    batch = jax.tree.map(lambda x: np.asarray(x)[order], batch)
    weights = verl_token_weights(seq_lengths[order], np.asarray(batch.loss_mask).sum(axis=1),
                                 update_rows=update_rows, world_size=world_size, max_token_len=max_token_len)
    return batch.replace(token_weight=weights)
