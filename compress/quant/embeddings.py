"""Embedding tables and the LM head on an integer grid with one scale per row.

A small model's embeddings are much of its size (all-MiniLM-L6-v2: 11.7M of its 22.7M
parameters; SmolLM2-135M: 28M of 135M), so weight quantization that leaves them in float
cannot reach a size budget. The ``embeddings`` option of the weight quantizers (``rtn``,
``gptq``, ``awq``, ``hqq``) rounds them too: ``int8`` (symmetric) or ``int4`` (asymmetric with a zero point,
the grid's default at <= 4 bits), one fp16 scale per row, that is per token for a
``[vocab, hidden]`` table and per output logit for the LM head (same layout).

What is rounded (:func:`embedding_targets`): every learned ``nn.Embedding`` outside the
model's blocks (token, position and token-type tables of decoders, encoders and both
sides of an encoder-decoder, as :func:`compress.arch.arch_for` finds them) and the LM
head. Fixed tables (sinusoidal positions, ``requires_grad=False``) are left alone:
transformers recomputes them when it loads a model. A tensor shared by several modules
(tied input / output embeddings, T5's ``shared`` table) is rounded once and its packed
bytes count once; a tensor a quantizer already put on its layer grid (``rtn
include_head=True``) is not rounded again.

The rounded values are stored in float, like the recipes' linears, and recorded on the
model (:func:`compress.export.grid.mark_tables`): the compressed-tensors save format of
``rtn`` / ``gptq`` writes an untied table as int8 codes with a scale per row
(``int-quantized``; compressed-tensors quantizes ``nn.Embedding`` too), a tied one as a
float tensor of grid values (see :func:`compress.export.compressed_tensors.untied_tables`).
Either way the saved model reloads with the same outputs; the report's
``quant.packed_bytes`` counts every table packed (4 bits a weight for ``int4``, where the
int-quantized file spends a byte).

>>> packed = quantize_embeddings(model, "int8", skip=targets)      # doctest: +SKIP
>>> sum(b["total"] for b in packed.values())                      # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.quant.grid import QuantSpec, fake_quantize, layer_bytes

#: the choices of the recipes' ``embeddings`` option -> bits (None: left in float)
EMBEDDING_CHOICES = ("none", "int8", "int4")
_BITS = {"none": None, "int8": 8, "int4": 4}


def embeddings_option() -> Any:
    """The ``embeddings`` field of a weight quantizer's config (one help text for all)."""
    from compress.config import option

    return option("none", "also round the embedding tables and the LM head to int8 or int4 "
                  "with one scale per row (tied tensors once; see compress.quant.embeddings): "
                  "none, int8 or int4", choices=EMBEDDING_CHOICES)


def table_facts(choice: str, packed: dict[str, dict[str, int]]) -> dict[str, Any]:
    """What a recipe records about its tables (``context.info["quant"]``)."""
    return {"embeddings": choice, "embedding_tables": sorted(packed) or None,
            "embedding_packed_bytes": sum(b["total"] for b in packed.values())}


def embedding_spec(choice: str) -> QuantSpec | None:
    """The grid of ``choice`` (one scale per row), or None for ``none``.

    >>> embedding_spec("int4").describe()
    '4-bit asym per-channel'
    """
    if choice not in _BITS:
        raise UserError(f"embeddings={choice!r}; choose one of {', '.join(EMBEDDING_CHOICES)}")
    bits = _BITS[choice]
    return None if bits is None else QuantSpec(bits, "auto", "channel")


def embedding_targets(model: nn.Module, skip: dict[str, nn.Module] | None = None
                      ) -> dict[str, nn.Module]:
    """Name -> module of the tables and LM head to round, each distinct tensor once
    (first name wins), without the tensors of ``skip`` (modules already quantized)."""
    from compress.arch import arch_for

    spec = arch_for(model)
    named = dict(model.named_modules())
    seen = {m.weight.data_ptr() for m in (skip or {}).values()
            if isinstance(getattr(m, "weight", None), torch.Tensor)}
    out: dict[str, nn.Module] = {}
    for name in (*spec.embeddings, *spec.lm_head):
        mod = named.get(name)
        weight = getattr(mod, "weight", None)
        if not isinstance(mod, (nn.Embedding, nn.Linear)) or not isinstance(weight, nn.Parameter):
            continue
        if not weight.requires_grad or weight.dim() != 2 or weight.data_ptr() in seen:
            continue  # fixed sinusoidal tables; a tensor already counted
        seen.add(weight.data_ptr())
        out[name] = mod
    return out


def plan_bytes(modules: dict[str, nn.Module], spec: QuantSpec) -> dict[str, dict[str, int]]:
    """Packed byte breakdown of each table (rows x columns at ``spec``), before rounding:
    the cost is known without running anything."""
    return {name: layer_bytes(*mod.weight.shape, spec) for name, mod in modules.items()}


@torch.no_grad()
def quantize_embeddings(model: nn.Module, choice: str,
                        skip: dict[str, nn.Module] | None = None) -> dict[str, dict[str, int]]:
    """Round the embedding tables and LM head of ``model`` in place (see the module doc);
    returns their packed breakdowns by module name, for
    :func:`compress.quant.grid.model_size_summary`."""
    spec = embedding_spec(choice)
    if spec is None:
        return {}
    from compress.export.grid import mark_tables

    modules = embedding_targets(model, skip)
    for mod in modules.values():
        w = mod.weight.data  # (rows, hidden): one scale per row
        w.copy_(fake_quantize(w, spec))
    if modules:  # compress.export writes untied tables as integer codes
        mark_tables(model, spec, modules)
    return plan_bytes(modules, spec)
