"""Second-order statistics shared by GPTQ, SparseGPT and AWQ.

``H = 2/n X^T X`` over a linear layer's calibration inputs (real tokens only: the
sequential driver drops padding rows), and the upper Cholesky factor of its dampened
inverse, which GPTQ (Frantar et al. 2022) and SparseGPT (Frantar & Alistarh 2023) use
to spread each column's rounding or pruning error over the columns still to come.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)


class HessianAccumulator:
    """Running ``H = 2/n sum x x^T`` over the rows (real tokens) of a layer's inputs."""

    def __init__(self, in_features: int):
        self.in_features = in_features
        self.H: torch.Tensor | None = None  # made on the first input's device
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        """``x``: ``(tokens, in)`` rows (any leading shape is flattened); padding already removed."""
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)  # (tokens, in)
        m = x.shape[0]
        if m == 0:
            return
        if self.H is None:
            self.H = torch.zeros(self.in_features, self.in_features, dtype=torch.float64,
                                 device=x.device)
        self.H *= self.n / (self.n + m)
        self.n += m
        x = math.sqrt(2 / self.n) * x
        self.H += x.t() @ x


def inverse_cholesky(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of ``(H + lambda I)^-1``, ``lambda = damp * mean(diag(H))``.

    With fewer calibration tokens than input features ``H`` is singular; if the
    factorization fails, the dampening grows tenfold until it succeeds (as the GPTQ and
    SparseGPT implementations do). Returns the factor and the dampening used (fraction of the
    mean diagonal).
    """
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    mean = float(torch.mean(torch.diag(H)))
    if not math.isfinite(mean):
        raise RuntimeError("the Hessian is not finite (calibration activations overflowed)")
    mean = max(mean, 1e-12)
    lam = max(damp * mean, 1e-10 * mean)
    for _ in range(20):
        L, info = torch.linalg.cholesky_ex(H + lam * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                if lam > damp * mean * 1.0001:
                    log.info("Hessian dampening raised to %.3g x mean diagonal", lam / mean)
                return U, lam / mean
        lam *= 10
    raise RuntimeError("the Hessian stays singular after dampening; give more calibration text")
