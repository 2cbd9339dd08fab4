"""Importance of whole units (FFN neurons, attention heads, KV groups) and the choice
of which units go (structured pruning, :mod:`compress.pruning.surgery`).

Importance (lower goes first):

* ``magnitude``: squared L2 norm of the unit's weights;
* ``activation``: ``sum_d ||X_d||_2 * ||W_out[:, d]||_2`` over the unit's input
  features ``d`` of ``ffn_out`` / ``o`` (Wanda's score lifted to whole units, Sun et
  al. 2023);
* ``taylor``: ``|sum_w w * dL/dw|`` over the unit's weights (first-order Taylor
  estimate of the loss change, Molchanov et al. 2019), summed gradients over the
  calibration batches; needs a loss (not for bare encoders) and one gradient copy of
  the block linears.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from compress.arch import iter_blocks, out_in, qkv_rows
from compress.errors import UserError
from compress.models import input_device, to_device
from compress.pruning.surgery import (
    AttnUnit,
    Selection,
    attention_units,
    ffn_blocks,
    ffn_width,
)

IMPORTANCES = ("activation", "magnitude", "taylor")


def _col_norms(module: nn.Module) -> torch.Tensor:
    """L2 norm of each input column of the [out, in] view."""
    return out_in(module).float().norm(dim=0)


def _row_sq(module: nn.Module, with_bias: bool = True) -> torch.Tensor:
    sq = out_in(module).float().pow(2).sum(1)
    if with_bias and getattr(module, "bias", None) is not None:
        sq = sq + module.bias.float().pow(2)
    return sq


def _col_sq(module: nn.Module) -> torch.Tensor:
    return _col_norms(module).pow(2)


def _row_gw(module: nn.Module) -> torch.Tensor:
    """Signed sum of w * grad per output row (bias included)."""
    w = out_in(module)
    g = module.weight.grad
    if g is None:
        return torch.zeros(w.shape[0])
    g = g.t() if g.shape != w.shape else g
    s = (w * g).float().sum(1)
    b = getattr(module, "bias", None)
    if b is not None and b.grad is not None:
        s = s + (b * b.grad).float()
    return s


def _col_gw(module: nn.Module) -> torch.Tensor:
    w = out_in(module)
    g = module.weight.grad
    if g is None:
        return torch.zeros(w.shape[1])
    g = g.t() if g.shape != w.shape else g
    return (w * g).float().sum(0)


def _per_head(x: torch.Tensor, hd: int) -> torch.Tensor:
    return x.view(-1, hd).sum(1)


@dataclass
class Scores:
    """Signed importance parts: FFN neurons per block; query / KV parts per attention unit."""

    ffn: dict[str, torch.Tensor] = field(default_factory=dict)
    q: dict[str, torch.Tensor] = field(default_factory=dict)
    kv: dict[str, torch.Tensor] = field(default_factory=dict)


def _qkv_parts(unit: AttnUnit, fn: Callable) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v) per-row values of ``fn`` in head order (a fused qkv split by its layout)."""
    if "qkv" in unit.layout.parts:
        rows = fn(unit.linear("qkv"))
        lay, hd = unit.layout, unit.head_dim

        def part(p: str, n: int) -> torch.Tensor:
            return torch.cat([rows[qkv_rows(lay.qkv_layout, p, i, unit.n_heads, unit.n_kv, hd)]
                              for i in range(n)])

        return part("q", unit.n_heads), part("k", unit.n_kv), part("v", unit.n_kv)
    return fn(unit.linear("q")), fn(unit.linear("k")), fn(unit.linear("v"))


def _ffn_rows(block, fn: Callable) -> torch.Tensor:
    """Per-neuron sum of ``fn`` over the FFN's input projections (fused gate-up split)."""
    lay = block.layout.ffn
    total = 0
    for comp in ("ffn_in", "ffn_gate"):
        if comp in block.linears:
            total = total + fn(block.linears[comp])
    if "ffn_gate_up" in block.linears:
        rows = fn(block.linears["ffn_gate_up"])
        if lay.gate_up_order == "interleaved":
            total = total + rows[0::2] + rows[1::2]
        else:
            a, b = rows.chunk(2)
            total = total + a + b
    return total


