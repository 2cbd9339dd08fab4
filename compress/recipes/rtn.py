"""``rtn``: round-to-nearest weight quantization, simulated in float.

The shared grid of :mod:`compress.quant.grid`: asymmetric with a zero point at <= 4
bits and symmetric above by default (``scheme=auto``); per tensor, per output channel, or per
group of input columns (32/64/128); 8, 4, 3 or 2 bits. An LLM.int8-style outlier
option keeps the largest-magnitude input columns in full precision, chosen either as
a fraction of columns (ranked by weight magnitude) or by an activation threshold
measured on calibration data (Dettmers et al. 2022, "LLM.int8()").

The rounded weights are stored back as fp32, so the result is a plain model that
``save_pretrained`` round-trips; its quality is the format's quality, while its bytes
and speed are still fp32's. The report's ``quant.packed_bytes`` is the real packed size
(bits x weights + fp16 scales + zero points + kept outliers, see
:mod:`compress.quant.grid`).

Family: quantization; budget knob: ``bits``.

    python -m compress.recipes.rtn --model smollm2-135m --bits 4 --granularity group \
        --group-size 128 --out out/smollm2-rtn4
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch.nn as nn

from compress.calibration import calibration_batches
from compress.config import RecipeConfig, option
from compress.context import Context
from compress.errors import UserError
from compress.export import compressed_tensors
from compress.export.grid import mark
from compress.quant import calib
from compress.quant.embeddings import embeddings_option, quantize_embeddings, table_facts
from compress.quant.grid import (
    GRANULARITIES,
    SCHEME_CHOICES,
    QuantSpec,
    model_size_summary,
    weight_matrix,
)
from compress.quant.layers import (
    outlier_columns_by_activation,
    outlier_columns_by_weight,
    rtn_layer,
    select_targets,
)
from compress.quant.report import device_of, record
from compress.registry import register_recipe
from compress.traits import Knob, Traits, config_memory


@dataclass(frozen=True)
class RTNConfig(RecipeConfig):
    """Round-to-nearest weight quantization (simulated in float)."""

    VERSION = 2  # calibration moved to the context; scheme auto (asym at <= 4 bits)

    bits: int = option(8, "bits per weight", low=2, high=8)
    scheme: str = option("auto", "auto: asym at <= 4 bits, sym above; sym: absmax grid around 0; "
                         "asym: min/max grid with a zero point", choices=SCHEME_CHOICES)
    granularity: str = option("channel", "weights sharing one scale: tensor, channel "
                              "(per output row) or group (of input columns)", choices=GRANULARITIES)
    group_size: int = option(128, "input columns per group (granularity=group)", low=1)
    outlier_fraction: float = option(0.0, "fraction of input columns (largest max |w|) kept "
                                     "in full precision", low=0.0, high=0.5)
    outlier_threshold: float | None = option(None, "keep input columns whose calibration "
                                             "activations exceed this |x| (LLM.int8 uses 6.0)",
                                             low=0.0, low_inclusive=False)
    include_head: bool = option(False, "also quantize the LM head (tied embeddings change too)")
    embeddings: str = embeddings_option()


    def validate(self) -> None:
        if self.outlier_fraction > 0 and self.outlier_threshold is not None:
            raise UserError("rtn: give outlier_fraction or outlier_threshold, not both")

    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.scheme, self.granularity, self.group_size)


# symmetric and asymmetric grids both represent 0.0 exactly (the zero point is an
# integer, compress.quant.rtn), so rounding keeps every zero a zero.
@register_recipe(
    "rtn", RTNConfig, family="quantization",
    knobs=(Knob("bits", "down", values=(8, 6, 5, 4, 3, 2)),),
    traits=Traits(calibrates=lambda c: c.outlier_threshold is not None),
    formats=(compressed_tensors.FORMAT.name,), memory=config_memory,
)
def rtn(model: nn.Module, config: RTNConfig, context: Context) -> nn.Module:
    """Round-to-nearest weight quantization at 2-8 bits, simulated in float."""
    spec = config.spec()
    targets = select_targets(model, config.include_head)
    absmax = {}
    if config.outlier_threshold is not None:
        batches = calibration_batches(context, model, recipe="rtn with outlier_threshold")
        absmax = calib.input_absmax(model, targets, batches)
    packed, kept = {}, 0
    for name, module in targets.items():
        if config.outlier_threshold is not None:
            keep = outlier_columns_by_activation(absmax[name], config.outlier_threshold)
        else:
            keep = outlier_columns_by_weight(weight_matrix(module), config.outlier_fraction)
        kept += int(keep.numel())
        packed[name] = rtn_layer(module, spec, keep)
    tables = quantize_embeddings(model, config.embeddings, skip=targets)
    size = model_size_summary(model, packed | tables)
    # the grid's shape on the model: compress.export writes it as integer codes
    mark(model, spec, targets, outlier_columns=kept)
    record(
        context, method="rtn", simulated=True, device=device_of(model),
        **spec.to_dict(), format=spec.describe(), layers=len(packed), outlier_columns=kept,
        outlier_rule=(f"activation>{config.outlier_threshold:g}" if config.outlier_threshold
                      else f"weight top {config.outlier_fraction:g}" if config.outlier_fraction
                      else None),
        include_head=config.include_head, **table_facts(config.embeddings, tables), **size,
        note="weights rounded to the grid and stored as fp32: quality of the format only; "
        "packed_bytes is the real packed size, the saved checkpoint is still fp32",
    )
    return model


if __name__ == "__main__":
    from compress.cli import recipe_main

    sys.exit(recipe_main("rtn"))
