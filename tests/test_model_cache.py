"""The model cache: a GGUF converts once into a folder named by its content hash, which every later
load (another session, worker, process or checkout) reuses, and which a changed file never
reuses, even one of the same name, size and header."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from deliberate.config import Settings
from deliberate.gateway.backends.local_sources import ModelSource, converted_name, resolve_source
from deliberate.gateway.contracts import BackendCall, Message, Sampling
from deliberate.registry import ModelSpec

MIB = 1 << 20


def gguf(path: Path, tail: bytes = b"\x00") -> ModelSource:
    """A stand-in file: a 1 MiB 'header' then 'weights' ending in ``tail``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + b"h" * (MIB - 4) + b"w" * (MIB - len(tail)) + tail)
    return ModelSource("gguf", path, path.stem)


def test_the_cache_key_is_the_content(tmp_path: Path) -> None:
    a = gguf(tmp_path / "one" / "model.gguf")
    same_elsewhere = gguf(tmp_path / "two" / "model.gguf")
    weights_differ = gguf(tmp_path / "three" / "model.gguf", tail=b"\x01")
    assert a.path.stat().st_size == weights_differ.path.stat().st_size
    assert a.path.read_bytes()[:MIB] == weights_differ.path.read_bytes()[:MIB]  # same name, size, header
    assert converted_name(a) == converted_name(same_elsewhere)  # another checkout reuses it
    assert converted_name(a) != converted_name(weights_differ)  # different weights convert anew
    assert converted_name(a).startswith("model-")
    os.utime(a.path, ns=(1, 1))  # touched, not changed: still the same conversion
    assert converted_name(a) == converted_name(same_elsewhere)
    a.path.write_bytes(weights_differ.path.read_bytes())  # rewritten in place with other weights
    assert converted_name(a) == converted_name(weights_differ)


def spec(source: str) -> ModelSpec:
    return ModelSpec(key="smollm2-135m", provider="local", source=source, context_window=8192, dtype="float32")


def call(the_spec: ModelSpec) -> BackendCall:
    return BackendCall(model_key="smollm2-135m", spec=the_spec, messages=[Message(role="user", content="Hi")],
                       sampling=Sampling(temperature=0), max_tokens=2)


class Converted(Exception):
    """Raised by the stand-in for the conversion: the backend chose to convert."""


@pytest.fixture
def no_conversion(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the GGUF conversion with a recorder that stops the load: each call's destination."""
    from deliberate.gateway.backends import local_models

    seen: list[Path] = []

    def convert(source: Any, dest: Path, notify: Any) -> Any:
        seen.append(dest)
        raise Converted(dest)

    monkeypatch.setattr(local_models, "convert_gguf", convert)
    return seen


async def test_a_warm_cache_is_reused_without_converting(model_cache: Path, no_conversion: list[Path]) -> None:
    from conftest import LOCAL_SOURCE
    from deliberate.gateway.backends.local import LocalBackend

    b = LocalBackend(Settings(model_cache_dir=model_cache))
    reply = await b.generate(call(spec(LOCAL_SOURCE)))
    (info,) = b.loaded()
    assert no_conversion == [] and info.load_path == "converted" and reply.text
    assert Path(info.folder) == model_cache / converted_name(resolve_source(spec(LOCAL_SOURCE)))


async def test_a_changed_gguf_converts_anew(model_cache: Path, no_conversion: list[Path], tmp_path: Path) -> None:
    from conftest import LOCAL_SOURCE
    from deliberate.gateway.backends.local import LocalBackend

    original = resolve_source(spec(LOCAL_SOURCE))
    cache = tmp_path / "cache"
    cache.mkdir()
    # a cache warm for the original file...
    (cache / converted_name(original)).symlink_to(model_cache / converted_name(original))
    # ...and a file of the same name and size and header whose last byte (weights) differs
    changed = tmp_path / "elsewhere" / original.path.name
    changed.parent.mkdir()
    shutil.copyfile(original.path, changed)
    with changed.open("r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        last = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([last[0] ^ 0xFF]))
    assert changed.stat().st_size == original.path.stat().st_size
    b = LocalBackend(Settings(model_cache_dir=cache))
    with pytest.raises(Exception) as caught:
        await b.generate(call(spec(str(changed))))
    assert no_conversion == [cache / converted_name(resolve_source(spec(str(changed))))], caught.value
    assert no_conversion[0].name != converted_name(original)
