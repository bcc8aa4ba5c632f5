"""The resumable output folder of an evaluation: samples.jsonl plus a small state file.

A chunk's samples are appended to samples.jsonl (flushed and fsynced), then
state.json is replaced atomically with the chunk's problems marked done and the
byte size of samples.jsonl at that point. On reopening, anything past that size
(a chunk interrupted between the two writes) is cut off, so every sample in the
file belongs to a committed chunk. A folder is only reopened with the settings
it was created with.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from e1jax.errors import E1Error

STATE_FILE = "state.json"
SAMPLES_FILE = "samples.jsonl"
RESULTS_FILE = "results.json"
STATE_VERSION = 1


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def describe_differences(old: Mapping, new: Mapping, limit: int = 3) -> str:
    """'key: old -> new' for the first `limit` differing leaves."""
    a, b = _flatten(old), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            diffs.append(f"{key}: {_short(a.get(key, '<absent>'))} -> {_short(b.get(key, '<absent>'))}")
    more = f", and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more


def _short(value: Any, width: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class RunStore:
    """samples.jsonl + state.json in `out_dir`; `done[kind][dataset]` is the set of finished problem ids."""

    def __init__(self, out_dir: Path, fingerprint: dict, state: dict):
        self.out_dir = out_dir
        self.fingerprint = fingerprint
        self._state = state
        self.done: dict[str, dict[str, set[int]]] = {
            kind: {name: set(ids) for name, ids in per.items()} for kind, per in state["done"].items()
        }

    @property
    def samples_path(self) -> Path:
        return self.out_dir / SAMPLES_FILE

    @property
    def state_path(self) -> Path:
        return self.out_dir / STATE_FILE

    @classmethod
    def open(cls, out_dir: str | Path, fingerprint: dict) -> "RunStore":
        """Create `out_dir`, or reopen it when it was created with the same fingerprint."""
        out_dir = Path(out_dir)
        fingerprint = _jsonable(fingerprint)
        if out_dir.exists() and not out_dir.is_dir():
            raise E1Error(f"--out {out_dir} exists and is not a directory")
        state_path = out_dir / STATE_FILE
        samples_path = out_dir / SAMPLES_FILE
        if state_path.is_file():
            try:
                state = json.loads(state_path.read_text(encoding="utf-8"))
                old = state["fingerprint"]
                state["done"], state["samples_bytes"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise E1Error(f"{state_path} is unreadable ({err}); use a fresh --out") from None
            if old != fingerprint:
                raise E1Error(f"--out {out_dir} was created with different settings "
                              f"({describe_differences(old, fingerprint)}); use a fresh --out or the original settings")
            store = cls(out_dir, fingerprint, state)
            store._recover()
            return store
        if samples_path.exists() or (out_dir / RESULTS_FILE).exists():
            raise E1Error(f"--out {out_dir} holds results without {STATE_FILE} (another run's output?); use a fresh --out")
        state = {"version": STATE_VERSION, "fingerprint": fingerprint, "done": {}, "samples_bytes": 0, "complete": False}
        store = cls(out_dir, fingerprint, state)
        out_dir.mkdir(parents=True, exist_ok=True)
        samples_path.touch()
        store._save_state()
        return store

    def _recover(self) -> None:
        expected = int(self._state["samples_bytes"])
        size = self.samples_path.stat().st_size if self.samples_path.is_file() else -1
        if size < expected:
            raise E1Error(f"{self.samples_path} is shorter than {STATE_FILE} records ({max(size, 0)} < {expected} bytes); "
                          "use a fresh --out")
        if size > expected:
            with self.samples_path.open("r+b") as handle:  # drop the samples of a chunk that was never committed
                handle.truncate(expected)
                handle.flush()
                os.fsync(handle.fileno())

    def _save_state(self) -> None:
        self._state["done"] = {kind: {name: sorted(ids) for name, ids in per.items()} for kind, per in self.done.items()}
        _write_atomic(self.state_path, json.dumps(self._state, indent=1) + "\n")

    def is_done(self, kind: str, dataset: str, problem_id: int) -> bool:
        return problem_id in self.done.get(kind, {}).get(dataset, ())

    def commit(self, kind: str, dataset: str, problem_ids: Sequence[int], samples: Sequence[dict]) -> None:
        """Append `samples` durably, then mark `problem_ids` of (kind, dataset) done."""
        self.done.setdefault(kind, {}).setdefault(dataset, set()).update(int(i) for i in problem_ids)
        text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
        with self.samples_path.open("ab") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
            size = handle.tell()
        self._state["samples_bytes"] = size
        self._save_state()

    def mark_complete(self) -> None:
        self._state["complete"] = True
        self._save_state()

    def iter_samples(self, fields: Sequence[str] | None = None) -> Iterator[dict]:
        """The committed samples, each cut down to `fields` when given."""
        limit = int(self._state["samples_bytes"])
        if not self.samples_path.is_file():
            return
        with self.samples_path.open("rb") as handle:
            read = 0
            for number, line in enumerate(handle, start=1):
                read += len(line)
                if read > limit:
                    break
                try:
                    sample = json.loads(line)
                except json.JSONDecodeError:
                    raise E1Error(f"{self.samples_path}:{number}: malformed JSON; use a fresh --out") from None
                yield {k: sample[k] for k in fields} if fields else sample


def agreed_done_flags(store: RunStore | None, failed: bool,
                      keys: Sequence[tuple[str, str, int]]) -> dict[tuple[str, str], list[bool]]:
    """{(kind, dataset): done flag per problem} as process 0's store has them, on every process;
    `keys` lists (kind, dataset name, number of problems).

    Every process must sample the same chunks in the same order (the sampler's collectives
    pair up across hosts), so the others take process 0's view of a resumed folder instead of
    reading it themselves: no race with process 0 creating it, no shared filesystem needed.
    `failed`: process 0 could not open the folder; the others stop too instead of waiting."""
    import jax
    import numpy as np

    flags = np.array([int(failed)] + [int(store is not None and store.is_done(kind, name, i))
                                      for kind, name, count in keys for i in range(count)], np.int32)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        flags = np.asarray(multihost_utils.broadcast_one_to_all(flags))
    if flags[0] and jax.process_index() != 0:
        raise E1Error("process 0 could not open the output folder (its error names the problem)")
    done, start = {}, 1
    for kind, name, count in keys:
        done[kind, name] = [bool(f) for f in flags[start:start + count]]
        start += count
    return done
