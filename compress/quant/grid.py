"""The shared integer grid and its packing: one module for rtn, gptq, awq, hqq, the rotation
recipe and the packed-size accounting.

**Grids.** Weights are handled as ``[out, in]`` matrices (GPT-2 ``Conv1D`` weights, stored
``[in, out]``, are transposed by :func:`weight_matrix`). A b-bit code ``q`` maps back to
``scale * (q - zero)``:

* symmetric (absmax): ``q`` in ``[-2^(b-1), 2^(b-1)-1]``, ``zero = 0``,
  ``scale = max|w| / (2^(b-1)-1)`` -- the grid is symmetric around 0 and the most
  negative code is unused, as in LLM.int8 / GPTQ's ``sym`` mode.
* asymmetric (min/max, with a zero point): ``q`` in ``[0, 2^b - 1]``,
  ``scale = (max - min) / (2^b - 1)`` over the unit's range widened to contain 0, and
  ``zero = round(-min / scale)`` (an integer, so 0.0 is exactly representable) -- the
  grid of the GPTQ, AWQ and llm-compressor 4-bit g128 results. With
  ``zero_point="float"`` the zero is an fp16 number instead (HQQ's grid).

``scheme="auto"`` (:func:`resolve_scheme`) is asymmetric at 4 bits and below, where a
zero point buys back the code a symmetric grid wastes, and symmetric above.
Scales (and float zeros) are simulated as fp16 exactly as stored; an asymmetric scale is
rounded *up* to fp16 so the grid still covers the unit (error <= half a step).

Granularity: one scale per tensor, per output channel, or per group of ``group_size``
consecutive input columns of a row (a last partial group is allowed).

**Packing.** The simulated recipes keep rounded values in float so the model stays a
plain Hugging Face model; :func:`layer_bytes` gives the size the format takes once
packed, and :func:`pack_codes` / :func:`unpack_codes` really pack codes into a bit stream
so the accounting is checked against real bytes. Per ``[out, in]`` matrix with ``k``
kept (outlier) input columns and ``u`` quantization units (1 per tensor, ``out`` per
channel, ``out * ceil((in - k) / g)`` per group):

    bytes = ceil(out * (in - k) * bits / 8)      # codes
          + 2 * u                                # fp16 scales
          + ceil(u * bits / 8)   (asym, int zero)   or   2 * u  (float zero)
          + out * k * elem_bytes                 # outlier columns, unquantized
          + 4 * k                                # their int32 column indices

>>> spec = QuantSpec(bits=4, scheme="asym", granularity="group", group_size=128)
>>> w_hat = fake_quantize(w, spec)                     # doctest: +SKIP
>>> layer_bytes(out_features=4, in_features=256, spec=QuantSpec(4, "sym", "group", 128))["total"]
528
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compress.arch.weights import out_in
from compress.errors import UserError

SCHEMES = ("sym", "asym")
#: what recipe configs accept: "auto" resolves by bit width (see resolve_scheme).
SCHEME_CHOICES = ("auto", "sym", "asym")
GRANULARITIES = ("tensor", "channel", "group")
ZERO_POINTS = ("int", "float")
SCALE_BYTES = 2  # scales are stored (and simulated) as fp16
INDEX_BYTES = 4  # int32 column indices of kept outlier columns


def resolve_scheme(scheme: str, bits: int) -> str:
    """``"auto"``: asymmetric with a zero point at <= 4 bits, symmetric above.

    >>> resolve_scheme("auto", 4), resolve_scheme("auto", 8), resolve_scheme("sym", 3)
    ('asym', 'sym', 'sym')
    """
    if scheme == "auto":
        return "asym" if bits <= 4 else "sym"
    return scheme


@dataclass(frozen=True)
class QuantSpec:
    """How one weight matrix is rounded: bits, scheme, and which weights share a scale."""

    bits: int = 8
    scheme: str = "sym"  # "sym" (absmax) | "asym" (min/max) | "auto" (resolve_scheme)
    granularity: str = "channel"  # "tensor" | "channel" (per output row) | "group"
    group_size: int = 128  # input columns per group (granularity="group")
    zero_point: str = "int"  # asym: "int" (bits wide) | "float" (fp16, HQQ)

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise UserError(f"quantization: bits={self.bits} is not supported; use 2 to 8")
        object.__setattr__(self, "scheme", resolve_scheme(self.scheme, self.bits))
        if self.zero_point not in ZERO_POINTS:
            raise UserError(f"quantization: zero_point {self.zero_point!r}; choose one of "
                            f"{', '.join(ZERO_POINTS)}")
        if self.scheme not in SCHEMES:
            raise UserError(f"quantization: scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)}")
        if self.granularity not in GRANULARITIES:
            raise UserError(
                f"quantization: granularity {self.granularity!r}; choose one of "
                f"{', '.join(GRANULARITIES)}"
            )
        if self.group_size < 1:
            raise UserError(f"quantization: group_size={self.group_size} must be positive")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.scheme == "sym" else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.scheme == "sym" else 2**self.bits - 1

    def describe(self) -> str:
        where = {"tensor": "per-tensor", "channel": "per-channel"}.get(
            self.granularity, f"group-{self.group_size}"
        )
        zero = " float-zero" if self.scheme == "asym" and self.zero_point == "float" else ""
        return f"{self.bits}-bit {self.scheme}{zero} {where}"

    def to_dict(self) -> dict:
        out = {"bits": self.bits, "scheme": self.scheme, "granularity": self.granularity}
        if self.granularity == "group":
            out["group_size"] = self.group_size
        if self.scheme == "asym":
            out["zero_point"] = self.zero_point
        return out


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as ``[out, in]`` (a view for Linear, a transposed view for Conv1D,
    an expert's slice for native experts; see :mod:`compress.arch.weights`)."""
    return out_in(module).data


