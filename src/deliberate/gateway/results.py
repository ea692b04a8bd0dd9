"""What a request's answer becomes: the :class:`GenerationResult` the gateway returns, built from
the backend's :class:`Reply` and the request's :class:`CallContext`, or from a cached result."""

from __future__ import annotations

import time
from dataclasses import replace

from .contracts import BackendCall, GenerationResult, Reply, Timings, Usage


def estimate_tokens(text: str) -> int:
    """A cheap token estimate (about four characters a token) for limits and budgets."""
    return max(1, len(text) // 4)


def prompt_tokens(call: BackendCall) -> int:
    """The estimate of a call's prompt, every message counted."""
    return estimate_tokens("\n".join(m.content for m in call.messages))


def result_of(reply: Reply, call: BackendCall, model_key: str | None = None) -> GenerationResult:
    """The result of ``call`` answered by ``reply`` (``model_key``: the model that answered, when
    a fallback did). ``reply.cost_usd`` is priced by then (the budget layer does it); the result
    shares the context's attempts and events, so it carries the whole request."""
    context = call.context
    return GenerationResult(
        text=reply.text,
        tokens_generated=reply.completion_tokens,
        timings=Timings(load_time=reply.load_time, inference_time=reply.inference_time,
                        total_time=time.perf_counter() - context.started),
        usage=Usage(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                    cost_usd=reply.cost_usd or 0.0),
        source=reply.source,
        cache_hit=False,
        model_resolved=model_key or call.model_key,
        model_name=reply.model_name,
        sampling=call.sampling,
        max_tokens=call.max_tokens,
        finish_reason=reply.finish_reason,
        strategy=context.strategy,
        attempts=context.attempts,
        events=context.events,
    )


def cached_result(hit: GenerationResult, call: BackendCall) -> GenerationResult:
    """A cached answer as this request's result: free, with this request's attempts and time."""
    context = call.context
    return replace(hit, cache_hit=True, usage=replace(hit.usage, cost_usd=0.0), attempts=context.attempts,
                   events=context.events, strategy=context.strategy,
                   timings=replace(hit.timings, total_time=time.perf_counter() - context.started))


def reply_of(hit: GenerationResult) -> Reply:
    """A cached result as a reply, for the layers above the cache."""
    return Reply(text=hit.text, prompt_tokens=hit.usage.prompt_tokens, completion_tokens=hit.tokens_generated,
                 cost_usd=0.0, load_time=hit.timings.load_time, inference_time=hit.timings.inference_time,
                 source=hit.source, model_name=hit.model_name, finish_reason=hit.finish_reason)
