"""Which weight matrices a pruning recipe touches, resolved through the architecture table.

A :class:`Target` is one weight matrix with what the recipes need to know about it:
its full module name, the component (``attn_q`` ... ``ffn_out``, ``lm_head``,
``embedding``), the group used by per-group ratios (``attn``, ``cross``, ``ffn``,
``lm_head``, ``embeddings``), and whether it is a GPT-2 ``Conv1D`` (weight stored
``[in, out]``). Every algorithm works on :func:`out_in`, a view of the weight as
``[out, in]``, so "per output row" and "groups of M along the input" mean the same
thing for ``nn.Linear`` and ``Conv1D``.

>>> targets = select_targets(model, ("attn", "ffn"))        # doctest: +SKIP
>>> out_in(targets[0]).shape                                 # doctest: +SKIP
torch.Size([576, 576])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from compress.arch import arch_for, component_group, is_transposed, iter_blocks
from compress.errors import UserError

log = logging.getLogger(__name__)

#: groups a pruning recipe can target; embeddings and the LM head only when asked.
GROUPS = ("attn", "cross", "ffn", "lm_head", "embeddings")
DEFAULT_GROUPS = ("attn", "cross", "ffn")


@dataclass
class Target:
    """One weight matrix to prune."""

    name: str  # full module name
    module: nn.Module
    component: str
    group: str
    conv1d: bool
    role: str = ""  # "encoder" / "decoder" for block linears, "" otherwise
    block: int = -1

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def in_features(self) -> int:
        return out_in(self).shape[1]

    @property
    def out_features(self) -> int:
        return out_in(self).shape[0]

    def numel(self) -> int:
        return self.module.weight.numel()


def out_in(target: Target) -> torch.Tensor:
    """The weight as an ``[out, in]`` view (a transpose for ``Conv1D``); writes go through."""
    w = target.module.weight
    return w.t() if target.conv1d else w  # expert slices are [out, in] views already


def parse_groups(text: str | tuple[str, ...]) -> tuple[str, ...]:
    """``"attn,ffn"`` -> ``("attn", "ffn")``, validated against :data:`GROUPS`."""
    items = [g.strip() for g in (text.split(",") if isinstance(text, str) else text)]
    items = [g for g in items if g]
    if not items:
        raise UserError(f"no groups given; choose from {', '.join(GROUPS)}")
    for g in items:
        if g not in GROUPS:
            from compress.errors import did_you_mean

            raise did_you_mean("group", g, GROUPS)
    return tuple(dict.fromkeys(items))


def parse_group_ratios(text: str) -> dict[str, float]:
    """``"attn=0.9,ffn=0.7"`` -> ``{"attn": 0.9, "ffn": 0.7}`` with clear errors.

    >>> parse_group_ratios("attn=0.9, cross=0.4")
    {'attn': 0.9, 'cross': 0.4}
    """
    out: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise UserError(
                f"group ratio {part!r} is not NAME=VALUE; example: attn=0.9,cross=0.4,ffn=0.7"
            )
        name, value = (p.strip() for p in part.split("=", 1))
        parse_groups(name)  # validates the name
        try:
            ratio = float(value)
        except ValueError:
            raise UserError(f"group ratio {name}={value!r} is not a number") from None
        check_fraction(ratio, f"group ratio {name}")
        if name in out:
            raise UserError(f"group ratio {name} is given twice")
        out[name] = ratio
    if not out:
        raise UserError("group ratios are empty; example: attn=0.9,cross=0.4,ffn=0.7")
    return out


def check_fraction(value: float, what: str) -> None:
    """A target must be a fraction strictly between 0 and 1 (50% is 0.5)."""
    if value != value:
        raise UserError(f"{what} must be a number, got NaN")
    if 1.0 < value < 100.0:
        raise UserError(f"{what}={value:g} is a fraction in (0, 1); did you mean {value / 100:g}?")
    if not 0.0 < value < 1.0:
        raise UserError(
            f"{what}={value:g} is out of range; it is the fraction removed, strictly between "
            "0 and 1 (0 removes nothing, 1 removes everything)"
        )


def _find_name(model: nn.Module, module: nn.Module) -> str:
    for name, mod in model.named_modules():
        if mod is module:
            return name
    raise KeyError("module not in model")


def select_targets(model: nn.Module, groups: tuple[str, ...] = DEFAULT_GROUPS) -> list[Target]:
    """The weight matrices of ``groups`` in ``model``, in forward order (encoder first).

    Matrices whose weight is the same tensor (tied LM head and input embedding) are
    listed once; a warning says when pruning the LM head also prunes the embeddings.
    """
    spec = arch_for(model)
    out: list[Target] = []
    block_groups = [g for g in groups if g in ("attn", "cross", "ffn")]
    for block in iter_blocks(model, spec):
        for comp, mod in block.linears.items():
            group = component_group(comp)
            if group in block_groups:
                out.append(
                    Target(block.linear_names[comp], mod, comp, group,
                           is_transposed(mod), block.role, block.index)
                )
    seen = {id(t.module.weight) for t in out}
    if "embeddings" in groups:
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Embedding) and name in spec.embeddings:
                if id(mod.weight) not in seen:
                    seen.add(id(mod.weight))
                    out.append(Target(name, mod, "embedding", "embeddings", False))
    if "lm_head" in groups:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is None or getattr(head, "weight", None) is None:
            raise UserError(f"{type(model).__name__} has no LM head to prune (group lm_head)")
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if emb is not None and emb.weight is head.weight:
            log.warning("the LM head is tied to the input embeddings: pruning it prunes both")
        if id(head.weight) not in seen:
            seen.add(id(head.weight))
            out.append(Target(_find_name(model, head), head, "lm_head", "lm_head",
                              is_transposed(head)))
    return out


def lm_head_tied(model: nn.Module) -> bool:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return head is not None and emb is not None and head.weight is emb.weight
