"""Structured pruning: remove whole attention heads and FFN neurons, physically.

transformers 5 has no ``prune_heads``; this module does the surgery from the
discovered architecture (:mod:`compress.arch`), for any family discovery reads:

* FFN neuron ``j``: row ``j`` of ``ffn_in`` (and ``ffn_gate``; both halves of a fused
  gate-up projection, in its measured row order), its bias, and column ``j`` of
  ``ffn_out`` go together.
* Attention head ``h``: its ``head_dim`` rows of q, k, v (the rows a fused qkv
  projection holds for it, in the row order discovery measured by perturbation), any
  q/k norm as wide as the projection, per-head tables of the attention module (T5's
  relative position bias), and its columns of o. With grouped KV heads
  (``gqa="query"``) the same number of query heads leaves every KV group and the KV
  heads stay; ``gqa="group"`` removes whole KV groups. A stack whose first block owns
  a per-head table used by every block (T5) loses the same heads in every block.

Counts are uniform per stack, because stock configs hold one size per stack;
``model.config`` then records the new sizes in the attributes discovery found holding
them, so ``save_pretrained`` + ``from_pretrained`` reload the model. Configs that
derive the head size from the hidden size (BERT, GPT-2, BART, OPT) cannot say "fewer
heads of the same size": there the remaining head count per attention module goes
into ``config.compress_pruned_heads`` and the ``structured-heads`` format's loader
(:func:`compress.saving.load_compressed`) rebuilds the model before loading weights.

:func:`apply_selection` checks its own work: the shrunk model must compute on probe
inputs what the original computes with the removed units' outgoing weights zeroed.
A model whose forward ties something else to the head count (ALiBi slopes computed
from the config, for example) fails that check and gets a one-line error.
Importance scores and the choice of units are in :mod:`compress.pruning.importance`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compress.arch import (
    AttnLayout,
    Block,
    arch_for,
    iter_blocks,
    out_in,
    qkv_rows,
    stack_config,
)
from compress.arch.roles import HEADS_ATTRS, KV_HEADS_ATTRS
from compress.arch.weights import in_axis, is_transposed, out_axis
from compress.errors import UserError
from compress.saving import Format, register_format

log = logging.getLogger(__name__)

#: attention-module attributes holding heads x head_dim.
HEAD_WIDTH_ATTRS = ("all_head_size", "inner_dim", "split_size", "embed_dim_per_partition",
                    "embed_dim")
#: config attributes recording head counts / FFN widths that the config cannot express.
PRUNED_HEADS_ATTR = "compress_pruned_heads"
PRUNED_FFN_ATTR = "compress_pruned_ffn"
_MISSING = object()


# --- geometry --------------------------------------------------------------------------


@dataclass
class AttnUnit:
    """One attention module of a block (self or cross) with its head geometry."""

    block: Block
    layout: AttnLayout
    name: str  # full module name of the module holding the head attributes
    module: nn.Module
    head_dim: int
    n_heads: int
    n_kv: int

    @property
    def kind(self) -> str:
        return self.layout.kind

    @property
    def comps(self) -> dict[str, str]:
        return {p: self.layout.prefix + p for p in self.layout.parts}

    def linear(self, part: str) -> nn.Module:
        return self.block.linears[self.layout.prefix + part]

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv

    def per_head_tables(self) -> list[tuple[nn.Module, str, int]]:
        """(module, parameter name, axis) of tensors with one slice per head (T5's bias)."""
        unit = self.block.module.get_submodule(self.layout.path)
        found = []
        linear_ids = {id(self.block.linears[c]) for c in self.comps.values()}
        for _, m in unit.named_modules():
            if id(m) in linear_ids or not isinstance(m, nn.Embedding):
                continue
            if m.embedding_dim == self.n_heads:
                found.append((m, "weight", 1))
        return found

    def why_not(self) -> str | None:
        """Why heads cannot be removed from this module, or None."""
        lay = self.layout
        if not self.n_heads or not self.head_dim:
            return f"{self.name}: head count and size could not be determined"
        if "o" not in lay.parts:
            return f"{self.name}: no output projection found"
        if "kv" in lay.parts:
            return f"{self.name}: a fused key/value projection (row order not measured)"
        if "qkv" in lay.parts and lay.qkv_layout is None:
            return (f"{self.name}: the fused qkv projection's row order matched none of "
                    "[q|k|v], per-head or per-group")
        if "qkv" not in lay.parts and not {"q", "k", "v"} <= set(lay.parts):
            return f"{self.name}: q/k/v projections not all found"
        odd = [p for p in lay.unassigned if p not in lay.head_rows]
        if odd:
            return f"{self.name}: projections with no known role ({', '.join(odd)})"
        return None


def attention_units(model: nn.Module) -> list[AttnUnit]:
    out = []
    for block in iter_blocks(model):
        for lay in block.layout.attn:
            module = block.module.get_submodule(lay.head_module)
            out.append(AttnUnit(block, lay, f"{block.name}.{lay.head_module}", module,
                                lay.head_dim, lay.heads, lay.kv_heads))
    return out


def ffn_blocks(model: nn.Module) -> list[Block]:
    """Blocks with a dense FFN whose input and output projections were found."""
    return [b for b in iter_blocks(model) if b.layout.ffn is not None
            and "ffn_out" in b.linears and ("ffn_in" in b.linears or "ffn_gate_up" in b.linears)]


def ffn_width(block: Block) -> int:
    return block.layout.ffn.intermediate


def _rows(heads: torch.Tensor, hd: int) -> torch.Tensor:
    """Row indices of ``heads`` (each ``hd`` rows wide)."""
    return (heads[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)


def heads_in_config(model: nn.Module, block: Block) -> bool:
    """Whether the stack's config can express fewer heads of the same size."""
    return bool(block.stack.names.head_dim)


# --- shrinking modules -------------------------------------------------------------------


def _param(new: torch.Tensor, old: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)


@torch.no_grad()
def keep_out(module: nn.Module, idx: torch.Tensor) -> None:
    """Keep output features ``idx`` of a linear (rows of its [out, in] view)."""
    idx = idx.to(module.weight.device)
    module.weight = _param(module.weight.index_select(out_axis(module), idx), module.weight)
    if getattr(module, "bias", None) is not None:
        module.bias = _param(module.bias.index_select(0, idx), module.bias)
    if is_transposed(module):
        module.nf = len(idx)
    else:
        module.out_features = len(idx)


@torch.no_grad()
def keep_in(module: nn.Module, idx: torch.Tensor) -> None:
    """Keep input features ``idx`` of a linear (columns of its [out, in] view)."""
    idx = idx.to(module.weight.device)
    module.weight = _param(module.weight.index_select(in_axis(module), idx), module.weight)
    if is_transposed(module):
        module.nx = len(idx)
    else:
        module.in_features = len(idx)


@torch.no_grad()
def _keep_norm(module: nn.Module, idx: torch.Tensor) -> None:
    for pname in ("weight", "bias"):
        p = getattr(module, pname, None)
        if isinstance(p, nn.Parameter):
            setattr(module, pname, _param(p.index_select(0, idx.to(p.device)), p))
    for attr in ("normalized_shape",):
        if isinstance(getattr(module, attr, None), tuple):
            setattr(module, attr, (len(idx),))


def _set_attrs(root: nn.Module, names: tuple[str, ...], old: int, new: int) -> None:
    """Set every attribute in ``names`` equal to ``old`` on modules under ``root``."""
    for m in root.modules():
        for attr in names:
            if getattr(m, attr, None) == old and isinstance(old, int):
                setattr(m, attr, new)


@torch.no_grad()
def shrink_heads(unit: AttnUnit, keep_q: torch.Tensor, keep_kv: torch.Tensor) -> None:
    """Keep query heads ``keep_q`` and KV heads ``keep_kv`` of ``unit`` (sorted indices)."""
    hd, lay = unit.head_dim, unit.layout
    q_rows, kv_rows = _rows(keep_q, hd), _rows(keep_kv, hd)
    if "qkv" in lay.parts:
        rows = [qkv_rows(lay.qkv_layout, "q", int(h), unit.n_heads, unit.n_kv, hd) for h in keep_q]
        rows += [qkv_rows(lay.qkv_layout, p, int(g), unit.n_heads, unit.n_kv, hd)
                 for g in keep_kv for p in ("k", "v")]
        keep_out(unit.linear("qkv"), torch.cat(rows).sort().values)
    else:
        keep_out(unit.linear("q"), q_rows)
        keep_out(unit.linear("k"), kv_rows)
        keep_out(unit.linear("v"), kv_rows)
    keep_in(unit.linear("o"), q_rows)
    for path, part in lay.head_rows.items():
        keep_out(unit.block.module.get_submodule(path), q_rows if part == "q" else kv_rows)
    for part, path in lay.qk_norms.items():
        _keep_norm(unit.block.module.get_submodule(path), q_rows if part == "q" else kv_rows)
    for module, pname, axis in unit.per_head_tables():
        p = getattr(module, pname)
        setattr(module, pname, _param(p.index_select(axis, keep_q.to(p.device)), p))
        if isinstance(module, nn.Embedding):
            module.embedding_dim = len(keep_q)
    n_q, n_kv = len(keep_q), len(keep_kv)
    root = unit.block.module.get_submodule(lay.path)
    if n_kv != unit.n_kv:
        _set_attrs(root, KV_HEADS_ATTRS, unit.n_kv, n_kv)
    _set_attrs(root, HEADS_ATTRS, unit.n_heads, n_q)
    _set_attrs(root, HEAD_WIDTH_ATTRS, unit.n_heads * hd, n_q * hd)
    _set_attrs(root, ("num_key_value_groups",), unit.group, n_q // n_kv)
    unit.n_heads, unit.n_kv = n_q, n_kv


def _gate_up_rows(order: str, keep: torch.Tensor, ff: int) -> torch.Tensor:
    if order == "interleaved":
        return torch.stack([2 * keep, 2 * keep + 1], 1).reshape(-1)
    return torch.cat([keep, ff + keep])


@torch.no_grad()
def shrink_ffn(block: Block, keep: torch.Tensor) -> None:
    """Keep FFN neurons ``keep`` of ``block`` (gate/up rows with their down columns)."""
    ffn = block.layout.ffn
    ff = ffn.intermediate
    for comp in ("ffn_in", "ffn_gate"):
        if comp in block.linears:
            keep_out(block.linears[comp], keep)
    if "ffn_gate_up" in block.linears:
        keep_out(block.linears["ffn_gate_up"], _gate_up_rows(ffn.gate_up_order, keep, ff))
    keep_in(block.linears["ffn_out"], keep)
    holder = block.module.get_submodule(ffn.path) if ffn.path else None
    if holder is not None:
        _set_attrs(holder, ("intermediate_size", "ffn_dim", "intermediate_dim", "d_ff"),
                   ff, len(keep))


# --- applying ----------------------------------------------------------------------------


@dataclass
class Selection:
    """What stays: FFN neurons per block name; (query, kv) heads per attention module name."""

    ffn: dict[str, torch.Tensor]
    heads: dict[str, tuple[torch.Tensor, torch.Tensor]]


def _complement(keep: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero().view(-1)


@torch.no_grad()
def mask_selection(model: nn.Module, sel: Selection) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Zero the removed units' outgoing weights without removing them.

    Zeroing a neuron's ``ffn_out`` column or a head's ``o`` columns removes exactly its
    contribution, so this model computes what the physically shrunk one computes.
    Returns what was overwritten (module name -> (columns, old values)), for
    :func:`unmask`.
    """
    saved = {}
    for b in ffn_blocks(model):
        if b.name in sel.ffn:
            gone = _complement(sel.ffn[b.name], ffn_width(b))
            saved[b.linear_names["ffn_out"]] = _zero_cols(b.linears["ffn_out"], gone)
    for u in attention_units(model):
        if u.name in sel.heads:
            gone = _complement(sel.heads[u.name][0], u.n_heads)
            o = u.linear("o")
            saved[u.block.linear_names[u.comps["o"]]] = _zero_cols(o, _rows(gone, u.head_dim))
    return saved


def _zero_cols(module: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = out_in(module)
    old = w[:, idx].clone()
    w[:, idx] = 0
    return idx, old


@torch.no_grad()
def unmask(model: nn.Module, saved: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    modules = dict(model.named_modules())
    for name, (idx, old) in saved.items():
        out_in(modules[name])[:, idx] = old


def _probe(model: nn.Module) -> torch.Tensor:
    from compress.arch import probe

    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    with torch.no_grad(), probe.eval_mode(model):
        out = model(**probe.probe_inputs(model, seq2seq), **probe.forward_kwargs(model))
    y = getattr(out, "logits", None)
    if y is None:
        y = probe._first_tensor(out)
    return y.detach().float()


def _reference(model: nn.Module, sel: Selection) -> torch.Tensor:
    """Probe outputs of ``model`` with the removed units' outgoing weights zeroed."""
    saved = mask_selection(model, sel)
    try:
        return _probe(model)
    except Exception as exc:  # noqa: BLE001 - nothing was removed yet: say so in one line
        raise UserError(f"structured removal cannot check its result on "
                        f"{arch_for(model).family}: the probe forward fails "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:100]}); the model "
                        "is unchanged; use another recipe") from None
    finally:
        unmask(model, saved)


def _shrink(model: nn.Module, sel: Selection) -> tuple[dict[str, int], dict[str, AttnUnit]]:
    """Remove the units; returns the new FFN width per block and the shrunk attention units."""
    blocks = {b.name: b for b in ffn_blocks(model)}
    widths: dict[str, int] = {}
    for name, keep in sel.ffn.items():
        if len(keep) != ffn_width(blocks[name]):
            shrink_ffn(blocks[name], keep)
            widths[name] = len(keep)
    units = {u.name: u for u in attention_units(model)}
    changed: dict[str, AttnUnit] = {}
    for name, (keep_q, keep_kv) in sel.heads.items():
        u = units[name]
        if len(keep_q) != u.n_heads or len(keep_kv) != u.n_kv:
            shrink_heads(u, keep_q, keep_kv)
            changed[name] = u
    return widths, changed


def _uniform(values: list) -> Any:
    return values[0] if values and all(v == values[0] for v in values) else None


def _express_in_config(model: nn.Module, spec: Any, widths: dict[str, int],
                       units: dict[str, AttnUnit], undo: list) -> dict[str, Any]:
    """Write each stack's new sizes where the config holds them, when uniform per stack
    (every write is appended to ``undo`` as (config, attribute, old value or _MISSING)).
    ``spec`` is the architecture before the removal: its config names were found by the
    old sizes."""
    sizes: dict[str, Any] = {"ffn": {}, "heads": {}}

    def _write(cfg: Any, names: tuple[str, ...], value: int) -> None:
        for name in names:
            old = getattr(cfg, name, _MISSING)
            try:
                setattr(cfg, name, value)
            except AttributeError:  # a read-only property (derived from other sizes)
                continue
            undo.append((cfg, name, old))

    for stack in spec.stacks:
        configs = [stack_config(model, spec, stack)] + [
            model.get_submodule(p).config for p in stack.private_configs]
        ffn = _uniform([w for b, w in widths.items() if b.startswith(stack.path + ".")])
        mine = [u for u in units.values() if u.block.stack.path == stack.path]
        heads = _uniform([(u.n_heads, u.n_kv, u.head_dim) for u in mine])
        for cfg in configs:
            if ffn is not None and stack.names.intermediate:
                _write(cfg, stack.names.intermediate, ffn)
                sizes["ffn"][stack.role] = ffn
            if heads is not None and stack.names.heads:
                n_q, n_kv, hd = heads
                _write(cfg, stack.names.heads, n_q)
                _write(cfg, stack.names.kv_heads, n_kv)
                # explicit: the head size no longer equals hidden / heads
                _write(cfg, stack.names.head_dim or ("head_dim",), hd)
                sizes["heads"][stack.role] = {"heads": n_q, "kv_heads": n_kv}
    return sizes


def _shape_mismatch(model: nn.Module) -> str | None:
    """First parameter whose shape a model rebuilt from ``model.config`` would not match."""
    from compress.models import build_skeleton

    try:
        config = type(model.config).from_dict(model.config.to_dict())  # as a reload reads it
        with torch.device("meta"):
            fresh = build_skeleton(config, type(model).__name__)
    except Exception as exc:  # noqa: BLE001 - a config that does not build is a mismatch
        return f"the config does not build ({type(exc).__name__})"
    shapes = {n: tuple(p.shape) for n, p in fresh.named_parameters()}
    for n, p in model.named_parameters():
        if shapes.get(n, tuple(p.shape)) != tuple(p.shape):
            return n
    return None


@torch.no_grad()
def apply_selection(model: nn.Module, sel: Selection, verify: bool = True) -> dict[str, Any]:
    """Remove every unit not in ``sel``; record the new sizes; return them.

    Sizes go into ``model.config`` where it can state them (uniform per stack, and a
    model rebuilt from the config has every tensor's shape); otherwise the per-module
    counts go into ``config.compress_pruned_heads`` / ``compress_pruned_ffn`` and the
    ``structured-heads`` format rebuilds the model on load. With ``verify`` the result
    must compute on probe inputs what the original computes with the removed units
    masked; otherwise a :class:`UserError` says so (the model passed in is then left
    modified and should be discarded).
    """
    for u in attention_units(model):
        if u.name in sel.heads and len(sel.heads[u.name][0]) != u.n_heads:
            why = u.why_not()
            if why:
                raise UserError(f"structured head removal is not possible here: {why}; "
                                "use heads_ratio=0 (FFN neurons only)")
    reference = _reference(model, sel) if verify else None
    spec = arch_for(model)
    widths, units = _shrink(model, sel)
    undo: list = []
    sizes = _express_in_config(model, spec, widths, units, undo)
    if _shape_mismatch(model) is not None:  # the config cannot say it: record per module
        for cfg, name, old in reversed(undo):
            if old is _MISSING:
                delattr(cfg, name)
            else:
                setattr(cfg, name, old)
        heads = dict(getattr(model.config, PRUNED_HEADS_ATTR, None) or {})
        heads.update({n: {"heads": u.n_heads, "kv_heads": u.n_kv} for n, u in units.items()})
        ffn = dict(getattr(model.config, PRUNED_FFN_ATTR, None) or {})
        ffn.update(widths)
        if heads:
            setattr(model.config, PRUNED_HEADS_ATTR, heads)
        if ffn:
            setattr(model.config, PRUNED_FFN_ATTR, ffn)
        sizes = {"ffn": {}, "heads": {}, "outside_config": len(heads) + len(ffn)}
    if verify:
        _verify(model, reference)
    return sizes


def _verify(model: nn.Module, reference: torch.Tensor) -> None:
    why = None
    try:
        got = _probe(model)
    except Exception as exc:  # noqa: BLE001 - a forward that breaks is the failure we report
        why = f"its forward fails ({type(exc).__name__})"
    else:
        scale = float(reference.abs().max()) + 1e-6
        if got.shape != reference.shape or float((got - reference).abs().max()) > 1e-3 * scale:
            why = "its outputs change"
    if why:
        raise UserError(
            f"structured removal is not exact on {arch_for(model).family}: {why}; something "
            "besides the projections depends on the head count (ALiBi slopes, a norm over "
            "all heads, a shared position bias); use heads_ratio=0 or another recipe")


# --- the structured-heads format ------------------------------------------------------------

FORMAT_NAME = "structured-heads"


def _applies(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return bool(getattr(cfg, PRUNED_HEADS_ATTR, None) or getattr(cfg, PRUNED_FFN_ATTR, None))


WEIGHTS_FILE = "model.safetensors"


def _save(model: nn.Module, folder: Path) -> None:
    """Config (with the recorded per-module sizes) and the state dict as the model holds it.

    Written with ``safetensors.torch.save_model`` rather than ``save_pretrained``, which
    would convert some weights to their hub layout (native MoE experts) on the way out.
    """
    from safetensors.torch import save_model as save_tensors

    folder = Path(folder)
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(model, "can_generate", lambda: False)():
        gen.save_pretrained(folder)
    save_tensors(model, str(folder / WEIGHTS_FILE))


@torch.no_grad()
def _load(folder: Path) -> nn.Module:
    """Build the model from its config, shrink the recorded modules, load the weights."""
    import transformers as tf
    from safetensors.torch import load_model as load_tensors

    from compress.models import build_skeleton

    folder = Path(folder)
    config = tf.AutoConfig.from_pretrained(folder)
    model = build_skeleton(config)
    recorded = getattr(config, PRUNED_HEADS_ATTR, None) or {}
    units = {u.name: u for u in attention_units(model)}
    for mod_name, n in recorded.items():
        if mod_name not in units:
            raise UserError(f"{folder}: {PRUNED_HEADS_ATTR} names {mod_name}, not in the model")
        shrink_heads(units[mod_name], torch.arange(n["heads"]), torch.arange(n["kv_heads"]))
    blocks = {b.name: b for b in ffn_blocks(model)}
    for block_name, width in (getattr(config, PRUNED_FFN_ATTR, None) or {}).items():
        if block_name not in blocks:
            raise UserError(f"{folder}: {PRUNED_FFN_ATTR} names {block_name}, not in the model")
        shrink_ffn(blocks[block_name], torch.arange(width))
    path = folder / WEIGHTS_FILE
    if not path.exists():
        raise UserError(f"{folder} has no {WEIGHTS_FILE}")
    missing, unexpected = load_tensors(model, str(path), strict=False)
    if missing or unexpected:
        raise UserError(f"{folder}: weights do not match the rebuilt model (missing "
                        f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if (folder / "generation_config.json").exists() and hasattr(model, "generation_config"):
        model.generation_config = tf.GenerationConfig.from_pretrained(folder)
    model.eval()
    return model


FORMAT = register_format(Format(FORMAT_NAME, _applies, _save, _load))

