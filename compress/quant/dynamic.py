"""Real int8 on the CPU with ``torch.ao`` dynamic quantization, and its on-disk format.

``quantize_dynamic`` replaces each ``nn.Linear`` by a ``DynamicQuantizedLinear``: int8
weights (per output channel or per tensor), activations quantized to int8 per batch
at run time, int8 GEMM (fbgemm / onednn). GPT-2 ``Conv1D`` is converted to ``Linear``
first so it is not skipped.

The quantized modules hold packed parameters that ``save_pretrained`` cannot write, so
the ``dynamic-int8`` format stores:

* ``model.safetensors``: every ordinary tensor, plus for each quantized linear its
  ``<name>.int8_weight`` (int8), ``<name>.scales`` / ``<name>.zero_points`` and bias;
* ``dynamic_int8.json``: the model class and config, the converted ``Conv1D`` names
  and the quantized module names with their qscheme.

:func:`load` (reached through :func:`compress.saving.load_compressed`) rebuilds the fp32
skeleton from the config, repeats the ``Conv1D`` swap and the ``quantize_dynamic``
structure, and loads the int8 weights into it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from compress.quant.modules import (
    check_missing,
    config_record,
    conv1d_to_linear,
    plain_state_dict,
    read_json,
    skeleton,
    write_json,
)
from compress.saving import Format, register_format

MANIFEST = "dynamic_int8.json"


def _dq_linear_cls():
    from torch.ao.nn.quantized.dynamic import Linear as DQLinear

    return DQLinear


def is_dynamic_int8(model: nn.Module) -> bool:
    cls = _dq_linear_cls()
    return any(isinstance(m, cls) for m in model.modules())


def quantize(model: nn.Module, names: list[str], per_channel: bool = True) -> nn.Module:
    """Dynamic-int8 the ``nn.Linear`` modules named in ``names`` (in place)."""
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        quantize_dynamic(model, {n: qconfig for n in names}, dtype=torch.qint8, inplace=True)
    return model


def size_counts(model: nn.Module) -> dict[str, int]:
    """Parameter count and bytes including the int8 packed weights (which are not
    ``nn.Parameter`` s and so invisible to :func:`compress.stats.parameter_counts`)."""
    cls = _dq_linear_cls()
    seen: set[int] = set()
    total = nonzero = nbytes = 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel()
        nonzero += int(torch.count_nonzero(p))
        nbytes += p.numel() * p.element_size()
    for m in model.modules():
        if isinstance(m, cls):
            w, b = m._packed_params._weight_bias()
            total += w.numel()
            nonzero += int(torch.count_nonzero(w.int_repr()))
            nbytes += w.numel()  # int8
            nbytes += 4 * (w.q_per_channel_scales().numel() if w.qscheme() == torch.per_channel_affine else 1)
            if b is not None:
                total += b.numel()
                nonzero += int(torch.count_nonzero(b))
                nbytes += b.numel() * b.element_size()
    return {"total": total, "nonzero": nonzero, "bytes": nbytes}


def save(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    cls = _dq_linear_cls()
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, cls)}
    tensors = plain_state_dict(model, skip_prefixes=tuple(n + "." for n in quantized))
    modules = {}
    for name, m in quantized.items():
        w, b = m._packed_params._weight_bias()
        tensors[f"{name}.int8_weight"] = w.int_repr().contiguous()
        if w.qscheme() == torch.per_channel_affine:
            tensors[f"{name}.scales"] = w.q_per_channel_scales().double().contiguous()
            tensors[f"{name}.zero_points"] = w.q_per_channel_zero_points().to(torch.int64).contiguous()
            scheme = "per_channel"
        else:
            tensors[f"{name}.scales"] = torch.tensor([w.q_scale()], dtype=torch.float64)
            tensors[f"{name}.zero_points"] = torch.tensor([w.q_zero_point()], dtype=torch.int64)
            scheme = "per_tensor"
        if b is not None:
            tensors[f"{name}.bias"] = b.detach().contiguous()
        modules[name] = {"scheme": scheme, "in_features": m.in_features,
                         "out_features": m.out_features}
    save_file(tensors, str(folder / "model.safetensors"))
    write_json(folder, MANIFEST, {
        **config_record(model),
        "conv1d_converted": getattr(model, "_compress_conv1d_converted", []),
        "quantized": modules,
    })
    model.config.save_pretrained(folder)


def load(folder: Path) -> nn.Module:
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_json(folder, MANIFEST)
    model = skeleton(manifest)
    conv = conv1d_to_linear(model, set(manifest["conv1d_converted"]))
    model._compress_conv1d_converted = conv
    tensors = load_file(str(folder / "model.safetensors"))
    quantized = manifest["quantized"]
    plain = {k: v for k, v in tensors.items()
             if not any(k.startswith(n + ".") for n in quantized)}
    missing, unexpected = model.load_state_dict(plain, strict=False)
    if unexpected:
        raise RuntimeError(f"{folder}: unexpected tensors {unexpected[:3]}")
    model.tie_weights()
    check_missing(model, missing, plain, skip=tuple(n + "." for n in quantized), folder=folder)
    schemes = {q["scheme"] for q in quantized.values()}
    quantize(model, list(quantized), per_channel=schemes != {"per_tensor"})
    for name, q in quantized.items():
        int8 = tensors[f"{name}.int8_weight"]
        scales, zeros = tensors[f"{name}.scales"], tensors[f"{name}.zero_points"]
        if q["scheme"] == "per_channel":
            w = torch._make_per_channel_quantized_tensor(int8, scales, zeros, 0)
        else:
            w = torch._make_per_tensor_quantized_tensor(int8, float(scales[0]), int(zeros[0]))
        model.get_submodule(name).set_weight_bias(w, tensors.get(f"{name}.bias"))
    model.compress_parameter_counts = size_counts(model)
    model.eval()
    return model


FORMAT = register_format(Format("dynamic-int8", is_dynamic_int8, save, load))
