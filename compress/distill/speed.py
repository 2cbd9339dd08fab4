"""Teacher-vs-student latency in one process, in alternating rounds (a fair speedup).

On a shared machine the load changes from minute to minute, so two profiles taken at
different times do not give a trustworthy ratio. This measures both models in the same
process with the same pinned thread count, alternating teacher and student every
round after a warm-up, and reports medians and the ratio of medians per input shape.
Forward passes run under ``torch.inference_mode`` with no KV cache.

    python -m compress.distill.speed --teacher minilm-l6-sentiment --student out/minilm-l3 \\
        --threads 2 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn


def _inputs(model: nn.Module, tokenizer: Any, batch: int, length: int) -> dict[str, torch.Tensor]:
    vocab = getattr(tokenizer, "vocab_size", None) or 1000
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, max(11, vocab - 1), (batch, length), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids[:, : max(1, length // 2)]
    if hasattr(model.config, "use_cache") and hasattr(model, "generate"):
        inputs["use_cache"] = False
    return inputs


def alternating_latency(
    models: dict[str, nn.Module],
    tokenizer: Any,
    shapes: Sequence[tuple[int, int]] = ((1, 128), (8, 128)),
    rounds: int = 15,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, Any]:
    """Median forward latency (ms) per model and shape, measured in alternating rounds."""
    if threads is not None:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "rounds": rounds,
                           "warmup": warmup, "shapes": {}}
    for batch, length in shapes:
        feeds = {name: _inputs(m, tokenizer, batch, length) for name, m in models.items()}
        times: dict[str, list[float]] = {name: [] for name in models}
        with torch.inference_mode():
            for r in range(warmup + rounds):
                order = list(models) if r % 2 == 0 else list(reversed(models))
                for name in order:
                    t0 = time.perf_counter()
                    models[name](**feeds[name])
                    dt = (time.perf_counter() - t0) * 1000
                    if r >= warmup:
                        times[name].append(dt)
        shape = {name: {"median_ms": round(statistics.median(v), 3),
                        "min_ms": round(min(v), 3)} for name, v in times.items()}
        names = list(models)
        if len(names) == 2:
            a, b = names
            shape["speedup"] = round(shape[a]["median_ms"] / shape[b]["median_ms"], 3)
        out["shapes"][f"{batch}x{length}"] = shape
    return out


def main(argv: list[str] | None = None) -> int:
    import json

    from compress.cli import parse_shapes
    from compress.models import load_model

    p = argparse.ArgumentParser(prog="python -m compress.distill.speed", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--teacher", required=True, help="zoo name, folder or hub id")
    p.add_argument("--student", required=True, help="folder of the distilled student")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--shapes", nargs="+", default=["1x128", "8x128"], help="BATCHxLENGTH")
    args = p.parse_args(argv)
    shapes = list(parse_shapes(args.shapes))
    teacher = load_model(args.teacher)
    student = load_model(args.student, teacher.task)
    res = alternating_latency({"teacher": teacher.model, "student": student.model},
                              teacher.tokenizer, shapes, args.rounds, args.warmup, args.threads)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    from compress.cli import run_main

    sys.exit(run_main(main))
