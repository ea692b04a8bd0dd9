"""``deliberate evals diff A B``: two evals on the items they share (a changed prompt, another
model): each arm's pass rate in both, and B's flow against A's, paired (McNemar or sign test)."""

from __future__ import annotations

from typing import Any

from .analysis import BOOTSTRAP_SEED, RESAMPLES, _graded
from .record import EvalRecord
from .stats import compare


def _rate(rec: EvalRecord, arm: str, ids: list[str]) -> float | None:
    results = [rec.items[i].arms[arm] for i in ids if arm in rec.items[i].arms]
    return sum(r.passed for r in results) / len(results) if results else None


def diff_evals(a: EvalRecord, b: EvalRecord) -> dict[str, Any]:
    """The diff document (see the module docstring)."""
    common = [i for i in a.item_ids if i in a.items and i in b.items]
    names = [x.name for x in a.arms] + [x.name for x in b.arms if x.name not in {y.name for y in a.arms}]
    doc: dict[str, Any] = {"a": a.eval_id, "b": b.eval_id, "common": len(common),
                           "arms": [{"arm": n, "a": _rate(a, n, common), "b": _rate(b, n, common)} for n in names],
                           "flow": None}
    paired = [i for i in common if "flow" in a.items[i].arms and "flow" in b.items[i].arms]
    if paired:
        graded = _graded(a) or _graded(b)
        fa = [a.items[i].arms["flow"].value if graded else float(a.items[i].arms["flow"].passed) for i in paired]
        fb = [b.items[i].arms["flow"].value if graded else float(b.items[i].arms["flow"].passed) for i in paired]
        c = compare(fb, fa, binary=not graded, seed=BOOTSTRAP_SEED, resamples=RESAMPLES)
        doc["flow"] = {"n": c.n, "difference": c.difference, "interval": [c.low, c.high], "test": c.test,
                       "p_value": c.p_value, "b_wins": c.flow_wins, "a_wins": c.baseline_wins,
                       "verdict": c.verdict.replace("flow better", "B better").replace("flow worse", "B worse")}
    return doc
