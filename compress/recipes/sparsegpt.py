"""``sparsegpt``: one-shot pruning with second-order weight reconstruction (Frantar & Alistarh 2023).

SparseGPT ("Massive Language Models Can Be Accurately Pruned in One-Shot",
arXiv:2301.00774) prunes each linear layer column by column and updates the weights
still to come with the optimal brain surgeon (OBS) step computed from the layer's
calibration Hessian ``H = 2/n X^T X`` (see :mod:`compress.pruning.sparsegpt`). Unlike
Wanda, which only chooses a mask, it also changes the surviving weights to absorb the
removed ones. Published, 50% unstructured / 2:4 (WikiText-2, C4 calibration):
OPT-125M 36.7 / 60.7 vs Wanda 39.3 / 81.6 (dense 27.66); Llama-2-7B 6.51 / 10.17 vs
Wanda 6.42 / 11.02 (dense 5.12).

Calibration: the context's shared set (:mod:`compress.calibration`), block by block on
the pruned blocks' outputs (:mod:`compress.sequential`); within a block, each group of
linears (attention inputs, attention output, FFN inputs, FFN output) is calibrated
after the groups before it were pruned (``true_sequential``). Unstructured (the mask
chosen per block of ``blocksize`` columns, over the whole matrix as in the paper:
``scope=layer``, or per row: ``scope=row``) or N:M (``--pattern 2:4``).

Family: pruning; budget knob: ``sparsity``. Layerwise (OWL) sparsity: recipe ``owl``
with ``method=sparsegpt``.

    python -m compress.recipes.sparsegpt --model smollm2-135m --sparsity 0.5 --out out/sgpt50
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from compress.config import option
from compress.context import Context
from compress.errors import UserError
from compress.pruning.config import UnstructuredConfig
from compress.pruning.recovery import run_with_recovery
from compress.pruning.sparse_format import NAME as SPARSE_FORMAT
from compress.pruning.targets import select_targets
from compress.pruning.unstructured import plan, record_sparsity, sparsegpt_step
from compress.registry import register_recipe
from compress.traits import Knob, Traits, config_memory, nm_divides, pattern_sparsity


@dataclass(frozen=True)
class SparseGPTConfig(UnstructuredConfig):
    """SparseGPT: prune with OBS weight updates from calibration Hessians."""

    scope: str = option("layer", "mask selection within each block of columns: layer (the "
                        "whole matrix, as in the paper) or row (each output row)",
                        choices=("layer", "row"))
    blocksize: int = option(128, "columns per mask-selection and lazy-update block", low=1,
                            high=1_000_000)
    damp: float = option(0.01, "Hessian dampening, as a fraction of its mean diagonal",
                         low=0.0, high=1.0, low_inclusive=False)
    true_sequential: bool = option(True, "within a block, calibrate each group of linears "
                                   "after the groups before it were pruned")


    def validate(self) -> None:
        super().validate()
        if "embeddings" in self.ratios():
            raise UserError(f"{self._where('groups')}: SparseGPT cannot prune embeddings (no "
                            "input activations); prune them with the magnitude recipe")


@register_recipe(
    "sparsegpt", SparseGPTConfig, family="pruning",
    knobs=(Knob("sparsity", "up", 0.01, 0.99, 0.01, fixed_by=("pattern",)),),
    traits=Traits(calibrates=True, sparsity=pattern_sparsity, divides=nm_divides,
                  keeps_zeros=False,
                  zeros_note="SparseGPT's weight updates change every weight still to come, "
                  "zeros of earlier steps included"),
    formats=(SPARSE_FORMAT,), memory=config_memory,
)
def sparsegpt(model: nn.Module, config: SparseGPTConfig, context: Context) -> nn.Module:
    """Prune with SparseGPT's second-order weight reconstruction (unstructured or N:M)."""
    plan(model, config)

    def rewind_weights(m: nn.Module) -> dict:
        return {t.name: t.weight for t in select_targets(m, tuple(config.ratios()))}

    model = run_with_recovery(
        model, config, context, lambda m, f: sparsegpt_step(m, config, context, f),
        rewind_weights,
    )
    record_sparsity(model, config, context, "sparsegpt")
    return model


if __name__ == "__main__":
    import sys

    from compress.cli import recipe_main

    sys.exit(recipe_main("sparsegpt"))
