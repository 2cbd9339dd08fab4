"""The ``context.info["quant"]`` record every quantization recipe writes for the report.

It keeps apart what users confuse: ``simulated`` (rounded values stored in float: the
number format's *quality* only), ``packed_bytes`` (what the format really takes) and
``runs_faster_here`` (whether the saved model runs faster than fp32 on ``device``).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn


def device_of(model: nn.Module) -> str:
    try:
        return next(model.parameters()).device.type
    except StopIteration:
        return "cpu"


def record(
    context: Any,
    *,
    method: str,
    simulated: bool,
    runs_faster_here: bool | None,
    device: str,
    **facts: Any,
) -> dict[str, Any]:
    """Write ``context.info["quant"]`` (and return it)."""
    info = {
        "method": method,
        "simulated": simulated,
        "runs_faster_here": runs_faster_here,
        "device": device,
        **facts,
    }
    if context is not None:
        context.info["quant"] = info
    return info
