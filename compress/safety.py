"""Untrusted model files run no code: safetensors by default, pickle only when asked.

Pickle checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) can execute arbitrary
code when unpickled. The suite loads safetensors unless the user passes
``--allow-pickle``; even then transformers loads them with
``torch.load(weights_only=True)``, which refuses code objects.
"""

from __future__ import annotations

from pathlib import Path

from compress.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights_safe(folder: Path, allow_pickle: bool = False) -> None:
    """Refuse a folder whose only weights are pickle files, unless ``allow_pickle``."""
    if not folder.is_dir():
        return
    names = [p.name for p in folder.iterdir()]
    if any(n.endswith(".safetensors") for n in names) or allow_pickle:
        return
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise UserError(
            f"{folder} holds only pickle weights ({', '.join(sorted(pickles)[:3])}), which can run "
            "code when loaded; convert them to safetensors, or pass --allow-pickle to load them "
            "with torch.load(weights_only=True)"
        )


def safe_torch_load(path: Path, allow_pickle: bool = False):
    """``torch.load`` restricted to tensors (``weights_only=True``), only when allowed."""
    import torch

    if not allow_pickle:
        raise UserError(f"{path} is a pickle file; pass --allow-pickle to load it (weights only)")
    return torch.load(path, map_location="cpu", weights_only=True)
