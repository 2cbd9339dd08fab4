"""The sequential calibration pipeline shared by Wanda, SparseGPT, OWL, GPTQ and AWQ.

One transformer block at a time, as in the GPTQ and SparseGPT reference code and
llm-compressor's sequential pipeline:

1. For each stack (encoder, then decoder), one forward of the model per calibration
   batch up to the stack's last block, with a forward pre-hook on every block that
   records the block's call: block 0's hidden states, and every block's other
   arguments (attention mask, rotary ``position_embeddings``, T5's shared position
   bias, a decoder's encoder states). Those do not depend on this stack's weights, so
   they are replayed as recorded; key/value cache objects are replaced by ``None``
   (a replayed cache would serve cross-attention keys from the first run instead of
   computing them, and grow on every call) and ``use_cache`` is off. The last block's
   pre-hook stops the forward. A decoder stack is captured after the encoder was
   compressed, so it reads the compressed encoder's states.
2. For each block, the recipe gets a :class:`BlockRun`. ``collect(modules, fn)``
   replays the block on the current hidden states and hands ``fn(name, x)`` every
   input of the watched linears as a ``(tokens, in)`` float matrix **with padding
   rows removed** (the token mask of the block's role; cross-attention keys/values
   use the encoder's mask). The replay stops as soon as every watched linear has
   seen its input, so collecting the attention inputs skips the FFN. The recipe then
   changes the block's weights, possibly in several rounds: :func:`sequential_groups`
   orders a block's linears as the forward uses them (attention inputs, attention
   output, cross-attention, FFN inputs, FFN output), and collecting group ``g`` after
   groups ``< g`` were compressed is GPTQ's "true sequential" mode.
3. ``advance()`` replays the compressed block and keeps its outputs as the next
   block's inputs (in place).

Memory: one stack's hidden states for the calibration set (tokens x hidden floats)
plus the recorded arguments; hooks are removed whatever happens.

>>> def on_block(run):                                             # doctest: +SKIP
...     for group in sequential_groups(run.block):
...         run.collect(group, lambda name, x: stats[name].add(x))
...         compress_group(group)
>>> run_sequential(model, batches, on_block)                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from compress.arch import Block, arch_for, iter_blocks
from compress.calibration import CalibBatch
from compress.errors import UserError
from compress.models import input_device, to_device

#: a block's linears in the order its forward uses them; each tuple is one group.
#: Components are matched by their base name: native experts' ``ffn_in.e3`` joins
#: the FFN inputs, ``ffn_out.e3`` the FFN outputs.
SEQUENTIAL_ORDER: tuple[tuple[str, ...], ...] = (
    ("attn_q", "attn_k", "attn_v", "attn_qkv"),
    ("attn_o",),
    ("cross_q", "cross_k", "cross_v", "cross_kv"),
    ("cross_o",),
    ("ffn_gate", "ffn_in", "ffn_gate_up"),
    ("ffn_out",),
)


def base_component(component: str) -> str:
    """``ffn_in.e3`` -> ``ffn_in`` (an expert's linear has its component's role)."""
    return component.split(".", 1)[0]


def mask_role(component: str, role: str) -> str:
    """Which token mask applies to a linear's inputs: cross-attention keys and values
    read the encoder's outputs, everything else its own stack's hidden states."""
    return "encoder" if base_component(component) in ("cross_k", "cross_v", "cross_kv") else role


def linear_roles(model: nn.Module) -> dict[str, str]:
    """Full linear name -> the token mask role of its inputs, for every block linear."""
    return {name: mask_role(comp, block.role)
            for block in iter_blocks(model) for comp, name in block.linear_names.items()}


def sequential_groups(block: Block, names: set[str] | None = None) -> list[dict[str, str]]:
    """The block's linears (component -> full name) in forward order, one dict per group.

    ``names`` keeps only those full names. Components outside the known order form a
    last group of their own.
    """
    present = {c: n for c, n in block.linear_names.items() if names is None or n in names}
    groups, seen = [], set()
    for order in SEQUENTIAL_ORDER:
        group = {c: n for c, n in present.items() if base_component(c) in order}
        seen.update(group)
        if group:
            groups.append(group)
    rest = {c: n for c, n in present.items() if c not in seen}
    if rest:
        groups.append(rest)
    return groups


def all_linears(block: Block, names: set[str] | None = None) -> dict[str, str]:
    """Every (selected) linear of the block as one group."""
    return {c: n for c, n in block.linear_names.items() if names is None or n in names}


def forward_kwargs(model: nn.Module) -> dict[str, Any]:
    """``use_cache=False`` where the model takes it (EncoderDecoderModel passes it on)."""
    params = inspect.signature(model.forward).parameters
    if "use_cache" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return {"use_cache": False}
    return {}


def stacks_of(model: nn.Module) -> list[list[Block]]:
    """The model's blocks grouped by stack, encoder first."""
    spec = arch_for(model)
    by_role: dict[str, list[Block]] = {}
    for block in iter_blocks(model, spec):
        by_role.setdefault(block.role, []).append(block)
    return [by_role[s.role] for s in spec.stacks if s.role in by_role]


