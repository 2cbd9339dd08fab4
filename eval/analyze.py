"""Where the small weights are: streamed, exact weight statistics of any checkpoint.

``python -m eval.analyze smollm2-135m minilm-l6 <hub id or folder> --out reports/analysis/``

Before pruning, one asks what fraction of the parameters is far from zero, overall
and by layer, and how attention, FFN, encoder and decoder differ. This module
answers that for any model the architecture table knows, including models larger
than memory:

* **Streaming.** Tensors are read one at a time (big ones in row chunks of
  ``chunk_elements``) from the safetensors files (and shards listed in
  ``model.safetensors.index.json``); the model is never built. Only a skeleton on
  the ``meta`` device (no storage) is made, to map checkpoint names to the
  architecture table's components, block indices and roles. The safetensors file
  is reopened for every chunk of a large tensor so that its memory map never
  holds more than one chunk's pages (a map kept open grows resident memory by
  every page read).
* **Exact.** Statistics are accumulated in float64 from every element, not
  sampled: counts, mean and the central moments M2..M4 of each slice of
  ``SUB_CHUNK`` elements, merged with the pairwise update of Chan et al. (1979)
  extended to third and fourth moments by Pebay (2008, "Formulas for robust,
  one-pass parallel computation of covariances and arbitrary-order statistical
  moments"); exact counts of ``|w| > t`` for each threshold, of zeros, and max
  ``|w|``. Skewness and excess kurtosis are population values
  (``scipy.stats.skew/kurtosis`` with ``bias=True``); the standard deviation is
  the population one (``ddof=0``). For float32 (and float16 / bfloat16, upcast
  exactly) ``|w| > t`` is compared in float32 against the largest float32 not
  above ``t``, which gives the same answer as comparing the exact values;
  float64 tensors are compared in float64.
* **Histogram.** One exact histogram of the float32 bit patterns: sign, exponent
  and the top 5 mantissa bits (``bits >> 18``), i.e. 32 log-spaced bins per
  octave (about 2 % wide) over the whole float range, for each sign, kept for
  four kinds of tensors (attention, FFN, embeddings + head, the rest). The
  cumulative plot reads the fraction of ``|w|`` below each bin edge off it
  exactly; the histogram plot redistributes each bin uniformly over linear bins
  of ``w`` (a display approximation inside 2 %-wide bins). No range has to be
  known in advance, so one pass suffices.

Components come from :mod:`compress.arch`: self-attention ``attn_*``,
cross-attention ``cross_*``, FFN ``ffn_in/gate/out``, plus ``embedding``,
``lm_head``, ``norm``, ``bias`` (every ``*.bias`` tensor; it still counts for
its block and role) and ``other``. Checkpoint keys are matched to skeleton
names by their longest common dotted suffix, so checkpoints saved with or
without a wrapper prefix (``bert.``, ``transformer.``, ``model.``) map alike.
Tied weights stored once in the file (GPT-2's ``lm_head``) are counted once,
under the name the file stores; the report lists the absent tied names.

Output: ``<out>/<slug>.json`` (written atomically), ``<slug>_hist.png``,
``<slug>_blocks.png`` and ``cumulative.png`` (all models of the run), and
``rich`` tables on stdout. The JSON (``schema_version`` 1) holds ``model``,
``source``, ``family``/``kind``, ``thresholds``, and one statistics record
(``params``, ``frac_above``/``count_above`` per threshold, ``frac_zero``,
``mean``, ``std``, ``skewness``, ``excess_kurtosis``, ``max_abs``; ``None`` where
undefined) for ``overall``, each entry of ``by_role``, ``by_group``,
``by_component``, ``weights_vs_biases``, and per block (``by_block``: role,
index, ``all`` and ``components``); the bit histogram (``histograms``), one
line per tensor (``tensors``), what the files lack (``absent_from_files``), and
timing and peak RSS.

Checkpoints without safetensors are refused with a hint to convert them, or read
with ``torch.load(weights_only=True, mmap=True)`` under ``--allow-pickle`` (the
memory map of a pickle file stays open for the whole file, so that fallback does
not bound resident memory the way the safetensors reader does).

>>> result = analyze("minilm-l6")                                  # doctest: +SKIP
>>> result["by_group"]["ffn"]["frac_above"]["0.01"]                # doctest: +SKIP
0.8276...
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.errors import UserError
from eval.grid_analysis import GridCounter, implications

log = logging.getLogger(__name__)

SCHEMA = "compress-suite/weight-analysis"
SCHEMA_VERSION = 1
DEFAULT_THRESHOLDS = (1e-3, 1e-2, 0.1, 1.0)
#: elements per chunk: float64 temporaries of a chunk stay near 150 MB.
CHUNK_ELEMENTS = 1 << 22
#: elements per compute slice: float64 temporaries of a slice stay in the CPU cache.
SUB_CHUNK = 1 << 16
#: histogram index = float32 bits >> HIST_SHIFT (sign, exponent, 5 mantissa bits).
HIST_SHIFT = 18
HIST_BINS = 1 << (32 - HIST_SHIFT)  # 16384, both signs
HIST_HALF = HIST_BINS // 2  # magnitude bins per sign
#: the bulk panel of the histogram plot spans 1.25x this quantile of |w|.
BULK_QUANTILE = 0.999
PLOT_BINS = 400

#: coarse groups of components.
GROUPS = ("attn", "cross", "ffn", "embedding", "lm_head", "norm", "bias", "other")
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
#: which tensors the low-bit grid check looks at (eval.grid_analysis), by group.
GRID_KINDS = {"attn": "linear", "cross": "linear", "ffn": "linear", "embedding": "embedding",
              "lm_head": "embedding"}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


# --- streamed exact moments ------------------------------------------------------


@dataclass
class Moments:
    """Exact streamed statistics of a set of values (float64 accumulation).

    ``merge`` is the pairwise update of Chan et al. / Pebay: merging the
    statistics of two disjoint sets gives those of their union, whatever the
    split, so chunks can be processed in any order and size.
    """

    thresholds: tuple[float, ...]
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0
    zeros: int = 0
    above: list[int] = field(default_factory=list)
    max_abs: float = 0.0
    nonfinite: int = 0
    tensors: int = 0

    def __post_init__(self) -> None:
        if not self.above:
            self.above = [0] * len(self.thresholds)

    def merge(self, o: Moments) -> None:
        if o.n == 0:
            self.nonfinite += o.nonfinite
            self.tensors += o.tensors
            return
        na, nb = self.n, o.n
        n = na + nb
        delta = o.mean - self.mean
        d_n = delta / n
        m2 = self.m2 + o.m2 + delta * d_n * na * nb
        m3 = (
            self.m3 + o.m3
            + delta * d_n * d_n * na * nb * (na - nb)
            + 3.0 * d_n * (na * o.m2 - nb * self.m2)
        )
        m4 = (
            self.m4 + o.m4
            + delta * d_n * d_n * d_n * na * nb * (na * na - na * nb + nb * nb)
            + 6.0 * d_n * d_n * (na * na * o.m2 + nb * nb * self.m2)
            + 4.0 * d_n * (na * o.m3 - nb * self.m3)
        )
        self.n, self.mean, self.m2, self.m3, self.m4 = n, self.mean + d_n * nb, m2, m3, m4
        self.zeros += o.zeros
        self.above = [a + b for a, b in zip(self.above, o.above, strict=True)]
        self.max_abs = max(self.max_abs, o.max_abs)
        self.nonfinite += o.nonfinite
        self.tensors += o.tensors

    def summary(self) -> dict[str, Any]:
        """JSON-ready statistics; undefined ones (no values, zero variance) are None."""
        n = self.n
        spread = n > 0 and self.m2 > 0
        return {
            "params": n,
            "tensors": self.tensors,
            "frac_above": {
                _tkey(t): (a / n if n else None)
                for t, a in zip(self.thresholds, self.above, strict=True)
            },
            "count_above": {_tkey(t): a for t, a in zip(self.thresholds, self.above, strict=True)},
            "frac_zero": self.zeros / n if n else None,
            "zeros": self.zeros,
            "mean": self.mean if n else None,
            "std": math.sqrt(self.m2 / n) if n else None,
            "skewness": math.sqrt(n) * self.m3 / self.m2**1.5 if spread else None,
            "excess_kurtosis": n * self.m4 / self.m2**2 - 3.0 if spread else None,
            "max_abs": self.max_abs if n else None,
            "nonfinite": self.nonfinite,
        }


def _tkey(t: float) -> str:
    return f"{t:g}"


def _round_down_f32(t: float) -> float:
    """The largest float32 not above ``t``: for float32 ``x``, ``x > t`` iff ``x > this``."""
    f = float(torch.tensor(t, dtype=torch.float32))
    if f > t:
        f = float(torch.nextafter(torch.tensor(f, dtype=torch.float32),
                                  torch.tensor(-math.inf, dtype=torch.float32)))
    return f


def magnitude_edges(lo: int, hi: int) -> list[float]:
    """Lower edges of magnitude bins ``lo..hi`` (bin m covers [edge(m), edge(m+1)))."""
    m = torch.arange(lo, hi + 1, dtype=torch.int64)
    return (m << HIST_SHIFT).to(torch.int32).view(torch.float32).tolist()


class _Workspace:
    """Reused buffers for one slice (fresh big allocations would page-fault every time)."""

    def __init__(self, thresholds: tuple[float, ...]):
        self.thresholds = thresholds
        # float32 |x| > t  <=>  |x| > the largest float32 <= t (compared in float32)
        self.thresholds32 = [np.float32(_round_down_f32(t)) for t in thresholds]
        self.size = 0

    def ensure(self, n: int) -> None:
        if n > self.size:
            self.size = n
            self.x64 = torch.empty(n, dtype=torch.float64)
            self.d2 = torch.empty(n, dtype=torch.float64)
            self.abs = torch.empty(n, dtype=torch.float32)
            self.bits = torch.empty(n, dtype=torch.int32)
            self.mask = np.empty(n, dtype=bool)


def _slice_stats(x: torch.Tensor, ws: _Workspace) -> tuple[Moments, torch.Tensor]:
    """Exact statistics of one slice (float32 or float64, 1-D) and its bit histogram."""
    n = x.numel()
    ws.ensure(n)
    is32 = x.dtype == torch.float32
    a = torch.abs(x, out=ws.abs[:n]) if is32 else x.abs()
    m = Moments(ws.thresholds)
    if n == 0:
        return m, torch.zeros(HIST_BINS, dtype=torch.int64)
    max_abs = float(a.max())
    if not math.isfinite(max_abs):  # NaN propagates into max; count and drop them
        finite = torch.isfinite(x)
        bad = int((~finite).sum())
        m, hist = _slice_stats(x[finite], ws)
        m.nonfinite += bad
        return m, hist
    # histogram: arithmetic shift of the bits puts negatives in 0..HALF-1, positives above
    x32 = x if is32 else x.float()
    bits = torch.bitwise_right_shift(x32.view(torch.int32), HIST_SHIFT, out=ws.bits[:n])
    hist = torch.bincount(bits.add_(HIST_HALF), minlength=HIST_BINS)
    # threshold counts in numpy: its compare + count_nonzero is several times faster here
    an, mask = a.numpy(), ws.mask[:n]
    cuts = ws.thresholds32 if is32 else ws.thresholds
    m.above = [int(np.count_nonzero(np.greater(an, t, out=mask))) for t in cuts]
    m.zeros = n - int(np.count_nonzero(an))
    m.max_abs = max_abs
    # central moments about the slice mean, in float64 (an exact upcast of the values)
    x64, d2 = ws.x64[:n], ws.d2[:n]
    x64.copy_(x)
    mean = float(x64.sum()) / n
    x64.sub_(mean)
    torch.mul(x64, x64, out=d2)
    m.n, m.mean = n, mean
    m.m2 = float(d2.sum())
    m.m3 = float(torch.dot(d2, x64))
    m.m4 = float(torch.dot(d2, d2))
    return m, hist


# --- checkpoint files and tensors --------------------------------------------------


@dataclass
class _Entry:
    key: str
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name ("F32", "BF16", ...)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def checkpoint_files(folder: Path, allow_pickle: bool = False) -> tuple[str, list[Path]]:
    """("safetensors" | "pickle", files) of a model folder, shards included.

    A folder with only pickle weights (``.bin``) is refused unless ``allow_pickle``
    (then they are read with ``torch.load(weights_only=True, mmap=True)``).
    """
    if folder.is_file():
        if folder.suffix == ".safetensors":
            return "safetensors", [folder]
        raise UserError(f"{folder} is not a .safetensors file or a model folder")
    for fmt, index_name, pattern in (
        ("safetensors", "model.safetensors.index.json", "model*.safetensors"),
        ("pickle", "pytorch_model.bin.index.json", "pytorch_model*.bin"),
    ):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            files = [folder / f for f in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise UserError(f"{index} lists shards that are missing: {', '.join(missing[:3])}")
        else:
            files = sorted(p for p in folder.glob(pattern) if not p.name.startswith("."))
            if not files and fmt == "safetensors":  # any name, e.g. a single exported file
                files = sorted(p for p in folder.glob("*.safetensors")
                               if not p.name.startswith("."))
        if files and (fmt == "safetensors" or allow_pickle):
            return fmt, files
        if files:
            raise UserError(
                f"{folder} has no safetensors weights, only pickle files "
                f"({', '.join(f.name for f in files[:3])}), which can run code when loaded; "
                "convert them to safetensors (from_pretrained + save_pretrained writes "
                "safetensors), or pass --allow-pickle to read them with "
                "torch.load(weights_only=True)"
            )
    raise UserError(f"{folder} holds no model weights (*.safetensors or pytorch_model*.bin)")


def _safetensors_entries(files: list[Path]) -> list[_Entry]:
    from safetensors import safe_open

    entries = []
    for path in files:
        with safe_open(path, "pt") as fh:
            for key in fh.keys():
                sl = fh.get_slice(key)
                entries.append(_Entry(key, path, tuple(sl.get_shape()), sl.get_dtype()))
            del sl
    return entries


def _safetensors_chunks(entry: _Entry, chunk_elements: int) -> Iterator[torch.Tensor]:
    """Flat chunks of one tensor, about ``chunk_elements`` each (whole rows).

    The file is opened for each chunk and closed before the next: a memory map
    left open keeps every page read resident.
    """
    from safetensors import safe_open

    shape = entry.shape
    if not shape or entry.numel <= chunk_elements:
        with safe_open(entry.file, "pt") as fh:
            yield fh.get_tensor(entry.key).reshape(-1)
        return
    row = math.prod(shape[1:]) or 1
    rows = max(1, chunk_elements // row)
    for start in range(0, shape[0], rows):
        with safe_open(entry.file, "pt") as fh:
            chunk = fh.get_slice(entry.key)[start: start + rows].reshape(-1)
        yield chunk


def _pickle_tensors(files: list[Path]) -> Iterator[tuple[_Entry, torch.Tensor]]:
    for path in files:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                dtype = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                         torch.float64: "F64"}.get(value.dtype, str(value.dtype))
                yield _Entry(key, path, tuple(value.shape), dtype), value
        del state


# --- names -> components ----------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor belongs: component, coarse group, role and block index."""

    component: str
    role: str
    block: int | None = None

    @property
    def group(self) -> str:
        from compress.arch import component_group

        try:
            return component_group(self.component)
        except KeyError:
            return self.component


