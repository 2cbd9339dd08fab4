"""``dynamic-int8``: int8 weights and dynamic int8 activations with ``torch.ao`` (CPU).

Real int8 kernels (fbgemm / onednn). Whether that is faster than fp32 depends on the
CPU (its ISA flags: VNNI, AMX), so it is measured, never assumed: each run's
``profile.latency_vs_dense`` is the same-process ratio to fp32, and
``reports/bench/quant_speed.json`` (``bench/quant_speed.py``, quiet machine, 0.014 other
cores; written before the JSON recorded the CPU) gives fp32 / dynamic-int8 time of 1.19
per generated SmolLM2 token, 1.10 for its 1 x 128 prefill and 1.00 for MiniLM at
8 x 128. Linears with huge activation outliers can be
left in float (``skip``, ``outlier_threshold``): one int8 scale per activation tensor
otherwise rounds their small features away (SmolLM2: perplexity 20 -> 73). Each targeted
``nn.Linear`` (GPT-2 ``Conv1D`` converted first) becomes a ``DynamicQuantizedLinear``
with int8 weights (per output channel by default); activations are quantized per batch
at run time. Only for CPU inference; the saved folder reloads with
:func:`compress.saving.load_compressed` (format ``dynamic-int8``, see
:mod:`compress.quant.dynamic`).

    python -m compress.recipes.dynamic_int8 --model minilm-l6-sentiment --out out/minilm-dq8
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch.nn as nn

from compress.calib_footprint import calib_forward_parts, calib_hint
from compress.config import option
from compress.context import Context
from compress.errors import UserError
from compress.footprint import F32, ModelFacts, Need
from compress.quant import dynamic
from compress.quant.layers import KeepFloatConfig, select_targets
from compress.quant.modules import conv1d_to_linear
from compress.quant.report import device_of, record
from compress.registry import register_recipe
from compress.stats import parameter_counts
from compress.traits import Traits


@dataclass(frozen=True)
class DynamicInt8Config(KeepFloatConfig):
    """torch.ao dynamic int8 quantization of the linears (CPU, real int8 kernels)."""

    per_channel: bool = option(True, "one int8 scale per output channel (else one per tensor)")
    include_head: bool = option(False, "also quantize the LM head (an nn.Linear)")


def dynamic_int8_memory(config: DynamicInt8Config, facts: ModelFacts) -> Need:
    """The packed int8 weights made beside the float ones (one byte per weight) and the
    largest linear's float temporaries; ``outlier_threshold`` adds calibration forwards."""
    parts = {"int8 weights": facts.linear_bytes // max(facts.elem, 1),
             "quantizing the largest linear": 2 * facts.largest_linear() * F32}
    if getattr(config, "outlier_threshold", None) is not None:
        parts.update(calib_forward_parts(facts))
    return Need(parts, calib_hint(facts, "outlier_fraction instead of outlier_threshold (no "
                                         "calibration)"))


# symmetric int8 codes hold an exact 0
@register_recipe(
    "dynamic-int8", DynamicInt8Config, family="quantization", knobs=(),
    traits=Traits(runtime_format=True, calibrates=lambda c: c.outlier_threshold is not None),
    formats=(dynamic.FORMAT.name,), memory=dynamic_int8_memory,
)
def dynamic_int8(model: nn.Module, config: DynamicInt8Config, context: Context) -> nn.Module:
    """torch.ao dynamic int8: int8 weights, int8 activations quantized at run time (CPU)."""
    device = device_of(model)
    if device != "cpu":
        raise UserError(f"dynamic-int8 runs on the CPU only; the model is on {device} "
                        "(load it without --device-map)")
    before = parameter_counts(model)
    targets = select_targets(model, config.include_head, views=False)
    kept = config.kept(model, targets, context, "dynamic-int8")
    model._compress_conv1d_converted = conv1d_to_linear(model, set(targets))
    quantized = [n for n in targets if n not in kept]
    dynamic.quantize(model, quantized, per_channel=config.per_channel)
    after = dynamic.size_counts(model)
    model.compress_parameter_counts = after
    record(
        context, method="dynamic-int8", simulated=False, device="cpu",
        bits=8, weights="int8 " + ("per-channel" if config.per_channel else "per-tensor"),
        activations="int8 dynamic (per batch)", layers=len(quantized),
        kept_in_float=kept or None,
        conv1d_converted=len(model._compress_conv1d_converted),
        dense_bytes=before["bytes"], packed_bytes=after["bytes"],
        note="real int8 GEMM via torch.ao (fbgemm/onednn); speed against fp32 on this CPU "
        "in reports/bench/quant_speed.json; reload with compress.saving.load_compressed",
    )
    return model


if __name__ == "__main__":
    from compress.cli import recipe_main

    sys.exit(recipe_main("dynamic-int8"))
