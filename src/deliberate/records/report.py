"""A run as one self-contained HTML page: the flow graph (inline SVG), every step's prompt,
output, model, timings, tokens and cost, rounds, judge scores, votes, and the run's totals.

The page is the Jinja2 template ``templates/report.html.j2``; this module prepares the plain data
it shows (strings, numbers, lists and dicts: no markup) and :mod:`.report_graph` the drawing.
Nothing is fetched to view it: CSS and the few lines of JS (``templates/report.css`` and
``report.js``) are inline, and a Content Security Policy forbids every other source. The template
is rendered with autoescape on, so every piece of user or model text is HTML-escaped; the CSP
allows only the page's own script (by hash), so even a slip in the escaping could not run a script
from a model's output. A record is untrusted input: a field of an unexpected shape (a hand-edited
flow, a malformed step value) is shown as it is or left out, never a crash. The finished page is
scrubbed of secret values (:func:`deliberate.config.scrub`).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import os
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from .report_graph import Layout, anchor, edges_of, graph_view, layout, names, rounds_spec
from .schema import CallRecord, RunRecord, StepRecord
from .store import write_atomic

__all__ = ["Layout", "e", "edges_of", "layout", "render_report", "report_view", "write_report"]


def write_report(record: RunRecord, path: Path) -> None:
    """Write the report of ``record`` to ``path`` (atomically), readable as any file the user
    creates (a report is made to be shared; the temp file it is renamed from is private)."""
    write_atomic(path, render_report(record))  # scrubbed of secrets
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def render_report(record: RunRecord) -> str:
    """The report as HTML text, without any secret value (as the text is, or HTML-escaped)."""
    from ..config import scrub, secret_values

    secrets = secret_values()
    html = _render(record)
    if not secrets:
        return html
    # e() is the template's escaping too (see _environment), so a secret's escaped form is known
    return scrub(html, secrets, extra=[e(v) for v in secrets if e(v) != v])


def e(value: Any) -> str:
    """Escape any value for HTML text and attribute values (None is empty)."""
    return escape("" if value is None else str(value), quote=True)


def _finalize(value: Any) -> Any:
    from markupsafe import Markup

    # Every {{ value }} of the template comes here before autoescape: escaped by e(), the form the
    # secret scrub looks for (markupsafe would write ' and " as &#39; and &#34;), it is Markup and
    # autoescape leaves it as it is. Markup already (a macro's output, the page's CSS and JS) passes.
    return value if isinstance(value, Markup) else Markup(e(value))


@functools.cache
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("deliberate.records", "templates"), autoescape=True, finalize=_finalize,
        undefined=jinja2.StrictUndefined,  # a name the data lacks is a bug, not an empty string
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


@functools.cache
def _assets() -> dict[str, Any]:
    """The page's CSS and JS as trusted markup, and their hashes for the CSP."""
    from markupsafe import Markup

    folder = resources.files(__package__).joinpath("templates")
    css, js = (folder.joinpath(name).read_text(encoding="utf-8") for name in ("report.css", "report.js"))
    return {"css": Markup(css), "js": Markup(js), "css_hash": _sha(css), "js_hash": _sha(js)}


def _render(record: RunRecord) -> str:
    return str(_environment().get_template("report.html.j2").render(**report_view(record), **_assets()))


def report_view(r: RunRecord) -> dict[str, Any]:
    """What the report shows, as plain data for its template (no markup: the template escapes)."""
    return {
        "flow_name": r.flow_name, "run_id": r.run_id, "status": r.status,
        "description": r.flow.get("description", ""), "cards": _cards(r), "meta": _meta(r),
        "graph": graph_view(r), "inputs": [(k, _plain(v)) for k, v in r.inputs.items()],
        "answer": _answer(r), "rounds": _rounds(r),
        "steps": [_step(r, r.steps[n]) for n in r.order if n in r.steps],
        "events": [{"kind": ev.kind, "endpoint": ev.endpoint, "model": ev.model_key, "detail": ev.detail,
                    "at": _when(ev.at)} for ev in r.events],
        "footer": {"version": r.deliberate_version, "schema": r.schema_version, "flow_hash": r.flow_hash},
    }