class NameMap:
    """Checkpoint key -> :class:`TensorInfo`, from a meta-device skeleton of the model.

    Keys are matched to skeleton names by the longest common dotted suffix (at
    least module + parameter name), so ``embeddings.word_embeddings.weight`` and
    ``bert.embeddings.word_embeddings.weight`` both find BertModel's tensor. A key
    that matches several skeleton names equally well keeps what they agree on.
    """

    def __init__(self, config: Any | None):
        self.spec = None
        self.family = None
        self.kind = None
        self.blocks: list[dict[str, Any]] = []
        self.infos: dict[str, TensorInfo] = {}
        self.tied: dict[str, str] = {}  # skeleton name -> name of the tensor it shares
        self.warning: str | None = None
        self._suffixes: dict[tuple[str, ...], list[str]] = {}
        if config is None:
            self.warning = "no config.json: components and blocks are unknown"
            return
        from compress.arch import arch_for

        try:
            model = _meta_skeleton(config)
            self.spec = arch_for(model)
        except UserError as exc:
            self.warning = f"{exc}; only overall statistics are meaningful"
            return
        self.family, self.kind = self.spec.family, self.spec.kind
        self._index(model)

    def _index(self, model: torch.nn.Module) -> None:
        from compress.arch import classify_parameter, component_map, iter_blocks

        spec = self.spec
        comps = component_map(model)
        block_of: list[tuple[str, str, int]] = []  # (prefix, role, index)
        roots: dict[str, str] = {}
        for block in iter_blocks(model, spec):
            block_of.append((block.name + ".", block.role, block.index))
            self.blocks.append({"role": block.role, "index": block.index, "name": block.name})
            parts = block.name.split(".")
            if block.role in parts:  # shortest prefix naming the role: its stack's root
                roots[block.role] = ".".join(parts[: parts.index(block.role) + 1]) + "."
        first_name: dict[int, str] = {}
        saved = set(model.state_dict())  # persistent tensors only (no rotary inv_freq)
        names = [(n, t) for n, t in model.named_parameters(remove_duplicate=False)]
        names += [(n, t) for n, t in model.named_buffers(remove_duplicate=False)
                  if t.is_floating_point() and n in saved]
        for name, tensor in names:
            key = id(tensor)
            if key in first_name and first_name[key] != name:
                self.tied[name] = first_name[key]
            first_name.setdefault(key, name)
            role, index = self._role_of(name, block_of, roots)
            comp = "bias" if name.endswith(".bias") else classify_parameter(name, spec, comps)
            self.infos[name] = TensorInfo(comp, role, index)
            parts = tuple(name.split("."))
            for k in range(2, len(parts) + 1):
                self._suffixes.setdefault(parts[-k:], []).append(name)

    def _role_of(self, name, block_of, roots) -> tuple[str, int | None]:
        for prefix, role, index in block_of:
            if name.startswith(prefix):
                return role, index
        if self.kind in ("encoder", "decoder"):
            return self.kind, None
        for role, root in roots.items():
            if name.startswith(root):
                return role, None
        return "shared", None

    def lookup(self, key: str) -> tuple[TensorInfo, str | None]:
        """(info, matched skeleton name or None) for a checkpoint key."""
        if key in self.infos:
            return self.infos[key], key
        parts = tuple(key.split("."))
        for k in range(len(parts), 1, -1):
            names = self._suffixes.get(parts[-k:])
            if not names:
                continue
            if key in names:
                return self.infos[key], key
            if len(names) == 1:
                return self.infos[names[0]], names[0]
            infos = {self.infos[n] for n in names}
            if len(infos) == 1:
                return infos.pop(), None
            comps = {i.component for i in infos}
            roles = {i.role for i in infos}
            blocks = {i.block for i in infos}
            return TensorInfo(
                comps.pop() if len(comps) == 1 else "other",
                roles.pop() if len(roles) == 1 else "shared",
                blocks.pop() if len(blocks) == 1 and len(roles) == 1 else None,
            ), None
        return self._fallback(key), None

    def _fallback(self, key: str) -> TensorInfo:
        if key.endswith(".bias"):
            return TensorInfo("bias", self.kind if self.kind in ("encoder", "decoder") else "shared")
        if self.spec is None:
            return TensorInfo("other", "shared")
        from compress.arch import classify_parameter

        role = self.kind if self.kind in ("encoder", "decoder") else "shared"
        return TensorInfo(classify_parameter(key, self.spec, {}), role)


