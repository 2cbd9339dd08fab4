"""OWL: outlier-weighted layerwise sparsity (Yin et al. 2023, arXiv:2310.05175).

Uniform per-layer sparsity ignores that some layers hold many more *outliers* (weights
whose Wanda score ``|W_ij| * ||X_j||`` is far above the layer's mean) than others, and
that those layers suffer most from pruning. OWL measures each layer's outlier ratio

    D_l = share of the layer's scores above M x mean(layer's scores)

(all targeted linears of transformer block ``l`` together; the reference code's
``check_outlier_mean``), maps the ratios linearly onto ``[0, 2 lambda]``, and shifts
them to average ``1 - s``: those are the layer densities, so the layers with more
outliers keep more weights and the average sparsity stays ``s``:

    r_l = (D_l - min D) / (max D - min D) * 2 lambda
    density_l = r_l - mean(r) + (1 - s),   sparsity_l = 1 - density_l

The scores come from the dense model's activations, block by block (one sequential
pass with nothing changed), on the shared calibration set. The paper's LLaMA setting is
``M = 5``, ``lambda = 0.08``; any pruning method then uses the per-layer targets
(:func:`compress.pruning.unstructured.wanda_step` and friends take them).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from compress.calibration import CalibBatch
from compress.pruning.calibration import SumSq
from compress.pruning.targets import Target, out_in
from compress.sequential import BlockRun, all_linears, run_sequential


def outlier_ratio(scores: torch.Tensor, m: float) -> float:
    """Share of ``scores`` above ``m`` times their mean (the paper's D, as a fraction)."""
    scores = scores.flatten().float()
    return float((scores > m * scores.mean()).sum()) / max(scores.numel(), 1)


def densities(ratios: list[float], sparsity: float, lam: float,
              weights: list[float] | None = None) -> list[float]:
    """Layer densities from outlier ratios (the module docstring's two lines).

    ``weights`` (the blocks' targeted weight counts) make the shift a weighted mean, so
    the overall sparsity is the target also when blocks differ in size (an
    encoder-decoder's decoder blocks carry cross-attention); with equal blocks it is
    the paper's plain mean.
    """
    r = torch.tensor(ratios, dtype=torch.float64)
    span = float(r.max() - r.min()) if len(ratios) else 0.0
    r = (r - r.min()) / span * 2 * lam if span > 0 else torch.zeros_like(r)
    w = torch.tensor(weights, dtype=torch.float64) if weights else torch.ones_like(r)
    d = r - (r * w).sum() / w.sum() + (1.0 - sparsity)
    return [float(x) for x in d]


@torch.no_grad()
def block_outlier_ratios(
    model: nn.Module, batches: list[CalibBatch], targets: list[Target], m: float
) -> dict[tuple[str, int], float]:
    """(role, block index) -> outlier ratio of the Wanda scores of the block's targets."""
    by_name = {t.name: t for t in targets}
    names = set(by_name)
    out: dict[tuple[str, int], float] = {}

    def on_block(run: BlockRun) -> None:
        group = all_linears(run.block, names)
        if not group:
            return
        acc = SumSq()
        run.collect(group, acc.add)
        scores = []
        for name in group.values():
            sq = acc.sumsq.get(name)
            if sq is None:
                continue
            w = out_in(by_name[name]).abs().float()  # (out, in)
            scores.append((w * sq.sqrt()[None, :]).flatten())
        if scores:
            out[(run.block.role, run.block.index)] = outlier_ratio(torch.cat(scores), m)

    run_sequential(model, batches, on_block)
    return out


def owl_sparsities(
    model: nn.Module, batches: list[CalibBatch], targets: list[Target], sparsity: float,
    m: float, lam: float,
) -> tuple[dict[str, float], dict[str, list]]:
    """Per-target sparsity (target name -> s_l) and the per-block record for the report."""
    ratios = block_outlier_ratios(model, batches, targets, m)
    keys = sorted(ratios, key=lambda k: (k[0] != "encoder", k[1]))
    sizes = {k: 0 for k in keys}
    for t in targets:
        if (t.role, t.block) in sizes:
            sizes[(t.role, t.block)] += t.numel()
    dens = densities([ratios[k] for k in keys], sparsity, lam, [sizes[k] for k in keys])
    per_block = {k: min(max(1.0 - d, 0.0), 0.999) for k, d in zip(keys, dens, strict=True)}
    out = {t.name: per_block[(t.role, t.block)] for t in targets
           if (t.role, t.block) in per_block}
    record = {
        "blocks": [f"{role}.{i}" for role, i in keys],
        "outlier_ratio": [round(ratios[k], 6) for k in keys],
        "sparsity": [round(per_block[k], 6) for k in keys],
    }
    return out, record
