"""Test helpers for the sweep, budget and report tests.

* ``sweep-probe-test``: a test-only recipe (importable by a sweep subprocess through the
  sweep file's ``imports = ["sweep_helpers"]`` with ``tests/`` on ``PYTHONPATH``) that
  appends a line to a log file when it runs, can sleep and can fail on purpose.
* :func:`fake_report`: a schema-valid report dict with chosen metrics and profile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from compress.config import RecipeConfig, option
from compress.context import Context
from compress.registry import register_recipe
from compress.traits import Traits, config_memory


@dataclass(frozen=True)
class ProbeConfig(RecipeConfig):
    """Test recipe: log a line, optionally sleep or fail; the model is unchanged."""

    level: float = option(0.0, "a knob with no effect, to make distinct runs", low=0.0, high=1.0)
    sleep: float = option(0.0, "seconds to sleep inside the recipe", low=0.0)
    fail: bool = option(False, "raise an error instead of returning the model")
    log: str = option("", "file to append 'level' to when the recipe runs")
    hold: str = option("", "while this file exists, wait (holds a run open; at most 10 min)")


@register_recipe("sweep-probe-test", ProbeConfig, family="test", knobs=(), traits=Traits(),
                 formats=(), memory=config_memory)
def sweep_probe(model: nn.Module, config: ProbeConfig, context: Context) -> nn.Module:
    """Test-only recipe: logs each call, sleeps, may fail on purpose."""
    if config.log:
        with open(config.log, "a", encoding="utf-8") as fh:
            fh.write(f"{config.level:g}\n")
            fh.flush()
    if config.sleep:
        time.sleep(config.sleep)
    deadline = time.time() + 600
    while config.hold and Path(config.hold).exists() and time.time() < deadline:
        time.sleep(0.05)
    if config.fail:
        raise RuntimeError("sweep-probe failed on purpose")
    return model


def fake_report(
    model: str = "lm",
    steps: list[tuple[str, dict[str, Any]]] | None = None,
    *,
    task: str = "causal-lm",
    metrics: dict[str, float] | None = None,
    disk: float = 100e6,
    nonzero: float = 10e6,
    latency: float = 10.0,
    status: str = "ok",
    quick: bool = False,
    info: dict[str, Any] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A report dict as ``eval.run`` writes it (pipeline of ``(recipe, config)`` steps)."""
    from eval.report import Report

    steps = steps if steps is not None else [("identity", {})]
    pipeline = [
        {
            "recipe": r,
            "config": {"recipe": r, "version": 1, "seed": 0} | c,
            "defaults": {"recipe": r, "version": 1, "seed": 0},
        }
        for r, c in steps
    ]
    hib = {"ppl_wiki": False, "ppl_news": False, "ppl_seq2seq": False}
    metrics = metrics if metrics is not None else {"ppl_wiki": 20.0}
    r = Report(
        model={
            "name": model,
            "task": task,
            "source": f"local:{model}",
            "arch": {
                "family": "llama",
                "kind": "decoder",
                "activation": "silu",
                "stacks": [
                    {"role": "decoder", "blocks": 2, "heads": 4, "kv_heads": 2, "intermediate": 64}
                ],
            },
        },
        pipeline=pipeline,
        quick=quick,
        status=status,
        error=error,
        metrics=[]
        if status != "ok"
        else [
            {
                "name": k,
                "value": v,
                "higher_is_better": hib.get(k, True),
                "protocol": {"corpus": "wiki", "split": "test", "seq_len": 512},
            }
            for k, v in metrics.items()
        ],
        profile={}
        if status != "ok"
        else {
            "bytes_on_disk": disk,
            "params_total": 10e6,
            "params_nonzero": nonzero,
            "latency": {"1x128": {"median_ms": latency}, "8x128": {"median_ms": latency * 6}},
            # the same-process ratio to dense (dense takes 10 ms here), +-2% interval
            "latency_vs_dense": {
                "1x128": {"ratio": latency / 10.0, "ci95": [latency / 10.2, latency / 9.8]}
            },
            "peak_rss_bytes": 500e6,
            "threads": 2,
            "warmup": 3,
            "repeats": 10,
            "device": "cpu",
            "dtype": "float32",
        },
        info=info or {},
        wall_time_s=12.0,
        environment={
            "cpu_count": 2,
            "threads": 2,
            "python": "3.11",
            "libraries": {"torch": "2.13.0", "transformers": "5"},
        },
    )
    r.git_commit = "0123456789abcdef"
    return r.to_dict()


def write_reports(folder: Path, reports: list[dict[str, Any]]) -> list[Path]:
    from compress.fileio import atomic_write_json
    from eval.report import report_filename

    paths = []
    for r in reports:
        path = folder / report_filename(r["model"]["name"], r["pipeline"], r["key"])
        atomic_write_json(path, r)
        paths.append(path)
    return paths
