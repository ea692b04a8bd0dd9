"""`deliberate mcp`: flows as MCP tools, checked with the SDK's own client: in memory against the
server object, and over stdio against the real `deliberate mcp` subprocess. The scripted backend
answers; every run is a real record under runs/."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from deliberate.server.mcp import build
from test_serve import RULES, add_flow, wait_record


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def run_with_progress(client: Any, args: dict[str, Any]) -> tuple[Any, list[tuple[float, float | None, str]]]:
    seen: list[tuple[float, float | None, str]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message or ""))

    result = await client.call_tool("run_flow", args, progress_callback=progress)
    return result, seen


def test_in_memory_client_lists_runs_with_progress_and_reads_resources(scripted: Any, isolated: Path) -> None:
    add_flow(isolated)
    scripted.write(RULES)

    async def main() -> None:
        async with Client(build()) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert tools == {"list_flows", "run_flow", "get_run", "resume_run"}
            flows = (await client.call_tool("list_flows", {})).structured_content["result"]
            trio = next(f for f in flows if f["name"] == "trio")
            assert [s["name"] for s in trio["steps"]] == ["draft", "critique", "final"]
            result, seen = await run_with_progress(client, {"flow": "trio", "prompt": "Explain tides"})
            assert not result.is_error, text_of(result)
            out = result.structured_content
            assert out["answer"] == "the final answer" and out["status"] == "succeeded"
            assert [(d, t) for d, t, _ in seen] == [(1, 3), (2, 3), (3, 3)]
            assert [m for *_, m in seen] == ["draft: finished", "critique: finished", "final: finished"]
            rec = wait_record(isolated, out["run_id"], "succeeded")
            assert rec["inputs"] == {"prompt": "Explain tides"}
            state = (await client.call_tool("get_run", {"run_id": out["run_id"]})).structured_content
            assert state["status"] == "succeeded" and state["output"] == "the final answer"
            uris = {str(r.uri) for r in (await client.list_resources()).resources}
            assert "deliberate://flows/trio" in uris and f"deliberate://runs/{out['run_id']}" in uris
            yaml = await client.read_resource("deliberate://flows/trio")
            assert "name: trio" in yaml.contents[0].text
            record = await client.read_resource(f"deliberate://runs/{out['run_id']}")
            assert json.loads(record.contents[0].text)["output"] == "the final answer"
            # refusals are tool errors, one line, no traceback
            bad = await client.call_tool("run_flow", {"flow": "../../etc/passwd", "prompt": "x"})
            assert bad.is_error and "no flow named" in text_of(bad)
            missing = await client.call_tool("run_flow", {"flow": "trio"})
            assert missing.is_error and "missing input 'prompt'" in text_of(missing)
            nope = await client.call_tool("get_run", {"run_id": "../x"})
            assert nope.is_error and "Traceback" not in text_of(nope)

    asyncio.run(main())


def test_cancelled_call_stops_the_run_and_resume_run_finishes_it(scripted: Any, isolated: Path) -> None:
    add_flow(isolated)
    scripted.write([{"match": "^Critique", "reply": "slow", "delay": 30, "times": 1}, *RULES])

    async def main() -> None:
        async with Client(build()) as client:
            call = asyncio.create_task(client.call_tool("run_flow", {"flow": "trio", "prompt": "x"}))
            runs = isolated / "runs"
            for _ in range(200):
                await asyncio.sleep(0.05)
                found = list(runs.glob("*.json")) if runs.is_dir() else []
                if found and '"critique"' in found[0].read_text():
                    break
            run_id = found[0].stem
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            rec = await asyncio.to_thread(wait_record, isolated, run_id, "interrupted")
            assert rec["steps"]["draft"]["status"] == "succeeded"
            done = await client.call_tool("resume_run", {"run_id": run_id})
            assert not done.is_error, text_of(done)
            assert done.structured_content["answer"] == "the final answer"
            assert done.structured_content["run_id"] == run_id

    asyncio.run(main())
    assert wait_record(isolated, next((isolated / "runs").glob("*.json")).stem, "succeeded")


def test_stdio_subprocess_lists_and_runs_a_flow_with_progress(scripted: Any, isolated: Path) -> None:
    add_flow(isolated)
    scripted.write(RULES)
    params = StdioServerParameters(command=sys.executable, args=["-m", "deliberate", "mcp"],
                                   env=dict(os.environ), cwd=str(isolated))

    async def main() -> dict[str, Any]:
        async with Client(params, read_timeout_seconds=60) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert "run_flow" in names
            result, seen = await run_with_progress(client, {"flow": "trio", "prompt": "over stdio",
                                                            "options": {"seed": 3}})
            assert not result.is_error, text_of(result)
            assert [d for d, _, _ in seen] == [1, 2, 3]
            return result.structured_content  # type: ignore[no-any-return]

    out = asyncio.run(main())
    assert out["answer"] == "the final answer"
    rec = wait_record(isolated, out["run_id"], "succeeded")
    assert rec["inputs"]["prompt"] == "over stdio" and rec["options"]["seed"] == 3


def test_mcp_command_refusals(run_cli: Any) -> None:
    r = run_cli("mcp", "--transport", "carrier-pigeon")
    assert r.returncode == 2 and "expected stdio or http" in r.stderr
    r = run_cli("mcp", "--transport", "http", "--host", "0.0.0.0")
    assert r.returncode == 2 and "loopback only" in r.stderr


def test_streamable_http_transport_runs_a_flow(scripted: Any, isolated: Path) -> None:
    import socket
    import subprocess
    import time

    add_flow(isolated)
    scripted.write(RULES)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "deliberate", "mcp", "--transport", "http", "--port", str(port),
                             "--dir", str(isolated)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)

        async def main() -> dict[str, Any]:
            async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=60) as client:
                result, seen = await run_with_progress(client, {"flow": "trio", "prompt": "over http"})
                assert not result.is_error, text_of(result)
                assert [d for d, _, _ in seen] == [1, 2, 3]
                return result.structured_content  # type: ignore[no-any-return]

        out = asyncio.run(main())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert out["answer"] == "the final answer"
    assert wait_record(isolated, out["run_id"], "succeeded")["inputs"]["prompt"] == "over http"
