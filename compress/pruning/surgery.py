"""Structured pruning: remove whole attention heads and FFN neurons, physically.

transformers 5 has no ``prune_heads``; this module does the surgery through the
architecture table for every family in it (GPT-2 ``Conv1D`` with fused qkv, Llama
with grouped KV heads and gated FFN, BERT, T5 with its shared relative attention
bias and no biases, BART/OPT, bert2bert):

* FFN neuron ``j``: row ``j`` of ``ffn_in`` (and ``ffn_gate``), its bias, and column
  ``j`` of ``ffn_out`` go together.
* Attention head ``h``: its ``head_dim`` rows of q, k, v (all three thirds of GPT-2's
  fused ``c_attn``) and its columns of o. With grouped KV heads (``gqa="query"``) the
  same number of query heads leaves every KV group and the KV heads stay;
  ``gqa="group"`` removes whole KV groups (the KV head and its query heads). Cross-
  attention heads in a decoder go in the same number, chosen separately. T5 blocks
  share the relative attention bias computed in block 0, so in a T5 stack the same
  heads leave every block and the bias table loses those columns.

Counts are uniform: every block of a stack loses the same number of units, chosen
by importance within the block, because stock configs hold one size per stack.
``model.config`` then records the new sizes (``intermediate_size`` / ``n_inner`` /
``d_ff`` / ``*_ffn_dim``; heads where the config has a head size of its own: Llama's
``head_dim``, T5's ``d_kv``), so ``save_pretrained`` + ``from_pretrained`` reload the
model. BERT, GPT-2, BART and OPT derive the head size from the hidden size, so their
configs cannot say "fewer heads of the same size": there the remaining head count
per attention module goes into ``config.compress_pruned_heads`` and the
``structured-heads`` format's loader (:func:`compress.saving.load_compressed`)
rebuilds the model before loading the weights.

Importance (lower goes first):

* ``magnitude``: squared L2 norm of the unit's weights;
* ``activation``: ``sum_d ||X_d||_2 * ||W_out[:, d]||_2`` over the unit's input
  features ``d`` of ``ffn_out`` / ``o`` (Wanda's score lifted to whole units);
* ``taylor``: ``|sum_w w * dL/dw|`` over the unit's weights (first-order Taylor
  estimate of the loss change, Molchanov et al. 2019), summed gradients over the
  calibration batches; needs a loss (not for bare encoders) and one gradient copy of
  the block linears.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from compress.arch import Block, arch_for, config_value, iter_blocks, stack_config
from compress.errors import UserError
from compress.models import input_device, to_device
from compress.saving import Format, register_format

log = logging.getLogger(__name__)

#: attention-module attributes holding the number of (query) heads.
HEAD_COUNT_ATTRS = ("num_heads", "n_heads", "num_attention_heads")
#: attention-module attributes holding heads x head_dim.
HEAD_WIDTH_ATTRS = ("all_head_size", "inner_dim", "split_size")
#: config attributes giving a head size independent of the hidden size.
HEAD_DIM_ATTRS = ("head_dim", "d_kv")
#: attention-module attribute of a relative position bias shared by a stack's blocks.
SHARED_BIAS_ATTR = "relative_attention_bias"
#: FFN-module attributes holding the intermediate size.
FFN_SIZE_ATTRS = ("intermediate_size",)
#: config attribute recording head counts that the config cannot express.
PRUNED_HEADS_ATTR = "compress_pruned_heads"
IMPORTANCES = ("activation", "magnitude", "taylor")


# --- geometry --------------------------------------------------------------------------


@dataclass
class AttnUnit:
    """One attention module of a block (self or cross) with its head geometry."""

    block: Block
    kind: str  # "self" | "cross"
    name: str  # full module name of the attention module
    module: nn.Module
    comps: dict[str, str]  # "q"/"k"/"v"/"o"/"qkv" -> component name
    head_dim: int
    n_heads: int
    n_kv: int

    def linear(self, part: str) -> nn.Module:
        return self.block.linears[self.comps[part]]

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv


def _out_features(m: nn.Module) -> int:
    return m.weight.shape[1] if isinstance(m, Conv1D) else m.weight.shape[0]


def head_dim_of(model: nn.Module, block: Block) -> int:
    spec = arch_for(model)
    cfg = stack_config(model, spec, block.stack)
    hd = config_value(cfg, HEAD_DIM_ATTRS)
    if hd:
        return int(hd)
    heads = config_value(cfg, block.stack.heads_attr)
    hidden = config_value(cfg, spec.hidden_attr)
    return int(hidden) // int(heads)


def heads_in_config(model: nn.Module, block: Block) -> bool:
    """Whether the stack's config can express fewer heads of the same size."""
    cfg = stack_config(model, arch_for(model), block.stack)
    return config_value(cfg, HEAD_DIM_ATTRS) is not None


