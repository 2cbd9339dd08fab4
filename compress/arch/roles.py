"""Roles of the linears inside one block: attention (q/k/v/o, fused qkv), FFN (in / gate /
out, fused gate-up), native experts and their router.

Names and shapes decide first; the traced forward (:mod:`compress.arch.probe`) settles
what they cannot: which input projection feeds the activation (the gate), which
attention reads the encoder (cross-attention), the activation itself, and whether the
FFN module can be swapped whole (its output is the FFN's output).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn

from compress.arch.confignames import read_heads
from compress.arch.experts import expert_containers, fused_expert_layout
from compress.arch.ffn import find_ffns
from compress.arch.probe import Trace
from compress.arch.spec import AttnLayout, BlockLayout, ExpertsLayout, FFNLayout
from compress.arch.util import (
    ATTN_RE,
    in_out,
    int_attr,
    is_linear,
    leaf,
    same_rows,
    tokens,
    under,
    width,
)

CROSS_RE = re.compile(r"cross|encoder_attn|encdec|enc_dec|src_attn", re.I)
NORM_RE = re.compile(r"norm", re.I)

#: module attributes giving the head size / head counts of an attention module.
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "key_value_proj_dim",
                  "d_kv", "hidden_size_per_attention_head", "dim_per_head")
HEADS_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head",
               "num_attention_heads_per_partition")
KV_HEADS_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_heads",
                  "num_key_value_heads_per_partition")

#: activations tried when the activation is a function call, not a module.


def attn_part_by_name(path: str) -> str | None:
    """q / k / v / o / qkv / kv from a linear's own name, or None.

    Position projections of relative-position attention (``pos_key_proj``) and other
    extras get None: they are not one of the four projections.
    """
    low = leaf(path)
    toks = tokens(path)
    if any(t in ("pos", "rel", "relative", "position", "lora", "gate") for t in toks):
        return None
    if any(s in low for s in ("qkv", "query_key_value", "c_attn", "w_pack", "in_proj")):
        return "qkv"
    if "kv" in toks or "key_value" in low:
        return "kv"
    table = {
        "q": ("q", "query", "wq", "queries"), "k": ("k", "key", "wk", "keys"),
        "v": ("v", "value", "wv", "values"),
        "o": ("o", "out", "output", "dense", "wo", "c_proj", "dense_output"),
    }
    hits = [part for part, names in table.items() if any(t in names for t in toks)]
    if len(hits) == 1:
        return hits[0]
    if not hits and "proj" in toks:
        return "o"  # a bare "proj" inside attention is the output projection
    if "out" in toks or "output" in toks:
        return "o"
    return None


# --- heads ---------------------------------------------------------------------------------


@dataclass
class HeadHints:
    heads: int | None
    kv_heads: int | None
    head_dim: int | None
    hidden: int


def _heads(parts: dict[str, nn.Module], head_mod: nn.Module, hints: HeadHints
           ) -> tuple[int, int, int] | None:
    hd = int_attr(head_mod, HEAD_DIM_ATTRS) or hints.head_dim
    h = int_attr(head_mod, HEADS_ATTRS) or hints.heads
    kv = int_attr(head_mod, KV_HEADS_ATTRS)
    if kv is None and getattr(head_mod, "multi_query", False):
        kv = 1
    groups = int_attr(head_mod, ("num_key_value_groups",))
    if kv is None and groups and h:
        kv = h // groups
    kv = kv or hints.kv_heads
    if "q" in parts and "k" in parts:
        q_out, k_out = in_out(parts["q"])[1], in_out(parts["k"])[1]
        if not hd and h:
            hd = q_out // h
        if not hd or q_out % hd or k_out % hd:
            return None
        return q_out // hd, k_out // hd, hd
    if "qkv" in parts:
        out = in_out(parts["qkv"])[1]
        if h and not hd:
            kv_guess = kv or h
            if out % (h + 2 * kv_guess) == 0:
                hd = out // (h + 2 * kv_guess)
        if not hd or not h:
            return None
        rest = out // hd - h
        if out % hd or rest <= 0 or rest % 2:
            return None
        return h, rest // 2, hd
    return None


# --- the block ------------------------------------------------------------------------------


@dataclass
class BlockContext:
    """What the layout finder needs besides the block."""

    prefix: str  # full name of the block
    role: str
    hidden: int
    hints: HeadHints
    trace: Trace | None
    seq2seq: bool

    def rec(self, rel: str):
        """The traced record of the module at ``rel`` inside the block, or None."""
        return self.trace.records.get(f"{self.prefix}.{rel}") if self.trace else None


def _routers_of(block: nn.Module, rel: str, m: nn.Module, hidden: int) -> str | None:
    """The router of the experts at ``rel``: a sibling with an (E, hidden) weight."""
    moe_path = rel.rpartition(".")[0]
    parent = block.get_submodule(moe_path) if moe_path else block
    n_exp = len(m) if isinstance(m, (nn.ModuleList, nn.ModuleDict)) else \
        next(p for p in m.parameters(recurse=False) if p.dim() == 3).shape[0]
    for prel, pm in parent.named_modules():
        full = f"{moe_path}.{prel}".strip(".") if prel else moe_path
        if not prel or under(full, rel):
            continue
        w = getattr(pm, "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() == 2 and n_exp in w.shape and \
                hidden in w.shape and not list(pm.children()):
            return full
    return None


def _experts(block: nn.Module, linears: dict[str, nn.Module], ctx: BlockContext
             ) -> tuple[ExpertsLayout | None, set[str], set[str]]:
    """(native experts, router paths, linears inside expert modules)."""
    experts: ExpertsLayout | None = None
    routers: set[str] = set()
    inside: set[str] = set()
    for rel, m in expert_containers(block):
        moe_path = rel.rpartition(".")[0]
        router = _routers_of(block, rel, m, ctx.hidden)
        if router:
            routers.add(router)
        if isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            paths = tuple(f"{rel}.{k}" for k, _ in m.named_children())
            inside.update(p for p in linears if any(under(p, e) for e in paths))
            found = ExpertsLayout(kind="modules", path=rel, n_experts=len(paths), intermediate=0,
                                  router=router, expert_paths=paths, moe_path=moe_path)
        else:
            found = fused_expert_layout(rel, m, router, moe_path, ctx.hidden)
        if found is None:
            continue
        parent = block.get_submodule(moe_path) if moe_path else block
        owner = block.get_submodule(router) if router else None
        top_k = int_attr(parent, ("top_k", "num_experts_per_tok")) or \
            int_attr(owner, ("top_k", "num_experts_per_tok"))
        experts = replace(found, top_k=top_k)
    if experts is not None:  # small scoring linears of the MoE (shared-expert gates)
        for p, m in linears.items():
            if under(p, experts.moe_path) and p not in inside and \
                    in_out(m)[1] in (1, experts.n_experts):
                routers.add(p)
    return experts, routers, inside


def _attention_units(block: nn.Module, linears: dict[str, nn.Module], routers: set[str]
                     ) -> list[str]:
    """Outermost attention-like modules holding two or more linears."""
    units = []
    for rel, m in block.named_modules():
        if not rel or is_linear(m):
            continue
        if ATTN_RE.search(leaf(rel)) or ATTN_RE.search(type(m).__name__):
            if sum(1 for p in linears if under(p, rel) and p not in routers) >= 2:
                units.append(rel)
    return [u for u in units if not any(u.startswith(v + ".") for v in units if v != u)]


def _components(attn: list[AttnLayout], ffns: list[FFNLayout], experts: ExpertsLayout | None,
                expert_linears: set[str], leftover: set[str], routers: set[str],
                linears: dict[str, nn.Module]) -> dict[str, str]:
    """Component name -> path for every linear with a role (``.N`` suffixes number repeats)."""
    comps: dict[str, str] = {}
    for a in attn:
        for part, path in a.parts.items():
            comps[f"{a.prefix}{part}"] = path
        for i, path in enumerate(a.unassigned):
            comps[f"{a.prefix}other.{i}" if i else f"{a.prefix}other"] = path
    for j, ffn in enumerate(ffns):
        for part, path in ffn.parts.items():
            comps[f"ffn_{part}.{j}" if j else f"ffn_{part}"] = path
    if experts is not None and experts.kind == "modules":
        for e, epath in enumerate(experts.expert_paths):
            for p in sorted(expert_linears):
                if under(p, epath):
                    part = _expert_part(experts.expert_ffn, p[len(epath) + 1:])
                    comps[f"ffn_{part}.e{e}"] = p
    for i, path in enumerate(sorted(leftover)):
        comps[f"ffn_other.{i}" if i else "ffn_other"] = path
    for i, path in enumerate(sorted(routers & set(linears))):
        comps[f"router.{i}" if i else "router"] = path
    return comps


def find_layout(block: nn.Module, ctx: BlockContext) -> BlockLayout:
    """The :class:`BlockLayout` of one block (see the module docstring)."""
    linears = {rel: m for rel, m in block.named_modules() if rel and is_linear(m)}
    experts, routers, expert_linears = _experts(block, linears, ctx)
    attn = [_attention(block, unit, [p for p in linears if under(p, unit)], ctx)
            for unit in _attention_units(block, linears, routers)]
    taken = {p for a in attn for p in linears if under(p, a.path)}
    rest = [p for p in linears if p not in taken | routers | expert_linears]
    ffns, leftover = find_ffns(block, rest, ctx, ctx.rec)
    if experts is not None and experts.kind == "modules":
        first = experts.expert_paths[0]
        sub = find_ffns(block.get_submodule(first),
                        [p[len(first) + 1:] for p in expert_linears if under(p, first)],
                        replace(ctx, prefix=f"{ctx.prefix}.{first}"), None)[0]
        if sub:
            experts = replace(experts, expert_ffn=sub[0], intermediate=sub[0].intermediate)
    qk = {p for a in attn for p in a.qk_norms.values()}
    norms = tuple(rel for rel, m in block.named_modules()
                  if rel and not list(m.children()) and NORM_RE.search(type(m).__name__ + rel)
                  and rel not in qk and width(m) in (ctx.hidden, None))
    return BlockLayout(
        linears=_components(attn, ffns, experts, expert_linears, leftover, routers, linears),
        attn=tuple(attn), ffn=ffns[0] if ffns else None, extra_ffns=tuple(ffns[1:]),
        experts=experts, norms=norms, other=tuple(sorted(leftover)),
        parallel=_parallel(attn, ffns[0] if ffns else None, ctx))


def _parallel(attn: list[AttnLayout], ffn: FFNLayout | None, ctx: BlockContext) -> bool | None:
    """Whether attention and FFN read the same input (a parallel block)."""
    if ctx.trace is None or not attn or ffn is None:
        return None
    recs = [ctx.rec(p) for p in attn[0].parts.values() if ctx.rec(p)]
    a_first = min(recs, key=lambda r: r.order, default=None)
    f_first = ctx.rec(ffn.parts.get("gate_up") or ffn.parts.get("gate") or ffn.parts["in"])
    if a_first is None or f_first is None:
        return None
    return same_rows(a_first.inp, f_first.inp)


def _expert_part(ffn: FFNLayout | None, rel: str) -> str:
    if ffn is not None:
        for part, path in ffn.parts.items():
            if path == rel:
                return part
    return "other"


def _attn_parts(paths: list[str], rec) -> tuple[dict[str, str], tuple[str, ...]]:
    """q/k/v/o (or qkv/kv) from names; the output projection and unnamed q, k, v from the
    call order."""
    parts: dict[str, str] = {}
    for p in paths:
        part = attn_part_by_name(p)
        if part and part not in parts:
            parts[part] = p
    order = sorted(paths, key=lambda p: rec(p).order if rec(p) else 0)
    if "o" not in parts and rec(order[-1]) is not None:
        parts["o"] = order[-1]
    if "qkv" not in parts and not {"q", "k", "v"} <= set(parts):
        left = [p for p in order if p not in parts.values()]
        if len(left) == 3 and not {"q", "k", "v"} & set(parts):
            parts.update(zip(("q", "k", "v"), left, strict=True))
    return parts, tuple(p for p in paths if p not in parts.values())


def _attn_kind(block: nn.Module, unit: str, parts: dict[str, str], ctx: BlockContext) -> str:
    """"cross" when the key/value projections read the encoder's sequence, else "self"."""
    if ctx.role != "decoder" or not ctx.seq2seq:
        return "self"
    seen = [ctx.rec(parts[x]) for x in ("k", "v", "kv") if x in parts and ctx.rec(parts[x])]
    seen = [r for r in seen if r.inp is not None]
    if seen:
        lengths = (ctx.trace.enc_len, ctx.trace.dec_len)
        return "cross" if any(r.inp.shape[-2] == lengths[0] != lengths[1] for r in seen) \
            else "self"
    named = CROSS_RE.search(unit) or CROSS_RE.search(type(block.get_submodule(unit)).__name__)
    return "cross" if named else "self"