def _usable(units: list[AttnUnit]) -> list[AttnUnit]:
    return [u for u in units if u.why_not() is None]


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> Scores:
    s = Scores()
    for b in ffn_blocks(model):
        s.ffn[b.name] = _ffn_rows(b, _row_sq) + _col_sq(b.linears["ffn_out"])
    for u in _usable(attention_units(model)):
        q, k, v = _qkv_parts(u, _row_sq)
        s.q[u.name] = _per_head(q + _col_sq(u.linear("o")), u.head_dim)
        s.kv[u.name] = _per_head(k + v, u.head_dim)
    return s


@torch.no_grad()
def activation_scores(model: nn.Module, batches: list) -> Scores:
    from compress.pruning.calibration import collect_input_sumsq

    watched: dict[str, tuple[nn.Module, str]] = {}
    fb, units = ffn_blocks(model), _usable(attention_units(model))
    for b in fb:
        watched[b.linear_names["ffn_out"]] = (b.linears["ffn_out"], b.role)
    for u in units:
        watched[u.block.linear_names[u.comps["o"]]] = (u.linear("o"), u.block.role)
    sumsq, _ = collect_input_sumsq(model, batches, watched)
    s = Scores()

    def col_score(name: str, module: nn.Module) -> torch.Tensor:
        if name not in sumsq:
            raise UserError(f"no calibration activations reached {name}")
        return sumsq[name].sqrt() * _col_norms(module)

    for b in fb:
        s.ffn[b.name] = col_score(b.linear_names["ffn_out"], b.linears["ffn_out"])
    for u in units:
        o = u.linear("o")
        s.q[u.name] = _per_head(col_score(u.block.linear_names[u.comps["o"]], o), u.head_dim)
        s.kv[u.name] = torch.zeros(u.n_kv)
    return s


