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
instead of cancelling.

**Step search.** Before the zero solver, each group's step is chosen among 129 candidates
within 5% of its min/max step, codes held fixed, by the least mean ``|W - W_r|``
(:func:`search_scale`): the package's ``scale_gridsearch`` option
(``optimize_weights_proximal_v2``), except that the package offsets every group's inverse
step by one absolute amount (5% of the matrix's mean), which moves groups of large weights
by many times their own 5% and groups of small weights by almost nothing; here each group
moves by its own relative amount (``scale_search="reference"`` is the package's).

SmolLM2-135M, ppl_wiki full protocol (dense 19.99; ``reports/bench/method_quality_smollm2-135m.json``,
one process, the same calibration record for every variant, though HQQ reads none):

| g64 | RTN | HQQ, step search (default) | no search | package's search | float start, no search |
|---|---|---|---|---|---|
| 3-bit | 61.38 | **58.69** | 62.26 | 62.58 | 154.37 |
| 4-bit | 25.83 | 25.23 | **24.35** | 25.18 | 25.57 |

At 3 bits only the relative step search puts HQQ below RTN; without it the weight-space
``l_p`` objective does not track perplexity (100 iterations instead of 20 changed nothing
on 8 windows), and the package's own solver (``solver="reference"``: constant ``beta``,
one early stop per matrix, checked against a direct transcription in
``tests/test_methods.py``) gives 64.59. At 4 bits the search costs 0.9 ppl against no
search on SmolLM2, whose weights already sit on a 4-bit grid of 32-column blocks
(``eval.analyze`` finds it), while on bert2bert-punct (weights trained here in fp32) it
lowers the teacher-forced perplexity at both widths
(``reports/bench/method_quality_bert2bert-punct_avx2.json``, variants ``hqq*-g64`` and
``hqq*-g64-noscale``). The chrF of greedy decoding there is noisier and does not
agree (see the JSON).
"""

from __future__ import annotations

import torch

from compress.quant.grid import QuantSpec, from_units, scale_zero, to_units


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """The generalised soft-thresholding operator of the ``l_p`` proximal step."""
    a = x.abs()
    return torch.sign(x) * (a - a.pow(p - 1) / beta).clamp_min(0.0)


SOLVERS = ("group", "reference")
#: how the step of each group is chosen before the zero-point solver (see search_scale)
SCALE_SEARCHES = ("relative", "reference", "none")


@torch.no_grad()
def search_scale(
    W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec, mode: str,
    *, candidates: int = 129, span: float = 0.05,
) -> torch.Tensor:
    """Each row's step chosen among ``candidates`` around its min/max step, codes held fixed.

    The ``hqq`` package's ``update_scale_grid_search`` (``opt_params["scale_gridsearch"]``
    of ``optimize_weights_proximal_v2``, e0b1d00): the codes ``q`` of the start grid are
    kept and each group's inverse step ``1/s`` is replaced by the candidate that minimises
    the group's mean ``|W - (q - z) / c|``. The candidate set always contains the start
    (an odd count, centred on it), so no group's ``l_1`` error grows.

    ``mode="reference"``: the package's candidates, ``1/s + t`` for ``t`` evenly spaced in
    ``[-span, span] * mean(1/s)`` over the whole matrix, one absolute offset for every
    group. ``mode="relative"``: ``(1/s) (1 + t)`` for ``t`` in ``[-span, span]``, the same
    relative change for every group whatever its magnitude (the package's absolute offset
    moves a group with a large step by many times its own 5% and a group with a small step
    by almost nothing). ``mode="none"`` returns ``scale`` unchanged. The result is rounded
    to fp16, as stored.
    """
    if mode == "none":
        return scale
    if mode not in SCALE_SEARCHES:
        raise ValueError(f"scale search {mode!r}: choose one of {', '.join(SCALE_SEARCHES)}")
    q = torch.clamp(torch.round(W / scale + zero), spec.qmin, spec.qmax) - zero
    inv = 1.0 / scale  # [n, 1]
    offsets = torch.linspace(-span, span, candidates, dtype=W.dtype)
    mean_inv = inv.abs().mean()
    best_err = torch.full_like(inv, float("inf"))
    best_inv = inv.clone()
    for t in offsets:
        cand = inv + t * mean_inv if mode == "reference" else inv * (1.0 + t)
        cand = torch.where(cand.abs() < 1e-12, torch.full_like(cand, 1e-12), cand)
        err = (W - q / cand).abs().mean(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_inv = torch.where(better, cand, best_inv)
    out = (1.0 / best_inv).to(torch.float16).float()
    return torch.where(out > 0, out, scale)


@torch.no_grad()
def hqq_units(
    units: torch.Tensor, spec: QuantSpec, *, lp_norm: float = 0.7, beta: float = 10.0,
    kappa: float = 1.01, iters: int = 20, round_zero: bool = True, solver: str = "group",
    scale_search: str = "relative",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Optimise the zero point of every row of ``units`` (``[n_units, group]``).

    ``round_zero`` starts the solver from the integer zero ``round(-min / s)`` (the
    reference's ``round_zero``) instead of the float ``-min / s``. ``solver="group"``
    (default): ``beta`` grows by ``kappa`` each iteration and each group keeps its best
    iterate; ``"reference"``: the ``hqq`` package's default solver as of e0b1d00
    (``optimize_weights_proximal_legacy``): constant ``beta``, and all groups stop together
    when the mean error over ``units`` stops falling, keeping the zero computed in that
    last step. ``scale_search`` first moves each group's step (:func:`search_scale`).
    Returns (dequantized rows, fp16-rounded scale ``[n, 1]``, zero ``[n, 1]``, facts).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r}: choose one of {', '.join(SOLVERS)}")
    W = units.float()
    scale, zero = scale_zero(W, spec)  # float-zero asym grid: step s, zero -min/s
    if round_zero:
        zero = torch.round(zero)
    lo, hi = spec.qmin, spec.qmax
    # the facts' "before" is the min/max start grid, ahead of any step search
    minmax_err = (W - scale * (torch.clamp(torch.round(W / scale + zero), lo, hi) - zero)).abs()
    minmax_err = float(minmax_err.mean())
    scale = search_scale(W, scale, zero, spec, scale_search)

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
    facts = {"mean_abs_error_before": minmax_err,
             "mean_abs_error_after": float((W - out).abs().mean())}
    return out, scale, zero16, facts


def hqq_quantize(W: torch.Tensor, spec: QuantSpec, **kw) -> tuple[torch.Tensor, dict]:
    """HQQ-rounded ``W`` (``[out, in]``, float32) and the solver's facts."""
    units, info = to_units(W.float(), spec)
    out, _scale, _zero, facts = hqq_units(units, spec, **kw)
    return from_units(out, info), facts