def _qk_norms(unit_module: nn.Module, unit: str, heads: int, kv_heads: int, hd: int
              ) -> dict[str, str]:
    """Norms inside the attention module as wide as the whole q or k projection."""
    found = {}
    for rel, m in unit_module.named_modules():
        w = getattr(m, "weight", None)
        if not (rel and NORM_RE.search(type(m).__name__ + rel) and isinstance(w, torch.Tensor)
                and w.dim() == 1):
            continue
        low = leaf(rel)
        if w.numel() == heads * hd and ("q" in tokens(rel) or "query" in low):
            found["q"] = f"{unit}.{rel}"
        elif w.numel() == kv_heads * hd and ("k" in tokens(rel) or "key" in low):
            found["k"] = f"{unit}.{rel}"
    return found


def _attention(block: nn.Module, unit: str, paths: list[str], ctx: BlockContext) -> AttnLayout:
    parts, unassigned = _attn_parts(paths, ctx.rec)
    # the deepest attention-like module holding head facts
    head_module = unit
    for rel, m in block.get_submodule(unit).named_modules():
        full = f"{unit}.{rel}" if rel else unit
        if int_attr(m, HEAD_DIM_ATTRS + HEADS_ATTRS) and any(under(p, full)
                                                             for p in parts.values()):
            head_module = full
    geo = _heads({k: block.get_submodule(v) for k, v in parts.items() if k in ("q", "k", "qkv")},
                 block.get_submodule(head_module), ctx.hints)
    heads, kv_heads, hd = geo if geo else (0, 0, 0)
    qk = _qk_norms(block.get_submodule(unit), unit, heads, kv_heads, hd) if geo else {}
    return AttnLayout(kind=_attn_kind(block, unit, parts, ctx), path=unit,
                      head_module=head_module, parts=parts, heads=heads, kv_heads=kv_heads,
                      head_dim=hd, qk_norms=qk, unassigned=unassigned)


def find_hints(config: Any, role: str, hidden: int) -> HeadHints:
    h, kv, hd = read_heads(config, role)
    return HeadHints(h, kv, hd, hidden)
