"""Hidden-dimension pruning: remove channels of the residual stream, physically.

Minitron's width axis (Muralidharan et al. 2024, "Compact Language Models via Pruning
and Knowledge Distillation", arXiv:2407.14679, section 2: "embedding channels"): one
set of channels leaves every tensor that reads or writes the residual stream, the
embeddings, every norm, every projection's input (q, k, v, FFN in/gate, LM head) and
output (attention o, FFN out), so all blocks keep one width.

Which tensor axes follow the hidden size is found from the model's own config, not
from a table: two weightless (meta-device) copies of the model are built, one from
its config and one with the hidden size smaller by ``delta``; every parameter and
buffer axis whose length changes by exactly ``delta`` is a hidden axis. Any other
change means the config derives a size from the hidden size that pruning cannot keep
(BERT, GPT-2, OPT, BART: head size = hidden / heads); such a model is refused in one
line rather than pruned into something a reload would not rebuild. After removal
``model.config`` states the new hidden size, so ``save_pretrained`` /
``from_pretrained`` reload the model with plain transformers.

Importance (lower goes first), one score per channel, summed over the stacks:

* ``activation`` (Minitron's): the mean absolute value of each channel at the input
  of every linear that reads the residual stream (the normalised stream in pre-norm
  blocks, what Minitron reads at the LayerNorm outputs), padding excluded, summed
  over those linears; calibration text from :mod:`compress.calibration`;
* ``magnitude``: per tensor, the mean squared weight of each channel, summed over the
  hidden-axis tensors (no calibration).

Removing channels changes what every norm divides by (the mean over fewer channels),
so :func:`rescale_norms` scales each norm by the removed channels' share of its input
energy, measured on the same calibration tokens: exact for RMS norms when the removed
channels carry nothing (a test checks the logits), an expectation otherwise. The result
is still not the dense model with some weights zeroed, as FFN neuron or head removal
is (:mod:`compress.pruning.surgery`); Minitron recovers with distillation from the
dense model (the ``recover`` recipe, which projects the student's narrower hidden
states onto the teacher's).

Configs whose head size is ``hidden / heads`` but which read an explicit ``head_dim``
when one is present (qwen2, olmo2, phi, ...) get ``head_dim`` written, so the heads
keep their size. Kept widths are multiples of the heads' least common multiple, since
configs such as transformers' llama check ``hidden % heads == 0``.
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
    #: (config, attribute, "heads" | "kv") holding head counts that follow the width.
    head_attrs: list[tuple[Any, str, str]] = field(default_factory=list)

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
    except UserError as first:
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
        head_attrs: list[tuple[Any, str, str]] = []
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
        for cfg, name, _ in head_attrs:  # absolute: aliases of one attribute agree
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
    own = dict(model.named_parameters(remove_duplicate=False))
    own.update(dict(model.named_buffers(remove_duplicate=False)))
    inner = _inner_axes(model) if geometry is not None else {}
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
    if geometry is None:
        _check_attention_inner(model, axes, family)
    return HiddenPlan(hidden, axes, attrs, multiple=delta, explicit=explicit,
                      head_size=delta if geometry is not None else 0, head_attrs=head_attrs)


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
    out: list[tuple[Any, str, str]] = []
    for stack in spec.stacks:
        cfg = stack_config(model, spec, stack)
        if _config_path(model, cfg) is None:
            return None
        found = [(cfg, a, "heads") for a in stack.names.heads if getattr(cfg, a, None) == n]
        found += [(cfg, a, "kv") for a in stack.names.kv_heads if getattr(cfg, a, None) == n]
        if not found:
            return None
        out += [f for f in found if all(f[0] is not c or f[1] != a for c, a, _ in out)]
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
    inner = {"attn_q": "out", "attn_k": "out", "attn_v": "out", "attn_qkv": "out",
             "attn_o": "in", "ffn_in": "out", "ffn_gate": "out", "ffn_gate_up": "out",
             "ffn_out": "in", "cross_q": "out", "cross_o": "in"}
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


# --- importance ---------------------------------------------------------------------------


@torch.no_grad()
def activation_importance(model: nn.Module, plan: HiddenPlan, batches: list) -> torch.Tensor:
    """Per channel: mean |x| at the input of each residual-stream reader, summed."""
    if not plan.readers:
        raise UserError("no linear reads the residual stream here; use importance=magnitude")
    means = _input_means(model, plan.readers, batches, torch.abs)
    if not means:
        raise UserError("no calibration activations reached the residual-stream readers")
    return sum(means.values())


def _input_means(model: nn.Module, modules: dict[str, tuple[nn.Module, str]], batches: list,
                 fn) -> dict[str, torch.Tensor]:
    """Per module: the mean over real tokens of ``fn(input)``, per channel."""
    from compress.sequential import collect_model_inputs

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def add(name: str, x: torch.Tensor) -> None:
        s = fn(x).sum(0)
        sums[name] = sums[name] + s if name in sums else s
        counts[name] = counts.get(name, 0) + x.shape[0]

    collect_model_inputs(model, batches, modules, add)
    return {n: sums[n].cpu() / max(counts[n], 1) for n in sums}


@torch.no_grad()
def magnitude_importance(model: nn.Module, plan: HiddenPlan) -> torch.Tensor:
    """Per channel: each hidden-axis weight's mean square over its other axes, summed."""
    score = torch.zeros(plan.hidden)
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if name not in plan.axes or id(p) in seen or p.dim() < 2:
            continue
        seen.add(id(p))
        for ax in plan.axes[name]:
            sq = p.detach().float().pow(2).movedim(ax, 0).reshape(plan.hidden, -1).mean(1)
            score += sq.cpu()
    return score


