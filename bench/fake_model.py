"""The tests' fake OpenAI/Anthropic server (tests/servers/fake_llm.py) in a process of its own,
for the benches: its work does not share the measured client's CPU and GIL, as a real model
server's would not."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "tests" / "servers" / "fake_llm.py"


class FakeModel:
    """``with FakeModel(text, delay) as model:`` serves on ``model.openai_base`` until closed."""

    def __init__(self, text: str, delay: float = 0.0) -> None:
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "--text", text, "--delay", str(delay)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.openai_base = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        """The server's counters (``calls``, ``max_in_flight``)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats", timeout=5) as r:
            return dict(json.load(r))

    def close(self) -> None:
        """Stop it: closing its stdin ends it; a server that hangs is killed."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> FakeModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
