"""Randomized Hadamard rotations of a linear layer's input space (incoherence processing).

QuaRot (Ashkboos et al. 2024, arXiv:2404.00456), SpinQuant (Liu et al. 2024,
arXiv:2405.16406) and QuIP# (Tseng et al. 2024) rotate the space a weight matrix is
quantized in with an orthogonal ``R``: ``y = x W^T = (x R)(W R)^T``. A random
orthogonal rotation spreads each outlier of ``W`` (and of ``x``) over many coordinates,
so a row's range shrinks towards its typical magnitude and a uniform grid loses less.
``R = diag(d) blockdiag(H_b) / sqrt(b)``: random signs ``d`` (seeded) times Sylvester
Hadamard blocks of size ``b``, the largest power of two dividing the input width (up to
``max_block``); applying it costs ``O(in log b)`` per token with a fast Walsh-Hadamard
transform, which is what QuaRot's *online* Hadamard does at run time.

This module rotates each quantized linear's input online: the weight is rounded as
``Q(W R)`` and the simulated weight written back is ``Q(W R) R^T``, exactly what a runtime
computes that rotates the linear's input by ``R`` before an int GEMM with ``Q(W R)``.
GPTQ in the rotated basis uses ``H' = R^T H R``. (Fusing one rotation into the residual
stream instead, QuaRot's main mode, needs every norm folded into the linears that read
it: impossible for post-norm blocks, and for tied embeddings without untying them; the
online form works for every architecture.)
"""

from __future__ import annotations

import math

import torch


def hadamard(n: int) -> torch.Tensor:
    """Sylvester's ``n x n`` Hadamard matrix (entries +-1), ``n`` a power of two."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size {n} is not a power of two")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def block_size(in_features: int, max_block: int = 4096) -> int:
    """The largest power of two dividing ``in_features`` (at most ``max_block``)."""
    cap = 1 << (max(max_block, 1).bit_length() - 1)  # largest power of two <= max_block
    return min(in_features & -in_features, cap)


class Rotation:
    """``R = diag(d) blockdiag(H_b) / sqrt(b)`` on an input width; see the module docstring."""

    def __init__(self, in_features: int, seed: int, max_block: int = 4096):
        self.in_features = in_features
        self.b = block_size(in_features, max_block)
        g = torch.Generator().manual_seed(seed)
        self.signs = torch.randint(0, 2, (in_features,), generator=g).float() * 2 - 1
        self.H = hadamard(self.b) / math.sqrt(self.b)  # symmetric, orthonormal

    def right(self, W: torch.Tensor) -> torch.Tensor:
        """``W R`` for ``W`` ``[rows, in]``."""
        rows = W.shape[0]
        signs, H = self.signs.to(W.device, W.dtype), self.H.to(W.device, W.dtype)
        X = (W * signs[None, :]).reshape(rows, -1, self.b)  # (rows, in/b, b)
        return (X @ H).reshape(rows, self.in_features)

    def right_t(self, W: torch.Tensor) -> torch.Tensor:
        """``W R^T`` (the inverse of :meth:`right`)."""
        rows = W.shape[0]
        signs, H = self.signs.to(W.device, W.dtype), self.H.to(W.device, W.dtype)
        X = (W.reshape(rows, -1, self.b) @ H).reshape(rows, self.in_features)  # (rows, in)
        return X * signs[None, :]

    def hessian(self, H: torch.Tensor) -> torch.Tensor:
        """``R^T H R`` for a symmetric ``H``."""
        return self.right(self.right(H).t().contiguous())

    def matrix(self) -> torch.Tensor:
        return self.right(torch.eye(self.in_features))
