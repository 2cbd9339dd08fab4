"""SmoothQuant's smoothing, found from the model, and a simulated W8A8 linear with its format.

Xiao, Lin, Seznec, Wu, Demouth, Han (2022), "SmoothQuant: Accurate and Efficient
Post-Training Quantization for Large Language Models" (arXiv:2211.10438). Activation
outliers sit in a few input channels; dividing those channels by ``s`` and multiplying
the matching weight columns by ``s`` moves the difficulty into the weights, which
per-channel int8 absorbs easily:

    Y = (X diag(s)^-1) (diag(s) W^T),     s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(``alpha = 0.5``; ``max|W_j|`` over every linear reading that input). The division is
free only when it can be folded into the op that produces ``X``: a norm's elementwise
weight (and bias) whose output feeds nothing but those linears -- in pre-norm blocks
the attention and FFN input norms. :func:`smoothing_groups` finds those pairs from the
model itself, with no family table: in one traced forward, a linear's input that *is*
(the same tensor object as) the output of a module with a 1-D weight of the input's
width names the producer. :func:`smooth` folds each group and keeps the fold only if
the model's output is unchanged, which rejects norms whose output also feeds the
residual stream (post-norm BERT/BART blocks): those inputs stay unsmoothed.

:class:`ActQuantLinear` simulates int8 activations per token (dynamic absmax) in front
of a weight already rounded to int8 per output channel; the ``w8a8-sim`` format saves
such a model as safetensors plus a manifest and :func:`load` rebuilds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.calibration import CalibBatch
from compress.models import input_device, to_device
from compress.quant.grid import set_weight_matrix, weight_matrix
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
from compress.sequential import forward_kwargs

MANIFEST = "w8a8_sim.json"


@dataclass
class SmoothGroup:
    producer: str  # full name of the norm whose output the linears read
    linears: list[str]  # full names of the linears reading it


@torch.no_grad()
def smoothing_groups(model: nn.Module, targets: dict[str, nn.Module],
                     batch: CalibBatch) -> list[SmoothGroup]:
    """Norms whose output is exactly the input of some targeted linears (one traced forward)."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    by_module = {id(m): n for n, m in targets.items()}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if (isinstance(weight, torch.Tensor) and weight.dim() == 1 and id(module) not in by_module
                and not isinstance(module, nn.Embedding)):
            def out_hook(_m, _a, out, name=name):
                if isinstance(out, torch.Tensor):
                    outputs[id(out)] = (name, out)  # the tensor is kept alive: ids stay unique

            handles.append(module.register_forward_hook(out_hook))
        if id(module) in by_module:
            def in_hook(_m, args, name=by_module[id(module)]):
                if args and isinstance(args[0], torch.Tensor):
                    inputs.setdefault(name, args[0])

            handles.append(module.register_forward_pre_hook(in_hook))
    try:
        model(**to_device(batch.inputs, input_device(model)), **forward_kwargs(model))
    finally:
        for h in handles:
            h.remove()
    groups: dict[str, list[str]] = {}
    modules = dict(model.named_modules())
    for lin, x in inputs.items():
        hit = outputs.get(id(x))
        if hit is None or hit[1] is not x:
            continue
        producer = hit[0]
        if modules[producer].weight.numel() == x.shape[-1]:
            groups.setdefault(producer, []).append(lin)
    return [SmoothGroup(p, ls) for p, ls in groups.items()]


