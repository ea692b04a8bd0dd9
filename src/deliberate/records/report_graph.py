"""The flow graph of the HTML report: a layered top-down layout of the recorded steps, and the
drawing as plain data (boxes, labels and SVG path strings) for the report's template.

A record is untrusted input: the graph is recomputed from the recorded flow when it validates
here, drawn without edges when it does not, and a ``rounds`` block of an unexpected shape only
loses its loop marks."""

from __future__ import annotations

from typing import Any

from .schema import RunRecord

NODE_W, NODE_H, GAP_X, GAP_Y, PAD, VIRTUAL_W = 176, 58, 36, 56, 24, 8


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


def rounds_spec(r: RunRecord) -> dict[str, Any]:
    """The recorded flow's ``rounds`` block, or ``{}`` if it has none (or not as a mapping)."""
    spec = r.flow.get("rounds")
    return spec if isinstance(spec, dict) else {}


def names(value: Any) -> list[str]:
    """The strings of a recorded list of step names (anything else left out)."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def anchor(name: str) -> str:
    """The HTML id of a step's section: only letters, digits, ``-`` and ``_``, so it needs no
    escaping and no step name can close the attribute."""
    return "step-" + "".join(c if c.isalnum() or c in "-_" else f"_{ord(c):x}" for c in name)


def graph_view(r: RunRecord) -> dict[str, Any]:
    """The drawing of the flow graph, as plain data: ``note`` (the flow did not validate here),
    ``empty`` (no step to draw), else the SVG's size, its ``edges`` and ``carries`` (SVG path
    strings and the steps they join) and its ``nodes``. Coordinates are formatted here, so the
    template only places them."""
    deps = edges_of(r)
    note = deps is None
    if deps is None:
        deps = {n: set() for n in r.order}
    order = [n for n in r.order if n in r.steps]
    if not order:
        return {"empty": True, "note": False}  # as before: "no steps" says it all
    lay = layout(order, deps)
    pos = lay.box
    w, h = lay.width + 60, lay.height
    loop = set(names(rounds_spec(r).get("steps")))
    edges = [{"d": _route(pos, src, dst, virtual), "src": src, "dst": dst} for src, dst, virtual in lay.routes]
    carries = []
    carry = rounds_spec(r).get("carry")
    for reader, writer in (carry.items() if isinstance(carry, dict) else ()):
        if isinstance(writer, str) and reader in pos and writer in pos:  # the loop's feedback edge, drawn on the right side
            x1, y1 = pos[writer][0] + NODE_W, pos[writer][1] + NODE_H / 2
            x2, y2 = pos[reader][0] + NODE_W, pos[reader][1] + NODE_H / 2
            bend = max(x1, x2) + 50
            carries.append({"d": f"M{x1:.0f},{y1:.0f} C{bend:.0f},{y1:.0f} {bend:.0f},{y2:.0f} {x2 + 2:.0f},{y2:.0f}",
                            "writer": writer, "reader": reader})
    nodes = []
    for n in order:
        s = r.steps[n]
        x, y, _w = pos[n]
        models = ", ".join(sorted({c.model_key for c in s.calls}))
        sub = " · ".join(p for p in (s.kind if s.kind != "generate" else "", s.status, models) if p)
        nodes.append({"name": n, "anchor": anchor(n), "cls": f"node {s.status}" + (" loop" if n in loop else ""),
                      "sub": sub, "label": _clip(n, 22), "sublabel": _clip(sub, 28), "loop": n in loop,
                      "x": f"{x:.0f}", "y": f"{y:.0f}", "cx": f"{x + NODE_W / 2:.0f}",
                      "name_y": f"{y + 24:.0f}", "sub_y": f"{y + 43:.0f}"})
    return {"empty": False, "note": note, "width": f"{w:.0f}", "height": f"{h:.0f}", "node_w": NODE_W,
            "node_h": NODE_H, "edges": edges, "carries": carries, "nodes": nodes, "loop": bool(loop)}


def _route(pos: dict[str, tuple[float, float, float]], src: str, dst: str, virtual: list[str]) -> str:
    """The SVG path of an edge: a smooth S between layers, straight through virtual lanes."""
    pts = [_bottom(pos[src])]
    for v in virtual:
        pts += [_top(pos[v]), _bottom(pos[v])]
    pts.append(_top(pos[dst]))
    d = f"M{pts[0][0]:.0f},{pts[0][1]:.0f}"
    for k in range(1, len(pts)):
        (x1, y1), (x2, y2) = pts[k - 1], pts[k]
        if k == len(pts) - 1:
            y2 -= 2  # stop short of the box, so the arrowhead shows
        if k % 2:  # between layers: a smooth S
            my = (y1 + y2) / 2
            d += f" C{x1:.0f},{my:.0f} {x2:.0f},{my:.0f} {x2:.0f},{y2:.0f}"
        else:  # through a virtual node's lane
            d += f" L{x2:.0f},{y2:.0f}"
    return d


def _top(box: tuple[float, float, float]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1]


def _bottom(box: tuple[float, float, float]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + NODE_H


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