def _meta_skeleton(config: Any) -> torch.nn.Module:
    """The model built on the meta device (no storage): names and tying only."""
    import transformers as tf

    from compress.models import skeleton_class

    classes = []
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(tf, arch, None)
        if isinstance(cls, type):
            classes.append(lambda c, cls=cls: cls(c))
    classes.append(lambda c: skeleton_class(c)._from_config(c))
    error: Exception | None = None
    for make in classes:
        try:
            with torch.device("meta"):
                return make(config)
        except Exception as exc:  # noqa: BLE001 - try the next way to build it
            error = exc
    raise UserError(f"cannot build a model skeleton from config.json: {error}")


# --- the analysis -----------------------------------------------------------------


class _Groups:
    """Named :class:`Moments`, created on first use."""

    def __init__(self, thresholds: tuple[float, ...]):
        self.thresholds = thresholds
        self.items: dict[str, Moments] = {}

    def __getitem__(self, key: str) -> Moments:
        if key not in self.items:
            self.items[key] = Moments(self.thresholds)
        return self.items[key]

    def summaries(self, order: Sequence[str] = ()) -> dict[str, Any]:
        keys = [k for k in order if k in self.items] + sorted(
            k for k in self.items if k not in order)
        return {k: self.items[k].summary() for k in keys}


