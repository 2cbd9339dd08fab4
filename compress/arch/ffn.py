"""Dense FFNs inside a block: which projection is the output, which inputs feed it, which
one goes through the activation (the gate), how a fused gate-up orders its rows, what
the activation is, and whether the FFN is one module that can be swapped whole.

Measured on the traced forward (:mod:`compress.arch.probe`): the output projection's
recorded input must equal ``act(gate(x)) * up(x)`` (gated) or ``act(in(x))``, with the
activation either a module that ran on exactly that input or one of a few functions.
Without a trace (meta models) names decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.arch.probe import Trace
from compress.arch.spec import FFNLayout
from compress.arch.util import in_out, lca, leaf, same_rows, tokens

#: activations tried when the activation is a function call, not a module.
FUNCTIONAL_ACTS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu2": lambda x: F.relu(x).square(),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}



@dataclass
class _Act:
    path: str | None
    name: str | None
    fn: object


def _act_modules(block: nn.Module, prefix: str, trace: Trace) -> dict[str, tuple[nn.Module, object]]:
    """Parameterless leaf modules of the block that ran (activation candidates)."""
    out = {}
    for rel, m in block.named_modules():
        if not rel or list(m.children()) or any(True for _ in m.parameters(recurse=False)):
            continue
        if isinstance(m, (nn.Dropout, nn.Identity)):
            continue
        rec = trace.records.get(f"{prefix}.{rel}")
        if rec is not None and rec.inp is not None:
            out[rel] = (m, rec)
    return out


def _act_name(module: nn.Module | None, fn: object) -> str | None:
    if module is not None:
        x = torch.linspace(-4, 4, 97)
        try:
            y = module(x)
        except Exception:  # noqa: BLE001 - an odd module is simply not named
            return type(module).__name__
        for name, f in FUNCTIONAL_ACTS.items():
            if torch.allclose(y, f(x), atol=1e-3):
                return name
        return type(module).__name__
    for name, f in FUNCTIONAL_ACTS.items():
        if f is fn:
            return name
    return None


def _split(y: torch.Tensor, order: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(gate, up) halves of a fused gate-up output."""
    if order == "interleaved":
        return y[..., 0::2], y[..., 1::2]
    a, b = y.chunk(2, dim=-1)
    return (a, b) if order == "gate_first" else (b, a)


def match_ffn(ins: dict[str, torch.Tensor], x_out: torch.Tensor, acts: dict[str, tuple]
              ) -> tuple[dict[str, str], str | None, _Act] | None:
    """Which of the input projections' outputs ``ins`` (path -> output) make ``x_out``.

    Returns ({"in"/"gate"/"gate_up": path}, gate_up order or None, activation).
    Tries activation modules that ran first (their recorded input identifies the gate),
    then functional activations.
    """
    ff = x_out.shape[-1]
    candidates: list[tuple[str | None, object, torch.Tensor | None]] = []
    for rel, (m, rec) in acts.items():
        candidates.append((rel, m, rec.inp))
    for f in FUNCTIONAL_ACTS.values():
        candidates.append((None, f, None))
    for path, y in ins.items():
        w = y.shape[-1]
        if w == ff:  # plain or separate gate
            for rel, fn, act_in in candidates:
                if act_in is not None and not same_rows(act_in, y):
                    continue
                a = fn(y)
                if same_rows(a, x_out):
                    return {"in": path}, None, _Act(rel, None, fn)
                for other, y2 in ins.items():
                    if other != path and y2.shape == y.shape and same_rows(a * y2, x_out):
                        return {"gate": path, "in": other}, None, _Act(rel, None, fn)
        elif w == 2 * ff:
            for order in ("gate_first", "up_first", "interleaved"):
                g, u = _split(y, order)
                for rel, fn, act_in in candidates:
                    if act_in is not None and not same_rows(act_in, g):
                        continue
                    if same_rows(fn(g) * u, x_out):
                        return {"gate_up": path}, order, _Act(rel, None, fn)
    return None


