"""Round-to-nearest (RTN) weight quantization math: symmetric/asymmetric, per tensor,
per output channel or per group of input columns, 2-8 bits.

Weights are handled as ``[out, in]`` matrices (GPT-2 ``Conv1D`` weights, stored
``[in, out]``, are transposed by the caller; see :func:`weight_matrix`). A b-bit code
``q`` maps back to ``scale * (q - zero)``:

* symmetric (absmax): ``q`` in ``[-2^(b-1), 2^(b-1)-1]``, ``zero = 0``,
  ``scale = max|w| / (2^(b-1)-1)`` -- the grid is symmetric around 0 and the most
  negative code is unused, as in LLM.int8 / GPTQ's ``sym`` mode.
* asymmetric (min/max): ``q`` in ``[0, 2^b - 1]``, ``scale = (max - min) / (2^b - 1)``,
  ``zero = round(-min / scale)`` (an integer, so 0.0 is exactly representable).

Round-to-nearest error per element is at most ``scale / 2`` (half a step) for every
value inside the grid's range, which the tests check.

>>> spec = QuantSpec(bits=4, scheme="sym", granularity="group", group_size=128)
>>> w_hat = fake_quantize(w, spec)                     # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from compress.arch.weights import out_in
from compress.errors import UserError

SCHEMES = ("sym", "asym")
GRANULARITIES = ("tensor", "channel", "group")


@dataclass(frozen=True)
class QuantSpec:
    """How one weight matrix is rounded: bits, scheme, and which weights share a scale."""

    bits: int = 8
    scheme: str = "sym"  # "sym" (absmax) | "asym" (min/max)
    granularity: str = "channel"  # "tensor" | "channel" (per output row) | "group"
    group_size: int = 128  # input columns per group (granularity="group")

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise UserError(f"quantization: bits={self.bits} is not supported; use 2 to 8")
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
        return f"{self.bits}-bit {self.scheme} {where}"

    def to_dict(self) -> dict:
        out = {"bits": self.bits, "scheme": self.scheme, "granularity": self.granularity}
        if self.granularity == "group":
            out["group_size"] = self.group_size
        return out


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as ``[out, in]`` (a view for Linear, a transposed view for Conv1D)."""
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
    else:
        lo = w.amin(dim=1, keepdim=True).clamp(max=0.0)  # the grid must contain 0
        hi = w.amax(dim=1, keepdim=True).clamp(min=0.0)
        scale = _fp16_up((hi - lo) / spec.qmax)
        zero = torch.round(-lo / torch.where(scale > 0, scale, torch.ones_like(scale)))
        zero = zero.clamp(0, spec.qmax)
    # scales are stored as fp16 (see compress.quant.packing): simulate exactly that,
    # rounding up so the grid still covers the unit's range (error stays <= step / 2).
    scale = _fp16_up(scale)
    # an all-zero unit (or a scale below fp16's range): any positive scale represents it.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zero


def quantize_rows(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec
) -> torch.Tensor:
    """Integer codes of ``w`` for per-row ``scale``/``zero`` (same broadcast shapes)."""
    return torch.clamp(torch.round(w.float() / scale) + zero, spec.qmin, spec.qmax)


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q - zero)


def _units(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Reshape ``[out, in]`` into ``[units, unit_size]`` rows; returns (view, pad info)."""
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


def _from_units(u: torch.Tensor, info: tuple[int, ...]) -> torch.Tensor:
    out_f, in_f, pad = info
    return u.reshape(out_f, in_f + pad)[:, :in_f]


def quantize_matrix(
    w: torch.Tensor, spec: QuantSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes ``[out, in]``, scales ``[units]``, zeros ``[units]``) of an ``[out, in]`` matrix.

    Units are one tensor, one per output row, or ``out x ceil(in / group_size)`` groups
    (row-major: row 0's groups first).
    """
    units, info = _units(w.float(), spec)
    scale, zero = scale_zero(units, spec)
    q = quantize_rows(units, scale, zero, spec)
    return _from_units(q, info), scale.flatten(), zero.flatten()


def fake_quantize(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Round ``w`` (``[out, in]``) to the grid and return float values in ``w``'s dtype."""
    units, info = _units(w.float(), spec)
    scale, zero = scale_zero(units, spec)
    w_hat = dequantize_rows(quantize_rows(units, scale, zero, spec), scale, zero)
    return _from_units(w_hat, info).to(w.dtype)


def step_sizes(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The grid step (scale) that applies to each element of ``w``, shape ``[out, in]``."""
    units, info = _units(w.float(), spec)
    scale, _ = scale_zero(units, spec)
    return _from_units(scale.expand_as(units), info)


def snr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-noise ratio in dB: ``10 log10(|ref|^2 / |ref - approx|^2)``."""
    noise = (reference.float() - approx.float()).pow(2).sum()
    signal = reference.float().pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))
