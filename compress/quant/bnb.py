"""bitsandbytes through transformers' ``BitsAndBytesConfig``: LLM.int8 and 4-bit NF4/FP4.

A recipe receives an already-loaded fp32 model; bitsandbytes quantizes while loading,
so :func:`requantize` saves the model to a temporary folder and reloads it with a
``quantization_config`` (``device_map`` = the model's device). The result is an
ordinary transformers model with ``Linear8bitLt`` / ``Linear4bit`` layers that
``save_pretrained`` / ``from_pretrained`` round-trip (the quantization config is
written into ``config.json``).

Only the linears the architecture table targets are converted: every other linear
(LM head, classifier, pooler) is passed in ``llm_int8_skip_modules``.

On the CPU these layers save memory; every matmul dequantizes the weights first
(LLM.int8's CPU path also casts activations to fp16), so expect no speed-up: the
measured ratio is each run's ``profile.latency_vs_dense`` (and
``bench/quant_speed.py --extra bnb-int8 bnb-4bit``, reports/bench/quant_speed.json).
On CUDA they use bitsandbytes' kernels. The report records which.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compress.arch import is_transposed
from compress.arch.util import is_linear
from compress.errors import UserError
from compress.saving import Format, register_format


def bnb_layer_types() -> tuple[type, ...]:
    import bitsandbytes as bnb

    return (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)


def requantize(model: nn.Module, quantization_config: Any, targets: set[str]) -> nn.Module:
    """Reload ``model`` through ``from_pretrained`` with ``quantization_config``.

    On CPUs with AVX-512 BF16, bitsandbytes repacks 4-bit weights in blocks of its
    ``blocksize`` (64) input columns and fails on a linear with fewer input features or
    a width that is not a multiple of it: those linears stay in float (listed in
    ``_compress_kept_fp32``).
    """
    device = next(model.parameters()).device
    asked = set(targets)
    modules = dict(model.named_modules())
    # transformers converts exactly nn.Linear / Conv1D (not subclasses such as FalconLinear)
    targets = {n for n in targets if type(modules[n]) is nn.Linear or is_transposed(modules[n])}
    if asked and not targets:
        kinds = sorted({type(modules[n]).__name__ for n in asked})
        raise UserError(f"bitsandbytes through transformers converts only plain nn.Linear and "
                        f"Conv1D layers; this model's linears are {', '.join(kinds)}; use rtn, "
                        "gptq or quanto instead")
    if getattr(quantization_config, "load_in_4bit", False) and device.type == "cpu":
        from compress.arch import in_out_features

        targets = {n for n in targets if in_out_features(modules[n])[0] % 64 == 0}
    skip = sorted(
        name for name, mod in model.named_modules()
        if is_linear(mod) and name not in targets
    )
    quantization_config.llm_int8_skip_modules = skip or None
    device_map = {"": device.index if device.type == "cuda" else device.type}
    with tempfile.TemporaryDirectory(prefix="compress-bnb-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            out = type(model).from_pretrained(
                tmp, quantization_config=quantization_config, device_map=device_map,
                dtype=torch.float32,
            )
        finally:
            if bars:
                hf_logging.enable_progress_bar()
    out.eval()
    keep_portable_layout(out)
    _check_outputs(model, out)
    converted = {n for n, m in out.named_modules() if isinstance(m, bnb_layer_types())}
    extra = sorted(converted - targets)
    if extra:
        raise RuntimeError(f"bitsandbytes converted linears that were not targeted: {extra[:3]}")
    # transformers keeps some modules in fp32 on purpose (T5's FFN output ``wo``).
    out._compress_kept_fp32 = sorted(asked - converted)
    return out


def keep_portable_layout(model: nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for AVX-512 BF16 CPUs.

    bitsandbytes 0.50 repacks them (bf16 scales) on the first CPU forward and does not
    undo it exactly when saving without double quantization: the saved model reloads
    wrong. Kept unpacked in memory and after a reload (the ``bnb`` format's loader), the
    model computes the same before and after saving.
    """
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False


