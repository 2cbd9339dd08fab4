"""Dense FFN <-> MoE FFN: find every FFN, read its weights, build and swap modules.

A :class:`Site` is one FFN of one block, resolved with the architecture table
(:mod:`compress.arch`) and the FFN layout table (:mod:`compress.moe.families`). Its
:class:`DenseFFN` holds the weights as neuron rows (``w_in``/``w_gate``/``w_out`` all
(ff, d)), whatever the storage (``nn.Linear`` weight [out, in] or GPT-2 ``Conv1D``
[in, out]). Swapping replaces modules by attribute assignment on their parents; no
forward is patched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from compress.arch import arch_for, iter_blocks
from compress.moe.families import FFNLayout, layout_for
from compress.moe.layer import AddBias, MoEFFN


def _rows(module: nn.Module, kind: str) -> torch.Tensor:
    """Weight as (ff, d) neuron rows: ``kind`` "in" (d -> ff) or "out" (ff -> d)."""
    w = module.weight.detach()
    if isinstance(module, Conv1D):  # [in, out]
        return w.t() if kind == "in" else w
    return w if kind == "in" else w.t()  # nn.Linear [out, in]


def _bias(module: nn.Module) -> torch.Tensor | None:
    b = getattr(module, "bias", None)
    return None if b is None else b.detach()


@dataclass
class DenseFFN:
    """One FFN's weights as neuron rows (all (ff, d)) plus biases and activation."""

    w_in: torch.Tensor
    b_in: torch.Tensor | None
    w_gate: torch.Tensor | None
    b_gate: torch.Tensor | None
    w_out: torch.Tensor
    b_out: torch.Tensor | None
    act: nn.Module

    @property
    def ff(self) -> int:
        return self.w_in.shape[0]

    @property
    def hidden(self) -> int:
        return self.w_in.shape[1]

    @property
    def gated(self) -> bool:
        return self.w_gate is not None

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Intermediate activations (N, ff), the input of W_out."""
        h = F.linear(x, self.w_in, self.b_in)
        if self.gated:
            return self.act(F.linear(x, self.w_gate, self.b_gate)) * h
        return self.act(h)

    def output(self, x: torch.Tensor, with_bias: bool = False) -> torch.Tensor:
        y = self.activations(x) @ self.w_out
        return y + self.b_out if with_bias and self.b_out is not None else y

    def flops_per_token(self) -> int:
        return 2 * self.hidden * self.ff * (3 if self.gated else 2)


@dataclass
class Site:
    """Where one FFN lives and which modules its MoE replacement takes over."""

    name: str  # full name of the block
    role: str
    index: int
    layout: FFNLayout
    block: nn.Module
    #: (parent module, attribute) -> module, for the modules that get replaced.
    owner: tuple[nn.Module, str]
    bias_slot: tuple[nn.Module, str] | None
    act_slot: tuple[nn.Module, str] | None
    linears: dict[str, nn.Module]
    originals: dict[str, nn.Module] = field(default_factory=dict)
    moe: MoEFFN | None = None
    add_bias: AddBias | None = None

    @property
    def owner_name(self) -> str:
        return f"{self.name}.{self._rel(self.owner)}"

    def _rel(self, slot: tuple[nn.Module, str]) -> str:
        parent, attr = slot
        for name, mod in self.block.named_modules():
            if mod is parent:
                return f"{name}.{attr}" if name else attr
        raise RuntimeError("slot not inside its block")

    def dense(self) -> DenseFFN:
        lin = self.linears
        act = self.originals.get("act") or getattr(*self.act_slot)
        return DenseFFN(
            w_in=_rows(lin["ffn_in"], "in"),
            b_in=_bias(lin["ffn_in"]),
            w_gate=_rows(lin["ffn_gate"], "in") if "ffn_gate" in lin else None,
            b_gate=_bias(lin["ffn_gate"]) if "ffn_gate" in lin else None,
            w_out=_rows(lin["ffn_out"], "out"),
            b_out=_bias(lin["ffn_out"]),
            act=act,
        )

    def current(self) -> str:
        """"moe" or "dense": which modules sit in the block now."""
        parent, attr = self.owner
        return "moe" if isinstance(getattr(parent, attr), MoEFFN) else "dense"


def _parent_and_attr(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, attr = path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), attr


def find_sites(model: nn.Module) -> list[Site]:
    """Every FFN of ``model`` (encoder stack first), with its modules resolved.

    Works on dense and on MoEfied models (then ``Site.current()`` is "moe" and the
    dense linears are gone).
    """
    spec = arch_for(model)
    layout = layout_for(spec.family)
    sites = []
    for block in iter_blocks(model, spec):
        rel = block.stack.block.linears
        if "ffn_in" not in rel or "ffn_out" not in rel:
            continue
        in_path = rel["ffn_in"]
        in_parent_path = in_path.rpartition(".")[0]
        owner_path = in_parent_path if layout.replace == "parent" else in_path
        act_slot = _parent_and_attr(block.module, f"{in_parent_path}.{layout.act}".lstrip("."))
        bias_slot = (_parent_and_attr(block.module, rel["ffn_out"]) if layout.out == "bias"
                     else None)
        try:
            owner = _parent_and_attr(block.module, owner_path)
            getattr(*owner)
        except AttributeError:
            continue  # no FFN in this block
        sites.append(
            Site(
                name=block.name,
                role=block.role,
                index=block.index,
                layout=layout,
                block=block.module,
                owner=owner,
                bias_slot=bias_slot,
                act_slot=act_slot,
                linears={k: v for k, v in block.linears.items() if k.startswith("ffn_")},
            )
        )
    return sites


def build_moe(
    dense: DenseFFN,
    perm: torch.Tensor,
    n_experts: int,
    *,
    router: nn.Module,
    routing: str,
    top_k: int,
    threshold: float,
    out_bias_inside: bool,
) -> MoEFFN:
    """A :class:`MoEFFN` whose expert ``e`` holds neurons ``perm[e*d_e:(e+1)*d_e]``.

    A neuron's gate, up and down slices move together (same ``perm`` for all three).
    """
    ff, d = dense.ff, dense.hidden
    de = ff // n_experts
    w = dense.w_in
    moe = MoEFFN(
        hidden=d, expert_size=de, n_experts=n_experts, act=dense.act, gated=dense.gated,
        in_bias=dense.b_in is not None, out_bias=out_bias_inside and dense.b_out is not None,
        router={"kind": "similarity"}, routing=routing, top_k=top_k, threshold=threshold,
        dtype=w.dtype,
    ).to(w.device)
    with torch.no_grad():
        # (ff, d) neuron rows -> (E, d, d_e) input-major slices / (E, d_e, d) output rows
        moe.w_in.copy_(dense.w_in[perm].reshape(n_experts, de, d).transpose(1, 2))
        moe.w_out.copy_(dense.w_out[perm].reshape(n_experts, de, d))
        if dense.b_in is not None:
            moe.b_in.copy_(dense.b_in[perm].reshape(n_experts, de))
        if dense.gated:
            moe.w_gate.copy_(dense.w_gate[perm].reshape(n_experts, de, d).transpose(1, 2))
            if dense.b_gate is not None:
                moe.b_gate.copy_(dense.b_gate[perm].reshape(n_experts, de))
        if moe.b_out is not None:
            moe.b_out.copy_(dense.b_out)
    moe.router = router
    return moe


def install(site: Site, moe: MoEFFN) -> None:
    """Put ``moe`` into the block (keeping the dense modules in ``site.originals``)."""
    parent, attr = site.owner
    if not site.originals:
        site.originals["owner"] = getattr(parent, attr)
        if site.bias_slot is not None:
            site.originals["bias"] = getattr(*site.bias_slot)
        if site.layout.act_to_identity:
            site.originals["act"] = getattr(*site.act_slot)
    site.moe = moe
    if site.bias_slot is not None and site.add_bias is None:
        site.add_bias = AddBias(_bias(site.originals["bias"]))
    use(site, "moe")


def use(site: Site, which: str) -> None:
    """Switch a site between its dense modules and its MoE modules (for timing)."""
    parent, attr = site.owner
    moe = which == "moe"
    setattr(parent, attr, site.moe if moe else site.originals["owner"])
    if site.bias_slot is not None:
        setattr(*site.bias_slot, site.add_bias if moe else site.originals["bias"])
    if site.layout.act_to_identity:
        setattr(*site.act_slot, nn.Identity() if moe else site.originals["act"])


def install_empty(site: Site, spec: dict[str, Any], dtype: torch.dtype) -> MoEFFN:
    """Install an uninitialised MoE FFN of ``spec`` (for loading saved weights)."""
    act = getattr(*site.act_slot)
    moe = MoEFFN(
        hidden=spec["hidden"], expert_size=spec["expert_size"], n_experts=spec["n_experts"],
        act=act, gated=spec["gated"], in_bias=spec["in_bias"], out_bias=spec["out_bias"],
        router=spec["router"], routing=spec["routing"], top_k=spec["top_k"],
        threshold=spec["threshold"], dtype=dtype,
    )
    install(site, moe)
    site.originals.clear()  # nothing to switch back to after a load
    return moe


def moe_modules(model: nn.Module) -> Iterator[tuple[str, MoEFFN]]:
    for name, module in model.named_modules():
        if isinstance(module, MoEFFN):
            yield name, module