def _sha(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):  # no clock shows it: a hand-edited record
        return "-"


def _secs(s: float | None) -> str:
    return "-" if s is None else f"{s:.2f} s"


def _cost(c: float) -> str:
    return f"${c:.6f}".rstrip("0").rstrip(".") if c else "$0"


def _plain(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, indent=1, ensure_ascii=False, default=str)


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


# -- header and run-level parts ---------------------------------------------------------------
def _cards(r: RunRecord) -> list[tuple[str, str]]:
    t = r.totals
    wall = t.wall_s or ((r.finished_at - r.created_at) if r.finished_at else 0.0)
    return [("steps", f"{t.steps}/{len(r.steps)}"), ("model calls", str(t.calls)),
            ("tokens", f"{t.prompt_tokens + t.completion_tokens:,}"),
            ("prompt / completion", f"{t.prompt_tokens:,} / {t.completion_tokens:,}"),
            ("cost", _cost(t.cost_usd)), ("wall time", _secs(wall))]


def _meta(r: RunRecord) -> list[dict[str, Any]]:
    """The header's facts: ``code`` ones are shown as code, ``small`` is a note after the value."""

    def fact(key: str, value: Any, code: bool = False, small: str | None = None) -> dict[str, Any]:
        return {"key": key, "value": value, "code": code, "small": small}

    meta = [fact("run id", r.run_id, code=True), fact("flow", r.flow_name, small=r.flow_source),
            fact("started", _when(r.created_at)), fact("finished", _when(r.finished_at))]
    if r.parent_run_id:
        meta.append(fact("parent run", r.parent_run_id, code=True))
    if r.reused_steps:
        meta.append(fact("reused steps", ", ".join(r.reused_steps)))
    opts = {k: v for k, v in r.options.items() if v not in (None, {}, [])}
    if opts:
        meta.append(fact("options", json.dumps(opts, sort_keys=True), code=True))
    return meta


def _answer(r: RunRecord) -> dict[str, Any]:
    if r.output is not None:
        return {"kind": "output", "step": r.output_step, "text": r.output}
    if r.error:
        return {"kind": "error", "text": r.error}
    return {"kind": "none", "text": r.status}


def _rounds(r: RunRecord) -> dict[str, Any] | None:
    if not r.rounds:
        return None
    spec = rounds_spec(r)
    return {"steps": ", ".join(names(spec.get("steps"))), "max": spec.get("max", ""),
            "has_until": bool(spec.get("until")), "until": spec.get("until"),
            "rows": [{"round": x.round, "stop": x.stop_reason or "continue", "until": x.until_value,
                      "at": _when(x.at)} for x in r.rounds]}


# -- one step ---------------------------------------------------------------------------------
def _step(r: RunRecord, s: StepRecord) -> dict[str, Any]:
    calls = s.calls
    facts = [("kind", s.kind)]
    models = sorted({c.model_key for c in calls})
    if models:
        facts.append(("model", ", ".join(models)))
    if s.started_at and s.finished_at and s.status != "reused":
        facts.append(("time", _secs(s.finished_at - s.started_at)))
    if calls:
        tokens_p = sum(c.prompt_tokens for c in calls)
        tokens_c = sum(c.completion_tokens for c in calls)
        facts += [("calls", str(len(calls))), ("tokens", f"{tokens_p:,} prompt / {tokens_c:,} completion"),
                  ("cost", _cost(sum(c.cost_usd for c in calls)))]
    if s.round > 1 or s.rounds:
        facts.append(("rounds", str(max([s.round] + [_int(x.get("round")) for x in s.rounds]))))
    return {
        "name": s.name, "anchor": anchor(s.name), "status": s.status, "facts": facts,
        "reused_from": (r.parent_run_id or "?") if s.status == "reused" else None,
        "skipped": ({"when": s.skipped_when, "decided_by": json.dumps(s.decided_by, default=str)}
                    if s.status == "skipped" else None),
        "error": {"type": s.error_type, "text": s.error} if s.error else None,
        "value": _value(s),
        "judge": [{"cls": "pass" if j.passed else "below", "attempt": j.attempt, "score": f"{j.score:g}",
                   "threshold": f"{j.threshold:g}", "verdict": "passed" if j.passed else "below",
                   "feedback": j.feedback} for j in s.judge],
        "vote": _vote(s),
        # each round's output, when there was more than one
        "round_outputs": ([{"round": x.get("round"), "text": _text_of(x.get("value"))} for x in s.rounds]
                          if len(s.rounds) > 1 else []),
        "failures": [{"round": f.round, "branch": "" if f.branch is None else f" branch {f.branch}",
                      "type": f.error_type, "text": f.error} for f in s.failures],
        "calls": [_call(i, c) for i, c in enumerate(calls, 1)],
    }


