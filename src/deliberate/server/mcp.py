"""``deliberate mcp``: every flow as MCP tools, over stdio or streamable HTTP (the MCP Python
SDK's :class:`MCPServer`). A face over the same services as the CLI and the HTTP server.

Tools: ``list_flows``; ``run_flow`` (progress per step; a cancelled call stops the run and leaves
it resumable; the result has the answer and the run id); ``get_run``; ``resume_run``. Resources:
each flow's YAML (``deliberate://flows/<name>``) and each recent run's record
(``deliberate://runs/<id>``)."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resources import FunctionResource

from .._version import __version__
from ..engine.events import StepFailed, StepFinished, StepSkipped
from ..errors import DeliberateError
from ..flows.loader import available_flows, load_flow
from ..records.store import list_records, load
from ..services import ResumeRequest, RunRequest, prompt_input, resume, run
from ..services.live import LiveRun, LiveRuns, ServiceCall
from .catalog import flow_path, flows_doc, record_file, run_doc
from .errors import safe_message
from .schemas import DeliberateOptions

#: Recent runs offered as resources when the server starts.
RECENT_RUNS = 20
INSTRUCTIONS = ("deliberate runs deliberation workflows (flows) of several model calls. list_flows shows "
                "each flow's inputs; run_flow runs one and returns its answer and run id; get_run reads a "
                "run; resume_run finishes an interrupted one.")


def _flow_resource(name: str) -> FunctionResource:
    def read() -> str:
        path = flow_path(name)
        if path is None:
            raise ToolError(f"no flow named {name!r}")
        return path.read_text(encoding="utf-8")

    return FunctionResource.from_function(read, uri=f"deliberate://flows/{name}", name=f"flow {name}",
                                          description=f"the YAML of flow {name}", mime_type="application/yaml")


def _run_resource(runs: LiveRuns, run_id: str) -> FunctionResource:
    def read() -> str:
        path = record_file(runs, run_id)
        if path is None:
            raise ToolError(f"no run {run_id}")
        return path.read_text(encoding="utf-8")  # records are scrubbed of secrets as written

    return FunctionResource.from_function(read, uri=f"deliberate://runs/{run_id}", name=f"run {run_id}",
                                          description=f"the record of run {run_id}", mime_type="application/json")


async def _follow(live: LiveRun, total: int, ctx: Context) -> None:
    """Report a progress notification per step that ends; a cancelled call stops the run."""
    done = 0
    try:
        async for _, event in live.follow():
            if isinstance(event, StepFinished | StepSkipped | StepFailed):
                done += 1
                await ctx.report_progress(min(done, total), total, f"{event.step}: {event.type[4:].lower()}")
    except BaseException:
        live.cancel()  # the record says interrupted; resume_run finishes it
        raise


def _result(live: LiveRun) -> dict[str, Any]:
    fin = live.finished_event()
    if live.run_id is None or fin is None:
        raise ToolError(safe_message(live.error or f"the run ended {live.status}"))
    out = {"run_id": live.run_id, "status": fin.status, "answer": fin.output,
           "calls": fin.totals.calls, "cost_usd": fin.totals.cost_usd}
    if fin.status != "succeeded":
        out["error"] = safe_message(fin.error or fin.status)
    return out


def build(runs: LiveRuns | None = None) -> MCPServer:
    """The MCP server over ``runs`` (default: the settings' registry, runs/ and one gateway)."""
    server: MCPServer = MCPServer("deliberate", instructions=INSTRUCTIONS, version=__version__,
                                  warn_on_duplicate_resources=False)
    holder: dict[str, LiveRuns] = {}

    def live_runs() -> LiveRuns:
        if "runs" not in holder:
            holder["runs"] = runs or LiveRuns()
        return holder["runs"]

    async def start(call: ServiceCall, total: int, ctx: Context, max_cost: float | None = None) -> dict[str, Any]:
        try:
            live = await live_runs().begin(call, max_cost=max_cost)
        except DeliberateError as exc:
            raise ToolError(safe_message(exc.line())) from None
        await _follow(live, total, ctx)
        server.add_resource(_run_resource(live_runs(), str(live.run_id)))
        return _result(live)

    @server.tool(description="The flows: each one's inputs, steps (a graph) and answer step.")
    def list_flows() -> list[dict[str, Any]]:
        return flows_doc(live_runs().registry)

    @server.tool(description="Run a flow. `prompt` fills its main input; `inputs` sets any input; `options` "
                             "sets models (step -> model key, or '*'), strategy, rounds, max_cost, seed. "
                             "Progress is reported per step. Returns the answer and the run id.")
    async def run_flow(flow: str, ctx: Context, prompt: str | None = None, inputs: dict[str, Any] | None = None,
                       options: DeliberateOptions | None = None) -> dict[str, Any]:
        registry = live_runs().registry
        path = flow_path(flow)
        if path is None:
            raise ToolError(f"no flow named {flow!r}; list_flows shows them")
        try:
            loaded = load_flow(path, registry)
        except DeliberateError as exc:
            raise ToolError(safe_message(exc.line())) from None
        opts = options or DeliberateOptions()
        values: dict[str, Any] = {**opts.inputs, **(inputs or {})}
        main = prompt_input(loaded.flow)
        if prompt is not None and main is not None:
            values[main] = prompt
        request = RunRequest(loaded, values, opts.run_options())
        return await start(lambda env: run(request, env), len(loaded.order), ctx, opts.max_cost)

    @server.tool(description="A run's state: live while it goes, then its summary, answer and error.")
    def get_run(run_id: str) -> dict[str, Any]:
        doc = run_doc(live_runs(), run_id)
        if doc is None:
            raise ToolError(f"no run {run_id!r}")
        return doc

    @server.tool(description="Finish an interrupted or failed run in place: its finished steps are kept.")
    async def resume_run(run_id: str, ctx: Context) -> dict[str, Any]:
        path = record_file(live_runs(), run_id)
        if path is None:
            raise ToolError(f"no run {run_id!r}")
        live = live_runs().get(run_id)
        if live is not None and not live.done:
            raise ToolError(f"run {run_id} is still running")
        request = ResumeRequest(path, runs_dir=live_runs().runs_dir)
        try:
            total = len(load(path).order) or 1
        except DeliberateError as exc:
            raise ToolError(safe_message(exc.line())) from None
        return await start(lambda env: resume(request, env), total, ctx)

    for name in sorted(available_flows()):
        server.add_resource(_flow_resource(name))
    try:
        recent = list_records(live_runs().runs_dir, limit=RECENT_RUNS)
    except DeliberateError:
        recent = []
    for rec in recent:
        server.add_resource(_run_resource(live_runs(), rec.run_id))
    return server


__all__ = ["build"]
