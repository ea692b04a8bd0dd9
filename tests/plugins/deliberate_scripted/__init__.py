"""A SCRIPTED test backend (not a model): canned replies, optional delays and failures, and a log
of every call. It registers as provider ``scripted`` through the same ``deliberate.backends``
entry point group as the real backends (see the dist-info folder beside it), so subprocess runs
of the real CLI can use it from a test's ``models.yaml``.

Script (JSON file named by ``DELIBERATE_SCRIPT``, or rules passed in-process)::

    {"rules": [{"match": "regex on the last user message", "model": "key or null",
                "reply": "text", "delay": 0.1, "fail": "transient|fatal|capacity",
                "message": "the failure's text (default: 'scripted <fail> failure for <model>')",
                "times": 2, "tokens": 5}],
     "echo": true}

The first rule that matches (and still has ``times`` left) answers. With no rule matching, the
reply is ``"[<model>] <first line of the prompt>"`` when ``echo`` is on (the default). Every call
is appended as one JSON line to the file named by ``DELIBERATE_SCRIPT_LOG``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from typing import Any

from deliberate.errors import CapacityError, ProviderError
from deliberate.gateway.contracts import Backend, BackendCall, Reply

_LOCK = threading.Lock()


class ScriptedBackend(Backend):
    """Canned replies by rule (see the module docstring); ``calls`` logs every call."""

    name = "scripted"

    def __init__(self, settings: Any = None, rules: list[dict[str, Any]] | None = None, echo: bool = True) -> None:
        if rules is None and os.environ.get("DELIBERATE_SCRIPT"):
            with open(os.environ["DELIBERATE_SCRIPT"]) as fh:
                script = json.load(fh)
            rules, echo = script.get("rules", []), script.get("echo", True)
        self.rules = [dict(r) for r in (rules or [])]
        self.echo = echo
        self.calls: list[dict[str, Any]] = []

    async def generate(self, call: BackendCall, on_token: Any = None) -> Reply:
        prompt = next((m.content for m in reversed(call.messages) if m.role == "user"), "")
        started = time.time()
        rule = self._match(call.model_key, prompt)
        entry = {"model": call.model_key, "prompt": prompt, "start": started,
                 "messages": [m.model_dump() for m in call.messages],
                 "sampling": call.sampling.model_dump(), "max_tokens": call.max_tokens}
        try:
            if rule and rule.get("delay"):
                await asyncio.sleep(float(rule["delay"]))
            if rule and rule.get("fail"):
                kind = rule["fail"]
                if kind == "capacity":
                    raise CapacityError(f"scripted capacity failure for {call.model_key}")
                raise ProviderError(rule.get("message") or f"scripted {kind} failure for {call.model_key}",
                                    transient=kind == "transient", trips_breaker=kind != "badrequest")
            if rule is not None and "reply" in rule:
                text = str(rule["reply"])
            elif self.echo:
                first = prompt.strip().splitlines()[0] if prompt.strip() else ""
                text = f"[{call.model_key}] {first}"
            else:
                text = ""
            words = text.split(" ")
            if on_token:
                for i, w in enumerate(words):
                    on_token(w if i == 0 else " " + w)
            entry.update(ok=True, reply=text)
            return Reply(text=text, prompt_tokens=max(1, len(prompt) // 4),
                         completion_tokens=int(rule.get("tokens", len(words))) if rule else len(words),
                         source="scripted", model_name=f"scripted/{call.model_key}",
                         finish_reason=str(rule.get("finish", "stop")) if rule else "stop")
        except BaseException as exc:
            entry.update(ok=False, error=type(exc).__name__)
            raise
        finally:
            entry["end"] = time.time()
            self._log(entry)

    def _match(self, model: str, prompt: str) -> dict[str, Any] | None:
        with _LOCK:
            for rule in self.rules:
                if rule.get("model") and rule["model"] != model:
                    continue
                if rule.get("match") and not re.search(rule["match"], prompt, re.S):
                    continue
                if "times" in rule:
                    if rule["times"] <= 0:
                        continue
                    rule["times"] -= 1
                return rule
        return None

    def _log(self, entry: dict[str, Any]) -> None:
        self.calls.append(entry)
        path = os.environ.get("DELIBERATE_SCRIPT_LOG")
        if path:
            with _LOCK, open(path, "a") as fh:
                fh.write(json.dumps(entry) + "\n")
