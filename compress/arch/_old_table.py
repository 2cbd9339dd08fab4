"""The architecture table: per model family, where the blocks and their linears are.

Every recipe asks this table instead of guessing from module names. An entry says,
for each stack of transformer blocks (encoder, decoder), where the block list is and
which module inside a block is self-attention q/k/v/o (or a fused qkv), cross-attention,
FFN in / gate / out, and the norms; plus the config attributes holding head counts,
grouped KV heads, the FFN activation, and whether linears are GPT-2 ``Conv1D``
(weight stored ``[in, out]``).

>>> spec = arch_for(model)                     # doctest: +SKIP
>>> for block in iter_blocks(model):           # doctest: +SKIP
...     block.linears["ffn_in"]                # the module, wherever the family keeps it

Families: bert, roberta, xlm-roberta, distilbert (encoder); gpt2, llama, mistral,
qwen2, opt (decoder); t5, bart, encoder-decoder (bert2bert) (encoder-decoder).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from compress.errors import UserError

#: component names used across the suite (reports, group ratios, analysis).
SELF_ATTN = ("attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv")
CROSS_ATTN = ("cross_q", "cross_k", "cross_v", "cross_o")
FFN = ("ffn_in", "ffn_gate", "ffn_out")
COMPONENTS = SELF_ATTN + CROSS_ATTN + FFN


def component_group(component: str) -> str:
    """'attn', 'cross', 'ffn' for a component name (used by group ratios)."""
    if component in SELF_ATTN:
        return "attn"
    if component in CROSS_ATTN:
        return "cross"
    if component in FFN:
        return "ffn"
    raise KeyError(component)


@dataclass(frozen=True)
class BlockLayout:
    """Paths of the linears inside one transformer block (relative to the block)."""

    linears: dict[str, str]
    norms: tuple[str, ...] = ()
    #: path of the self-attention module (heads live here) and of cross-attention.
    attn_module: str | None = None
    cross_module: str | None = None


@dataclass(frozen=True)
class StackSpec:
    role: str  # "encoder" | "decoder"
    #: candidate paths of the ``nn.ModuleList`` of blocks, tried in order; a path
    #: matches a module whose full name equals it or ends with ``"." + path``.
    layers: tuple[str, ...]
    block: BlockLayout
    #: config attributes (first present wins) for this stack's head counts.
    heads_attr: tuple[str, ...] = ("num_attention_heads",)
    kv_heads_attr: tuple[str, ...] = ("num_key_value_heads",)
    intermediate_attr: tuple[str, ...] = ("intermediate_size",)
    layers_attr: tuple[str, ...] = ("num_hidden_layers",)


@dataclass(frozen=True)
class ArchSpec:
    family: str
    kind: str  # "encoder" | "decoder" | "encoder-decoder"
    stacks: tuple[StackSpec, ...]
    #: parameter-name fragments of embeddings and of the LM head.
    embeddings: tuple[str, ...] = ()
    lm_head: tuple[str, ...] = ()
    activation_attr: tuple[str, ...] = ("hidden_act",)
    conv1d: bool = False
    gated_ffn: bool = False
    hidden_attr: tuple[str, ...] = ("hidden_size",)
    notes: str = ""
    #: sub-config attribute per stack role, for composite models (bert2bert).
    subconfig: dict[str, str] = field(default_factory=dict)


# --- the table ---------------------------------------------------------------

_BERT_BLOCK = BlockLayout(
    linears={
        "attn_q": "attention.self.query",
        "attn_k": "attention.self.key",
        "attn_v": "attention.self.value",
        "attn_o": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
    },
    norms=("attention.output.LayerNorm", "output.LayerNorm"),
    attn_module="attention.self",
)
_BERT_DECODER_BLOCK = BlockLayout(
    linears={
        **_BERT_BLOCK.linears,
        "cross_q": "crossattention.self.query",
        "cross_k": "crossattention.self.key",
        "cross_v": "crossattention.self.value",
        "cross_o": "crossattention.output.dense",
    },
    norms=_BERT_BLOCK.norms + ("crossattention.output.LayerNorm",),
    attn_module="attention.self",
    cross_module="crossattention.self",
)

_BERT = ArchSpec(
    family="bert",
    kind="encoder",
    stacks=(StackSpec("encoder", ("encoder.layer",), _BERT_BLOCK),),
    embeddings=("embeddings.",),
    lm_head=("cls.predictions.decoder",),
)

_LLAMA_BLOCK = BlockLayout(
    linears={
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_o": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_in": "mlp.up_proj",
        "ffn_out": "mlp.down_proj",
    },
    norms=("input_layernorm", "post_attention_layernorm"),
    attn_module="self_attn",
)
_LLAMA = ArchSpec(
    family="llama",
    kind="decoder",
    stacks=(StackSpec("decoder", ("model.layers", "layers"), _LLAMA_BLOCK),),
    embeddings=("embed_tokens",),
    lm_head=("lm_head",),
    gated_ffn=True,
)

_GPT2 = ArchSpec(
    family="gpt2",
    kind="decoder",
    stacks=(
        StackSpec(
            "decoder",
            ("transformer.h", "h"),
            BlockLayout(
                linears={
                    "attn_qkv": "attn.c_attn",
                    "attn_o": "attn.c_proj",
                    "ffn_in": "mlp.c_fc",
                    "ffn_out": "mlp.c_proj",
                },
                norms=("ln_1", "ln_2"),
                attn_module="attn",
            ),
            heads_attr=("n_head",),
            kv_heads_attr=("n_head",),
            intermediate_attr=("n_inner",),
            layers_attr=("n_layer",),
        ),
    ),
    embeddings=("wte", "wpe"),
    lm_head=("lm_head",),
    activation_attr=("activation_function",),
    conv1d=True,
    hidden_attr=("n_embd",),
    notes="Conv1D linears (weight [in, out]); fused qkv in attn.c_attn; n_inner None means 4*n_embd",
)

_OPT_BLOCK = BlockLayout(
    linears={
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_o": "self_attn.out_proj",
        "ffn_in": "fc1",
        "ffn_out": "fc2",
    },
    norms=("self_attn_layer_norm", "final_layer_norm"),
    attn_module="self_attn",
)
_OPT = ArchSpec(
    family="opt",
    kind="decoder",
    stacks=(
        StackSpec(
            "decoder",
            ("model.decoder.layers", "decoder.layers"),
            _OPT_BLOCK,
            intermediate_attr=("ffn_dim",),
        ),
    ),
    embeddings=("embed_tokens", "embed_positions"),
    lm_head=("lm_head",),
    activation_attr=("activation_function",),
)

_BART_DECODER_BLOCK = BlockLayout(
    linears={
        **_OPT_BLOCK.linears,
        "cross_q": "encoder_attn.q_proj",
        "cross_k": "encoder_attn.k_proj",
        "cross_v": "encoder_attn.v_proj",
        "cross_o": "encoder_attn.out_proj",
    },
    norms=_OPT_BLOCK.norms + ("encoder_attn_layer_norm",),
    attn_module="self_attn",
    cross_module="encoder_attn",
)
_BART = ArchSpec(
    family="bart",
    kind="encoder-decoder",
    stacks=(
        StackSpec(
            "encoder",
            ("model.encoder.layers", "encoder.layers"),
            _OPT_BLOCK,
            heads_attr=("encoder_attention_heads",),
            kv_heads_attr=("encoder_attention_heads",),
            intermediate_attr=("encoder_ffn_dim",),
            layers_attr=("encoder_layers",),
        ),
        StackSpec(
            "decoder",
            ("model.decoder.layers", "decoder.layers"),
            _BART_DECODER_BLOCK,
            heads_attr=("decoder_attention_heads",),
            kv_heads_attr=("decoder_attention_heads",),
            intermediate_attr=("decoder_ffn_dim",),
            layers_attr=("decoder_layers",),
        ),
    ),
    embeddings=("shared", "embed_tokens", "embed_positions"),
    lm_head=("lm_head",),
    activation_attr=("activation_function",),
    hidden_attr=("d_model",),
)


def _t5_block(ffn_index: int, cross: bool, gated: bool) -> BlockLayout:
    ffn = f"layer.{ffn_index}.DenseReluDense"
    linears = {
        "attn_q": "layer.0.SelfAttention.q",
        "attn_k": "layer.0.SelfAttention.k",
        "attn_v": "layer.0.SelfAttention.v",
        "attn_o": "layer.0.SelfAttention.o",
    }
    if cross:
        linears |= {
            "cross_q": "layer.1.EncDecAttention.q",
            "cross_k": "layer.1.EncDecAttention.k",
            "cross_v": "layer.1.EncDecAttention.v",
            "cross_o": "layer.1.EncDecAttention.o",
        }
    if gated:
        linears |= {"ffn_gate": f"{ffn}.wi_0", "ffn_in": f"{ffn}.wi_1", "ffn_out": f"{ffn}.wo"}
    else:
        linears |= {"ffn_in": f"{ffn}.wi", "ffn_out": f"{ffn}.wo"}
    norms = tuple(f"layer.{i}.layer_norm" for i in range(ffn_index + 1))
    return BlockLayout(
        linears=linears,
        norms=norms,
        attn_module="layer.0.SelfAttention",
        cross_module="layer.1.EncDecAttention" if cross else None,
    )


def _t5(gated: bool) -> ArchSpec:
    common = dict(
        heads_attr=("num_heads",),
        kv_heads_attr=("num_heads",),
        intermediate_attr=("d_ff",),
    )
    return ArchSpec(
        family="t5",
        kind="encoder-decoder",
        stacks=(
            StackSpec("encoder", ("encoder.block",), _t5_block(1, False, gated),
                      layers_attr=("num_layers",), **common),
            StackSpec("decoder", ("decoder.block",), _t5_block(2, True, gated),
                      layers_attr=("num_decoder_layers", "num_layers"), **common),
        ),
        embeddings=("shared", "embed_tokens"),
        lm_head=("lm_head",),
        activation_attr=("dense_act_fn", "feed_forward_proj"),
        gated_ffn=gated,
        hidden_attr=("d_model",),
        notes="no biases; relative attention bias lives in block 0's SelfAttention; "
        "attention width is num_heads*d_kv, not d_model",
    )


_BERT2BERT = ArchSpec(
    family="encoder-decoder",
    kind="encoder-decoder",
    stacks=(
        StackSpec("encoder", ("encoder.encoder.layer",), _BERT_BLOCK),
        StackSpec("decoder", ("decoder.bert.encoder.layer",), _BERT_DECODER_BLOCK),
    ),
    embeddings=("embeddings.",),
    lm_head=("cls.predictions.decoder",),
    subconfig={"encoder": "encoder", "decoder": "decoder"},
    notes="transformers EncoderDecoderModel over two BERT-family models (bert2bert); "
    "head counts and sizes live in config.encoder / config.decoder",
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": _BERT,
    "roberta": replace(_BERT, family="roberta", lm_head=("lm_head.decoder",)),
    "xlm-roberta": replace(_BERT, family="xlm-roberta", lm_head=("lm_head.decoder",)),
    "gpt2": _GPT2,
    "llama": _LLAMA,
    "mistral": replace(_LLAMA, family="mistral"),
    "qwen2": replace(_LLAMA, family="qwen2"),
    "opt": _OPT,
    "bart": _BART,
    "t5": _t5(gated=False),
    "encoder-decoder": _BERT2BERT,
}


# --- lookups ------------------------------------------------------------------


def _model_type(model_or_config: Any) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if not model_type:
        raise UserError(
            f"{type(model_or_config).__name__} has no config.model_type; this suite works on "
            "Hugging Face transformers models"
        )
    return model_type


def arch_for(model_or_config: Any) -> ArchSpec:
    """The table entry for a model or config; unknown families get a clear error."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = _model_type(config)
    if model_type == "t5" or model_type in ("mt5", "umt5"):
        gated = str(getattr(config, "feed_forward_proj", "relu")).startswith("gated")
        return _t5(gated)
    if model_type == "encoder-decoder":
        enc = _model_type(config.encoder)
        dec = _model_type(config.decoder)
        bertish = ("bert", "roberta", "xlm-roberta")
        if enc not in bertish or dec not in bertish:
            raise UserError(
                f"encoder-decoder of {enc} + {dec} is not in the architecture table; "
                "supported: BERT-family encoder and decoder (bert2bert)"
            )
        return _BERT2BERT
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UserError(
            f"model family {model_type!r} is not in the architecture table "
            f"(compress/arch.py); supported: {', '.join(sorted(ARCHITECTURES))}. "
            "Add an entry naming its block list and its attention/FFN linears."
        ) from None


