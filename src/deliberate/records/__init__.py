"""Run records: schema, atomic store, recorder, replay and resume, report."""

from .recorder import Recorder
from .schema import SCHEMA_VERSION, RunRecord, StepRecord
from .store import find, list_records, load, recent_history, save, write_atomic

__all__ = ["SCHEMA_VERSION", "Recorder", "RunRecord", "StepRecord", "find", "list_records", "load",
           "recent_history", "save", "write_atomic"]
