"""The analysis of one checkpoint: every tensor streamed once, statistics by group,
component, role and block, and the JSON report (see :mod:`eval.analyze`)."""

from __future__ import annotations

import logging
import math
import os
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download

from compress.errors import UserError
from compress.models import resolve_path
from eval.analyze.readers import (
    _FLOAT_DTYPES,
    NameMap,
    _component_order,
    _Entry,
    _load_config,
    _pickle_tensors,
    _safetensors_chunks,
    _safetensors_entries,
    checkpoint_files,
)
from eval.analyze.stats import (
    CHUNK_ELEMENTS,
    HIST_BINS,
    SUB_CHUNK,
    Moments,
    _Groups,
    _histograms,
    _slice_stats,
    _Workspace,
)
from eval.grid_analysis import GridCounter
from eval.report import slug

log = logging.getLogger(__name__)

SCHEMA = "compress-suite/weight-analysis"
SCHEMA_VERSION = 1
DEFAULT_THRESHOLDS = (1e-3, 1e-2, 0.1, 1.0)

#: coarse groups of components.
GROUPS = ("attn", "cross", "ffn", "embedding", "lm_head", "norm", "bias", "other")
#: which tensors the low-bit grid check looks at (eval.grid_analysis), by group.
GRID_KINDS = {"attn": "linear", "cross": "linear", "ffn": "linear", "embedding": "embedding",
              "lm_head": "embedding"}
#: kinds of the per-model histograms (a few readable lines per plot).
HIST_KINDS = {
    "attn": "attention", "cross": "attention", "ffn": "ffn", "embedding": "embedding",
    "lm_head": "embedding", "norm": "other", "bias": "other", "other": "other",
}
HIST_LABELS = {
    "attention": "attention linears (q/k/v/o, cross)",
    "ffn": "FFN linears (in/gate/out)",
    "embedding": "embeddings and LM head",
    "other": "norms, biases, other",
}
ROLES = ("encoder", "decoder", "shared")


def validate_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    ts = tuple(sorted({float(t) for t in thresholds}))
    if not ts or any(not math.isfinite(t) or t <= 0 for t in ts):
        raise UserError(f"thresholds must be positive finite numbers, got {list(thresholds)}")
    return ts


