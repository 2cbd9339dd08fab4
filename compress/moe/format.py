"""The ``moe`` save format: a MoEfied model on disk, and its loader.

A folder written by ``compress.saving.save_model`` for a model holding
:class:`~compress.moe.layer.MoEFFN` modules contains

* ``config.json`` (+ ``generation_config.json``): the dense model's own config;
* ``moe.json``: format version, the model class, dtype, and per FFN block (by module
  name) the MoE layer's spec (sizes, gating, biases, router kind and width, routing
  rule, ``top_k`` / ``threshold``), i.e. everything needed to rebuild it empty;
* ``moe.safetensors``: the full state dict (experts, routers, everything else).

The weights file is deliberately not called ``model.safetensors``: plain
``from_pretrained`` on this folder fails loudly instead of loading a dense model
with random FFNs. :func:`load_moe` (reached through ``compress.saving.load_compressed``)
rebuilds the dense model from the config, swaps in empty MoE modules with the same
code the recipe uses, and loads the tensors strictly.

>>> model = load_compressed("out/smollm2-moe")     # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.fileio import atomic_write_json
from compress.models import model_class
from compress.moe.convert import find_sites, install_empty, moe_modules
from compress.saving import Format, register_format

FORMAT_NAME = "moe"
SPEC_FILE = "moe.json"
WEIGHTS_FILE = "moe.safetensors"
FORMAT_VERSION = 2  # 2: layers keyed by the MoE module's full name


def is_moe_model(model: nn.Module) -> bool:
    return any(True for _ in moe_modules(model))


def _dtype_of(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def save_moe(model: nn.Module, folder: Path) -> None:
    """Write config, ``moe.json`` and ``moe.safetensors`` into ``folder``."""
    from safetensors.torch import save_model

    folder = Path(folder)
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(model, "can_generate", lambda: False)():
        gen.save_pretrained(folder)
    layers = {name: moe.spec() for name, moe in moe_modules(model)}
    atomic_write_json(
        folder / SPEC_FILE,
        {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "model_class": type(model).__name__,
            "dtype": str(_dtype_of(model)).removeprefix("torch."),
            "layers": layers,
        },
    )
    save_model(model, str(folder / WEIGHTS_FILE))


def load_moe(folder: Path) -> nn.Module:
    """Rebuild a MoEfied model saved by :func:`save_moe` (outputs identical)."""
    import transformers as tf
    from safetensors.torch import load_model

    folder = Path(folder)
    try:
        meta = json.loads((folder / SPEC_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder / SPEC_FILE} is missing or unreadable ({exc})") from None
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(f"{folder}: moe format version {meta.get('version')} is not supported "
                        f"(this suite reads version {FORMAT_VERSION})")
    config = tf.AutoConfig.from_pretrained(folder)
    dtype = getattr(torch, meta.get("dtype", "float32"))
    cls = model_class(config, meta["model_class"])
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = cls(config)
    finally:
        torch.set_default_dtype(old)
    layers = meta["layers"]
    sites = {site.owner_name: site for site in find_sites(model)}
    missing = sorted(set(layers) - set(sites))
    if missing:
        raise UserError(f"{folder}: moe.json names FFN modules the model lacks: {missing[:3]}")
    for name, spec in layers.items():
        install_empty(sites[name], spec, dtype)
    missing_keys, unexpected = load_model(model, str(folder / WEIGHTS_FILE), strict=True)
    if unexpected:
        raise UserError(f"{folder}: unexpected tensors in {WEIGHTS_FILE}: {unexpected[:3]}")
    if (folder / "generation_config.json").exists() and hasattr(model, "generation_config"):
        model.generation_config = tf.GenerationConfig.from_pretrained(folder)
    model.eval()
    return model


# an MoE model wins over the sparse format: pruning then moefy must save as MoE (the
# sparse format would drop the expert tensors)
FORMAT = register_format(Format(FORMAT_NAME, is_moe_model, save_moe, load_moe, priority=10))