def stack_config(model_or_config: Any, spec: ArchSpec, stack: StackSpec) -> Any:
    """The config object holding this stack's sizes (sub-config for bert2bert)."""
    config = getattr(model_or_config, "config", model_or_config)
    sub = spec.subconfig.get(stack.role)
    return getattr(config, sub) if sub else config


def config_value(config: Any, attrs: tuple[str, ...], default: Any = None) -> Any:
    for attr in attrs:
        value = getattr(config, attr, None)
        if value is not None:
            return value
    return default


def find_module_list(model: nn.Module, candidates: tuple[str, ...]) -> tuple[str, nn.ModuleList]:
    modules = dict(model.named_modules())
    for path in candidates:
        if isinstance(modules.get(path), nn.ModuleList):
            return path, modules[path]
    for path in candidates:
        for name, module in modules.items():
            if name.endswith("." + path) and isinstance(module, nn.ModuleList):
                return name, module
    raise UserError(
        f"{type(model).__name__}: no block list at {' or '.join(candidates)}; "
        "the architecture table entry does not match this model"
    )


@dataclass
class Block:
    """One transformer block of a model, resolved against the table."""

    stack: StackSpec
    index: int
    name: str  # full module name of the block
    module: nn.Module
    linears: dict[str, nn.Module]  # component -> module present in this block
    linear_names: dict[str, str]  # component -> full module name
    conv1d: bool

    @property
    def role(self) -> str:
        return self.stack.role


