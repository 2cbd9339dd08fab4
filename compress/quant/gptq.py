"""GPTQ: error-compensating weight quantization with second-order updates.

Frantar, Ashkboos, Hoefler, Alistarh (2022), "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers" (arXiv:2210.17323). For a linear layer with
calibration inputs ``X`` (``[tokens, in]``) it quantizes the weight one input column at
a time and spreads each column's rounding error over the not-yet-quantized columns,
using the inverse of the Hessian of the layer's squared output error,
``H = 2/n X^T X``:

    err      = (w[:, j] - q(w[:, j])) / U[j, j]
    w[:, j:] -= err  U[j, j:]                        # U: upper Cholesky factor of H^-1

Columns are processed in blocks of ``blocksize``; updates to columns past the block
are applied once per block (lazy batch updates). ``H`` is dampened by
``damp * mean(diag(H))``. Options, as in the reference code (IST-DASLab/gptq) and
GPTQModel / llm-compressor:

* ``act_order``: quantize columns in order of decreasing ``diag(H)`` (the columns with
  the most input energy first, while the most columns remain to absorb their error).
  With groups it uses **static groups**: every group's scale and zero point are fixed
  from the original weights of its consecutive columns before any update, so the
  packed format needs no per-column group index (``g_idx``) and the groups stay the
  same as round-to-nearest's.
* the Hessians skip padded positions (:mod:`compress.sequential` drops padding rows
  before they reach :class:`HessianAccumulator`).
* true-sequential (see :func:`compress.sequential.sequential_groups`): within a block,
  the attention output projection's Hessian comes from the already-quantized q/k/v,
  the FFN's inputs from the quantized attention, the FFN output from the quantized
  FFN inputs.

:func:`gptq_model` drives this block by block over the model on the shared calibration
set. Its cost does not depend on the bit width (``reports/bench/gptq_bits_cost.json``:
the same CPU time at 3 and 4 bits; an early 3-bit report's 5x wall time came from a busy
machine). Layers no calibration token reached, and Hessians that needed more dampening
than asked, are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from compress.calibration import CalibBatch
from compress.hessian import (
    HessianAccumulator,
    SharedInputs,
    inverse_cholesky,
    working_copies,
)
from compress.quant.grid import (
    INDEX_BYTES,
    QuantSpec,
    dequantize_rows,
    layer_bytes,
    quantize_rows,
    scale_zero,
    set_weight_matrix,
    weight_matrix,
)
from compress.sequential import BlockRun, all_linears, run_sequential, sequential_groups

log = logging.getLogger(__name__)


@dataclass
class LayerResult:
    """What :func:`gptq_quantize` reports about one matrix."""

    loss: float  # summed OBS loss (sum over columns of err^2 / 2)
    damp: float  # the dampening used, as a fraction of mean(diag(H))
    dead_columns: int  # input features no calibration token used (diag(H) == 0)
    extra: dict = field(default_factory=dict)


def _group_params(W: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Static per-group scale/zero from ``W`` (``[out, in]``): ``[out, n_groups]`` each."""
    out_f, in_f = W.shape
    g = spec.group_size
    scales, zeros = [], []
    for start in range(0, in_f, g):
        s, z = scale_zero(W[:, start:start + g], spec)  # (out, 1)
        scales.append(s)
        zeros.append(z)
    return torch.cat(scales, 1), torch.cat(zeros, 1)


def _fixed_params(W: torch.Tensor, spec: QuantSpec, static: bool) -> tuple:
    """Grid parameters fixed from ``W`` before any update (the reference code's
    ``find_params`` on the whole matrix): (scale, zero) for per-tensor / per-channel
    grids, (group scales, group zeros) ``[out, n_groups]`` for static groups."""
    out_f = W.shape[0]
    if spec.granularity == "tensor":
        s, z = scale_zero(W.reshape(1, -1), spec)
        return s.expand(out_f, 1), z.expand(out_f, 1), None, None
    if spec.granularity == "channel":
        scale, zero = scale_zero(W, spec)  # (out, 1)
        return scale, zero, None, None
    if static:
        return (None, None, *_group_params(W, spec))
    return None, None, None, None


