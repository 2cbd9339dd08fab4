"""Export a decoder to GGUF (llama.cpp's format) where the format has the type.

GGUF names each architecture's tensors and hyper-parameters its own way. The names come
from the ``gguf`` package's tensor map, and the hyper-parameters from transformers'
own GGUF table (``transformers.integrations.ggml.GGUF_CONFIG_MAPPING``, the one it reads
GGUF files with), so the exporter holds one fact per architecture:
:data:`PERMUTED_QK`, the architectures whose q/k projection rows llama.cpp stores in
its own rotary order (transformers un-permutes them on load).

Weight types, chosen per linear so that the file holds exactly the model's weights:

* ``Q4_0`` (blocks of 32 weights, one fp16 scale, codes ``-8..7``): linears of an ``rtn``
  or ``gptq`` result on a symmetric grid of at most 4 bits whose scales are fp16 values
  shared by each 32-weight block (per channel, or groups that are multiples of 32);
* ``Q8_0`` (the same with int8 codes): symmetric grids of 5 to 8 bits;
* ``F32`` for everything else: embeddings, norms, and the linears of any other result
  (pruned, distilled, MoE-free dense models) or grid the format cannot hold exactly
  (asymmetric grids: ``Q4_1``'s offset ``m = -scale * zero`` is rarely an fp16 value).

The tokenizer goes in as GGUF's ``gpt2`` BPE vocabulary (byte-level BPE tokenizers).
:func:`export` returns what it wrote per type and the file's bytes; transformers
(``from_pretrained(folder, gguf_file=...)``) and llama.cpp load the file.

>>> export(model, tokenizer, "out/smollm2-rtn4.gguf")                       # doctest: +SKIP
{'path': 'out/smollm2-rtn4.gguf', 'bytes': 98_123_456, 'types': {'Q4_0': 210, 'F32': 63}}
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compress.errors import UserError
from compress.export.grid import Grid, marked, recover
from compress.quant.rtn import QuantSpec

#: architectures whose q/k rows llama.cpp keeps in its rotary layout (convert_hf_to_gguf's
#: ``LlamaModel.permute``; transformers reverses it when it reads the file)
PERMUTED_QK = {"llama", "mistral"}
BLOCK = 32


def _require():
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF export needs the gguf package (pip install gguf==0.19.0)") from None
    return gguf


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF q/k rows -> llama.cpp's rotary order (rows only: per-row grids stay intact)."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _q4_0(grid: Grid) -> np.ndarray:
    """Q4_0 blocks, (rows, blocks * 18) uint8: fp16 scale, then 16 bytes of nibbles
    holding codes + 8 (weights j and j + 16 of the block share byte j)."""
    rows, cols = grid.codes.shape
    q = (grid.codes.to(torch.int16) + 8).to(torch.uint8).view(rows, cols // BLOCK, BLOCK)
    nibbles = (q[..., :16] | (q[..., 16:] << 4)).numpy()  # (rows, blocks, 16)
    scale = grid.scales.to(torch.float16).view(rows, cols // BLOCK, 1).numpy().view(np.uint8)
    return np.concatenate([scale, nibbles], axis=-1).reshape(rows, -1)


def _q8_0(grid: Grid) -> np.ndarray:
    rows, cols = grid.codes.shape
    q = grid.codes.to(torch.int8).view(rows, cols // BLOCK, BLOCK).numpy().view(np.uint8)
    scale = grid.scales.to(torch.float16).view(rows, cols // BLOCK, 1).numpy().view(np.uint8)
    return np.concatenate([scale, q], axis=-1).reshape(rows, -1)


def gguf_type(spec: QuantSpec | None, in_features: int) -> str:
    """The GGUF type a linear on ``spec``'s grid is written in (``F32`` when none fits)."""
    if spec is None or spec.scheme != "sym" or in_features % BLOCK:
        return "F32"
    if spec.granularity == "group" and spec.group_size < in_features and spec.group_size % BLOCK:
        return "F32"
    if spec.granularity == "tensor":
        return "F32"  # one scale for the tensor: fine, but rare; keep the exact float
    return "Q4_0" if spec.bits <= 4 else "Q8_0"


