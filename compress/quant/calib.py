"""Running calibration batches through a model for quantization statistics.

The tokens come from :mod:`compress.calibration` (one protocol for every recipe);
this module runs :class:`~compress.calibration.CalibBatch` es through a model with
every hook removed afterwards, and measures per-feature input ranges with padding
excluded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from compress.calibration import CalibBatch
from compress.models import input_device, to_device
from compress.sequential import _rows, forward_kwargs


def forward(model: nn.Module, batch: CalibBatch | dict[str, torch.Tensor]) -> Any:
    """One inference forward (no cache, no grad) of a calibration batch."""
    inputs = batch.inputs if isinstance(batch, CalibBatch) else batch
    with torch.no_grad():
        return model(**to_device(inputs, input_device(model)), **forward_kwargs(model))


@contextlib.contextmanager
def hooks(handles: list[Any]) -> Iterator[None]:
    """Remove every hook handle in ``handles`` on exit, whatever happens."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        handles.clear()


def input_absmax(
    model: nn.Module,
    modules: dict[str, nn.Module],
    batches: list[CalibBatch],
    roles: dict[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-input-feature max |x| seen by each module over the calibration batches.

    ``roles`` maps a module name to the token mask that excludes its padding
    ("encoder" / "decoder"); by default the blocks' linears get their stack's mask,
    other modules the only mask when there is exactly one.
    """
    if roles is None:
        from compress.sequential import linear_roles

        roles = linear_roles(model)
    stats: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}

    def make(name: str):
        def hook(_mod, args):
            role = roles.get(name)
            mask = masks.get(role) if role else (next(iter(masks.values())) if len(masks) == 1
                                                 else None)
            x = _rows(args[0], mask)
            if x.numel() == 0:
                return
            m = x.abs().amax(dim=0).cpu()
            stats[name] = m if name not in stats else torch.maximum(stats[name], m)

        return hook

    handles = [mod.register_forward_pre_hook(make(name)) for name, mod in modules.items()]
    with hooks(handles):
        for batch in batches:
            masks = batch.token_masks
            forward(model, batch)
    return stats
