"""The architecture interface: where a model's blocks, attention and FFN linears are.

Every fact is found from the model itself (:mod:`compress.arch.discover`): the
stacks of repeated blocks, each block's self/cross-attention projections (q/k/v/o
or fused qkv, with its row order), heads, KV heads and head size, the FFN's in /
gate / out projections (or a fused gate-up) and its activation, native
mixture-of-experts weights and their router, embeddings, the LM head and whether it
is tied, and the config attributes that hold each size. Recipes ask this interface
and never branch on a model family; :mod:`compress.arch.overrides` corrects
discovery where it is wrong.

>>> spec = arch_for(model)                     # doctest: +SKIP
>>> for block in iter_blocks(model):           # doctest: +SKIP
...     block.linears["ffn_in"]                # the module, wherever the family keeps it
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from compress.arch.discover import discover, qkv_rows
from compress.arch.experts import ExpertLinear, proxies, routed_through_proxies
from compress.arch.spec import (
    COMPONENTS,
    CROSS_ATTN,
    FFN,
    ROUTER,
    SELF_ATTN,
    ArchSpec,
    AttnLayout,
    BlockLayout,
    ExpertsLayout,
    FFNLayout,
    StackSpec,
    component_group,
)
from compress.arch.weights import in_out_features, is_transposed, out_in, set_out_in
from compress.errors import UserError

__all__ = [
    "COMPONENTS", "CROSS_ATTN", "FFN", "ROUTER", "SELF_ATTN", "ArchSpec", "AttnLayout", "Block",
    "BlockLayout", "ExpertLinear", "ExpertsLayout", "FFNLayout", "StackSpec", "arch_for",
    "blocks_of", "classify_parameter", "component_group", "component_map", "config_value",
    "describe", "find_module_list", "in_out_features", "is_transposed", "iter_blocks",
    "linear_weight_in_out", "out_in", "qkv_rows", "routed_through_proxies", "set_out_in",
    "hidden_size", "stack_config", "targeted_linears",
]


def _meta_model(config: Any) -> nn.Module:
    """A weightless model of ``config`` (on the meta device) to read its structure."""
    from compress.models import model_class

    cls = model_class(config)
    with torch.device("meta"):
        try:
            return cls._from_config(config)
        except Exception as exc:  # noqa: BLE001 - say what could not be built
            raise UserError(f"cannot build a {getattr(config, 'model_type', '?')} model from its "
                            f"config to read its structure: {str(exc).splitlines()[0][:160]}"
                            ) from None


def arch_for(model_or_config: Any) -> ArchSpec:
    """The discovered architecture of a model (or of the model a config describes)."""
    if isinstance(model_or_config, nn.Module):
        return discover(model_or_config)
    from transformers import PretrainedConfig

    if not isinstance(model_or_config, PretrainedConfig):
        raise UserError(f"{type(model_or_config).__name__} is neither a transformers model nor "
                        "a config")
    return discover(_meta_model(model_or_config))


def config_value(config: Any, attrs: tuple[str, ...], default: Any = None) -> Any:
    """The first of ``attrs`` that ``config`` holds with a value."""
    for attr in attrs:
        value = getattr(config, attr, None)
        if value is not None:
            return value
    return default


def stack_config(model: nn.Module, spec: ArchSpec, stack: StackSpec) -> Any:
    """The config object holding this stack's sizes (a sub-config for bert2bert)."""
    cfg = model.config
    for part in filter(None, stack.config_path.split(".")):
        cfg = getattr(cfg, part)
    return cfg


def find_module_list(model: nn.Module, candidates: tuple[str, ...]) -> tuple[str, nn.ModuleList]:
    """The block list at one of ``candidates`` (full names; suffix match as a fallback)."""
    modules = dict(model.named_modules())
    for path in candidates:
        if isinstance(modules.get(path), nn.ModuleList):
            return path, modules[path]
    for path in candidates:
        for name, module in modules.items():
            if name.endswith("." + path) and isinstance(module, nn.ModuleList):
                return name, module
    raise UserError(f"{type(model).__name__}: no block list at {' or '.join(candidates)}")


@dataclass
class Block:
    """One transformer block, with its linears resolved."""

    stack: StackSpec
    index: int
    name: str  # full module name of the block
    module: nn.Module
    linears: dict[str, nn.Module]  # component -> module
    linear_names: dict[str, str]  # component -> full name
    layout: BlockLayout

    @property
    def role(self) -> str:
        return self.stack.role

    @property
    def conv1d(self) -> bool:
        return any(is_transposed(m) for m in self.linears.values())


