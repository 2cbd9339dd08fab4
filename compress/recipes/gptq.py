"""``gptq``: GPTQ weight quantization (Frantar et al. 2022), simulated in float.

The method to pick at 4 and 3 bits when round-to-nearest loses too much: each layer's
rounding error is compensated by second-order updates computed from calibration
activations, block by block (see :mod:`compress.quant.gptq`). Published on OPT-125M,
4-bit per-row: RTN 37.3 vs GPTQ 31.1 perplexity (dense 27.7).

Like ``rtn``, the rounded weights are stored as fp32 (plain model); the report's
``quant.packed_bytes`` is the real packed size.

    python -m compress.recipes.gptq --model smollm2-135m --bits 4 --granularity group \
        --group-size 128 --nsamples 32 --out out/smollm2-gptq4
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch.nn as nn

from compress.config import RecipeConfig, option
from compress.context import Context
from compress.footprint import F32, ModelFacts, Need, block_forward_bytes, hidden_states_bytes
from compress.quant import calib
from compress.quant.gptq import gptq_model
from compress.quant.layers import select_targets
from compress.quant.packing import model_size_summary
from compress.quant.report import device_of, record
from compress.quant.rtn import GRANULARITIES, SCHEMES, QuantSpec
from compress.registry import register_recipe
from compress.traits import Knob, Traits


@dataclass(frozen=True)
class GPTQConfig(RecipeConfig):
    """GPTQ: error-compensating weight quantization from calibration data."""

    bits: int = option(4, "bits per weight", low=2, high=8)
    scheme: str = option("sym", "sym: absmax grid around 0; asym: min/max grid with a zero point",
                         choices=SCHEMES)
    granularity: str = option("group", "weights sharing one scale: tensor, channel or group",
                              choices=GRANULARITIES)
    group_size: int = option(128, "input columns per group (granularity=group)", low=1)
    blocksize: int = option(128, "columns per lazy-update block", low=1)
    damp: float = option(0.01, "Hessian dampening, as a fraction of its mean diagonal",
                         low=0.0, high=1.0, low_inclusive=False)
    act_order: bool = option(False, "quantize columns in order of decreasing Hessian diagonal")
    nsamples: int = option(32, "calibration texts used (one sequence each)", low=1)
    seq_len: int = option(512, "max tokens per calibration text", low=8)

    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.scheme, self.granularity, self.group_size)


def gptq_memory(config: GPTQConfig, facts: ModelFacts) -> Need:
    """What :func:`compress.quant.gptq.gptq_model` holds at once: the float64 Hessians of
    every linear of one block (in_features^2 x 8 each, all accumulated before any is
    solved); solving the widest one: its Hessian's copy, the identity, the dampened
    Hessian, its Cholesky factor, the inverse and the inverse's factor (six float64
    in^2), the float32 inverse and three weight-sized float32 copies; the calibration
    hidden states (one sequence per batch, kept twice while a block's outputs replace
    its inputs); one block's forward with the float64 copies the accumulator makes."""
    n, t = config.nsamples, config.seq_len
    blocks = facts.block_linears() or [((facts.hidden, facts.hidden),)]
    hessians = max(sum(i * i * 8 for i, _ in b) for b in blocks)
    i_max, o_max = max(((i, o) for b in blocks for i, o in b), key=lambda io: io[0])
    solve = 6 * i_max * i_max * 8 + i_max * i_max * F32 + 3 * o_max * i_max * F32
    forward = block_forward_bytes(facts, 1, t) + 2 * t * i_max * 8
    hidden = hidden_states_bytes(facts, n * t)
    parts = {
        "Hessians of one block (float64)": hessians,
        "solving the widest linear": max(solve, forward + hidden),
        "calibration hidden states": hidden,
    }
    hint = ("gptq needs in_features^2 float64 Hessians per linear; use rtn (no Hessians), "
            f"fewer calibration samples (nsamples={max(1, n // 4)}), or a machine with more "
            "memory")
    return Need(parts, hint)


@register_recipe(
    "gptq", GPTQConfig, family="quantization",
    knobs=(Knob("bits", "down", values=(8, 6, 5, 4, 3, 2)),),
    traits=Traits(
        calibrates=True,
        keeps_zeros=False,
        zeros_note="GPTQ's error compensation updates every remaining weight, pruned ones "
        "included",
    ),
    formats=(), memory=gptq_memory,
)
def gptq(model: nn.Module, config: GPTQConfig, context: Context) -> nn.Module:
    """GPTQ weight quantization at 2-8 bits with second-order error compensation."""
    spec = config.spec()
    # one sequence per batch: no padding tokens pollute the Hessians.
    batches = calib.calibration_batches(
        model, context.tokenizer, context.calibration, n_samples=config.nsamples,
        seq_len=config.seq_len, batch_size=1, recipe="gptq",
    )
    targets = select_targets(model)
    packed, uncalibrated = gptq_model(model, targets, spec, batches, blocksize=config.blocksize,
                        damp=config.damp, act_order=config.act_order)
    size = model_size_summary(model, packed, targets)
    record(
        context, method="gptq", simulated=True, runs_faster_here=False, device=device_of(model),
        **spec.to_dict(), format=spec.describe(), layers=len(packed), act_order=config.act_order,
        uncalibrated_layers=uncalibrated,
        calibration_sequences=len(batches),
        calibration_tokens=int(sum(b["attention_mask"].sum() for b in batches)),
        **size,
        note="weights rounded to the grid and stored as fp32: quality of the format only; "
        "packed_bytes is the real packed size, the saved checkpoint is still fp32",
    )
    return model


if __name__ == "__main__":
    from compress.cli import recipe_main

    sys.exit(recipe_main("gptq"))