def _vocab(tokenizer: Any, writer: Any, gguf: Any, n_vocab: int) -> None:
    """The tokenizer as GGUF's ``gpt2`` BPE vocabulary, padded with unused ``[PAD{i}]``
    entries up to the embedding's rows (as llama.cpp's ``convert_hf_to_gguf`` does): many
    models round their vocabulary up, and llama.cpp wants one entry per row."""
    with tempfile.TemporaryDirectory(prefix="compress-gguf-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        try:
            vocab = gguf.vocab.BpeVocab(Path(tmp))
        except (FileNotFoundError, ValueError) as exc:
            raise UserError(f"GGUF export: the tokenizer is not a byte-level BPE ({exc})") from None
        tokens, types = [], []
        for text, _score, kind in vocab.all_tokens():
            tokens.append(text if isinstance(text, (bytes, str)) else str(text))
            types.append(int(kind))
        for i in range(len(tokens), n_vocab):
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        quiet = logging.getLogger("gguf.vocab")  # warns about special-token kinds it skips
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            special = gguf.SpecialVocab(Path(tmp), load_merges=True, n_vocab=len(tokens))
            special.add_to_gguf(writer, quiet=True)
        finally:
            quiet.setLevel(level)


def _hyperparameters(writer: Any, cfg: Any, arch: str, mapping: dict[str, str | None]) -> None:
    """The config values transformers' GGUF table names (``{arch}.{key}``), head_dim derived
    where the config has none."""
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // int(cfg.num_attention_heads)
    values = {"head_dim": head_dim}
    rope = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(rope, dict) and "rope_theta" in rope:  # transformers 5 keeps it here
        kind = rope.get("rope_type", "default")
        if kind not in (None, "default"):
            raise UserError(f"GGUF export: rope scaling {kind!r} is not written by this exporter; "
                            "use the compressed-tensors export for this model")
        values["rope_theta"] = float(rope["rope_theta"])
    for key, attr in mapping.items():
        if attr is None:
            continue
        value = values.get(attr, getattr(cfg, attr, None))
        if value is None:
            continue
        full = f"{arch}.{key}"
        if isinstance(value, float):
            writer.add_float32(full, value)
        else:
            writer.add_uint32(full, int(value))


def export(model: nn.Module, tokenizer: Any, path: str | Path) -> dict[str, Any]:
    """Write ``model`` (a decoder of a GGUF architecture) and its tokenizer to ``path``."""
    gguf = _require()
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    cfg = model.config
    arch = getattr(cfg, "model_type", None)
    if arch not in GGUF_CONFIG_MAPPING or arch not in PERMUTED_QK:
        raise UserError(
            f"GGUF export supports the {', '.join(sorted(PERMUTED_QK))} "
            f"architectures; this model is {arch!r}"
        )
    found = marked(model)
    spec, quantized = found if found is not None else (None, {})
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    n_blocks = int(cfg.num_hidden_layers)
    names = gguf.get_tensor_name_map(arch_enum, n_blocks)
    heads, kv_heads = int(cfg.num_attention_heads), int(cfg.num_key_value_heads)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(getattr(cfg, "_name_or_path", "") or type(model).__name__)
    _hyperparameters(writer, cfg, arch, GGUF_CONFIG_MAPPING[arch])
    writer.add_file_type(
        gguf.LlamaFileType.ALL_F32
        if not quantized
        else gguf.LlamaFileType.MOSTLY_Q4_0
        if spec.bits <= 4
        else gguf.LlamaFileType.MOSTLY_Q8_0
    )
    _vocab(tokenizer, writer, gguf, int(model.get_input_embeddings().weight.shape[0]))
    counts: dict[str, int] = {}
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    modules = dict(model.named_modules())
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name.endswith("lm_head.weight"):
            continue  # llama.cpp reuses token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"GGUF export: no GGUF name for tensor {hf_name}")
        w = tensor.detach().float().cpu()
        owner = hf_name.rsplit(".", 1)[0]
        if arch in PERMUTED_QK and owner.endswith(("q_proj", "k_proj")) and w.ndim == 2:
            w = _permute(w, heads if owner.endswith("q_proj") else kv_heads)
        kind = "F32"
        if owner in quantized and hf_name.endswith(".weight"):
            kind = gguf_type(spec, modules[owner].in_features)
        if kind != "F32":
            try:
                grid = recover(w, spec, width=BLOCK, fp16_scales=True)
            except UserError:
                kind = "F32"  # not exactly representable: keep the exact floats
        if kind == "F32":
            writer.add_tensor(name, w.numpy())
        else:
            data = _q4_0(grid) if kind == "Q4_0" else _q8_0(grid)
            writer.add_tensor(
                name, data, raw_shape=data.shape, raw_dtype=getattr(gguf.GGMLQuantizationType, kind)
            )
        counts[kind] = counts.get(kind, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "types": counts,
        "spec": spec.to_dict() if spec else None,
    }
