"""AWQ: activation-aware weight quantization (scale search + clipping search).

Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan, Han (2023), "AWQ: Activation-aware
Weight Quantization for LLM Compression and Acceleration" (arXiv:2306.00978), as in the
reference code (mit-han-lab/llm-awq, ``auto_scale`` and ``auto_clip``):

* **Scale search.** Linears that read the same input share a per-input-channel scale
  ``s``; the weights are quantized as ``Q(W diag(s))`` and the input divided by ``s``.
  Salient channels (large mean ``|x|``) get ``s > 1``, so their weights round with a
  relatively finer step. ``s = mean|x|^alpha`` (normalised by ``sqrt(max s * min s)``),
  with ``alpha`` searched on a grid of ``n_grid`` points in ``[0, 1)`` to minimise the
  paper's objective (eq. 4), the output error over calibration tokens

      L(s) = || Q(W diag(s)) (diag(s)^-1 X) - W X ||^2,

  summed over the linears sharing the input. It is evaluated exactly from
  ``H = X^T X`` as ``tr(E H E^T)`` with ``E = W - Q(W diag(s)) diag(s)^-1``.
* **Clipping search.** Then, per linear (not the attention query/key projections,
  whose errors the softmax amplifies; as in the reference), per output row and
  quantization group, the largest ``|w|`` of the (scaled) weights is shrunk by
  ``1 - i / n_grid`` for ``i < max_shrink * n_grid``, keeping the value that minimises
  that group's output error ``e^T H_gg e``.

Calibration statistics (``H`` and ``mean |x|`` per linear) come from each block's
unquantized linears in one replay, and the block's unquantized outputs feed the next
block, as in the reference (which searches on the float model and quantizes at the
end). The simulated weight written back is ``Q(clip(W diag(s))) diag(s)^-1``: exactly
what a runtime computes when ``1/s`` is folded into the preceding norm or linear, or
kept as an explicit input scale; the packed size counts an fp16 scale per input
channel of every scaled group (a runtime that folds them saves those bytes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from compress.arch import Block
from compress.calibration import CalibBatch
from compress.hessian import SharedInputs
from compress.quant.grid import (
    SCALE_BYTES,
    QuantSpec,
    dequantize_rows,
    fake_quantize,
    from_units,
    layer_bytes,
    quantize_rows,
    scale_zero,
    set_weight_matrix,
    to_units,
    weight_matrix,
)
from compress.sequential import BlockRun, all_linears, run_sequential

log = logging.getLogger(__name__)

#: linears that read the same input, by base component (an expert's ``ffn_in.e3`` and
#: ``ffn_gate.e3`` share that expert's routed tokens): they share one AWQ scale.
SHARED_INPUT: tuple[tuple[str, ...], ...] = (
    ("attn_q", "attn_k", "attn_v"),
    ("attn_qkv",),
    ("attn_o",),
    ("cross_q",),
    ("cross_k", "cross_v", "cross_kv"),
    ("cross_o",),
    ("ffn_gate", "ffn_in", "ffn_gate_up"),
    ("ffn_out",),
)
#: no clipping search for these: attention scores amplify their errors (reference code).
NO_CLIP = ("attn_q", "attn_k", "attn_qkv", "cross_q", "cross_k", "cross_kv")


class InputStats:
    """``H = sum x x^T`` (float64) and ``sum |x|`` per feature, over real tokens."""

    def __init__(self) -> None:
        self.H: torch.Tensor | None = None
        self.abs_sum: torch.Tensor | None = None
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        if self.H is None:
            self.H = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
            self.abs_sum = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        self.H += x.t() @ x
        self.abs_sum += x.abs().sum(0)
        self.n += x.shape[0]

    @property
    def mean_abs(self) -> torch.Tensor:
        return (self.abs_sum / max(self.n, 1)).float()


def output_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """``||X W^T - X W_hat^T||^2`` from ``H = X^T X``: ``tr(E H E^T)``, ``E = W - W_hat``."""
    E = (W - W_hat).float()
    return float(((E @ H) * E).sum())


def scaled_quantize(W: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``Q(W diag(s)) diag(s)^-1``: the effective weight of a scaled, quantized linear."""
    return fake_quantize(W * s[None, :], spec) / s[None, :]