def _expert_linears(block: nn.Module, name: str, exp: ExpertsLayout
                    ) -> tuple[dict[str, nn.Module], dict[str, str]]:
    if exp.kind != "fused":
        return {}, {}
    module = block.get_submodule(exp.path)
    mods, names = {}, {}
    for part, plist in proxies(module, exp).items():
        comp = {"down": "ffn_out", "gate_up": "ffn_gate_up", "gate": "ffn_gate"}.get(part, "ffn_in")
        for e, proxy in enumerate(plist):
            mods[f"{comp}.e{e}"] = proxy
            names[f"{comp}.e{e}"] = f"{name}.{exp.path}.{exp.params[part]}.{e}"
    return mods, names


def iter_blocks(model: nn.Module, spec: ArchSpec | None = None) -> Iterator[Block]:
    """Every transformer block of ``model``, encoder stack first."""
    spec = spec or arch_for(model)
    for stack in spec.stacks:
        blocks = model.get_submodule(stack.path)
        for i, block in enumerate(blocks):
            name = f"{stack.path}.{i}"
            layout = spec.layouts[name]
            linears = {c: block.get_submodule(p) for c, p in layout.linears.items()}
            names = {c: f"{name}.{p}" for c, p in layout.linears.items()}
            if layout.experts is not None:
                mods, enames = _expert_linears(block, name, layout.experts)
                linears.update(mods)
                names.update(enames)
            yield Block(stack, i, name, block, linears, names, layout)


def blocks_of(model: nn.Module, role: str) -> list[Block]:
    return [b for b in iter_blocks(model) if b.role == role]


def targeted_linears(
    model: nn.Module, groups: tuple[str, ...] = ("attn", "cross", "ffn")
) -> dict[str, tuple[nn.Module, str]]:
    """Full name -> (module, component) of the block linears in the requested groups.

    Routers of mixture-of-experts FFNs are never targeted.
    """
    out: dict[str, tuple[nn.Module, str]] = {}
    for block in iter_blocks(model):
        for comp, mod in block.linears.items():
            if component_group(comp) in groups:
                out[block.linear_names[comp]] = (mod, comp)
    return out


def linear_weight_in_out(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) for ``nn.Linear``, ``Conv1D`` or an expert slice."""
    return in_out_features(module)


def component_map(model: nn.Module) -> dict[str, str]:
    """Full module name -> component for every block linear of ``model``."""
    return {name: comp for block in iter_blocks(model)
            for comp, name in block.linear_names.items()}


def classify_parameter(name: str, spec: ArchSpec, block_names: dict[str, str]) -> str:
    """Component of a parameter by full name: a block linear's component, 'norm',
    'embedding', 'lm_head', else 'other' (biases fold into their linear's component).

    ``block_names`` maps full linear module names to components (:func:`component_map`).
    """
    module_name = name.rsplit(".", 1)[0]
    if module_name in block_names:
        return block_names[module_name].split(".", 1)[0]
    if any(module_name == h or module_name.startswith(h + ".") for h in spec.lm_head):
        return "lm_head"
    if any(module_name == e or module_name.startswith(e + ".") for e in spec.embeddings):
        return "embedding"
    lowered = name.lower()
    if "norm" in lowered or ".ln_" in lowered or lowered.startswith("ln_"):
        return "norm"
    for block_name, layout in spec.layouts.items():
        exp = layout.experts
        if exp is not None and exp.kind == "fused" and module_name == f"{block_name}.{exp.path}":
            return "ffn_out" if name.endswith(exp.params.get("down", "\0")) else "ffn_in"
    return "other"


def describe(model: nn.Module) -> dict[str, Any]:
    """Facts about a model for reports: family, kind, per-stack blocks and heads."""
    spec = arch_for(model)
    stacks = []
    for stack in spec.stacks:
        lay = spec.layouts[f"{stack.path}.0"]
        a, ffn, exp = lay.self_attn, lay.ffn, lay.experts
        stacks.append({
            "role": stack.role,
            "blocks": stack.n_blocks,
            "heads": a.heads if a else None,
            "kv_heads": a.kv_heads if a else None,
            "head_dim": a.head_dim if a else None,
            "intermediate": ffn.intermediate if ffn else (exp.intermediate if exp else None),
            "experts": exp.n_experts if exp else None,
            "shared_weights": stack.shared,
        })
    return {
        "family": spec.family,
        "kind": spec.kind,
        "activation": spec.activation,
        "conv1d": spec.conv1d,
        "gated_ffn": spec.gated_ffn,
        "tied_embeddings": spec.tied_embeddings,
        "discovery": spec.method,
        "stacks": stacks,
    }



def hidden_size(model: nn.Module) -> int:
    """The model's hidden (residual) width: discovered, else read from the config."""
    from compress.arch.confignames import read_hidden

    try:
        return arch_for(model).hidden or 1024
    except UserError:
        cfg = getattr(model, "config", None)
        return (read_hidden(cfg) if cfg is not None else None) or 1024
