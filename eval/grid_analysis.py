"""Do a checkpoint's weights already sit on a low-bit grid? Distinct values per block.

A checkpoint dequantized from a low-bit format (SmolLM2 here ships as GGUF Q4_1: 4-bit
codes with a scale and minimum per block of 32) holds at most ``2^b`` distinct values in
every block the format quantized together. Unrounded fp16/fp32 weights hold as many
distinct values as a block has elements. For every 2-D weight, this module counts the
distinct values of each block of ``k`` consecutive stored columns (``k`` = 32, 64, 128;
the last, contiguous dimension, along which GGUF, GPTQ and AWQ group) and reports, per
kind of tensor, the share of blocks with at most ``2^b`` distinct values.

A grid is **detected** at ``b`` bits and block ``k`` when at least 99% of the blocks of
``k`` hold at most ``2^b < k`` distinct values (the smallest such ``b``).
:func:`implications` says what that makes uninformative: weight quantization at
``b`` bits or more re-rounds weights that already carry at most ``b`` bits per block,
so its loss understates the loss on unrounded weights, and error-compensating methods
(GPTQ, AWQ, HQQ, rotations) can show little gain over round-to-nearest there.
"""

from __future__ import annotations

from typing import Any

import torch

BLOCKS = (32, 64, 128)
#: a grid is detected when this share of blocks has at most 2^b distinct values.
DETECT_SHARE = 0.99


def distinct_per_block(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Distinct values in each block of ``k`` consecutive entries of each row (``[n_blocks]``)."""
    blocks = rows.reshape(-1, k)
    s = blocks.sort(dim=1).values
    return (s[:, 1:] != s[:, :-1]).sum(dim=1) + 1


class GridCounter:
    """Histograms of distinct values per block, by tensor kind and block size."""

    def __init__(self) -> None:
        self.hist: dict[str, dict[int, torch.Tensor]] = {}

    def add(self, kind: str, flat: torch.Tensor, shape: tuple[int, ...]) -> None:
        """``flat``: whole rows of a tensor of ``shape`` (as the analysis streams them)."""
        if len(shape) != 2:
            return
        last = shape[-1]
        rows = flat.reshape(-1, last)
        per = self.hist.setdefault(kind, {})
        for k in BLOCKS:
            if last % k:
                continue
            counts = distinct_per_block(rows, k)
            h = per.setdefault(k, torch.zeros(k + 1, dtype=torch.int64))
            h += torch.bincount(counts, minlength=k + 1)[: k + 1]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for kind, per in self.hist.items():
            entry: dict[str, Any] = {"blocks": {}}
            detected = None
            for k, h in sorted(per.items()):
                n = int(h.sum())
                if not n:
                    continue
                cum = h.cumsum(0).double() / n
                shares = {str(2**b): round(float(cum[2**b]), 6) for b in range(1, 8) if 2**b < k}
                median = int((cum >= 0.5).nonzero()[0])
                entry["blocks"][str(k)] = {"count": n, "median_distinct": median,
                                           "max_distinct": int(h.nonzero().max()),
                                           "share_at_most": shares}
                for b in range(1, 8):
                    if 2**b < k and cum[2**b] >= DETECT_SHARE:
                        if detected is None or b < detected["bits"]:
                            detected = {"bits": b, "block": k,
                                        "share": round(float(cum[2**b]), 6)}
                        break
            entry["grid"] = detected
            out[kind] = entry
        return out


def implications(model: str, grid: dict[str, Any]) -> list[str]:
    """Sentences for report.md: what a detected grid makes uninformative for ``model``."""
    lin = (grid or {}).get("linear", {}).get("grid")
    if not lin:
        if grid:
            return [f"{model}: no low-bit grid detected in the linear weights (blocks of "
                    f"{'/'.join(map(str, BLOCKS))} stored columns hold as many distinct values "
                    "as entries): every bit width is informative."]
        return []
    b, k = lin["bits"], lin["block"]
    lines = [
        f"{model}: the linear weights sit on a {b}-bit grid: {100 * lin['share']:.1f}% of blocks "
        f"of {k} consecutive stored columns hold at most {2**b} distinct values (the checkpoint "
        "was dequantized from a low-bit format).",
        f"Uninformative for {model}: weight quantization at {b} bits or more (any method, any "
        f"group size). It re-rounds weights that carry at most {b} bits per block, so its loss "
        "understates the loss on unrounded fp16 weights, and GPTQ, AWQ, HQQ or a rotation can "
        f"gain little over round-to-nearest there (at {b} bits with groups of {k} aligned to the "
        "original blocks, round-to-nearest can be almost lossless). A tie between GPTQ and RTN "
        f"at {b} bits on this model is not evidence about GPTQ.",
        f"Still informative for {model}: below {b} bits, and pruning; but every method starts "
        "from pre-rounded weights, so absolute losses are not those of the fp16 model.",
    ]
    emb = (grid or {}).get("embedding", {}).get("grid")
    if emb:
        lines.append(f"{model}: the embeddings sit on a {emb['bits']}-bit grid per block of "
                     f"{emb['block']} (quantizing them at {emb['bits']} bits or more is free).")
    return lines
