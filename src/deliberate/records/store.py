"""Reading and writing run records: atomic writes, clean errors for bad files."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from ..errors import RecordError
from .schema import RECORD_KIND, SCHEMA_VERSION, RunRecord

MAX_RECORD_BYTES = 200_000_000


def record_path(runs_dir: Path, run_id: str) -> Path:
    return runs_dir / f"{run_id}.json"


def lock_path(record: Path) -> Path:
    return record.parent / f".{record.stem}.lock"


class LiveLock:
    """Held (flock) by the process running a run, so another process can tell a run that is
    still going from one that crashed; the OS drops it when the process dies, even by SIGKILL."""

    def __init__(self, record: Path) -> None:
        self.path = lock_path(record)
        self.fh: Any = None

    @property
    def held(self) -> bool:
        return self.fh is not None

    def acquire(self) -> None:
        """Take the lock; a lock some other process holds is left to it (``resume`` refuses
        such a run before it starts)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "w")  # noqa: SIM115 - held for the run's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return
        fh.write(str(os.getpid()))
        fh.flush()
        self.fh = fh

    def release(self) -> None:
        if self.fh is not None:
            self.path.unlink(missing_ok=True)
            self.fh.close()
            self.fh = None


def is_live(record: Path) -> bool:
    """True while a process is running this record's run."""
    import fcntl

    path = lock_path(record)
    if not path.exists():
        return False
    try:
        with open(path) as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fh, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def write_atomic(path: Path, data: str | bytes, durable: bool = False) -> None:
    """Write a file so a reader (or a crash) never sees half of it: temp file + rename in the
    same directory. The rename alone protects against a killed process (the kernel keeps the
    written pages); ``durable`` also fsyncs, against power loss, at a cost of milliseconds."""
    # One temp name per process and thread: a process writes a given file from one thread at a
    # time, so no random name (mkstemp) is needed.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save(record: RunRecord, runs_dir: Path) -> Path:
    path = record_path(runs_dir, record.run_id)
    write_atomic(path, record.model_dump_json())  # compact, as the recorder writes
    return path


def load(path: Path) -> RunRecord:
    """Load and validate a record; one clean error for a missing, corrupt or foreign file."""
    where = str(path)
    if not path.exists():
        raise RecordError("no such run record", where=where, hint="see: deliberate runs list")
    if path.is_dir():
        raise RecordError("is a directory, not a run record", where=where)
    if path.stat().st_size > MAX_RECORD_BYTES:
        raise RecordError("file is too large to be a run record", where=where)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RecordError("not a run record (not UTF-8 text)", where=where) from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                          "the file is truncated or corrupt", where=where) from None
    if not isinstance(data, dict) or data.get("kind") != RECORD_KIND:
        raise RecordError("not a deliberate run record", where=where,
                          hint="pass a file from runs/ written by 'deliberate run'")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RecordError(f"record schema version {version!r} is newer than this deliberate "
                          f"understands ({SCHEMA_VERSION})", where=where, hint="upgrade deliberate")
    try:
        return RunRecord.model_validate(data)
    except PydanticValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise RecordError(f"invalid run record: {field}: {err['msg']}", where=where) from None


def find(ref: str, runs_dir: Path) -> Path:
    """A record by path, by run id, or by a unique prefix of a run id."""
    p = Path(ref)
    if p.suffix == ".json" or p.exists():
        return p
    exact = record_path(runs_dir, ref)
    if exact.exists():
        return exact
    matches = sorted(runs_dir.glob(f"{ref}*.json")) if runs_dir.is_dir() else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise RecordError(f"run id prefix {ref!r} is ambiguous ({len(matches)} runs)", hint="give more characters")
    raise RecordError(f"no run {ref!r} in {runs_dir}", hint="see: deliberate runs list")


def list_records(runs_dir: Path, limit: int | None = None, flow: str | None = None) -> list[RunRecord]:
    """Recent records first; unreadable files are skipped."""
    if not runs_dir.is_dir():
        return []
    out: list[RunRecord] = []
    for path in sorted(runs_dir.glob("*.json"), reverse=True):
        try:
            rec = load(path)
        except RecordError:
            continue
        if flow and rec.flow_name != flow:
            continue
        out.append(rec)
        if limit and len(out) >= limit:
            break
    return out


def recent_history(runs_dir: Path, flow: str, limit: int) -> list[dict[str, Any]]:
    """The ``history`` function step's data: recent finished runs of a flow."""
    out = []
    for rec in list_records(runs_dir, None, flow):
        if rec.status == "running":
            continue
        out.append({"run_id": rec.run_id, "status": rec.status, "created_at": rec.created_at,
                    "prompt": str(rec.inputs.get("prompt", ""))[:200],
                    "output": (rec.output or "")[:300]})
        if len(out) >= limit:
            break
    return out
