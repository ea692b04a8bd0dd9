"""Faster fp32 linears on the CPU: oneDNN with weights packed once, at load time.

torch's default CPU linear hands the weight to its BLAS as it is, for every call. When decoding,
a call multiplies one to a few rows (one per sequence in the batch) by the whole weight, and on
the CPUs measured here a 3-row call then costs about 2-3x a 1-row one, so batching the branches
of a fan-out saved little. With the weight reordered once into oneDNN's blocked layout, a 3-row
call costs about 1.1-1.2x a 1-row one and a single sequence decodes faster too (``bench/local.py``).

The ops used (``torch.ops.mkldnn._reorder_linear_weight`` and ``_linear_pointwise``) are the ones
torch's own compiler emits for CPU linears. They are looked up at load time; a torch without them
(or without oneDNN) keeps the plain linears. ``DELIBERATE_ONEDNN=0`` turns this off.
"""

from __future__ import annotations

from typing import Any


def packed_linear_ops() -> tuple[Any, Any] | None:
    """The (reorder, linear) oneDNN ops, or None where this torch lacks them."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._reorder_linear_weight, torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


def pack_linears(model: Any) -> tuple[int, int]:
    """Swap every fp32 ``nn.Linear`` of ``model`` for a packed one. Returns (how many, extra bytes):
    a linear whose weight is shared (a language model head tied to the embeddings) keeps the
    shared dense weight for its other user, so its packed copy is extra memory."""
    import torch
    from torch import nn

    ops = packed_linear_ops()
    if ops is None:
        return 0, 0
    reorder, linear = ops

    class PackedLinear(nn.Module):
        def __init__(self, dense: nn.Linear) -> None:
            super().__init__()
            self.in_features, self.out_features = dense.in_features, dense.out_features
            self.packed = reorder(dense.weight.detach())
            self.bias = None if dense.bias is None else dense.bias.detach()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            y = linear(x.reshape(-1, shape[-1]), self.packed, self.bias, "none", [], "")
            return y.reshape(*shape[:-1], self.out_features)

    users: dict[int, int] = {}  # parameter -> how many modules hold it
    for _, p in model.named_parameters(remove_duplicate=False):
        users[id(p)] = users.get(id(p), 0) + 1
    count, extra = 0, 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            w = getattr(child, "weight", None)
            # exactly nn.Linear: quantized linears (bitsandbytes) subclass it with packed weights
            if type(child) is nn.Linear and w is not None and w.dtype == torch.float32 and w.device.type == "cpu":
                if users.get(id(w), 0) > 1:
                    extra += w.nelement() * w.element_size()
                setattr(module, name, PackedLinear(child))
                count += 1
    return count, extra
