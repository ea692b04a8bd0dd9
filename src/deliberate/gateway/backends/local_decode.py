"""A lean decode loop for the transformers engine: the model's forward with a KV cache, called
directly, one step per token, instead of ``model.generate``.

``generate`` rebuilds its inputs, runs its logits-processor and stopping-criteria lists, checks
for synced GPUs and streamers and updates a dozen keyword arguments on every step; for a 135M
model on two CPU cores that is a visible share of a token's time (docs/local-models.md). This loop
does only what the local backend uses: left-padded rows, greedy or :class:`_RowSampler`'s
per-row sampling, per-row stops, streaming. It feeds the model exactly what ``generate`` feeds it
(attention mask, position ids from the mask, a dynamic cache, the last logits in
float32), so greedy output is token-for-token the same (``tests/test_local_speed.py``).
``DELIBERATE_LEAN_DECODE=0`` goes back to ``generate``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

#: Rows that have stopped keep getting this token, as ``generate`` pads finished rows.
Step = Callable[[Any], None]


def lean_enabled() -> bool:
    """Whether the lean loop replaces ``generate`` (``DELIBERATE_LEAN_DECODE``, default on)."""
    return os.environ.get("DELIBERATE_LEAN_DECODE", "1").strip().lower() not in ("0", "false", "no", "off")


def decode(
    model: Any,
    ids: Any,
    mask: Any,
    max_new: int,
    pick: Callable[[Any], Any],
    stop: Callable[[Any], Any],
    on_step: Step | None,
    pad_id: int,
) -> Any:
    """Generate up to ``max_new`` tokens for the left-padded rows ``ids`` (``mask``: 1 on real
    tokens). ``pick(scores)`` chooses each row's next token from float32 logits; ``stop(seq)``
    says which rows are done given the whole sequence so far (the prompt included), as a
    stopping criterion does; ``on_step(tokens)`` sees every step's tokens. Returns the whole
    sequence (prompt and new tokens), finished rows padded with ``pad_id``, as ``generate`` does."""
    import torch
    from transformers import DynamicCache

    rows, width = ids.shape
    cache = DynamicCache(config=model.config)
    position = mask.long().cumsum(-1) - 1
    position.masked_fill_(mask == 0, 1)
    seq = ids
    unfinished = torch.ones(rows, dtype=torch.long, device=ids.device)
    step_ids = ids
    for _ in range(max_new):
        out = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=position,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        scores = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
        token = pick(scores)
        token = token * unfinished + pad_id * (1 - unfinished)
        seq = torch.cat([seq, token[:, None]], dim=-1)
        if on_step is not None:
            on_step(token)
        unfinished = unfinished & ~stop(seq)
        if int(unfinished.max()) == 0:
            break
        step_ids = token[:, None]
        mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=-1)
        position = position[:, -1:] + 1
    return seq