def set_weight_matrix(module: nn.Module, w_out_in: torch.Tensor) -> None:
    """Write an ``[out, in]`` matrix back in the module's own layout and dtype."""
    with torch.no_grad():
        out_in(module).copy_(w_out_in.to(module.weight.dtype))


def _fp16_up(x: torch.Tensor) -> torch.Tensor:
    """The smallest fp16 value >= ``x`` (as float32)."""
    h = x.to(torch.float16)
    h = torch.where(h.float() < x, torch.nextafter(h, torch.full_like(h, float("inf"))), h)
    return h.float()


def scale_zero(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for the rows of ``w`` (``[rows, cols]``; one pair per row).

    Callers reshape so that each row is one quantization unit (a tensor, an output
    channel, or a group). Returns float tensors ``[rows, 1]``.
    """
    w = w.float()
    if spec.scheme == "sym":
        absmax = w.abs().amax(dim=1, keepdim=True)
        scale = absmax / spec.qmax
        zero = torch.zeros_like(scale)
    elif spec.zero_point == "float":
        # HQQ's grid: the unit's own min/max, zero = -min / scale as an fp16 number.
        lo = w.amin(dim=1, keepdim=True)
        hi = w.amax(dim=1, keepdim=True)
        scale = _fp16_up((hi - lo) / spec.qmax)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = (-lo / safe).to(torch.float16).float()
    else:
        lo = w.amin(dim=1, keepdim=True).clamp(max=0.0)  # the grid must contain 0
        hi = w.amax(dim=1, keepdim=True).clamp(min=0.0)
        scale = _fp16_up((hi - lo) / spec.qmax)
        zero = torch.round(-lo / torch.where(scale > 0, scale, torch.ones_like(scale)))
        zero = zero.clamp(0, spec.qmax)
    # scales are stored as fp16 (see layer_bytes): simulate exactly that,
    # rounding up so the grid still covers the unit's range (error stays <= step / 2).
    scale = _fp16_up(scale)
    # an all-zero unit (or a scale below fp16's range): any positive scale represents it.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zero


def quantize_rows(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    """Integer codes of ``w`` for per-row ``scale``/``zero`` (same broadcast shapes)."""
    if spec.scheme == "asym" and spec.zero_point == "float":
        return torch.clamp(torch.round(w.float() / scale + zero), spec.qmin, spec.qmax)
    return torch.clamp(torch.round(w.float() / scale) + zero, spec.qmin, spec.qmax)


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q - zero)


def to_units(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Reshape ``[out, in]`` into ``[units, unit_size]`` rows; returns (view, pad info).

    :func:`from_units` undoes it. A method that finds its own scale/zero per unit (HQQ,
    AWQ's clipping) works on these rows and dequantizes with :func:`dequantize_rows`.
    """
    out_f, in_f = w.shape
    if spec.granularity == "tensor":
        return w.reshape(1, -1), (out_f, in_f, 0)
    if spec.granularity == "channel":
        return w, (out_f, in_f, 0)
    g = spec.group_size
    pad = (-in_f) % g
    if pad:
        # a last partial group: pad with copies of its own first column so the pad
        # cannot widen the group's range, then drop it after rounding.
        last = w[:, in_f - (in_f % g): in_f]
        filler = last[:, :1].expand(out_f, pad)
        w = torch.cat([w, filler], dim=1)
    return w.reshape(out_f * ((in_f + pad) // g), g), (out_f, in_f, pad)


def from_units(u: torch.Tensor, info: tuple[int, ...]) -> torch.Tensor:
    out_f, in_f, pad = info
    return u.reshape(out_f, in_f + pad)[:, :in_f]


def quantize_matrix(
    w: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes ``[out, in]``, scales ``[units]``, zeros ``[units]``) of an ``[out, in]`` matrix.

    Units are one tensor, one per output row, or ``out x ceil(in / group_size)`` groups
    (row-major: row 0's groups first).
    """
    units, info = to_units(w.float(), spec)
    scale, zero = scale_zero(units, spec)
    q = quantize_rows(units, scale, zero, spec)
    return from_units(q, info), scale.flatten(), zero.flatten()


def fake_quantize(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Round ``w`` (``[out, in]``) to the grid and return float values in ``w``'s dtype."""
    units, info = to_units(w.float(), spec)
    scale, zero = scale_zero(units, spec)
    w_hat = dequantize_rows(quantize_rows(units, scale, zero, spec), scale, zero)
    return from_units(w_hat, info).to(w.dtype)


def step_sizes(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The grid step (scale) that applies to each element of ``w``, shape ``[out, in]``."""
    units, info = to_units(w.float(), spec)
    scale, _ = scale_zero(units, spec)
    return from_units(scale.expand_as(units), info)


def snr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-noise ratio in dB: ``10 log10(|ref|^2 / |ref - approx|^2)``."""
    noise = (reference.float() - approx.float()).pow(2).sum()
    signal = reference.float().pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))


# --- packing ----------------------------------------------------------------------

def num_units(out_features: int, in_features: int, spec: QuantSpec) -> int:
    if spec.granularity == "tensor":
        return 1
    if spec.granularity == "channel":
        return out_features
    return out_features * math.ceil(in_features / spec.group_size)


def _zero_bytes(units: int, spec: QuantSpec) -> int:
    if spec.scheme != "asym":
        return 0
    if spec.zero_point == "float":
        return SCALE_BYTES * units
    return math.ceil(units * spec.bits / 8)


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
        "zeros": _zero_bytes(units, spec),
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


def model_size_summary(model: nn.Module, packed: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Dense vs packed bytes of the whole model given per-module packed breakdowns.

    ``packed`` maps module names (whose ``.weight`` is replaced by the packed format)
    to :func:`layer_bytes` results. Everything else counts at its stored dtype.
    """
    dense_total = sum(p.numel() * p.element_size() for _, p in unique_parameters(model))
    modules = dict(model.named_modules())
    if any(name not in modules for name in packed):  # native experts: per-expert views
        from compress.arch import targeted_linears

        modules.update({n: m for n, (m, _) in targeted_linears(model).items()})
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
