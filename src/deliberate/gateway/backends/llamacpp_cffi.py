"""llama.cpp through the prebuilt CPU library of the ``llama-cpp-cffi`` wheel.

llama-cpp-python is an sdist that compiles llama.cpp (10-30 minutes on two cores); the
``llama-cpp-cffi`` wheel on PyPI carries llama.cpp already built for x86-64 Linux (AVX2). Its
Python package pins old versions of transformers and huggingface-hub, so it is installed with
``--no-deps`` (``make install`` does) and only its CPU extension module is loaded here, by file,
without importing its package. :class:`CffiLlama` offers the few methods of llama-cpp-python's
``Llama`` that :mod:`.llamacpp` calls, so either binding serves the engine.
"""

from __future__ import annotations

import functools
import importlib.util
import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_PACKAGE = "llama"  # the import name of the llama-cpp-cffi wheel
_MODULE = "_llama_cpp_cpu"  # its CPU build (the CUDA and Vulkan builds beside it are not used)


def cpu_can_run_it() -> bool:
    """The wheel's CPU library is built for x86-64 with AVX2: on a CPU without it, loading would
    end the process with an illegal instruction instead of an error."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and " avx2" in line for line in f)
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def library_path() -> Path | None:
    """The CPU extension module of llama-cpp-cffi, if that wheel is installed and this CPU can run
    it (nothing imported)."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob(f"{_MODULE}.*.so"))
        if found:
            return found[0] if cpu_can_run_it() else None
    return None


_load_lock = threading.Lock()
_loaded: list[tuple[Any, Any]] = []  # (lib, ffi), once loaded
_keep: list[Any] = []  # the log callback: it must outlive every call into llama.cpp


