"""Config attributes of a stack, found by value rather than by a per-family list.

Configs name the same size many ways (``num_attention_heads``, ``n_head``,
``encoder_attention_heads``, ``num_heads``; ``intermediate_size``, ``ffn_dim``, ``d_ff``,
``n_inner``, ...). Discovery measures the sizes on the model's modules, then looks for
the config attributes that hold those values and whose names say what they are, so a
structural change can write the new size where ``from_pretrained`` will read it.
"""

from __future__ import annotations

import re
from typing import Any

from compress.arch.spec import ConfigNames
from compress.configattrs import attrs_of

_KINDS = {
    "layers": re.compile(r"(^|_)(layers?|n_layer|num_layers|depth|blocks?)$"),
    "heads": re.compile(r"(attention_heads|^n_heads?$|^num_heads$|_heads$)"),
    "kv_heads": re.compile(r"(key_value_heads|kv_heads|num_kv|multi_query_group_num)"),
    "intermediate": re.compile(r"(intermediate|ffn|^d_ff$|inner|mlp_dim|feed_forward|"
                               r"ff_dim|hidden_dim$|ffn_hidden)"),
    "head_dim": re.compile(r"(head_dim|^d_kv$|head_size|kv_channels|attention_head_dim)"),
    "hidden": re.compile(r"(^hidden_size$|^d_model$|^n_embd$|^dim$|^embed_dim$|^model_dim$|"
                         r"^hidden_dim$|^embedding_size$|^n_embed$)"),
}
_NOT = {
    "heads": re.compile(r"(kv|key_value|dim|size|global|local|rotary|mlp|num_heads_per)"),
    "intermediate": re.compile(r"(expert|moe|shared|heads|act|layer|dropout|ratio|mult)"),
    "layers": re.compile(r"(type|group|every|interval|step|dense|first|sparse|moe|"
                         r"list|norm|drop)"),
}
_EXPERT_FF = re.compile(r"(moe_intermediate|expert.*(intermediate|ffn|hidden)|"
                        r"(intermediate|ffn).*expert)")
_ROLE_WORD = {"encoder": "encoder", "decoder": "decoder"}


def _role_ok(name: str, role: str) -> bool:
    other = "decoder" if role == "encoder" else "encoder"
    return other not in name


def _ranked(names: list[str], role: str) -> tuple[str, ...]:
    """Role-specific names (``decoder_layers``) when there are any, else the generic ones."""
    word = _ROLE_WORD.get(role, role)
    specific = sorted(n for n in names if word in n.lower())
    return tuple(specific) if specific else tuple(sorted(names))


def find(config: Any, kind: str, value: Any, role: str, allow_none: bool = False
         ) -> tuple[str, ...]:
    """Config attributes of ``kind`` whose value equals ``value`` (role-aware)."""
    pat, bad = _KINDS[kind], _NOT.get(kind)
    names = []
    for name, v in attrs_of(config).items():
        low = name.lower()
        if not pat.search(low) or (bad is not None and bad.search(low)):
            continue
        if not _role_ok(low, role):
            continue
        if (isinstance(v, int) and not isinstance(v, bool) and v == value) or \
                (allow_none and v is None):
            names.append(name)
    return _ranked(names, role)


def read_heads(config: Any, role: str) -> tuple[int | None, int | None, int | None]:
    """(heads, kv heads, head dim) as the config states them for a stack of ``role``."""
    values = attrs_of(config)

    def pick(kind: str) -> int | None:
        pat, bad = _KINDS[kind], _NOT.get(kind)
        names = [n for n, v in values.items() if isinstance(v, int) and not isinstance(v, bool)
                 and v > 0 and pat.search(n.lower()) and not (bad and bad.search(n.lower()))
                 and _role_ok(n.lower(), role)]
        ranked = _ranked(names, role)
        return values[ranked[0]] if ranked else None

    return pick("heads"), pick("kv_heads"), pick("head_dim")


def read_hidden(config: Any) -> int | None:
    values = attrs_of(config)
    for name in ("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "model_dim"):
        v = values.get(name)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def stack_names(config: Any, role: str, *, n_blocks: int, heads: int | None,
                kv_heads: int | None, head_dim: int | None, intermediate: int | None,
                hidden: int | None, expert_intermediate: int | None) -> ConfigNames:
    """Where a stack's sizes live in ``config``."""
    inter = find(config, "intermediate", intermediate, role) if intermediate else ()
    if intermediate and not inter:
        inter = find(config, "intermediate", None, role, allow_none=True)  # GPT-2 n_inner=None
    per_layer = tuple(  # one entry per block (layer_types, no_rope_layers, ...)
        name for name, v in attrs_of(config).items()
        if isinstance(v, (list, tuple)) and len(v) == n_blocks and n_blocks > 1
        and "layer" in name.lower() and not name.startswith("_")
    )
    expert = ()
    if expert_intermediate:
        expert = tuple(n for n, v in attrs_of(config).items()
                       if v == expert_intermediate and _EXPERT_FF.search(n.lower()))
    return ConfigNames(
        layers=find(config, "layers", n_blocks, role),
        heads=find(config, "heads", heads, role) if heads else (),
        kv_heads=find(config, "kv_heads", kv_heads, role) if kv_heads else (),
        intermediate=inter,
        head_dim=find(config, "head_dim", head_dim, role) if head_dim else (),
        hidden=find(config, "hidden", hidden, role) if hidden else (),
        expert_intermediate=expert,
        per_layer=per_layer,
    )
