"""Write quantized and sparse results in the compressed-tensors format.

compressed-tensors (the ``compressed-tensors`` package, the format of llm-compressor,
read by vLLM and by transformers' ``CompressedTensorsHfQuantizer``) stores a
quantized ``nn.Linear`` as ``weight_packed`` (int32 words holding ``bits``-wide codes,
offset to unsigned), ``weight_scale``, ``weight_shape`` and, for asymmetric grids,
``weight_zero_point``; ``config.json`` carries a ``quantization_config`` naming the
scheme of each group of layers (``format: pack-quantized``; 8-bit and asymmetric
grids use ``int-quantized``, one int8 per code, see :func:`storage_format`). Plain
``transformers.AutoModelFor*.from_pretrained(folder)`` loads such a folder (with
``compressed-tensors`` installed, no import of this suite) and decompresses the weights.

What is written:

* ``rtn`` / ``gptq`` results (any bits 2-8, sym or asym, per tensor / channel / group):
  codes, scales and zero points recovered exactly from the stored weights
  (:mod:`compress.export.grid`), so the reloaded model computes the same logits. Scales
  are stored as float32 (the model's dtype): fp16 scales would round the dequantized
  products. A group size that does not divide a layer's width (SmolLM2's 576 columns in
  groups of 128) is written as ``gcd(width, group)``-wide groups sharing the scale;
  a tensor grid as one scale per row. Linears of another class (GPT-2's ``Conv1D``)
  and kept float outlier columns have no place in the format: such models are refused.
* embedding tables and the LM head that ``rtn`` / ``gptq`` rounded (``embeddings=int8|int4``,
  :mod:`compress.quant.embeddings`; compressed-tensors quantizes ``nn.Embedding`` as well as
  ``nn.Linear``): one int8 code per weight and a scale per row (``int-quantized``, in their
  own config group; with packed linears the folder's format is ``mixed-precision``). A
  table tied to another parameter (the LM head of SmolLM2, GPT-2, T5) is written as a
  float tensor of grid values instead (:func:`untied_tables`): transformers would re-tie
  the head to the integer codes before compressed-tensors dequantizes them.
* sparse results: compressed-tensors 0.20 has no sparse storage any more (its
  bitmask and 2:4 compressors were removed after 0.14), so the weights are stored dense
  and ``quantization_config.sparsity_config`` records the structure (``2:4`` or
  ``unstructured``) and the measured sparsity, as llm-compressor writes sparse models
  today. On-disk bytes are then the dense bytes: the report says so.

:data:`FORMAT` registers this as the save format of models that carry a still-valid
grid record (:func:`compress.export.grid.marked`), ahead of the sparse bitmask format,
so a ``wanda`` + ``rtn`` result is written packed; a model whose class transformers
cannot load back packed (:func:`transformers_loads`) keeps the suite's own formats. :func:`load` reloads through
transformers (``dequantize=True``: a plain float model comes back).

>>> export(model, "out/smollm2-gptq4-ct")                                   # doctest: +SKIP
>>> AutoModelForCausalLM.from_pretrained("out/smollm2-gptq4-ct")             # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.export.grid import GRID_ATTR, Grid, marked, marked_tables, recover, unit_width
from compress.models import build_skeleton, model_class
from compress.quant.layers import select_targets
from compress.quant.rtn import QuantSpec
from compress.saving import Format, register_format

log = logging.getLogger(__name__)

NAME = "compressed-tensors"
PACKED, INT8 = "pack-quantized", "int-quantized"


def _require() -> None:
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise UserError(
            "the compressed-tensors format needs the compressed-tensors package "
            "(pip install compressed-tensors==0.20.0)"
        ) from None


#: below these fractions of exact zeros a model counts as dense: float weights are almost
#: never exactly 0 unless pruned; a 4-bit grid rounds 10-15% of the weights to its 0 code
MIN_SPARSITY = {"float": 0.05, "quantized": 0.25}


def sparsity_of(
    model: nn.Module, modules: dict[str, nn.Module] | None = None, quantized: bool = False
) -> dict[str, Any] | None:
    """``{"structure", "global_sparsity"}`` over the targeted linears, or None when dense
    (:data:`MIN_SPARSITY`).

    ``2:4`` when every group of 4 consecutive input weights holds at least 2 zeros.
    """
    modules = modules if modules is not None else select_targets(model)
    zeros = total = 0
    two_four = True
    for mod in modules.values():
        w = mod.weight.detach()
        zeros += int((w == 0).sum())
        total += w.numel()
        if two_four and w.shape[-1] % 4 == 0:
            two_four = bool(((w.reshape(-1, 4) == 0).sum(1) >= 2).all())
        else:
            two_four = False
    if total == 0 or zeros / total < MIN_SPARSITY["quantized" if quantized else "float"]:
        return None
    return {
        "structure": "2:4" if two_four else "unstructured",
        "global_sparsity": round(zeros / total, 6),
    }


def _scheme(spec: QuantSpec, width: int, in_features: int) -> dict[str, Any]:
    channel = width == in_features
    return {
        "num_bits": spec.bits,
        "type": "int",
        "symmetric": spec.scheme == "sym",
        "strategy": "channel" if channel else "group",
        "group_size": None if channel else width,
        "dynamic": False,
        "observer": None,
    }


def storage_format(spec: QuantSpec) -> str:
    """``pack-quantized`` (codes packed ``bits`` wide into int32) for symmetric grids below
    8 bits, else ``int-quantized`` (one int8 per code). Asymmetric grids are written
    unpacked: with compressed-tensors 0.20 and transformers 5.23 a packed zero point does
    not load (the loader expects it unpacked and stops on the shape mismatch)."""
    return PACKED if spec.scheme == "sym" and spec.bits < 8 else INT8


def _tensors(name: str, grid: Grid) -> dict[str, torch.Tensor]:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    bits = grid.spec.bits
    offset = 0 if grid.spec.scheme == "sym" else 1 << (bits - 1)  # unsigned -> signed codes
    codes = (grid.codes.to(torch.int16) - offset).to(torch.int8)
    if storage_format(grid.spec) == PACKED:
        out = {
            f"{name}.weight_packed": pack_to_int32(codes, bits),
            f"{name}.weight_shape": torch.tensor(list(grid.codes.shape)),
        }
    else:
        out = {f"{name}.weight": codes}
    out[f"{name}.weight_scale"] = grid.scales.float()
    if grid.spec.scheme == "asym":
        out[f"{name}.weight_zero_point"] = (grid.zeros.to(torch.int16) - offset).to(torch.int8)
    return out


def quantization_config(
    spec: QuantSpec | None, layouts: dict[str, tuple[int, int]], sparsity: dict[str, Any] | None,
    tables: tuple[QuantSpec, dict[str, tuple[int, int]]] | None = None,
) -> dict[str, Any]:
    """The ``quantization_config`` of ``config.json``: one config group per distinct
    (grid, strategy, group width) with its layers named exactly. ``tables``: the embedding
    tables' own grid and layouts (:mod:`compress.quant.embeddings`); where their storage
    format differs from the linears' the folder's format is ``mixed-precision``."""
    groups: dict[tuple, tuple[str, list[str]]] = {}
    for grid_spec, named in ((spec, layouts), *([tables] if tables else [])):
        for name, (width, in_f) in named.items():
            key = tuple(sorted(_scheme(grid_spec, width, in_f).items()))
            fmt = storage_format(grid_spec)
            groups.setdefault((fmt, key), (fmt, []))[1].append(name)
    formats = {fmt for fmt, _ in groups.values()}
    config: dict[str, Any] = {
        "quant_method": "compressed-tensors",
        "format": (formats.pop() if len(formats) == 1 else "mixed-precision") if groups
        else "dense",
        "quantization_status": "compressed",
        "config_groups": {
            f"group_{i}": {
                "targets": sorted(names),
                "weights": dict(key),
                "input_activations": None,
                "output_activations": None,
                "format": fmt,
            }
            for i, ((_, key), (fmt, names)) in enumerate(groups.items())
        },
        "ignore": [],
    }
    if sparsity is not None:
        config["sparsity_config"] = {
            "format": "dense",
            "sparsity_structure": sparsity["structure"],
            "global_sparsity": sparsity["global_sparsity"],
            "targets": ["Linear"],
            "ignore": [],
        }
    return config


def untied_tables(model: nn.Module) -> tuple[QuantSpec, dict[str, nn.Module]] | None:
    """The rounded embedding tables (:func:`compress.export.grid.marked_tables`) that no
    other parameter shares. A tied table stays a float tensor of grid values: transformers
    re-ties the LM head to the table when it loads and would tie it to the codes, before
    compressed-tensors dequantizes them."""
    found = marked_tables(model)
    if found is None:
        return None
    spec, modules = found
    holders: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        holders[p.data_ptr()] = holders.get(p.data_ptr(), 0) + 1
    untied = {n: m for n, m in modules.items() if holders.get(m.weight.data_ptr(), 0) == 1}
    return (spec, untied) if untied else None


def export(
    model: nn.Module,
    folder: str | Path,
    *,
    spec: QuantSpec | None = None,
    modules: dict[str, nn.Module] | None = None,
) -> dict[str, Any]:
    """Write ``model`` into ``folder`` (config, safetensors weights, generation config).

    ``spec`` / ``modules``: the grid and the linears on it; by default the record a
    quantizing recipe left on the model (none: the model is written dense, with its
    sparsity recorded if it has any). Returns a summary (layers, sparsity, bytes).
    """
    _require()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if spec is None and modules is None:
        found = marked(model)
        if found is None and getattr(model, GRID_ATTR, None):
            raise UserError(
                "the model's quantization grid record is stale (a weight changed "
                "after quantization, or float outlier columns were kept): the "
                "compressed-tensors format cannot store it"
            )
        spec, modules = found if found is not None else (None, {})
        tables = untied_tables(model) if found is not None else None
    else:
        tables = None
    modules = modules or {}
    for name, mod in modules.items():
        if type(mod) is not nn.Linear:
            raise UserError(
                f"compressed-tensors stores quantized nn.Linear layers; {name} is a "
                f"{type(mod).__name__}"
            )
    state = {k: v for k, v in model.state_dict().items()}
    layouts: dict[str, tuple[int, int]] = {}
    for name, mod in modules.items():
        grid = recover(mod.weight, spec)
        del state[f"{name}.weight"]
        state.update(_tensors(name, grid))
        layouts[name] = (unit_width(mod.in_features, spec), mod.in_features)
    table_layouts: dict[str, tuple[int, int]] = {}
    if tables is not None:
        for name, mod in tables[1].items():
            del state[f"{name}.weight"]
            state.update(_tensors(name, recover(mod.weight, tables[0])))
            table_layouts[name] = (mod.weight.shape[1], mod.weight.shape[1])  # a scale per row
    sparsity = sparsity_of(model, quantized=bool(layouts))
    qconfig = quantization_config(spec, layouts, sparsity,
                                  (tables[0], table_layouts) if table_layouts else None)
    had = hasattr(model.config, "quantization_config")
    old = getattr(model.config, "quantization_config", None)
    model.config.quantization_config = qconfig
    try:
        model.save_pretrained(folder, state_dict=state, safe_serialization=True)
    finally:
        if had:
            model.config.quantization_config = old
        else:
            del model.config.quantization_config
    return {
        "format": NAME,
        "layers": len(layouts),
        "tables": len(table_layouts),
        "spec": spec.to_dict() if spec else None,
        "sparsity": sparsity,
        "bytes_weights": sum(p.stat().st_size for p in folder.glob("*.safetensors")),
    }


#: what compressed-tensors attaches to a linear it manages
_CT_PARAMS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape",
              "weight_g_idx", "weight_global_scale")
_CT_ATTRS = ("quantization_scheme", "quantization_status", "forward")


def plain(model: nn.Module) -> nn.Module:
    """Decompress a model transformers loaded from a compressed-tensors folder into a plain
    float model: weights restored, compressed-tensors' parameters, patched forwards and
    quantization config removed (what save/load round-trips and later recipes expect)."""
    quantizer = getattr(model, "hf_quantizer", None)
    compressor = getattr(quantizer, "compressor", None)
    if compressor is not None:
        compressor.decompress_model(model)
    for module in model.modules():
        for name in _CT_PARAMS:
            if name in module._parameters:
                del module._parameters[name]
            if name in module._buffers:
                del module._buffers[name]
        for name in _CT_ATTRS:
            module.__dict__.pop(name, None)  # the instance's, never the class's
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load(folder: Path) -> nn.Module:
    """Reload through transformers and decompress to a plain float model (:func:`plain`).

    (transformers' own ``dequantize=True`` load path mixes up the schemes of a folder
    with several config groups, so the weights are decompressed after loading.)
    """
    _require()
    import transformers as tf

    folder = Path(folder)
    config = tf.AutoConfig.from_pretrained(folder)
    model = model_class(config).from_pretrained(
        folder, use_safetensors=True, dtype=torch.float32
    )
    model.eval()
    return plain(model)


def transformers_loads(model: nn.Module, spec: QuantSpec, modules: dict[str, nn.Module]) -> bool:
    """Whether transformers can load ``model``'s class back with ``modules`` packed.

    Its ``from_pretrained`` runs the class's ``_init_weights`` on every module, and some
    classes read a child linear's ``weight`` there (T5's attention and FFN blocks,
    ModernBERT, Switch Transformers in transformers 5.23), which a ``pack-quantized``
    linear no longer has: those folders do not load. Tried on a meta-device skeleton with
    the packed linears' weights removed (``int-quantized`` linears keep a ``weight``).
    """
    if storage_format(spec) != PACKED:
        return True
    try:
        with torch.device("meta"):
            skeleton = build_skeleton(copy.deepcopy(model.config), type(model).__name__)
        for name in modules:
            del skeleton.get_submodule(name)._parameters["weight"]
        skeleton.initialize_weights()
    except Exception as exc:  # noqa: BLE001 - any failure: keep the suite's own format
        log.info("compressed-tensors: %s would not load back in transformers (%s: %s)",
                 type(model).__name__, type(exc).__name__, exc)
        return False
    return True


def applies(model: nn.Module) -> bool:
    """A model with a valid grid record whose quantized layers are all ``nn.Linear`` and
    whose class transformers loads back from the format (:func:`transformers_loads`)."""
    found = marked(model)
    if found is None or getattr(model, "config", None) is None:
        return False
    spec, modules = found
    return all(type(m) is nn.Linear for m in modules.values()) and transformers_loads(
        model, spec, modules)


def _save(model: nn.Module, folder: Path) -> None:
    export(model, folder)


FORMAT = register_format(Format(NAME, applies, _save, load, priority=5))
