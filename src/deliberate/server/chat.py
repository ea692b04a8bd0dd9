"""A chat completion as a deliberate run: the request's messages become a flow's inputs (or one
gateway call for a plain model key), and the run's events become chat-completion deltas.

Streaming follows DESIGN.md ("Streaming a flow as an OpenAI chat completion"): every step before
the answer streams as reasoning (``reasoning_content`` and ``reasoning``), each headed by a line
with its name; the answer streams as ``content``. Steps running side by side do not interleave:
one streams live, the others' text waits and follows when it ends."""

from __future__ import annotations

import json
from typing import Any

from ..engine.events import Event, RunFinished, StepFailed, StepFinished, StepSkipped, StepStarted, Token
from ..flows.loader import LoadedFlow, load_flow
from ..registry import Registry
from ..services import GenerateRequest, RunRequest, generate, prompt_input, run
from ..services.live import ServiceCall
from .catalog import flow_path
from .errors import APIError
from .schemas import ChatMessage, ChatRequest, DeliberateOptions

FLOW_PREFIX = "flow:"
#: Longest text shown for a step whose value did not stream (a function step, a vote, a branch list).
MAX_SHOWN = 4000


def find_flow(name: str, registry: Registry) -> LoadedFlow:
    """A flow by name from the lookup order, never a path: a client names flows, not files."""
    path = flow_path(name)
    if path is None:
        raise APIError(404, f"no flow named {name!r} (GET /v1/models lists them as flow:<name>)",
                       code="model_not_found")
    return load_flow(path, registry)


def transcript(messages: list[ChatMessage]) -> str:
    return "\n\n".join(f"{m.role}: {m.text}" for m in messages)


def split(messages: list[ChatMessage]) -> tuple[str, list[ChatMessage], str]:
    """The system text, the turns before the last user message, and that message."""
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        raise APIError(400, "messages: no user message", code="invalid_messages")
    last = users[-1]
    system = "\n\n".join(m.text for m in messages if m.role in ("system", "developer"))
    earlier = [m for m in messages[:last] if m.role not in ("system", "developer")]
    return system, earlier, messages[last].text


def flow_call(req: ChatRequest, loaded: LoadedFlow) -> tuple[ServiceCall, float | None]:
    """The run a chat completion asks of a flow: the last user message fills the flow's main
    input; earlier turns fill ``history`` and system text fills ``system`` when the flow declares
    them; the ``deliberate`` object sets any input and the run's options."""
    opts = req.deliberate or DeliberateOptions()
    system, earlier, last = split(req.messages)
    flow = loaded.flow
    inputs: dict[str, Any] = dict(opts.inputs)
    main = prompt_input(flow)
    if main is not None:
        inputs.setdefault(main, last)
    if "history" in flow.inputs and earlier:
        inputs.setdefault("history", transcript(earlier))
    if "system" in flow.inputs and system:
        inputs.setdefault("system", system)
    options = opts.run_options()
    if options.temperature is None:
        options.temperature = req.temperature
    if options.seed is None:
        options.seed = req.seed
    request = RunRequest(loaded, inputs, options)
    return (lambda env: run(request, env)), options.max_cost


def model_call(req: ChatRequest, key: str) -> tuple[ServiceCall, float | None]:
    """One gateway call to a model key, recorded as a one-step run. The engine's generate step
    sends one system and one user message, so earlier turns go into the prompt as a transcript."""
    opts = req.deliberate or DeliberateOptions()
    system, earlier, last = split(req.messages)
    prompt = f"{transcript(earlier)}\n\nuser: {last}" if earlier else last
    request = GenerateRequest(prompt, model=key, strategy=opts.strategy, system=system or None,
                              max_tokens=req.max_completion_tokens or req.max_tokens,
                              seed=opts.seed if opts.seed is not None else req.seed, max_cost=opts.max_cost)
    return (lambda env: generate(request, env)), opts.max_cost