def gptq_quantize(
    W: torch.Tensor,
    H: torch.Tensor,
    spec: QuantSpec,
    *,
    blocksize: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    static_groups: bool | None = None,
    quantizer: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, LayerResult]:
    """Quantize ``W`` (``[out, in]``) given Hessian ``H`` (``[in, in]``).

    Returns (dequantized weights ``[out, in]`` in float32, :class:`LayerResult`).
    ``static_groups`` (default: ``act_order``) fixes group parameters up front.
    ``quantizer(w_col, j)`` overrides rounding of column ``j`` (original index), for
    callers with their own grid; it gets and returns an ``[out, 1]`` column.
    """
    W, H, dead = working_copies(W, H)
    out_f, in_f = W.shape
    static = act_order if static_groups is None else static_groups
    g = spec.group_size

    scale, zero, group_scale, group_zero = _fixed_params(W, spec, static)

    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]

    Hinv, used = inverse_cholesky(H, damp)
    Hinv = Hinv.float()

    Q = torch.zeros_like(W)
    loss = 0.0
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        W1 = W[:, i1:i2].clone()  # (out, count)
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            orig = int(perm[col]) if perm is not None else col
            if spec.granularity == "group":
                if static:
                    k = orig // g
                    scale, zero = group_scale[:, k:k + 1], group_zero[:, k:k + 1]
                elif col % g == 0:
                    # the group's current (error-updated) values: the rest of this block,
                    # then columns past it, which carry all updates up to the last block.
                    group = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :g]
                    scale, zero = scale_zero(group, spec)
            w = W1[:, i:i + 1]  # (out, 1)
            d = Hinv1[i, i]
            if quantizer is not None:
                q = quantizer(w, orig)
            else:
                q = dequantize_rows(quantize_rows(w, scale, zero, spec), scale, zero)
            Q1[:, i:i + 1] = q
            err = (w - q) / d
            loss += float(err.pow(2).sum() / 2)
            W1[:, i:] -= err @ Hinv1[i:i + 1, i:]
            Err1[:, i:i + 1] = err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    return Q, LayerResult(loss, used, int(dead.sum()))


@dataclass
class GPTQResult:
    packed: dict[str, dict[str, int]]
    uncalibrated: list[str]
    damp_raised: dict[str, float]
    blocks: int


def gptq_model(
    model: nn.Module,
    targets: dict[str, nn.Module],
    spec: QuantSpec,
    batches: list[CalibBatch],
    *,
    blocksize: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    static_groups: bool | None = None,
    true_sequential: bool = True,
    rotations: dict[str, Any] | None = None,
) -> GPTQResult:
    """Quantize ``targets`` (full name -> module) block by block on ``batches``.

    ``rotations`` (full name -> :class:`compress.quant.rotate.Rotation`) quantizes those
    linears in a rotated input basis: ``W R`` with ``H' = R^T H R``, written back as
    ``Q(W R) R^T``.
    """
    packed: dict[str, dict[str, int]] = {}
    uncalibrated: list[str] = []
    raised: dict[str, float] = {}
    static = act_order if static_groups is None else static_groups
    names = set(targets)

    def on_block(run: BlockRun) -> None:
        groups = (sequential_groups(run.block, names) if true_sequential
                  else [all_linears(run.block, names)])
        for group in groups:
            if not group:
                continue
            acc = SharedInputs(lambda n: HessianAccumulator(weight_matrix(targets[n]).shape[1]))
            run.collect(group, acc.add)
            for name in group.values():
                m = targets[name]
                W = weight_matrix(m)
                H = acc.get(name).H if acc.get(name) is not None else None
                if H is None:
                    # never reached by calibration (an expert no token was routed to):
                    # an identity Hessian spreads no error, which is plain rounding.
                    uncalibrated.append(name)
                    H = torch.eye(W.shape[1], dtype=torch.float64, device=W.device)
                rot = (rotations or {}).get(name)
                if rot is not None:
                    W, H = rot.right(W.float()), rot.hessian(H)
                Q, res = gptq_quantize(W, H, spec, blocksize=blocksize, damp=damp,
                                       act_order=act_order, static_groups=static)
                if rot is not None:
                    Q = rot.right_t(Q)
                if res.damp > damp * 1.0001:
                    raised[name] = round(res.damp, 6)
                with torch.no_grad():
                    set_weight_matrix(m, Q)
                out_f, in_f = W.shape
                packed[name] = layer_bytes(out_f, in_f, spec)
                if act_order and spec.granularity == "group" and not static:
                    # groups follow activation order: a packed format needs each column's group
                    packed[name]["g_idx"] = INDEX_BYTES * in_f
                    packed[name]["total"] += INDEX_BYTES * in_f
                log.debug("gptq %s loss %.4g", name, res.loss)

    blocks = run_sequential(model, batches, on_block)
    missing = set(targets) - set(packed)
    if missing:
        raise RuntimeError(f"gptq: {len(missing)} targeted linears sit outside the blocks: "
                           f"{sorted(missing)[:3]}")
    if uncalibrated:
        log.warning("gptq: %d linears saw no calibration input and were rounded to nearest: %s",
                    len(uncalibrated), ", ".join(uncalibrated[:5]))
    return GPTQResult(packed, uncalibrated, raised, blocks)
