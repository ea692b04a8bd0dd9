"""The eval record: one JSON document per eval under ``evals/<id>.json``, written atomically after
every finished item and arm (so a killed eval, kill -9 included, keeps every finished item for
``--resume``), versioned like run records. Each item's arms link their run records under runs/.

Derived figures (scores, intervals, p-values) are not stored: :mod:`.analysis` computes them from
the items, the same way each time (the bootstrap has a fixed seed)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from ulid import ULID

from .._version import __version__
from ..errors import InputError
from ..records.store import write_atomic

SCHEMA_VERSION = 1
MAX_RECORD_BYTES = 512 * 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageScore(_Model):
    """The flow's answer as it stood at one stage (after the creator, after round 1...), scored."""

    stage: str
    value: float
    passed: bool


class PairRecord(_Model):
    """The judge's pairwise verdict between the flow's answer and a baseline's, both orders."""

    winner: Literal["flow", "baseline", "tie"]
    flipped: bool
    picks: list[str | None] = Field(default_factory=list)
    run_ids: list[str] = Field(default_factory=list)


class ArmResult(_Model):
    """One arm on one item: its answer and score, the runs that made it, what it spent."""

    status: Literal["succeeded", "failed"]
    answer: str | None = None
    value: float = 0.0
    passed: bool = False
    detail: str = ""
    error: str | None = None
    run_ids: list[str] = Field(default_factory=list)
    k: int | None = None
    calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    scoring_cost_usd: float = 0.0
    stages: list[StageScore] = Field(default_factory=list)  # the flow arm: score per round
    flips: dict[str, int] = Field(default_factory=dict)  # right_to_wrong, wrong_to_right, agents...
    votes: dict[str, int] = Field(default_factory=dict)  # self-consistency: count per answer key
    pairs: dict[str, PairRecord] = Field(default_factory=dict)  # the flow arm: baseline -> verdict


class ItemRecord(_Model):
    id: str
    line: int
    target: Any = None
    arms: dict[str, ArmResult] = Field(default_factory=dict)


class ArmRecord(_Model):
    name: str
    kind: str
    flow: str | None = None
    k: int | None = None
    model: str | None = None


class EvalRecord(_Model):
    schema_version: int = SCHEMA_VERSION
    kind: Literal["deliberate.eval"] = "deliberate.eval"
    eval_id: str
    status: Literal["running", "finished", "stopped", "failed"] = "running"
    stop_reason: str | None = None
    created_at: float
    finished_at: float | None = None
    flow: str
    flow_hash: str
    dataset: str
    dataset_digest: str
    scorer: str
    match: Literal["calls", "tokens"] = "calls"
    arms: list[ArmRecord]
    options: dict[str, Any] = Field(default_factory=dict)
    item_ids: list[str] = Field(default_factory=list)  # this eval's items, in dataset order
    items: dict[str, ItemRecord] = Field(default_factory=dict)
    merged_from: list[str] = Field(default_factory=list)
    deliberate_version: str = __version__

    def arm(self, name: str) -> ArmRecord:
        return next(a for a in self.arms if a.name == name)

    def done(self, item_id: str, arm: str) -> bool:
        item = self.items.get(item_id)
        return item is not None and arm in item.arms


def new_id() -> str:
    return str(ULID())


def now() -> float:
    return time.time()


def evals_dir(base: Path | None = None) -> Path:
    return base if base is not None else Path("evals")


def path_of(directory: Path, eval_id: str) -> Path:
    return directory / f"{eval_id}.json"


def journal_of(directory: Path, eval_id: str) -> Path:
    return directory / f"{eval_id}.progress.jsonl"


def _scrubbed(text: str) -> str:
    from ..config import scrub, secret_values

    secrets = secret_values()
    return scrub(text, secrets) if secrets else text


def save(record: EvalRecord, directory: Path) -> Path:
    """Write the whole record atomically (temp file + rename: a reader or a crash never sees half),
    then empty its journal, which the record now holds. Secret values never reach it."""
    path = path_of(directory, record.eval_id)
    write_atomic(path, _scrubbed(record.model_dump_json()))
    journal_of(directory, record.eval_id).unlink(missing_ok=True)
    return path


def append(directory: Path, record: EvalRecord, item: ItemRecord, arm: str) -> None:
    """Journal one finished (item, arm) as one line appended beside the record: O(1) a result, where
    rewriting the record each time would cost O(items). A kill -9 leaves at most a torn last line,
    which :func:`load` skips (that result is redone on resume)."""
    line = json.dumps({"id": item.id, "line": item.line, "target": item.target, "arm": arm,
                       "result": item.arms[arm].model_dump(mode="json")}, default=str)
    with journal_of(directory, record.eval_id).open("a", encoding="utf-8") as fh:
        fh.write(_scrubbed(line) + "\n")
        fh.flush()


