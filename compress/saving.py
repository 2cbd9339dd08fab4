"""Saving a compressed model: ``save_pretrained`` into a temporary folder, then rename.

Recipes whose result needs its own on-disk format (sparse, quantized, MoE) register a
saver with :func:`register_saver`; the default is plain ``save_pretrained`` in
safetensors. Either way the folder appears whole or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn

from compress.fileio import atomic_dir

Saver = Callable[[nn.Module, Path], None]
_SAVERS: list[tuple[Callable[[nn.Module], bool], Saver]] = []


def register_saver(applies: Callable[[nn.Module], bool], saver: Saver) -> None:
    """Use ``saver(model, folder)`` for models where ``applies(model)`` is true."""
    _SAVERS.append((applies, saver))


def save_model(model: nn.Module, tokenizer: Any, out: str | Path) -> Path:
    out = Path(out)
    with atomic_dir(out) as tmp:
        for applies, saver in _SAVERS:
            if applies(model):
                saver(model, tmp)
                break
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out
