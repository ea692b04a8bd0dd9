"""The llama.cpp engine of the local backend: a GGUF run as it is (quantized) by llama.cpp.

For a small GGUF on the CPU, transformers has to dequantise it (4-5x the bytes to read per token)
and pays Python and dispatch overhead per layer and token; llama.cpp reads the quantized weights
with its own kernels and decodes several times faster (``bench/local.py``). Two bindings serve it,
whichever is installed: llama-cpp-python (an sdist that compiles llama.cpp: ``make llamacpp``),
preferred when present, else the prebuilt CPU library of the ``llama-cpp-cffi`` wheel
(:mod:`.llamacpp_cffi`), which ``make install`` puts in with ``--no-deps``.

Which engine serves a ``provider: local`` model (:func:`choose_engine`): ``engine:`` in the
model's ``models.yaml`` entry when that field exists, else ``DELIBERATE_LOCAL_ENGINE``
(``auto``, ``transformers`` or ``llamacpp``), else ``auto``: llama.cpp for a GGUF source without
``quantization``, ``dtype`` or ``device: cuda`` of its own, when a binding is installed;
transformers otherwise (Hugging Face folders, GPU, bitsandbytes).

Calls keep the local backend's rules: one load per model and process, one worker thread per
model, calls gathered by the same batcher (a batch is served one row after another: a llama.cpp
context holds one sequence; a row reuses the KV cache of the prompt prefix it shares with the
previous one), each row's own ``max_tokens``, temperature, top-k, top-p and seed, streaming
through ``on_token``, timeouts and cancellation.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...errors import CapacityError, ProviderError
from ..contracts import Backend, BackendCall, Message, Reply, TokenCallback
from .llamacpp_cffi import CffiLlama, library_path
from .local_batching import _Batcher, _Job, _Output, _RowStreamer
from .local_sources import LoadedModel, ModelSource, Progress, resolve_source

logger = logging.getLogger("deliberate.local")

ENGINE_ENV = "DELIBERATE_LOCAL_ENGINE"
Engine = Literal["transformers", "llamacpp"]
INSTALL_HINT = "pip install --no-deps llama-cpp-cffi (prebuilt) or pip install llama-cpp-python (compiles)"


@functools.lru_cache(maxsize=1)
def llama_cpp_python_installed() -> bool:
    """Whether llama-cpp-python can be imported (looked up once, not imported)."""
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def llamacpp_installed() -> bool:
    """Whether either binding of llama.cpp is installed (nothing imported)."""
    return llama_cpp_python_installed() or library_path() is not None


def wanted_engine(spec: Any, default: str | None = None) -> str:
    """What ``spec`` asks for: its own ``engine``, else ``default`` (the backend's), else
    ``DELIBERATE_LOCAL_ENGINE``, else ``auto``."""
    own = getattr(spec, "engine", None)  # models.yaml's `engine:` (a plugin's spec may lack it)
    if own and own != "auto":
        return str(own)
    return default or os.environ.get(ENGINE_ENV, "").strip().lower() or "auto"


def choose_engine(spec: Any, source: ModelSource, default: str | None = None) -> Engine:
    """The engine that runs ``spec`` (see the module docstring)."""
    wanted = wanted_engine(spec, default)
    if wanted not in ("auto", "transformers", "llamacpp"):
        raise ProviderError(f"unknown local engine {wanted!r}", hint="use auto, transformers or llamacpp",
                            trips_breaker=False)
    if wanted == "transformers":
        return "transformers"
    plain = spec.quantization == "none" and spec.device != "cuda" and spec.dtype == "auto"
    if wanted == "llamacpp":
        if source.kind != "gguf":
            raise ProviderError(f"model {spec.key!r}: llama.cpp runs GGUF files only, not {source.path}",
                                hint="use engine: transformers for this model", trips_breaker=False)
        if not llamacpp_installed():
            raise ProviderError(f"model {spec.key!r} asks for llama.cpp, which is not installed",
                                hint=INSTALL_HINT, trips_breaker=False)
        return "llamacpp"
    return "llamacpp" if source.kind == "gguf" and plain and llamacpp_installed() else "transformers"


THREADS_ENV = "DELIBERATE_LLAMACPP_THREADS"


def llama_threads() -> int:
    """llama.cpp's threads: ``DELIBERATE_LLAMACPP_THREADS``, else one per physical core. Its
    threads wait for each other at every op, spinning; on a machine whose cores are busy with
    other work (parallel test workers, a second model) fewer threads decode faster."""
    wanted = os.environ.get(THREADS_ENV, "").strip()
    if wanted:
        try:
            return max(1, int(wanted))
        except ValueError:
            raise ProviderError(f"{THREADS_ENV}={wanted!r} is not a number of threads",
                                hint="unset it or give a whole number such as 1", trips_breaker=False) from None
    return physical_cores()


def physical_cores() -> int:
    """One thread per physical core: hyperthreads only contend for the same units."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except ImportError:
        n = None
    return max(1, n or os.cpu_count() or 1)


def render_chat(template: str, messages: list[dict[str, str]], bos: str, eos: str) -> str:
    """The prompt text of ``messages`` under a GGUF's chat template, rendered the way transformers
    renders it (a sandboxed Jinja environment, ``add_generation_prompt``)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos
    )


@dataclass(eq=False)
class _LlamaModel:
    model_key: str
    source: str
    name: str
    path: Path
    llm: Any
    template: str | None
    eos: set[int]
    load_time: float
    memory_gb: float
    threads: int
    in_use: int = 0
    tok_lock: threading.Lock = field(default_factory=threading.Lock)
    batcher: _Batcher | None = None

    def encode(self, messages: list[Message]) -> list[int]:
        msgs = [m.model_dump() for m in messages]
        llm = self.llm
        with self.tok_lock:
            if self.template:
                bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", "replace")
                eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", "replace")
                text = render_chat(self.template, msgs, bos, eos)
                return list(llm.tokenize(text.encode(), add_bos=False, special=True))
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\n\nassistant:"
            return list(llm.tokenize(text.encode(), add_bos=True, special=False))

    def decode(self, ids: list[int]) -> str:
        with self.tok_lock:
            return bytes(self.llm.detokenize(ids)).decode("utf-8", errors="replace")

    def info(self) -> LoadedModel:
        return LoadedModel(
            model_key=self.model_key, source=self.source, name=self.name, folder=str(self.path),
            load_path="gguf", device="cpu", dtype="gguf", quantization="gguf", memory_gb=round(self.memory_gb, 3),
            load_time=round(self.load_time, 3), reason=f"llama.cpp on the CPU, {self.threads} threads",
            kernels="llama.cpp", calls_in_flight=self.in_use,
        )


def open_llama(path: Path, n_ctx: int, threads: int) -> Any:
    """A llama.cpp model and context on ``path``: llama-cpp-python's ``Llama`` when it is
    installed, else :class:`.llamacpp_cffi.CffiLlama` (the same methods)."""
    if llama_cpp_python_installed():
        from llama_cpp import Llama

        return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
                     n_gpu_layers=0, verbose=False)
    return CffiLlama(str(path), n_ctx=n_ctx, n_batch=512, n_threads=threads)


def load_llama(spec: Any, source: ModelSource, notify: Progress) -> _LlamaModel:
    """Open ``source`` (a GGUF) with llama.cpp on the CPU."""
    start = time.monotonic()
    threads = llama_threads()
    notify(f"loading {source.name} with llama.cpp ({threads} threads) ...")
    try:
        llm = open_llama(source.path, spec.context_window, threads)
    except (ValueError, RuntimeError, OSError, ImportError) as exc:
        raise ProviderError(f"llama.cpp could not load {source.path}: {exc}", trips_breaker=False) from exc
    # end of generation: EOS and, where the vocabulary has one, end of turn
    eos = {int(t) for t in (llm.token_eos(), _eot(llm)) if t is not None and int(t) >= 0}
    template = llm.metadata.get("tokenizer.chat_template") or None
    memory = source.path.stat().st_size  # the weights are memory-mapped as they are
    return _LlamaModel(
        model_key=spec.key or source.name, source=spec.source, name=source.name, path=source.path, llm=llm,
        template=template, eos=eos, load_time=time.monotonic() - start, memory_gb=memory / 1e9, threads=threads,
    )


def _eot(llm: Any) -> int | None:
    if isinstance(llm, CffiLlama):
        return llm.token_eot()
    try:
        import llama_cpp

        return int(llama_cpp.llama_vocab_eot(llama_cpp.llama_model_get_vocab(llm.model)))
    except (AttributeError, TypeError, ValueError):
        return None


def run_rows(lm: _LlamaModel, jobs: list[_Job], count: Callable[[int], None]) -> None:
    """Answer ``jobs`` one after another on ``lm``'s context (the batcher's thread)."""
    count(len(jobs))
    start = time.monotonic()
    streamer = _RowStreamer(jobs, lm.decode, lm.eos) if any(job.emit for job in jobs) else None
    for i, job in enumerate(jobs):
        if job.abandoned:
            job.future.set_exception(ProviderError("the call was cancelled", transient=True))
            continue
        tokens, finish = _decode_row(lm, job, i, streamer)
        if job.timed_out:
            job.future.set_exception(ProviderError("local generation timed out (call timeout_s)", transient=True))
            continue
        text = lm.decode(tokens)
        if streamer is not None:
            streamer.finish(i, text)
        job.future.set_result(_Output(text, len(tokens), finish, time.monotonic() - start))


def _decode_row(lm: _LlamaModel, job: _Job, row: int, streamer: _RowStreamer | None) -> tuple[list[int], str]:
    s = job.sampling
    llm = lm.llm
    if s.temperature > 0:
        llm.set_seed(s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF)
    steps = llm.generate(
        job.ids, temp=float(s.temperature), top_k=int(s.top_k or 0), top_p=float(s.top_p), min_p=0.0,
        typical_p=1.0, repeat_penalty=1.0,
    )
    tokens: list[int] = []
    finish = "length"
    try:
        for token in steps:
            if streamer is not None:
                streamer.push(row, int(token))
            if token in lm.eos:
                finish = "stop"
                break
            tokens.append(int(token))
            if len(tokens) >= job.max_tokens or job.abandoned:
                break
            if job.deadline is not None and time.monotonic() > job.deadline:
                job.timed_out = True
                break
    finally:
        steps.close()
    return tokens, finish


class LlamaCppBackend(Backend):
    """GGUF models through llama.cpp, in this process: loads each once, gathers concurrent calls,
    streams tokens. :class:`~.local.LocalBackend` hands it the models :func:`choose_engine` gives it."""

    name = "local"

    def __init__(self, batch_window_s: float = 0.03, max_batch_size: int = 8) -> None:
        self.batch_window_s = batch_window_s
        self.max_batch_size = max_batch_size
        self._models: dict[str, _LlamaModel] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._batch_sizes: list[int] = []
        self.loads = 0

    def batch_sizes(self) -> list[int]:
        with self._lock:
            return list(self._batch_sizes)

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return [lm.info() for lm in self._models.values()]

    def unload(self, model_key: str | None = None) -> int:
        with self._lock:
            gone = [k for k, lm in self._models.items() if not lm.in_use and model_key in (None, lm.model_key)]
            models = [self._models.pop(k) for k in gone]
        for lm in models:
            if lm.batcher is not None:
                # a job may still be decoding (its caller cancelled): llama.cpp's context must
                # outlive it, or the decode runs on freed memory
                lm.batcher.close(wait_s=60.0)
            lm.llm.close()
        return len(models)

    def _count(self, size: int) -> None:
        with self._lock:
            self._batch_sizes.append(size)

    def find(self, spec: Any) -> _LlamaModel | None:
        """The model of ``spec`` if it is in memory."""
        with self._lock:
            return self._models.get(spec.source)

    def acquire(self, spec: Any, notify: Progress) -> tuple[_LlamaModel, float, bool]:
        """The model of ``spec``, held until :meth:`release`, with the seconds this call waited
        for it (0 when it was in memory) and whether it was loaded by another call."""
        start = time.monotonic()
        with self._lock:
            lm = self._models.get(spec.source)
            if lm is not None:
                lm.in_use += 1
                return lm, 0.0, True
        with self._load_lock:
            with self._lock:
                lm = self._models.get(spec.source)
                if lm is not None:  # another call loaded it while we waited
                    lm.in_use += 1
                    return lm, time.monotonic() - start, True
            lm = load_llama(spec, resolve_source(spec), notify)
            lm.batcher = _Batcher(lambda jobs: run_rows(lm, jobs, self._count), self.batch_window_s,
                                  self.max_batch_size, lm.name)
            notify(f"{lm.name} ready on cpu in {lm.load_time:.1f}s (llama.cpp)")
            with self._lock:
                self._models[spec.source] = lm
                lm.in_use += 1
                self.loads += 1
            return lm, time.monotonic() - start, False

    def release(self, lm: _LlamaModel) -> None:
        with self._lock:
            lm.in_use -= 1

    async def generate(self, call: BackendCall, on_token: TokenCallback | None = None,
                       notify: Progress | None = None) -> Reply:
        """Answer one call (see :meth:`.local.LocalBackend.generate`)."""
        lm, waited, hit = await asyncio.to_thread(self.acquire, call.spec, notify or logger.info)
        try:
            ids = await asyncio.to_thread(lm.encode, call.messages)
            if len(ids) >= call.spec.context_window:
                raise CapacityError(
                    f"the prompt has {len(ids)} tokens; model {call.model_key!r} has a context window of "
                    f"{call.spec.context_window}",
                    hint="shorten the inputs or pick a model with a larger context_window",
                )
            assert lm.batcher is not None
            out = await lm.batcher.run(ids, call, on_token)
        finally:
            self.release(lm)
        return Reply(
            text=out.text, prompt_tokens=len(ids), completion_tokens=out.completion_tokens, cost_usd=0.0,
            load_time=waited, inference_time=out.inference_time, model_cache_hit=hit, source="local",
            model_name=lm.name, finish_reason=out.finish_reason,
        )

