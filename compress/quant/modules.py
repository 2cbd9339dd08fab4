"""Module surgery shared by the real-int8 backends, and rebuilding a model skeleton.

GPT-2's ``Conv1D`` (weight ``[in, out]``) is invisible to ``torch.ao`` dynamic
quantization and to quanto, which only replace ``nn.Linear``; :func:`conv1d_to_linear`
swaps each one for an equivalent ``nn.Linear`` (weight transposed) so they are not
skipped. The swap changes the state-dict layout, so the saved formats record it and
:func:`skeleton` repeats it when loading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from compress.errors import UserError


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def conv1d_to_linear(model: nn.Module, names: set[str] | None = None) -> list[str]:
    """Replace GPT-2 ``Conv1D`` modules (all, or those in ``names``) by ``nn.Linear``."""
    swapped = []
    for name, mod in list(model.named_modules()):
        if isinstance(mod, Conv1D) and (names is None or name in names):
            in_f, out_f = mod.weight.shape
            lin = nn.Linear(in_f, out_f, bias=mod.bias is not None,
                            dtype=mod.weight.dtype, device=mod.weight.device)
            with torch.no_grad():
                lin.weight.copy_(mod.weight.t())
                if mod.bias is not None:
                    lin.bias.copy_(mod.bias)
            _set_submodule(model, name, lin)
            swapped.append(name)
    return swapped


def config_record(model: nn.Module) -> dict[str, Any]:
    """What :func:`skeleton` needs: the HF config as a dict and the model class name."""
    config = model.config
    return {"class": type(model).__name__, "config": config.to_dict()}


def skeleton(record: dict[str, Any]) -> nn.Module:
    """An fp32 model of the recorded class built from its config (random weights)."""
    import transformers as tf

    cls = getattr(tf, record["class"], None)
    if cls is None:
        raise UserError(f"model class {record['class']} is not in this transformers version")
    cfg_dict = dict(record["config"])
    config = tf.CONFIG_MAPPING[cfg_dict["model_type"]].from_dict(cfg_dict)
    config.dtype = "float32"
    model = cls(config)
    model.eval()
    return model


def write_json(folder: Path, name: str, obj: Any) -> None:
    (folder / name).write_text(json.dumps(obj, indent=2, default=str) + "\n")


def read_json(folder: Path, name: str) -> Any:
    path = folder / name
    if not path.exists():
        raise UserError(f"{folder} is missing {name}; re-save the model")
    return json.loads(path.read_text())


def plain_state_dict(model: nn.Module, skip_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Float/int tensors of ``model.state_dict()``, tied tensors once, minus ``skip_prefixes``."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for key, value in model.state_dict().items():
        if any(key.startswith(p) for p in skip_prefixes) or not isinstance(value, torch.Tensor):
            continue
        if value.is_quantized:
            continue
        ident = (value.data_ptr(), tuple(value.shape))
        if ident in seen and value.numel() > 0:
            continue  # tied weight (e.g. lm_head = embeddings); re-tied on load
        seen.add(ident)
        out[key] = value.detach().contiguous()
    return out


def check_missing(
    model: nn.Module, missing: list[str], loaded: dict[str, torch.Tensor],
    skip: tuple[str, ...] = (), folder: Path | str = "",
) -> None:
    """Fail unless every key missing from a checkpoint is tied to a loaded tensor."""
    state = model.state_dict()
    loaded_ptrs = {state[k].data_ptr() for k in loaded if k in state}
    bad = [k for k in missing if not k.startswith(skip) and state[k].data_ptr() not in loaded_ptrs]
    if bad:
        raise UserError(f"{folder}: weights missing from the checkpoint: {', '.join(bad[:3])}")


def state_counts(model: nn.Module, logical: dict[str, int]) -> dict[str, int]:
    """Counts for the profiler of a model whose parameters are packed (bitsandbytes,
    quanto): the logical parameter counts of the fp32 model it came from, and the bytes
    of its state dict (packed weights + quantization statistics), tied tensors once."""
    seen: set[tuple[int, int]] = set()
    nbytes = 0
    for value in model.state_dict().values():
        if not isinstance(value, torch.Tensor) or value.is_quantized:
            continue
        key = (value.data_ptr(), value.numel())
        if key in seen:
            continue
        seen.add(key)
        nbytes += value.numel() * value.element_size()
    return {"total": logical["total"], "nonzero": logical["nonzero"], "bytes": nbytes}
