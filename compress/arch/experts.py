"""Native mixture-of-experts FFNs as ordinary linears.

transformers keeps the experts of a MoE block (Mixtral, Qwen-MoE, OLMoE, DeepSeek, ...)
as 3-D parameters of one module (``gate_up_proj``: ``(E, 2*ff, d)``, ``down_proj``:
``(E, d, ff)``, possibly stored transposed), with the forward chosen through
``ExpertsInterface``. Pruning and quantization treat every expert as FFN linears:

* :class:`ExpertLinear` is a view of one expert's matrix as a linear (``weight`` is a
  ``[out, in]`` view of the 3-D parameter, so in-place writes reach the model). It is
  not registered as a sub-module: nothing is added to the model.
* :func:`routed_through_proxies` (a context manager) makes every fused experts module
  of the model run through those views for a while, via transformers' own
  ``ExpertsInterface``: the forward is the eager one, but each expert's projections
  are module calls, so calibration hooks see exactly the tokens routed to that expert.

Experts kept as sub-modules (a ``ModuleList`` of FFNs, e.g. Switch Transformers) are
ordinary linears already and need none of this.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.arch.spec import ExpertsLayout
from compress.arch.util import ATTN_RE, is_linear

IMPLEMENTATION = "compress_proxies"


class ExpertLinear(nn.Module):
    """One expert's projection of a fused experts module, as a linear (a view)."""

    def __init__(self, owner: nn.Module, param: str, index: int, transposed: bool):
        super().__init__()
        # plain attributes, not sub-modules: the proxy must not join the model
        object.__setattr__(self, "_owner_ref", weakref.ref(owner))
        self._param, self._index, self._transposed = param, index, transposed

    @property
    def owner(self) -> nn.Module:
        owner = self._owner_ref()
        if owner is None:
            raise RuntimeError("the experts module of this ExpertLinear is gone")
        return owner

    @property
    def weight(self) -> torch.Tensor:  # [out, in] view
        w = getattr(self.owner, self._param)[self._index]
        return w.t() if self._transposed else w

    @property
    def bias(self) -> torch.Tensor | None:
        b = getattr(self.owner, f"{self._param}_bias", None)
        return b[self._index] if isinstance(b, torch.Tensor) else None

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self._param}[{self._index}], in={self.in_features}, out={self.out_features}"


_PROXIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def proxies(module: nn.Module, layout: ExpertsLayout) -> dict[str, list[ExpertLinear]]:
    """part ("gate_up"/"up"/"down") -> one :class:`ExpertLinear` per expert (cached)."""
    cached = _PROXIES.get(module)
    if cached is not None:
        return cached
    out = {part: [ExpertLinear(module, name, e, layout.transposed)
                  for e in range(layout.n_experts)]
           for part, name in layout.params.items()}
    _PROXIES[module] = out
    return out


def _through_proxies(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                     top_k_weights: torch.Tensor) -> torch.Tensor:
    """The eager experts forward, calling one :class:`ExpertLinear` per projection."""
    parts = _PROXIES[self]
    first = parts.get("gate_up") or parts.get("up")
    out = torch.zeros_like(hidden_states)
    n = len(first)
    for e in range(n):
        token, slot = torch.where(top_k_index == e)
        if token.numel() == 0:
            continue
        h = first[e](hidden_states[token])
        h = self._apply_gate(h) if getattr(self, "has_gate", "gate_up" in parts) else self.act_fn(h)
        y = parts["down"][e](h)
        if getattr(self, "has_post_expert_norm", False):
            y = self.post_expert_norm(y)
        y = y * top_k_weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out


def _interface():
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS, ExpertsInterface

    if IMPLEMENTATION not in ALL_EXPERTS_FUNCTIONS:
        ExpertsInterface.register(IMPLEMENTATION, _through_proxies)
    return ALL_EXPERTS_FUNCTIONS


@contextlib.contextmanager
def routed_through_proxies(model: nn.Module) -> Iterator[bool]:
    """While inside, fused experts run through their :class:`ExpertLinear` proxies.

    Yields whether any experts module was switched. The model's experts
    implementation is restored on exit, whatever happens.
    """
    from compress.arch import arch_for

    spec = arch_for(model)
    fused = []
    for block_name, layout in spec.layouts.items():
        exp = layout.experts
        if exp is not None and exp.kind == "fused":
            module = model.get_submodule(f"{block_name}.{exp.path}")
            if hasattr(module, "_apply_gate") or hasattr(module, "act_fn"):
                proxies(module, exp)
                fused.append(module)
    configs = {id(m.config): m.config for m in fused if hasattr(m, "config")}
    if not configs:
        yield False
        return
    _interface()
    saved = {k: c._experts_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._experts_implementation = IMPLEMENTATION
        yield True
    finally:
        for k, c in configs.items():
            c._experts_implementation = saved[k]


# --- discovery -------------------------------------------------------------------------


def expert_containers(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules holding several experts: a 3-D parameter, or a list/dict of identical FFNs."""
    found = []
    for rel, m in block.named_modules():
        if not rel or isinstance(m, nn.modules.conv._ConvNd):
            continue
        own = [p for p in m.parameters(recurse=False) if p.dim() == 3]
        if own and own[0].shape[0] > 1 and all(p.shape[0] == own[0].shape[0] for p in own):
            found.append((rel, m))
        elif isinstance(m, (nn.ModuleList, nn.ModuleDict)) and len(m) > 1:
            kids = list(m.values() if isinstance(m, nn.ModuleDict) else m)
            if len({type(k) for k in kids}) == 1 and all(
                sum(1 for x in k.modules() if is_linear(x)) >= 2 for k in kids
            ) and not any(ATTN_RE.search(type(k).__name__) for k in kids):
                found.append((rel, m))
    # outermost only
    return [(r, m) for r, m in found if not any(r.startswith(o + ".") for o, _ in found if o != r)]


def fused_expert_layout(rel: str, m: nn.Module, router: str | None, moe_path: str,
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
