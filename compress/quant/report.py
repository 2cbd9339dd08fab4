"""The ``context.info["quant"]`` record every quantization recipe writes for the report.

It keeps apart what users confuse: ``simulated`` (rounded values stored in float: the
number format's *quality* only) and ``packed_bytes`` (what the format really takes).
Whether the result runs faster is not a fact the recipe states: the profiler measures it
against the dense model in the same process (``profile.latency_vs_dense``,
:mod:`eval.paired`), on the CPU the report names.
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
    device: str,
    **facts: Any,
) -> dict[str, Any]:
    """Write ``context.info["quant"]`` (and return it)."""
    info = {
        "method": method,
        "simulated": simulated,
        "device": device,
        **facts,
    }
    if context is not None:
        context.info["quant"] = info
    return info
