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