def attention_units(model: nn.Module) -> list[AttnUnit]:
    out = []
    for block in iter_blocks(model):
        hd = head_dim_of(model, block)
        layout = block.stack.block
        for kind, prefix, path in (("self", "attn_", layout.attn_module),
                                   ("cross", "cross_", layout.cross_module)):
            comps = {p: prefix + p for p in ("q", "k", "v", "o", "qkv")
                     if prefix + p in block.linears}
            if "o" not in comps or path is None:
                continue
            module = block.module.get_submodule(path)
            if "qkv" in comps:
                n = _out_features(block.linears[comps["qkv"]]) // (3 * hd)
                n_kv = n
            else:
                n = _out_features(block.linears[comps["q"]]) // hd
                n_kv = _out_features(block.linears[comps["k"]]) // hd
            out.append(AttnUnit(block, kind, f"{block.name}.{path}", module, comps, hd, n, n_kv))
    return out


def ffn_blocks(model: nn.Module) -> list[Block]:
    return [b for b in iter_blocks(model) if "ffn_in" in b.linears and "ffn_out" in b.linears]


def _rows(heads: torch.Tensor, hd: int) -> torch.Tensor:
    """Row indices of ``heads`` (each ``hd`` rows wide)."""
    return (heads[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)


# --- shrinking modules -------------------------------------------------------------------


def _param(new: torch.Tensor, old: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)


@torch.no_grad()
def keep_out(module: nn.Module, idx: torch.Tensor) -> None:
    """Keep output features ``idx`` of a Linear / Conv1D (rows of its [out, in] view)."""
    conv = isinstance(module, Conv1D)
    idx = idx.to(module.weight.device)
    module.weight = _param(module.weight.index_select(1 if conv else 0, idx), module.weight)
    if getattr(module, "bias", None) is not None:
        module.bias = _param(module.bias.index_select(0, idx), module.bias)
    if conv:
        module.nf = len(idx)
    else:
        module.out_features = len(idx)


@torch.no_grad()
def keep_in(module: nn.Module, idx: torch.Tensor) -> None:
    """Keep input features ``idx`` of a Linear / Conv1D (columns of its [out, in] view)."""
    conv = isinstance(module, Conv1D)
    idx = idx.to(module.weight.device)
    module.weight = _param(module.weight.index_select(0 if conv else 1, idx), module.weight)
    if conv:
        module.nx = len(idx)
    else:
        module.in_features = len(idx)


def _set_first(obj: Any, attrs: tuple[str, ...], value: Any) -> None:
    for attr in attrs:
        if hasattr(obj, attr):
            setattr(obj, attr, value)
            return


@torch.no_grad()
def shrink_heads(unit: AttnUnit, keep_q: torch.Tensor, keep_kv: torch.Tensor) -> None:
    """Keep query heads ``keep_q`` and KV heads ``keep_kv`` of ``unit`` (sorted indices)."""
    hd = unit.head_dim
    q_rows, kv_rows = _rows(keep_q, hd), _rows(keep_kv, hd)
    if "qkv" in unit.comps:  # GPT-2: fused [q | k | v] along the output
        width = unit.n_heads * hd
        keep_out(unit.linear("qkv"), torch.cat([q_rows, width + kv_rows, 2 * width + kv_rows]))
    else:
        keep_out(unit.linear("q"), q_rows)
        keep_out(unit.linear("k"), kv_rows)
        keep_out(unit.linear("v"), kv_rows)
    keep_in(unit.linear("o"), q_rows)
    n_q, n_kv = len(keep_q), len(keep_kv)
    mod = unit.module
    for attr in HEAD_COUNT_ATTRS:
        if hasattr(mod, attr):
            setattr(mod, attr, n_q)
    for attr in HEAD_WIDTH_ATTRS:
        if hasattr(mod, attr):
            setattr(mod, attr, n_q * hd)
    if hasattr(mod, "num_key_value_heads"):
        mod.num_key_value_heads = n_kv
    if hasattr(mod, "num_key_value_groups"):
        mod.num_key_value_groups = n_q // n_kv
    bias = getattr(mod, SHARED_BIAS_ATTR, None)
    if isinstance(bias, nn.Embedding):  # (buckets, heads)
        bias.weight = _param(bias.weight.index_select(1, keep_q.to(bias.weight.device)),
                             bias.weight)
        bias.embedding_dim = n_q
    unit.n_heads, unit.n_kv = n_q, n_kv


@torch.no_grad()
def shrink_ffn(block: Block, keep: torch.Tensor) -> None:
    """Keep FFN neurons ``keep`` of ``block`` (gate/up rows with their down columns)."""
    for comp in ("ffn_in", "ffn_gate"):
        if comp in block.linears:
            keep_out(block.linears[comp], keep)
    keep_in(block.linears["ffn_out"], keep)
    path = block.stack.block.linears["ffn_in"]
    parent = block.module.get_submodule(path.rsplit(".", 1)[0]) if "." in path else block.module
    for attr in FFN_SIZE_ATTRS:
        if isinstance(getattr(parent, attr, None), int):
            setattr(parent, attr, len(keep))


# --- importance ------------------------------------------------------------------------


def _col_norms(module: nn.Module) -> torch.Tensor:
    """L2 norm of each input column of the [out, in] view."""
    w = module.weight.float()
    return w.norm(dim=1) if isinstance(module, Conv1D) else w.norm(dim=0)


def _row_sq(module: nn.Module, with_bias: bool = True) -> torch.Tensor:
    w = module.weight.float()
    sq = w.pow(2).sum(0) if isinstance(module, Conv1D) else w.pow(2).sum(1)
    if with_bias and getattr(module, "bias", None) is not None:
        sq = sq + module.bias.float().pow(2)
    return sq


def _col_sq(module: nn.Module) -> torch.Tensor:
    return _col_norms(module).pow(2)


def _row_gw(module: nn.Module) -> torch.Tensor:
    """Signed sum of w * grad per output row (bias included)."""
    w, g = module.weight, module.weight.grad
    if g is None:
        return torch.zeros(_out_features(module))
    gw = (w * g).float()
    s = gw.sum(0) if isinstance(module, Conv1D) else gw.sum(1)
    b = getattr(module, "bias", None)
    if b is not None and b.grad is not None:
        s = s + (b * b.grad).float()
    return s


def _col_gw(module: nn.Module) -> torch.Tensor:
    w, g = module.weight, module.weight.grad
    if g is None:
        return torch.zeros(w.shape[0] if isinstance(module, Conv1D) else w.shape[1])
    gw = (w * g).float()
    return gw.sum(1) if isinstance(module, Conv1D) else gw.sum(0)


def _per_head(x: torch.Tensor, hd: int) -> torch.Tensor:
    return x.view(-1, hd).sum(1)


@dataclass
class Scores:
    """Signed importance parts: FFN neurons per block; query / KV parts per attention unit."""

    ffn: dict[str, torch.Tensor] = field(default_factory=dict)
    q: dict[str, torch.Tensor] = field(default_factory=dict)
    kv: dict[str, torch.Tensor] = field(default_factory=dict)


def _qkv_parts(unit: AttnUnit, fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v) per-row values of ``fn`` (split for GPT-2's fused qkv)."""
    if "qkv" in unit.comps:
        rows = fn(unit.linear("qkv"))
        return tuple(rows.chunk(3))  # type: ignore[return-value]
    return fn(unit.linear("q")), fn(unit.linear("k")), fn(unit.linear("v"))


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> Scores:
    s = Scores()
    for b in ffn_blocks(model):
        sq = _row_sq(b.linears["ffn_in"]) + _col_sq(b.linears["ffn_out"])
        if "ffn_gate" in b.linears:
            sq = sq + _row_sq(b.linears["ffn_gate"])
        s.ffn[b.name] = sq
    for u in attention_units(model):
        q, k, v = _qkv_parts(u, _row_sq)
        s.q[u.name] = _per_head(q + _col_sq(u.linear("o")), u.head_dim)
        s.kv[u.name] = _per_head(k + v, u.head_dim)
    return s


@torch.no_grad()
def activation_scores(model: nn.Module, batches: list) -> Scores:
    from compress.pruning.calibration import collect_input_sumsq

    watched: dict[str, tuple[nn.Module, str]] = {}
    fb, units = ffn_blocks(model), attention_units(model)
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
    fb, units = ffn_blocks(model), attention_units(model)
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
                gw = _row_gw(b.linears["ffn_in"]) + _col_gw(b.linears["ffn_out"])
                if "ffn_gate" in b.linears:
                    gw = gw + _row_gw(b.linears["ffn_gate"])
                s.ffn[b.name] = gw
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


@dataclass
class Selection:
    """What stays: FFN neurons per block name; (query, kv) heads per attention module name."""

    ffn: dict[str, torch.Tensor] = field(default_factory=dict)
    heads: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def removal_units(unit: AttnUnit, gqa: str) -> int:
    """How many units an attention module offers: heads, KV groups, or query heads per group."""
    if unit.n_kv == unit.n_heads:
        return unit.n_heads
    return unit.n_kv if gqa == "group" else unit.group


def select(model: nn.Module, scores: Scores, ffn_remove: dict[str, int],
           head_remove: dict[str, int], gqa: str = "query") -> Selection:
    """Choose what stays, removing the lowest-importance units.

    ``ffn_remove[role]`` neurons leave every FFN of that stack; ``head_remove[role]``
    units leave every attention module of that stack (a unit is a head, a KV group
    with ``gqa="group"``, or a query head of every KV group with ``gqa="query"``).
    """
    sel = Selection()
    for b in ffn_blocks(model):
        sel.ffn[b.name] = _keep_lowest_removed(scores.ffn[b.name].abs(), ffn_remove.get(b.role, 0))
    units = [u for u in attention_units(model) if head_remove.get(u.block.role, 0) > 0]
    unit_scores: dict[str, torch.Tensor] = {}
    for u in units:
        q, kv = scores.q[u.name], scores.kv[u.name]
        if u.n_kv == u.n_heads:  # one unit per head
            unit_scores[u.name] = (q + kv).abs()
        elif gqa == "group":  # one unit per KV group
            unit_scores[u.name] = (q.view(u.n_kv, u.group).sum(1) + kv).abs()
        else:  # query heads, ranked within their KV group
            unit_scores[u.name] = q.abs().view(u.n_kv, u.group)
    # T5: block 0's relative bias serves every block of its stack -> same heads everywhere
    shared_roles = {u.block.role for u in units if u.kind == "self"
                    and isinstance(getattr(u.module, SHARED_BIAS_ATTR, None), nn.Embedding)}
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


# --- applying ----------------------------------------------------------------------------


@torch.no_grad()
def mask_selection(model: nn.Module, sel: Selection) -> None:
    """Zero the removed units without removing them (the reference for tests).

    Zeroing a neuron's ``ffn_out`` column or a head's ``o`` columns removes exactly its
    contribution, so this model computes what the physically shrunk one computes.
    """
    for b in ffn_blocks(model):
        if b.name in sel.ffn:
            gone = _complement(sel.ffn[b.name], _out_features(b.linears["ffn_in"]))
            _zero_cols(b.linears["ffn_out"], gone)
    for u in attention_units(model):
        if u.name in sel.heads:
            gone = _complement(sel.heads[u.name][0], u.n_heads)
            _zero_cols(u.linear("o"), _rows(gone, u.head_dim))


def _complement(keep: torch.Tensor, n: int) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero().view(-1)


def _zero_cols(module: nn.Module, idx: torch.Tensor) -> None:
    if isinstance(module, Conv1D):
        module.weight[idx, :] = 0
    else:
        module.weight[:, idx] = 0


@torch.no_grad()
def apply_selection(model: nn.Module, sel: Selection) -> dict[str, Any]:
    """Remove every unit not in ``sel``; update ``model.config``; return the new sizes."""
    spec = arch_for(model)
    blocks = {b.name: b for b in ffn_blocks(model)}
    new_ffn: dict[str, int] = {}
    for name, keep in sel.ffn.items():
        b = blocks[name]
        if len(keep) != _out_features(b.linears["ffn_in"]):
            shrink_ffn(b, keep)
        new_ffn[b.role] = len(keep)
    units = {u.name: u for u in attention_units(model)}
    unexpressed: dict[str, dict[str, int]] = dict(getattr(model.config, PRUNED_HEADS_ATTR, None)
                                                  or {})
    heads_by_role: dict[str, tuple[int, int]] = {}
    for name, (keep_q, keep_kv) in sel.heads.items():
        u = units[name]
        if len(keep_q) != u.n_heads or len(keep_kv) != u.n_kv:
            shrink_heads(u, keep_q, keep_kv)
        if heads_in_config(model, u.block):
            heads_by_role[u.block.role] = (u.n_heads, u.n_kv)
        else:
            unexpressed[name] = {"heads": u.n_heads, "kv_heads": u.n_kv}
    for stack in spec.stacks:
        cfg = stack_config(model, spec, stack)
        if stack.role in new_ffn:
            _set_first(cfg, stack.intermediate_attr, new_ffn[stack.role])
        if stack.role in heads_by_role:
            n_q, n_kv = heads_by_role[stack.role]
            hd = config_value(cfg, HEAD_DIM_ATTRS)
            _set_first(cfg, stack.heads_attr, n_q)
            if stack.kv_heads_attr != stack.heads_attr:
                _set_first(cfg, stack.kv_heads_attr, n_kv)
            if hasattr(cfg, "head_dim"):
                cfg.head_dim = hd  # keep it explicit: it no longer equals hidden / heads
    if unexpressed:
        setattr(model.config, PRUNED_HEADS_ATTR, unexpressed)
    return {"ffn": new_ffn, "heads": {r: {"heads": q, "kv_heads": kv}
                                      for r, (q, kv) in heads_by_role.items()},
            "heads_outside_config": len(unexpressed)}


# --- the structured-heads format ------------------------------------------------------------

FORMAT_NAME = "structured-heads"


def _applies(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), PRUNED_HEADS_ATTR, None))


def _save(model: nn.Module, folder: Path) -> None:
    arch = model.config.architectures
    try:
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        model.config.architectures = arch


@torch.no_grad()
def _load(folder: Path) -> nn.Module:
    """Build the model from its config, shrink the recorded attention modules, load weights."""
    import transformers as tf
    from safetensors.torch import load_file

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
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder} has no safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {n for n in missing if _is_tied(model, n, state)}
    if set(missing) - tied or unexpected:
        raise UserError(f"{folder}: weights do not match the rebuilt model (missing "
                        f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})")
    model.eval()
    return model


def _is_tied(model: nn.Module, name: str, state: dict[str, torch.Tensor]) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    p = params.get(name)
    if p is None:
        return name not in dict(model.named_parameters())  # a buffer that is not saved
    return any(params.get(other) is p for other in state if other != name)


FORMAT = register_format(Format(FORMAT_NAME, _applies, _save, _load))
