"""Packed-size accounting: lives in :mod:`compress.quant.grid` with the grid it packs.

Kept so ``from compress.quant.packing import layer_bytes`` keeps working.
"""

<<<<<<< HEAD
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compress.quant.rtn import QuantSpec

SCALE_BYTES = 2  # scales are stored (and simulated) as fp16
INDEX_BYTES = 4  # int32 column indices of kept outlier columns


def num_units(out_features: int, in_features: int, spec: QuantSpec) -> int:
    if spec.granularity == "tensor":
        return 1
    if spec.granularity == "channel":
        return out_features
    return out_features * math.ceil(in_features / spec.group_size)


def layer_bytes(
    out_features: int,
    in_features: int,
    spec: QuantSpec,
    outlier_columns: int = 0,
    outlier_elem_bytes: int = 4,
) -> dict[str, int]:
    """Byte breakdown of one packed ``[out, in]`` weight (see the module docstring)."""
    k = outlier_columns
    quantized_in = in_features - k
    units = num_units(out_features, quantized_in, spec) if quantized_in > 0 else 0
    parts = {
        "codes": math.ceil(out_features * quantized_in * spec.bits / 8),
        "scales": SCALE_BYTES * units,
        "zeros": math.ceil(units * spec.bits / 8) if spec.scheme == "asym" else 0,
        "outliers": out_features * k * outlier_elem_bytes,
        "outlier_index": INDEX_BYTES * k,
    }
    parts["total"] = sum(parts.values())
    return parts


def pack_codes(q: torch.Tensor, bits: int, qmin: int) -> torch.Tensor:
    """Pack integer codes (any shape) into a ``uint8`` bit stream, ``bits`` per code.

    Codes are shifted by ``-qmin`` to be unsigned. Length is ``ceil(numel * bits / 8)``.
    """
    u = (q.detach().flatten().to("cpu", torch.int64) - qmin).numpy().astype(np.uint16)
    if u.size and int(u.max()) >= 2**bits:
        raise ValueError(f"code out of range for {bits} bits")
    # (n, bits) matrix of bits, most significant first, then one flat stream.
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint16)
    stream = ((u[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)
    return torch.from_numpy(np.packbits(stream))


def unpack_codes(packed: torch.Tensor, bits: int, qmin: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``numel`` signed codes as int64."""
    stream = np.unpackbits(packed.cpu().numpy())[: numel * bits].reshape(numel, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return torch.from_numpy(stream.astype(np.int64) @ weights) + qmin


def unique_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every parameter, tied tensors once (first name wins)."""
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        key = p.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        out.append((name, p))
    return out


def model_size_summary(model: nn.Module, packed: dict[str, dict[str, int]],
                       modules: dict[str, nn.Module] | None = None) -> dict[str, Any]:
    """Dense vs packed bytes of the whole model given per-module packed breakdowns.

    ``packed`` maps module names (whose ``.weight`` is replaced by the packed format)
    to :func:`layer_bytes` results; ``modules`` maps those names to the modules (default:
    the model's; native MoE experts are views, not modules, so callers pass them).
    Everything else counts at its stored dtype.
    """
    dense_total = sum(p.numel() * p.element_size() for _, p in unique_parameters(model))
    modules = modules if modules is not None else dict(model.named_modules())
    target_dense = 0
    target_weights = 0
    for name in packed:
        w = modules[name].weight
        target_dense += w.numel() * w.element_size()
        target_weights += w.numel()
    target_packed = sum(b["total"] for b in packed.values())
    keys = sorted({k for b in packed.values() for k in b if k != "total"})
    parts = {k: sum(b.get(k, 0) for b in packed.values()) for k in keys}
    return {
        "dense_bytes": dense_total,
        "packed_bytes": dense_total - target_dense + target_packed,
        "target_dense_bytes": target_dense,
        "target_packed_bytes": target_packed,
        "target_weights": target_weights,
        "target_bits_per_weight": round(8 * target_packed / max(target_weights, 1), 4),
        "packed_parts": parts,
    }
=======
from compress.quant.grid import (  # noqa: F401
    INDEX_BYTES,
    SCALE_BYTES,
    layer_bytes,
    model_size_summary,
    num_units,
    pack_codes,
    unique_parameters,
    unpack_codes,
)
>>>>>>> fairfight
