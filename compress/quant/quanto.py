"""optimum-quanto: int8 / int4 weights, optional int8 activations, and its on-disk format.

``quantize(model, weights=qint8|qint4, activations=None|qint8, include=targets)``
swaps the targeted ``nn.Linear`` s for quanto's ``QLinear``; with int8 activations a
``Calibration()`` pass over calibration text records activation scales; ``freeze``
replaces the float weights by their quantized form. GPT-2 ``Conv1D`` is converted to
``Linear`` first (quanto skips ``Conv1D``).

Format ``quanto``: ``model.safetensors`` (quanto's own state-dict split of each
quantized weight into data / scale / shift tensors), ``quanto.json`` (model class,
config, converted ``Conv1D`` names, quanto's quantization map). :func:`load` rebuilds
the fp32 skeleton and calls ``optimum.quanto.requantize``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from compress.quant.modules import (
    config_record,
    conv1d_to_linear,
    plain_state_dict,
    read_json,
    skeleton,
    state_counts,
    write_json,
)
from compress.saving import Format, register_format

MANIFEST = "quanto.json"


def _qtypes():
    from optimum.quanto import qint4, qint8

    return {"int8": qint8, "int4": qint4}


def is_quanto(model: nn.Module) -> bool:
    try:
        from optimum.quanto.nn import QModuleMixin
    except ImportError:  # pragma: no cover - optimum-quanto missing
        return False
    return any(isinstance(m, QModuleMixin) for m in model.modules())


def quantize(model: nn.Module, names: list[str], weights: str, activations: str | None,
             batches: list[dict[str, torch.Tensor]] | None = None) -> nn.Module:
    from optimum.quanto import Calibration, freeze
    from optimum.quanto import quantize as q_quantize

    from compress.quant import calib

    qt = _qtypes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q_quantize(model, weights=qt[weights], activations=qt[activations] if activations else None,
                   include=names)
        if activations:
            # streamline=False: the saved quantization map must describe the modules exactly
            with Calibration(streamline=False):
                for batch in batches or []:
                    calib.forward(model, batch)
        # frozen under inference_mode: quanto 0.2.7's int4 weights otherwise fail inside
        # torch.inference_mode ("Cannot set version_counter for inference tensor"), which the
        # shared benchmark uses; the frozen weights then work under no_grad too.
        with torch.inference_mode():
            freeze(model)
    return model


def save(model: nn.Module, folder: Path) -> None:
    from optimum.quanto import quantization_map
    from safetensors.torch import save_file

    save_file(plain_state_dict(model), str(folder / "model.safetensors"))
    write_json(folder, MANIFEST, {
        **config_record(model),
        "conv1d_converted": getattr(model, "_compress_conv1d_converted", []),
        "quantization_map": quantization_map(model),
        "logical_counts": getattr(model, "_compress_logical_counts", None),
    })
    model.config.save_pretrained(folder)


def load(folder: Path) -> nn.Module:
    from optimum.quanto import requantize
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_json(folder, MANIFEST)
    model = skeleton(manifest)
    model._compress_conv1d_converted = conv1d_to_linear(model, set(manifest["conv1d_converted"]))
    state = load_file(str(folder / "model.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.inference_mode():  # as in quantize(): see the comment there
            requantize(model, state, manifest["quantization_map"], device=torch.device("cpu"))
    model.tie_weights()
    model.eval()
    if manifest.get("logical_counts"):
        model._compress_logical_counts = manifest["logical_counts"]
        model.compress_parameter_counts = state_counts(model, manifest["logical_counts"])
    return model


FORMAT = register_format(Format("quanto", is_quanto, save, load))
