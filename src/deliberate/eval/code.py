"""The ``code`` scorer: the answer's code runs against the item's tests in the sandbox
(:mod:`.sandbox`: a child process with CPU, memory and file limits, no network, a fresh
directory, killed whole at the end). An answer that hangs, forks, eats memory or opens a socket
is contained and scored as a failure.

Item fields: ``tests`` (Python that raises when the code is wrong; HumanEval's ``check``
function, called on ``entry_point`` when given) and, optionally, ``code_prompt`` (put before an
answer that does not define ``entry_point`` itself: the model completed a function body)."""

from __future__ import annotations

import re

from ..errors import InputError
from .datasets import Item
from .scorers import Score, ScoreContext, Scorer, in_thread

_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.S | re.I)


def extract_code(answer: str, entry_point: str | None = None) -> str:
    """The code in an answer: the last fenced block that defines ``entry_point``, else the
    longest fenced block, else the answer as it is."""
    blocks = _BLOCK.findall(answer)
    if not blocks:
        return answer
    if entry_point:
        defining = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
        if defining:
            return str(defining[-1])
    return str(max(blocks, key=len))


def program(answer: str, item: Item) -> tuple[str, str]:
    """(source, tests) for the sandbox."""
    entry = str(item.fields.get("entry_point") or "") or None
    code = extract_code(answer, entry)
    prompt = str(item.fields.get("code_prompt") or "")
    if entry and prompt and not re.search(rf"\bdef\s+{re.escape(entry)}\s*\(", code):
        code = prompt + code
    tests = str(item.fields.get("tests") or "")
    if entry and re.search(r"\bdef\s+check\s*\(", tests):
        tests += f"\n\ncheck({entry})\n"
    return code, tests


class CodeScorer(Scorer):
    name = "code"
    needs_target = False

    def key(self, answer: str) -> str:
        return re.sub(r"\s+", " ", extract_code(answer)).strip()

    async def score(self, answer: str, item: Item, ctx: ScoreContext) -> Score:
        from .sandbox import run_code

        if not item.fields.get("tests"):
            raise InputError("field 'tests' is missing: the code scorer runs the item's tests",
                             where=f"item {item.id}")
        source, tests = program(answer, item)
        result = await in_thread(run_code, source, tests=tests, timeout_s=ctx.code_timeout_s,
                                 allow_network=ctx.allow_network_code)
        passed = bool(getattr(result, "passed", False))
        status = str(getattr(result, "status", ""))
        reason = str(getattr(result, "reason", "") or "")
        return Score(float(passed), passed, f"{status}: {reason}".strip(": ")[:300])
