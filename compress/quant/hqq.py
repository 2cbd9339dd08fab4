"""HQQ: half-quadratic quantization, no calibration data.

Badri & Shaji (2023), "Half-Quadratic Quantization of Large Machine Learning Models"
(mobiusml, blog and ``hqq`` package). Per quantization group with a fixed step ``s``
(from the group's min/max) the zero point ``z`` is optimised for a sparsity-promoting
``l_p`` error (``p < 1``) between the weights and their dequantized codes,

    min_z  || W - Q_z^-1(Q_z(W)) ||_p^p ,

by half-quadratic splitting with an auxiliary error ``W_e`` and a penalty ``beta`` that
grows by ``kappa`` each iteration:

    W_q = clamp(round(W / s + z))            W_r = s (W_q - z)
    W_e = shrink_p(W - W_r, beta)            shrink_p(x) = sign(x) relu(|x| - |x|^(p-1) / beta)
    z   = mean(W_q - (W - W_e) / s)          beta = kappa * beta

(``optimize_weights_proximal`` in the reference code, with ``p = 0.7``, ``beta = 10``,
``kappa = 1.01``, 20 iterations). The reference stops all groups together once the
tensor's mean ``|W - W_r|`` stops falling; here each group keeps the zero point with
its lowest mean ``|W - W_r|`` over the iterations, so no group ends worse than where it
started. Scale and zero point are stored as fp16 (the ``zero_point="float"`` grid of
:mod:`compress.quant.grid`). The ``hqq`` package itself ships only as a source
archive whose install runs a CUDA build step, so the solver is implemented here.

**Start point.** The solver starts from the min/max grid with its zero point *rounded* to
an integer (the reference's ``round_zero``, which its ``BaseQuantizeConfig`` turns on at
4 bits only); here it is on at every width (``round_zero=False`` restores the float start).
Starting from the float zero ``-min / s`` leaves the level nearest 0 off zero, so the many
near-zero weights of a group all move the same way and their errors add up in the matmul
instead of cancelling. SmolLM2-135M, ppl_wiki full protocol (dense 19.99;
``reports/bench/method_quality_smollm2-135m.json``, variants ``hqq*-g64`` and
``hqq*-g64-floatstart``): 3-bit g64 RTN 61.38, HQQ from the float zero 154.37, from the
rounded zero 62.26 (still 2% more excess than RTN: the weight-space ``l_p`` objective does
not track perplexity on this model, and 100 iterations instead of 20 did not change that
on 8 windows); 4-bit g64 RTN 25.83, float start 25.57, rounded start 24.35.

**The package's own solver does no better.** ``solver="reference"`` follows the ``hqq``
package's default loop as of e0b1d00 (``optimize_weights_proximal_legacy``: constant
``beta``, one early stop per matrix), checked against a direct transcription in
``tests/test_methods.py``. On the same SmolLM2 protocol (variants ``hqq*-g64-reference*``
of the JSON above) it loses to RTN at 3-bit g64 too. Nor is the cause SmolLM2's
pre-rounded weights: on bert2bert-punct, whose weights were trained here in fp32, HQQ's
chrF stays below RTN's at 3-bit g64, 69.57 against 70.59 (dense 82.80), and at 4-bit g64,
80.53 against 80.78 (``reports/bench/method_quality_bert2bert-punct_avx2.json``).
Against the suite's integer-zero min/max grid, HQQ's weight-space objective buys no
quality at 3 bits on either model.
"""

from __future__ import annotations

import torch

from compress.quant.grid import QuantSpec, from_units, scale_zero, to_units


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """The generalised soft-thresholding operator of the ``l_p`` proximal step."""
    a = x.abs()
    return torch.sign(x) * (a - a.pow(p - 1) / beta).clamp_min(0.0)


SOLVERS = ("group", "reference")


@torch.no_grad()
def hqq_units(
    units: torch.Tensor, spec: QuantSpec, *, lp_norm: float = 0.7, beta: float = 10.0,
    kappa: float = 1.01, iters: int = 20, round_zero: bool = True, solver: str = "group",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Optimise the zero point of every row of ``units`` (``[n_units, group]``).

    ``round_zero`` starts the solver from the integer zero ``round(-min / s)`` (the
    reference's ``round_zero``) instead of the float ``-min / s``. ``solver="group"``
    (default): ``beta`` grows by ``kappa`` each iteration and each group keeps its best
    iterate; ``"reference"``: the ``hqq`` package's default solver as of e0b1d00
    (``optimize_weights_proximal_legacy``): constant ``beta``, and all groups stop together
    when the mean error over ``units`` stops falling, keeping the zero computed in that
    last step.
    Returns (dequantized rows, fp16-rounded scale ``[n, 1]``, zero ``[n, 1]``, facts).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r}: choose one of {', '.join(SOLVERS)}")
    W = units.float()
    scale, zero = scale_zero(W, spec)  # float-zero asym grid: step s, zero -min/s
    if round_zero:
        zero = torch.round(zero)
    lo, hi = spec.qmin, spec.qmax

    def dequant(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.clamp(torch.round(W / scale + z), lo, hi)
        return q, scale * (q - z)

    def step(q: torch.Tensor, Wr: torch.Tensor, b: float) -> torch.Tensor:
        We = shrink_lp(W - Wr, b, lp_norm)
        return (q - (W - We) / scale).mean(dim=1, keepdim=True)

    q, Wr = dequant(zero)
    start_err = (W - Wr).abs().mean(dim=1, keepdim=True)
    if solver == "reference":
        best, z = float("inf"), zero.clone()
        for _ in range(iters):
            q, Wr = dequant(z)
            z = step(q, Wr, beta)
            err = float((W - Wr).abs().mean())
            if not err < best:
                break
            best = err
        best_zero = z
    else:
        best_err, best_zero = start_err.clone(), zero.clone()
        for _ in range(iters):
            z = step(q, Wr, beta)
            beta *= kappa
            q, Wr = dequant(z)
            err = (W - Wr).abs().mean(dim=1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_zero = torch.where(better, z, best_zero)
    zero16 = best_zero.to(torch.float16).float()
    q = torch.clamp(torch.round(W / scale + zero16), lo, hi)
    out = scale * (q - zero16)
    facts = {"mean_abs_error_before": float(start_err.mean()),
             "mean_abs_error_after": float((W - out).abs().mean())}
    return out, scale, zero16, facts


def hqq_quantize(W: torch.Tensor, spec: QuantSpec, **kw) -> tuple[torch.Tensor, dict]:
    """HQQ-rounded ``W`` (``[out, in]``, float32) and the solver's facts."""
    units, info = to_units(W.float(), spec)
    out, _scale, _zero, facts = hqq_units(units, spec, **kw)
    return from_units(out, info), facts
