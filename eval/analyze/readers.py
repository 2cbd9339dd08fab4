"""Reading a checkpoint without building the model: safetensors (or, when allowed, pickle)
tensors in chunks, and the map from checkpoint names to the architecture's components,
blocks and roles (a skeleton on the ``meta`` device)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers as tf
from safetensors import safe_open

from compress.arch import (
    COMPONENTS,
    arch_for,
    classify_parameter,
    component_group,
    component_map,
    iter_blocks,
)
from compress.errors import UserError
from compress.models import build_skeleton

log = logging.getLogger(__name__)

_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


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


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor belongs: component, coarse group, role and block index."""

    component: str
    role: str
    block: int | None = None

    @property
    def group(self) -> str:
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
        try:
            model = _meta_skeleton(config)
            self.spec = arch_for(model)
        except UserError as exc:
            self.warning = f"{exc}; only overall statistics are meaningful"
            return
        self.family, self.kind = self.spec.family, self.spec.kind
        self._index(model)

    def _index(self, model: torch.nn.Module) -> None:
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
        role = self.kind if self.kind in ("encoder", "decoder") else "shared"
        return TensorInfo(classify_parameter(key, self.spec, {}), role)


def _meta_skeleton(config: Any) -> torch.nn.Module:
    """The model built on the meta device (no storage): names and tying only."""
    try:
        with torch.device("meta"):
            return build_skeleton(config)
    except Exception as exc:  # noqa: BLE001 - any failure to build is the same one-line error
        raise UserError(
            f"cannot build a model skeleton from config.json: {exc}"
        ) from None


def _component_order() -> tuple[str, ...]:
    return (*COMPONENTS, "embedding", "lm_head", "norm", "bias", "other")


def _load_config(folder: Path) -> Any | None:
    if not (folder / "config.json").is_file():
        return None
    try:
        return tf.AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot read %s/config.json (%s); components unknown", folder, exc)
        return None
