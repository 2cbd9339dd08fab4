"""What the suite knows about a model's architecture, as plain frozen records.

:func:`compress.arch.arch_for` fills these from the model itself (see
:mod:`compress.arch.discover`); recipes read them and never branch on a family.

Paths inside a :class:`BlockLayout` are relative to the block; ``Block.linear_names``
gives full module names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: component names used across the suite (reports, group ratios, analysis).
SELF_ATTN = ("attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv", "attn_kv", "attn_other")
CROSS_ATTN = ("cross_q", "cross_k", "cross_v", "cross_o", "cross_qkv", "cross_kv", "cross_other")
FFN = ("ffn_in", "ffn_gate", "ffn_out", "ffn_gate_up", "ffn_other")
#: linears that route tokens in a mixture-of-experts FFN; never pruned or quantized.
ROUTER = ("router",)
COMPONENTS = SELF_ATTN + CROSS_ATTN + FFN


def component_group(component: str) -> str:
    """'attn', 'cross', 'ffn' (or 'router') for a component name (used by group ratios)."""
    base = component.split(".", 1)[0]
    if base in SELF_ATTN:
        return "attn"
    if base in CROSS_ATTN:
        return "cross"
    if base in FFN:
        return "ffn"
    if base in ROUTER:
        return "router"
    raise KeyError(component)


@dataclass(frozen=True)
class AttnLayout:
    """One attention module of a block (self- or cross-attention).

    ``parts`` maps "q"/"k"/"v"/"o" (or "qkv" for a fused projection, "kv" for fused
    key/value) to linear paths. ``qkv_layout`` says how a fused projection's output rows
    are ordered: "concat" ``[q | k | v]``, "per-head" ``[(q_h, k_h, v_h) for h]`` or
    "per-group" ``[(q_g..., k_g, v_g) for g]`` (grouped KV), measured by perturbing rows
    (:mod:`compress.arch.probe`); None when unknown. ``qk_norms`` are norms applied to
    q or k inside the module whose width is the whole projection (they lose columns with
    their heads); per-head norms (width ``head_dim``) need nothing.
    """

    kind: str  # "self" | "cross"
    path: str  # outermost attention module of the block
    head_module: str  # module holding head-count attributes (deepest attention module)
    parts: dict[str, str]
    heads: int
    kv_heads: int
    head_dim: int
    qkv_layout: str | None = None
    qk_norms: dict[str, str] = field(default_factory=dict)  # "q"/"k" -> path
    unassigned: tuple[str, ...] = ()  # linears inside the module without a q/k/v/o role

    @property
    def prefix(self) -> str:
        return "attn_" if self.kind == "self" else "cross_"

    @property
    def group(self) -> int:
        return self.heads // max(self.kv_heads, 1)


@dataclass(frozen=True)
class FFNLayout:
    """A dense FFN: ``out(act(gate(x)) * in(x))`` (gated) or ``out(act(in(x)))``.

    ``parts``: "in", "gate", "out", or "gate_up" for a fused gate+up projection whose
    rows are ordered by ``gate_up_order``: "gate_first" ``[gate | up]``, "up_first" or
    "interleaved" ``[g0, u0, g1, u1, ...]``. ``path`` is the smallest module holding
    all the FFN's linears and nothing of attention ("" when the linears sit in different
    parts of the block, e.g. BERT's ``intermediate.dense`` and ``output.dense``).
    ``act_path`` is the activation module (relative to the block) when the activation is
    a module; ``act_name`` names it ("silu", "gelu", ...), measured on the traced forward.
    """

    parts: dict[str, str]
    intermediate: int
    path: str = ""
    gate_up_order: str | None = None
    act_path: str | None = None
    act_name: str | None = None
    #: the parent module applies the activation between ``in`` and ``out``
    #: (BERT ``intermediate``, OPT's block), not a module of its own.
    act_outside: bool = False

    @property
    def gated(self) -> bool:
        return "gate" in self.parts or "gate_up" in self.parts


@dataclass(frozen=True)
class ExpertsLayout:
    """A native mixture-of-experts FFN.

    ``kind`` "fused": expert weights are 3-D parameters of one module at ``path``
    (transformers' ``@use_experts_implementation`` classes): ``params`` maps
    "gate_up"/"up"/"down" to parameter names, ``transposed`` means stored ``[in, out]``.
    ``kind`` "modules": experts are sub-modules, each a dense FFN (``expert_ffn``,
    paths relative to one expert) under ``path``; ``expert_paths`` lists them.
    """

    kind: str  # "fused" | "modules"
    path: str
    n_experts: int
    intermediate: int
    router: str | None = None
    top_k: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    transposed: bool = False
    gated: bool = False
    gate_up_order: str | None = None
    expert_paths: tuple[str, ...] = ()
    expert_ffn: FFNLayout | None = None
    #: path of the module the experts sit in with their router (the sparse MoE block).
    moe_path: str = ""


@dataclass(frozen=True)
class BlockLayout:
    """Where everything is inside one transformer block."""

    #: component -> path, for every linear that has a role of its own.
    linears: dict[str, str]
    attn: tuple[AttnLayout, ...] = ()
    ffn: FFNLayout | None = None
    #: further dense FFNs (a MoE's shared expert): component suffix -> layout
    extra_ffns: tuple[FFNLayout, ...] = ()
    experts: ExpertsLayout | None = None
    norms: tuple[str, ...] = ()
    #: linears inside the block with no attention/FFN role (kept out of targets).
    other: tuple[str, ...] = ()
    #: attention and FFN read the same input (GPT-J / NeoX / Falcon / Cohere blocks).
    parallel: bool | None = None

    @property
    def self_attn(self) -> AttnLayout | None:
        return next((a for a in self.attn if a.kind == "self"), None)

    @property
    def cross_attn(self) -> AttnLayout | None:
        return next((a for a in self.attn if a.kind == "cross"), None)

    # the names the rest of the suite used before discovery
    @property
    def attn_module(self) -> str | None:
        a = self.self_attn
        return a.head_module if a else None

    @property
    def cross_module(self) -> str | None:
        a = self.cross_attn
        return a.head_module if a else None


@dataclass(frozen=True)
class ConfigNames:
    """Config attributes holding one stack's sizes (found by value, see discover)."""

    layers: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    kv_heads: tuple[str, ...] = ()
    intermediate: tuple[str, ...] = ()
    head_dim: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
    expert_intermediate: tuple[str, ...] = ()
    #: per-layer list attributes (``layer_types`` ...) that follow kept blocks.
    per_layer: tuple[str, ...] = ()


@dataclass(frozen=True)
class StackSpec:
    """One stack of repeated blocks (encoder or decoder)."""

    role: str  # "encoder" | "decoder"
    path: str  # full name of the nn.ModuleList of blocks
    n_blocks: int
    #: dotted attribute path of the stack's config inside ``model.config`` ("" = root).
    config_path: str = ""
    #: module paths holding a private copy of the config (updated together).
    private_configs: tuple[str, ...] = ()
    names: ConfigNames = field(default_factory=ConfigNames)
    #: times each block runs per forward (>1: weights shared across depth, ALBERT).
    calls_per_block: int = 1
    hidden: int = 0

    @property
    def layers(self) -> tuple[str, ...]:
        """Candidate paths of the block list (kept for :func:`find_module_list`)."""
        return (self.path,)

    @property
    def shared(self) -> bool:
        return self.calls_per_block > 1


@dataclass(frozen=True)
class ArchSpec:
    """Everything discovered about one model."""

    family: str  # config.model_type (informational; recipes never branch on it)
    kind: str  # "encoder" | "decoder" | "encoder-decoder"
    stacks: tuple[StackSpec, ...]
    #: per block full name -> layout
    layouts: dict[str, BlockLayout]
    #: full names of embedding modules outside the blocks (input, position, type).
    embeddings: tuple[str, ...] = ()
    lm_head: tuple[str, ...] = ()
    tied_embeddings: bool = False
    hidden: int = 0
    activation: str | None = None
    conv1d: bool = False
    gated_ffn: bool = False
    #: how the facts were found: "traced" (a forward on probe inputs) or "names".
    method: str = "traced"
    notes: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)
