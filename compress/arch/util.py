"""Small helpers shared by the discovery modules: linear-like modules, names, tensors."""

from __future__ import annotations

import re

import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

ATTN_RE = re.compile(r"attn|attention", re.I)


def is_linear(m: nn.Module) -> bool:
    """``nn.Linear`` (and subclasses: bitsandbytes, quanto) or GPT-2's ``Conv1D``."""
    return isinstance(m, (nn.Linear, Conv1D))


def in_out(m: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear-like module, whatever its storage."""
    w = m.weight
    if isinstance(m, Conv1D):
        return int(w.shape[0]), int(w.shape[1])
    if hasattr(m, "in_features") and hasattr(m, "out_features"):
        return int(m.in_features), int(m.out_features)
    return int(w.shape[1]), int(w.shape[0])


def leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1].lower()


def tokens(path: str) -> list[str]:
    return [t for t in re.split(r"[_.\d]+", leaf(path)) if t]


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is None or b is None or a.shape != b.shape:
        return False
    a, b = a.float(), b.float()
    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * (1 + float(b.abs().max()))))


def flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def same_rows(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is not None and b is not None and close(flat(a), flat(b))


def int_attr(obj: object, names: tuple[str, ...]) -> int | None:
    for n in names:
        v = getattr(obj, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def lca(paths: list[str]) -> str:
    parts = [p.split(".")[:-1] for p in paths]
    common: list[str] = []
    for toks in zip(*parts, strict=False):
        if all(t == toks[0] for t in toks):
            common.append(toks[0])
        else:
            break
    return ".".join(common)


def under(path: str, root: str) -> bool:
    return root == "" or path == root or path.startswith(root + ".")


def width(m: nn.Module) -> int | None:
    w = getattr(m, "weight", None)
    return int(w.numel()) if isinstance(w, torch.Tensor) and w.dim() == 1 else None