def taylor_scores(model: nn.Module, batches: list, task: str) -> Scores:
    if task == "embedding":
        raise UserError("importance taylor needs a loss, and a bare encoder (embedding task) has "
                        "none; use importance activation or magnitude")
    fb, units = ffn_blocks(model), _usable(attention_units(model))
    modules = {id(m): m for b in iter_blocks(model) for m in b.linears.values()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    for m in modules.values():
        for p in m.parameters():
            p.requires_grad_(True)
    try:
        for batch in batches:
            inputs = dict(batch.inputs)
            if "labels" not in inputs:
                if batch.labels is None:
                    raise UserError("importance taylor needs labelled calibration data "
                                    f"for task {task}")
                inputs["labels"] = batch.labels
            inputs = to_device(inputs, input_device(model))
            out = model(**inputs, use_cache=False) if task in ("causal-lm", "seq2seq") \
                else model(**inputs)
            out.loss.backward()
        s = Scores()
        with torch.no_grad():
            for b in fb:
                s.ffn[b.name] = _ffn_rows(b, _row_gw) + _col_gw(b.linears["ffn_out"])
            for u in units:
                q, k, v = _qkv_parts(u, _row_gw)
                s.q[u.name] = _per_head(q + _col_gw(u.linear("o")), u.head_dim)
                s.kv[u.name] = _per_head(k + v, u.head_dim)
    finally:
        for n, p in model.named_parameters():
            p.grad = None
            p.requires_grad_(flags[n])
    return s


# --- selection -----------------------------------------------------------------------------


def count_removed(ratio: float, n: int, what: str, field_name: str) -> int:
    r = int(round(ratio * n))
    if ratio > 0 and r == 0:
        raise UserError(f"{field_name}={ratio:g} removes no {what} of {n} (rounds to 0); the "
                        f"smallest step is {1 / n:.3g}")
    if r >= n:
        raise UserError(f"{field_name}={ratio:g} would remove every {what} ({n}); choose less")
    return r


def _keep_lowest_removed(score: torch.Tensor, r: int) -> torch.Tensor:
    """Sorted indices kept after removing the ``r`` lowest scores (ties: lower index goes)."""
    n = score.numel()
    order = torch.sort(score.double(), stable=True).indices
    return order[r:].sort().values if r else torch.arange(n)


def removal_units(unit: AttnUnit, gqa: str) -> int:
    """How many units an attention module offers: heads, KV groups, or query heads per group."""
    if unit.n_kv == unit.n_heads:
        return unit.n_heads
    return unit.n_kv if gqa == "group" else unit.group


def _rows(heads: torch.Tensor, hd: int) -> torch.Tensor:
    return (heads[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)


def _shared_roles(units: list[AttnUnit]) -> set[str]:
    """Stacks where some, not all, self-attention modules own a per-head table (T5: block
    0's relative position bias serves every block, so every block loses the same heads)."""
    by_role: dict[str, list[bool]] = {}
    for u in units:
        if u.kind == "self":
            by_role.setdefault(u.block.role, []).append(bool(u.per_head_tables()))
    return {r for r, owns in by_role.items() if any(owns) and not all(owns)}


def select(model: nn.Module, scores: Scores, ffn_remove: dict[str, int],
           head_remove: dict[str, int], gqa: str = "query") -> Selection:
    """Choose what stays, removing the lowest-importance units.

    ``ffn_remove[role]`` neurons leave every FFN of that stack; ``head_remove[role]``
    units leave every attention module of that stack (a unit is a head, a KV group
    with ``gqa="group"``, or a query head of every KV group with ``gqa="query"``).
    """
    sel = Selection({}, {})
    for b in ffn_blocks(model):
        sel.ffn[b.name] = _keep_lowest_removed(scores.ffn[b.name].abs(), ffn_remove.get(b.role, 0))
    units = [u for u in attention_units(model) if head_remove.get(u.block.role, 0) > 0]
    bad = [u.why_not() for u in units if u.why_not()]
    if bad:
        raise UserError(f"structured head removal is not possible here: {bad[0]}; use "
                        "heads_ratio=0 (FFN neurons only)")
    unit_scores: dict[str, torch.Tensor] = {}
    for u in units:
        q, kv = scores.q[u.name], scores.kv[u.name]
        if u.n_kv == u.n_heads:  # one unit per head
            unit_scores[u.name] = (q + kv).abs()
        elif gqa == "group":  # one unit per KV group
            unit_scores[u.name] = (q.view(u.n_kv, u.group).sum(1) + kv).abs()
        else:  # query heads, ranked within their KV group
            unit_scores[u.name] = q.abs().view(u.n_kv, u.group)
    shared_roles = _shared_roles(attention_units(model))
    shared: dict[str, torch.Tensor] = {}
    for u in units:
        if u.kind == "self" and u.block.role in shared_roles:
            shared[u.block.role] = shared.get(u.block.role, 0) + unit_scores[u.name]
    for u in units:
        sc = shared[u.block.role] if u.kind == "self" and u.block.role in shared else \
            unit_scores[u.name]
        r = head_remove[u.block.role]
        if u.n_kv == u.n_heads:
            keep = _keep_lowest_removed(sc, r)
            sel.heads[u.name] = (keep, keep)
        elif gqa == "group":
            keep_kv = _keep_lowest_removed(sc, r)
            sel.heads[u.name] = (_rows(keep_kv, u.group), keep_kv)
        else:
            keep_q = torch.cat([g * u.group + _keep_lowest_removed(sc[g], r)
                                for g in range(u.n_kv)])
            sel.heads[u.name] = (keep_q, torch.arange(u.n_kv))
    return sel


__all__ = ["IMPORTANCES", "Scores", "activation_scores", "count_removed", "ffn_width",
           "magnitude_scores", "removal_units", "select", "taylor_scores"]
