"""The door every request passes: a body size limit, bearer-key auth (constant-time), one JSON
access-log line per request with its run id, and a last catch so that no traceback ever reaches
a client. Written as plain ASGI middleware so that streamed responses pass through untouched and
a client's disconnect reaches the route."""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from .errors import error_body, log, safe_message

access = logging.getLogger("deliberate.server.access")

#: Paths anyone may call: liveness and readiness probes carry no key.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/api/health"})
RUN_HEADER = "x-deliberate-run-id"

Scope = dict[str, Any]


def check_key(given: str, keys: list[str]) -> int | None:
    """The index of the key ``given`` matches, or None. Every key is compared, each in constant
    time, so the time taken says nothing about which key or how much of it matched."""
    found = None
    raw = given.encode()
    for i, key in enumerate(keys):
        if hmac.compare_digest(raw, key.encode()) and found is None:
            found = i
    return found


def bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                return text[7:].strip()
    return None


async def _send_json(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """ASGI middleware: size limit, auth, access log, last-resort error answer."""

    def __init__(self, app: Any, keys: list[str], max_body_bytes: int, log_access: bool = True) -> None:
        self.app, self.keys, self.max_body = app, keys, max_body_bytes
        self.log_access = log_access

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen: dict[str, Any] = {"status": 0, "run_id": None}
        t0 = time.perf_counter()

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == RUN_HEADER.encode():
                        seen["run_id"] = value.decode()
            await send(message)

        try:
            await self._handle(scope, receive, watch)
        except Exception as exc:
            log.error("internal error: %s", safe_message(f"{type(exc).__name__}: {exc}"))
            if not seen["status"]:
                await _send_json(watch, 500, error_body("internal error (see the server log)", "server_error",
                                                        "internal_error"))
        finally:
            if self.log_access:
                self._log(scope, seen, t0)

    async def _handle(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        scope.setdefault("state", {})["key_id"] = "local"
        if self.keys and path not in OPEN_PATHS and scope.get("method") != "OPTIONS":
            given = bearer(scope)
            index = None if given is None else check_key(given, self.keys)
            if index is None:
                await _send_json(send, 401, error_body("missing or wrong API key (Authorization: Bearer <key>)",
                                                       "authentication_error", "invalid_api_key"),
                                 [(b"www-authenticate", b"Bearer")])
                return
            scope["state"]["key_id"] = f"key{index}"
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            body = await self._read_body(receive) if content_length_ok(scope, self.max_body) else None
            if body is None:
                await _send_json(send, 413, error_body(f"request body over {self.max_body:,} bytes",
                                                       "invalid_request_error", "body_too_large"))
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _read_body(self, receive: Any) -> bytes | None:
        """The whole body, or None past the limit (read no further: a declared length over the
        limit is refused before a byte is read)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _log(self, scope: Scope, seen: dict[str, Any], t0: float) -> None:
        if not access.isEnabledFor(logging.INFO):
            return
        client = scope.get("client") or ("", 0)
        access.info("request", extra={"event": {
            "method": scope.get("method"), "path": safe_message(scope.get("path", ""))[:200],
            "status": seen["status"], "ms": round((time.perf_counter() - t0) * 1000, 1),
            "run_id": seen["run_id"], "client": client[0], "key": scope.get("state", {}).get("key_id")}})


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the client's disconnect, when it comes

    return replay


def content_length_ok(scope: Scope, limit: int) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value) <= limit
            except ValueError:
                return False
    return True
