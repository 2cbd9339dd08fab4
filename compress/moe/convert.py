"""Dense FFN <-> MoE FFN: find every FFN, read its weights, build and swap modules.

A :class:`Site` is one FFN of one block, resolved with the discovered architecture
(:mod:`compress.arch`). Its :class:`DenseFFN` holds the weights as neuron rows
(``w_in``/``w_gate``/``w_out`` all (ff, d)), whatever the storage (``nn.Linear`` weight
[out, in], GPT-2 ``Conv1D`` [in, out], a fused gate-up projection). Which modules the
MoE FFN replaces follows from what discovery measured:

* the FFN is one module whose output is the FFN's output (Llama/GPT-2 ``mlp``, T5
  ``DenseReluDense``): that module is swapped whole (``replace="parent"``, the MoE FFN
  computes the output bias too, ``out="inside"``);
* the FFN is split across the block (BERT ``intermediate.dense`` + ``output.dense``, OPT
  ``fc1`` + ``fc2``, with the activation applied by a module around them): the input
  projection is swapped for the MoE FFN, the activation module becomes ``nn.Identity``
  (the experts apply it) and the output projection an :class:`AddBias` holding only its
  bias (``replace="ffn_in"``, ``out="bias"``).

Swapping replaces modules by attribute assignment on their parents; no forward is
patched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.arch import arch_for, iter_blocks, out_in
from compress.errors import UserError
from compress.moe.layer import AddBias, MoEFFN


@dataclass(frozen=True)
class Swap:
    """Which modules the MoE FFN takes over (see the module docstring)."""

    replace: str  # "parent" | "ffn_in"
    out: str  # "inside" | "bias"
    act_to_identity: bool = False


#: activation names measured by discovery -> transformers' ACT2FN keys
_ACT_KEYS = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu",
             "quick_gelu": "quick_gelu", "relu2": "relu2", "tanh": "tanh",
             "sigmoid": "sigmoid", "identity": "linear"}


def act_module(name: str | None) -> nn.Module:
    """An activation module for an activation discovery named (a function call)."""
    from transformers.activations import ACT2FN

    if name not in _ACT_KEYS:
        raise UserError(f"moefy: the FFN activation ({name or 'not identified'}) is not one "
                        f"the suite can rebuild; known: {', '.join(_ACT_KEYS)}")
    return ACT2FN[_ACT_KEYS[name]]


def _rows(module: nn.Module, kind: str) -> torch.Tensor:
    """Weight as (ff, d) neuron rows: ``kind`` "in" (d -> ff) or "out" (ff -> d)."""
    w = out_in(module).detach()
    return w if kind == "in" else w.t()


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
    layout: Swap
    block: nn.Module
    #: (parent module, attribute) -> module, for the modules that get replaced.
    owner: tuple[nn.Module, str]
    bias_slot: tuple[nn.Module, str] | None
    act_slot: tuple[nn.Module, str] | None
    linears: dict[str, nn.Module]
    act: nn.Module | None = None
    gate_up_order: str | None = None
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
        act = self.originals.get("act") or (getattr(*self.act_slot) if self.act_slot
                                            else self.act)
        w_gate = b_gate = None
        if "ffn_gate_up" in lin:
            rows, bias = _rows(lin["ffn_gate_up"], "in"), _bias(lin["ffn_gate_up"])
            if self.gate_up_order == "interleaved":
                w_gate, w_in = rows[0::2], rows[1::2]
                b_gate, b_in = (bias[0::2], bias[1::2]) if bias is not None else (None, None)
            else:
                first, second = rows.chunk(2)
                w_gate, w_in = (first, second) if self.gate_up_order == "gate_first" else \
                    (second, first)
                if bias is not None:
                    bf, bs = bias.chunk(2)
                    b_gate, b_in = (bf, bs) if self.gate_up_order == "gate_first" else (bs, bf)
                else:
                    b_in = None
        else:
            w_in, b_in = _rows(lin["ffn_in"], "in"), _bias(lin["ffn_in"])
            if "ffn_gate" in lin:
                w_gate, b_gate = _rows(lin["ffn_gate"], "in"), _bias(lin["ffn_gate"])
        return DenseFFN(
            w_in=w_in,
            b_in=b_in,
            w_gate=w_gate,
            b_gate=b_gate,
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
    """Every dense FFN of ``model`` (encoder stack first), with its modules resolved.

    Blocks whose FFN is already a mixture of experts (native, or MoEfied) have no site.
    An FFN the suite cannot swap (a split FFN whose activation is a function call, or a
    split gated FFN) is a :class:`UserError` naming the block.
    """
    spec = arch_for(model)
    sites = []
    for block in iter_blocks(model, spec):
        ffn = block.layout.ffn
        if ffn is None or block.layout.experts is not None:
            continue
        parts = ffn.parts
        act_slot = _parent_and_attr(block.module, ffn.act_path) if ffn.act_path else None
        act = None if act_slot else act_module(ffn.act_name)
        if ffn.path:
            swap, owner_path, bias_slot = Swap("parent", "inside"), ffn.path, None
            if act_slot is not None and not _under(ffn.act_path, ffn.path):
                act, act_slot = act_module(ffn.act_name), None
        elif act_slot is not None and set(parts) == {"in", "out"}:
            swap, owner_path = Swap("ffn_in", "bias", act_to_identity=True), parts["in"]
            bias_slot = _parent_and_attr(block.module, parts["out"])
        else:
            raise UserError(
                f"moefy: the FFN of {block.name} is spread over the block "
                f"({', '.join(parts.values())}) with "
                f"{'a gate' if ffn.gated else 'its activation applied by the block forward'}; "
                "there is no module the suite can swap for a mixture of experts")
        sites.append(
            Site(
                name=block.name,
                role=block.role,
                index=block.index,
                layout=swap,
                block=block.module,
                owner=_parent_and_attr(block.module, owner_path),
                bias_slot=bias_slot,
                act_slot=act_slot,
                linears={k: v for k, v in block.linears.items() if k.startswith("ffn_")
                         and "." not in k},
                act=act,
                gate_up_order=ffn.gate_up_order,
            )
        )
    return sites


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + ".")


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
    act = getattr(*site.act_slot) if site.act_slot else site.act
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