def _component_order() -> tuple[str, ...]:
    from compress.arch import COMPONENTS

    return (*COMPONENTS, "embedding", "lm_head", "norm", "bias", "other")


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
    config = _load_config(folder)
    names = NameMap(config)
    if names.warning:
        log.warning("%s: %s", model or folder, names.warning)

    ws = _Workspace(thresholds)
    overall = Moments(thresholds)
    by_role, by_comp, by_group, by_kind = (_Groups(thresholds) for _ in range(4))
    blocks: dict[tuple[str, int], tuple[Moments, _Groups]] = {}
    hist = {k: torch.zeros(HIST_BINS, dtype=torch.int64) for k in dict.fromkeys(HIST_KINDS.values())}
    tensors, skipped, matched = [], [], set()
    dtypes: dict[str, int] = {}
    grids = GridCounter()

    if fmt == "safetensors":
        stream: Iterator[tuple[_Entry, Iterator[torch.Tensor]]] = (
            (e, _safetensors_chunks(e, chunk_elements)) for e in _safetensors_entries(files))
    else:
        stream = (
            (e, (t.reshape(-1)[i: i + chunk_elements]
                 for i in range(0, max(t.numel(), 1), chunk_elements)))
            for e, t in _pickle_tensors(files))

    t_stream, cpu_stream = time.perf_counter(), time.process_time()
    for entry, chunks in stream:
        if entry.dtype not in _FLOAT_DTYPES:
            skipped.append({"name": entry.key, "dtype": entry.dtype, "shape": list(entry.shape)})
            continue
        info, skeleton_name = names.lookup(entry.key)
        if skeleton_name:
            matched.add(skeleton_name)
        kind = HIST_KINDS.get(info.group, "other")
        block_key = (info.role, info.block) if info.block is not None else None
        if block_key is not None and block_key not in blocks:
            blocks[block_key] = (Moments(thresholds), _Groups(thresholds))
        tensor_stats = Moments(thresholds)
        grid_kind = GRID_KINDS.get(info.group)
        for chunk in chunks:
            x = chunk if chunk.dtype in (torch.float32, torch.float64) else chunk.float()
            if grid_kind:
                grids.add(grid_kind, x, entry.shape)
            for piece in x.split(SUB_CHUNK):
                stats, counts = _slice_stats(piece, ws)
                tensor_stats.merge(stats)
                hist[kind] += counts
            del chunk, x
        tensor_stats.tensors = 1
        targets = [overall, by_role[info.role], by_comp[info.component],
                   by_group[info.group], by_kind["bias" if info.component == "bias" else "weight"]]
        if block_key is not None:
            block_all, block_comps = blocks[block_key]
            targets += [block_all, block_comps[info.component]]
        for target in targets:
            target.merge(tensor_stats)
        dtypes[entry.dtype] = dtypes.get(entry.dtype, 0) + entry.numel
        s = tensor_stats.summary()
        tensors.append({
            "name": entry.key, "shape": list(entry.shape), "dtype": entry.dtype,
            "component": info.component, "role": info.role, "block": info.block,
            "params": s["params"], "frac_above": s["frac_above"], "std": s["std"],
            "max_abs": s["max_abs"],
        })
        if on_tensor:
            on_tensor(entry.numel)

    if overall.n == 0:
        raise UserError(f"{path} holds no floating-point weights")
    stream_s = time.perf_counter() - t_stream
    stream_cpu_s = time.process_time() - cpu_stream
    elapsed = time.perf_counter() - t0
    absent = sorted(set(names.infos) - matched)
    tied_absent = [n for n in absent if n in names.tied]
    order = _component_order()
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
        "dtypes": dtypes,
        "overall": overall.summary(),
        "by_role": by_role.summaries(ROLES),
        "by_group": by_group.summaries(GROUPS),
        "by_component": by_comp.summaries(order),
        "weights_vs_biases": by_kind.summaries(("weight", "bias")),
        "by_block": [
            {"role": role, "index": index, "all": blocks[(role, index)][0].summary(),
             "components": blocks[(role, index)][1].summaries(order)}
            for role, index in sorted(blocks, key=lambda k: (ROLES.index(k[0]), k[1]))
        ],
        "counted": "tensors stored in the checkpoint files; a tied weight stored once is "
        "counted once",
        "absent_from_files": {
            "tied": tied_absent,
            "untied": [n for n in absent if n not in names.tied],
        },
        "skipped_non_float": skipped,
        "histograms": _histograms(hist),
        "grid": grids.summary(),
        "grid_note": "distinct values per block of 32/64/128 consecutive stored columns of "
        "every 2-D weight; a grid is detected when 99% of blocks hold at most 2^b < k values "
        "(eval.grid_analysis)",
        "tensors": tensors,
        "elapsed_s": elapsed,
        "stream_s": stream_s,
        "stream_cpu_s": stream_cpu_s,
        "params_per_s": overall.n / stream_s if stream_s > 0 else None,
        "timing_note": "elapsed_s includes reading config.json and building the meta skeleton "
        "(and the first import of the model code); params_per_s is over stream_s, the "
        "reading and counting of the tensors",
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_note": "process lifetime peak (ru_maxrss), imports included",
        "threads": torch.get_num_threads(),
        "chunk_elements": chunk_elements,
    }
    return report


