"""Parameter counts that structural targets are stated in.

A structural target ("keep 0.75 of the parameters") is stated in **non-embedding
parameters** (Kaplan et al. 2020's convention): every parameter except the token,
position and type embedding tables and the LM head (the vocabulary projection, tied to
the token embedding or not). Those tables are a large share of a small model's
parameters (SmolLM2-135M: 28.3M of 134.5M) but cost almost no compute per token, and
depth pruning cannot change them. Shared tensors are counted once.

>>> non_embedding(model)                        # doctest: +SKIP
106204032
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn

from compress.arch import ArchSpec, arch_for


def _unique(params: Iterable[nn.Parameter], seen: set[int]) -> int:
    total = 0
    for p in params:
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def embedding_ids(model: nn.Module, spec: ArchSpec | None = None) -> set[int]:
    """Ids of the parameters of the embedding tables and the LM head."""
    spec = spec or arch_for(model)
    modules = dict(model.named_modules())
    ids: set[int] = set()
    for name in (*spec.embeddings, *spec.lm_head):
        mod = modules.get(name)
        if mod is not None:
            ids.update(id(p) for p in mod.parameters())
    # a head tied to the input embeddings may not be listed under either name
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None:
        ids.update(id(p) for p in emb.parameters())
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(out, nn.Module):
        ids.update(id(p) for p in out.parameters())
    return ids


def total(model: nn.Module) -> int:
    return _unique(model.parameters(), set())


def non_embedding(model: nn.Module, spec: ArchSpec | None = None) -> int:
    """Parameters outside the embedding tables and the LM head (shared ones once)."""
    skip = embedding_ids(model, spec)
    return _unique((p for p in model.parameters() if id(p) not in skip), set())


def block_params(model: nn.Module, spec: ArchSpec | None = None) -> dict[str, list[int]]:
    """Per stack role: the parameters each block owns (shared-weight stacks: the block's
    parameters once, then 0 for its further calls)."""
    spec = spec or arch_for(model)
    out: dict[str, list[int]] = {}
    for stack in spec.stacks:
        blocks = model.get_submodule(stack.path)
        counts = [_unique(b.parameters(), set()) for b in blocks]
        if stack.calls_per_block > 1:
            counts = counts + [0] * (len(counts) * (stack.calls_per_block - 1))
        out[stack.role] = counts
    return out


def summary(model: nn.Module) -> dict[str, int]:
    return {"total": total(model), "non_embedding": non_embedding(model)}


__all__ = ["block_params", "embedding_ids", "non_embedding", "summary", "total"]
