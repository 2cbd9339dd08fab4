"""The integer grid under a simulated-quantized weight: codes, scales, zero points.

``rtn`` and ``gptq`` store rounded weights as float (:mod:`compress.quant.rtn`): every
quantization unit (a tensor, an output row, or a group of ``group_size`` input
columns) holds values ``scale * (q - zero)`` with integer codes ``q`` in
``[qmin, qmax]``, a scale that is an fp16 value and an integer zero point. They record
the grid's *shape* (bits, scheme, granularity, group size: ``context.info["quant"]``
and :data:`GRID_ATTR` on the model) but not the scales. This module recovers the scales
from the weights themselves, exactly: a unit whose largest magnitude ``|v|max`` carries
code ``c`` has ``scale = |v|max / c``, so :func:`recover` tries ``c = qmax, qmax - 1,
...`` per unit and keeps the first scale under which every value of the unit is an
exact integer multiple within the code range (RTN units resolve at ``c = qmax``; a
GPTQ group, whose later columns were updated after its scale was fixed, may need a
smaller ``c``). Dequantizing the recovered codes gives the stored weights bit for bit,
which :func:`recover` checks, so an exporter writing them loses nothing.

The recovery reads only :class:`compress.quant.rtn.QuantSpec` fields, so it keeps
working when the recipes move to a shared grid module.

>>> grid = recover(module.weight, QuantSpec(4, "sym", "group", 128))   # doctest: +SKIP
>>> grid.codes.shape, grid.scales.shape                                # doctest: +SKIP
(torch.Size([1536, 576]), torch.Size([1536, 5]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.quant.rtn import QuantSpec

#: attribute the quantizing recipes set on the model: the grid's shape and the modules
#: on it, with each weight's in-place version counter at the time (a later step that
#: changes a weight invalidates the record)
GRID_ATTR = "compress_quant_grid"


@dataclass
class Grid:
    """Codes ``[out, in]`` (int8, in ``[qmin, qmax]`` of ``spec``), scales and zero points
    ``[out, units per row]`` (float32 / int8) of one ``[out, in]`` weight."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    spec: QuantSpec

    @property
    def width(self) -> int:
        """Input columns per scale (the row for one scale per row)."""
        return self.codes.shape[1] // self.scales.shape[1]

    def dequantize(self) -> torch.Tensor:
        out_f, in_f = self.codes.shape
        per_row = self.scales.shape[1]
        q = self.codes.float().view(out_f, per_row, in_f // per_row)
        w = (q - self.zeros.float()[..., None]) * self.scales[..., None]
        return w.view(out_f, in_f)


def mark(
    model: nn.Module, spec: QuantSpec, modules: dict[str, nn.Module], outlier_columns: int = 0
) -> None:
    """Record on ``model`` that ``modules``' weights lie on ``spec``'s grid (recipes call this)."""
    setattr(
        model,
        GRID_ATTR,
        {
            "spec": spec.to_dict(),
            "modules": {name: int(mod.weight._version) for name, mod in modules.items()},
            "outlier_columns": int(outlier_columns),
        },
    )


def marked(model: nn.Module) -> tuple[QuantSpec, dict[str, nn.Module]] | None:
    """``(spec, modules)`` when the model carries a grid record still valid: no kept
    float outlier columns, every module present, and no weight changed since."""
    record: dict[str, Any] | None = getattr(model, GRID_ATTR, None)
    if not record or record.get("outlier_columns"):
        return None
    named = dict(model.named_modules())
    modules = {}
    for name, version in record["modules"].items():
        mod = named.get(name)
        weight = getattr(mod, "weight", None)
        if weight is None or int(weight._version) != version:
            return None
        modules[name] = mod
    return QuantSpec(**record["spec"]), modules


#: attribute :func:`compress.quant.embeddings.quantize_embeddings` sets: the embedding
#: tables (and LM head) it rounded to their own per-row grid, as :data:`GRID_ATTR` records
TABLES_ATTR = "compress_quant_tables"


def mark_tables(model: nn.Module, spec: QuantSpec, modules: dict[str, nn.Module]) -> None:
    """Record that ``modules`` (embedding tables, the LM head) lie on ``spec``'s grid."""
    setattr(model, TABLES_ATTR, {
        "spec": spec.to_dict(),
        "modules": {name: int(mod.weight._version) for name, mod in modules.items()},
    })


def marked_tables(model: nn.Module) -> tuple[QuantSpec, dict[str, nn.Module]] | None:
    """``(spec, modules)`` of the rounded tables while no table changed since, else None."""
    record: dict[str, Any] | None = getattr(model, TABLES_ATTR, None)
    if not record:
        return None
    named = dict(model.named_modules())
    modules = {}
    for name, version in record["modules"].items():
        weight = getattr(named.get(name), "weight", None)
        if weight is None or int(weight._version) != version:
            return None
        modules[name] = named[name]
    return QuantSpec(**record["spec"]), modules


def unit_width(in_features: int, spec: QuantSpec) -> int:
    """Input columns per exported scale: the whole row for tensor and channel grids (a
    tensor grid's one scale is repeated per row); for groups, ``gcd(in, group_size)``,
    so that a last partial group (576 columns in groups of 128: four of 128 and one of
    64) becomes whole sub-groups sharing its scale, which every format can store."""
    if spec.granularity != "group" or spec.group_size >= in_features:
        return in_features
    return math.gcd(in_features, spec.group_size)


@torch.no_grad()
def recover(
    weight: torch.Tensor,
    spec: QuantSpec,
    *,
    transposed: bool = False,
    width: int | None = None,
    fp16_scales: bool = False,
) -> Grid:
    """The exact grid of an ``[out, in]`` weight (``transposed``: stored ``[in, out]``).

    ``width``: input columns per recovered scale (default :func:`unit_width`; a format
    with fixed blocks asks for its block). ``fp16_scales``: only scales that are fp16
    values (formats storing fp16 scales; the recipes' scales are, see
    :func:`compress.quant.rtn.scale_zero`). Raises :class:`UserError` when some unit is
    not on any such grid (the weight was changed after quantization, quantized another
    way, or a block straddles two groups).
    """
    w = (weight.t() if transposed else weight).detach().float().cpu()
    out_f, in_f = w.shape
    width = width or unit_width(in_f, spec)
    if in_f % width:
        raise UserError(f"{in_f} input columns do not split into blocks of {width}")
    units = w.reshape(out_f * (in_f // width), width)  # (U, width), row-major
    n_units = units.shape[0]
    peak = units.abs().amax(dim=1)  # (U,)
    scale = torch.ones(n_units)
    codes = torch.zeros_like(units)
    done = peak == 0  # an all-zero unit: scale 1, codes 0
    top = 2 ** (spec.bits - 1) if spec.scheme == "sym" else spec.qmax
    for c in range(top, 0, -1):
        todo = (~done).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        s = peak[todo] / c  # (T,)
        v = units[todo]
        n = torch.round(v / s[:, None])
        ok = (n * s[:, None] == v).all(dim=1)
        if fp16_scales:
            ok &= s.half().float() == s
        if spec.scheme == "sym":
            ok &= (n >= spec.qmin).all(dim=1) & (n <= spec.qmax).all(dim=1)
        else:
            ok &= (n.amax(dim=1) - n.amin(dim=1)) <= spec.qmax
        hit = todo[ok]
        scale[hit], codes[hit], done[hit] = s[ok], n[ok], True
    if not bool(done.all()):
        bad = int((~done).sum())
        raise UserError(
            f"{bad} of {n_units} quantization units are not on a {spec.describe()} "
            "grid: the weights were changed after quantization (or quantized "
            "another way), so they cannot be written as integer codes"
        )
    if spec.scheme == "sym":
        zero = torch.zeros(n_units)
    else:  # q = n + zero must lie in [0, qmax]
        zero = (-codes.amin(dim=1)).clamp(min=0)
        codes = codes + zero[:, None]
    per_row = in_f // width
    scales, zeros = scale.view(out_f, per_row), zero.view(out_f, per_row)
    grid = Grid(
        codes.view(out_f, in_f).to(
            torch.int16 if spec.bits == 8 and spec.scheme == "asym" else torch.int8
        ),
        scales.contiguous(),
        zeros.to(torch.int16).contiguous(),
        spec,
    )
    if not torch.equal(grid.dequantize(), w):
        raise UserError("the recovered grid does not reproduce the weights exactly")
    return grid
