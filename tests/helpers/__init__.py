"""Small builders shared by the tests of the remote path."""

from __future__ import annotations

from typing import Any

from deliberate.config import Settings
from deliberate.gateway import Gateway
from deliberate.gateway.backends.remote import RemoteBackend
from deliberate.registry import ModelSpec, Registry, StrategySpec


def with_shipped(*models: ModelSpec, strategy: StrategySpec) -> Registry:
    """The packaged registry plus ``models`` and ``strategy``, which become the defaults (the
    packaged flows name the built-in model, so it must stay known)."""
    shipped = Registry.load(Settings())
    return Registry(models={**shipped.models, **{m.key: m for m in models}},
                    strategies={**shipped.strategies, strategy.name: strategy},
                    default_model=models[0].key, default_strategy=strategy.name)


def remote_gateway(registry: Registry, settings: Settings | None = None, **kw: Any) -> Gateway:
    """A gateway whose litellm models go through a fresh :class:`RemoteBackend`."""
    settings = settings or Settings(cache=False)
    return Gateway(registry, settings=settings, backends={"litellm": RemoteBackend(settings)}, **kw)
