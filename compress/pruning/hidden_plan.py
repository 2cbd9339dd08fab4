"""Where the hidden size lives in a model: the plan :mod:`compress.pruning.hidden` removes
channels by (see that module's docstring for the method and its papers).

Two weightless (meta-device) copies of the model are built from its config, one with
the hidden size smaller; every axis whose length changes by exactly that amount is a
hidden axis. A config that derives the head size as hidden / heads gets a coupled plan
(one head fewer in the smaller copy, so the head size stays): its channels leave with
whole heads.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from compress.arch import arch_for, iter_blocks, stack_config
from compress.arch.confignames import read_hidden
from compress.arch.weights import in_axis, is_transposed
from compress.errors import UserError

#: module attributes that hold the hidden size (set to the new width when they equal the old).
MODULE_HIDDEN_ATTRS = ("hidden_size", "d_model", "model_dim", "n_embd", "embed_dim", "dim",
                       "hidden_dim", "input_size", "output_size", "embedding_size",
                       "embedding_dim")
#: components whose input is the encoder's output (their padding mask is the encoder's).
_ENCODER_INPUT = ("cross_k", "cross_v", "cross_kv")
#: attention projections whose output side, and which whose input side, holds the heads.
_INNER_OUT = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_kv", "cross_q", "cross_k",
              "cross_v", "cross_kv", "cross_qkv")
_INNER_IN = ("attn_o", "cross_o")


@dataclass
class HiddenPlan:
    """Where the hidden size lives in one model."""

    hidden: int
    #: full parameter / buffer name (every alias of a tied tensor) -> its hidden axes.
    axes: dict[str, tuple[int, ...]]
    #: (config object, attribute) pairs holding the hidden size.
    config_attrs: list[tuple[Any, str]] = field(default_factory=list)
    #: linears reading the residual stream: full name -> (module, padding-mask role).
    readers: dict[str, tuple[nn.Module, str]] = field(default_factory=dict)
    #: parameters per channel over the hidden-axis tensors (each tied tensor once).
    per_channel: int = 0
    #: kept widths are multiples of this (the heads' least common multiple: configs such
    #: as transformers' llama validate hidden % heads == 0 even with an explicit head size).
    multiple: int = 1
    #: (config, attribute, value) written so the config states the head size itself.
    explicit: list[tuple[Any, str, int]] = field(default_factory=list)
    #: head size when the config derives it as hidden / heads (BERT, GPT-2, OPT, BART):
    #: channels then leave with whole heads, ``head_size`` channels per head removed from
    #: every attention module, and the config's head counts follow the new width.
    head_size: int = 0
    #: (config, attribute) holding head counts (and KV head counts equal to them) that
    #: follow the width.
    head_attrs: list[tuple[Any, str]] = field(default_factory=list)

    @property
    def coupled(self) -> bool:
        return self.head_size > 0

    def kept_width(self, target: float) -> int:
        """The width nearest ``target`` that is a positive multiple of :attr:`multiple`."""
        return max(self.multiple, int(round(target / self.multiple)) * self.multiple)


def _configs(model: nn.Module) -> list[tuple[Any, str]]:
    """Every (config, attribute) holding the hidden size: per stack, and the root's."""
    spec = arch_for(model)
    hidden = spec.hidden or read_hidden(model.config)
    out: list[tuple[Any, str]] = []
    seen: set[tuple[int, str]] = set()

    def add(cfg: Any, name: str) -> None:
        if getattr(cfg, name, None) == hidden and (id(cfg), name) not in seen:
            seen.add((id(cfg), name))
            out.append((cfg, name))

    for stack in spec.stacks:
        for cfg in [stack_config(model, spec, stack)] + [
                model.get_submodule(p).config for p in stack.private_configs]:
            for name in stack.names.hidden:
                add(cfg, name)
    for name in ("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "model_dim"):
        add(model.config, name)
    return out


def _config_path(model: nn.Module, cfg: Any) -> str | None:
    """Dotted path of a sub-config inside ``model.config`` ("" for the root)."""
    if cfg is model.config:
        return ""
    for name, value in vars(model.config).items():
        if value is cfg:
            return name
    return None


def _shapes(model: nn.Module, config: Any) -> dict[str, tuple[int, ...]]:
    from compress.models import build_skeleton

    with torch.device("meta"):
        fresh = build_skeleton(config, type(model).__name__)
    out = {n: tuple(p.shape) for n, p in fresh.named_parameters(remove_duplicate=False)}
    out.update({n: tuple(b.shape) for n, b in fresh.named_buffers(remove_duplicate=False)})
    return out


def plan_hidden(model: nn.Module) -> HiddenPlan:
    """Find the hidden axes of ``model`` by shrinking its config (see the module doc).

    A config that derives the head size from the hidden size gets a coupled plan: the
    shrunk config also has one head fewer, so the head size stays, and the attention
    projections' inner sides (which then move by one head) are left to head removal.
    """
    spec = arch_for(model)
    hidden = spec.hidden or read_hidden(model.config)
    family = spec.family
    if not hidden:
        raise UserError(f"{family}: no hidden size found in the config; hidden_ratio needs one")
    attrs = _configs(model)
    paths = [(_config_path(model, cfg), name) for cfg, name in attrs]
    paths = [(p, name) for p, name in paths if p is not None]  # private copies: not rebuilt
    if not paths:
        raise UserError(f"{family}: the config's hidden size could not be located; use "
                        "hidden_ratio=0")
    try:
        plan = _plan(model, spec, hidden, attrs, paths, None)
    except UserError:
        geometry = _derived_heads(model, spec, hidden)
        if geometry is None:
            raise
        plan = _plan(model, spec, hidden, attrs, paths, geometry)  # its refusal is the last word
    plan.readers = _readers(model, plan.axes)
    own = dict(model.named_parameters(remove_duplicate=False))
    seen: set[int] = set()
    for name, t in own.items():
        if name in plan.axes and id(t) not in seen:
            seen.add(id(t))
            plan.per_channel += t.numel() // hidden
    return plan


def _plan(model: nn.Module, spec: Any, hidden: int, attrs: list[tuple[Any, str]],
          paths: list[tuple[str, str]], geometry: tuple[int, list] | None,
          widened: bool = False) -> HiddenPlan:
    """The plan from one shrunk config: ``hidden - lcm(heads)`` with the heads kept
    (``geometry`` None), or ``hidden - head_size`` with one head fewer (``geometry`` =
    (head size, head-count attributes))."""
    family = spec.family
    if geometry is None:
        heads = [lay.heads for lay in spec.layouts.values() for lay in lay.attn if lay.heads]
        delta = math.lcm(*heads) if heads else 8
        if delta >= hidden:
            delta = 1
        # a config that derives the head size from hidden / heads but reads an explicit
        # head_dim when one is there (qwen2, olmo2, phi, ...) keeps its heads with it
        explicit = _explicit_head_dims(model, spec)
        head_attrs: list[tuple[Any, str]] = []
    else:
        delta, head_attrs = geometry
        explicit = [e for e in _explicit_head_dims(model, spec) if e[1] != "head_dim"]

    def sub(cfg: Any, path: str | None) -> Any:
        return cfg if not path else getattr(cfg, path)

    try:
        base = copy.deepcopy(model.config)
        for cfg, name, value in explicit:
            setattr(sub(base, _config_path(model, cfg)), name, value)
        before = _shapes(model, base)
        small = copy.deepcopy(base)
        for path, name in paths:
            setattr(sub(small, path), name, hidden - delta)
        for cfg, name in head_attrs:  # absolute: aliases of one attribute agree
            setattr(sub(small, _config_path(model, cfg)), name, hidden // delta - 1)
        after = _shapes(model, small)
    except UserError:  # already one line saying what to do
        raise
    except Exception as exc:  # noqa: BLE001 - a config that refuses another width says so
        raise UserError(f"{family}: a config with a smaller hidden size does not build "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                        "use hidden_ratio=0") from None
    if set(after) != set(before):
        # another attribute equal to the hidden size may have to follow it (OPT's
        # word_embed_proj_dim: a projection appears when the two differ); the first one
        # that alone makes the tensors agree is taken
        for cfg, name in [] if widened else _co_hidden(model, attrs):
            try:
                return _plan(model, spec, hidden, attrs + [(cfg, name)],
                             paths + [(_config_path(model, cfg), name)], geometry, True)
            except UserError:
                continue
        odd = sorted(set(after) ^ set(before))[0]
        raise UserError(f"{family}: a config with a smaller hidden size builds a different "
                        f"set of tensors ({odd}); use hidden_ratio=0")
    inner = _inner_axes(model) if geometry is not None else {}
    if geometry is not None:
        _check_unknown_in_attention(model, family, before, after, inner)
    axes = _hidden_axes(model, family, before, after, inner, hidden, delta)
    if geometry is None:
        _check_attention_inner(model, axes, family)
    return HiddenPlan(hidden, axes, attrs, multiple=delta, explicit=explicit,
                      head_size=delta if geometry is not None else 0, head_attrs=head_attrs)


def _hidden_axes(model: nn.Module, family: str, before: dict, after: dict,
                 inner: dict[str, set[int]], hidden: int, delta: int) -> dict[str, tuple[int, ...]]:
    """Axes that shrink by exactly ``delta`` (the heads' side ``inner`` aside); any other
    change is a size the config derives from the hidden size: refused."""
    own = dict(model.named_parameters(remove_duplicate=False))
    own.update(dict(model.named_buffers(remove_duplicate=False)))
    axes: dict[str, tuple[int, ...]] = {}
    for name, shape in before.items():
        if name not in own:
            continue
        if tuple(own[name].shape) != shape:
            raise UserError(f"{family}: {name} is not what the config builds ({tuple(own[name].shape)} "
                            f"vs {shape}); hidden_ratio needs a model its config describes")
        new = after.get(name, shape)
        found = []
        for i, (a, b) in enumerate(zip(shape, new, strict=True)):
            if a == b or i in inner.get(name, ()):
                continue
            if a == hidden and b == hidden - delta:
                found.append(i)
            else:
                raise UserError(
                    f"{family}: {name} has a size the config derives from the hidden size "
                    f"({a} -> {b} for hidden {hidden} -> {hidden - delta}), so removing "
                    "hidden channels would change it too; use ffn_ratio / heads_ratio instead")
        if found:
            axes[name] = tuple(found)
    return axes


def _co_hidden(model: nn.Module, attrs: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
    """Other integer attributes of the configs in ``attrs`` that equal the hidden size."""
    hidden = getattr(attrs[0][0], attrs[0][1])
    known = {(id(c), n) for c, n in attrs}
    out = []
    for cfg in {id(c): c for c, _ in attrs}.values():
        if _config_path(model, cfg) is None:
            continue
        for name, value in vars(cfg).items():
            if (type(value) is int and value == hidden and not name.startswith("_")
                    and (id(cfg), name) not in known):
                out.append((cfg, name))
    return out


def _derived_heads(model: nn.Module, spec: Any, hidden: int) -> tuple[int, list] | None:
    """(head size, head-count attributes) when every attention module has ``hidden / head
    size`` heads of one size, all with their own KV heads or all sharing one, and the
    configs name their head counts; else None (no coupled plan)."""
    from compress.pruning.surgery import attention_units

    units = attention_units(model)
    if not units:
        return None
    hd, n = units[0].head_dim, units[0].n_heads
    if not hd or hd * n != hidden or n < 2 or any(
            (u.head_dim, u.n_heads) != (hd, n) or u.n_kv not in (n, 1) for u in units):
        return None
    out: list[tuple[Any, str]] = []
    for stack in spec.stacks:
        cfg = stack_config(model, spec, stack)
        if _config_path(model, cfg) is None:
            return None
        found = [(cfg, a) for a in stack.names.heads + stack.names.kv_heads
                 if getattr(cfg, a, None) == n]
        if not found:
            return None
        out += [(c, a) for c, a in found if all(c is not c2 or a != a2 for c2, a2 in out)]
    return hd, out


def _inner_axes(model: nn.Module) -> dict[str, set[int]]:
    """Parameter axes on the heads' side of the attention projections (q/k/v outputs and
    their biases, the o input, per-head projections and q/k norms)."""
    out: dict[str, set[int]] = {}

    def add(name: str, axis: int) -> None:
        out.setdefault(name, set()).add(axis)

    for block in iter_blocks(model):
        for comp, module in block.linears.items():
            name = block.linear_names[comp]
            if comp in _INNER_OUT:
                add(f"{name}.weight", 1 - in_axis(module))
                add(f"{name}.bias", 0)
            elif comp in _INNER_IN:
                add(f"{name}.weight", in_axis(module))
        for lay in block.layout.attn:
            for path in list(lay.head_rows) + list(lay.qk_norms.values()):
                module = block.module.get_submodule(path)
                full = f"{block.name}.{path}"
                add(f"{full}.weight", 1 - in_axis(module) if getattr(module, "weight", None)
                    is not None and module.weight.dim() == 2 else 0)
                add(f"{full}.bias", 0)
    return out


def _check_unknown_in_attention(model: nn.Module, family: str, before: dict, after: dict,
                                inner: dict[str, set[int]]) -> None:
    """With heads leaving, a head-side axis shrinks by one head size, as a hidden axis
    does: shapes cannot tell them apart. So every matrix inside an attention module that
    changes must be one whose sides are known (the projections, q/k norms, per-head
    rows); another one (DeBERTa's relative-position projections) is refused."""
    roots = [f"{b.name}.{lay.path}." for b in iter_blocks(model) for lay in b.layout.attn]
    known = set(inner)
    for block in iter_blocks(model):
        known |= {f"{n}.{p}" for n in block.linear_names.values() for p in ("weight", "bias")}
    for name, shape in before.items():
        if name in known or len(shape) < 2 or after.get(name, shape) == shape:
            continue  # (a vector is a norm's or a bias; an unknown linear shows by its matrix)
        if any(name.startswith(r) for r in roots):
            raise UserError(f"{family}: {name} changes with the width inside the attention but "
                            "is not a projection whose sides are known (head or hidden), so "
                            "removing whole heads with the channels is not safe here; use "
                            "ffn_ratio / heads_ratio instead")


def _explicit_head_dims(model: nn.Module, spec: Any) -> list[tuple[Any, str, int]]:
    """``(config, "head_dim", size)`` for each stack whose config does not state it, and
    ``(config, attribute, width)`` where the config names an FFN width left unset (GPT-2's
    ``n_inner``: 4 x hidden when None)."""
    out = []
    for stack in spec.stacks:
        cfg = stack_config(model, spec, stack)
        widths = {lay.ffn.intermediate for name, lay in spec.layouts.items()
                  if name.startswith(stack.path + ".") and lay.ffn is not None}
        unset = [a for a in stack.names.intermediate if hasattr(cfg, a) and getattr(cfg, a) is None]
        if unset and len(widths) == 1 and _config_path(model, cfg) is not None:
            out.append((cfg, unset[0], widths.pop()))
    for stack in spec.stacks:
        if stack.names.head_dim:
            continue
        dims = {lay.head_dim for name, layout in spec.layouts.items()
                if name.startswith(stack.path + ".") for lay in layout.attn if lay.head_dim}
        cfg = stack_config(model, spec, stack)
        if len(dims) == 1 and _config_path(model, cfg) is not None and \
                all(c is not cfg or n != "head_dim" for c, n, _ in out):
            out.append((cfg, "head_dim", dims.pop()))
    return out


def _check_attention_inner(model: nn.Module, axes: dict[str, tuple[int, ...]],
                           family: str) -> None:
    """The projections' inner sides (q/k/v outputs, o input, FFN width) must not move."""
    inner = {**dict.fromkeys(_INNER_OUT, "out"), **dict.fromkeys(_INNER_IN, "in"),
             "ffn_in": "out", "ffn_gate": "out", "ffn_gate_up": "out", "ffn_out": "in"}
    for block in iter_blocks(model):
        for comp, side in inner.items():
            module = block.linears.get(comp)
            if module is None or not hasattr(module, "weight"):
                continue
            name = f"{block.linear_names[comp]}.weight"
            ax = in_axis(module) if side == "in" else 1 - in_axis(module)
            if ax in axes.get(name, ()):
                raise UserError(f"{family}: the {side}put side of {block.linear_names[comp]} "
                                "follows the hidden size in the config; hidden-dimension "
                                "pruning needs a config that states the head size and FFN "
                                "width apart from it; use ffn_ratio / heads_ratio instead")


def _readers(model: nn.Module, axes: dict[str, tuple[int, ...]]) -> dict[str, tuple[nn.Module, str]]:
    """Linears whose input is the residual stream, with the role whose mask fits them."""
    spec = arch_for(model)
    role_of: dict[str, str] = {}
    comp_of: dict[str, str] = {}
    for block in iter_blocks(model):
        for comp, name in block.linear_names.items():
            role_of[name] = block.role
            comp_of[name] = comp
    last = "encoder" if spec.kind == "encoder" else "decoder"
    out = {}
    for name, module in model.named_modules():
        w = getattr(module, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or isinstance(module, nn.Embedding):
            continue
        if not (isinstance(module, nn.Linear) or is_transposed(module)):
            continue
        if in_axis(module) not in axes.get(f"{name}.weight", ()):
            continue
        role = "encoder" if comp_of.get(name) in _ENCODER_INPUT else role_of.get(name, last)
        out[name] = (module, role)
    return out
