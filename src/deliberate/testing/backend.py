"""The ``replies`` backend: a real backend plugin (entry point ``deliberate.backends``, provider
``replies``) that answers from scripted replies instead of a model. It sits under the gateway's
real layers, so an injected ``rate_limit`` is retried, trips the breaker and walks the fallbacks
exactly as a provider's would.

Which step a call serves comes from the request's opaque tags (``call.context.tags``: the
engine's ``step``, ``round`` and ``branch``). ``deliberate test`` gives each case a backend with
the case's :class:`~.replies.Script`; loaded as a plugin (``provider: replies`` in models.yaml)
it reads a YAML file of replies named by ``DELIBERATE_REPLIES``, so ``deliberate run`` can use
scripted replies too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..gateway.contracts import Backend, BackendCall, Reply, TokenCallback
from ..gateway.results import estimate_tokens
from .replies import Problems, Script, StepScript, injected, parse_step

PROVIDER = "replies"
REPLIES_ENV = "DELIBERATE_REPLIES"


class RepliesBackend(Backend):
    """Answers each call with the script's reply for its step; logs every call on the script."""

    name = PROVIDER

    def __init__(self, settings: Any = None, script: Script | None = None) -> None:
        if script is None:
            path = os.environ.get(REPLIES_ENV)
            script = load_script_file(Path(path)) if path else Script({})
        self.script = script

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """The scripted reply (or the scripted error) of this call."""
        messages = [{"role": m.role, "content": m.content} for m in call.messages]
        canned = self.script.answer(call.context.tags, call.model_key, messages)
        if canned.error:
            raise injected(canned.error, call.model_key)
        text = canned.text or ""
        words = text.split(" ")
        if on_token is not None:
            for i, w in enumerate(words):
                on_token(w if i == 0 else " " + w)
        return Reply(text=text, prompt_tokens=estimate_tokens("\n".join(m["content"] for m in messages)),
                     completion_tokens=canned.tokens if canned.tokens is not None else len(text.split()),
                     source=PROVIDER, model_name=f"{PROVIDER}/{call.model_key}", finish_reason="stop",
                     model_cache_hit=True)

    async def check(self, spec: Any) -> dict[str, Any]:
        """Scripted replies are always reachable."""
        return {"source": PROVIDER, "model": f"{PROVIDER}/{spec.key}", "text": "", "tokens": 0, "seconds": 0.0}


def parse_replies(data: Any, loc: tuple[Any, ...], problems: Problems) -> dict[str, StepScript]:
    """A ``replies:`` mapping (step -> replies) parsed; problems added by path."""
    if not isinstance(data, dict):
        problems.append((loc, "replies maps each step to its replies"))
        return {}
    out: dict[str, StepScript] = {}
    for step, value in data.items():
        parsed = parse_step(value, (*loc, step), problems)
        if parsed is not None:
            out[str(step)] = parsed
    return out


def load_script_file(path: Path) -> Script:
    """A YAML file of replies (the ``replies:`` mapping of a case, at its top) as a script."""
    from ..yamlio import load_yaml_file, locate

    data, marks = load_yaml_file(path)
    problems: Problems = []
    steps = parse_replies(data, (), problems)
    if problems:
        loc, message = problems[0]
        line, _col = locate(marks, loc)
        raise InputError(message, where=f"{path}:{line}" if line else str(path),
                         hint=f"fix the replies file named by {REPLIES_ENV}")
    return Script(steps)
