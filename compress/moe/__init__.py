"""MoEfication: dense FFNs split into experts with a router (Zhang et al. 2022).

* :mod:`compress.moe.layer`: :class:`MoEFFN` (computes only the routed experts),
  :class:`SimilarityRouter`, :class:`MLPRouter`, :class:`AddBias`;
* :mod:`compress.moe.partition`: balanced k-means on weights or co-activations;
* :mod:`compress.moe.routers`: router targets, training and held-out scores;
* :mod:`compress.moe.convert`: finding FFNs (from :mod:`compress.arch`), reading weights,
  swapping modules;
* :mod:`compress.moe.measure`: activation sparsity, timings, expert fine-tuning;
* :mod:`compress.moe.format`: the ``moe`` save format and its loader.

The recipe is :mod:`compress.recipes.moefy`.
"""

from compress.moe.convert import find_sites, moe_modules
from compress.moe.format import load_moe, save_moe
from compress.moe.layer import AddBias, MLPRouter, MoEFFN, SimilarityRouter

__all__ = [
    "AddBias",
    "MLPRouter",
    "MoEFFN",
    "SimilarityRouter",
    "find_sites",
    "load_moe",
    "moe_modules",
    "save_moe",
]
