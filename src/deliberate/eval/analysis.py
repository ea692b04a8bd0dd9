"""The analysis of an eval record: each arm's score with a Wilson interval and its realised
compute, the flow against each baseline on the same items (paired bootstrap interval of the
difference, exact McNemar for pass/fail scores or the sign test for graded ones, Holm across the
baselines, the items where they disagree), per-round ablation, flips, and the judge audit. Pure
data, the same every time for the same record (the bootstrap is seeded)."""

from __future__ import annotations

from typing import Any

from .record import EvalRecord
from .stats import FLOW_BETTER, FLOW_WORSE, adjust_holm, compare, wilson

BOOTSTRAP_SEED = 20240501
RESAMPLES = 10_000
GRADED = ("checker", "judge", "python")


def _graded(rec: EvalRecord) -> bool:
    name = rec.scorer.partition(":")[0]
    return name in GRADED or name not in ("exact", "includes", "regex", "numeric", "choice", "code")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def arm_rows(rec: EvalRecord) -> list[dict[str, Any]]:
    """Per arm: items run, passed, mean score, Wilson interval of the pass rate, realised compute."""
    rows = []
    for arm in rec.arms:
        results = [i.arms[arm.name] for i in rec.items.values() if arm.name in i.arms]
        n, passed = len(results), sum(r.passed for r in results)
        lo, hi = wilson(passed, n)
        rows.append({
            "arm": arm.name, "kind": arm.kind, "flow": arm.flow, "model": arm.model, "k": arm.k,
            "n": n, "passed": passed, "failed_runs": sum(r.status == "failed" for r in results),
            "pass_rate": passed / n if n else 0.0, "wilson": [lo, hi],
            "score": _mean([r.value for r in results]),
            "calls_per_item": _mean([r.calls for r in results]),
            "tokens_per_item": _mean([r.tokens for r in results]),
            "cost_usd": sum(r.cost_usd for r in results),
            "latency_s_per_item": _mean([r.latency_s for r in results]),
            "scoring_cost_usd": sum(r.scoring_cost_usd for r in results),
        })
    return rows


def comparisons(rec: EvalRecord) -> list[dict[str, Any]]:
    """The flow against each baseline, on the items both finished."""
    graded = _graded(rec)
    raw, names, disagree = [], [], []
    for arm in rec.arms[1:]:
        pairs = [(i.id, i.arms["flow"], i.arms[arm.name]) for i in rec.items.values()
                 if "flow" in i.arms and arm.name in i.arms]
        if not pairs:
            continue
        f = [r.value if graded else float(r.passed) for _, r, _ in pairs]
        b = [r.value if graded else float(r.passed) for _, _, r in pairs]
        raw.append(compare(f, b, binary=not graded, seed=BOOTSTRAP_SEED, resamples=RESAMPLES))
        names.append(arm.name)
        disagree.append([{"id": iid, "flow": fr.value if graded else fr.passed,
                          "baseline": br.value if graded else br.passed}
                         for iid, fr, br in pairs if (fr.value if graded else fr.passed)
                         != (br.value if graded else br.passed)])
    out = []
    for name, c, d in zip(names, adjust_holm(raw) if raw else [], disagree, strict=False):
        out.append({"baseline": name, "n": c.n, "flow_mean": c.flow_mean, "baseline_mean": c.baseline_mean,
                    "difference": c.difference, "interval": [c.low, c.high], "test": c.test,
                    "p_value": c.p_value, "p_holm": c.p_adjusted, "flow_wins": c.flow_wins,
                    "baseline_wins": c.baseline_wins, "verdict": c.verdict, "disagreements": d})
    return out


def ablation(rec: EvalRecord) -> dict[str, Any]:
    """The flow's answer scored at each stage (creator, round 1, ...), and flips summed."""
    stages: dict[str, list[float]] = {}
    passes: dict[str, list[bool]] = {}
    flips: dict[str, int] = {}
    items = 0
    for item in rec.items.values():
        flow = item.arms.get("flow")
        if flow is None or not flow.stages:
            continue
        items += 1
        for s in flow.stages:
            stages.setdefault(s.stage, []).append(s.value)
            passes.setdefault(s.stage, []).append(s.passed)
        for k, v in flow.flips.items():
            flips[k] = flips.get(k, 0) + v
    held = flips.get("right_before", 0)
    return {"items": items, "stages": [{"stage": s, "n": len(v), "score": _mean(v),
                                        "pass_rate": _mean([float(p) for p in passes[s]])}
                                       for s, v in stages.items()], "flips": flips,
            "abandoned_right_rate": flips.get("right_to_wrong", 0) / held if held else None}