# --- norms --------------------------------------------------------------------------------


def norm_modules(model: nn.Module, plan: HiddenPlan) -> dict[str, tuple[nn.Module, str]]:
    """Modules whose own parameters are all hidden-sized vectors (RMSNorm, LayerNorm),
    with the role whose padding mask fits their input."""
    spec = arch_for(model)
    prefixes = sorted(((s.path.rsplit(".", 1)[0] if "." in s.path else "", s.role)
                       for s in spec.stacks), key=lambda p: -len(p[0]))
    last = "encoder" if spec.kind == "encoder" else "decoder"
    out = {}
    for name, module in model.named_modules():
        own = [(f"{name}.{p}" if name else p, t) for p, t in module._parameters.items()
               if t is not None]
        if own and "weight" in module._parameters and all(
                t.dim() == 1 and plan.axes.get(full) == (0,) for full, t in own):
            role = next((r for pre, r in prefixes if pre and name.startswith(pre + ".")), last)
            out[name] = (module, role)
    return out


@torch.no_grad()
def norm_input_energy(model: nn.Module, norms: dict[str, tuple[nn.Module, str]],
                      batches: list) -> dict[str, torch.Tensor]:
    """Mean squared input of each channel at each norm (padding excluded)."""
    return _input_means(model, norms, batches, torch.square)


@torch.no_grad()
def rescale_norms(norms: dict[str, tuple[nn.Module, str]], energy: dict[str, torch.Tensor],
                  keep: torch.Tensor, old: int) -> dict[str, float]:
    """After removal, scale each norm's output so a kept channel's expected output stays.

    A norm divides by the root mean square over its channels: removing channels of
    input energy ``E_gone`` (of ``E_all``) changes that divisor, in expectation, by
    ``sqrt((1 - E_gone / E_all) * old / new)``; the norm's weight (and bias) is scaled by
    that factor. Exact for an RMS norm when the removed channels carry nothing; for a
    mean-centring LayerNorm an approximation. The scaling is checked on a probe input
    (an ``x * (1 + w)`` parametrisation, Gemma's, is recognised and scaled as such); a
    norm whose output does not scale is left as it is. Returns the factors applied.
    """
    new = len(keep)
    applied: dict[str, float] = {}
    for name, (module, _) in norms.items():
        e = energy.get(name)
        if e is None or float(e.sum()) <= 0:
            continue
        k = math.sqrt(float(e[keep].sum() / e.sum()) * old / new)
        if _scale_output(module, k, new):
            applied[name] = round(k, 6)
    return applied


