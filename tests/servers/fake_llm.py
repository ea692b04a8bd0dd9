"""A small OpenAI- and Anthropic-compatible HTTP server with scripted replies and faults.

It speaks real HTTP on 127.0.0.1 (a free port), so the remote backend is tested through the whole
litellm / openai-SDK / httpx path: ``POST /v1/chat/completions`` (OpenAI, streaming SSE or JSON)
and ``POST /v1/messages`` (Anthropic, streaming SSE or JSON). Each request takes the next
:class:`Script` from a queue (per model, then shared), else the default one. A script can answer
an error status (500, 429 with ``Retry-After``, 401, ...), answer late, send malformed JSON or
drop a stream half-way. The server records every request (path, headers, JSON body) and the
peak number of requests in flight.

    with FakeLLM() as server:
        server.queue(Script(status=500), Script(text="ok"))
        ...  # litellm_model: openai/test-model, api_base: server.openai_base

Written on the standard library (``ThreadingHTTPServer``) so tests need no extra package.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Script:
    """One scripted answer (or fault)."""

    text: str = "Hello from the fake model."
    status: int = 200
    delay_s: float = 0.0  # wait before answering: a slow server
    chunk_delay_s: float = 0.0  # wait between streamed pieces
    retry_after: str | None = None  # the Retry-After header, for 429 and 503
    error: str = ""  # message of an error answer (status >= 400)
    error_body: str | None = None  # the raw body of an error answer, instead of the provider's format
    malformed: bool = False  # a JSON body (or an SSE event) that does not parse
    cut_after: int | None = None  # streaming: drop the connection after this many pieces
    usage: bool = True  # report token usage
    prompt_tokens: int | None = None  # default: words in the request's messages
    completion_tokens: int | None = None  # default: the number of streamed pieces
    finish_reason: str = "stop"


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    raw: str
    body: Any = None
    at: float = field(default_factory=time.monotonic)  # when it arrived

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None


def pieces(text: str) -> list[str]:
    """Split a reply into the pieces streamed one by one; they join back to ``text`` exactly."""
    return re.findall(r"\S+\s*|\s+", text)


def _words(body: Any) -> int:
    if not isinstance(body, dict):
        return 0
    parts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        parts.append(system)
    elif isinstance(system, list):
        parts += [b.get("text", "") for b in system if isinstance(b, dict)]
    for msg in body.get("messages") or []:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [b.get("text", "") for b in content if isinstance(b, dict)]
    return sum(len(p.split()) for p in parts)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # many clients connecting at once (socketserver's default is 5)
    owner: FakeLLM


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as real servers do
    server: _Server

    def setup(self) -> None:
        super().setup()
        # As real servers do: without it, Nagle's algorithm and delayed ACKs hold small SSE writes
        # back ~40 ms each, which would show up as client overhead.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- entry points -------------------------------------------------------------------------
    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/_stats":  # for a client in another process (bench/fanout.py)
            owner = self.server.owner
            self._json(200, {"calls": owner.calls, "max_in_flight": owner.max_in_flight})
        elif self.path.rstrip("/") in ("/health", "/v1/models", "/models"):
            self._json(200, {"object": "list", "data": [{"id": "test-model", "object": "model"}]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        owner = self.server.owner
        rec = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, raw, body)
        script = owner._record_and_pick(rec)
        try:
            self._answer(rec, script)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True  # the client gave up (a timeout): nothing to do
        finally:
            owner._done()

    # -- answers ------------------------------------------------------------------------------
    def _answer(self, rec: Recorded, script: Script) -> None:
        anthropic = rec.path.rstrip("/").endswith("/messages")
        if not (anthropic or rec.path.rstrip("/").endswith("/chat/completions")):
            self._json(404, {"error": {"message": f"no route {rec.path}", "type": "not_found"}})
            return
        if script.delay_s and self.server.owner._stopping.wait(script.delay_s):
            return
        if script.status >= 400:
            self._error(script, anthropic)
            return
        body = rec.body if isinstance(rec.body, dict) else {}
        model = str(body.get("model", "test-model"))
        prompt_tokens = script.prompt_tokens if script.prompt_tokens is not None else _words(body)
        parts = pieces(script.text)
        completion_tokens = script.completion_tokens if script.completion_tokens is not None else len(parts)
        if body.get("stream"):
            include_usage = anthropic or bool((body.get("stream_options") or {}).get("include_usage"))
            events = (self._anthropic_events if anthropic else self._openai_events)(
                model, parts, script, prompt_tokens, completion_tokens, include_usage and script.usage)
            self._stream(events, script)
        elif script.malformed:
            self._send(200, b'{"id": "broken", "choices": [{"message": {"content": "Hel', "application/json")
        elif anthropic:
            usage = {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}
            self._json(200, {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                             "content": [{"type": "text", "text": script.text}],
                             "stop_reason": "end_turn" if script.finish_reason == "stop" else "max_tokens",
                             "stop_sequence": None, "usage": usage if script.usage else
                             {"input_tokens": 0, "output_tokens": 0}})
        else:
            reply: dict[str, Any] = {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": script.text},
                             "finish_reason": script.finish_reason}],
            }
            if script.usage:
                reply["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens}
            self._json(200, reply)

    def _error(self, script: Script, anthropic: bool) -> None:
        kinds = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error"}
        kind = kinds.get(script.status, "api_error")
        message = script.error or f"fake error {script.status}"
        payload: dict[str, Any] = (
            {"type": "error", "error": {"type": kind, "message": message}} if anthropic
            else {"error": {"message": message, "type": kind, "code": str(script.status)}}
        )
        extra = {"Retry-After": script.retry_after} if script.retry_after is not None else {}
        if script.error_body is not None:
            self._send(script.status, script.error_body.encode(), "application/json", extra)
        else:
            self._json(script.status, payload, extra)

    @staticmethod
    def _openai_events(model: str, parts: list[str], script: Script, prompt_tokens: int,
                       completion_tokens: int, usage: bool) -> list[tuple[bytes, bool]]:
        def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
            data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
            return f"data: {json.dumps(data)}\n\n".encode()

        events = [(chunk({"role": "assistant", "content": ""}), False)]
        events += [(chunk({"content": p}), True) for p in parts]
        events.append((chunk({}, script.finish_reason), False))
        if usage:
            data = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": model, "choices": [],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens}}
            events.append((f"data: {json.dumps(data)}\n\n".encode(), False))
        events.append((b"data: [DONE]\n\n", False))
        if script.malformed:
            events.insert(2, (b'data: {"id": "chatcmpl-fake", "choices": [{"delta": {"content": "x\n\n', False))
        return events

    @staticmethod
    def _anthropic_events(model: str, parts: list[str], script: Script, prompt_tokens: int,
                          completion_tokens: int, usage: bool) -> list[tuple[bytes, bool]]:
        def event(kind: str, data: dict[str, Any]) -> bytes:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

        stop = "end_turn" if script.finish_reason == "stop" else "max_tokens"
        events = [
            (event("message_start", {"message": {
                "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens if usage else 0, "output_tokens": 1}}}), False),
            (event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}), False),
        ]
        events += [(event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}), True)
                   for p in parts]
        events += [
            (event("content_block_stop", {"index": 0}), False),
            (event("message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None},
                                     "usage": {"output_tokens": completion_tokens if usage else 0}}), False),
            (event("message_stop", {}), False),
        ]
        if script.malformed:
            events.insert(3, (b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta\n\n', False))
        return events

    # -- transport ----------------------------------------------------------------------------
    def _stream(self, events: list[tuple[bytes, bool]], script: Script) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent_pieces = 0
        for ev, is_piece in events:
            if script.cut_after is not None and is_piece and sent_pieces >= script.cut_after:
                # Drop the connection without the closing zero-size chunk: a real mid-stream outage.
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(f"{len(ev):X}\r\n".encode() + ev + b"\r\n")
            self.wfile.flush()
            if is_piece:
                sent_pieces += 1
                if script.chunk_delay_s and self.server.owner._stopping.wait(script.chunk_delay_s):
                    return
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


class FakeLLM:
    """The server: start it (or use it as a context manager), point litellm at :attr:`url`."""

    def __init__(self, default: Script | None = None) -> None:
        self.default = default or Script()
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._queues: dict[str | None, deque[Script]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> FakeLLM:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-llm-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers waiting out a delay
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start the server first"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The base URL (Anthropic's ``api_base``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base(self) -> str:
        """The OpenAI-style ``api_base`` (with ``/v1``)."""
        return f"{self.url}/v1"

    # -- scripting ----------------------------------------------------------------------------
    def queue(self, *scripts: Script, model: str | None = None) -> FakeLLM:
        """Answer the next requests (for ``model`` only, when given) with ``scripts`` in order."""
        with self._lock:
            self._queues.setdefault(model, deque()).extend(scripts)
        return self

    def reset(self) -> None:
        """Forget recorded requests and queued scripts."""
        with self._lock:
            self.requests.clear()
            self._queues.clear()
            self.max_in_flight = 0

    @property
    def calls(self) -> int:
        """How many POST requests arrived."""
        return len(self.requests)

    def calls_for(self, model: str) -> int:
        return sum(1 for r in self.requests if r.model == model)

    # -- used by the handler ------------------------------------------------------------------
    def _record_and_pick(self, rec: Recorded) -> Script:
        with self._lock:
            self.requests.append(rec)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            for key in (rec.model, None):
                q = self._queues.get(key)
                if q:
                    return q.popleft()
            return self.default

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1


def main() -> None:
    """Serve in the foreground: print the port, then answer until stdin closes."""
    parser = argparse.ArgumentParser(description="a fake OpenAI/Anthropic server on 127.0.0.1")
    parser.add_argument("--text", default=Script.text)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    with FakeLLM(Script(text=args.text, delay_s=args.delay)) as server:
        print(server.port, flush=True)
        sys.stdin.read()  # the parent closes our stdin (or exits) to stop us


if __name__ == "__main__":
    main()