def _histograms(hist: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The bit histogram, trimmed to the populated magnitude bins."""
    mags = sum(h[:HIST_HALF] + h[HIST_HALF:] for h in hist.values())
    nz = torch.nonzero(mags).ravel()
    lo, hi = (int(nz[0]), int(nz[-1])) if nz.numel() else (0, 0)
    return {
        "format": f"float32 bits >> {HIST_SHIFT}: 32 log-spaced bins per octave; magnitude "
        "bin m (lo..hi) covers edges[m-lo] <= |w| < edges[m-lo+1]; 'neg' and 'pos' count "
        "w < 0 and w >= 0 (zeros are in bin 0 of either sign)",
        "lo": lo,
        "hi": hi,
        "edges": magnitude_edges(lo, hi + 1),
        "kinds": {k: {"neg": h[lo: hi + 1].tolist(),
                      "pos": h[HIST_HALF + lo: HIST_HALF + hi + 1].tolist()}
                  for k, h in hist.items()},
    }


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _load_config(folder: Path) -> Any | None:
    if not (folder / "config.json").is_file():
        return None
    import transformers as tf

    try:
        return tf.AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot read %s/config.json (%s); components unknown", folder, exc)
        return None


# --- model names ------------------------------------------------------------------


def resolve_model(name: str, allow_pickle: bool = False) -> tuple[str, Path]:
    """(source, local path) for a zoo name, a folder or file, or a hub id.

    Hub ids download only ``*.safetensors`` and ``*.json`` (plus ``*.bin`` with
    ``allow_pickle``).
    """
    expanded = Path(name).expanduser()
    if expanded.exists():
        return f"local:{expanded.resolve()}", expanded
    try:
        from compress.models import resolve_path

        source, where = resolve_path(name)
    except ImportError:  # the zoo module is not there: folders and hub ids only
        if name.startswith((".", "/", "~")) or name.count("/") > 1:
            raise UserError(f"model folder {name!r} does not exist") from None
        source, where = f"hub:{name}", name
    if not source.startswith("hub:"):
        return source, Path(where)
    patterns = ["*.safetensors", "*.json"] + (["*.bin"] if allow_pickle else [])
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(where, allow_patterns=patterns)
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated repo...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"cannot get {name!r} from the Hugging Face hub ({first[:200]}); offline, use a zoo "
            "model (smollm2-135m, minilm-l6, minilm-l6-sentiment, bert2bert-punct) or a folder"
        ) from None
    return source, Path(local)


def model_slug(name: str) -> str:
    from eval.report import slug

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


# --- plots ------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _count_text(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _hist_arrays(report: dict[str, Any], kinds: Sequence[str]):
    """(edges, neg, pos) numpy arrays of the bit histogram summed over ``kinds``."""
    import numpy as np

    h = report["histograms"]
    size = h["hi"] - h["lo"] + 1
    neg, pos = np.zeros(size), np.zeros(size)
    for k in kinds:
        if k in h["kinds"]:
            neg += np.asarray(h["kinds"][k]["neg"], dtype=float)
            pos += np.asarray(h["kinds"][k]["pos"], dtype=float)
    return np.asarray(h["edges"], dtype=float), neg, pos


def cumulative_fraction(report: dict[str, Any], kinds: Sequence[str] = tuple(HIST_LABELS)):
    """(cutoffs c, fraction of weights with |w| < c), exact at the histogram's bin edges."""
    import numpy as np

    edges, neg, pos = _hist_arrays(report, kinds)
    cum = np.cumsum(neg + pos)
    if not cum.size or cum[-1] == 0:
        return np.array([]), np.array([])
    return edges[1:], cum / cum[-1]


def linear_histogram(report: dict[str, Any], kinds: Sequence[str], limit: float,
                     bins: int = PLOT_BINS):
    """(bin edges, counts) of w in ``bins`` linear bins over ``[-limit, limit]``.

    Each log-spaced bit-histogram bin (about 2 % wide) is spread uniformly over the
    linear bins it overlaps: exact totals, approximate shape inside a fine bin.
    """
    import numpy as np

    edges, neg, pos = _hist_arrays(report, kinds)
    # the signed CDF at the bin edges: negative bins from the far left, then positive
    xs = np.concatenate([-edges[::-1], edges])
    cdf_neg = np.concatenate([[0.0], np.cumsum(neg[::-1])])
    cdf = np.concatenate([cdf_neg, cdf_neg[-1] + np.concatenate([[0.0], np.cumsum(pos)])])
    grid = np.linspace(-limit, limit, bins + 1)
    return grid, np.diff(np.interp(grid, xs, cdf))


def plot_histogram(report: dict[str, Any]) -> bytes:
    """PNG: weight histograms (log count axis), bulk and full range, by kind."""
    import numpy as np

    fig = _figure(13, 4.8)
    axes = fig.subplots(1, 2)
    matrices = [k for k in HIST_LABELS if k != "other"]
    cut, frac = cumulative_fraction(report, matrices)
    if not len(cut):
        cut, frac = cumulative_fraction(report)
    bulk = float(cut[np.searchsorted(frac, BULK_QUANTILE)]) * 1.25 if len(cut) else 1.0
    full = float(report["histograms"]["edges"][-1])  # upper edge of the largest |w|'s bin
    for ax, limit, title in (
        (axes[0], min(bulk, full), f"central range: |w| up to 1.25x the {BULK_QUANTILE:.1%} "
         "quantile of the matrices' |w|"),
        (axes[1], full, "full range (up to the largest |w|)"),
    ):
        for kind, label in HIST_LABELS.items():
            grid, counts = linear_histogram(report, [kind], limit)
            if not counts.any():
                continue
            n = sum(sum(report["histograms"]["kinds"][kind][s]) for s in ("neg", "pos"))
            ax.stairs(np.where(counts > 0, counts, np.nan), grid,
                      label=f"{label} ({_count_text(n)} weights)", linewidth=1.2)
        ax.set_yscale("log")
        # below one weight per bin is only the uniform spreading of a wide log bin
        ax.set_ylim(bottom=0.5)
        ax.set_xlim(-limit * 1.03, limit * 1.03)
        ax.set_xlabel("weight value w")
        width = 2 * limit / PLOT_BINS
        ax.set_ylabel(f"number of weights per bin (log scale; bin width {width:.2g})")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=4, fontsize=8)
    fig.suptitle(f"{report['model']}: distribution of weight values "
                 f"({_count_text(report['overall']['params'])} parameters in the files)")
    return _png(fig)


