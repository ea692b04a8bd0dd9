"""Where backends come from: the ``deliberate.backends`` entry point group, where the built-in
``local`` and ``litellm`` backends register like any plugin.

A plugin is expected to subclass :class:`~deliberate.gateway.contracts.Backend`. One written
before that class existed (any object with a ``name`` and an async ``generate``, maybe with
``prepare``, ``estimate_cost``, ``check`` or ``aclose``) still works: :func:`as_backend` wraps it
once, when it is loaded, in a :class:`PluginBackend` that finds its hooks then, so the gateway
never looks for hooks on a call.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from ..config import Settings
from ..errors import RegistryError
from .contracts import Backend, BackendCall, Reply, TokenCallback


def load_backend(provider: str, settings: Settings,
                 progress: Callable[[str], None] | None = None) -> Backend:
    """Create the backend registered under ``provider`` in the ``deliberate.backends`` entry
    point group. The built-in backends register there too, so the plugin path is always used.
    ``progress`` (human-readable loading messages) goes to backends that accept it."""
    for ep in entry_points(group="deliberate.backends"):
        if ep.name == provider:
            factory = ep.load()
            try:
                accepts = "progress" in inspect.signature(factory).parameters
            except (TypeError, ValueError):
                accepts = False
            if accepts and progress is not None:
                return as_backend(factory(settings, progress=progress))
            return as_backend(factory(settings))
    known = sorted({ep.name for ep in entry_points(group="deliberate.backends")})
    raise RegistryError(f"no backend for provider {provider!r}", hint=f"known: {', '.join(known)}")


def as_backend(obj: Any) -> Backend:
    """``obj`` itself when it is a :class:`Backend`, else ``obj`` wrapped in a :class:`PluginBackend`."""
    return obj if isinstance(obj, Backend) else PluginBackend(obj)


class PluginBackend(Backend):
    """A plugin that does not subclass :class:`Backend`, seen as one. Its hooks are looked up
    here, once; any other attribute (a test backend's ``calls``) reads through to the plugin."""

    def __init__(self, plugin: Any) -> None:
        self.plugin = plugin
        self.name = str(getattr(plugin, "name", type(plugin).__name__))
        self._prepare = getattr(plugin, "prepare", None)
        self._estimate = getattr(plugin, "estimate_cost", None)
        self._check = getattr(plugin, "check", None)
        self._aclose = getattr(plugin, "aclose", None)
        # calls go straight to the plugin: 0.3 us of a 7 us gateway call (bench/overhead.py)
        self.generate = plugin.generate  # type: ignore[method-assign]

    def __getattr__(self, name: str) -> Any:
        if name == "plugin":  # not set yet: no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.plugin, name)

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None) -> Reply:
        """The plugin's answer."""
        reply: Reply = await self.plugin.generate(call, on_token)
        return reply

    async def prepare(self, spec: Any) -> None:
        """The plugin's ``prepare``, if it has one."""
        if self._prepare is not None:
            await self._prepare(spec)

    def prepares(self) -> bool:
        return self._prepare is not None

    async def estimate_cost(self, spec: Any, prompt_tokens: int, max_tokens: int) -> float:
        """The plugin's ``estimate_cost`` (run in a thread when it is not async), else 0.0."""
        if self._estimate is None:
            return 0.0
        if inspect.iscoroutinefunction(self._estimate):
            return float(await self._estimate(spec, prompt_tokens, max_tokens))
        # a plugin may import its pricing tables on first use (litellm: seconds): off the loop
        return float(await asyncio.to_thread(self._estimate, spec, prompt_tokens, max_tokens))

    async def check(self, spec: Any) -> dict[str, Any]:
        """The plugin's ``check``, else the default probe."""
        if self._check is not None:
            info: dict[str, Any] = await self._check(spec)
            return info
        return await super().check(spec)

    async def aclose(self) -> None:
        """The plugin's ``aclose``, if it has one."""
        if self._aclose is not None:
            await self._aclose()


__all__ = ["PluginBackend", "as_backend", "load_backend"]