def _library() -> tuple[Any, Any]:
    """``(lib, ffi)`` of the extension module, loaded once, its backend initialised and its log
    silenced (llama.cpp writes every tensor it loads to stderr otherwise)."""
    if _loaded:
        return _loaded[0]
    path = library_path()
    if path is None:
        raise ImportError("llama-cpp-cffi is not installed, or this CPU lacks AVX2")
    with _load_lock:
        if _loaded:  # another thread loaded it while this one waited
            return _loaded[0]
        spec = importlib.util.spec_from_file_location(_MODULE, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        lib, ffi = module.lib, module.ffi
        quiet = ffi.callback("void(enum ggml_log_level, char *, void *)", lambda level, text, data: None)
        _keep.append(quiet)
        lib.llama_log_set(quiet, ffi.NULL)
        lib.llama_backend_init()
        _loaded.append((lib, ffi))
    return lib, ffi


class Sampler:
    """Picks the next token from a row of logits the way the transformers engine does
    (``local_batching._RowSampler``): greedy at temperature 0, else temperature, then top-k,
    then top-p (the most likely tokens whose mass before them is at most ``top_p``), then a draw,
    from a generator seeded with ``seed`` when given.

    In NumPy rather than llama.cpp's sampler chain: that chain sorts the whole 49k-token
    vocabulary at every step when no top-k comes first, which cost a third of decode speed on
    the built-in model (53 against 77 tok/s, temperature 0.7). Here the nucleus is looked for in
    the 64 most likely tokens first (found without a sort), and the whole vocabulary is sorted
    only when those hold less than ``top_p``."""

    def __init__(self, temp: float, top_k: int, top_p: float, seed: int | None) -> None:
        import numpy as np

        self.temp, self.top_k, self.top_p = temp, top_k, top_p
        # any int is a seed, as for the transformers engine: NumPy takes only non-negative ones
        self.rng = np.random.default_rng(None if seed is None else seed % (1 << 128))

    def __call__(self, logits: Any) -> int:
        import numpy as np

        if self.temp <= 0:
            return int(logits.argmax())
        z = logits.astype(np.float64) / self.temp
        ids = None
        if 0 < self.top_k < z.size:
            ids = np.argpartition(z, -self.top_k)[-self.top_k:]
            z = z[ids]
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.arange(p.size)
        if self.top_p < 1.0:
            head = np.argpartition(p, -64)[-64:] if p.size > 64 else order
            order = head[np.argsort(-p[head], kind="stable")]
            if p[order].sum() < self.top_p:
                order = np.argsort(-p, kind="stable")
            ordered = p[order]
            keep = (np.cumsum(ordered) - ordered) <= self.top_p
            order, p = order[keep], ordered[keep]
        choice = int(order[self.rng.choice(p.size, p=p / p.sum())])
        return int(ids[choice]) if ids is not None else choice


class CffiLlama:
    """One GGUF model and one context (one sequence) on the CPU, with the ``Llama`` methods the
    engine uses: ``tokenize``, ``detokenize``, ``token_bos``, ``token_eos``, ``token_eot``,
    ``metadata``, ``set_seed``, ``generate``, ``reset`` and ``close``. Not thread-safe for
    generation: the engine runs one row at a time on one thread per model."""

    def __init__(self, model_path: str, n_ctx: int, n_batch: int, n_threads: int) -> None:
        lib, ffi = _library()
        self._lib, self._ffi = lib, ffi
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        self._model = lib.llama_model_load_from_file(model_path.encode(), params)
        if self._model == ffi.NULL:
            raise ValueError("not a GGUF model llama.cpp can read")
        ctx_params = lib.llama_context_default_params()
        ctx_params.n_ctx = n_ctx
        ctx_params.n_batch = ctx_params.n_ubatch = n_batch
        ctx_params.n_threads = ctx_params.n_threads_batch = n_threads
        ctx_params.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, ctx_params)
        if self._ctx == ffi.NULL:
            lib.llama_model_free(self._model)
            raise ValueError(f"llama.cpp could not make a context of {n_ctx} tokens")
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self.n_ctx = int(lib.llama_n_ctx(self._ctx))
        self.n_batch = n_batch
        self._past: list[int] = []  # the tokens whose keys and values are in the context's cache
        self._seed: int | None = None  # the next generate's seed; None: a fresh one
        template = lib.llama_model_chat_template(self._model, ffi.NULL)
        self.metadata = {"tokenizer.chat_template": ffi.string(template).decode("utf-8", "replace")} \
            if template != ffi.NULL else {}

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        self._live()
        room = len(text) + 2
        buf = self._ffi.new("int32_t[]", room)
        n = self._lib.llama_tokenize(self._vocab, text, len(text), buf, room, add_bos, special)
        if n < 0:  # a buffer of -n tokens is needed
            room = -n
            buf = self._ffi.new("int32_t[]", room)
            n = self._lib.llama_tokenize(self._vocab, text, len(text), buf, room, add_bos, special)
        return list(self._ffi.unpack(buf, n))

    def detokenize(self, ids: list[int], special: bool = False) -> bytes:
        self._live()
        buf = self._ffi.new("char[]", 64)
        out = bytearray()
        for token in ids:
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
            if n < 0:  # a piece longer than the buffer
                big = self._ffi.new("char[]", -n)
                n = self._lib.llama_token_to_piece(self._vocab, token, big, -n, 0, special)
                out += self._ffi.buffer(big, n)
            else:
                out += self._ffi.buffer(buf, n)
        return bytes(out)

    def token_bos(self) -> int:
        self._live()
        return int(self._lib.llama_vocab_bos(self._vocab))

    def token_eos(self) -> int:
        self._live()
        return int(self._lib.llama_vocab_eos(self._vocab))

    def token_eot(self) -> int:
        self._live()
        return int(self._lib.llama_vocab_eot(self._vocab))

    def set_seed(self, seed: int) -> None:
        """The seed of the next :meth:`generate` (a fresh one when none was set)."""
        self._seed = seed

    def _logits(self) -> Any:
        """The last token's logits, as a NumPy view of llama.cpp's buffer (valid until the next
        decode)."""
        import numpy as np

        ptr = self._lib.llama_get_logits_ith(self._ctx, -1)
        return np.frombuffer(self._ffi.buffer(ptr, 4 * self.n_vocab), dtype=np.float32)

    def _feed(self, tokens: list[int]) -> None:
        """Run ``tokens`` through the model after :attr:`_past`, ``n_batch`` at a time."""
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            arr = self._ffi.new("int32_t[]", chunk)
            rc = self._lib.llama_decode(self._ctx, self._lib.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                self._forget(len(self._past))  # what this call wrote may be partial
                raise RuntimeError(f"llama_decode returned {rc}")
            self._past.extend(chunk)

    def _forget(self, keep: int) -> None:
        """Drop the cache after the first ``keep`` tokens."""
        self._lib.llama_kv_cache_seq_rm(self._ctx, -1, keep, -1)
        del self._past[keep:]

    def generate(self, tokens: list[int], temp: float = 0.8, top_k: int = 40, top_p: float = 0.95,
                 **_ignored: Any) -> Iterator[int]:
        """Tokens sampled after ``tokens``, one at a time, until the caller stops or the context is
        full. A greedy call keeps the cache of the prefix ``tokens`` shares with the previous call.
        A sampled call starts from an empty cache: where earlier calls left holes in the cache, the
        attention sums run in another order and the last bits of the logits move, which is enough
        to change a sampled token, and a seed must give the same text every time. The seed set by
        :meth:`set_seed` is taken now, by this call."""
        self._live()
        if not tokens:
            raise ValueError("llama.cpp needs at least one prompt token")
        seed, self._seed = self._seed, None
        return self._steps(list(tokens), Sampler(temp, top_k, top_p, seed))

    def _steps(self, tokens: list[int], pick: Sampler) -> Iterator[int]:
        shared = 0
        if pick.temp <= 0:
            for a, b in zip(self._past, tokens, strict=False):
                if a != b:
                    break
                shared += 1
            shared = min(shared, len(tokens) - 1)  # at least one token runs, for its logits
            self._forget(shared)
        else:
            self.reset()
        feed = tokens[shared:]
        while len(self._past) + len(feed) <= self.n_ctx:
            self._feed(feed)
            token = pick(self._logits())
            yield token
            feed = [token]

    def reset(self) -> None:
        """Empty the cache: the next call runs its whole prompt."""
        self._live()
        self._lib.llama_kv_cache_clear(self._ctx)
        self._past.clear()

    def _live(self) -> None:
        if self._ctx is None:
            raise RuntimeError("this llama.cpp model was closed")

    def close(self) -> None:
        """Free the context and the model; the object is unusable after (calls raise)."""
        if self._ctx is not None:
            ctx, model = self._ctx, self._model
            self._ctx = self._model = self._vocab = None
            self._lib.llama_free(ctx)
            self._lib.llama_model_free(model)
