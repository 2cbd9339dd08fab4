"""``onnx-int8``: export to ONNX and quantize with ONNX Runtime's dynamic int8 (CPU).

The result is an :class:`compress.quant.onnx.OnnxModel`: an ``nn.Module`` around an
ONNX Runtime session, taking ``input_ids`` / ``attention_mask`` (/ decoder inputs) and
returning ``.logits`` like the original model, so the shared benchmark and profiler
run it unchanged. ``optimum-onnx`` cannot share an environment with transformers 5,
so this calls ``torch.onnx.export`` and ``onnxruntime.quantization`` directly.
A causal LM's graph carries its KV cache (``past_*`` in, ``present_*`` out), so
``generate`` feeds one token per step; seq2seq ``generate`` re-runs the decoder prefix
each step. Reload with
:func:`compress.saving.load_compressed` (format ``onnx-int8``: ``model.onnx`` + JSON).

    python -m compress.recipes.onnx_int8 --model minilm-l6-sentiment --out out/minilm-onnx8
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch.nn as nn

from compress.calib_footprint import calib_forward_parts
from compress.config import option
from compress.context import Context
from compress.errors import UserError
from compress.footprint import ModelFacts, Need
from compress.quant import onnx as onnx_q
from compress.quant.layers import KeepFloatConfig, select_targets
from compress.quant.modules import conv1d_to_linear
from compress.quant.report import device_of, record
from compress.registry import register_recipe
from compress.stats import parameter_counts
from compress.traits import Traits


@dataclass(frozen=True)
class OnnxInt8Config(KeepFloatConfig):
    """ONNX Runtime dynamic int8 (all MatMuls with constant weights, LM head included)."""

    per_channel: bool = option(False, "one int8 scale per output channel (else per tensor)")
    reduce_range: bool | None = option(
        None, "7-bit weights; default: on for per_channel on an x86 CPU without VNNI, whose "
        "int16 accumulation 8-bit per-channel weights overflow")
    kv_cache: bool = option(True, "causal LMs: export the KV cache as graph inputs/outputs so "
                            "generation feeds one token per step")


def onnx_int8_memory(config: OnnxInt8Config, facts: ModelFacts) -> Need:
    """The export and quantization copies of :func:`compress.quant.onnx.build`: the
    traced graph's initializers (one copy of the weights), their serialised protobuf
    (another) and the fp32 graph the quantizer loads (a third), beside its int8 weights,
    then the int8 graph's bytes, its ONNX Runtime session and the initializer count (the
    bench measures about four copies of the weights at the peak)."""
    parts = {"exported graph and its bytes": 3 * facts.param_bytes,
             "int8 graph, session and counts": facts.param_bytes // 2}
    if config.outlier_threshold is not None:
        parts.update(calib_forward_parts(facts))
    return Need(parts, "use dynamic-int8 (quantizes in place, no export) or free memory")


# symmetric int8 codes hold an exact 0
@register_recipe(
    "onnx-int8", OnnxInt8Config, family="quantization", knobs=(),
    traits=Traits(runtime_format=True, calibrates=lambda c: c.outlier_threshold is not None),
    formats=(onnx_q.FORMAT.name,), memory=onnx_int8_memory,
)
def onnx_int8(model: nn.Module, config: OnnxInt8Config, context: Context) -> nn.Module:
    """Export to ONNX, quantize to dynamic int8 with ONNX Runtime, wrap as a model."""
    if device_of(model) != "cpu":
        raise UserError("onnx-int8 exports and runs on the CPU; load the model without --device-map")
    task = onnx_q.task_of_model(model, context.task)
    before = parameter_counts(model)
    targets = select_targets(model, views=False)
    kept = config.kept(model, targets, context, "onnx-int8")
    # GPT-2's Conv1D traces to Gemm, which the quantizer (MatMul only) would leave in fp32
    conv1d_to_linear(model, set(targets))
    reduce_range = config.reduce_range
    if reduce_range is None:
        reduce_range = config.per_channel and onnx_q.x86_without_vnni()
    wrapped = onnx_q.build(model, task, per_channel=config.per_channel,
                           reduce_range=reduce_range, keep_float=list(kept),
                           kv_cache=config.kv_cache)
    counts = wrapped.compress_parameter_counts
    record(
        context, method="onnx-int8", simulated=False, device="cpu",
        bits=8, weights=("int7" if reduce_range else "int8") + " "
        + ("per-channel" if config.per_channel else "per-tensor"),
        activations="int8 dynamic (per batch)", task=task, reduce_range=reduce_range,
        int8_weights=counts["int8_elements"],
        dense_bytes=before["bytes"], packed_bytes=counts["bytes"],
        fp32_onnx_bytes=wrapped.meta["fp32_onnx_bytes"], kept_in_float=kept or None,
        kv_cache=wrapped.cache_shapes is not None,
        note="ONNX Runtime MatMulInteger on the CPU; generate() is greedy, "
        + ("one token per step with the exported KV cache" if wrapped.cache_shapes is not None
           else "re-running the prefix each step (no KV cache)")
        + "; reload with compress.saving.load_compressed",
    )
    return wrapped


if __name__ == "__main__":
    from compress.cli import recipe_main

    sys.exit(recipe_main("onnx-int8"))
