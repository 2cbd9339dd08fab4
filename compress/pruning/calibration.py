"""Activation statistics for pruning: summed squared inputs per feature of each linear.

Calibration tokens come from :mod:`compress.calibration` (one protocol for every
recipe); the block-by-block driver is :mod:`compress.sequential`.

* :func:`sequential_blocks` is Wanda's sequential variant (Sun et al. 2023, section 3,
  as in SparseGPT): block by block, the block's linears' summed squared inputs
  (padding excluded) are gathered in one replay of the block, ``on_block`` prunes
  it, and the pruned block's outputs feed the next block.
* :func:`collect_input_sumsq` is the simpler whole-model variant (one forward per
  batch, hooks everywhere) used by the structured recipe's activation importance and
  for an LM head after the blocks.

Every hook is removed before returning, also on errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn

from compress.arch import Block
from compress.calibration import CalibBatch
from compress.sequential import all_linears, collect_model_inputs, run_sequential, stacks_of

__all__ = ["CalibBatch", "collect_input_sumsq", "sequential_blocks", "stacks_of", "SumSq"]


class SumSq:
    """Running ``sum x**2`` per input feature and token counts, by module name."""

    def __init__(self) -> None:
        self.sumsq: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}

    def add(self, name: str, x: torch.Tensor) -> None:
        """``x``: (tokens, in) rows of real tokens."""
        sq = x.float().pow(2).sum(0)  # (in,)
        if name in self.sumsq:
            self.sumsq[name] += sq
            self.tokens[name] += x.shape[0]
        else:
            self.sumsq[name] = sq
            self.tokens[name] = x.shape[0]


@torch.no_grad()
def collect_input_sumsq(
    model: nn.Module,
    batches: list[CalibBatch],
    modules: dict[str, tuple[nn.Module, str]],
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """One whole-model forward per batch; summed squared inputs per feature of ``modules``.

    ``modules`` maps a name to ``(module, role)``; ``role`` picks the token mask
    ("encoder"/"decoder") that excludes padding.
    """
    acc = SumSq()
    collect_model_inputs(model, batches, modules, acc.add)
    return acc.sumsq, acc.tokens


def sequential_blocks(
    model: nn.Module,
    batches: list[CalibBatch],
    on_block: Callable[[Block, dict[str, torch.Tensor]], None],
    components: Callable[[Block], dict[str, str]],
) -> Iterator[None]:
    """Gather summed squared inputs block by block and let ``on_block`` prune each block.

    ``components(block)`` names the linears to watch (component -> full name);
    ``on_block(block, sumsq)`` gets the summed squared inputs per full name. A
    generator that yields once per block (for progress).
    """
    done: list[Block] = []

    def visit(run: Any) -> None:
        acc = SumSq()
        group = components(run.block)
        if group:
            run.collect(all_linears(run.block, set(group.values())), acc.add)
        on_block(run.block, acc.sumsq)

    run_sequential(model, batches, visit, progress=done.append)
    for _ in done:
        yield None