def search_scale(
    weights: list[torch.Tensor], H: torch.Tensor, mean_abs: torch.Tensor, spec: QuantSpec,
    n_grid: int = 20,
) -> tuple[torch.Tensor, float, list[float]]:
    """AWQ's grid search of ``alpha``: returns (scale ``[in]``, best alpha, losses per alpha)."""
    Hf = H.float().to(weights[0].device)
    mean_abs = mean_abs.to(weights[0].device)
    best, best_alpha, best_s = float("inf"), 0.0, torch.ones_like(mean_abs)
    losses = []
    for i in range(n_grid):
        alpha = i / n_grid
        s = mean_abs.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        loss = sum(output_error(W, scaled_quantize(W, s, spec), Hf) for W in weights)
        losses.append(loss)
        if loss < best:
            best, best_alpha, best_s = loss, alpha, s
    return best_s, best_alpha, losses


def _group_hessians(H: torch.Tensor, in_f: int, spec: QuantSpec) -> tuple[torch.Tensor, int]:
    """Diagonal blocks of ``H`` per quantization group: ``[n_groups, g, g]`` (zero-padded)."""
    g = spec.group_size if spec.granularity == "group" else in_f
    pad = (-in_f) % g
    if pad:
        Hp = torch.zeros(in_f + pad, in_f + pad, dtype=H.dtype, device=H.device)
        Hp[:in_f, :in_f] = H
        H = Hp
    n = (in_f + pad) // g
    blocks = torch.stack([H[k * g:(k + 1) * g, k * g:(k + 1) * g] for k in range(n)])
    return blocks, g


def search_clip(
    W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, n_grid: int = 20, max_shrink: float = 0.5
) -> torch.Tensor:
    """Clip each (row, group) of ``W`` to the ``±max`` minimising that group's output error.

    Returns the clipped weights (``[out, in]``); quantize them afterwards.
    """
    if spec.granularity == "tensor":
        return W  # one range for the whole tensor: nothing per group to search
    out_f, in_f = W.shape
    Hg, g = _group_hessians(H.float().to(W.device), in_f, spec)  # (n_groups, g, g)
    units, info = to_units(W.float(), spec) if spec.granularity == "group" else (W.float(), None)
    n_groups = Hg.shape[0]
    U = units.reshape(out_f, n_groups, g)  # row-major units: row r's groups are consecutive
    org_max = U.abs().amax(dim=-1, keepdim=True)  # (out, n_groups, 1)
    best_max = org_max.clone()
    best_err = torch.full((out_f, n_groups), float("inf"), device=W.device)
    for i in range(int(max_shrink * n_grid)):
        max_val = org_max * (1 - i / n_grid)
        cur = torch.maximum(torch.minimum(U, max_val), -max_val)
        flat = cur.reshape(out_f * n_groups, g)
        s_, z_ = scale_zero(flat, spec)
        q = dequantize_rows(quantize_rows(flat, s_, z_, spec), s_, z_).reshape(out_f, n_groups, g)
        E = q - U  # (out, n_groups, g)
        err = torch.einsum("rkg,kgh,rkh->rk", E, Hg, E)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better[..., None], max_val, best_max)
    clipped = torch.maximum(torch.minimum(U, best_max), -best_max).reshape(units.shape)
    return from_units(clipped, info) if info is not None else clipped


def _round(W: torch.Tensor, H: torch.Tensor, spec: QuantSpec, rounding: str) -> torch.Tensor:
    """Round ``W`` to the grid: to nearest, or with GPTQ given ``H`` (act order, static groups)."""
    if rounding == "gptq":
        from compress.quant.gptq import gptq_quantize

        return gptq_quantize(W, H, spec, act_order=True)[0]
    return fake_quantize(W, spec)


@dataclass
class AWQResult:
    packed: dict[str, dict[str, int]]
    alphas: dict[str, float] = field(default_factory=dict)  # group (first linear) -> alpha
    uncalibrated: list[str] = field(default_factory=list)
    blocks: int = 0


