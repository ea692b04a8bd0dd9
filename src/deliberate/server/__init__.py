"""``deliberate serve``: flows as OpenAI-compatible models, a run API, health and metrics, over
the same services as the CLI. Needs the ``serve`` extra (FastAPI, uvicorn)."""

from typing import Any


def create_app(*args: Any, **kwargs: Any) -> Any:
    """The FastAPI app (see :func:`deliberate.server.app.create_app`)."""
    from .app import create_app as make

    return make(*args, **kwargs)


__all__ = ["create_app"]