def _vote(s: StepRecord) -> dict[str, Any] | None:
    v = s.vote
    if not v:
        return None
    return {"winner": v.winner, "tie": v.tie, "tied": ", ".join(v.tied), "tie_rule": v.tie_rule,
            "total": sum(v.counts.values()) or 1,
            "rows": [{"answer": k, "n": n, "cls": "win" if k == v.winner else ""}
                     for k, n in sorted(v.counts.items(), key=lambda kv: -kv[1])]}


def _value(s: StepRecord) -> dict[str, Any]:
    """The step's output by the shape of its value: ``branches``, ``verdict``, ``data``,
    ``text`` (the output as recorded) or ``none``. Any field may be of any JSON type."""
    v = s.value
    if isinstance(v, dict) and v.get("type") == "branches" and isinstance(v.get("branches"), list):
        branches = [b if isinstance(b, dict) else {"text": _plain(b)} for b in v["branches"]]
        return {"kind": "branches", "branches": [
            {"label": _plain(b.get("item")), "model": b.get("model", "") if b.get("model") != b.get("item") else "",
             "text": b.get("text", "")} for b in branches]}
    if isinstance(v, dict) and v.get("type") == "verdict":
        return {"kind": "verdict", "score": v.get("score"), "scale": v.get("scale", 10),
                "ok": "passed" if v.get("passed") else "below threshold", "attempts": v.get("attempts"),
                "text": v.get("feedback", "")}
    if isinstance(v, dict) and v.get("type") == "data":
        return {"kind": "data", "text": _plain(v.get("data"))}
    if s.output is None:
        return {"kind": "none"}
    return {"kind": "text", "text": s.output}


def _text_of(v: Any) -> str:
    from ..engine.values import as_text, from_json

    try:
        return as_text(from_json(v))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):  # not a value deliberate wrote
        return _plain(v)


def _call(i: int, c: CallRecord) -> dict[str, Any]:
    bits = [f"#{i}", c.model_key]
    if c.model_requested and c.model_requested != c.model_key:
        bits.append(f"(asked for {c.model_requested})")
    if c.branch is not None:
        bits.append(f"branch {c.branch}" + (f" · {_plain(c.item)}" if c.item is not None else ""))
    if c.round > 1:
        bits.append(f"round {c.round}")
    if c.attempt > 1:
        bits.append(f"attempt {c.attempt}")
    bits += [f"{c.prompt_tokens:,}+{c.completion_tokens:,} tokens", _cost(c.cost_usd),
             f"load {c.load_time:.2f} s · inference {c.inference_time:.2f} s · total {c.total_time:.2f} s"]
    if c.cache_hit:
        bits.append("cache hit")
    extra = []
    if c.strategy or c.sampling:
        sampling = c.sampling.model_dump(exclude_none=True) if c.sampling else {}
        extra.append(f"strategy {c.strategy or '-'} · {json.dumps(sampling)} · max_tokens {c.max_tokens}")
    if c.source or c.model_name:
        extra.append(f"{c.source} {c.model_name}".strip())
    if c.finish_reason:
        extra.append(f"finish: {c.finish_reason}")
    # the models tried, when there was more than one try
    tries = ([{"model": a.model_key, "outcome": "ok" if a.ok else (a.error_type or "error"), "error": a.error or "",
               "seconds": f"{a.seconds:.2f}"} for a in c.attempts] if len(c.attempts) > 1 else [])
    return {"head": " · ".join(bits), "extra": " · ".join(extra), "tries": tries,
            "messages": [{"role": m.role, "content": m.content} for m in c.messages], "text": c.text}
