"""Dataset files -> plain records.

Every reader returns a list of records, one dict per problem:

    {"id": int, "data_source": str, "ability": "math" | "code",
     "problem": str, "ground_truth": str | float | list | dict}

`id` is the row's 0-based position in what was read, `problem` is the bare
problem text (no E1 instruction), and for code sets `ground_truth` holds the
tests (a list of {"input", "output"} dicts for Codeforces-style sets).

Accepted row layouts, detected per row:
- the original's JSON sets: `problem` plus `answer` (math) or `tests` (code);
  gsm8k ships `answer: null`, there the answer is read from the solution's
  final "#### X" line (else from its last \\boxed{});
- the original's verl parquet rows: `prompt` (chat messages whose last user
  message is the problem, usually followed by the E1 instruction),
  `reward_model.ground_truth`, `data_source`, `ability` (code tests are a
  JSON string there and are decoded);
- generic rows with `question` instead of `problem` or `ground_truth` instead
  of `answer`;
- DeepCoder / LiveCodeBench rows: `problem`, `tests`, `metadata.func_name`
  (attached to the tests) and, for data_source livecodebench, `starter_code`
  (the problem becomes the original's LiveCodeBench prompt, see
  `e1jax.data.deepcoder`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from e1jax.data.deepcoder import LIVECODEBENCH, lcb_prompt, with_func_name
from e1jax.data.prompts import strip_e1_instruction
from e1jax.brackets import matching_close
from e1jax.errors import E1Error

Record = dict[str, Any]

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".parquet")


def read_dataset_file(path: str | Path, *, data_source: str | None = None) -> list[Record]:
    """Read one .json / .jsonl / .parquet file; `data_source` defaults to the file stem."""
    path = Path(path)
    if not path.is_file():
        raise E1Error(f"dataset file not found: {path}")
    source = data_source if data_source is not None else path.stem
    return [normalize_row(row, index=i, data_source=source, where=where)
            for i, (row, where) in enumerate(_raw_rows(path))]


def read_dataset_files(paths: Sequence[str | Path], *, data_source: str) -> list[Record]:
    """Concatenate several files as one dataset; ids run on across files."""
    rows = [rw for p in paths for rw in _raw_rows(_existing(Path(p)))]
    return [normalize_row(row, index=i, data_source=data_source, where=where)
            for i, (row, where) in enumerate(rows)]


def read_dataset_dir(directory: str | Path, *, data_source: str, split: str | None = None) -> list[Record]:
    """Read every supported file under `directory` (sorted), optionally one split only.

    A file belongs to split S when a folder on its path is named S or its name
    starts with S followed by '-', '_' or '.' (the Hugging Face Hub layouts);
    to split "C/S" when it belongs to split S within the top folder C (a config).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise E1Error(f"dataset directory not found: {directory}")
    files = sorted(p for p in directory.rglob("*")
                   if p.is_file() and p.suffix in SUPPORTED_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(directory).parts))
    if not files:
        raise E1Error(f"no {'/'.join(SUPPORTED_SUFFIXES)} files under {directory}")
    if split is not None:
        chosen = [p for p in files if _in_split(p.relative_to(directory), split)]
        if not chosen:
            listing = ", ".join(str(p.relative_to(directory)) for p in files[:10])
            raise E1Error(f"no files of split '{split}' under {directory} (found: {listing})")
        files = chosen
    return read_dataset_files(files, data_source=data_source)


def normalize_row(row: Any, *, index: int, data_source: str, where: str) -> Record:
    """One raw row (any accepted layout) -> a record; E1Error naming `where` if malformed."""
    if not isinstance(row, Mapping):
        raise E1Error(f"{where}: expected an object, got {type(row).__name__}")
    if isinstance(row.get("prompt"), list):
        return _verl_row(row, index, data_source, where)

    problem = _first_present(row, ("problem", "question", "prompt"))
    if problem is None:
        raise E1Error(f"{where}: missing field 'problem'")
    if not isinstance(problem, str):
        raise E1Error(f"{where}: field 'problem' is {type(problem).__name__}, expected text")
    source = row.get("data_source") or data_source
    if "tests" in row:
        tests = row["tests"]
        if tests is None:
            raise E1Error(f"{where}: field 'tests' is empty")
        tests = with_func_name(_decode_tests(tests, where), row.get("metadata"), where)
        if source == LIVECODEBENCH:
            problem = lcb_prompt(problem, row.get("starter_code"))
        return _record(index, source, "code", strip_e1_instruction(problem), tests)
    answer = _first_present(row, ("answer", "ground_truth"))
    if answer is None and isinstance(row.get("reward_model"), Mapping):
        answer = row["reward_model"].get("ground_truth")
    if answer is None and isinstance(row.get("solution"), str):
        answer = answer_from_solution(row["solution"])
    if answer is None:
        raise E1Error(f"{where}: missing field 'answer' (and no solution to take it from)")
    ability = row.get("ability") or "math"
    return _record(index, source, ability, strip_e1_instruction(problem), answer)


