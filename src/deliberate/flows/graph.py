"""The flow as a graph: edges from template references, cycles, order, Mermaid export."""

from __future__ import annotations

from .spec import Flow, Step
from .templates import TemplateProblem, expression_source, references


def step_templates(step: Step) -> list[tuple[str, str]]:
    """(field, template source) for every template in a step; expressions are wrapped."""
    return [(t.field, expression_source(t.source) if t.expression else t.source) for t in step.templates()]


def step_references(step: Step) -> set[str]:
    """Every free name a step's templates use."""
    names: set[str] = set()
    for _field, source in step_templates(step):
        try:
            names |= references(source)
        except TemplateProblem:
            continue  # reported by the checks with its location
    return names


def dependencies(flow: Flow) -> dict[str, set[str]]:
    """Step -> the steps it must wait for. Names that are not steps are ignored here (the
    checks report them)."""
    steps = set(flow.steps)
    deps: dict[str, set[str]] = {}
    for name, step in flow.steps.items():
        deps[name] = (step_references(step) | set(step.needs) | step.edges()) & steps
    # A judge gates its target: whoever reads the target reads the judged version.
    for jname, judge in flow.steps.items():
        if judge.kind != "judge" or judge.target not in steps:
            continue
        upstream = ancestors(deps, jname)
        for name, d in deps.items():
            if name != jname and judge.target in d and name not in upstream:
                d.add(jname)
    return deps


def ancestors(deps: dict[str, set[str]], name: str) -> set[str]:
    seen: set[str] = set()
    stack = list(deps.get(name, ()))
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(deps.get(n, ()))
    return seen


def descendants(deps: dict[str, set[str]], name: str) -> set[str]:
    out: set[str] = set()
    frontier = {name}
    while frontier:
        nxt = {s for s, d in deps.items() if d & frontier and s not in out}
        out |= nxt
        frontier = nxt
    return out


def find_cycle(deps: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of step names (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(deps.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if state.get(m) is None:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(deps):
        if state.get(n) is None:
            found = visit(n)
            if found:
                # present it in the direction of data flow: a -> b means b reads a
                return list(reversed(found))
    return None


def topo_order(deps: dict[str, set[str]], order_hint: list[str] | None = None) -> list[str]:
    """Steps in an order that respects every edge (ties in declaration order)."""
    hint = order_hint or list(deps)
    done: list[str] = []
    remaining = list(hint)
    while remaining:
        for n in remaining:
            if deps.get(n, set()) <= set(done):
                done.append(n)
                remaining.remove(n)
                break
        else:
            raise ValueError("cycle")
    return done


def output_step(flow: Flow, deps: dict[str, set[str]]) -> str:
    """The step whose value is the answer: ``output`` or the last step in order."""
    if flow.output:
        return flow.output
    order = topo_order(deps, list(flow.steps))
    sinks = [n for n in order if not any(n in d for d in deps.values())]
    model_sinks = [n for n in sinks if flow.steps[n].calls_model or flow.steps[n].kind == "vote"]
    return (model_sinks or sinks or order)[-1]


def mermaid(flow: Flow) -> str:
    """The flow as a Mermaid flowchart."""
    deps = dependencies(flow)
    lines = ["flowchart TD"]
    loop = set(flow.rounds.steps) if flow.rounds else set()
    for name, step in flow.steps.items():
        label = name
        if step.kind != "generate":
            label += f"<br/><i>{step.kind}</i>"
        if step.for_each is not None:
            label += "<br/><i>for each</i>"
        if step.when:
            label += f"<br/><i>when {step.when}</i>"
        shape = ("{{", "}}") if step.kind in ("judge", "vote") else ("[", "]")
        lines.append(f'  {name}{shape[0]}"{_escape(label)}"{shape[1]}')
    for name in flow.steps:
        for dep in sorted(deps[name]):
            lines.append(f"  {dep} --> {name}")
    if flow.rounds and loop:
        lines.append(f'  subgraph rounds["rounds (max {flow.rounds.max})"]')
        for n in flow.rounds.steps:
            if n in flow.steps:
                lines.append(f"    {n}")
        lines.append("  end")
        for reader, writer in flow.rounds.carry.items():
            if reader in flow.steps and writer in flow.steps:
                lines.append(f"  {writer} -. next round .-> {reader}")
    return "\n".join(lines)


def _escape(text: str) -> str:
    return text.replace('"', "'")