def _probe_out(model: nn.Module) -> torch.Tensor:
    from compress.arch import probe

    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    with torch.no_grad(), probe.eval_mode(model):
        out = model(**probe.probe_inputs(model, seq2seq), **probe.forward_kwargs(model))
    y = getattr(out, "logits", None)
    return (y if y is not None else probe._first_tensor(out)).float()


def _check_outputs(dense: nn.Module, quantized: nn.Module) -> None:
    """The quantized model must still compute roughly what the dense one does: a model whose
    forward casts activations to the weights' storage dtype (Switch Transformers' ``wo``)
    is broken by 4-bit storage, and says so in one line instead of returning garbage."""
    try:
        ref, got = _probe_out(dense), _probe_out(quantized)
    except Exception as exc:  # noqa: BLE001 - a forward that fails is what we report
        raise UserError(f"bitsandbytes breaks this model's forward ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:100] if str(exc) else ''}); use rtn, gptq or "
                        "quanto instead") from None
    err = float((got - ref).abs().max()) / (float(ref.abs().max()) + 1e-12)
    if not torch.isfinite(got).all() or err > 0.5:
        raise UserError(f"bitsandbytes changes this model's outputs far beyond rounding "
                        f"(max error {err:.0%} of the largest output); a module of this model "
                        "does not run on quantized weights; use rtn, gptq or quanto instead")


def _save(model: nn.Module, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)


def _load(folder: Path) -> nn.Module:
    from compress.models import load_model

    model = load_model(str(folder), device_map="cpu").model
    keep_portable_layout(model)
    return model


def _applies(model: nn.Module) -> bool:
    import sys

    if "bitsandbytes" not in sys.modules:  # no bitsandbytes layer without the package
        return False
    return any(isinstance(m, bnb_layer_types()) for m in model.modules())


#: plain ``save_pretrained`` folders (transformers reloads them); the suite's loader also
#: keeps the weights' portable CPU layout (see :func:`keep_portable_layout`).
FORMAT = register_format(Format("bnb", _applies, _save, _load))


class _DropCastNotice(logging.Filter):
    """bitsandbytes logs "inputs will be cast ... to float16" on *every* CPU int8 matmul."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will be cast from" not in record.getMessage()


def quiet_cast_notice() -> None:
    target = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropCastNotice) for f in target.filters):
        target.addFilter(_DropCastNotice())


def storage_counts(model: nn.Module, logical: dict[str, int]) -> dict[str, int]:
    from compress.quant.modules import state_counts

    return state_counts(model, logical)


def copy_dequantized(quantized: nn.Module, target: nn.Module) -> int:
    """Write each bitsandbytes layer's dequantized weight into the same-named module of
    ``target`` (an fp32 model of the same architecture); returns how many."""
    import bitsandbytes.functional as bf

    from compress.quant.rtn import set_weight_matrix

    bnb8, bnb4 = bnb_layer_types()
    n = 0
    for name, mod in quantized.named_modules():
        if isinstance(mod, bnb4):
            w = bf.dequantize_4bit(mod.weight.data, mod.weight.quant_state)  # (out, in)
        elif isinstance(mod, bnb8):
            scb = mod.weight.SCB if getattr(mod.weight, "SCB", None) is not None else mod.state.SCB
            w = mod.weight.data.float() * scb.float()[:, None] / 127.0
        else:
            continue
        with torch.no_grad():
            set_weight_matrix(target.get_submodule(name), w.float())
        n += 1
    return n


def check_device(model: nn.Module, recipe: str) -> str:
    device = next(model.parameters()).device.type
    if device not in ("cpu", "cuda"):
        raise UserError(f"{recipe}: bitsandbytes runs on cpu or cuda, not {device}")
    return device
