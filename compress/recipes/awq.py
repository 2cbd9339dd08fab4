"""``awq``: activation-aware weight quantization (Lin et al. 2023, arXiv:2306.00978), simulated.

Per-input-channel scales searched so that the channels with large activations round
with a finer effective step, then a per-group clipping search (see
:mod:`compress.quant.awq`). Weight-only, on the shared grid of
:mod:`compress.quant.grid` (asymmetric with a zero point at <= 4 bits, as the paper's
INT4-g128). Published on OPT-125M, 4-bit g128 WikiText-2: RTN 30.48, GPTQ 29.45,
AWQ 29.30 (dense 27.66). ``rounding=gptq`` rounds the scaled weights with GPTQ (the
paper's section 5 combination, for the lowest bit widths). Calibration: the context's shared set
(:mod:`compress.calibration`).

Family: quantization; budget knob: ``bits``.

The rounded weights are stored as fp32 (a plain model); ``quant.packed_bytes`` is the
packed size, with an fp16 input scale per channel of every scaled group.

    python -m compress.recipes.awq --model smollm2-135m --bits 4 --group-size 128 --out out/awq4
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch.nn as nn

from compress.calibration import calibration_set
from compress.config import RecipeConfig, option
from compress.context import Context
from compress.quant.awq import awq_model
from compress.quant.embeddings import embeddings_option, quantize_embeddings, table_facts
from compress.quant.grid import GRANULARITIES, SCHEME_CHOICES, QuantSpec, model_size_summary
from compress.quant.layers import select_targets
from compress.quant.report import device_of, record
from compress.registry import register_recipe
from compress.traits import Knob, Traits, config_memory


@dataclass(frozen=True)
class AWQConfig(RecipeConfig):
    """AWQ: activation-aware scale search and clipping search, then round to nearest."""

    bits: int = option(4, "bits per weight", low=2, high=8)
    scheme: str = option("auto", "auto: asym at <= 4 bits, sym above; sym or asym",
                         choices=SCHEME_CHOICES)
    granularity: str = option("group", "weights sharing one scale: tensor, channel or group",
                              choices=GRANULARITIES)
    group_size: int = option(128, "input columns per group (granularity=group)", low=1)
    n_grid: int = option(20, "grid points of the scale exponent search (and clip steps)",
                         low=1, high=1000)
    max_shrink: float = option(0.5, "clipping search: shrink the range by at most this share",
                               low=0.0, high=0.99)
    clip: bool = option(True, "run the clipping search after the scale search")
    rounding: str = option("rtn", "rounding of the scaled weights: rtn (the paper's AWQ) or gptq "
                           "(GPTQ in the scaled basis, the paper's AWQ+GPTQ)", choices=("rtn", "gptq"))
    embeddings: str = embeddings_option()


    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.scheme, self.granularity, self.group_size)


@register_recipe(
    "awq", AWQConfig, family="quantization",
    knobs=(Knob("bits", "down", values=(8, 6, 5, 4, 3, 2)),),
    traits=Traits(calibrates=True),
    formats=(), memory=config_memory,
)
def awq(model: nn.Module, config: AWQConfig, context: Context) -> nn.Module:
    """AWQ weight quantization (activation-aware scales and clipping), simulated in float."""
    spec = config.spec()
    cal = calibration_set(context, model, recipe="awq")
    targets = select_targets(model)
    res = awq_model(model, targets, spec, cal.batches(), n_grid=config.n_grid,
                    max_shrink=config.max_shrink, clip=config.clip, rounding=config.rounding)
    # tables are looked up, not multiplied: no activation scales to fold, round to nearest
    tables = quantize_embeddings(model, config.embeddings, skip=targets)
    size = model_size_summary(model, res.packed | tables)
    alphas = list(res.alphas.values())
    record(
        context, method="awq", simulated=True, device=device_of(model),
        **spec.to_dict(), format=spec.describe(), layers=len(res.packed), clip=config.clip,
        rounding=config.rounding,
        scale_groups=len(alphas),
        alpha_mean=round(sum(alphas) / len(alphas), 4) if alphas else None,
        uncalibrated_layers=res.uncalibrated,
        calibration_sequences=cal.record["sequences"], calibration_tokens=cal.tokens,
        **table_facts(config.embeddings, tables), **size,
        note="weights Q(W s)/s stored as fp32: quality of the format only; packed_bytes counts "
        "the packed codes plus an fp16 input scale per channel of each scaled group",
    )
    return model


if __name__ == "__main__":
    from compress.cli import recipe_main

    sys.exit(recipe_main("awq"))