def _fold(record: EvalRecord, journal: Path) -> None:
    """Put the journal's results into the record (a line that does not parse is a torn write)."""
    if not journal.is_file():
        return
    for raw in journal.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(raw)
            result = ArmResult.model_validate(entry["result"])
            item = record.items.setdefault(entry["id"], ItemRecord(id=entry["id"], line=entry["line"],
                                                                   target=entry.get("target")))
        except (json.JSONDecodeError, KeyError, TypeError, PydanticValidationError):
            continue
        item.arms[str(entry["arm"])] = result


def load(path: Path) -> EvalRecord:
    """Read and check an eval record; anything else is a clear :class:`InputError`."""
    name = str(path)
    if not path.is_file():
        raise InputError("no such eval record", where=name, hint="see 'deliberate evals list'")
    if path.stat().st_size > MAX_RECORD_BYTES:
        raise InputError("file is too large to be an eval record", where=name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"not an eval record (not JSON: {exc})", where=name) from None
    if not isinstance(data, dict) or data.get("kind") != "deliberate.eval":
        raise InputError("not an eval record (no kind 'deliberate.eval')", where=name)
    if data.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"eval record version {data.get('schema_version')!r}; this deliberate reads "
                         f"version {SCHEMA_VERSION}", where=name, hint="use the deliberate that wrote it")
    try:
        record = EvalRecord.model_validate(data)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise InputError(f"not a valid eval record: {loc}: {first['msg']}", where=name) from None
    _fold(record, journal_of(path.parent, record.eval_id))
    return record


def find(ref: str, directory: Path) -> Path:
    """An eval by id, unique id prefix or path."""
    path = Path(ref)
    if path.suffix == ".json" and path.exists():
        return path
    if not ref or "/" in ref or ref.startswith("."):
        raise InputError(f"no eval {ref!r}", hint="pass an eval id (see 'deliberate evals list') or a path")
    exact = path_of(directory, ref)
    if exact.exists():
        return exact
    found = sorted(directory.glob(f"{ref}*.json")) if directory.is_dir() else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise InputError(f"eval id prefix {ref!r} is ambiguous ({len(found)} evals)", hint="give more characters")
    raise InputError(f"no eval {ref!r} in {directory}/", hint="see 'deliberate evals list'")


def list_records(directory: Path, limit: int | None = None) -> list[EvalRecord]:
    """Readable eval records, newest first (unreadable files are skipped)."""
    if not directory.is_dir():
        return []
    out: list[EvalRecord] = []
    for path in sorted(directory.glob("*.json"), reverse=True):
        try:
            out.append(load(path))
        except InputError:
            continue
        if limit is not None and len(out) >= limit:
            break
    return out


def merge(records: list[EvalRecord], eval_id: str) -> EvalRecord:
    """Join the shards of one eval: same flow, dataset, scorer and arms; items are united (an item
    in two shards must agree). k may differ per shard (each matched its own items): kept per item."""
    first = records[0]
    same = ("flow", "flow_hash", "dataset_digest", "scorer", "match")
    for rec in records[1:]:
        for f in same:
            if getattr(rec, f) != getattr(first, f):
                raise InputError(f"cannot merge {rec.eval_id} with {first.eval_id}: their {f} differ",
                                 hint="merge shards of one eval (same flow, dataset, scorer and arms)")
        if [a.name for a in rec.arms] != [a.name for a in first.arms]:
            raise InputError(f"cannot merge {rec.eval_id} with {first.eval_id}: their arms differ")
    items: dict[str, ItemRecord] = {}
    for rec in records:
        for item_id, item in rec.items.items():
            items.setdefault(item_id, item.model_copy(deep=True))
            for arm, result in item.arms.items():
                items[item_id].arms.setdefault(arm, result)
    order = sorted(items, key=lambda i: (items[i].line, i))
    ks = {a.name: {r.arm(a.name).k for r in records} for a in first.arms}
    arms = [a.model_copy(update={"k": a.k if len(ks[a.name]) == 1 else None}) for a in first.arms]
    statuses = {r.status for r in records}
    status = "finished" if statuses == {"finished"} else "stopped"
    return first.model_copy(update={
        "eval_id": eval_id, "items": items, "item_ids": order, "arms": arms, "status": status,
        "stop_reason": None if status == "finished" else "a merged shard did not finish",
        "created_at": now(), "finished_at": now(), "merged_from": [r.eval_id for r in records],
        "options": {**first.options, "shard": None}})