def streams_answer(loaded: LoadedFlow | None) -> bool:
    """Whether the answer step's tokens can go out as ``content`` while it runs: only when it
    runs once (not in a rounds block, not re-run by a judge, not fanned out). Otherwise its text
    streams as reasoning and the answer follows once the run ends."""
    if loaded is None:  # the one-step run of a plain model
        return True
    flow, out = loaded.flow, loaded.output
    step = flow.steps[out]
    if step.kind != "generate" or getattr(step, "for_each", None) is not None:
        return False
    if flow.rounds is not None and out in flow.rounds.steps:
        return False
    return not any(getattr(s, "target", None) == out for s in flow.steps.values())


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + " …"


class ChatStream:
    """Turns a run's events into deltas: ``{"reasoning_content": ..., "reasoning": ...}`` or
    ``{"content": ...}``. Call :meth:`feed` per event; :attr:`finished` holds the RunFinished."""

    def __init__(self, output_step: str, live_answer: bool) -> None:
        self.output, self.live_answer = output_step, live_answer
        self.sent_content = ""
        self.finished: RunFinished | None = None
        self.active: tuple[str, int] | None = None  # the step streaming now
        self.waiting: dict[tuple[str, int], list[str]] = {}  # others' text, in start order
        self.done: set[tuple[str, int]] = set()
        self.streamed: set[tuple[str, int]] = set()

    def feed(self, event: Event) -> list[dict[str, str]]:
        out: list[str] = []
        content: list[str] = []
        if isinstance(event, Token):
            if event.branch is not None:
                return []  # fan-out branches show their values when the step ends
            if event.step == self.output and self.live_answer:
                if not event.reset:
                    content.append(event.text)
                    self.sent_content += event.text
            else:
                self._text((event.step, event.round), "\n[retrying]\n" if event.reset else event.text, out)
        elif isinstance(event, StepStarted) and event.branch is None:
            key = (event.step, event.round)
            if key in self.done:  # a judge re-runs its target
                self.done.discard(key)
                self.streamed.discard(key)
            if not (event.step == self.output and self.live_answer):
                self._open(key, out)
        elif isinstance(event, StepFinished) and not (event.step == self.output and self.live_answer):
            key = (event.step, event.round)
            if key not in self.streamed and event.step != self.output:
                self._text(key, _shown(event.value), out)
            self._close(key, out)
        elif isinstance(event, StepSkipped):
            self._text((event.step, event.round), "(skipped)", out)
            self._close((event.step, event.round), out)
        elif isinstance(event, StepFailed):
            self._text((event.step, event.round), f"(failed: {event.error})", out)
            self._close((event.step, event.round), out)
        elif isinstance(event, RunFinished):
            self.finished = event
            self.done.update(self.waiting)
            if self.active is None and self.waiting:
                self.active = next(iter(self.waiting))
                out.extend(self.waiting.pop(self.active))
            while self.active is not None:  # flush what waits, in start order
                self._close(self.active, out)
            if event.output is not None:
                rest = event.output[len(self.sent_content):] if event.output.startswith(self.sent_content) \
                    else "\n\n" + event.output
                if rest:
                    content.append(rest)
        deltas: list[dict[str, str]] = []
        if out:
            text = "".join(out)
            deltas.append({"reasoning_content": text, "reasoning": text})
        if content:
            deltas.append({"content": "".join(content)})
        return deltas

    def _header(self, key: tuple[str, int]) -> str:
        name, rnd = key
        return f"### {name}" + (f" (round {rnd})" if rnd > 1 else "") + "\n\n"

    def _open(self, key: tuple[str, int], out: list[str]) -> None:
        if key in self.waiting or key == self.active:
            return
        if self.active is None:
            self.active = key
            out.append(self._header(key))
        else:
            self.waiting[key] = [self._header(key)]

    def _text(self, key: tuple[str, int], text: str, out: list[str]) -> None:
        self._open(key, out)
        self.streamed.add(key)
        if key == self.active:
            out.append(text)
        else:
            self.waiting.setdefault(key, [self._header(key)]).append(text)

    def _close(self, key: tuple[str, int], out: list[str]) -> None:
        self.done.add(key)
        if key != self.active:
            return
        out.append("\n\n")
        self.active = None
        # the next step in start order takes the stream: what it said so far, then live
        while self.waiting:
            nxt = next(iter(self.waiting))
            out.extend(self.waiting.pop(nxt))
            if nxt in self.done:
                out.append("\n\n")
                continue
            self.active = nxt
            break
