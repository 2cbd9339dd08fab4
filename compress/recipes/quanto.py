"""``quanto``: optimum-quanto int8 / int4 weights, optionally int8 activations.

The optimum route: ``optimum.quanto.quantize`` + ``freeze`` on the targeted linears
(GPT-2 ``Conv1D`` converted to ``Linear`` first); with ``activations=int8`` a
calibration pass records activation scales first. Weights are really stored in int8 /
packed int4 (int4 in groups of 128 with scale and shift). Its speed against fp32 is
each run's ``profile.latency_vs_dense``, and ``bench/quant_speed.py --extra quanto-int8``
(reports/bench/quant_speed.json) compares it with the other int8 paths. The weights are
frozen inside ``torch.inference_mode`` (optimum-quanto 0.2.7's int4 weights frozen
outside it fail under ``inference_mode``), so the result is for inference only. Reload with
:func:`compress.saving.load_compressed` (format ``quanto``).

    python -m compress.recipes.quanto --model smollm2-135m --weights int4 --out out/smol-q4
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch.nn as nn

from compress.calibration import calibration_batches
from compress.config import RecipeConfig, option
from compress.context import Context
from compress.quant import quanto as quanto_q
from compress.quant.layers import select_targets
from compress.quant.modules import conv1d_to_linear, state_counts
from compress.quant.report import device_of, record
from compress.registry import register_recipe
from compress.stats import parameter_counts
from compress.traits import Traits, config_memory


@dataclass(frozen=True)
class QuantoConfig(RecipeConfig):
    """optimum-quanto weight (and optional activation) quantization."""

    weights: str = option("int8", "weight type", choices=("int8", "int4"))
    activations: str = option("none", "activation type (int8 needs calibration text)",
                              choices=("none", "int8"))
    include_head: bool = option(False, "also quantize the LM head")

    VERSION = 2  # calibration moved to the context (compress.calibration)



@register_recipe(
    "quanto", QuantoConfig, family="quantization", knobs=(),
    traits=Traits(runtime_format=True, calibrates=lambda c: c.activations != "none"),
    formats=(quanto_q.FORMAT.name,), memory=config_memory,
)
def quanto(model: nn.Module, config: QuantoConfig, context: Context) -> nn.Module:
    """optimum-quanto int8/int4 weights, optional int8 activations after calibration."""
    before = parameter_counts(model)
    targets = select_targets(model, config.include_head, views=False)
    activations = None if config.activations == "none" else config.activations
    batches = None
    if activations:
        batches = calibration_batches(context, model, recipe="quanto with int8 activations")
    model._compress_conv1d_converted = conv1d_to_linear(model, set(targets))
    quanto_q.quantize(model, list(targets), config.weights, activations, batches)
    model._compress_logical_counts = before
    counts = state_counts(model, before)
    model.compress_parameter_counts = counts
    record(
        context, method="quanto", simulated=False, device=device_of(model),
        weights=config.weights, activations=config.activations, layers=len(targets),
        bits=8 if config.weights == "int8" else 4,
        group_size=128 if config.weights == "int4" else None,
        dense_bytes=before["bytes"], packed_bytes=counts["bytes"],
        note="optimum-quanto: real packed weights, inference only; speed against fp32: "
        "profile.latency_vs_dense",
    )
    return model


if __name__ == "__main__":
    from compress.cli import recipe_main

    sys.exit(recipe_main("quanto"))