def find_ffns(block: nn.Module, paths: list[str], ctx: Any, rec
              ) -> tuple[list[FFNLayout], set[str]]:
    """Dense FFNs among ``paths``: each an output projection and the inputs that feed it."""
    mods = {p: block.get_submodule(p) for p in paths}
    left = set(paths)
    found: list[FFNLayout] = []
    rec = rec or (lambda _p: None)
    acts = _act_modules(block, ctx.prefix, ctx.trace) if ctx.trace and rec else {}
    outs = [p for p in paths if in_out(mods[p])[1] == ctx.hidden and in_out(mods[p])[0] != ctx.hidden]
    if not outs:
        outs = [p for p in paths if in_out(mods[p])[1] == ctx.hidden]
    for out in outs:
        ff = in_out(mods[out])[0]
        ins = [p for p in paths if p != out and p in left and in_out(mods[p])[0] == ctx.hidden
               and in_out(mods[p])[1] in (ff, 2 * ff)]
        if not ins:
            continue
        result = None
        r_out = rec(out)
        if r_out is not None and r_out.inp is not None:
            ys = {p: rec(p).out for p in ins if rec(p) is not None and rec(p).out is not None}
            result = match_ffn(ys, r_out.inp, acts)
        if result is None:
            result = _ffn_by_name(ins, ff, mods)
            if result is None:
                continue
        parts, order, act = result
        parts = {**parts, "out": out}
        common = lca(list(parts.values()))
        path, act_outside = _ffn_path(block, common, parts, ctx, rec)
        act_path = act.path
        if act_path is None:  # functional: name an activation module attribute if one exists
            act_path = _act_attr(block, common)
        found.append(FFNLayout(parts=parts, intermediate=ff, path=path, gate_up_order=order,
                               act_path=act_path, act_name=_act_name(
                                   block.get_submodule(act.path) if act.path else None, act.fn),
                               act_outside=act_outside))
        left -= set(parts.values())
    return found, left


def _act_attr(block: nn.Module, common: str) -> str | None:
    holder = block.get_submodule(common) if common else block
    for name in ("act", "act_fn", "activation_fn", "activation", "intermediate_act_fn"):
        m = getattr(holder, name, None)
        if isinstance(m, nn.Module):
            return f"{common}.{name}" if common else name
    return None


def _ffn_by_name(ins: list[str], ff: int, mods: dict[str, nn.Module]
                 ) -> tuple[dict[str, str], str | None, _Act] | None:
    if len(ins) == 1:
        p = ins[0]
        if in_out(mods[p])[1] == 2 * ff:
            return {"gate_up": p}, "gate_first", _Act(None, None, None)
        return {"in": p}, None, _Act(None, None, None)
    if len(ins) == 2:
        gate = [p for p in ins if any(t in ("gate", "w1", "wi_0") for t in
                                      tokens(p) + [leaf(p)])]
        if len(gate) == 1:
            other = next(p for p in ins if p != gate[0])
            return {"gate": gate[0], "in": other}, None, _Act(None, None, None)
    return None


def _ffn_path(block: nn.Module, common: str, parts: dict[str, str], ctx: Any, rec
              ) -> tuple[str, bool]:
    """The FFN module if it can be swapped whole, and whether the activation is applied
    by a module around the input projection (split FFN: BERT, OPT)."""
    if ctx.trace is None:
        return common, False
    r = ctx.trace.records.get(f"{ctx.prefix}.{common}") if common else None
    out_rec = rec(parts["out"])
    first_in = rec(parts.get("gate_up") or parts.get("gate") or parts["in"])
    whole = (r is not None and out_rec is not None and first_in is not None and common
             and same_rows(r.out, out_rec.out) and same_rows(r.inp, first_in.inp))
    return (common if whole else ""), not whole
