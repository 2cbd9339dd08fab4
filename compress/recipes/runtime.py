"""``runtime``: run the model on a CPU inference engine, in fp32, int8 or int4.

The model is exported to ONNX with its KV cache (decoders and encoder-decoders) and
handed to ONNX Runtime (transformer fusions, then ``MatMulNBits`` weight-only int8/int4
with int8 compute, or ``w8a8``: dynamic int8 weights and activations) or OpenVINO (NNCF weight compression); see
:mod:`compress.quant.runtime`. The result is an ``nn.Module`` the shared benchmark and
profiler run unchanged; it saves in the ``runtime`` format and reloads with
:func:`compress.saving.load_compressed`.

Which engine and precision is fastest on a CPU is measured by ``bench/cpu_engines.py``
(reports/bench/cpu_engines.json), per architecture, against eager PyTorch with its KV
cache and against the same engine in fp32; the report's ``profile.latency_vs_dense``
and ``generate_vs_dense`` give the same-process ratio for each run. ``weights=fp32``
is the engine's own baseline: what the engine buys without quantization.

    python -m compress.recipes.runtime --model smollm2-135m --weights int4 --out out/smollm2-ort4
    python -m eval.run --model minilm-l6-sentiment --recipe runtime --engine openvino --weights int8
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
from compress.quant import onnx as oq
from compress.quant import runtime as rt
from compress.quant.layers import KeepFloatConfig, select_targets
from compress.quant.modules import conv1d_to_linear
from compress.quant.report import device_of, record
from compress.registry import register_recipe
from compress.stats import parameter_counts
from compress.traits import Traits


@dataclass(frozen=True)
class RuntimeConfig(KeepFloatConfig):
    """A CPU inference engine (ONNX Runtime or OpenVINO) at fp32, int8 or int4 weights."""

    engine: str = option("onnxruntime", "onnxruntime (fused graph, MatMulNBits), openvino "
                         "(NNCF weight compression) or llamacpp (decoders: GGUF Q8_0 / Q4_0, "
                         "needs the llamacpp extra)", choices=rt.ENGINES)
    weights: str = option("int8", "fp32 (the engine alone), int8 or int4 weights, or w8a8 "
                          "(onnxruntime: int8 weights and activations, dynamic quantization)",
                          choices=rt.WEIGHTS)
    group_size: int = option(32, "input weights per scale for int4 (and ONNX Runtime's int8)",
                             low=16)
    fuse: bool = option(True, "onnxruntime: apply its transformer fusions (attention, "
                        "LayerNorm/RMSNorm + residual, GELU) before quantizing")
    kv_cache: bool = option(True, "decoders and encoder-decoders: export the KV cache so "
                            "generation feeds one token per step")

    def validate(self) -> None:
        if self.group_size & (self.group_size - 1):
            raise UserError(f"runtime: group_size={self.group_size} must be a power of two "
                            "(16, 32, 64, 128...)")


def runtime_memory(config: RuntimeConfig, facts: ModelFacts) -> Need:
    """The export of :mod:`compress.quant.runtime`: the traced graph's weights, their
    serialised bytes and the graph the quantizer loads (three copies of the model), the
    engine's session over the quantized
    graph (the model's size at the chosen weight type); ``outlier_threshold`` adds
    calibration forwards."""
    share = {"fp32": 1.0, "int8": 0.5, "int4": 0.375, "w8a8": 0.5}.get(config.weights, 1.0)
    parts = {"exported graph and its bytes": 3 * facts.param_bytes,
             "engine session": int(facts.param_bytes * share)}
    if config.outlier_threshold is not None:
        parts.update(calib_forward_parts(facts))
    return Need(parts, "use dynamic-int8 (quantizes in place, no export) or free memory")


# symmetric int8 / int4 codes hold an exact 0
@register_recipe(
    "runtime", RuntimeConfig, family="quantization", knobs=(),
    traits=Traits(runtime_format=True, calibrates=lambda c: c.outlier_threshold is not None),
    formats=(rt.FORMAT.name,), memory=runtime_memory,
)
def runtime(model: nn.Module, config: RuntimeConfig, context: Context) -> nn.Module:
    """Export to ONNX with the KV cache; run on ONNX Runtime or OpenVINO at fp32/int8/int4."""
    if device_of(model) != "cpu":
        raise UserError("runtime exports and runs on the CPU; load the model without --device-map")
    task = oq.task_of_model(model, context.task)
    before = parameter_counts(model)
    targets = select_targets(model, views=False)
    kept = config.kept(model, targets, context, "runtime")
    conv1d_to_linear(model, set(targets))  # Conv1D traces to Gemm, which stays unquantized
    wrapped = rt.build(model, task, engine=config.engine, weights=config.weights,
                       group_size=config.group_size, fuse=config.fuse, kv_cache=config.kv_cache,
                       keep_float=list(kept), tokenizer=context.tokenizer)
    counts = wrapped.compress_parameter_counts
    meta = wrapped.meta
    bits = {"fp32": 32, "int8": 8, "int4": 4, "w8a8": 8}[config.weights]
    record(
        context, method="runtime", simulated=False, device="cpu", bits=bits,
        engine=config.engine, weights=config.weights, group_size=config.group_size, task=task,
        fused={k.removeprefix("fused_"): v for k, v in meta.items() if k.startswith("fused_")}
        or None, gguf_types=meta.get("gguf_types"), w8a8=meta.get("w8a8"),
        kv_cache=meta["cache_shapes"] is not None, kept_in_float=kept or None,
        dense_bytes=before["bytes"], packed_bytes=counts["bytes"],
        fp32_onnx_bytes=meta["fp32_onnx_bytes"],
        note=f"{config.engine} on the CPU, {config.weights} weights; generate() is greedy, "
        + ("one token per step with the exported KV cache" if meta["cache_shapes"] is not None
           else "re-running the prefix each step (no KV cache)" if task in ("causal-lm", "seq2seq")
           else "encoder only")
        + "; reload with compress.saving.load_compressed",
    )
    return wrapped


if __name__ == "__main__":
    from compress.cli import recipe_main

    sys.exit(recipe_main("runtime"))
