"""Importance scores for unstructured pruning: the lower the score, the earlier a weight goes.

* magnitude: ``|W_ij|``.
* Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large
  Language Models"): ``|W_ij| * ||X_j||_2``, the weight times the L2 norm of its
  input feature over the calibration tokens; compared within each output row.

Score functions take ``(target, rows)`` and return a fresh float32 tensor of shape
``(r, in)`` for ``out_in(target)[rows]`` (see :mod:`compress.pruning.masks`).
"""

from __future__ import annotations

import torch

from compress.errors import UserError
from compress.pruning.masks import ScoreFn
from compress.pruning.targets import Target, out_in


def magnitude_score(target: Target, rows: slice) -> torch.Tensor:
    return out_in(target)[rows].abs().float()


def wanda_score(input_sumsq: dict[str, torch.Tensor]) -> ScoreFn:
    """Wanda's score given the summed squared input of each target (by module name)."""

    def score(target: Target, rows: slice) -> torch.Tensor:
        sq = input_sumsq.get(target.name)
        if sq is None:
            raise UserError(
                f"no calibration activations reached {target.name}; give calibration text "
                "that exercises every block (for encoder-decoders: source and target pairs)"
            )
        norm = sq.sqrt().to(torch.float32)  # (in,)
        return out_in(target)[rows].abs().float() * norm[None, :]  # (r, in)

    return score
