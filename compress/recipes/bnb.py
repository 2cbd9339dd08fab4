"""``bnb-int8`` and ``bnb-4bit``: bitsandbytes quantization through ``BitsAndBytesConfig``.

* ``bnb-int8``: LLM.int8() (Dettmers et al. 2022): int8 weights per row; activation
  columns whose magnitude exceeds ``threshold`` run in 16-bit (mixed decomposition).
* ``bnb-4bit``: 4-bit weights in blocks of 64, NormalFloat4 (``nf4``, QLoRA, Dettmers
  et al. 2023) or plain ``fp4``; ``double_quant`` quantizes the block scales too;
  ``compute_dtype`` is the dtype the weights are dequantized to for each matmul.

bitsandbytes has 8-bit and 4-bit formats only: other bit widths are an error (use
``rtn`` or ``gptq``). On a CPU both save memory; their speed against fp32 is each run's
``profile.latency_vs_dense`` and ``bench/quant_speed.py --extra bnb-int8 bnb-4bit``
(reports/bench/quant_speed.json); on CUDA they use bitsandbytes' kernels. The report's ``quant.device`` records which, and its
``profile.latency_vs_dense`` the measured speed against fp32. The result is a plain transformers model
with the quantization config in ``config.json`` (``from_pretrained`` reloads it).

    python -m compress.recipes.bnb --help            # (two recipes: run via eval.run)
    python -m eval.run --model smollm2-135m --recipe bnb-4bit --quant-type nf4
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from compress.config import RecipeConfig, option
from compress.context import Context
from compress.errors import UserError
from compress.footprint import ModelFacts, Need
from compress.quant import bnb as bnb_q
from compress.quant.layers import select_targets
from compress.quant.report import record
from compress.registry import register_recipe
from compress.stats import parameter_counts
from compress.traits import Traits

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _bits_error(recipe: str, bits: int, supported: int) -> UserError:
    return UserError(
        f"{recipe}: bits={bits} is not supported; bitsandbytes has 8-bit (bnb-int8) and 4-bit "
        f"(bnb-4bit) formats only, this recipe is {supported}-bit; for 2- or 3-bit weights "
        "use rtn or gptq"
    )


@dataclass(frozen=True)
class BnbInt8Config(RecipeConfig):
    """LLM.int8 via bitsandbytes (int8 weights, fp16 outlier columns above a threshold)."""

    bits: int = option(8, "weight bits (bitsandbytes int8: 8 only)", low=1, high=16)
    threshold: float = option(6.0, "activation magnitude above which a column runs in 16-bit "
                              "(LLM.int8 outlier threshold; 0 disables the decomposition)", low=0.0)

    def validate(self) -> None:
        if self.bits != 8:
            raise _bits_error("bnb-int8", self.bits, 8)


@dataclass(frozen=True)
class Bnb4bitConfig(RecipeConfig):
    """4-bit NF4 / FP4 via bitsandbytes (blocks of 64, optional double quantization)."""

    bits: int = option(4, "weight bits (bitsandbytes 4-bit: 4 only)", low=1, high=16)
    quant_type: str = option("nf4", "4-bit data type: nf4 (NormalFloat) or fp4",
                             choices=("nf4", "fp4"))
    double_quant: bool = option(True, "also quantize the per-block scales (saves ~0.37 bit/weight)")
    compute_dtype: str = option("float32", "dtype weights are dequantized to for each matmul",
                                choices=tuple(DTYPES))

    def validate(self) -> None:
        if self.bits != 4:
            raise _bits_error("bnb-4bit", self.bits, 4)


def _finish(model: nn.Module, out: nn.Module, context: Context, method: str, device: str,
            before: dict[str, int], n_targets: int, **facts) -> nn.Module:
    counts = bnb_q.storage_counts(out, before)
    out.compress_parameter_counts = counts
    record(
        context, method=method, simulated=False,
        device=device, layers=n_targets - len(out._compress_kept_fp32),
        kept_fp32=out._compress_kept_fp32, dense_bytes=before["bytes"], packed_bytes=counts["bytes"],
        **facts,
        note=("bitsandbytes on the CPU: memory savings, no speedup (weights are dequantized "
              "for every matmul)" if device == "cpu" else
              "bitsandbytes CUDA kernels; speed relative to fp16/fp32 measured by the profiler"),
    )
    return out


def reload_parts(facts: ModelFacts, bits: int) -> dict[str, int]:
    """What :func:`compress.quant.bnb.requantize` holds: ``save_pretrained`` serialises
    every tensor to bytes before writing (one copy of the model), then ``from_pretrained``
    reads the file through a memory map (its pages count while the weights are
    converted) into a new model: the quantized linears (``bits`` per weight) and the
    other weights in float32."""
    quantized = facts.linear_bytes * bits // (8 * max(facts.elem, 1))
    other = max(facts.param_bytes - facts.linear_bytes, 0)
    return {"file pages of the reload": facts.param_bytes,
            "the quantized model": quantized + other}


BNB_HINT = ("bitsandbytes reloads the model through a file; use rtn or gptq (simulated, in "
            "place) or quanto, or free memory")


def bnb_int8_memory(config: BnbInt8Config, facts: ModelFacts) -> Need:
    return Need(reload_parts(facts, 8), BNB_HINT)


def bnb_4bit_memory(config: Bnb4bitConfig, facts: ModelFacts) -> Need:
    return Need(reload_parts(facts, 4), BNB_HINT)


# int8 / NF4 / FP4 codes all hold an exact 0; bitsandbytes models save with
# save_pretrained (their quantization_config) in the "bnb" format, whose loader keeps the
# portable CPU layout.
@register_recipe("bnb-int8", BnbInt8Config, family="quantization", knobs=(),
                 traits=Traits(runtime_format=True), formats=(bnb_q.FORMAT.name,),
                 memory=bnb_int8_memory)
def bnb_int8(model: nn.Module, config: BnbInt8Config, context: Context) -> nn.Module:
    """LLM.int8 via bitsandbytes: int8 weights, 16-bit outlier columns."""
    from transformers import BitsAndBytesConfig

    device = bnb_q.check_device(model, "bnb-int8")
    before = parameter_counts(model)
    targets = set(select_targets(model, views=False))
    qc = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=config.threshold)
    out = bnb_q.requantize(model, qc, targets)
    bnb_q.quiet_cast_notice()  # recorded once here instead of logged on every matmul
    return _finish(model, out, context, "bnb-int8", device, before, len(targets), bits=8,
                   threshold=config.threshold, format="LLM.int8 (int8 per row + fp16 outliers)",
                   cpu_activations="cast to float16 by bitsandbytes" if device == "cpu" else None)


@register_recipe("bnb-4bit", Bnb4bitConfig, family="quantization", knobs=(),
                 traits=Traits(runtime_format=True), formats=(bnb_q.FORMAT.name,),
                 memory=bnb_4bit_memory)
def bnb_4bit(model: nn.Module, config: Bnb4bitConfig, context: Context) -> nn.Module:
    """4-bit NF4 or FP4 weights via bitsandbytes (blockwise, optional double quantization)."""
    from transformers import BitsAndBytesConfig

    device = bnb_q.check_device(model, "bnb-4bit")
    before = parameter_counts(model)
    targets = set(select_targets(model, views=False))
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=config.quant_type,
                            bnb_4bit_use_double_quant=config.double_quant,
                            bnb_4bit_compute_dtype=DTYPES[config.compute_dtype])
    out = bnb_q.requantize(model, qc, targets)
    return _finish(model, out, context, "bnb-4bit", device, before, len(targets), bits=4,
                   quant_type=config.quant_type, double_quant=config.double_quant,
                   compute_dtype=config.compute_dtype, block_size=64,
                   format=f"{config.quant_type} blocks of 64" + (" + double quant" if config.double_quant else ""))


if __name__ == "__main__":
    from compress.cli import recipe_main

    name = "bnb-4bit"
    if len(sys.argv) > 1 and sys.argv[1] in ("int8", "4bit"):
        name = f"bnb-{sys.argv.pop(1)}"
    sys.exit(recipe_main(name))
