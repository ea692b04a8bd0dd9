"""Packed oneDNN linears (local_kernels): same results as the dense layers they replace, a tied
weight stays shared and is counted as extra memory, quantized and non-fp32 layers are left alone,
(DELIBERATE_ONEDNN=0 on the real model: test_local_backend). Also the sampler's top-p nucleus, found without
sorting the whole vocabulary, is the one a full sort gives."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

# torch is imported by the tests that run, not at collection: every xdist worker collects every
# module, and torch's import costs each of them seconds
pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")


@pytest.fixture
def torch() -> Any:
    import torch

    return torch


@pytest.fixture
def onednn(torch: Any) -> None:
    from deliberate.gateway.backends.local_kernels import packed_linear_ops

    if packed_linear_ops() is None:
        pytest.skip("this torch has no oneDNN linear ops")


def Tiny() -> Any:  # noqa: N802 (reads as the class it makes)
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 16)
            self.up = torch.nn.Linear(16, 32)
            self.down = torch.nn.Linear(32, 16, bias=False)
            self.low = torch.nn.Linear(16, 16).to(torch.bfloat16)
            self.head = torch.nn.Linear(16, 50, bias=False)
            self.head.weight = self.embed.weight  # tied, as in SmolLM2

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.down(torch.relu(self.up(self.embed(ids)))))

    return Tiny()


@pytest.mark.parametrize("rows", [1, 3, 7])
def test_packed_linears_compute_what_the_dense_ones_did(rows: int, torch: Any, onednn: None) -> None:
    from deliberate.gateway.backends.local_kernels import pack_linears

    torch.manual_seed(0)
    model = Tiny().eval()
    ids = torch.randint(0, 50, (rows, 5))
    with torch.inference_mode():
        before = model(ids)
        count, extra = pack_linears(model)
        after = model(ids)
    assert count == 3  # up, down, head; not the bf16 one
    assert extra == 50 * 16 * 4  # the tied head's packed copy: the embedding keeps the dense weight
    assert type(model.low) is torch.nn.Linear and model.embed.weight.shape == (50, 16)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_rows_of_a_batch_match_the_same_rows_alone(torch: Any, onednn: None) -> None:
    """What batched greedy decoding relies on: a row's result does not depend on its batch."""
    from deliberate.gateway.backends.local_kernels import pack_linears

    torch.manual_seed(1)
    model = Tiny().eval()
    pack_linears(model)
    ids = torch.randint(0, 50, (3, 4))
    with torch.inference_mode():
        together = model(ids)
        alone = torch.cat([model(ids[i : i + 1]) for i in range(3)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("scale", [3.0, 8.0, 20.0])  # flat (nucleus > 64 tokens: the full sort) to peaked
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_nucleus_is_the_full_sort_nucleus(scale: float, top_p: float, torch: Any) -> None:
    from deliberate.gateway.backends.local_batching import nucleus

    torch.manual_seed(2)
    probs = torch.softmax(torch.randn(49152) * scale, -1)
    ordered, index = torch.sort(probs, descending=True)  # the textbook way
    keep = (ordered.cumsum(-1) - ordered) <= top_p
    expected = torch.zeros_like(probs).scatter(0, index[keep], ordered[keep])
    weights, ids = nucleus(probs, top_p)
    got = torch.zeros_like(probs).scatter(0, ids, weights)
    torch.testing.assert_close(got / got.sum(), expected / expected.sum())
