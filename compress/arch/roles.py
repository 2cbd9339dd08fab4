"""Roles of the linears inside one block: attention (q/k/v/o, fused qkv), FFN (in / gate /
out, fused gate-up), native experts and their router.

Names and shapes decide first; the traced forward (:mod:`compress.arch.probe`) settles
what they cannot: which input projection feeds the activation (the gate), which
attention reads the encoder (cross-attention), the activation itself, and whether the
FFN module can be swapped whole (its output is the FFN's output).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from compress.arch.probe import Trace
from compress.arch.spec import AttnLayout, BlockLayout, ExpertsLayout, FFNLayout

ATTN_RE = re.compile(r"attn|attention", re.I)
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


def is_linear(m: nn.Module) -> bool:
    """``nn.Linear`` (and subclasses: bitsandbytes, quanto) or GPT-2's ``Conv1D``."""
    return isinstance(m, (nn.Linear, Conv1D))


def in_out(m: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear-like module, whatever its storage."""
    w = m.weight
    if isinstance(m, Conv1D):
        return int(w.shape[0]), int(w.shape[1])
    if hasattr(m, "in_features") and hasattr(m, "out_features"):
        return int(m.in_features), int(m.out_features)
    return int(w.shape[1]), int(w.shape[0])


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1].lower()


def _tokens(path: str) -> list[str]:
    return [t for t in re.split(r"[_.\d]+", _leaf(path)) if t]


def attn_part_by_name(path: str) -> str | None:
    """q / k / v / o / qkv / kv from a linear's own name, or None."""
    leaf = _leaf(path)
    if any(s in leaf for s in ("qkv", "query_key_value", "c_attn", "w_pack", "in_proj")):
        return "qkv"
    toks = _tokens(path)
    if "kv" in toks or "key_value" in leaf:
        return "kv"
    table = {
        "q": ("q", "query", "wq", "queries"), "k": ("k", "key", "wk", "keys"),
        "v": ("v", "value", "wv", "values"),
        "o": ("o", "out", "output", "dense", "wo", "c_proj", "proj", "dense_output"),
    }
    hits = [part for part, names in table.items() if any(t in names for t in toks)]
    if len(hits) == 1:
        return hits[0]
    if "out" in toks or "output" in toks:
        return "o"
    return None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is None or b is None or a.shape != b.shape:
        return False
    a, b = a.float(), b.float()
    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * (1 + float(b.abs().max()))))


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _same_rows(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and _close(_flat(a), _flat(b))


# --- heads ---------------------------------------------------------------------------------


def _int_attr(obj: object, names: tuple[str, ...]) -> int | None:
    for n in names:
        v = getattr(obj, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


@dataclass
class HeadHints:
    heads: int | None
    kv_heads: int | None
    head_dim: int | None
    hidden: int


def _heads(parts: dict[str, nn.Module], head_mod: nn.Module, hints: HeadHints
           ) -> tuple[int, int, int] | None:
    hd = _int_attr(head_mod, HEAD_DIM_ATTRS) or hints.head_dim
    h = _int_attr(head_mod, HEADS_ATTRS) or hints.heads
    kv = _int_attr(head_mod, KV_HEADS_ATTRS)
    if kv is None and getattr(head_mod, "multi_query", False):
        kv = 1
    groups = _int_attr(head_mod, ("num_key_value_groups",))
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


# --- the activation between an FFN's input projections and its output projection --------


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
                if act_in is not None and not _same_rows(act_in, y):
                    continue
                a = fn(y)
                if _same_rows(a, x_out):
                    return {"in": path}, None, _Act(rel, None, fn)
                for other, y2 in ins.items():
                    if other != path and y2.shape == y.shape and _same_rows(a * y2, x_out):
                        return {"gate": path, "in": other}, None, _Act(rel, None, fn)
        elif w == 2 * ff:
            for order in ("gate_first", "up_first", "interleaved"):
                g, u = _split(y, order)
                for rel, fn, act_in in candidates:
                    if act_in is not None and not _same_rows(act_in, g):
                        continue
                    if _same_rows(fn(g) * u, x_out):
                        return {"gate_up": path}, order, _Act(rel, None, fn)
    return None


# --- the block ------------------------------------------------------------------------------


def _lca(paths: list[str]) -> str:
    parts = [p.split(".")[:-1] for p in paths]
    common: list[str] = []
    for toks in zip(*parts, strict=False):
        if all(t == toks[0] for t in toks):
            common.append(toks[0])
        else:
            break
    return ".".join(common)


def _under(path: str, root: str) -> bool:
    return root == "" or path == root or path.startswith(root + ".")


def _expert_containers(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules holding several experts: a 3-D parameter, or a list/dict of identical FFNs."""
    found = []
    for rel, m in block.named_modules():
        if not rel:
            continue
        own = [p for p in m.parameters(recurse=False) if p.dim() == 3]
        if own:
            found.append((rel, m))
        elif isinstance(m, (nn.ModuleList, nn.ModuleDict)) and len(m) > 1:
            kids = list(m.values() if isinstance(m, nn.ModuleDict) else m)
            if len({type(k) for k in kids}) == 1 and all(
                sum(1 for x in k.modules() if is_linear(x)) >= 2 for k in kids
            ) and not any(ATTN_RE.search(type(k).__name__) for k in kids):
                found.append((rel, m))
    # outermost only
    return [(r, m) for r, m in found if not any(r.startswith(o + ".") for o, _ in found if o != r)]


@dataclass
class BlockContext:
    """What the layout finder needs besides the block."""

    prefix: str  # full name of the block
    role: str
    hidden: int
    hints: HeadHints
    trace: Trace | None
    seq2seq: bool


def _fused_expert_layout(rel: str, m: nn.Module, router: str | None, moe_path: str,
                         hidden: int) -> ExpertsLayout | None:
    params = {n: p for n, p in m.named_parameters(recurse=False) if p.dim() == 3}
    if not params:
        return None
    n_exp = next(iter(params.values())).shape[0]
    transposed = bool(getattr(m, "is_transposed", False))
    declared = getattr(type(m), "EXPERT_PARAMS", None)
    names: dict[str, str] = {}
    if isinstance(declared, dict):
        names = {part: n for part, n in declared.items() if n in params}
    else:
        for n in params:
            low = n.lower()
            if "down" in low or low in ("w2", "wo"):
                names["down"] = n
            elif "gate_up" in low or ("gate" in low and "up" in low):
                names["gate_up"] = n
            elif "up" in low or low in ("w1", "wi", "w13"):
                names["up"] = n
        if "down" not in names:
            # the projection whose output width is the hidden size
            for n, p in params.items():
                out = p.shape[2] if transposed else p.shape[1]
                if out == hidden and n not in names.values():
                    names["down"] = n
        rest = [n for n in params if n not in names.values()]
        if "gate_up" not in names and "up" not in names and len(rest) == 1:
            names["up"] = rest[0]
    if "down" not in names or not {"gate_up", "up"} & set(names):
        return None
    down = params[names["down"]]
    ff = int(down.shape[1] if transposed else down.shape[2])
    gated = "gate" in names or bool(getattr(m, "has_gate", "gate_up" in names))
    if gated and "up" in names and "gate_up" not in names and "gate" not in names:
        names["gate_up"] = names.pop("up")
    order = None
    if "gate_up" in names:
        order = "gate_first" if getattr(m, "is_concatenated", True) else "interleaved"
    return ExpertsLayout(kind="fused", path=rel, n_experts=int(n_exp), intermediate=ff,
                         router=router, params=names, transposed=transposed, gated=gated,
                         gate_up_order=order, moe_path=moe_path)


def find_layout(block: nn.Module, ctx: BlockContext) -> BlockLayout:
    """The :class:`BlockLayout` of one block (see the module docstring)."""
    trace = ctx.trace
    linears = {rel: m for rel, m in block.named_modules() if rel and is_linear(m)}
    rec = (lambda rel: trace.records.get(f"{ctx.prefix}.{rel}")) if trace else (lambda rel: None)

    # -- native experts and routers
    experts: ExpertsLayout | None = None
    routers: set[str] = set()
    expert_linears: set[str] = set()
    for rel, m in _expert_containers(block):
        moe_path = rel.rpartition(".")[0]
        parent = block.get_submodule(moe_path) if moe_path else block
        n_exp = len(m) if isinstance(m, (nn.ModuleList, nn.ModuleDict)) else \
            next(p for p in m.parameters(recurse=False) if p.dim() == 3).shape[0]
        router = None
        for prel, pm in parent.named_modules():
            full = f"{moe_path}.{prel}".strip(".") if prel else moe_path
            if not prel or _under(full, rel):
                continue
            w = getattr(pm, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() == 2 and n_exp in w.shape and \
                    ctx.hidden in w.shape and not list(pm.children()):
                router = full
                routers.add(full)
                break
        if isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            kids = list(m.named_children())
            paths = tuple(f"{rel}.{k}" for k, _ in kids)
            expert_linears.update(p for p in linears if any(_under(p, e) for e in paths))
            experts = ExpertsLayout(kind="modules", path=rel, n_experts=len(kids), intermediate=0,
                                    router=router, expert_paths=paths, moe_path=moe_path)
        else:
            experts = _fused_expert_layout(rel, m, router, moe_path, ctx.hidden) or experts
        if experts is not None:
            experts = ExpertsLayout(**{**experts.__dict__,
                                       "top_k": _int_attr(parent, ("top_k", "num_experts_per_tok"))
                                       or _int_attr(getattr(parent, router.rpartition(".")[2], None)
                                                    if router else None,
                                                    ("top_k", "num_experts_per_tok"))})
    # small linears of a MoE module that score tokens (shared-expert gates) are routers too
    if experts is not None:
        for p, m in linears.items():
            if _under(p, experts.moe_path) and p not in expert_linears and \
                    in_out(m)[1] in (1, experts.n_experts):
                routers.add(p)

    # -- attention modules
    units = []
    for rel, m in block.named_modules():
        if not rel or is_linear(m):
            continue
        if ATTN_RE.search(_leaf(rel)) or ATTN_RE.search(type(m).__name__):
            inside = [p for p in linears if _under(p, rel) and p not in routers]
            if len(inside) >= 2:
                units.append(rel)
    units = [u for u in units if not any(u.startswith(v + ".") for v in units if v != u)]
    attn_layouts: list[AttnLayout] = []
    taken: set[str] = set()
    for unit in units:
        layout = _attention(block, unit, [p for p in linears if _under(p, unit)], ctx, rec)
        attn_layouts.append(layout)
        taken.update(p for p in linears if _under(p, unit))

    # -- dense FFNs among the rest
    rest = [p for p in linears if p not in taken and p not in routers and p not in expert_linears]
    ffns, leftover = _ffns(block, rest, ctx, rec)
    if experts is not None and experts.kind == "modules":
        sub = _ffns(block.get_submodule(experts.expert_paths[0]),
                    [p[len(experts.expert_paths[0]) + 1:] for p in expert_linears
                     if _under(p, experts.expert_paths[0])],
                    BlockContext(f"{ctx.prefix}.{experts.expert_paths[0]}", ctx.role, ctx.hidden,
                                 ctx.hints, trace, ctx.seq2seq), None)[0]
        if sub:
            experts = ExpertsLayout(**{**experts.__dict__, "expert_ffn": sub[0],
                                       "intermediate": sub[0].intermediate})

    # -- component names for the linears with a role of their own
    comps: dict[str, str] = {}
    for a in attn_layouts:
        for part, path in a.parts.items():
            comps[f"{a.prefix}{part}"] = path
        for i, path in enumerate(a.unassigned):
            comps[f"{a.prefix}other.{i}" if i else f"{a.prefix}other"] = path
    main_ffn = ffns[0] if ffns else None
    if main_ffn is not None:
        for part, path in main_ffn.parts.items():
            comps[f"ffn_{part}"] = path
    for j, extra in enumerate(ffns[1:], start=1):
        for part, path in extra.parts.items():
            comps[f"ffn_{part}.{j}"] = path
    if experts is not None and experts.kind == "modules":
        for e, epath in enumerate(experts.expert_paths):
            for p in sorted(expert_linears):
                if _under(p, epath):
                    part = _expert_part(experts.expert_ffn, p[len(epath) + 1:])
                    comps[f"ffn_{part}.e{e}"] = p
    for i, path in enumerate(sorted(leftover)):
        comps[f"ffn_other.{i}" if i else "ffn_other"] = path
    for i, path in enumerate(sorted(routers & set(linears))):
        comps[f"router.{i}" if i else "router"] = path

    qk = {p for a in attn_layouts for p in a.qk_norms.values()}
    norms = tuple(rel for rel, m in block.named_modules()
                  if rel and not list(m.children()) and NORM_RE.search(type(m).__name__ + rel)
                  and rel not in qk and _width(m) in (ctx.hidden, None))
    parallel = None
    if trace is not None and attn_layouts and main_ffn is not None:
        a_first = min((rec(p) for p in attn_layouts[0].parts.values() if rec(p)),
                      key=lambda r: r.order, default=None)
        f_first = rec(main_ffn.parts.get("gate_up") or main_ffn.parts.get("gate")
                      or main_ffn.parts["in"])
        if a_first is not None and f_first is not None:
            parallel = _same_rows(a_first.inp, f_first.inp)
    return BlockLayout(linears=comps, attn=tuple(attn_layouts), ffn=main_ffn,
                       extra_ffns=tuple(ffns[1:]), experts=experts, norms=norms,
                       other=tuple(sorted(leftover)), parallel=parallel)


def _width(m: nn.Module) -> int | None:
    w = getattr(m, "weight", None)
    return int(w.numel()) if isinstance(w, torch.Tensor) and w.dim() == 1 else None


def _expert_part(ffn: FFNLayout | None, rel: str) -> str:
    if ffn is not None:
        for part, path in ffn.parts.items():
            if path == rel:
                return part
    return "other"


def _attention(block: nn.Module, unit: str, paths: list[str], ctx: BlockContext, rec
               ) -> AttnLayout:
    mods = {p: block.get_submodule(p) for p in paths}
    named = {p: attn_part_by_name(p) for p in paths}
    parts: dict[str, str] = {}
    for p, part in named.items():
        if part and part not in parts:
            parts[part] = p
    order = sorted(paths, key=lambda p: rec(p).order if rec(p) else 0)
    if "o" not in parts and rec(order[-1]) is not None:
        parts["o"] = order[-1]
    if "qkv" not in parts and not {"q", "k", "v"} <= set(parts):
        # unnamed projections: q, k, v in call order
        left = [p for p in order if p not in parts.values()]
        if len(left) == 3 and not {"q", "k", "v"} & set(parts):
            parts.update(zip(("q", "k", "v"), left, strict=True))
    unassigned = tuple(p for p in paths if p not in parts.values())
    # cross-attention: its key/value projections read the encoder's sequence
    kind = "self"
    if ctx.role == "decoder" and ctx.seq2seq:
        kv = [parts.get(x) for x in ("k", "v", "kv") if parts.get(x)]
        seen = [rec(p) for p in kv if rec(p) is not None and rec(p).inp is not None]
        if seen:
            kind = "cross" if any(r.inp.shape[-2] == ctx.trace.enc_len != ctx.trace.dec_len
                                  for r in seen) else "self"
        elif CROSS_RE.search(unit) or CROSS_RE.search(type(block.get_submodule(unit)).__name__):
            kind = "cross"
    # the deepest attention-like module holding head facts
    head_module = unit
    for rel, m in block.get_submodule(unit).named_modules():
        full = f"{unit}.{rel}" if rel else unit
        if _int_attr(m, HEAD_DIM_ATTRS + HEADS_ATTRS) and any(_under(p, full) for p in
                                                                parts.values()):
            head_module = full
    geo = _heads({k: mods[v] for k, v in parts.items() if k in ("q", "k", "qkv")},
                 block.get_submodule(head_module), ctx.hints)
    heads, kv_heads, hd = geo if geo else (0, 0, 0)
    qk_norms = {}
    if geo:
        for rel, m in block.get_submodule(unit).named_modules():
            w = getattr(m, "weight", None)
            if rel and NORM_RE.search(type(m).__name__ + rel) and isinstance(w, torch.Tensor) \
                    and w.dim() == 1:
                low = _leaf(rel)
                if w.numel() == heads * hd and ("q" in _tokens(rel) or "query" in low):
                    qk_norms["q"] = f"{unit}.{rel}"
                elif w.numel() == kv_heads * hd and ("k" in _tokens(rel) or "key" in low):
                    qk_norms["k"] = f"{unit}.{rel}"
    return AttnLayout(kind=kind, path=unit, head_module=head_module, parts=parts, heads=heads,
                      kv_heads=kv_heads, head_dim=hd, qk_norms=qk_norms, unassigned=unassigned)


def _ffns(block: nn.Module, paths: list[str], ctx: BlockContext, rec
          ) -> tuple[list[FFNLayout], set[str]]:
    """Dense FFNs among ``paths``: each an output projection and the inputs that feed it."""
    mods = {p: block.get_submodule(p) for p in paths}
    left = set(paths)
    found: list[FFNLayout] = []
    acts = _act_modules(block, ctx.prefix, ctx.trace) if ctx.trace else {}
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
        lca = _lca(list(parts.values()))
        path, act_outside = _ffn_path(block, lca, parts, ctx, rec)
        act_path = act.path
        if act_path is None:  # functional: name an activation module attribute if one exists
            act_path = _act_attr(block, lca)
        found.append(FFNLayout(parts=parts, intermediate=ff, path=path, gate_up_order=order,
                               act_path=act_path, act_name=_act_name(
                                   block.get_submodule(act.path) if act.path else None, act.fn),
                               act_outside=act_outside))
        left -= set(parts.values())
    return found, left


def _act_attr(block: nn.Module, lca: str) -> str | None:
    holder = block.get_submodule(lca) if lca else block
    for name in ("act", "act_fn", "activation_fn", "activation", "intermediate_act_fn"):
        m = getattr(holder, name, None)
        if isinstance(m, nn.Module):
            return f"{lca}.{name}" if lca else name
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
                                      _tokens(p) + [_leaf(p)])]
        if len(gate) == 1:
            other = next(p for p in ins if p != gate[0])
            return {"gate": gate[0], "in": other}, None, _Act(None, None, None)
    return None


def _ffn_path(block: nn.Module, lca: str, parts: dict[str, str], ctx: BlockContext, rec
              ) -> tuple[str, bool]:
    """The FFN module if it can be swapped whole, and whether the activation is applied
    by a module around the input projection (split FFN: BERT, OPT)."""
    if ctx.trace is None:
        return lca, False
    r = ctx.trace.records.get(f"{ctx.prefix}.{lca}") if lca else None
    out_rec = rec(parts["out"])
    first_in = rec(parts.get("gate_up") or parts.get("gate") or parts["in"])
    whole = (r is not None and out_rec is not None and first_in is not None and lca
             and _same_rows(r.out, out_rec.out) and _same_rows(r.inp, first_in.inp))
    return (lca if whole else ""), not whole


def find_hints(config: object, role: str, hidden: int) -> HeadHints:
    from compress.arch.confignames import read_heads

    h, kv, hd = read_heads(config, role)
    return HeadHints(h, kv, hd, hidden)
