"""Datasets: JSONL and CSV files, and the built-in sets (:mod:`.builtin`), read into items.

Everything is checked before the first model call: a file too large, a line that is not JSON,
a row without a required input or target each raise one :class:`InputError` naming the file, the
line and the field. Columns named like the flow's inputs fill them (``--input NAME=COLUMN`` maps
another column); ``target`` is the reference (``--target COLUMN``); an ``id`` column is kept,
else the line number is the item's id.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

#: A dataset file larger than this is refused unread (a JSONL of a few thousand problems is a few MiB).
MAX_FILE_BYTES = 256 * 1024 * 1024
#: Items one eval may hold; past it, shard the file.
MAX_ITEMS = 100_000
#: Characters one CSV cell may hold (Python's csv default is 128 KiB).
MAX_CELL = 4 * 1024 * 1024


@dataclass
class Item:
    """One dataset row: its id, the flow's inputs, the reference answer, and every other column
    (``fields``: tests for the code scorer, a rubric for the judge...)."""

    id: str
    inputs: dict[str, Any]
    target: Any = None
    line: int = 0
    fields: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """What a ``python:`` scorer receives besides the answer."""
        return {"id": self.id, "inputs": dict(self.inputs), "target": self.target, "line": self.line,
                "fields": dict(self.fields)}


@dataclass
class Columns:
    """How rows map to the flow: ``inputs`` (input name -> column) and the target column."""

    inputs: dict[str, str] = field(default_factory=dict)
    target: str | None = None


@dataclass
class Rows:
    """A dataset as read: its rows (column -> value, with the line each came from), before mapping.
    Built-in sets bring their own scorer and checker (reasoning-gym's)."""

    name: str
    rows: list[tuple[int, dict[str, Any]]]
    default_scorer: str | None = None
    checker: Callable[[str, Item], float] | None = None


@dataclass
class Dataset:
    """Items ready to run, with what identifies them (``digest``: a resumed eval checks it)."""

    name: str
    items: list[Item]
    digest: str
    default_scorer: str | None = None
    checker: Callable[[str, Item], float] | None = None


def parse_columns(inputs: list[str], target: str | None) -> Columns:
    """``--input NAME=COLUMN`` pairs and ``--target COLUMN``."""
    out: dict[str, str] = {}
    for pair in inputs:
        name, sep, column = pair.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise InputError(f"--input {pair!r}: expected NAME=COLUMN (the flow input NAME is filled "
                             "from the dataset's COLUMN)")
        out[name.strip()] = column.strip()
    return Columns(out, target.strip() if target else None)


def read_rows(spec: str) -> Rows:
    """The rows of a dataset: a built-in name (``humaneval``, ``reasoning-gym:TASK?n=&seed=``) or
    a ``.jsonl`` / ``.csv`` file."""
    from .builtin import builtin_rows, is_builtin

    if is_builtin(spec):
        return builtin_rows(spec)
    path = Path(spec)
    if not path.exists():
        raise InputError("no such dataset file", where=spec,
                         hint="pass a .jsonl or .csv file, 'humaneval' or 'reasoning-gym:TASK'")
    if path.is_dir():
        raise InputError("is a directory, not a dataset file", where=spec)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InputError(f"dataset is {size:,} bytes, over the limit of {MAX_FILE_BYTES:,}", where=spec,
                         hint="split it, or run slices with --limit / --shard")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})", where=f"{spec}:{line}",
                         hint="save the file as UTF-8") from None
    if path.suffix.lower() == ".csv":
        return Rows(spec, _csv_rows(text, spec))
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return Rows(spec, _jsonl_rows(text, spec))
    raise InputError(f"unknown dataset format {path.suffix or '(no extension)'!r}", where=spec,
                     hint="use .jsonl (one JSON object a line) or .csv (a header row)")