def judge_audit(rec: EvalRecord) -> dict[str, Any] | None:
    """Pairwise verdicts of the judge, both orders: flip rate, and agreement with the scorer on
    items where the scorer says exactly one of the two is right."""
    per: dict[str, dict[str, int]] = {}
    total = flipped = agree = comparable = 0
    for item in rec.items.values():
        flow = item.arms.get("flow")
        if flow is None:
            continue
        for name, pair in flow.pairs.items():
            row = per.setdefault(name, {"flow": 0, "baseline": 0, "tie": 0})
            row[pair.winner] += 1
            total += 1
            flipped += int(pair.flipped)
            other = item.arms.get(name)
            if other is not None and flow.passed != other.passed and pair.winner != "tie":
                comparable += 1
                agree += int((pair.winner == "flow") == flow.passed)
    if not total:
        return None
    return {"pairs": total, "position_flips": flipped, "flip_rate": flipped / total,
            "scorer_comparable": comparable, "scorer_agreement": agree / comparable if comparable else None,
            "per_baseline": per}


def verdicts(rows: list[dict[str, Any]], comps: list[dict[str, Any]]) -> list[str]:
    """Plain sentences: who won, by how much, and whether it means anything."""
    arms = {r["arm"]: r for r in rows}
    if not comps and len(arms) == 1:
        return ["no baseline to compare with, so this eval cannot say whether deliberating was worth "
                "it: add --baseline single --baseline self_consistency (compute-matched)"]
    lines = []
    for c in comps:
        b = arms[c["baseline"]]
        k = f" (k={b['k']})" if b["k"] else ""
        head = (f"flow {c['flow_mean']:.3f} vs {c['baseline']}{k} {c['baseline_mean']:.3f}: difference "
                f"{c['difference']:+.3f} [{c['interval'][0]:+.3f}, {c['interval'][1]:+.3f}], {c['test']} "
                f"p={c['p_value']:.4g} (Holm {c['p_holm']:.4g})")
        if c["verdict"] == FLOW_BETTER:
            tail = "the flow is significantly better"
        elif c["verdict"] == FLOW_WORSE:
            tail = "the flow LOSES: the baseline is significantly better"
        elif c["difference"] < 0:
            tail = "the flow scores lower; the difference is not significant"
        elif c["difference"] > 0:
            tail = "the flow scores higher, but the difference is not significant"
        else:
            tail = "no difference"
        cost = arms["flow"]["calls_per_item"], b["calls_per_item"]
        lines.append(f"{head}: {tail} (calls per item: flow {cost[0]:.2f}, {c['baseline']} {cost[1]:.2f})")
    return lines


def analyse(rec: EvalRecord) -> dict[str, Any]:
    """Everything ``deliberate eval --json`` and ``evals show`` report."""
    rows = arm_rows(rec)
    comps = comparisons(rec)
    flow = next((r for r in rows if r["arm"] == "flow"), None)
    return {
        "eval_id": rec.eval_id, "status": rec.status, "stop_reason": rec.stop_reason, "flow": rec.flow,
        "dataset": rec.dataset, "scorer": rec.scorer, "items": len(rec.item_ids),
        "done": sum(1 for i in rec.items.values() if len(i.arms) == len(rec.arms)),
        "arms": rows, "comparisons": comps,
        "matched": {"match": rec.match, "flow_calls_per_item": flow["calls_per_item"] if flow else None,
                    "flow_tokens_per_item": flow["tokens_per_item"] if flow else None,
                    "k": {a.name: a.k for a in rec.arms if a.k is not None}},
        "rounds": ablation(rec), "judge": judge_audit(rec), "verdict": verdicts(rows, comps),
        "merged_from": rec.merged_from,
    }


def metric(report: dict[str, Any], name: str) -> float | None:
    """A ``--fail-under`` metric: ``pass_rate`` / ``score`` (the flow's, or ``ARM.pass_rate``),
    ``delta_vs_BASELINE`` (the flow's mean minus the baseline's)."""
    arms = {r["arm"]: r for r in report["arms"]}
    if name.startswith("delta_vs_"):
        base = name.removeprefix("delta_vs_")
        c = next((c for c in report["comparisons"] if c["baseline"] == base), None)
        return None if c is None else float(c["difference"])
    arm, _, field = name.rpartition(".")
    row = arms.get(arm or "flow")
    if row is None or field not in ("pass_rate", "score"):
        return None
    return float(row[field])