def answer_from_solution(solution: str) -> str | None:
    """The final answer written in a reference solution: gsm8k's '#### X', else the last \\boxed{}."""
    if "####" in solution:
        answer = solution.rsplit("####", 1)[1].strip()
        return answer or None
    return last_boxed_content(solution)


def last_boxed_content(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} in `text` (braces balanced), else None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    open_at = text.find("{", start)
    if open_at < 0:
        return None
    close = matching_close(text, open_at, "{}")
    return text[open_at + 1 : close] if close >= 0 else None


def _verl_row(row: Mapping[str, Any], index: int, data_source: str, where: str) -> Record:
    users = [m for m in row["prompt"] if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), str):
        raise E1Error(f"{where}: field 'prompt' has no user message with text content")
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, Mapping) or reward_model.get("ground_truth") is None:
        raise E1Error(f"{where}: missing field 'reward_model.ground_truth'")
    ability = row.get("ability") or "math"
    ground_truth = reward_model["ground_truth"]
    if ability == "code":
        ground_truth = _decode_tests(ground_truth, where)
    source = row.get("data_source") or data_source
    return _record(index, source, ability, strip_e1_instruction(users[-1]["content"]), ground_truth)


def _record(index: int, data_source: str, ability: str, problem: str, ground_truth: Any) -> Record:
    return {"id": index, "data_source": str(data_source), "ability": str(ability),
            "problem": problem, "ground_truth": ground_truth}


def _decode_tests(tests: Any, where: str) -> Any:
    # verl parquet rows carry code tests as a JSON string.
    if isinstance(tests, str):
        try:
            return json.loads(tests)
        except json.JSONDecodeError as exc:
            raise E1Error(f"{where}: field 'tests' is text but not JSON ({exc.msg})") from None
    return tests


def _first_present(row: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        if row.get(key) is not None:
            return row[key]
    return None


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise E1Error(f"dataset file not found: {path}")
    return path


def _in_split(relative: Path, split: str) -> bool:
    config, nested, rest = split.partition("/")
    if nested:  # "config/split": the split within the config's folder
        parts = relative.parts
        return len(parts) > 1 and parts[0] == config and _in_split(Path(*parts[1:]), rest)
    if split in relative.parts[:-1]:
        return True
    name = relative.name
    return name == split or any(name.startswith(split + sep) for sep in "-_.")


def _raw_rows(path: Path) -> list[tuple[Any, str]]:
    """(row, where) pairs of one file, `where` naming the row for error messages."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        rows = _load_json_list(path)
        return [(row, f"{path.name} row {i}") for i, row in enumerate(rows)]
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".parquet":
        rows = _load_parquet(path)
        return [(row, f"{path.name} row {i}") for i, row in enumerate(rows)]
    raise E1Error(f"unsupported dataset file type '{path.suffix or path.name}' for {path} "
                  f"(supported: {', '.join(SUPPORTED_SUFFIXES)})")


def _load_json_list(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise E1Error(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); "
                      "use a .jsonl suffix for one object per line") from None
    if not isinstance(data, list):
        raise E1Error(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    return data


def read_jsonl(path: Path) -> list[tuple[Any, str]]:
    """(row, "<file> line <k>") for each non-blank line of a JSON-lines file."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append((json.loads(line), f"{path.name} line {lineno}"))
            except json.JSONDecodeError as exc:
                raise E1Error(f"{path.name} line {lineno}: not valid JSON ({exc.msg})") from None
    return rows


def _load_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for unreadable files
        raise E1Error(f"{path}: cannot read parquet ({exc})") from None
