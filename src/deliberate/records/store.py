"""Reading and writing run records: atomic writes, clean errors for bad files."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from pydantic_core import from_json

from ..errors import RecordError
from ..safetext import clean
from .schema import RECORD_KIND, SCHEMA_VERSION, RunRecord

MAX_RECORD_BYTES = 200_000_000

#: A run id as deliberate makes them (``str(ulid.ULID())``, for ``run``, ``replay`` and a resumed
#: run alike): 26 characters of Crockford's base 32, upper case, the first at most 7 (48-bit time).
#: A record is untrusted input: a run id from one is checked against this before it names a file.
RUN_ID_PATTERN = r"[0-7][0-9A-HJKMNP-TV-Z]{25}"
_RUN_ID = re.compile(RUN_ID_PATTERN)
# what is looked up as an id prefix: letters and digits only, so never a path or a glob pattern
_RUN_ID_PREFIX = re.compile(r"[0-9A-Z]{1,26}")
_NOT_A_RUN_ID = "not a run id (deliberate's run ids are ULIDs: 26 characters such as 01J9Z3QK8M7T2V4X6Y8Z0A1B2C)"


def is_run_id(value: object) -> bool:
    """Whether ``value`` is a run id as deliberate makes them (see :data:`RUN_ID_PATTERN`)."""
    return isinstance(value, str) and _RUN_ID.fullmatch(value) is not None


def record_path(runs_dir: Path, run_id: str) -> Path:
    """``runs_dir/<run_id>.json``: the one way a path is made from a run id. Anything but a run id
    (``../../x``, ``a/b``, ``*``) is refused, and so is a result that resolves outside ``runs_dir``
    (a symlink there pointing elsewhere)."""
    if not is_run_id(run_id):
        raise RecordError(f"{_shown(run_id)} is {_NOT_A_RUN_ID}", where=str(runs_dir))
    path = runs_dir / f"{run_id}.json"
    base = runs_dir.resolve()
    if path.resolve().parent != base:
        raise RecordError(f"{path} leads outside the runs directory {base}", where=str(runs_dir),
                          hint="a record's file must be a file in the runs directory, not a link out of it")
    return path


def _shown(value: object, limit: int = 60) -> str:
    """A piece of a record, as an error message quotes it: printable, short, a string quoted."""
    try:
        text = clean(value if isinstance(value, str) else repr(value))
    except ValueError:  # an int of thousands of digits
        text = f"<{type(value).__name__}>"
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(text) if isinstance(value, str) else text


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
    """Load and validate a record; one clean error (:class:`RecordError`) for a missing, corrupt,
    foreign or malformed file, whatever it holds: a record is untrusted input."""
    where = str(path)
    try:
        if not path.exists():
            raise RecordError("no such run record", where=where, hint="see: deliberate runs list")
        if path.is_dir():
            raise RecordError("is a directory, not a run record", where=where)
        if not path.is_file():
            raise RecordError("not a regular file, so not a run record", where=where)
        if path.stat().st_size > MAX_RECORD_BYTES:
            raise RecordError("file is too large to be a run record", where=where)
        raw = path.read_bytes()
    except OSError as exc:
        raise RecordError(f"cannot read the run record: {exc.strerror or exc}", where=where) from None
    try:
        # pydantic-core's parser: no NaN or Infinity (never in a record), no lone surrogates, and
        # nesting is capped (about 200 levels; the recorder itself cannot write past 255)
        data: Any = from_json(raw, allow_inf_nan=False)
    except (ValueError, RecursionError, MemoryError) as exc:
        text = str(exc)
        if isinstance(exc, RecursionError) or "recursion limit" in text:
            raise RecordError("invalid run record: nested too deeply", where=where) from None
        if isinstance(exc, MemoryError):
            raise RecordError("invalid run record: too large to read", where=where) from None
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("not a run record (not UTF-8 text)", where=where) from None
        raise RecordError(f"not valid JSON ({clean(text)}); the file is truncated or corrupt", where=where) from None
    if not isinstance(data, dict) or data.get("kind") != RECORD_KIND:
        raise RecordError("not a deliberate run record", where=where,
                          hint="pass a file from runs/ written by 'deliberate run'")
    version = data.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise RecordError("invalid run record: schema_version: not a whole number", where=where)
    if version > SCHEMA_VERSION:
        raise RecordError(f"record schema version {_shown(version)} is newer than this deliberate "
                          f"understands ({SCHEMA_VERSION})", where=where, hint="upgrade deliberate")
    try:
        record = RunRecord.model_validate(data)
    except PydanticValidationError as exc:
        raise RecordError(f"invalid run record: {validation_problem(exc)}", where=where) from None
    except (RecursionError, MemoryError, ValueError, TypeError) as exc:
        raise RecordError(f"invalid run record ({type(exc).__name__})", where=where) from None
    _check(record, where)
    return record


def validation_problem(exc: PydanticValidationError) -> str:
    """The first problem pydantic found, as ``field.path: message``, fit to quote from a record."""
    err = exc.errors()[0]
    return f"{'.'.join(_field(p) for p in err['loc'])}: {clean(err['msg'])}"


def _field(part: object) -> str:
    text = str(part)
    return text if re.fullmatch(r"[A-Za-z0-9_]{1,60}", text) else _shown(part)


def _check(record: RunRecord, where: str) -> None:
    """What the schema alone does not say: ids that name files, and steps that agree with the
    order and the flow (readers index ``steps`` by both)."""
    if not is_run_id(record.run_id):
        raise RecordError(f"invalid run record: run_id: {_NOT_A_RUN_ID}", where=where)
    if record.parent_run_id is not None and not is_run_id(record.parent_run_id):
        raise RecordError(f"invalid run record: parent_run_id: {_NOT_A_RUN_ID}", where=where)
    for name in record.order:
        if name not in record.steps:
            raise RecordError(f"invalid run record: order: step {_shown(name)} has no entry in steps", where=where)
    flow_steps = record.flow.get("steps")
    if isinstance(flow_steps, dict):
        for name in flow_steps:
            if name not in record.steps:
                raise RecordError(f"invalid run record: flow.steps: step {_shown(name)} has no entry in steps",
                                  where=where)
    for name, step in record.steps.items():
        if step.name != name:
            raise RecordError(f"invalid run record: steps.{_field(name)}.name: {_shown(step.name)} is not "
                              "the step's key", where=where)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def find(ref: str, runs_dir: Path) -> Path:
    """A record by path, by run id, or by a unique prefix of a run id.

    A path (``x.json``, or any existing file) is the user's choice and is taken as it is. A run
    id or a prefix is only ever looked up inside ``runs_dir``: anything but the characters of a
    run id (``/``, ``..``, glob characters) is refused, never globbed."""
    p = Path(ref)
    if p.suffix == ".json" or _exists(p):
        return p
    prefix = ref.upper()  # Crockford's base 32 is read without regard to case
    if not _RUN_ID_PREFIX.fullmatch(prefix):
        raise RecordError(f"{_shown(ref)} is not a run id, a run id prefix or a record path",
                          hint="see: deliberate runs list")
    if is_run_id(prefix):
        exact = record_path(runs_dir, prefix)
        if _exists(exact):
            return exact
    try:
        matches = sorted(runs_dir.glob(f"{prefix}*.json")) if runs_dir.is_dir() else []
    except OSError:
        matches = []
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
        except (RecordError, RecursionError, MemoryError):  # load makes both a RecordError; belt and braces
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


class RecordWriter:
    """One thread per process writes the latest submitted snapshot of each record file,
    atomically: the event loop never waits for the disk, and snapshots that queue up while a
    write is in progress coalesce into the latest. A record's lock is taken just before its first
    snapshot lands, so a run written only by its final write never creates one."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending: dict[Path, tuple[bytes, LiveLock | None]] = {}
        self.busy: set[Path] = set()
        self.thread: threading.Thread | None = None
        self.pid = 0

    def submit(self, path: Path, data: bytes, lock: LiveLock | None) -> None:
        with self.cond:
            self.pending[path] = (data, lock)
            self.cond.notify()
            if self.thread is None or self.pid != os.getpid():  # none yet, or we are a forked child
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, name="deliberate-record", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not (due := [p for p in self.pending if p not in self.busy]):
                    self.cond.wait()
                path = due[0]
                data, lock = self.pending.pop(path)
                self.busy.add(path)
            try:
                if lock is not None and not lock.held:
                    lock.acquire()
                write_atomic(path, data)
            except OSError:
                pass  # the final write (write_now) reports a disk that refuses
            finally:
                with self.cond:
                    self.busy.discard(path)
                    self.cond.notify_all()

    def write_now(self, path: Path, data: bytes, durable: bool = False) -> None:
        """Drop any queued snapshot of ``path``, wait for a write of it in progress, then write
        this one here and now."""
        with self.cond:
            self.pending.pop(path, None)
            while path in self.busy:
                self.cond.wait()
            self.busy.add(path)
        try:
            write_atomic(path, data, durable=durable)
        finally:
            with self.cond:
                self.busy.discard(path)
                self.cond.notify_all()
