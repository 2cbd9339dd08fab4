"""What MoEfication reports: activation sparsity, FLOPs, timings, expert fine-tuning.

Activation sparsity of an FFN is measured on its intermediate activations ``h`` (the
input of W_out; ``act(gate) * up`` for gated FFNs) over calibration tokens:

* ``exact_zero``: fraction of entries that are exactly 0 (ReLU's natural sparsity);
* ``near_zero_abs``: fraction with ``|h| < eps`` (absolute; ``eps`` is the recipe's
  ``sparsity_eps``, 0.01 by default);
* ``near_zero_rel``: fraction with ``|h| < eps * max_j |h_j|`` of the same token;
* ``neurons_for_90pct``: per token, the smallest fraction of neurons that carries 90%
  of ``sum h^2``, averaged over tokens. It is the number that says how much of the FFN
  a perfect neuron-level router would need; ReLU T5 gives small values, GELU and
  SwiGLU large ones.

Timings: the callables are run in alternating rounds in one process, after warm-up,
under ``torch.inference_mode``; medians are reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from compress.moe.convert import DenseFFN
from compress.moe.layer import MoEFFN


@torch.no_grad()
def activation_sparsity(h: torch.Tensor, eps: float) -> dict[str, float]:
    """Sparsity statistics of activations ``h`` (tokens, ff); see the module docstring."""
    a = h.abs().float()
    peak = a.amax(dim=1, keepdim=True)
    e = a.pow(2)
    sorted_e = e.sort(dim=1, descending=True).values
    cum = sorted_e.cumsum(dim=1)
    need = (cum < 0.9 * cum[:, -1:]).sum(dim=1) + 1  # neurons to reach 90% of the energy
    return {
        "exact_zero": float((a == 0).float().mean()),
        "near_zero_abs": float((a < eps).float().mean()),
        "near_zero_rel": float((a < eps * peak).float().mean()),
        "neurons_for_90pct": float(need.float().mean() / a.shape[1]),
    }


def time_alternating(
    fns: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 2, inner: int = 1
) -> dict[str, float]:
    """Median milliseconds per call of each callable, timed in alternating rounds."""
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                times[name].append((time.perf_counter() - t0) * 1000.0 / inner)
    return {name: statistics.median(t) for name, t in times.items()}


def finetune_experts(
    moe: MoEFFN, dense: DenseFFN, x_train: torch.Tensor, x_val: torch.Tensor, *,
    steps: int, lr: float, batch: int = 256, seed: int = 0,
) -> dict[str, float]:
    """Fit the experts to the dense FFN's output with the router fixed (MSE, Adam).

    A short local distillation: each MoE FFN learns to make up, with the experts it
    runs, for the experts it skips. Returns the held-out relative output error before
    and after.
    """

    def rel_error(x: torch.Tensor) -> float:
        with torch.no_grad():
            y = dense.output(x)
            y_moe = moe(x) - (moe.b_out if moe.b_out is not None else 0)
            return float((y_moe - y).norm() / y.norm().clamp_min(1e-30))

    before = rel_error(x_val)
    params = [p for n, p in moe.named_parameters() if not n.startswith("router.")
              and n != "b_out"]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    moe.train()
    try:
        for _ in range(steps):
            idx = torch.randint(x_train.shape[0], (min(batch, x_train.shape[0]),), generator=gen)
            xb = x_train[idx]
            with torch.no_grad():
                yb = dense.output(xb)
            y_moe = moe(xb) - (moe.b_out.detach() if moe.b_out is not None else 0)
            loss = (y_moe - yb).pow(2).mean() / yb.pow(2).mean().clamp_min(1e-30)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        moe.eval()
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return {"val_rel_error_before": before, "val_rel_error_after": rel_error(x_val),
            "steps": steps, "lr": lr}
