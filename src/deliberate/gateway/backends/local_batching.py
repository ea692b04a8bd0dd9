"""Batched generation for the local backend: jobs, per-row sampling, stopping and streaming, and
the batcher that gathers concurrent calls to one model into one left-padded decode (the lean loop
of :mod:`.local_decode`, or ``generate`` with ``DELIBERATE_LEAN_DECODE=0``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...errors import CapacityError, DeliberateError, ProviderError
from ..contracts import Message, Sampling
from .local_decode import decode, lean_enabled
from .local_sources import LoadedModel
from .resources import LoadPlan

logger = logging.getLogger("deliberate.local")

@dataclass(eq=False)
class _Job:
    ids: list[int]
    sampling: Sampling
    max_tokens: int
    emit: Callable[[str], None] | None
    deadline: float | None
    future: concurrent.futures.Future[_Output] = field(default_factory=concurrent.futures.Future)
    arrived: float = field(default_factory=time.monotonic)
    abandoned: bool = False  # the caller was cancelled
    timed_out: bool = False


@dataclass
class _Output:
    text: str
    completion_tokens: int
    finish_reason: str
    inference_time: float


def nucleus(probs: Any, top_p: float) -> tuple[Any, Any]:
    """Top-p: the most likely tokens whose mass reaches ``top_p`` (the top one always), as
    (unnormalised weights, token ids). The nucleus nearly always lies within the top 64, found
    without sorting the whole vocabulary (a sort per row and step cost 5-8 ms on the built-in
    model's 49k tokens); the full sort is the fallback."""
    import torch

    ordered, index = torch.topk(probs, min(64, probs.numel()))
    if float(ordered.sum()) < top_p:
        ordered, index = torch.sort(probs, descending=True)
    drop = (ordered.cumsum(-1) - ordered) > top_p
    return ordered.masked_fill(drop, 0.0), index


class _RowSampler:
    """Samples each row with its own settings and generator; keeps only the chosen token's
    logit, so ``generate``'s greedy pick takes it. Rows with temperature 0 take the argmax."""

    def __init__(self, jobs: list[_Job], device: Any) -> None:
        import torch

        self.rows: list[tuple[Sampling, Any]] = []
        for job in jobs:
            gen = None
            if job.sampling.temperature > 0 and job.sampling.seed is not None:
                gen = torch.Generator(device=device)
                gen.manual_seed(job.sampling.seed)
            self.rows.append((job.sampling, gen))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        out = torch.full_like(scores, float("-inf"))
        for i, (s, gen) in enumerate(self.rows):
            row = scores[i]
            if s.temperature == 0:
                out[i, int(torch.argmax(row))] = 0.0
                continue
            row = row / s.temperature
            if s.top_k is not None and s.top_k < row.numel():
                kth = torch.topk(row, s.top_k).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
            probs = torch.softmax(row, dim=-1)
            if s.top_p < 1.0:
                weights, index = nucleus(probs, s.top_p)
                choice = index[torch.multinomial(weights, 1, generator=gen)]
            else:
                choice = torch.multinomial(probs, 1, generator=gen)
            out[i, int(choice)] = 0.0
        return out


class _RowStop:
    """Stops each row at its own ``max_tokens``, deadline or cancellation."""

    def __init__(self, jobs: list[_Job], width: int, eos: set[int]) -> None:
        self.jobs, self.width, self.eos = jobs, width, eos
        self.finished = [False] * len(jobs)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        n = input_ids.shape[1] - self.width
        last = input_ids[:, -1].tolist()
        now = time.monotonic()
        done = []
        for i, job in enumerate(self.jobs):
            if not self.finished[i] and (last[i] in self.eos or n >= job.max_tokens):
                self.finished[i] = True
            if not self.finished[i] and job.deadline is not None and now > job.deadline:
                job.timed_out = True
            done.append(self.finished[i] or job.abandoned or job.timed_out)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _RowStreamer:
    """Hands each row's new text to its caller after every step. Decodes the row's whole token
    list each time and sends only what extends the text already sent, so the pieces always join
    to the final decoded text (an incomplete UTF-8 character waits for its next byte)."""

    def __init__(self, jobs: list[_Job], decode: Callable[[list[int]], str], eos: set[int]) -> None:
        self.jobs, self.decode, self.eos = jobs, decode, eos
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.sent = [""] * len(jobs)
        self.done = [job.emit is None for job in jobs]

    def put(self, value: Any) -> None:
        if value.dim() != 1:  # generate first pushes the prompt
            return
        for i, token in enumerate(value.tolist()):
            self.push(i, token)

    def push(self, i: int, token: int) -> None:
        """Row ``i`` produced ``token``: send the text it adds, if any."""
        job = self.jobs[i]
        if self.done[i] or job.abandoned:
            return
        if token in self.eos:
            self.done[i] = True
            return
        self.tokens[i].append(token)
        self.done[i] = len(self.tokens[i]) >= job.max_tokens
        self._send(i, self.decode(self.tokens[i]))

    def end(self) -> None:
        pass

    def _send(self, i: int, text: str, final: bool = False) -> None:
        emit = self.jobs[i].emit
        if emit is None or (text.endswith("\ufffd") and not final) or not text.startswith(self.sent[i]):
            return
        piece = text[len(self.sent[i]) :]
        if piece:
            self.sent[i] = text
            emit(piece)

    def finish(self, i: int, text: str) -> None:
        """Send whatever of the final ``text`` has not gone out yet."""
        if self.jobs[i].emit is None:
            return
        if not text.startswith(self.sent[i]):
            logger.warning("streamed text diverged from the final decode; the reply holds the final text")
            return
        self._send(i, text, final=True)


# ---------------------------------------------------------------------------------------------
# One loaded model and its batching thread


@dataclass(eq=False)
class _Loaded:
    ident: tuple[Any, ...]
    model_key: str
    source: str
    model: Any
    tokenizer: Any
    plan: LoadPlan
    device: str
    folder: Path
    load_path: Literal["gguf", "converted", "directory", "hub"]
    load_time: float
    memory_gb: float
    name: str
    eos: set[int]
    pad_id: int
    kernels: str = "torch"
    in_use: int = 0
    tok_lock: threading.Lock = field(default_factory=threading.Lock)
    batcher: _Batcher | None = None

    def encode(self, messages: list[Message]) -> list[int]:
        msgs = [m.model_dump() for m in messages]
        with self.tok_lock:
            tok = self.tokenizer
            if getattr(tok, "chat_template", None):
                text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
                return list(tok(text, add_special_tokens=False)["input_ids"])
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\n\nassistant:"
            return list(tok(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        with self.tok_lock:
            return str(
                self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            )

    def info(self) -> LoadedModel:
        return LoadedModel(
            model_key=self.model_key,
            source=self.source,
            name=self.name,
            folder=str(self.folder),
            load_path=self.load_path,
            device=self.device,
            dtype=self.plan.dtype,
            quantization=self.plan.quantization,
            memory_gb=round(self.memory_gb, 3),
            load_time=round(self.load_time, 3),
            reason=self.plan.reason,
            kernels=self.kernels,
            calls_in_flight=self.in_use,
        )


class _Batcher:
    """Gathers the jobs of one model and runs them through ``generate`` in batches, on its own
    thread, so the event loop stays free and jobs that arrive during a run join the next one."""

    def __init__(self, run: Callable[[list[_Job]], None], window_s: float, max_size: int, name: str) -> None:
        self._run, self._window, self._max = run, window_s, max_size
        self._pending: deque[_Job] = deque()
        self._cv, self._closed = threading.Condition(), False
        self._thread = threading.Thread(target=self._loop, name=f"deliberate-local-{name}", daemon=True)
        self._thread.start()

    async def run(self, ids: list[int], call: Any, on_token: Callable[[str], None] | None) -> _Output:
        """One call's job, awaited (tokens to ``on_token`` on this loop; cancelled: abandoned)."""
        loop, emit = asyncio.get_running_loop(), None
        if on_token is not None:
            def emit(piece: str) -> None:
                with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody listens
                    loop.call_soon_threadsafe(call_safely, on_token, piece)
        deadline = time.monotonic() + call.timeout_s if call.timeout_s else None
        job = _Job(ids, call.sampling, min(call.max_tokens, call.spec.context_window - len(ids)), emit, deadline)
        try:
            return await asyncio.wrap_future(self.submit(job))
        except asyncio.CancelledError:
            job.abandoned = True
            raise

    def submit(self, job: _Job) -> concurrent.futures.Future[_Output]:
        with self._cv:
            if self._closed:
                raise ProviderError("the local model was unloaded", transient=True)
            self._pending.append(job)
            self._cv.notify()
        return job.future

    def close(self, wait_s: float = 0.0) -> None:
        with self._cv:  # no more jobs; with wait_s, wait for those taken (the model is freed next)
            self._closed = True
            self._cv.notify()
        if wait_s:
            self._thread.join(wait_s)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if not self._pending:
                    return
                deadline = self._pending[0].arrived + self._window
                while len(self._pending) < self._max and (left := deadline - time.monotonic()) > 0:
                    self._cv.wait(left)
                batch = [self._pending.popleft() for _ in range(min(self._max, len(self._pending)))]
            batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
            try:
                if batch:
                    self._run(batch)
            except BaseException as exc:  # every caller must hear about it
                err = exc if isinstance(exc, DeliberateError) else _generation_error(exc)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)


def _generation_error(exc: BaseException) -> DeliberateError:
    text = f"{type(exc).__name__}: {exc}"
    if "out of memory" in text.lower():
        return CapacityError(
            f"local generation ran out of memory: {text}", hint="lower max_tokens or batch size"
        )
    return ProviderError(f"local generation failed: {text}", transient=False)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return {int(i) for i in ids}


# ---------------------------------------------------------------------------------------------
# One batch (the batcher's thread)


def run_batch(lm: _Loaded, jobs: list[_Job], count: Callable[[int], None]) -> None:
    """Answer ``jobs`` with one left-padded ``generate`` of ``lm`` (``count``: told the batch size)."""
    import torch
    from transformers import GenerationConfig

    start = time.monotonic()
    width = max(len(job.ids) for job in jobs)
    ids = torch.full((len(jobs), width), lm.pad_id, dtype=torch.long)
    mask = torch.zeros((len(jobs), width), dtype=torch.long)
    for i, job in enumerate(jobs):  # left padding: every row's last token is at the same place
        ids[i, width - len(job.ids) :] = torch.tensor(job.ids, dtype=torch.long)
        mask[i, width - len(job.ids) :] = 1
    device = lm.model.device
    config = GenerationConfig(
        max_new_tokens=max(job.max_tokens for job in jobs),
        do_sample=False,  # sampling, when any row wants it, is _RowSampler's job
        # transformers' neutral defaults, so a model's own sampling defaults do not leak in
        temperature=1.0,
        top_p=1.0,
        top_k=50,
        eos_token_id=sorted(lm.eos),
        pad_token_id=lm.pad_id,
    )
    sampled = any(job.sampling.temperature > 0 for job in jobs)
    streamer = _RowStreamer(jobs, lm.decode, lm.eos) if any(job.emit for job in jobs) else None
    count(len(jobs))
    sampler = _RowSampler(jobs, device) if sampled else None
    stop = _RowStop(jobs, width, lm.eos)
    with torch.inference_mode():
        if lean_enabled():
            out = decode(
                lm.model,
                ids.to(device),
                mask.to(device),
                max(job.max_tokens for job in jobs),
                _greedy if sampler is None else (lambda scores: _greedy(sampler(None, scores))),
                _stops(stop),
                streamer.put if streamer is not None else None,
                lm.pad_id,
            )
        else:
            out = lm.model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                generation_config=config,
                logits_processor=[sampler] if sampler is not None else None,
                stopping_criteria=[stop],
                streamer=streamer,
            )
    rows = out[:, width:].tolist()
    elapsed = time.monotonic() - start
    for i, job in enumerate(jobs):
        if job.timed_out:
            job.future.set_exception(
                ProviderError("local generation timed out (call timeout_s)", transient=True)
            )
            continue
        tokens, finish = rows[i][: job.max_tokens], "length"
        for k, token in enumerate(tokens):
            if token in lm.eos:
                tokens, finish = tokens[:k], "stop"
                break
        text = lm.decode(tokens)
        if streamer is not None:
            streamer.finish(i, text)
        job.future.set_result(_Output(text, len(tokens), finish, elapsed))


def _greedy(scores: Any) -> Any:
    return scores.argmax(dim=-1)


def _stops(rows: _RowStop) -> Callable[[Any], Any]:
    """The lean loop's stopping rule: :class:`_RowStop` (an end-of-sequence token, the row's own
    ``max_tokens``, deadline or cancellation), as ``generate`` asks it."""
    return lambda seq: rows(seq, None)


def call_safely(callback: Callable[[str], None], value: str) -> None:
    """``callback(value)``; what it raises is logged, never passed to the model's thread."""
    try:
        callback(value)
    except Exception:
        logger.exception("a local backend callback raised")