def _jsonl_rows(text: str, name: str) -> list[tuple[int, dict[str, Any]]]:
    if text.lstrip().startswith("["):
        raise InputError("a JSON array, not JSON Lines", where=f"{name}:1",
                         hint=f"write one object a line, e.g. jq -c '.[]' {name} > data.jsonl")
    rows: list[tuple[int, dict[str, Any]]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            raise InputError(f"not a JSON line: {detail}", where=f"{name}:{n}",
                             hint="each line must be one JSON object, like {\"prompt\": ..., \"target\": ...}"
                             ) from None
        if not isinstance(row, dict):
            raise InputError(f"a JSON {type(row).__name__}, not an object", where=f"{name}:{n}",
                             hint="each line must be one JSON object, like {\"prompt\": ..., \"target\": ...}")
        rows.append((n, row))
        _check_count(rows, name)
    if not rows:
        raise InputError("the dataset holds no rows", where=name)
    return rows


def _csv_rows(text: str, name: str) -> list[tuple[int, dict[str, Any]]]:
    csv.field_size_limit(MAX_CELL)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict[str, Any]]] = []
    try:
        header = reader.fieldnames
        if not header:
            raise InputError("the CSV file has no header row", where=f"{name}:1",
                             hint="the first line names the columns, e.g. prompt,target")
        if len(set(header)) != len(header):
            dup = next(h for h in header if header.count(h) > 1)
            raise InputError(f"column {dup!r} appears twice in the header", where=f"{name}:1")
        start = reader.line_num + 1
        for row in reader:
            if None in row:
                raise InputError(f"more cells than the header has columns ({len(header)})",
                                 where=f"{name}:{start}")
            if any(v is None for v in row.values()):
                missing = next(k for k, v in row.items() if v is None)
                raise InputError(f"field {missing!r} is missing (fewer cells than columns)",
                                 where=f"{name}:{start}")
            rows.append((start, dict(row)))
            _check_count(rows, name)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(f"not valid CSV: {exc}", where=f"{name}:{reader.line_num}") from None
    if not rows:
        raise InputError("the dataset holds no rows", where=name)
    return rows


def _check_count(rows: list[Any], name: str) -> None:
    if len(rows) > MAX_ITEMS:
        raise InputError(f"more than {MAX_ITEMS:,} rows", where=name, hint="split the file, or use --shard")


def to_items(rows: Rows, flow_inputs: dict[str, bool], columns: Columns, needs_target: bool) -> Dataset:
    """Map rows to items: each flow input from its column (``flow_inputs``: name -> required),
    the target, the id. A row missing a required input or the target, or an id seen twice, is
    refused with its file and line."""
    for name in columns.inputs:
        if name not in flow_inputs:
            raise InputError(f"--input {name}={columns.inputs[name]}: the flow has no input {name!r}",
                             hint=f"its inputs: {', '.join(flow_inputs) or 'none'}")
    target_col = columns.target or "target"
    items: list[Item] = []
    seen: dict[str, int] = {}
    for line, row in rows.rows:
        where = f"{rows.name}:{line}"
        inputs: dict[str, Any] = {}
        for name, required in flow_inputs.items():
            column = columns.inputs.get(name, name)
            value = row.get(column)
            if value is None or (isinstance(value, str) and not value.strip()):
                if required:
                    mapped = f" (mapped from column {column!r})" if column != name else ""
                    raise InputError(f"field {column!r} is missing or empty: it fills the flow's required "
                                     f"input {name!r}{mapped}", where=where,
                                     hint=f"add it, or map another column with --input {name}=COLUMN")
                continue
            inputs[name] = value if isinstance(value, str | list) else json.dumps(value) \
                if isinstance(value, dict) else str(value)
        target = row.get(target_col)
        if needs_target and (target is None or (isinstance(target, str) and not target.strip())):
            raise InputError(f"field {target_col!r} (the target) is missing or empty", where=where,
                             hint="the scorer compares answers with it; name another column with --target COLUMN")
        raw_id = row.get("id")
        item_id = str(raw_id) if raw_id not in (None, "") else str(line)
        if item_id in seen:
            raise InputError(f"field 'id': {item_id!r} is also the id of line {seen[item_id]}", where=where,
                             hint="ids must be unique (or drop the id column: line numbers are used)")
        seen[item_id] = line
        used = {*(columns.inputs.get(n, n) for n in flow_inputs), target_col, "id"}
        extra = {k: v for k, v in row.items() if k not in used}
        items.append(Item(item_id, inputs, target, line, extra))
    return Dataset(rows.name, items, digest(items), rows.default_scorer, rows.checker)


def digest(items: list[Item]) -> str:
    """A hash of the items (ids, inputs, targets): a resumed eval must see the same items."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.id, it.inputs, it.target], sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def select(dataset: Dataset, limit: int | None, shard: tuple[int, int] | None) -> list[Item]:
    """The items this eval runs: the first ``limit``, then shard ``i`` of ``N`` (every N-th item,
    so shards are balanced and their union is the whole)."""
    items = dataset.items[:limit] if limit else list(dataset.items)
    if shard is not None:
        i, n = shard
        items = items[i - 1::n]
    return items


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``i/N`` with 1 <= i <= N."""
    if not text:
        return None
    try:
        i, n = (int(p) for p in text.split("/", 1))
    except ValueError:
        raise InputError(f"--shard {text!r}: expected i/N, like 1/4") from None
    if not 1 <= i <= n:
        raise InputError(f"--shard {text!r}: i must be between 1 and N")
    return i, n