def smooth_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` over the group's weight columns."""
    w_max = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0).float()  # (in,)
    s = act_absmax.float().to(w_max.device).clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def smooth(
    model: nn.Module,
    targets: dict[str, nn.Module],
    absmax: dict[str, torch.Tensor],
    batch: CalibBatch,
    alpha: float = 0.5,
    tolerance: float = 1e-3,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fold SmoothQuant's scales into every foldable norm; returns (applied, rejected)."""
    feed = to_device(batch.inputs, input_device(model))
    extra = forward_kwargs(model)

    def logits() -> torch.Tensor:
        out = model(**feed, **extra)
        out = out.logits if hasattr(out, "logits") else (
            out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])
        return out.float()

    reference = logits()
    scale_ref = reference.abs().max().clamp(min=1e-6)
    applied, rejected = [], []
    modules = dict(model.named_modules())
    for group in smoothing_groups(model, targets, batch):
        norm = modules[group.producer]
        lins = [targets[n] for n in group.linears]
        x_max = torch.stack([absmax[n] for n in group.linears if n in absmax]).amax(0) \
            if any(n in absmax for n in group.linears) else None
        if x_max is None:
            continue
        Ws = [weight_matrix(m).float() for m in lins]
        s = smooth_scales(x_max, Ws, alpha).to(norm.weight.device)
        saved = (norm.weight.detach().clone(),
                 None if getattr(norm, "bias", None) is None else norm.bias.detach().clone(),
                 [w.clone() for w in Ws])
        norm.weight.div_(s.to(norm.weight.dtype))
        if saved[1] is not None:
            norm.bias.div_(s.to(norm.bias.dtype))
        for m, W in zip(lins, Ws, strict=True):
            set_weight_matrix(m, W * s[None, :])
        diff = float((logits() - reference).abs().max() / scale_ref)
        record = {"norm": group.producer, "linears": group.linears,
                  "max_scale": round(float(s.max()), 4), "min_scale": round(float(s.min()), 6)}
        if diff > tolerance:  # the norm's output feeds more than these linears: undo
            norm.weight.copy_(saved[0])
            if saved[1] is not None:
                norm.bias.copy_(saved[1])
            for m, W in zip(lins, saved[2], strict=True):
                set_weight_matrix(m, W)
            rejected.append({**record, "output_change": round(diff, 6)})
        else:
            applied.append(record)
    return applied, rejected


# --- simulated W8A8 -------------------------------------------------------------------


def fake_quant_tokens(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-token (last-dimension absmax) fake quantization to ``bits``."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / qmax
    return torch.clamp(torch.round(x / scale), -qmax - 1, qmax) * scale


class ActQuantLinear(nn.Linear):
    """``nn.Linear`` whose input is fake-quantized per token to ``act_bits`` (weights as stored)."""

    act_bits: int = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(fake_quant_tokens(x, self.act_bits), self.weight, self.bias)


def to_act_quant(model: nn.Module, names: list[str], bits: int) -> None:
    """Turn the named ``nn.Linear`` modules into :class:`ActQuantLinear` (same parameters)."""
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name} is a {type(module).__name__}, not an nn.Linear")
        module.__class__ = ActQuantLinear
        module.act_bits = bits


def is_w8a8_sim(model: nn.Module) -> bool:
    return any(isinstance(m, ActQuantLinear) for m in model.modules())


def save(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    names = {n: m.act_bits for n, m in model.named_modules() if isinstance(m, ActQuantLinear)}
    save_file(plain_state_dict(model), str(folder / "model.safetensors"))
    write_json(folder, MANIFEST, {**config_record(model),
                                  "conv1d_converted": getattr(model, "_compress_conv1d_converted", []),
                                  "act_quant": names})
    model.config.save_pretrained(folder)


def load(folder: Path) -> nn.Module:
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_json(folder, MANIFEST)
    model = skeleton(manifest)
    model._compress_conv1d_converted = conv1d_to_linear(model, set(manifest["conv1d_converted"]))
    for name, bits in manifest["act_quant"].items():
        to_act_quant(model, [name], bits)
    tensors = load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected:
        raise RuntimeError(f"{folder}: unexpected tensors {unexpected[:3]}")
    model.tie_weights()
    check_missing(model, missing, tensors, folder=folder)
    model.eval()
    return model


FORMAT = register_format(Format("w8a8-sim", is_w8a8_sim, save, load))
