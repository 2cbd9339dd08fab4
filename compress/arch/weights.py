"""Weights as ``[out, in]`` matrices, whatever the storage: the one place that knows
GPT-2's ``Conv1D`` keeps its weight as ``[in, out]`` and that native MoE experts keep
one 3-D tensor for all experts (see :mod:`compress.arch.experts`).

>>> w = out_in(module)            # doctest: +SKIP
>>> w[rows] = 0                   # writes go through to the module's weight
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D


def is_transposed(module: nn.Module) -> bool:
    """True when ``module.weight`` is stored ``[in, out]`` (GPT-2 ``Conv1D``)."""
    return isinstance(module, Conv1D)


def out_in(module: nn.Module) -> torch.Tensor:
    """``module``'s weight as an ``[out, in]`` view; in-place writes reach the module."""
    w = module.weight
    return w.t() if is_transposed(module) else w


def in_out_features(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of ``nn.Linear``, ``Conv1D`` or an expert slice."""
    w = out_in(module)
    return int(w.shape[1]), int(w.shape[0])


def out_axis(module: nn.Module) -> int:
    """Axis of ``module.weight`` that indexes output features."""
    return 1 if is_transposed(module) else 0


def in_axis(module: nn.Module) -> int:
    """Axis of ``module.weight`` that indexes input features."""
    return 0 if is_transposed(module) else 1


@torch.no_grad()
def set_out_in(module: nn.Module, value: torch.Tensor) -> None:
    """Write an ``[out, in]`` matrix into ``module``'s weight, in place."""
    out_in(module).copy_(value.to(module.weight.dtype))


def linear_module(module: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` computing what ``module`` computes (a copy for ``Conv1D``)."""
    if isinstance(module, nn.Linear):
        return module
    w = out_in(module)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=getattr(module, "bias", None) is not None,
                    device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if lin.bias is not None:
            lin.bias.copy_(module.bias)
    return lin
