"""Parameter counting shared by the CLI, the profiler and the recipes."""

from __future__ import annotations

import torch
import torch.nn as nn


def own_counts(model: nn.Module) -> dict[str, int] | None:
    """The counts a model carries in ``model.compress_parameter_counts`` (its real storage,
    when that differs from its float tensors), or None for an ordinary model."""
    own = getattr(model, "compress_parameter_counts", None)
    if not isinstance(own, dict):
        return None
    return {k: int(own[k]) for k in ("total", "nonzero", "bytes")}


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total and nonzero parameter counts (shared tensors counted once).

    Models whose weights are not ``nn.Parameter`` s (int8 packed params, an ONNX
    Runtime session) carry their own counts in ``model.compress_parameter_counts``.
    """
    own = own_counts(model)
    if own is not None:
        return own
    seen: set[int] = set()
    total = nonzero = nbytes = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in seen or tensor.device.type == "meta":
            continue
        seen.add(id(tensor))
        if isinstance(tensor, nn.Parameter) or tensor.is_floating_point():
            if not isinstance(tensor, nn.Parameter):
                continue  # buffers (masks, position ids) are not parameters
            total += tensor.numel()
            with torch.no_grad():
                nonzero += int(torch.count_nonzero(tensor).item())
            nbytes += tensor.numel() * tensor.element_size()
    return {"total": total, "nonzero": nonzero, "bytes": nbytes}
