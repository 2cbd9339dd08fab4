"""Applying a weight format to the linears the architecture table targets."""

from __future__ import annotations

import torch
import torch.nn as nn

from compress.arch import arch_for, linear_weight_in_out, targeted_linears
from compress.quant.packing import layer_bytes
from compress.quant.rtn import QuantSpec, fake_quantize, set_weight_matrix, weight_matrix


def select_targets(model: nn.Module, include_head: bool = False) -> dict[str, nn.Module]:
    """Full name -> module of the attention/cross/FFN linears (+ the LM head if asked)."""
    targets = {name: mod for name, (mod, _comp) in targeted_linears(model).items()}
    if include_head:
        spec = arch_for(model)
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and any(
                name == frag or name.endswith("." + frag) for frag in spec.lm_head
            ):
                targets[name] = mod
        out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if isinstance(out_emb, nn.Linear):
            name = next(n for n, m in model.named_modules() if m is out_emb)
            targets[name] = out_emb
    return targets


def outlier_columns_by_weight(w: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ``fraction`` of input columns with the largest max |w| (sorted)."""
    k = int(round(fraction * w.shape[1]))
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.topk(w.abs().amax(dim=0), k).indices.sort().values


def outlier_columns_by_activation(absmax: torch.Tensor, threshold: float) -> torch.Tensor:
    """Input columns whose calibration activations exceed ``threshold`` (LLM.int8's 6.0)."""
    return torch.nonzero(absmax > threshold).flatten()


def rtn_layer(module: nn.Module, spec: QuantSpec, keep: torch.Tensor | None = None) -> dict[str, int]:
    """Round ``module``'s weight in place (kept columns untouched); returns its packed bytes."""
    with torch.no_grad():
        w = weight_matrix(module).clone()  # (out, in)
        keep = keep if keep is not None else torch.zeros(0, dtype=torch.long)
        if keep.numel():
            mask = torch.ones(w.shape[1], dtype=torch.bool)
            mask[keep] = False
            w_hat = w.clone()
            if bool(mask.any()):  # every column may be an outlier
                w_hat[:, mask] = fake_quantize(w[:, mask], spec)
        else:
            w_hat = fake_quantize(w, spec)
        set_weight_matrix(module, w_hat)
    in_f, out_f = linear_weight_in_out(module)
    return layer_bytes(out_f, in_f, spec, int(keep.numel()), module.weight.element_size())
