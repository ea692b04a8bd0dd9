"""litellm itself: imported on first use only, offline and quiet, and asked which provider a
model routes to.

litellm takes seconds to import and reads its price map from the network unless told not to, so
it is imported on first use, told to stay offline (``LITELLM_LOCAL_MODEL_COST_MAP``, no
tokenizer downloads) and to keep quiet. Tests that play a fresh process patch ``_litellm`` and
``load_litellm`` here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("deliberate.gateway.remote")

_import_lock = threading.Lock()
_litellm: Any = None

#: litellm's loggers; they would print request details (never keys, but noise) to stderr.
_LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm")


def loaded() -> Any:
    """litellm once imported, else None."""
    return _litellm


def load_litellm() -> Any:
    """Import litellm once, offline and quiet. Safe to call from any thread."""
    global _litellm
    if _litellm is not None:
        return _litellm
    with _import_lock:
        if _litellm is None:
            # Must be set before the import: otherwise litellm fetches its price map from GitHub.
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm

            litellm.suppress_debug_info = True
            # token_counter would download tokenizers from the HF hub for some model names.
            litellm.disable_hf_tokenizer_download = True
            # deliberate registers no litellm callbacks and prices calls itself; litellm's success
            # logging would otherwise hand every streamed chunk to a thread pool.
            litellm.disable_streaming_logging = True
            for name in _LITELLM_LOGGERS:
                logging.getLogger(name).setLevel(logging.CRITICAL)
            _litellm = litellm
    return _litellm


async def load_litellm_async(progress: Callable[[str], None] | None = None) -> Any:
    """:func:`load_litellm` off the event loop, telling ``progress`` since it takes seconds."""
    if _litellm is not None:
        return _litellm
    tell(progress, "loading litellm (first remote call in this process: a few seconds)")
    started = time.perf_counter()
    # The import takes seconds: keep the event loop (other calls, the live view) running.
    lit = await asyncio.to_thread(load_litellm)
    tell(progress, f"litellm ready in {time.perf_counter() - started:.1f}s")
    return lit


def tell(progress: Callable[[str], None] | None, message: str) -> None:
    """Hand ``message`` to a progress display, if any; a broken one is logged, not raised."""
    if progress is None:
        return
    try:
        progress(message)
    except Exception:  # a broken progress display must not fail a model call
        log.debug("progress callback failed", exc_info=True)


def provider_of(spec: Any) -> str:
    """The provider litellm routes ``spec.litellm_model`` to (``openai``, ``anthropic``, ...)."""
    model = spec.litellm_model or ""
    lit = _litellm if _litellm is not None else sys.modules.get("litellm")
    if lit is not None:
        try:
            return str(lit.get_llm_provider(model, api_base=spec.api_base)[1])
        except Exception:  # an unknown bare name: fall through to the prefix
            pass
    return model.split("/", 1)[0] if "/" in model else "openai"