def analyze_folder(
    path: str | os.PathLike,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    model: str | None = None,
    source: str | None = None,
    allow_pickle: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
    on_tensor: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Analyse the checkpoint in ``path`` (a folder or one ``.safetensors`` file).

    Returns the JSON-ready report (see the module docstring). ``on_tensor`` is
    called with each tensor's element count (for progress bars).

    >>> rep = analyze_folder("out/tiny-llama", thresholds=(1e-2,))    # doctest: +SKIP
    >>> rep["by_component"]["ffn_gate"]["params"]                      # doctest: +SKIP
    4096
    """
    thresholds = validate_thresholds(thresholds)
    if chunk_elements < 1:
        raise UserError("chunk_elements must be at least 1")
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"model folder {str(path)!r} does not exist")
    t0 = time.perf_counter()
    fmt, files = checkpoint_files(path, allow_pickle)
    folder = path if path.is_dir() else path.parent
    names = NameMap(_load_config(folder))
    if names.warning:
        log.warning("%s: %s", model or folder, names.warning)
    acc = _Accumulator(thresholds, names)
    t_stream, cpu_stream = time.perf_counter(), time.process_time()
    for entry, chunks in _stream(fmt, files, chunk_elements):
        acc.add(entry, chunks)
        if on_tensor and entry.dtype in _FLOAT_DTYPES:
            on_tensor(entry.numel)
    if acc.overall.n == 0:
        raise UserError(f"{path} holds no floating-point weights")
    stream_s = time.perf_counter() - t_stream
    stream_cpu_s = time.process_time() - cpu_stream
    report = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "model": model or str(path),
        "slug": model_slug(model or str(path)),
        "source": source or f"local:{path.resolve()}",
        "path": str(path),
        "format": fmt,
        "files": [f.name for f in files],
        "family": names.family,
        "kind": names.kind,
        "warning": names.warning,
        "thresholds": list(thresholds),
        "threshold_note": "frac_above[t] = fraction of weights with |w| > t (exact counts); "
        "std is the population std; skewness and excess_kurtosis are population values",
    }
    report |= acc.summaries()
    report |= {
        "elapsed_s": time.perf_counter() - t0,
        "stream_s": stream_s,
        "stream_cpu_s": stream_cpu_s,
        "params_per_s": acc.overall.n / stream_s if stream_s > 0 else None,
        "timing_note": "elapsed_s includes reading config.json and building the meta skeleton "
        "(and the first import of the model code); params_per_s is over stream_s, the "
        "reading and counting of the tensors",
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_note": "process lifetime peak (ru_maxrss), imports included",
        "threads": torch.get_num_threads(),
        "chunk_elements": chunk_elements,
    }
    return report


def _stream(
    fmt: str, files: list[Path], chunk_elements: int
) -> Iterator[tuple[_Entry, Iterator[torch.Tensor]]]:
    """Every tensor of the checkpoint, each as an iterator of flat chunks."""
    if fmt == "safetensors":
        return ((e, _safetensors_chunks(e, chunk_elements)) for e in _safetensors_entries(files))
    return (
        (e, (t.reshape(-1)[i: i + chunk_elements]
             for i in range(0, max(t.numel(), 1), chunk_elements)))
        for e, t in _pickle_tensors(files))


class _Accumulator:
    """Statistics of the tensors streamed so far: overall, by role, component, group,
    weight/bias and block, the bit histograms and one line per tensor."""

    def __init__(self, thresholds: tuple[float, ...], names: NameMap):
        self.thresholds, self.names = thresholds, names
        self.ws = _Workspace(thresholds)
        self.overall = Moments(thresholds)
        self.by_role, self.by_comp, self.by_group, self.by_kind = (
            _Groups(thresholds) for _ in range(4))
        self.blocks: dict[tuple[str, int], tuple[Moments, _Groups]] = {}
        self.hist = {k: torch.zeros(HIST_BINS, dtype=torch.int64)
                     for k in dict.fromkeys(HIST_KINDS.values())}
        self.tensors: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.matched: set[str] = set()
        self.dtypes: dict[str, int] = {}
        self.grids = GridCounter()

    def add(self, entry: _Entry, chunks: Iterator[torch.Tensor]) -> None:
        if entry.dtype not in _FLOAT_DTYPES:
            self.skipped.append({"name": entry.key, "dtype": entry.dtype,
                                 "shape": list(entry.shape)})
            return
        info, skeleton_name = self.names.lookup(entry.key)
        if skeleton_name:
            self.matched.add(skeleton_name)
        kind = HIST_KINDS.get(info.group, "other")
        block_key = (info.role, info.block) if info.block is not None else None
        if block_key is not None and block_key not in self.blocks:
            self.blocks[block_key] = (Moments(self.thresholds), _Groups(self.thresholds))
        tensor_stats = Moments(self.thresholds)
        grid_kind = GRID_KINDS.get(info.group)
        for chunk in chunks:
            x = chunk if chunk.dtype in (torch.float32, torch.float64) else chunk.float()
            if grid_kind:
                self.grids.add(grid_kind, x, entry.shape)
            for piece in x.split(SUB_CHUNK):
                stats, counts = _slice_stats(piece, self.ws)
                tensor_stats.merge(stats)
                self.hist[kind] += counts
            del chunk, x
        tensor_stats.tensors = 1
        targets = [self.overall, self.by_role[info.role], self.by_comp[info.component],
                   self.by_group[info.group],
                   self.by_kind["bias" if info.component == "bias" else "weight"]]
        if block_key is not None:
            block_all, block_comps = self.blocks[block_key]
            targets += [block_all, block_comps[info.component]]
        for target in targets:
            target.merge(tensor_stats)
        self.dtypes[entry.dtype] = self.dtypes.get(entry.dtype, 0) + entry.numel
        s = tensor_stats.summary()
        self.tensors.append({
            "name": entry.key, "shape": list(entry.shape), "dtype": entry.dtype,
            "component": info.component, "role": info.role, "block": info.block,
            "params": s["params"], "frac_above": s["frac_above"], "std": s["std"],
            "max_abs": s["max_abs"],
        })

    def summaries(self) -> dict[str, Any]:
        absent = sorted(set(self.names.infos) - self.matched)
        order = _component_order()
        blocks = self.blocks
        return {
            "dtypes": self.dtypes,
            "overall": self.overall.summary(),
            "by_role": self.by_role.summaries(ROLES),
            "by_group": self.by_group.summaries(GROUPS),
            "by_component": self.by_comp.summaries(order),
            "weights_vs_biases": self.by_kind.summaries(("weight", "bias")),
            "by_block": [
                {"role": role, "index": index, "all": blocks[(role, index)][0].summary(),
                 "components": blocks[(role, index)][1].summaries(order)}
                for role, index in sorted(blocks, key=lambda k: (ROLES.index(k[0]), k[1]))
            ],
            "counted": "tensors stored in the checkpoint files; a tied weight stored once is "
            "counted once",
            "absent_from_files": {
                "tied": [n for n in absent if n in self.names.tied],
                "untied": [n for n in absent if n not in self.names.tied],
            },
            "skipped_non_float": self.skipped,
            "histograms": _histograms(self.hist),
            "grid": self.grids.summary(),
            "grid_note": "distinct values per block of 32/64/128 consecutive stored columns of "
            "every 2-D weight; a grid is detected when 99% of blocks hold at most 2^b < k values "
            "(eval.grid_analysis)",
            "tensors": self.tensors,
        }


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- model names ------------------------------------------------------------------


def resolve_model(name: str, allow_pickle: bool = False) -> tuple[str, Path]:
    """(source, local path) for a zoo name, a folder or file, or a hub id.

    Hub ids download only ``*.safetensors`` and ``*.json`` (plus ``*.bin`` with
    ``allow_pickle``).
    """
    expanded = Path(name).expanduser()
    if expanded.exists():
        return f"local:{expanded.resolve()}", expanded
    source, where = resolve_path(name)
    if not source.startswith("hub:"):
        return source, Path(where)
    patterns = ["*.safetensors", "*.json"] + (["*.bin"] if allow_pickle else [])
    try:
        local = snapshot_download(where, allow_patterns=patterns)
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated repo...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"cannot get {name!r} from the Hugging Face hub ({first[:200]}); offline, use a zoo "
            "model (smollm2-135m, minilm-l6, minilm-l6-sentiment, bert2bert-punct) or a folder"
        ) from None
    return source, Path(local)


def model_slug(name: str) -> str:
    p = Path(name)
    if p.exists():
        name = p.stem if p.is_file() else p.resolve().name
    return slug(name.replace("/", "--"))


def analyze(
    name: str,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    allow_pickle: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
    on_tensor: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Analyse a zoo model, local folder or hub id; see :func:`analyze_folder`."""
    source, path = resolve_model(name, allow_pickle)
    return analyze_folder(path, thresholds, model=name, source=source,
                          allow_pickle=allow_pickle, chunk_elements=chunk_elements,
                          on_tensor=on_tensor)