def _scale_output(module: nn.Module, k: float, width: int) -> bool:
    w = module.weight
    b = getattr(module, "bias", None)
    probe = torch.randn(3, width, generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    saved = (w.detach().clone(), None if b is None else b.detach().clone())
    ref = module(probe).float()
    for form in ("linear", "one-plus"):
        if form == "linear":
            w.mul_(k)
        else:
            w.copy_((saved[0].float() * k + (k - 1)).to(w.dtype))
        if isinstance(b, torch.Tensor):
            b.copy_(saved[1] * k)
        got = module(probe).float()
        if torch.allclose(got, ref * k, rtol=1e-3, atol=1e-5 * float(ref.abs().max() + 1)):
            return True
        w.copy_(saved[0])
        if isinstance(b, torch.Tensor):
            b.copy_(saved[1])
    return False


# --- removal ------------------------------------------------------------------------------


def channels_removed(plan: HiddenPlan, ratio: float) -> int:
    """Channels ``hidden_ratio`` removes: the kept width rounded to the plan's multiple."""
    kept = plan.kept_width(plan.hidden * (1 - ratio))
    if kept >= plan.hidden:
        raise UserError(f"hidden_ratio={ratio:g} removes no hidden channel of {plan.hidden} "
                        f"(kept widths are multiples of {plan.multiple}); the smallest step is "
                        f"{plan.multiple / plan.hidden:.3g}")
    return plan.hidden - kept


def keep_channels(score: torch.Tensor, remove: int) -> torch.Tensor:
    """Sorted indices of the channels kept: all but the ``remove`` lowest scores."""
    order = torch.argsort(score.float(), stable=True)
    return order[remove:].sort().values


@torch.no_grad()
def shrink_hidden(model: nn.Module, plan: HiddenPlan, keep: torch.Tensor) -> int:
    """Keep residual channels ``keep`` everywhere; returns the new hidden size."""
    new: dict[int, torch.Tensor] = {}
    keep = keep.long()
    for mod_name, module in model.named_modules():
        for store, is_param in ((module._parameters, True), (module._buffers, False)):
            for pname, t in list(store.items()):
                full = f"{mod_name}.{pname}" if mod_name else pname
                if t is None or full not in plan.axes:
                    continue
                if id(t) not in new:
                    data = t.detach()
                    for ax in plan.axes[full]:
                        data = data.index_select(ax, keep.to(data.device))
                    data = data.contiguous()
                    new[id(t)] = (nn.Parameter(data, requires_grad=t.requires_grad)
                                  if is_param else data)
                store[pname] = new[id(t)]
        _fix_sizes(module)
    width = len(keep)
    for cfg, name in plan.config_attrs:
        setattr(cfg, name, width)
    for cfg, name, value in plan.explicit:
        setattr(cfg, name, value)
    if plan.coupled:  # the heads left with the channels: the config says so itself now
        from compress.pruning.surgery import PRUNED_HEADS_ATTR

        for cfg, name, _ in plan.head_attrs:
            setattr(cfg, name, width // plan.head_size)
        if hasattr(model.config, PRUNED_HEADS_ATTR):
            delattr(model.config, PRUNED_HEADS_ATTR)
    for module in model.modules():
        for attr in MODULE_HIDDEN_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value == plan.hidden:
                try:
                    setattr(module, attr, width)
                except AttributeError:  # a read-only property
                    pass
        _rescale_derived(module, plan.hidden, width)
        _fix_sizes(module)  # an embedding's own size is its weight's, whatever the width
    _reinit_unsaved(model, plan)
    return width


def _unsaved(model: nn.Module) -> set[str]:
    """Tensors ``save_pretrained`` leaves out (non-persistent buffers, the model's
    ``_keys_to_ignore_on_save``): a reload computes them afresh."""
    import re

    out = {f"{mod_name}.{b}" if mod_name else b for mod_name, module in model.named_modules()
           for b in module._non_persistent_buffers_set}
    ignore = getattr(model, "_keys_to_ignore_on_save", None) or ()
    out |= {n for n, _ in model.named_parameters() if any(re.search(p, n) for p in ignore)}
    return out


@torch.no_grad()
def _reinit_unsaved(model: nn.Module, plan: HiddenPlan) -> None:
    """Hidden-axis tensors that a save leaves out (sinusoidal position tables of M2M100,
    XGLM, Marian) are recomputed for the new width, as a reload computes them, by the
    model's own ``_init_weights``; the module's saved tensors are kept as they are."""
    unsaved = _unsaved(model) & set(plan.axes)
    init = getattr(model, "_init_weights", None)
    for owner in sorted({n.rsplit(".", 1)[0] if "." in n else "" for n in unsaved}):
        module = model.get_submodule(owner)
        kept = {n: t.detach().clone() for n, t in list(module.named_parameters(recurse=False))
                + list(module.named_buffers(recurse=False))
                if f"{owner}.{n}" not in unsaved}
        try:
            if init is None:
                raise TypeError("no _init_weights")
            init(module)
        except Exception as exc:  # noqa: BLE001 - one line naming what could not be rebuilt
            raise UserError(f"{owner} is recomputed on reload and could not be rebuilt for "
                            f"the new width ({type(exc).__name__}); use hidden_ratio=0") from None
        for n, t in kept.items():
            getattr(module, n).copy_(t)


#: powers of the hidden size that modules keep as scalars (Gemma's and BART's embedding
#: scale sqrt(hidden), T5-style hidden ** -0.5).
_POWERS = (0.5, -0.5)


def _rescale_derived(module: nn.Module, old: int, new: int) -> None:
    """Scalars a module computed from the hidden size at construction follow the new size,
    as a reload from the new config computes them."""
    def moved(value: float) -> float | None:
        for p in _POWERS:
            if math.isclose(value, old ** p, rel_tol=1e-6):
                return float(new ** p)
        return None

    for name, buf in list(module._buffers.items()):
        if isinstance(buf, torch.Tensor) and buf.dim() == 0 and buf.is_floating_point() \
                and buf.device.type != "meta":
            value = moved(float(buf))
            if value is not None:
                module._buffers[name] = torch.tensor(value, dtype=buf.dtype, device=buf.device)
    for name, value in list(vars(module).items()):
        if isinstance(value, float) and not name.startswith("_"):
            v = moved(value)
            if v is not None:
                setattr(module, name, v)


def _fix_sizes(module: nn.Module) -> None:
    """Size attributes of torch's own modules follow their (sliced) weights."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        return
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = w.shape
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = w.shape[1]
    elif is_transposed(module):  # GPT-2's Conv1D: weight [in, out]
        module.nx, module.nf = w.shape
    elif isinstance(getattr(module, "normalized_shape", None), tuple) and w.dim() == 1:
        module.normalized_shape = (w.shape[0],)


def check_rebuilds(model: nn.Module) -> None:
    """The config must rebuild every tensor's shape, and the forward must run."""
    from compress.pruning.surgery import _probe, _shape_mismatch

    bad = _shape_mismatch(model)
    if bad is not None:
        raise UserError(f"hidden-dimension pruning left {bad} unlike what the config builds; "
                        "use hidden_ratio=0")
    try:
        out = _probe(model)
    except Exception as exc:  # noqa: BLE001 - a forward that breaks is the failure we report
        raise UserError(f"after hidden-dimension pruning the forward fails "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); use "
                        "hidden_ratio=0") from None
    if not bool(torch.isfinite(out).all()):
        raise UserError("after hidden-dimension pruning the outputs are not finite; use a "
                        "smaller hidden_ratio")