def iter_blocks(model: nn.Module, spec: ArchSpec | None = None) -> Iterator[Block]:
    """Yield every transformer block of ``model``, encoder stack first."""
    spec = spec or arch_for(model)
    for stack in spec.stacks:
        list_name, blocks = find_module_list(model, stack.layers)
        for i, block in enumerate(blocks):
            linears, names = {}, {}
            for comp, rel in stack.block.linears.items():
                try:
                    mod = block.get_submodule(rel)
                except AttributeError:
                    continue  # e.g. cross-attention absent in this block
                linears[comp] = mod
                names[comp] = f"{list_name}.{i}.{rel}"
            yield Block(stack, i, f"{list_name}.{i}", block, linears, names, spec.conv1d)


def targeted_linears(
    model: nn.Module, groups: tuple[str, ...] = ("attn", "cross", "ffn")
) -> dict[str, tuple[nn.Module, str]]:
    """Full name -> (module, component) of the linears in the requested groups."""
    out: dict[str, tuple[nn.Module, str]] = {}
    for block in iter_blocks(model):
        for comp, mod in block.linears.items():
            if component_group(comp) in groups:
                out[block.linear_names[comp]] = (mod, comp)
    return out


def linear_weight_in_out(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) for ``nn.Linear`` or GPT-2 ``Conv1D``."""
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    return module.weight.shape[1], module.weight.shape[0]


def classify_parameter(name: str, spec: ArchSpec, block_names: dict[str, str]) -> str:
    """Component of a parameter by full name: a linear component, 'norm', 'embedding',
    'lm_head', 'bias' for linear biases is folded into the component, else 'other'.

    ``block_names`` maps full linear module names to components (see
    :func:`component_map`).
    """
    module_name = name.rsplit(".", 1)[0]
    if module_name in block_names:
        return block_names[module_name]
    if any(fragment in name for fragment in spec.lm_head):
        return "lm_head"
    if any(fragment in name for fragment in spec.embeddings):
        return "embedding"
    lowered = name.lower()
    if "norm" in lowered or ".ln_" in lowered or lowered.startswith("ln_"):
        return "norm"
    return "other"


def component_map(model: nn.Module) -> dict[str, str]:
    """Full module name -> component for every linear the table knows in ``model``."""
    return {
        name: comp
        for block in iter_blocks(model)
        for comp, name in block.linear_names.items()
    }


def describe(model: nn.Module) -> dict[str, Any]:
    """Facts about a model for reports: family, kind, per-stack blocks and heads."""
    spec = arch_for(model)
    stacks = []
    for stack in spec.stacks:
        cfg = stack_config(model, spec, stack)
        _, blocks = find_module_list(model, stack.layers)
        heads = config_value(cfg, stack.heads_attr)
        stacks.append(
            {
                "role": stack.role,
                "blocks": len(blocks),
                "heads": heads,
                "kv_heads": config_value(cfg, stack.kv_heads_attr, heads),
                "intermediate": config_value(cfg, stack.intermediate_attr),
            }
        )
    cfg0 = stack_config(model, spec, spec.stacks[0])
    return {
        "family": spec.family,
        "kind": spec.kind,
        "activation": config_value(cfg0, spec.activation_attr),
        "conv1d": spec.conv1d,
        "gated_ffn": spec.gated_ffn,
        "stacks": stacks,
    }
