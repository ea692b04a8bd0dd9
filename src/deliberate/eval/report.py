"""An eval as one self-contained HTML page: the verdict, the score per arm with its interval and
the score per round as inline SVG charts, the paired comparisons, realised compute, the judge
audit and every item. Built like the run report (:mod:`deliberate.records.report`): plain data
into a Jinja2 template with autoescape and an escaping finalize, CSS inline and named by hash in a
Content Security Policy that forbids everything else (no script, nothing fetched), secret values
scrubbed from the finished page."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Any

from ..records.report import e
from ..records.store import write_atomic
from .record import SCHEMA_VERSION, EvalRecord

CHART_W, LABEL_W, BAR_H = 720, 170, 30


def write_report(record: EvalRecord, report: dict[str, Any], path: Path) -> None:
    """Write the page (atomically), readable as any file the user creates."""
    write_atomic(path, render(record, report))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def render(record: EvalRecord, report: dict[str, Any]) -> str:
    from ..config import scrub, secret_values

    html = str(_environment().get_template("eval.html.j2").render(**view(record, report), **_assets()))
    secrets = secret_values()
    return scrub(html, secrets, extra=[e(v) for v in secrets if e(v) != v]) if secrets else html


def _finalize(value: Any) -> Any:
    from markupsafe import Markup

    # every value escaped by e() (the form the secret scrub looks for); the page's CSS passes as is
    return value if isinstance(value, Markup) else Markup(e(value))


def _sha(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


@functools.cache
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("deliberate.eval", "templates"), autoescape=True,
                              finalize=_finalize, undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


@functools.cache
def _assets() -> dict[str, Any]:
    from markupsafe import Markup

    css = resources.files(__package__).joinpath("templates", "eval.css").read_text(encoding="utf-8")
    return {"css": Markup(css), "css_hash": _sha(css)}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def arms_chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Horizontal bars of the pass rate with the Wilson interval as error bars."""
    span = CHART_W - LABEL_W - 70
    bars = []
    for i, r in enumerate(rows):
        name = f"flow ({r['flow']})" if r["arm"] == "flow" else r["arm"]
        lo, hi = r["wilson"]
        bars.append({"label": name, "y": 8 + i * BAR_H, "w": round(span * r["pass_rate"], 1),
                     "lo": round(LABEL_W + span * lo, 1), "hi": round(LABEL_W + span * hi, 1),
                     "flow": r["arm"] == "flow", "text": _pct(r["pass_rate"])})
    ticks = [{"x": round(LABEL_W + span * t / 4, 1), "label": f"{25 * t}%"} for t in range(5)]
    return {"width": CHART_W, "height": 8 + len(rows) * BAR_H + 24, "x0": LABEL_W, "bars": bars, "ticks": ticks}


def rounds_chart(stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The flow's score at each stage, as a line."""
    if not stages:
        return None
    height, base = 200, 170
    step = (CHART_W - 100) / max(1, len(stages) - 1)
    dots = [{"x": round(60 + i * step, 1), "y": round(base - 160 * s["score"], 1), "label": s["stage"],
             "text": f"{s['score']:.2f}"} for i, s in enumerate(stages)]
    return {"width": CHART_W, "height": height, "base": base, "dots": dots,
            "points": " ".join(f"{d['x']},{d['y']}" for d in dots)}


def view(rec: EvalRecord, report: dict[str, Any]) -> dict[str, Any]:
    """What the page shows, as plain data (the template escapes every value)."""
    arms = [{"name": f"flow ({r['flow']})" if r["arm"] == "flow" else r["arm"], "k": r["k"] or "", "n": r["n"],
             "pass_rate": _pct(r["pass_rate"]), "interval": f"{_pct(r['wilson'][0])} - {_pct(r['wilson'][1])}",
             "score": f"{r['score']:.3f}", "calls": f"{r['calls_per_item']:.2f}",
             "tokens": f"{r['tokens_per_item']:.0f}", "cost": f"${r['cost_usd']:.4f}",
             "latency": f"{r['latency_s_per_item']:.2f} s"} for r in report["arms"]]
    comps = [{"baseline": c["baseline"], "n": c["n"], "flow_wins": c["flow_wins"], "baseline_wins": c["baseline_wins"],
              "difference": f"{c['difference']:+.3f}",
              "interval": f"{c['interval'][0]:+.3f} .. {c['interval'][1]:+.3f}", "test": c["test"],
              "p": f"{c['p_value']:.4g}", "p_holm": f"{c['p_holm']:.4g}", "verdict": c["verdict"]}
             for c in report["comparisons"]]
    names = [a.name for a in rec.arms]
    items = []
    for iid in rec.item_ids:
        item = rec.items.get(iid)
        cells = []
        for n in names:
            r = item.arms.get(n) if item is not None else None
            if r is None:
                cells.append({"cls": "", "text": "not run", "title": ""})
            else:
                cells.append({"cls": "pass" if r.passed else "fail",
                              "text": ("pass" if r.passed else "fail") + (f" {r.value:.2f}" if 0 < r.value < 1 else ""),
                              "title": f"runs: {', '.join(r.run_ids)}; answer: {(r.answer or r.error or '')[:300]}"})
        items.append({"id": iid, "cells": cells})
    judge = report.get("judge")
    judge_text = None
    if judge:
        judge_text = (f"{judge['pairs']} pairwise verdicts, each asked in both orders; {judge['position_flips']} "
                      f"flipped with the order ({_pct(judge['flip_rate'])}), counted as ties; agreement with the "
                      f"scorer {_pct(judge['scorer_agreement'])} of {judge['scorer_comparable']} comparable pairs.")
    return {
        "eval_id": rec.eval_id, "flow": rec.flow, "dataset": rec.dataset, "scorer": rec.scorer,
        "status": rec.status, "stop_reason": rec.stop_reason, "done": report["done"], "items": report["items"],
        "match": rec.match, "verdict": report["verdict"], "arms_chart": arms_chart(report["arms"]), "arms": arms,
        "comparisons": comps, "rounds_chart": rounds_chart(report["rounds"]["stages"]),
        "flips": {"right_to_wrong": report["rounds"]["flips"].get("right_to_wrong", 0),
                  "wrong_to_right": report["rounds"]["flips"].get("wrong_to_right", 0)},
        "judge": judge_text, "arm_names": names, "item_rows": items, "version": rec.deliberate_version,
        "schema": SCHEMA_VERSION,
    }
