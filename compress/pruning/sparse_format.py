"""``sparse-bitmask``: unstructured-sparse models on disk at their real size.

Zeros in a dense tensor save nothing on disk. This format stores each floating-point
matrix that gets smaller that way as a packed bitmask (1 bit per weight,
``numpy.packbits``, little storage order = row-major) plus its nonzero values, and
every other tensor dense, all in one safetensors file (``model.sparse.safetensors``),
with ``config.json`` and ``sparse_model.json`` (model class, task, the sparse
tensors' shapes and dtypes, tied aliases). No pickle.

Break-even: a matrix of ``n`` weights of ``b`` bytes with ``z`` zeros costs
``n/8 + (n - z) * b`` bytes instead of ``n * b``, so it is smaller once more than
``1 / (8 b)`` of it is zero (3.1% for float32, 6.25% for float16/bfloat16); only such
matrices are stored sparse. :func:`applies` picks this format for a model when doing
so saves at least 1% of its dense bytes, so dense models keep the ordinary format.

:func:`load` rebuilds the plain model (``from_config`` of the saved class, then every
tensor restored), identical tensor for tensor; reach it through
:func:`compress.saving.load_compressed`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compress.errors import UserError
from compress.fileio import atomic_write_json
from compress.models import build_skeleton, task_of
from compress.saving import Format, register_format

NAME = "sparse-bitmask"
WEIGHTS = "model.sparse.safetensors"
META = "sparse_model.json"
MASK, VALUES = ".__bitmask", ".__values"
#: pick this format when it saves at least this fraction of the dense bytes.
MIN_SAVING = 0.01


def _dense_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _sparse_cost(t: torch.Tensor, nonzero: int) -> int:
    return (t.numel() + 7) // 8 + nonzero * t.element_size()


def _unique_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict without repeated tensors, plus alias -> canonical name for tied ones."""
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride())) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        unique[name] = t
    return unique, aliases


def _sparse_worthwhile(t: torch.Tensor) -> tuple[bool, int]:
    if not t.is_floating_point() or t.dim() < 2:
        return False, 0
    nonzero = int(torch.count_nonzero(t))
    return _sparse_cost(t, nonzero) < _dense_bytes(t), nonzero


@torch.no_grad()
def sparse_bytes(model: nn.Module) -> dict[str, int]:
    """Dense bytes of the model's tensors and their bytes in this format (tensor data only)."""
    unique, _ = _unique_state(model)
    dense = sparse = 0
    for t in unique.values():
        ok, nonzero = _sparse_worthwhile(t)
        dense += _dense_bytes(t)
        sparse += _sparse_cost(t, nonzero) if ok else _dense_bytes(t)
    return {"dense": dense, "sparse_bitmask": sparse}


def applies(model: nn.Module) -> bool:
    """True when storing the sparse matrices as bitmask + values saves >= 1% of the bytes.

    Only plain float models qualify: a state dict holding anything but ordinary float or
    integer tensors (int8 packed params, quantized tensors) belongs to another format.
    """
    if getattr(model, "config", None) is None:
        return False
    for t in model.state_dict().values():
        if not isinstance(t, torch.Tensor) or t.is_quantized:
            return False
    b = sparse_bytes(model)
    return b["dense"] > 0 and b["sparse_bitmask"] <= (1 - MIN_SAVING) * b["dense"]


@torch.no_grad()
def save(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    unique, aliases = _unique_state(model)
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict[str, Any]] = {}
    for name, t in unique.items():
        t = t.detach().cpu()  # a model on a GPU, or spread over devices, saves from the host
        ok, _ = _sparse_worthwhile(t)
        if not ok:
            tensors[name] = t.detach().contiguous()
            continue
        flat = t.detach().reshape(-1)
        keep = flat != 0
        tensors[name + MASK] = torch.from_numpy(np.packbits(keep.numpy()))
        tensors[name + VALUES] = flat[keep].contiguous()
        sparse[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": NAME})
    config = model.config
    architectures = config.architectures
    try:
        config.architectures = [type(model).__name__]
        config.save_pretrained(folder)
    finally:
        config.architectures = architectures
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(model, "can_generate", lambda: False)():
        gen.save_pretrained(folder)
    atomic_write_json(folder / META, {
        "format": NAME,
        "version": 1,
        "class": type(model).__name__,
        "task": task_of(config),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "sparse": sparse,
        "aliases": aliases,
    })


@torch.no_grad()
def load(folder: Path) -> nn.Module:
    import transformers as tf
    from safetensors import safe_open

    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder / META} is missing or unreadable ({exc}); re-save the model") from None
    config = tf.AutoConfig.from_pretrained(folder)
    dtype = getattr(torch, meta.get("dtype", "float32"))
    model = build_skeleton(config, meta["class"], meta["task"], dtype=dtype)
    state = model.state_dict()
    filled: set[str] = set()
    with safe_open(str(folder / WEIGHTS), framework="pt") as f:
        keys = set(f.keys())
        for name, target in state.items():
            src = meta["aliases"].get(name, name)
            if src in meta["sparse"]:
                info = meta["sparse"][src]
                numel = int(np.prod(info["shape"]))
                keep = np.unpackbits(f.get_tensor(src + MASK).numpy(), count=numel).astype(bool)
                dense = torch.zeros(numel, dtype=getattr(torch, info["dtype"]))
                dense[torch.from_numpy(keep)] = f.get_tensor(src + VALUES)
                target.copy_(dense.view(info["shape"]))
            elif src in keys:
                target.copy_(f.get_tensor(src))
            else:
                raise UserError(f"{folder}: tensor {name} is missing from {WEIGHTS}; re-save")
            filled.add(name)
    model.eval()
    return model


FORMAT = register_format(Format(NAME, applies, save, load))
