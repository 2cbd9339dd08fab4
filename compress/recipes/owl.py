"""``owl``: outlier-weighted layerwise sparsity (Yin et al. 2023) for magnitude, Wanda or SparseGPT.

OWL ("Outlier Weighed Layerwise Sparsity: A Missing Secret Sauce for Pruning LLMs to
High Sparsity", arXiv:2310.05175) gives each transformer block its own sparsity from
its share of outlier Wanda scores (see :mod:`compress.pruning.owl`), keeping the
average at the target, then prunes with ``method``. Published on LLaMA-7B at 70%
(WikiText-2): Wanda 85.8 -> OWL+Wanda 24.6; SparseGPT 26.3 -> OWL+SparseGPT 19.5.

``method=wanda`` / ``magnitude`` compare per output row (``scope=row``, Wanda's rule);
``sparsegpt`` uses its own per-block mask selection over the matrix (``scope=layer``)
unless told otherwise. Calibration: the context's shared set (:mod:`compress.calibration`)
for the outlier scores (dense model) and for Wanda / SparseGPT.

Family: pruning; budget knob: ``sparsity``.

    python -m compress.recipes.owl --model smollm2-135m --sparsity 0.7 --out out/owl70
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch.nn as nn

from compress.calibration import calibration_set
from compress.config import option
from compress.context import Context
from compress.errors import UserError
from compress.pruning.config import UnstructuredConfig
from compress.pruning.owl import owl_sparsities
from compress.pruning.recovery import run_with_recovery, task_for
from compress.pruning.sparse_format import NAME as SPARSE_FORMAT
from compress.pruning.targets import select_targets
from compress.pruning.unstructured import (
    magnitude_step,
    plan,
    record_sparsity,
    sparsegpt_step,
    wanda_step,
)
from compress.registry import get_recipe, register_recipe
from compress.traits import Knob, Traits, config_memory, pattern_sparsity

METHODS = ("wanda", "magnitude", "sparsegpt")


@dataclass(frozen=True)
class OWLConfig(UnstructuredConfig):
    """OWL: per-block sparsity from outlier ratios, then magnitude, Wanda or SparseGPT."""

    method: str = option("wanda", "pruning method applied with the per-block targets",
                         choices=METHODS)
    scope: str = option("auto", "comparison group: auto (row for wanda/magnitude, layer for "
                        "sparsegpt), row or layer", choices=("auto", "row", "layer"))
    owl_m: float = option(5.0, "M: a Wanda score is an outlier above M x its block's mean",
                          low=1.0, high=1000.0)
    owl_lambda: float = option(0.08, "lambda: per-block sparsities lie within +-lambda of the "
                               "target", low=0.0, high=0.5)
    blocksize: int = option(128, "sparsegpt: columns per mask-selection block", low=1,
                            high=1_000_000)
    damp: float = option(0.01, "sparsegpt: Hessian dampening (fraction of mean diagonal)",
                         low=0.0, high=1.0, low_inclusive=False)
    true_sequential: bool = option(True, "sparsegpt: calibrate each group of linears after "
                                   "the groups before it were pruned")


    def validate(self) -> None:
        super().validate()
        if self.pattern != "unstructured":
            raise UserError(f"{self._where('pattern')}: OWL sets unstructured per-block "
                            f"sparsities; for {self.pattern} use the {self.method} recipe")
        if self.group_ratios:
            raise UserError(f"{self._where('group_ratios')}: OWL sets the per-block targets "
                            "itself; give --sparsity")
        if "embeddings" in self.ratios() or "lm_head" in self.ratios():
            raise UserError(f"{self._where('groups')}: OWL weighs transformer blocks; prune "
                            "embeddings or the LM head with another recipe")

    def inner(self):
        """The config of ``method`` with these shared fields (and the resolved scope)."""
        cls = get_recipe(self.method).config_cls
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: getattr(self, k) for k in names if hasattr(self, k)}
        values["scope"] = (("layer" if self.method == "sparsegpt" else "row")
                           if self.scope == "auto" else self.scope)
        return cls(**values)


@register_recipe(
    "owl", OWLConfig, family="pruning",
    knobs=(Knob("sparsity", "up", 0.01, 0.99, 0.01),),
    traits=Traits(calibrates=True, sparsity=pattern_sparsity,
                  keeps_zeros=lambda c: c.method != "sparsegpt",
                  zeros_note="with method=sparsegpt the weight updates change earlier zeros"),
    formats=(SPARSE_FORMAT,), memory=config_memory,
)
def owl(model: nn.Module, config: OWLConfig, context: Context) -> nn.Module:
    """Prune with outlier-weighted per-block sparsity (OWL) and magnitude, Wanda or SparseGPT."""
    inner = config.inner()
    plan(model, inner)
    targets = [t for t in select_targets(model, tuple(inner.ratios())) if t.block >= 0]
    batches = calibration_set(context, model, recipe="owl").batches()
    sparsities, record = owl_sparsities(model, batches, targets, config.sparsity,
                                        config.owl_m, config.owl_lambda)
    task = task_for(model, context)

    def step(m: nn.Module, fraction: float):
        if config.method == "magnitude":
            return magnitude_step(m, inner, fraction, sparsities)
        if config.method == "wanda":
            return wanda_step(m, inner, context, task, fraction, sparsities)
        return sparsegpt_step(m, inner, context, fraction, sparsities)

    def rewind_weights(m: nn.Module) -> dict:
        return {t.name: t.weight for t in select_targets(m, tuple(inner.ratios()))}

    model = run_with_recovery(model, inner, context, step, rewind_weights)
    record_sparsity(model, inner, context, "owl")
    context.info["owl"] = {"method": config.method, "M": config.owl_m,
                           "lambda": config.owl_lambda, **record,
                           "paper": "Yin et al. 2023, arXiv:2310.05175"}
    return model


if __name__ == "__main__":
    import sys

    from compress.cli import recipe_main

    sys.exit(recipe_main("owl"))
