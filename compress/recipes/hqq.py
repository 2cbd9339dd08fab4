"""``hqq``: half-quadratic quantization (Badri & Shaji 2023), weight-only, no calibration data.

Each group's zero point is optimised for a sparsity-promoting ``l_p`` reconstruction
error of the weights alone (see :mod:`compress.quant.hqq`), so HQQ needs no calibration
text and runs in seconds. The grid is asymmetric with fp16 scale and fp16 zero point
per group (4.5 bits per weight at 4-bit g64). Published: Llama-2-7B 4-bit g64 WikiText-2
5.30 vs fp16 5.18 (HQQ blog, 2023).

Family: quantization; budget knob: ``bits``.

The rounded weights are stored as fp32 (a plain model); ``quant.packed_bytes`` is the
packed size.

    python -m compress.recipes.hqq --model smollm2-135m --bits 4 --group-size 64 --out out/hqq4
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from compress.config import RecipeConfig, option
from compress.context import Context
from compress.errors import UserError
from compress.footprint import F32, ModelFacts, Need, embedding_parts
from compress.quant.embeddings import embeddings_option, quantize_embeddings, table_facts
from compress.quant.grid import (
    QuantSpec,
    layer_bytes,
    model_size_summary,
    set_weight_matrix,
    weight_matrix,
)
from compress.quant.hqq import hqq_quantize
from compress.quant.layers import select_targets
from compress.quant.report import device_of, record
from compress.registry import register_recipe
from compress.traits import Knob, Traits


@dataclass(frozen=True)
class HQQConfig(RecipeConfig):
    """HQQ: zero points optimised by half-quadratic splitting, no calibration data."""

    bits: int = option(4, "bits per weight", low=2, high=8)
    granularity: str = option("group", "weights sharing one scale: channel or group",
                              choices=("channel", "group"))
    group_size: int = option(64, "input columns per group (granularity=group)", low=2)
    lp_norm: float = option(0.7, "p of the l_p error (p < 1 promotes sparse errors)",
                            low=0.1, high=1.0)
    beta: float = option(10.0, "initial half-quadratic penalty", low=0.0, low_inclusive=False,
                         high=1e6)
    kappa: float = option(1.01, "penalty growth per iteration", low=1.0, low_inclusive=False,
                          high=10.0)
    iters: int = option(20, "solver iterations", low=1, high=1000)
    round_zero: bool = option(True, "start the solver from the integer zero point round(-min/s)"
                              " (the reference's round_zero) instead of the float -min/s")
    solver: str = option("group", "group: beta grows by kappa and each group keeps its best "
                         "iterate; reference: the hqq package's default (constant beta, all "
                         "groups of a matrix stop together)", choices=("group", "reference"))
    scale_search: str = option("relative", "choose each group's step before the zero solver, "
                               "codes fixed, by the least mean |error|: relative (within 5% of "
                               "its own step), reference (the hqq package's scale_gridsearch: "
                               "one absolute offset for all groups) or none",
                               choices=("relative", "reference", "none"))
    include_head: bool = option(False, "also quantize the LM head (tied embeddings change too)")
    embeddings: str = embeddings_option()

    def validate(self) -> None:
        if self.granularity == "group" and self.group_size < 2:
            raise UserError(f"{self._where('group_size')} must be at least 2")

    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, "asym", self.granularity, self.group_size, zero_point="float")


def hqq_memory(config: HQQConfig, facts: ModelFacts) -> Need:
    """No calibration: the solver's float copies of the largest linear (weights, grouped
    units, rounded units, error, its shrunk copy, the l_p shrinkage's temporaries; the
    bench measures 24-27 weight-sized copies at the peak)."""
    parts = {"solving the largest linear": 24 * facts.largest_linear() * F32,
             **embedding_parts(config, facts)}
    return Need(parts,
                "use rtn (no solver) or free memory")


@register_recipe(
    "hqq", HQQConfig, family="quantization",
    knobs=(Knob("bits", "down", values=(8, 6, 5, 4, 3, 2)),),
    traits=Traits(keeps_zeros=False,
                  zeros_note="HQQ's float zero point puts no grid level exactly at 0"),
    formats=(), memory=hqq_memory,
)
def hqq(model: nn.Module, config: HQQConfig, context: Context) -> nn.Module:
    """HQQ weight quantization (calibration-free zero-point optimisation), simulated in float."""
    spec = config.spec()
    packed, before, after = {}, 0.0, 0.0
    targets = select_targets(model, config.include_head)
    for name, module in targets.items():
        W = weight_matrix(module).float()
        W_hat, facts = hqq_quantize(W, spec, lp_norm=config.lp_norm, beta=config.beta,
                                    kappa=config.kappa, iters=config.iters,
                                    round_zero=config.round_zero, solver=config.solver,
                                    scale_search=config.scale_search)
        with torch.no_grad():
            set_weight_matrix(module, W_hat)
        before += facts["mean_abs_error_before"] * W.numel()
        after += facts["mean_abs_error_after"] * W.numel()
        packed[name] = layer_bytes(W.shape[0], W.shape[1], spec)
    n = sum(weight_matrix(m).numel() for m in targets.values())
    # the tables on the suite's int grid (HQQ's own float-zero search is for the linears)
    tables = quantize_embeddings(model, config.embeddings, skip=targets)
    size = model_size_summary(model, packed | tables)
    record(
        context, method="hqq", simulated=True, device=device_of(model),
        **spec.to_dict(), format=spec.describe(), layers=len(packed),
        mean_abs_error_minmax=round(before / n, 8), mean_abs_error_hqq=round(after / n, 8),
        include_head=config.include_head, **table_facts(config.embeddings, tables), **size,
        note="no calibration data; weights rounded to the grid and stored as fp32: quality of "
        "the format only; packed_bytes counts fp16 scale and fp16 zero per group",
    )
    return model


if __name__ == "__main__":
    from compress.cli import recipe_main

    sys.exit(recipe_main("hqq"))
