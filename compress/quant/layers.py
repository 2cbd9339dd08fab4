"""Applying a weight format to the linears the architecture table targets."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from compress.arch import ExpertLinear, arch_for, linear_weight_in_out, targeted_linears
from compress.config import RecipeConfig, option
from compress.quant.grid import (
    QuantSpec,
    fake_quantize,
    layer_bytes,
    set_weight_matrix,
    weight_matrix,
)


def select_targets(model: nn.Module, include_head: bool = False, views: bool = True
                   ) -> dict[str, nn.Module]:
    """Full name -> module of the attention/cross/FFN linears (+ the LM head if asked).

    ``views=False`` leaves out native MoE experts, which are slices of one 3-D tensor
    (:class:`compress.arch.ExpertLinear`), not modules: for backends that replace modules.
    """
    targets = {name: mod for name, (mod, _comp) in targeted_linears(model).items()
               if views or not isinstance(mod, ExpertLinear)}
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


def _matches(name: str, fragment: str) -> bool:
    """``fragment`` names whole dotted components of ``name`` (``down_proj``, ``layers.3``)."""
    return f".{fragment}." in f".{name}."


def kept_in_float(
    model: nn.Module,
    targets: dict[str, nn.Module],
    *,
    skip: str,
    outlier_threshold: float | None,
    context,
    recipe: str,
) -> dict[str, float | None]:
    """Targets to leave in float for a real-int8 runtime: name -> calibration max |x|.

    Dynamic int8 quantizes each activation tensor with one scale, so a linear whose
    inputs carry a few huge features (SmolLM2's late ``down_proj`` inputs reach |x| ~ 500
    while their median is ~ 1) loses every small feature to rounding. LLM.int8 keeps
    such *columns* in fp16; a runtime with whole-matrix kernels can only keep whole
    *layers*. ``skip`` lists name fragments (comma-separated whole dotted components,
    e.g. ``down_proj`` or ``layers.29.mlp``); ``outlier_threshold`` keeps every target
    whose calibration inputs exceed it (needs calibration text).
    """
    from compress.errors import UserError
    from compress.quant import calib

    kept: dict[str, float | None] = {}
    for frag in (f.strip() for f in skip.split(",") if f.strip()):
        hits = [n for n in targets if _matches(n, frag)]
        if not hits:
            sample = ", ".join(list(targets)[:3])
            raise UserError(f"{recipe}: skip={frag!r} matches no quantized linear; give whole "
                            f"name components of the linears, e.g. of {sample}")
        kept.update({n: None for n in hits})
    if outlier_threshold is not None:
        from compress.calibration import calibration_batches

        batches = calibration_batches(context, model, recipe=f"{recipe} with outlier_threshold")
        absmax = calib.input_absmax(model, targets, batches)
        kept.update({n: round(float(a.max()), 2) for n, a in absmax.items()
                     if float(a.max()) > outlier_threshold})
    if kept and len(kept) == len(targets):
        raise UserError(f"{recipe}: every targeted linear would stay in float, so nothing is "
                        "quantized; raise outlier_threshold or shorten skip")
    return kept


@dataclass(frozen=True)
class KeepFloatConfig(RecipeConfig):
    """Options of the real-int8 runtimes for leaving outlier-heavy linears in float."""

    skip: str = option("", "linears kept in float: comma-separated name components, "
                       "e.g. down_proj or layers.29.mlp")
    outlier_threshold: float | None = option(
        None, "keep in float every linear whose calibration inputs exceed this |x| "
        "(SmolLM2: 40 keeps 11-12 of its 30 down_proj, by calibration set)", low=0.0, low_inclusive=False)

    VERSION = 2  # calibration moved to the context (compress.calibration)


    def kept(self, model: nn.Module, targets: dict[str, nn.Module], context, recipe: str):
        return kept_in_float(model, targets, skip=self.skip,
                             outlier_threshold=self.outlier_threshold, context=context,
                             recipe=recipe)
