"""The run report: one JSON file per run, schema-versioned, written atomically.

A report holds everything needed to trust and compare a number: run id and key,
time, git commit, status (a failed run still writes its report, with the error),
wall time; the model (name, source, task, architecture facts); the pipeline of
recipes with their full configs; metrics with direction and protocol; the profile;
what the recipes recorded (``info``); library versions and thread count.

The run key is a hash of model + pipeline configs + quick flag, plus the calibration
spec (N sequences x L tokens, seed; :mod:`compress.calibration`) when a step
calibrates: the same run always maps to the same file, so a rerun replaces its report and a sweep can skip runs whose
report already says ``ok``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from compress.errors import UserError
from compress.fileio import TMP_PREFIX, atomic_write_json
from eval.machine import cpu_info
from eval.protocol import key_part

log = logging.getLogger(__name__)

SCHEMA = "compress-suite/report"
SCHEMA_VERSION = 1
LIBRARIES = (
    "torch",
    "transformers",
    "accelerate",
    "safetensors",
    "datasets",
    "peft",
    "bitsandbytes",
    "optimum-quanto",
    "onnxruntime",
    "sacrebleu",
    "scikit-learn",
    "numpy",
)


def dig(data: Any, *path: str) -> Any:
    """``data[path[0]][path[1]]...``, or None where a key is missing or a level is not a dict.

    >>> dig({"profile": {"latency": {"1x128": {"median_ms": 9.5}}}}, "profile", "latency", "1x128", "median_ms")
    9.5
    >>> dig({"profile": None}, "profile", "latency") is None
    True
    """
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def runs_by_model(reports: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Reports grouped by model name, models sorted by name, runs in their given order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for report in reports:
        out.setdefault(report["model"]["name"], []).append(report)
    return dict(sorted(out.items()))


def fmt_value(v: float | None, digits: int = 4) -> str:
    """A metric value for a table: ``12,345``, ``123.4``, else ``digits`` significant
    digits; ``–`` for None or NaN.

    >>> [fmt_value(v) for v in (12345.6, 123.45, 0.123456, None, float("nan"))]
    ['12,346', '123.5', '0.1235', '–', '–']
    """
    if v is None or v != v:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.{digits}g}"


def fmt_pm(metric: dict[str, Any] | None) -> str:
    """``±h``: half the width of a metric's 95% interval, or ``""`` where it has none
    (reports written before intervals).

    >>> fmt_pm({"value": 20.0, "interval": {"low": 19.2, "high": 20.9}})
    '±0.85'
    >>> fmt_pm({"value": 20.0}), fmt_pm({"interval": {"low": 5.0, "high": 5.0}})
    ('', '±0')
    """
    iv = (metric or {}).get("interval")
    if not isinstance(iv, dict):
        return ""
    lo, hi = iv.get("low"), iv.get("high")
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)):
        return ""
    half = (hi - lo) / 2
    if half == 0:
        return "±0"
    return f"±{half:,.0f}" if half >= 10 else f"±{half:.2g}"


def within_noise(metric: dict[str, Any] | None) -> bool:
    """True when the metric's paired change against dense is within noise (its 95%
    interval contains 0); False where it is resolved or was not measured."""
    paired = (metric or {}).get("vs_dense")
    return isinstance(paired, dict) and paired.get("within_noise") is True


def pipeline_label(pipeline: list[dict[str, Any]]) -> str:
    """Short human label of a pipeline, e.g. ``wanda(sparsity=0.5)+rtn(bits=4)``."""
    parts = []
    for step in pipeline:
        config = step.get("config", {})
        defaults = step.get("defaults", {})
        changed = [
            f"{k}={_short(v)}"
            for k, v in config.items()
            if k not in ("recipe", "version") and defaults.get(k, object()) != v
        ]
        parts.append(step["recipe"] + (f"({','.join(changed)})" if changed else ""))
    return "+".join(parts) or "identity"


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "/".join(map(_short, v))
    return str(v)


def run_key(
    model: str, pipeline: list[dict[str, Any]], quick: bool,
    calibration: dict[str, Any] | None = None, harness: str | None = None,
    protocol: str = "full",
) -> str:
    """Stable hash of what determines a run's result.

    ``protocol`` (:mod:`eval.protocol`) joins the key only when it is ``lean``: full and
    quick runs keep the keys they always had.

    ``calibration`` (:func:`compress.calibration.run_key_part`) is given when a step
    calibrates; runs that do not calibrate keep the key they always had. ``harness``
    (``lm-eval``) marks a report that holds only an outside harness's metrics
    (:mod:`eval.lm_eval`): its own key, so a sweep never takes it for a finished run.
    """
    data: dict[str, Any] = {"model": model, "pipeline": [s["config"] for s in pipeline],
                            "quick": quick}
    if calibration is not None:
        data["calibration"] = calibration
    if harness is not None:
        data["harness"] = harness
    data |= key_part(protocol)
    canonical = json.dumps(data, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "run"


def report_filename(model: str, pipeline: list[dict[str, Any]], key: str) -> str:
    recipes = "+".join(s["recipe"] for s in pipeline) or "identity"
    return f"{slug(model.split('/')[-1])}__{slug(recipes)}__{key}.json"


def samples_filename(report_name: str) -> str:
    """The per-item samples file beside report ``report_name`` (``<stem>.samples.npz``)."""
    return report_name.removesuffix(".json") + ".samples.npz"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(threads: int | None = None) -> dict[str, Any]:
    # deferred: the readers of reports (eval.compare, eval.report) never need torch,
    # which takes seconds to import
    import torch

    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_info(),  # model and ISA flags (AVX2, AVX-512, VNNI, AMX): int8 gains depend on them
        "threads": threads if threads is not None else torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "libraries": versions,
    }


@dataclass
class Report:
    """In-memory report; :meth:`to_dict` is the JSON schema."""

    model: dict[str, Any]
    pipeline: list[dict[str, Any]]
    quick: bool = False
    #: the measurement protocol (eval.protocol): full, lean or quick
    protocol: str = "full"
    #: the calibration spec in the run key (None when no step calibrates); the drawn
    #: set's record (source, tokens, sha256) is in ``info["calibration"]``.
    calibration: dict[str, Any] | None = None
    status: str = "running"
    error: str | None = None
    traceback: str | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float | None = None
    stage_times_s: dict[str, float] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    environment: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = field(default_factory=git_commit)
    #: set when the report holds only an outside harness's metrics (eval.lm_eval)
    harness: str | None = None
    #: per metric, the per-item statistics (eval.benchmark.samples.Samples) behind its
    #: value: written beside the JSON as ``<report>.samples.npz`` so that two runs can be
    #: compared on the same items (``python -m eval.compare --paired A.json B.json``)
    samples: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        return run_key(self.model["name"], self.pipeline, self.quick, self.calibration,
                       self.harness, self.protocol)

    @property
    def run_id(self) -> str:
        stamp = self.created.replace(":", "").replace("-", "")[:15]
        return f"{stamp}-{self.key[:8]}"

    @property
    def filename(self) -> str:
        return report_filename(self.model["name"], self.pipeline, self.key)

    def to_dict(self) -> dict[str, Any]:
        extra = {"harness": self.harness} if self.harness is not None else {}
        extra |= key_part(self.protocol)
        if self.samples:
            extra["samples_file"] = samples_filename(self.filename)
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "key": self.key,
            "created": self.created,
            "git_commit": self.git_commit,
            "status": self.status,
            "error": self.error,
            "traceback": self.traceback,
            "wall_time_s": self.wall_time_s,
            "stage_times_s": self.stage_times_s,
            "quick": self.quick,
            "calibration": self.calibration,
            "model": self.model,
            "label": pipeline_label(self.pipeline),
            "pipeline": self.pipeline,
            "metrics": self.metrics,
            "profile": self.profile,
            "info": self.info,
            "environment": self.environment,
        } | extra

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / self.filename
        if self.samples:  # first, so that a report never names a missing file
            from eval.benchmark.samples import save_samples

            save_samples(path.with_name(samples_filename(path.name)), self.samples)
        atomic_write_json(path, self.to_dict())
        return path


class ReportError(ValueError):
    pass


def validate_report(data: Any) -> dict[str, Any]:
    """Check a parsed JSON object is a report this version can read."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ReportError("not a compress-suite report")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise ReportError("report has no schema_version")
    if version > SCHEMA_VERSION:
        raise ReportError(
            f"report schema version {version} is newer than this suite reads ({SCHEMA_VERSION}); "
            "update the suite"
        )
    for key, kind in (("model", dict), ("pipeline", list), ("metrics", list), ("status", str)):
        if not isinstance(data.get(key), kind):
            raise ReportError(f"report field {key!r} is missing or not a {kind.__name__}")
    if not isinstance(data["model"].get("name"), str):
        raise ReportError("report has no model name")
    for m in data["metrics"]:
        if not (
            isinstance(m, dict)
            and isinstance(m.get("name"), str)
            and isinstance(m.get("value"), (int, float))
            and isinstance(m.get("higher_is_better"), bool)
        ):
            raise ReportError("report has a malformed metric")
    if not isinstance(data.get("profile", {}), dict):
        raise ReportError("report profile is not an object")
    return data


def read_reports(
    folder: str | Path, warn: Any = None, recursive: bool = False
) -> list[dict[str, Any]]:
    """Every readable report in ``folder``; others are skipped with a one-line warning.

    ``warn`` is called with each warning line (default: ``logging.warning``).
    """
    warn = warn or log.warning
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"reports folder {folder} does not exist")
    files: Iterable[Path] = folder.rglob("*.json") if recursive else folder.glob("*.json")
    out = []
    for path in sorted(files):
        if path.name.startswith(TMP_PREFIX):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            warn(f"skipping {path}: unreadable JSON ({str(exc).splitlines()[0][:80]})")
            continue
        try:
            out.append(validate_report(data) | {"_path": str(path)})
        except ReportError as exc:
            warn(f"skipping {path}: {exc}")
    return out
