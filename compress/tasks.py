"""The tasks a model is scored on; the benchmark picks its suite by task.

>>> check_task("causal-lm")
'causal-lm'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compress.errors import did_you_mean

#: ``causal-lm`` (decoders), ``classification`` (a sequence-classification head),
#: ``embedding`` (a bare encoder) and ``seq2seq`` (encoder-decoders).
TASKS = ("causal-lm", "classification", "embedding", "seq2seq")


def check_task(task: str) -> str:
    """``task`` if it is one of :data:`TASKS`, else a one-line error with the closest."""
    if task not in TASKS:
        raise did_you_mean("task", task, TASKS)
    return task


def decoder_start(model: Any) -> int | None:
    """The model's ``decoder_start_token_id`` (generation config first), or None."""
    for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        start = getattr(cfg, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    return None


def without_start(ids: Sequence[int], start: int | None) -> list[int]:
    """A target's token ids without a leading decoder-start token.

    A decoder is fed its start token and asked for what follows: a target that begins
    with it (BERT's ``[CLS]`` in a bert2bert ``EncoderDecoderModel`` whose decoder starts
    from ``[CLS]``) would ask the model to predict the token it was just given. T5
    (targets ``x </s>``, start ``<pad>``) and BART (``<s> x </s>``, start ``</s>``) keep
    theirs: their first target token is not the start token.

    >>> without_start([101, 7, 8, 102], 101), without_start([0, 7, 2], 2)
    ([7, 8, 102], [0, 7, 2])
    """
    ids = list(ids)
    return ids[1:] if start is not None and len(ids) > 1 and ids[0] == start else ids


def pad_ids(rows: Sequence[Sequence[int]], value: int) -> tuple[Any, Any]:
    """Right-padded ``(ids, mask)`` long tensors ``(B, T)`` of token-id lists."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