def first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    raise TypeError(f"unexpected block output {type(out).__name__}")


def _no_cache(value: Any) -> Any:
    from transformers.cache_utils import Cache

    return None if isinstance(value, Cache) else value


@dataclass
class _Call:
    positional: bool  # hidden states passed as the first positional argument
    args: tuple  # positional arguments after the hidden states
    kwargs: dict[str, Any]


class _Stop(Exception):
    pass


@torch.no_grad()
def _capture(model: nn.Module, blocks: list[Block], batches: list[CalibBatch]):
    hidden: list[torch.Tensor] = []
    calls: list[list[_Call]] = [[] for _ in blocks]
    last = len(blocks) - 1
    extra = forward_kwargs(model)

    def pre_hook(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            positional = bool(args) and isinstance(args[0], torch.Tensor)
            h = args[0] if positional else kwargs.get("hidden_states")
            if h is None:
                raise UserError("cannot find the hidden states among a block's inputs")
            kw = {k: _no_cache(v) for k, v in kwargs.items() if k != "hidden_states"}
            if "use_cache" in kw:
                kw["use_cache"] = False
            rest = args[1:] if positional else args
            calls[i].append(_Call(positional, tuple(_no_cache(a) for a in rest), kw))
            if i == 0:
                hidden.append(h.detach())
            if i == last:
                raise _Stop

        return hook

    handles = [b.module.register_forward_pre_hook(pre_hook(i), with_kwargs=True)
               for i, b in enumerate(blocks)]
    device = input_device(model)
    try:
        for batch in batches:
            with contextlib.suppress(_Stop):
                model(**to_device(batch.inputs, device), **extra)
    finally:
        for h in handles:
            h.remove()
    if len(hidden) != len(batches) or any(len(c) != len(batches) for c in calls):
        raise UserError("the calibration forward did not reach every block of the model")
    return hidden, calls


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` (..., in) as (tokens, in) float32, padding rows dropped where the mask fits."""
    flat = x.detach().reshape(-1, x.shape[-1])
    if mask is not None and mask.numel() == flat.shape[0]:
        keep = mask.reshape(-1).to(flat.device) > 0
        if not bool(keep.all()):
            flat = flat[keep]
    return flat.float()


class BlockRun:
    """One block's calibration inputs; see the module docstring.

    In a stack whose blocks share weights across depth (ALBERT: one block runs many
    times per forward), a block cannot be replayed on its own: ``collect`` then runs
    whole-model forwards (every call of the block adds its inputs) and nothing is
    propagated (``model`` is given, ``hidden`` and ``calls`` are None).
    """

    def __init__(self, block: Block, hidden: list[torch.Tensor] | None,
                 calls: list[_Call] | None, batches: list[CalibBatch],
                 model: nn.Module | None = None):
        self.block = block
        self.hidden = hidden
        self.calls = calls
        self.batches = batches
        self.model = model
        #: set by a recipe that propagates other outputs than the compressed block's
        #: (AWQ searches on the float model: it keeps the block's float outputs).
        self.next_hidden: list[torch.Tensor] | None = None

    @property
    def shared(self) -> bool:
        return self.hidden is None

    def _forward(self, j: int) -> Any:
        if self.shared:
            batch = self.batches[j]
            return self.model(**to_device(batch.inputs, input_device(self.model)),
                              **forward_kwargs(self.model))
        call = self.calls[j]
        h = self.hidden[j]
        if call.positional:
            return self.block.module(h, *call.args, **call.kwargs)
        return self.block.module(*call.args, hidden_states=h, **call.kwargs)

    @torch.no_grad()
    def collect(self, group: dict[str, str], fn: Callable[[str, torch.Tensor], None],
                *, stop_early: bool = True) -> None:
        """Replay the block; ``fn(full_name, x)`` for each input ``x`` (tokens, in) of the
        group's linears (``group``: component -> full name), padding rows removed."""
        role = self.block.role
        watched = {name: (self.block.linears[comp], mask_role(comp, role))
                   for comp, name in group.items()}
        pending: set[str] = set()
        masks: dict[str, torch.Tensor] = {}
        # linears reading one tensor get one rows object (callers may share their work)
        rows_of: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

        def make(name: str, role_of: str) -> Callable:
            def hook(_module: nn.Module, args: tuple) -> None:
                x = args[0] if args else None
                if isinstance(x, torch.Tensor):
                    key = (id(x), role_of)
                    hit = rows_of.get(key)
                    if hit is None or hit[0] is not x:
                        hit = rows_of[key] = (x, _rows(x, masks.get(role_of)))
                    fn(name, hit[1])
                pending.discard(name)
                if stop_early and not pending:
                    raise _Stop

            return hook

        handles = [mod.register_forward_pre_hook(make(name, r)) for name, (mod, r) in watched.items()]
        try:
            for j, batch in enumerate(self.batches):
                masks = batch.token_masks
                pending = set(watched) if not self.shared else {"\0never"}
                rows_of.clear()
                with contextlib.suppress(_Stop):
                    self._forward(j)
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def outputs(self) -> list[torch.Tensor] | None:
        """The block's outputs for every batch with its current weights (None when shared)."""
        if self.shared:
            return None
        return [first_tensor(self._forward(j)).detach() for j in range(len(self.batches))]

    @torch.no_grad()
    def advance(self) -> None:
        """Replace the stored hidden states by this block's outputs (the next block's inputs)."""
        if self.shared:
            return
        if self.next_hidden is not None:
            self.hidden[:] = self.next_hidden
            return
        for j in range(len(self.batches)):
            self.hidden[j] = first_tensor(self._forward(j)).detach()


@torch.no_grad()
def collect_model_inputs(
    model: nn.Module,
    batches: list[CalibBatch],
    modules: dict[str, tuple[nn.Module, str]],
    fn: Callable[[str, torch.Tensor], None],
) -> None:
    """One whole-model forward per batch; ``fn(name, x)`` for every input (tokens, in) of
    ``modules`` (name -> (module, mask role)), padding rows removed. For modules outside
    the blocks, such as an LM head."""
    masks: dict[str, torch.Tensor] = {}

    def make(name: str, role: str) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                fn(name, _rows(args[0], masks.get(role)))

        return hook

    from compress.arch import routed_through_proxies

    handles = [m.register_forward_pre_hook(make(n, r)) for n, (m, r) in modules.items()]
    extra = forward_kwargs(model)
    device = input_device(model)
    try:
        with routed_through_proxies(model):
            for batch in batches:
                masks = batch.token_masks
                model(**to_device(batch.inputs, device), **extra)
    finally:
        for h in handles:
            h.remove()


def run_sequential(
    model: nn.Module,
    batches: list[CalibBatch],
    on_block: Callable[[BlockRun], None],
    *,
    progress: Callable[[Block], None] | None = None,
) -> int:
    """Call ``on_block`` for every block, stack by stack, on compressed predecessors' outputs.

    Returns the number of blocks visited. ``on_block`` changes the block in place; this
    function then propagates the block's outputs to the next block.
    """
    from compress.arch import routed_through_proxies
    from compress.pruning.masks import release_freed_memory

    if not batches:
        raise UserError("calibration produced no batches")
    n = 0
    # native experts run through their per-expert proxies, so hooks see routed tokens
    with routed_through_proxies(model):
        for blocks in stacks_of(model):
            shared = blocks[0].stack.shared
            hidden, calls = (None, None) if shared else _capture(model, blocks, batches)
            for i, block in enumerate(blocks):
                run = BlockRun(block, hidden, None if shared else calls[i], batches, model)
                on_block(run)
                run.advance()
                if not shared:
                    calls[i] = []  # free this block's recorded arguments
                release_freed_memory()
                n += 1
                if progress is not None:
                    progress(block)
            del hidden, calls
    return n
