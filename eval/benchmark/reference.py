"""The dense reference: the dense model's benchmark outputs, measured once and cached.

Paired intervals and agreement metrics compare a compressed model with the dense one on
the same windows and examples. The dense side (:class:`DenseReference`: per-item
samples of every metric and the outputs agreement needs, see
:mod:`eval.benchmark.agreement`) comes from one dense benchmark run, stored under
``$COMPRESS_CACHE/dense/<key>.npz`` (``$COMPRESS_DENSE_CACHE`` overrides the folder),
written atomically. The key hashes everything the outputs depend on:

* the model's identity: a SHA-256 of every parameter and buffer (name, dtype, shape,
  bytes), so a rebuilt zoo model or another checkpoint gets its own entry;
* the tokenizer (class, size, vocabulary);
* the protocol: task, quick flag, the suite's settings (windows, examples, lengths),
  the data splits' protocols, the agreement's top-k and tail samples, and this
  module's version.

A later run with the same key loads the file, so a compressed run costs one forward.
The token agreement also checks, per window, that the stored target tokens are the
ones scored now.

>>> ref = dense_reference(model, tokenizer, "causal-lm", quick=True)   # doctest: +SKIP
>>> run_benchmarks(compressed, tokenizer, "causal-lm", quick=True, reference=ref)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compress.cache import cache_dir
from compress.errors import UserError
from compress.fileio import atomic_write_bytes
from eval import protocol
from eval.benchmark.agreement import TAIL_SAMPLES, TOPK, DenseReference
from eval.benchmark.samples import pack_samples, unpack_samples
from eval.benchmark.suites import SUITES, _data_protocol, record_reference

log = logging.getLogger(__name__)

VERSION = 1
DENSE_CACHE_ENV = "COMPRESS_DENSE_CACHE"

#: the splits each task's suite reads (their protocols join the key)
CORPORA = {
    "causal-lm": (("wiki", "test"), ("news", "test")),
    "classification": (("tweets", "test"), ("lee-similarity", "test")),
    "embedding": (("tweets", "train"), ("tweets", "test"), ("lee-similarity", "test")),
    "seq2seq": (("punct", "test"),),
}


def dense_cache_dir() -> Path:
    """``$COMPRESS_DENSE_CACHE`` or ``$COMPRESS_CACHE/dense``."""
    override = os.environ.get(DENSE_CACHE_ENV)
    return Path(override).expanduser() if override else cache_dir() / "dense"


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer: name, dtype, shape and bytes."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.device.type == "meta":  # offloaded by device_map: name and shape only
                continue
            flat = t.detach().contiguous().reshape(-1).cpu()
            h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    vocab = getattr(tokenizer, "get_vocab", dict)()
    text = json.dumps([type(tokenizer).__name__, len(tokenizer), sorted(vocab.items())])
    return hashlib.sha256(text.encode()).hexdigest()


def reference_key(model: nn.Module, tokenizer: Any, task: str, quick: bool) -> dict[str, Any]:
    """What the dense outputs depend on (module docstring), with its hash under ``key``."""
    suite = SUITES[task]
    parts = {
        "version": VERSION,
        "task": task,
        "quick": quick,
        **protocol.key_part(protocol.of(quick)),
        "settings": suite.settings(quick),
        "topk": TOPK,
        "tail_samples": TAIL_SAMPLES,
        "data": [_data_protocol(c, s) for c, s in CORPORA.get(task, ())],
        "model_sha256": model_fingerprint(model),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return parts | {"key": key[:24]}


def dense_reference(
    model: nn.Module, tokenizer: Any, task: str, quick: bool = False, folder: Path | None = None
) -> DenseReference:
    """The dense ``model``'s reference: loaded from the cache, or measured and cached."""
    parts = reference_key(model, tokenizer, task, quick)
    return cached_reference(parts, task, folder) or measure_reference(
        model, tokenizer, task, quick, parts, folder
    )


def _path(parts: dict[str, Any], task: str, folder: Path | None) -> Path:
    return Path(folder or dense_cache_dir()) / f"{task}__{parts['key']}.npz"


def _record(parts: dict[str, Any], path: Path, source: str) -> dict[str, Any]:
    return {"key": parts["key"], "path": str(path), "model_sha256": parts["model_sha256"],
            "topk": TOPK, "tail_samples": TAIL_SAMPLES, "source": source}


def cached_reference(
    parts: dict[str, Any], task: str, folder: Path | None = None
) -> DenseReference | None:
    """The reference cached under ``parts`` (:func:`reference_key`), or None."""
    path = _path(parts, task, folder)
    if not path.is_file():
        return None
    try:
        ref = load_reference(path)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("dense reference %s unreadable (%s): measuring it again", path, exc)
        return None
    ref.record = _record(parts, path, "cache")
    return ref


def measure_reference(
    model: nn.Module,
    tokenizer: Any,
    task: str,
    quick: bool,
    parts: dict[str, Any],
    folder: Path | None = None,
) -> DenseReference:
    """Benchmark the dense ``model`` and cache the result under ``parts``.

    ``model`` must be the model ``parts`` was computed from (checked by its weights'
    hash): ``eval.run`` computes the key before the recipes change the model in place
    and measures on a freshly loaded copy only when the cache has no entry.
    """
    if model_fingerprint(model) != parts["model_sha256"]:
        raise UserError(
            "the dense model loaded for the reference differs from the one the run started "
            "from (weights initialised at random on load?): no paired comparison"
        )
    ref = record_reference(model, tokenizer, task, quick)
    path = save_reference(ref, _path(parts, task, folder))
    ref.record = _record(parts, path, "measured")
    return ref


def save_reference(ref: DenseReference, path: Path) -> Path:
    """One ``.npz`` (arrays only, no pickle), written atomically."""
    packed, arrays = pack_samples(ref.samples)
    meta: dict[str, Any] = {"samples": packed, "outputs": {}}
    for group, out in ref.outputs.items():
        meta["outputs"][group] = sorted(out)
        arrays.update({f"o.{group}.{k}": v for k, v in out.items()})
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def load_reference(path: Path) -> DenseReference:
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        samples = unpack_samples(meta["samples"], data)
        outputs = {
            group: {k: data[f"o.{group}.{k}"] for k in keys}
            for group, keys in meta["outputs"].items()
        }
    return DenseReference(samples, outputs)
