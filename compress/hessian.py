"""Second-order statistics shared by GPTQ, SparseGPT and AWQ.

``H = 2/n X^T X`` over a linear layer's calibration inputs (real tokens only: the
sequential driver drops padding rows), and the upper Cholesky factor of its dampened
inverse, which GPTQ (Frantar et al. 2022) and SparseGPT (Frantar & Alistarh 2023) use
to spread each column's rounding or pruning error over the columns still to come.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)


class HessianAccumulator:
    """Running ``H = 2/n sum x x^T`` over the rows (real tokens) of a layer's inputs.

    Accumulated in float32, as the GPTQ and SparseGPT reference code does (the sums are
    rescaled as they grow, so their magnitude stays that of one mean); returned in
    float64 for the factorisations.
    """

    def __init__(self, in_features: int):
        self.in_features = in_features
        self._H: torch.Tensor | None = None  # made on the first input's device
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        """``x``: ``(tokens, in)`` rows (any leading shape is flattened); padding already removed."""
        x = x.detach().reshape(-1, x.shape[-1]).float()  # (tokens, in)
        m = x.shape[0]
        if m == 0:
            return
        if self._H is None:
            self._H = torch.zeros(self.in_features, self.in_features, dtype=torch.float32,
                                  device=x.device)
        self._H *= self.n / (self.n + m)
        self.n += m
        x = math.sqrt(2 / self.n) * x
        self._H.addmm_(x.t(), x)

    @property
    def H(self) -> torch.Tensor | None:
        return None if self._H is None else self._H.double()


def working_copies(W: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                               torch.Tensor]:
    """``(W, H, dead)``: float32 / float64 copies the OBS solvers (GPTQ, SparseGPT) update in
    place; columns no input reached (``dead``: zero Hessian diagonal) get a unit diagonal
    and zero weights, as in the reference implementations."""
    W = W.detach().clone().float()
    H = H.detach().clone().double()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    return W, H, dead


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


class SharedInputs:
    """Per-linear accumulators that linears reading the same input tensor share.

    :meth:`compress.sequential.BlockRun.collect` hands every linear that reads one
    tensor the very same rows object; the first linear to see it owns the accumulator
    and the others alias it, so q/k/v (or gate/up) cost one ``x^T x``, not three.
    """

    def __init__(self, make: Callable[[str], Any]):
        self.make = make
        self.owner: dict[str, str] = {}
        self.acc: dict[str, Any] = {}
        self._last: tuple[str | None, Any] = (None, None)

    def add(self, name: str, x: torch.Tensor) -> None:
        owner = self.owner.get(name)
        if owner is None:
            prev_name, prev_x = self._last
            if prev_x is x and prev_name is not None:
                owner = self.owner[name] = self.owner[prev_name]
                return
            owner = self.owner[name] = name
            self.acc[name] = self.make(name)
        self._last = (name, x)
        if owner == name:
            self.acc[name].add(x)

    def get(self, name: str) -> Any:
        return self.acc[self.owner[name]] if name in self.owner else None