def input_groups(block: Block, names: set[str]) -> list[dict[str, str]]:
    """The block's targeted linears that share an input (component -> full name)."""
    present = {c: n for c, n in block.linear_names.items() if n in names}
    groups: dict[tuple[int, str], dict[str, str]] = {}
    for c, n in present.items():
        base, _, suffix = c.partition(".")
        index = next((i for i, comps in enumerate(SHARED_INPUT) if base in comps), None)
        key = (index, suffix) if index is not None else (len(SHARED_INPUT), c)
        groups.setdefault(key, {})[c] = n
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1]))]


def awq_model(
    model: nn.Module,
    targets: dict[str, nn.Module],
    spec: QuantSpec,
    batches: list[CalibBatch],
    *,
    n_grid: int = 20,
    max_shrink: float = 0.5,
    clip: bool = True,
    rounding: str = "rtn",
    progress: Callable[[Block], None] | None = None,
) -> AWQResult:
    """Search AWQ scales and clips block by block and write the simulated weights.

    ``rounding="gptq"`` rounds the scaled (and clipped) weights with GPTQ in the scaled
    basis (``H' = diag(1/s) H diag(1/s)``, the block's float inputs) instead of to
    nearest: the AWQ paper's combination with GPTQ for the lowest bit widths.
    """
    names = set(targets)
    res = AWQResult(packed={})

    def on_block(run: BlockRun) -> None:
        everything = all_linears(run.block, names)
        if not everything:
            return
        shared = SharedInputs(lambda n: InputStats())
        run.collect(everything, shared.add)
        stats = {n: shared.get(n) or InputStats() for n in everything.values()}
        dense_out = run.outputs()  # the reference searches on the float model throughout
        for group in input_groups(run.block, names):
            members = list(group.values())
            got = [stats[n] for n in members if stats[n].H is not None]
            if len(got) != len(members):  # no calibration token reached it: plain rounding
                for n in members:
                    m = targets[n]
                    W = weight_matrix(m).float()
                    with torch.no_grad():
                        set_weight_matrix(m, fake_quantize(W, spec))
                    res.uncalibrated.append(n)
                    res.packed[n] = layer_bytes(W.shape[0], W.shape[1], spec)
                continue
            # linears that share an input see the same statistics; if they do not (an
            # architecture the table groups wrongly), each gets its own scale.
            shared = all(torch.equal(stats[n].abs_sum, got[0].abs_sum) for n in members)
            subgroups = [members] if shared else [[n] for n in members]
            for sub in subgroups:
                Hs = stats[sub[0]].H / stats[sub[0]].n
                Ws = [weight_matrix(targets[n]).float() for n in sub]
                s, alpha, _ = search_scale(Ws, Hs, stats[sub[0]].mean_abs, spec, n_grid)
                res.alphas[sub[0]] = alpha
                # in the scaled basis: weights W diag(s), Hessian diag(1/s) H diag(1/s)
                Hscaled = Hs / (s[:, None].double() * s[None, :].double())
                comp_of = {n: c for c, n in group.items()}
                for n, W in zip(sub, Ws, strict=True):
                    Wsc = W * s[None, :]
                    if clip and comp_of[n].split(".")[0] not in NO_CLIP:
                        Wsc = search_clip(Wsc, Hscaled, spec, n_grid, max_shrink)
                    W_hat = _round(Wsc, Hscaled, spec, rounding) / s[None, :]
                    with torch.no_grad():
                        set_weight_matrix(targets[n], W_hat)
                    out_f, in_f = W.shape
                    packed = layer_bytes(out_f, in_f, spec)
                    if n == sub[0]:  # one fp16 input scale per channel, per scaled group
                        packed["input_scales"] = SCALE_BYTES * in_f
                        packed["total"] += SCALE_BYTES * in_f
                    res.packed[n] = packed
        run.next_hidden = dense_out  # None for a shared-weight stack (nothing to propagate)

    res.blocks = run_sequential(model, batches, on_block, progress=progress)
    return res
