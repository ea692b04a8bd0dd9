"""A run as one self-contained HTML page: the flow graph (inline SVG), every step's prompt,
output, model, timings, tokens and cost, rounds, judge scores, votes, and the run's totals.

Nothing is fetched to view it: CSS and the few lines of JS are inline, and a Content Security
Policy forbids every other source. Every piece of user or model text goes through
:func:`html.escape`; the CSP allows only the page's own script (by hash), so even a slip in the
escaping could not run a script from a model's output. A record is untrusted input: a field of
an unexpected shape (a hand-edited flow, a malformed step value) is shown as it is or left out,
never a crash. The finished page is scrubbed of secret values (:func:`deliberate.config.scrub`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from html import escape
from pathlib import Path
from typing import Any

from .schema import CallRecord, RunRecord, StepRecord
from .store import write_atomic

NODE_W, NODE_H, GAP_X, GAP_Y, PAD, VIRTUAL_W = 176, 58, 36, 56, 24, 8


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
    return scrub(html, secrets, extra=[e(v) for v in secrets if e(v) != v])


def _render(record: RunRecord) -> str:
    body = "\n".join([
        _header(record),
        _section("Flow", _graph(record)),
        _inputs(record),
        _answer(record),
        _rounds(record),
        _section("Steps", "\n".join(_step(record, record.steps[n]) for n in record.order
                                     if n in record.steps), "steps"),
        _events(record),
        f'<footer>deliberate {e(record.deliberate_version)} · schema {record.schema_version} · '
        f'flow hash <code>{e(record.flow_hash)}</code></footer>',
    ])
    csp = (f"default-src 'none'; style-src '{_sha(CSS)}'; script-src '{_sha(JS)}'; "
           "img-src data:; base-uri 'none'; form-action 'none'")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<title>{e(record.flow_name)} · {e(record.run_id)} · deliberate</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n<script>{JS}</script>\n"
            "</body>\n</html>\n")


def e(value: Any) -> str:
    """Escape any value for HTML text and attribute values."""
    return escape("" if value is None else str(value), quote=True)


def _sha(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _anchor(name: str) -> str:
    return "step-" + "".join(c if c.isalnum() or c in "-_" else f"_{ord(c):x}" for c in name)


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, ValueError, OSError):  # no clock shows it: a hand-edited record
        return "-"


def _rounds_spec(r: RunRecord) -> dict[str, Any]:
    """The recorded flow's ``rounds`` block, or ``{}`` if it has none (or not as a mapping)."""
    spec = r.flow.get("rounds")
    return spec if isinstance(spec, dict) else {}


