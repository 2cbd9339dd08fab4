"""Calibration statistics for MoEfication: the hidden states entering every FFN.

The tokens are the context's shared calibration set (:mod:`compress.calibration`), fed
one sequence at a time (batch 1) by the ``moefy`` recipe, so no padding token ever
reaches the statistics. Hooks are removed before this returns, whatever happens.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from compress.moe.convert import Site


@torch.no_grad()
def capture_ffn_inputs(
    model: nn.Module, sites: list[Site], inputs: list[dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Site name -> (tokens, d) float32 CPU tensor of the hidden states entering its FFN."""
    store: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}

    def make(name: str, d: int):
        def hook(_module, args):
            store[name].append(args[0].detach().reshape(-1, d).float().cpu())

        return hook

    handles = []
    try:
        for site in sites:
            parent, attr = site.owner
            d = site.dense().hidden
            handles.append(getattr(parent, attr).register_forward_pre_hook(make(site.name, d)))
        for batch in inputs:
            kwargs = dict(batch)
            if getattr(getattr(model, "config", None), "use_cache", None) is not None:
                kwargs["use_cache"] = False
            model(**kwargs)
    finally:
        for h in handles:
            h.remove()
    return {name: torch.cat(chunks) for name, chunks in store.items() if chunks}
