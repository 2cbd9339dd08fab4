"""Saving and reloading compressed models, always atomically.

Most results are plain models: ``save_pretrained`` (safetensors) and
``from_pretrained`` round-trip them. Results that need their own on-disk format
(unstructured-sparse weights stored as bitmask + values, int8 modules, ONNX graphs,
MoE layers) register a :class:`Format`: a saver that writes the folder and a loader
that restores the model. The folder then carries ``compress_format.json`` naming the
format, and :func:`load_compressed` (the documented loader) dispatches on it; a folder
without that file is an ordinary Hugging Face folder. When several formats apply to a
model, the one with the highest ``priority`` wins (default 0; ties: registration order).

Formats are safetensors plus JSON, never pickle. Every saved folder carries
``compress_checksums.json`` (sha256 of each tensor and file); :func:`load_compressed`
checks headers, sizes and checksums before reading a weight, so a truncated file or a
flipped bit is one line naming the file and the tensor (:mod:`compress.safety`).

>>> save_model(model, tokenizer, "out/m")          # doctest: +SKIP
>>> model = load_compressed("out/m")               # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from compress.errors import UserError, did_you_mean
from compress.fileio import atomic_dir, atomic_write_json
from compress.safety import check_weight_files, write_checksums

FORMAT_FILE = "compress_format.json"


@dataclass(frozen=True)
class Format:
    name: str
    #: True when this format can save ``model``.
    applies: Callable[[nn.Module], bool]
    #: write the model into an (empty, temporary) folder.
    save: Callable[[nn.Module, Path], None]
    #: rebuild the model from a folder written by ``save``.
    load: Callable[[Path], nn.Module]
    #: when several formats apply, the highest priority wins; ties go to the format
    #: registered first.
    priority: int = 0


_FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    _FORMATS[fmt.name] = fmt
    return fmt


def format_for(model: nn.Module, preferred: str | None = None) -> Format | None:
    """The format to save ``model`` in: ``preferred`` if given, else the highest-priority
    registered format whose ``applies(model)`` is true (ties: registration order), else
    None (an ordinary ``save_pretrained`` folder)."""
    if preferred is not None:
        if preferred not in _FORMATS:
            raise did_you_mean("save format", preferred, _FORMATS)
        return _FORMATS[preferred]
    # sorted() is stable: equal priorities keep registration order
    for fmt in sorted(_FORMATS.values(), key=lambda f: -f.priority):
        if fmt.applies(model):
            return fmt
    return None


def save_model(
    model: nn.Module, tokenizer: Any, out: str | Path, fmt: str | None = None
) -> Path:
    """Save ``model`` (+ tokenizer) to ``out`` atomically, in its registered format if any."""
    out = Path(out)
    chosen = format_for(model, fmt)
    with atomic_dir(out) as tmp:
        if chosen is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            chosen.save(model, tmp)
            atomic_write_json(tmp / FORMAT_FILE, {"format": chosen.name, "version": 1})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_checksums(tmp)
    return out


def load_compressed(folder: str | Path, **from_pretrained_kwargs: Any) -> nn.Module:
    """Load a folder written by :func:`save_model` (any format) back into a model."""
    folder = Path(folder)
    marker = folder / FORMAT_FILE
    if marker.exists():
        check_weight_files(folder)  # a plain folder is checked by load_model
        try:
            name = json.loads(marker.read_text())["format"]
        except (ValueError, KeyError) as exc:
            raise UserError(f"{marker} is unreadable ({exc}); re-save the model") from None
        if name not in _FORMATS:
            _import_format_modules()
        if name not in _FORMATS:
            raise did_you_mean("save format", name, _FORMATS)
        return _FORMATS[name].load(folder)
    from compress.models import load_model

    return load_model(str(folder), **from_pretrained_kwargs).model


def _import_format_modules() -> None:
    """Formats are registered by recipe modules; importing them registers all formats."""
    from compress.registry import recipe_names

    recipe_names()