def plot_cumulative(reports: Sequence[dict[str, Any]]) -> bytes:
    """PNG: fraction of weights with |w| < cutoff, every model; attention vs FFN."""
    fig = _figure(13, 5)
    ax_all, ax_split = fig.subplots(1, 2, sharey=True)
    colors = [f"C{i}" for i in range(10)]
    for i, rep in enumerate(reports):
        color = colors[i % len(colors)]
        xs, ys = cumulative_fraction(rep)
        ax_all.plot(xs, ys, color=color, label=rep["model"])
        for kinds, style, what in ((["attention"], "-", "attention"), (["ffn"], "--", "FFN")):
            xs, ys = cumulative_fraction(rep, kinds)
            if len(xs):
                ax_split.plot(xs, ys, style, color=color, label=f"{rep['model']}: {what}")
    for t in reports[0]["thresholds"] if reports else ():
        for ax in (ax_all, ax_split):
            ax.axvline(t, color="grey", linewidth=0.6, linestyle=":")
    for ax, title in ((ax_all, "all weights in the checkpoint"),
                      (ax_split, "attention (solid) vs FFN (dashed) linear weights")):
        ax.set_xscale("log")
        ax.set_xlim(1e-6, max(float(r["histograms"]["edges"][-1]) for r in reports))
        ax.set_xlabel("cutoff c on |w| (log scale; dotted lines: report thresholds)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    ax_all.set_ylabel("fraction of weights with |w| < c")
    fig.suptitle("How many weights are small: cumulative distribution of |w|")
    return _png(fig)


def plot_blocks(report: dict[str, Any]) -> bytes:
    """PNG: per-block statistics, one line per component type."""
    blocks = report["by_block"]
    thresholds = report["thresholds"]
    stats: list[tuple[str, Callable[[dict], float]]] = [
        (f"fraction with |w| > {t:g}", lambda s, t=t: s["frac_above"][_tkey(t)])
        for t in thresholds
    ]
    if any(b["all"]["zeros"] for b in blocks):
        stats.append(("fraction exactly zero", lambda s: s["frac_zero"]))
    stats += [
        ("standard deviation", lambda s: s["std"]),
        ("mean", lambda s: s["mean"]),
        ("skewness", lambda s: s["skewness"]),
        ("excess kurtosis", lambda s: s["excess_kurtosis"]),
        ("max |w|", lambda s: s["max_abs"]),
    ]
    cols = 3
    rows = math.ceil(len(stats) / cols)
    fig = _figure(5 * cols, 3.3 * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    labels = [f"{b['role'][0].upper()}{b['index']}" for b in blocks]
    comps = [c for c in _component_order() if any(c in b["components"] for b in blocks)]
    from matplotlib import colormaps

    palette = colormaps["tab20"].colors
    handles = {}
    for ax, (title, get) in zip(axes, stats, strict=False):
        values = []
        for ci, comp in enumerate(comps):
            xs = [i for i, b in enumerate(blocks) if comp in b["components"]]
            ys = [get(blocks[i]["components"][comp]) for i in xs]
            values += [y for y in ys if y is not None]
            ys = [float("nan") if y is None else y for y in ys]
            style = "--" if comp in ("norm", "bias", "embedding", "other") else "-"
            (line,) = ax.plot(xs, ys, style, marker=".", markersize=3, linewidth=1,
                              color=palette[(2 * ci) % 20 + (ci >= 10)])
            handles.setdefault(comp, line)
        if title == "max |w|" and values and min(values) > 0:
            ax.set_yscale("log")
        elif title == "excess kurtosis" and values and max(map(abs, values)) > 50:
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(title, fontsize=10)
        step = max(1, len(labels) // 12)
        ax.set_xticks(range(0, len(labels), step), labels[::step], fontsize=7)
        ax.grid(alpha=0.3)
        roles = [b["role"] for b in blocks]
        if "encoder" in roles and "decoder" in roles:
            ax.axvline(roles.index("decoder") - 0.5, color="grey", linewidth=0.8)
    for ax in axes[len(stats):]:
        ax.set_visible(False)
    fig.supxlabel("transformer block (E = encoder, D = decoder; index within its stack)")
    fig.legend(list(handles.values()), list(handles), loc="outside right center", fontsize=8,
               title="component")
    fig.suptitle(f"{report['model']}: weight statistics per block and component")
    return _png(fig)


def write_outputs(reports: Sequence[dict[str, Any]], out: Path, plots: bool = True
                  ) -> list[Path]:
    """Write ``<slug>.json`` (and plots) for each report, plus ``cumulative.png``."""
    from compress.fileio import atomic_write_bytes, atomic_write_json

    written = []
    for rep in reports:
        s = rep["slug"]
        written.append(atomic_write_json(out / f"{s}.json", rep))
        if plots:
            written.append(atomic_write_bytes(out / f"{s}_hist.png", plot_histogram(rep)))
            if rep["by_block"]:
                written.append(atomic_write_bytes(out / f"{s}_blocks.png", plot_blocks(rep)))
    if plots and reports:
        written.append(atomic_write_bytes(out / "cumulative.png", plot_cumulative(reports)))
    return written


# --- tables -----------------------------------------------------------------------


def _pct(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * v:.2f}%"


def _num(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3g}"


def _stat_columns(thresholds: Sequence[float]) -> list[tuple[str, Callable[[dict], str]]]:
    cols: list[tuple[str, Callable[[dict], str]]] = [
        ("params", lambda s: f"{s['params']:,}")]
    cols += [(f"|w|>{t:g}", lambda s, t=t: _pct(s["frac_above"][_tkey(t)])) for t in thresholds]
    cols += [
        ("zero", lambda s: _pct(s["frac_zero"])),
        ("mean", lambda s: _num(s["mean"])),
        ("std", lambda s: _num(s["std"])),
        ("skew", lambda s: _num(s["skewness"])),
        ("ex.kurt", lambda s: _num(s["excess_kurtosis"])),
        ("max|w|", lambda s: _num(s["max_abs"])),
    ]
    return cols


def build_tables(reports: Sequence[dict[str, Any]]) -> list[Any]:
    """``rich`` tables: models overall, then per model components/groups/roles and blocks."""
    from rich.table import Table

    if not reports:
        return []
    cols = _stat_columns(reports[0]["thresholds"])

    def table(title: str, first: str) -> Table:
        t = Table(title=title, title_justify="left")
        t.add_column(first)
        for name, _ in cols:
            t.add_column(name, justify="right")
        return t

    overall = table("Weights by model (fraction of |w| above each threshold)", "model")
    for rep in reports:
        overall.add_row(rep["model"], *(fmt(rep["overall"]) for _, fmt in cols))
    tables = [overall]
    for rep in reports:
        t = table(f"{rep['model']}: by component, group, role, weight/bias", "part")
        sections = (("component", rep["by_component"]), ("group", rep["by_group"]),
                    ("role", rep["by_role"]), ("kind", rep["weights_vs_biases"]))
        for si, (label, section) in enumerate(sections):
            for key, s in section.items():
                t.add_row(f"{label}: {key}", *(fmt(s) for _, fmt in cols))
            if si < len(sections) - 1:
                t.add_section()
        tables.append(t)
        if rep["by_block"]:
            b = table(f"{rep['model']}: by block (all tensors of the block)", "block")
            for blk in rep["by_block"]:
                b.add_row(f"{blk['role']} {blk['index']}", *(fmt(blk["all"]) for _, fmt in cols))
            tables.append(b)
    return tables


def notes(rep: dict[str, Any]) -> list[str]:
    """One-line facts a reader needs next to the tables (tied or skipped tensors)."""
    out = list(implications(rep["model"], rep.get("grid") or {}))
    tied = rep["absent_from_files"]["tied"]
    if tied:
        out.append(f"{rep['model']}: counted what the files store; tied weights stored once "
                   f"are not counted twice (absent: {', '.join(tied[:4])})")
    if rep["absent_from_files"]["untied"]:
        out.append(f"{rep['model']}: {len(rep['absent_from_files']['untied'])} model tensors "
                   "are not in the files (initialised at load time?)")
    if rep["skipped_non_float"]:
        out.append(f"{rep['model']}: skipped {len(rep['skipped_non_float'])} non-float tensors")
    if rep.get("warning"):
        out.append(f"{rep['model']}: {rep['warning']}")
    return out


# --- command line -----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eval.analyze",
        description="Where the small weights are: exact streamed weight statistics "
        "(thresholds, moments, per block / component / role) with JSON and PNG plots.",
    )
    parser.add_argument("models", nargs="+",
                        help="zoo names (smollm2-135m, minilm-l6, minilm-l6-sentiment, "
                        "bert2bert-punct), model folders, .safetensors files or hub ids")
    parser.add_argument("--out", type=Path, default=Path("reports/analysis"),
                        help="folder for <model>.json and PNG plots (default: reports/analysis)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS),
                        help="report the fraction of weights with |w| above each "
                        "(default: 1e-3 1e-2 0.1 1)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read pickle (.bin) weights with torch.load(weights_only=True) "
                        "when a folder has no safetensors")
    parser.add_argument("--no-plots", action="store_true", help="write JSON only")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice)")
    parser.add_argument("--chunk-elements", type=int, default=CHUNK_ELEMENTS,
                        help=f"elements read per chunk of a large tensor (default: {CHUNK_ELEMENTS})")
    parser.add_argument("--quiet", action="store_true", help="no tables, only the written paths")
    args = parser.parse_args(argv)
    thresholds = validate_thresholds(args.thresholds)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        torch.set_num_threads(args.threads)

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the tables into 80 columns
        console = Console(width=200)
    slugs: dict[str, str] = {}
    reports = []
    # resolve every name first: a typo in the last one should not cost the first's analysis
    resolved = [(name, *resolve_model(name, args.allow_pickle)) for name in args.models]
    for name, source, path in resolved:
        with Progress(TextColumn(f"{name}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeRemainingColumn(), console=console, transient=True,
                      disable=not console.is_terminal) as progress:
            total = _total_params(path, args.allow_pickle)
            task = progress.add_task(name, total=total)
            rep = analyze_folder(path, thresholds, model=name, source=source,
                                 allow_pickle=args.allow_pickle,
                                 chunk_elements=args.chunk_elements,
                                 on_tensor=lambda n, task=task: progress.advance(task, n))
        if rep["slug"] in slugs.values():  # two arguments with the same name
            rep["slug"] = f"{rep['slug']}-{len(slugs)}"
        slugs[name] = rep["slug"]
        reports.append(rep)
    written = write_outputs(reports, args.out, plots=not args.no_plots)
    if not args.quiet:
        for t in build_tables(reports):
            console.print(t)
        for rep in reports:
            for line in notes(rep):
                console.print(line)
            console.print(f"{rep['model']}: {rep['overall']['params']:,} parameters in "
                          f"{rep['elapsed_s']:.1f} s (streaming {rep['stream_s']:.1f} s, "
                          f"{_count_text(rep['params_per_s'])} params/s), peak RSS "
                          f"{rep['peak_rss_bytes'] / 1e6:.0f} MB")
    for p in written:
        console.print(f"wrote {p}", highlight=False)
    return 0


def _total_params(path: Path, allow_pickle: bool) -> int | None:
    try:
        fmt, files = checkpoint_files(path, allow_pickle)
        if fmt == "safetensors":
            return sum(e.numel for e in _safetensors_entries(files))
    except UserError:
        pass
    return None


if __name__ == "__main__":
    from compress.cli import run_main

    raise SystemExit(run_main(main))


__all__ = [
    "DEFAULT_THRESHOLDS", "Moments", "NameMap", "TensorInfo", "analyze", "analyze_folder",
    "build_tables", "checkpoint_files", "main", "plot_blocks", "plot_cumulative",
    "plot_histogram", "resolve_model", "write_outputs",
]