def _names(value: Any) -> list[str]:
    """The strings of a recorded list of step names (anything else left out)."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _secs(s: float | None) -> str:
    return "-" if s is None else f"{s:.2f} s"


def _cost(c: float) -> str:
    return f"${c:.6f}".rstrip("0").rstrip(".") if c else "$0"


def _section(title: str, inner: str, ident: str = "") -> str:
    sid = f' id="{ident}"' if ident else ""
    return f"<section{sid}>\n<h2>{e(title)}</h2>\n{inner}\n</section>"


def _badge(status: str) -> str:
    return f'<span class="badge {e(status)}">{e(status)}</span>'


def _pre(text: Any, cls: str = "") -> str:
    return f'<pre class="{cls}">{e(text)}</pre>' if cls else f"<pre>{e(text)}</pre>"


# -- header and run-level parts ---------------------------------------------------------------
def _header(r: RunRecord) -> str:
    t = r.totals
    wall = t.wall_s or ((r.finished_at - r.created_at) if r.finished_at else 0.0)
    cards = [("steps", f"{t.steps}/{len(r.steps)}"), ("model calls", str(t.calls)),
             ("tokens", f"{t.prompt_tokens + t.completion_tokens:,}"),
             ("prompt / completion", f"{t.prompt_tokens:,} / {t.completion_tokens:,}"),
             ("cost", _cost(t.cost_usd)), ("wall time", _secs(wall))]
    meta = [("run id", f"<code>{e(r.run_id)}</code>"), ("flow", f"{e(r.flow_name)} <small>{e(r.flow_source)}</small>"),
            ("started", e(_when(r.created_at))), ("finished", e(_when(r.finished_at)))]
    if r.parent_run_id:
        meta.append(("parent run", f"<code>{e(r.parent_run_id)}</code>"))
    if r.reused_steps:
        meta.append(("reused steps", e(", ".join(r.reused_steps))))
    opts = {k: v for k, v in r.options.items() if v not in (None, {}, [])}
    if opts:
        meta.append(("options", f"<code>{e(json.dumps(opts, sort_keys=True))}</code>"))
    return (f'<header>\n<h1>{e(r.flow_name)} {_badge(r.status)}</h1>\n'
            f'<p class="desc">{e(r.flow.get("description", ""))}</p>\n'
            '<div class="cards">' + "".join(f'<div class="card"><div class="v">{e(v)}</div>'
                                            f'<div class="k">{e(k)}</div></div>' for k, v in cards) + "</div>\n"
            '<dl class="meta">' + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in meta) + "</dl>\n</header>")


def _inputs(r: RunRecord) -> str:
    if not r.inputs:
        return ""
    rows = "".join(f"<tr><th>{e(k)}</th><td>{_pre(_plain(v))}</td></tr>" for k, v in r.inputs.items())
    return _section("Inputs", f'<table class="kv">{rows}</table>')


def _answer(r: RunRecord) -> str:
    if r.output is not None:
        return _section(f"Answer (from {r.output_step})", _pre(r.output, "output answer"), "answer")
    if r.error:
        return _section("Error", f'<p class="error">{e(r.error)}</p>', "answer")
    return _section("Answer", f"<p class=\"muted\">no answer: the run is {e(r.status)}</p>", "answer")


def _rounds(r: RunRecord) -> str:
    if not r.rounds:
        return ""
    spec = _rounds_spec(r)
    rows = "".join(f"<tr><td>{x.round}</td><td>{e(x.stop_reason or 'continue')}</td>"
                   f"<td>{e(x.until_value)}</td><td>{e(_when(x.at))}</td></tr>" for x in r.rounds)
    head = (f"<p>steps {e(', '.join(_names(spec.get('steps'))))} · max {e(spec.get('max', ''))}"
            + (f" · until <code>{e(spec['until'])}</code>" if spec.get("until") else "") + "</p>")
    return _section("Rounds", head + '<table class="grid"><tr><th>round</th><th>stop</th><th>until</th>'
                    f"<th>at</th></tr>{rows}</table>")


def _events(r: RunRecord) -> str:
    if not r.events:
        return ""
    rows = "".join(f"<tr><td>{e(ev.kind)}</td><td>{e(ev.endpoint)}</td><td>{e(ev.model_key)}</td>"
                   f"<td>{e(ev.detail)}</td><td>{e(_when(ev.at))}</td></tr>" for ev in r.events)
    return _section("Gateway events", '<table class="grid"><tr><th>event</th><th>endpoint</th><th>model</th>'
                    f"<th>detail</th><th>at</th></tr>{rows}</table>")


def _plain(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, indent=1, ensure_ascii=False, default=str)


# -- the flow graph ---------------------------------------------------------------------------
def edges_of(r: RunRecord) -> dict[str, set[str]] | None:
    """Step -> the steps it reads, recomputed from the recorded flow (None if it cannot be)."""
    from ..flows.loader import load_flow_data

    try:
        deps = load_flow_data(r.flow, f"{r.run_id}.json#flow").deps
    except Exception:  # a step kind whose plugin is not installed here, an older grammar
        return None
    return {n: {d for d in deps.get(n, set()) if d in r.steps} for n in r.order}


class Layout:
    """Node boxes and edge routes of a layered (Sugiyama-style) top-down drawing."""

    def __init__(self) -> None:
        self.box: dict[str, tuple[float, float, float]] = {}  # node -> x, y, width (real and virtual)
        self.routes: list[tuple[str, str, list[str]]] = []  # src, dst, the virtual nodes between
        self.width = self.height = 0.0


def layout(order: list[str], deps: dict[str, set[str]]) -> Layout:
    """A step sits one layer below its deepest input. An edge that spans layers runs through
    virtual nodes, so it gets its own lane instead of crossing the steps between; a few
    barycentre sweeps order each layer to cut crossings."""
    lay = Layout()
    layer: dict[str, int] = {}
    for n in order:  # order is topological
        layer[n] = 1 + max((layer[d] for d in deps.get(n, ()) if d in layer), default=-1)
    rows: dict[int, list[str]] = {}
    for n in order:
        rows.setdefault(layer[n], []).append(n)
    preds: dict[str, list[str]] = {}
    succs: dict[str, list[str]] = {}
    for n in order:
        for d in sorted(deps.get(n, ()), key=order.index):
            if d not in layer:
                continue
            virtual = [f"\0{d}>{n}#{k}" for k in range(layer[d] + 1, layer[n])]
            for k, v in enumerate(virtual):
                rows[layer[d] + 1 + k].append(v)
            chain = [d, *virtual, n]
            for a, b in zip(chain, chain[1:], strict=False):
                succs.setdefault(a, []).append(b)
                preds.setdefault(b, []).append(a)
            lay.routes.append((d, n, virtual))
    depth = max(rows, default=0)
    for _sweep in range(4):
        for i in range(1, depth + 1):
            _reorder(rows[i], rows[i - 1], preds)
        for i in range(depth - 1, -1, -1):
            _reorder(rows[i], rows[i + 1], succs)

    def width(n: str) -> float:
        return VIRTUAL_W if n.startswith("\0") else NODE_W

    widths = {i: sum(width(n) for n in row) + GAP_X * (len(row) - 1) for i, row in rows.items()}
    full = max(widths.values(), default=NODE_W)
    for i, row in rows.items():
        x = PAD + (full - widths[i]) / 2
        for n in row:
            lay.box[n] = (x, PAD + i * (NODE_H + GAP_Y), width(n))
            x += width(n) + GAP_X
    lay.width, lay.height = full + 2 * PAD, PAD * 2 + (depth + 1) * NODE_H + depth * GAP_Y
    return lay


def _reorder(row: list[str], other: list[str], links: dict[str, list[str]]) -> None:
    index = {n: i for i, n in enumerate(other)}
    current = {n: i for i, n in enumerate(row)}

    def key(n: str) -> tuple[float, int]:
        xs = [index[m] for m in links.get(n, ()) if m in index]
        return (sum(xs) / len(xs) if xs else current[n] * len(other) / max(1, len(row)), current[n])

    row.sort(key=key)


def _graph(r: RunRecord) -> str:
    deps = edges_of(r)
    note = ""
    if deps is None:
        deps = {n: set() for n in r.order}
        note = '<p class="muted">The recorded flow does not validate here; steps are shown without edges.</p>'
    order = [n for n in r.order if n in r.steps]
    if not order:
        return '<p class="muted">no steps</p>'
    lay = layout(order, deps)
    pos = lay.box
    w, h = lay.width + 60, lay.height
    loop = set(_names(_rounds_spec(r).get("steps")))
    parts = [f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" '
             f'viewBox="0 0 {w:.0f} {h:.0f}" role="img" aria-label="flow graph">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/>'
             "</marker></defs>"]
    for src, dst, virtual in lay.routes:
        pts = [_bottom(pos[src])]
        for v in virtual:
            pts += [_top(pos[v]), _bottom(pos[v])]
        pts.append(_top(pos[dst]))
        d = f"M{pts[0][0]:.0f},{pts[0][1]:.0f}"
        for k in range(1, len(pts)):
            (x1, y1), (x2, y2) = pts[k - 1], pts[k]
            if k == len(pts) - 1:
                y2 -= 2
            if k % 2:  # between layers: a smooth S
                my = (y1 + y2) / 2
                d += f" C{x1:.0f},{my:.0f} {x2:.0f},{my:.0f} {x2:.0f},{y2:.0f}"
            else:  # through a virtual node's lane
                d += f" L{x2:.0f},{y2:.0f}"
        parts.append(f'<path class="edge" d="{d}" marker-end="url(#arrow)"><title>{e(dst)} reads {e(src)}'
                     "</title></path>")
    carry = _rounds_spec(r).get("carry")
    for reader, writer in (carry.items() if isinstance(carry, dict) else ()):
        if isinstance(writer, str) and reader in pos and writer in pos:  # the loop's feedback edge, drawn on the right side
            x1, y1 = pos[writer][0] + NODE_W, pos[writer][1] + NODE_H / 2
            x2, y2 = pos[reader][0] + NODE_W, pos[reader][1] + NODE_H / 2
            bend = max(x1, x2) + 50
            parts.append(f'<path class="edge carry" d="M{x1:.0f},{y1:.0f} C{bend:.0f},{y1:.0f} {bend:.0f},{y2:.0f} '
                         f'{x2 + 2:.0f},{y2:.0f}" marker-end="url(#arrow)"><title>next round: {e(writer)} '
                         f"becomes {e(reader)}</title></path>")
    for n in order:
        s = r.steps[n]
        x, y, _w = pos[n]
        models = ", ".join(sorted({c.model_key for c in s.calls}))
        sub = " · ".join(p for p in (s.kind if s.kind != "generate" else "", s.status, models) if p)
        cls = f"node {s.status}" + (" loop" if n in loop else "")
        parts.append(
            f'<a href="#{_anchor(n)}"><g class="{e(cls)}"><title>{e(n)}: {e(sub)}</title>'
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="8"/>'
            f'<text x="{x + NODE_W / 2:.0f}" y="{y + 24:.0f}" class="name">{e(_clip(n, 22))}'
            f'{"<tspan> ↻</tspan>" if n in loop else ""}</text>'
            f'<text x="{x + NODE_W / 2:.0f}" y="{y + 43:.0f}" class="sub">{e(_clip(sub, 28))}</text></g></a>')
    parts.append("</svg>")
    legend = ('<p class="legend">' + " ".join(_badge(k) for k in ("succeeded", "reused", "skipped", "failed",
                                                                   "running", "pending"))
              + (" · ↻ rounds block (dashed arrow: next round)" if loop else "") + "</p>")
    return note + '<div class="graphbox">' + "".join(parts) + "</div>" + legend


def _top(box: tuple[float, float, float]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1]


def _bottom(box: tuple[float, float, float]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + NODE_H


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# -- one step ---------------------------------------------------------------------------------
def _step(r: RunRecord, s: StepRecord) -> str:
    calls = s.calls
    tokens_p = sum(c.prompt_tokens for c in calls)
    tokens_c = sum(c.completion_tokens for c in calls)
    facts = [("kind", e(s.kind))]
    models = sorted({c.model_key for c in calls})
    if models:
        facts.append(("model", e(", ".join(models))))
    if s.started_at and s.finished_at and s.status != "reused":
        facts.append(("time", e(_secs(s.finished_at - s.started_at))))
    if calls:
        facts += [("calls", str(len(calls))), ("tokens", e(f"{tokens_p:,} prompt / {tokens_c:,} completion")),
                  ("cost", e(_cost(sum(c.cost_usd for c in calls))))]
    if s.round > 1 or s.rounds:
        facts.append(("rounds", str(max([s.round] + [_int(x.get("round")) for x in s.rounds]))))
    parts = [f'<article class="step {e(s.status)}" id="{_anchor(s.name)}">',
             f'<h3>{e(s.name)} {_badge(s.status)}</h3>',
             '<ul class="facts">' + "".join(f'<li><span class="k">{k}</span> {v}</li>' for k, v in facts) + "</ul>"]
    if s.status == "reused":
        parts.append(f'<p class="muted">Output reused from run <code>{e(r.parent_run_id or "?")}</code>; '
                     "no model was called for this step in this run.</p>")
    if s.status == "skipped":
        parts.append(f'<p class="muted">Skipped: <code>when {e(s.skipped_when)}</code> was '
                     f"<code>{e(json.dumps(s.decided_by, default=str))}</code>.</p>")
    if s.error:
        parts.append(f'<p class="error">{e(s.error_type)}: {e(s.error)}</p>')
    parts.append(_value(s))
    if s.judge:
        rows = "".join(f'<tr class="{"pass" if j.passed else "below"}"><td>{j.attempt}</td><td>{j.score:g}</td>'
                       f"<td>{j.threshold:g}</td><td>{'passed' if j.passed else 'below'}</td>"
                       f"<td>{e(j.feedback)}</td></tr>" for j in s.judge)
        parts.append('<h4>Judge scores</h4><table class="grid"><tr><th>attempt</th><th>score</th>'
                     f"<th>threshold</th><th></th><th>feedback</th></tr>{rows}</table>")
    if s.vote:
        v = s.vote
        total = sum(v.counts.values()) or 1
        rows = "".join(f'<tr class="{"win" if k == v.winner else ""}"><td>{e(k)}</td><td>{n}</td>'
                       f'<td><meter min="0" max="{total}" value="{n}"></meter></td></tr>'
                       for k, n in sorted(v.counts.items(), key=lambda kv: -kv[1]))
        tie = f" · tie between {e(', '.join(v.tied))}, broken by rule '{e(v.tie_rule)}'" if v.tie else ""
        parts.append(f'<h4>Vote</h4><p>winner: <b>{e(v.winner)}</b>{tie}</p>'
                     f'<table class="grid"><tr><th>answer (normalised)</th><th>votes</th><th></th></tr>{rows}</table>')
    if len(s.rounds) > 1:
        items = "".join(f"<li><b>round {e(x.get('round'))}</b>{_pre(_text_of(x.get('value')))}</li>" for x in s.rounds)
        parts.append(f"<details><summary>Output of each round ({len(s.rounds)})</summary><ol class=\"rounds\">"
                     f"{items}</ol></details>")
    for f in s.failures:
        parts.append(f'<p class="error">round {f.round}{"" if f.branch is None else f" branch {f.branch}"}: '
                     f"{e(f.error_type)}: {e(f.error)}</p>")
    if calls:
        parts.append(f'<details class="calls"><summary>Prompt and model calls ({len(calls)})</summary>'
                     + "".join(_call(i, c) for i, c in enumerate(calls, 1)) + "</details>")
    parts.append("</article>")
    return "\n".join(parts)


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _value(s: StepRecord) -> str:
    v = s.value
    if isinstance(v, dict) and v.get("type") == "branches" and isinstance(v.get("branches"), list):
        branches = [b if isinstance(b, dict) else {"text": _plain(b)} for b in v["branches"]]
        items = "".join(f'<div class="branch"><div class="item">{e(_plain(b.get("item")))} '
                        f'<small>{e(b.get("model", "") if b.get("model") != b.get("item") else "")}</small>'
                        f'</div>{_pre(b.get("text", ""), "output")}</div>' for b in branches)
        return f"<h4>Output ({len(branches)} branches)</h4>{items}"
    if isinstance(v, dict) and v.get("type") == "verdict":
        ok = "passed" if v.get("passed") else "below threshold"
        return (f'<h4>Verdict</h4><p>score <b>{e(v.get("score"))}/{e(v.get("scale", 10))}</b> · {ok} · '
                f'{e(v.get("attempts"))} attempt(s)</p>{_pre(v.get("feedback", ""), "output")}')
    if isinstance(v, dict) and v.get("type") == "data":
        return f"<h4>Output (data)</h4>{_pre(_plain(v.get('data')), 'output')}"
    if s.output is None:
        return '<p class="muted">no output recorded</p>'
    return f"<h4>Output</h4>{_pre(s.output, 'output')}"


def _text_of(v: Any) -> str:
    from ..engine.values import as_text, from_json

    try:
        return as_text(from_json(v))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):  # not a value deliberate wrote
        return _plain(v)


def _call(i: int, c: CallRecord) -> str:
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
    msgs = "".join(f'<div class="msg {e(m.role)}"><div class="role">{e(m.role)}</div>{_pre(m.content)}</div>'
                   for m in c.messages)
    tries = ""
    if len(c.attempts) > 1:
        tries = "<ul class=\"attempts\">" + "".join(
            f"<li>{e(a.model_key)}: {'ok' if a.ok else e(a.error_type or 'error')} "
            f"{e(a.error or '')} ({a.seconds:.2f} s)</li>" for a in c.attempts) + "</ul>"
    return (f'<div class="call"><div class="callhead">{e(" · ".join(bits))}</div>'
            f'<div class="muted small">{e(" · ".join(extra))}</div>{tries}{msgs}'
            f'<div class="msg assistant"><div class="role">reply</div>{_pre(c.text)}</div></div>')


CSS = """
:root{--fg:#1d2330;--muted:#5c6677;--line:#d7dce4;--bg:#f6f7f9;--card:#fff;--ok:#1f7a3a;--okbg:#e3f4e8;
--re:#0b6c8a;--rebg:#ddf1f7;--bad:#b3261e;--badbg:#fbe3e1;--run:#8a5a00;--runbg:#fff1cc;--pend:#6b7280;
--pendbg:#f0f1f3}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 system-ui,-apple-system,"Segoe UI",
Roboto,"DejaVu Sans",sans-serif}
main{max-width:1100px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:0 0 12px;border-bottom:1px solid var(--line);
padding-bottom:6px}h3{font-size:17px;margin:0 0 8px}h4{font-size:14px;margin:14px 0 6px;color:var(--muted);
text-transform:uppercase;letter-spacing:.04em}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 20px;margin:16px 0}
header{margin-bottom:8px}.desc{color:var(--muted);margin:0 0 14px}
code{font:13px/1.4 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;background:var(--pendbg);
padding:1px 4px;border-radius:4px;overflow-wrap:anywhere}
pre{font:13px/1.45 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;background:#fafbfc;
border:1px solid var(--line);border-radius:6px;padding:10px 12px;margin:4px 0 8px;white-space:pre-wrap;
overflow-wrap:anywhere;max-height:480px;overflow:auto}
pre.answer{font-size:14px;background:#fff;max-height:none}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:0 0 12px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:120px}
.card .v{font-size:18px;font-weight:600}.card .k{font-size:12px;color:var(--muted)}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
ul.facts{display:flex;flex-wrap:wrap;gap:2px 24px;list-style:none;padding:0;margin:0 0 4px;font-size:14px}
ul.facts .k{color:var(--muted);font-size:13px;margin-right:4px}
dt{color:var(--muted);font-size:13px}dd{margin:0;font-size:14px}
.badge{display:inline-block;font-size:12px;font-weight:600;padding:1px 8px;border-radius:10px;
vertical-align:middle;border:1px solid transparent}
.badge.succeeded{color:var(--ok);background:var(--okbg)}.badge.reused{color:var(--re);background:var(--rebg)}
.badge.failed{color:var(--bad);background:var(--badbg)}.badge.running,.badge.interrupted{color:var(--run);
background:var(--runbg)}.badge.pending,.badge.skipped{color:var(--pend);background:var(--pendbg)}
.graphbox{overflow-x:auto}svg.graph{display:block;margin:0 auto;max-width:100%;height:auto}
.node rect{fill:#fff;stroke:#9aa3b2;stroke-width:1.5}.node.succeeded rect{fill:var(--okbg);stroke:var(--ok)}
.node.reused rect{fill:var(--rebg);stroke:var(--re)}.node.failed rect{fill:var(--badbg);stroke:var(--bad)}
.node.running rect{fill:var(--runbg);stroke:var(--run)}.node.skipped rect,.node.pending rect{fill:var(--pendbg);
stroke:var(--pend);stroke-dasharray:4 3}.node.loop rect{stroke-width:2.5}
.node text{text-anchor:middle;fill:var(--fg);font-family:system-ui,"DejaVu Sans",sans-serif}
.node .name{font-size:14px;font-weight:600}.node .sub{font-size:11px;fill:var(--muted)}
a:hover .node rect{stroke-width:3}
.edge{fill:none;stroke:#8b94a3;stroke-width:1.5}.edge.carry{stroke-dasharray:5 4;stroke:var(--re)}
.arrowhead{fill:#8b94a3}
.legend{font-size:13px;color:var(--muted);text-align:center}
article.step{border:1px solid var(--line);border-left:5px solid var(--pend);border-radius:8px;
padding:12px 16px;margin:12px 0;background:#fff}
article.step.succeeded{border-left-color:var(--ok)}article.step.reused{border-left-color:var(--re)}
article.step.failed{border-left-color:var(--bad)}article.step.running{border-left-color:var(--run)}
article.step:target{box-shadow:0 0 0 3px #9cc3ff}
.branch .item{font-weight:600;font-size:14px;margin-top:8px}.branch small{color:var(--muted);font-weight:400}
table{border-collapse:collapse;width:100%;font-size:14px}th,td{text-align:left;vertical-align:top;
padding:4px 8px;border-bottom:1px solid var(--line)}table.kv th{width:140px;color:var(--muted)}
tr.win td{font-weight:600}tr.pass td:nth-child(4){color:var(--ok)}tr.below td:nth-child(4){color:var(--run)}
meter{width:160px}
details{margin:8px 0}ol.rounds{list-style:none;padding-left:0}summary{cursor:pointer;color:var(--re);font-weight:600;font-size:14px}
.call{border-top:1px dashed var(--line);padding:8px 0}.callhead{font-weight:600;font-size:13px}
.msg .role{font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);margin-top:6px}
.msg.system pre{background:#f3f0ff}.msg.assistant pre{background:#f1f8f3}
.muted{color:var(--muted)}.small{font-size:12px}.error{color:var(--bad);font-weight:600}
.toolbar{text-align:right;margin:-6px 0 6px}.toolbar button{font:inherit;font-size:13px;padding:3px 10px;
border:1px solid var(--line);border-radius:6px;background:#fff;cursor:pointer}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:24px}
@media print{details{display:block}pre{max-height:none}}
"""

JS = """
(function () {
  var steps = document.getElementById('steps');
  if (!steps) { return; }
  var bar = document.createElement('div');
  bar.className = 'toolbar';
  [['expand all', true], ['collapse all', false]].forEach(function (b) {
    var btn = document.createElement('button');
    btn.type = 'button';
    btn.textContent = b[0];
    btn.addEventListener('click', function () {
      steps.querySelectorAll('details').forEach(function (d) { d.open = b[1]; });
    });
    bar.appendChild(btn);
    bar.appendChild(document.createTextNode(' '));
  });
  steps.insertBefore(bar, steps.children[1] || null);
})();
"""
