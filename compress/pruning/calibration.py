"""Calibration batches and activation statistics, one transformer block at a time.

:func:`make_batches` turns the context's calibration data into model inputs for the
model's task. :func:`sequential_blocks` is the memory-lean driver used by Wanda
(Sun et al. 2023, section 3, "sequential" variant as in SparseGPT):

1. For each stack (encoder, then decoder), one forward of the model up to the
   stack's last block, with a forward pre-hook on every block of the stack that
   records the block's inputs: the hidden states for block 0, and the other arguments
   (attention mask, Llama's ``position_embeddings``, T5's shared ``position_bias``,
   encoder outputs for a decoder) for every block; the pre-hook of the last block
   raises to stop the forward early. Those arguments do not depend on the hidden
   states, and tensors passed to several blocks are stored once (by reference).
   A decoder stack is captured after the encoder has been pruned, so its
   ``encoder_hidden_states`` come from the pruned encoder.
2. Block by block: run the block on the stored hidden states with hooks on its
   linears that sum the squared inputs per feature (padding tokens excluded), call
   ``on_block`` (which prunes the block), run the pruned block again and keep its
   outputs as the next block's inputs, in place.

Memory: the model, one stack's hidden states for the calibration set (``nsamples x
seq_len x hidden`` floats) and the per-batch arguments. Every hook is removed before
returning, also on errors.

:func:`collect_input_sumsq` is the simpler whole-model variant (one forward per
batch, hooks everywhere) used by the structured recipe's activation importance.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from compress.arch import Block, arch_for, find_module_list, iter_blocks, routed_through_proxies
from compress.errors import UserError
from compress.models import input_device, to_device
from compress.pruning.masks import release_freed_memory

log = logging.getLogger(__name__)


@dataclass
class CalibBatch:
    """Model inputs for one batch plus the token masks of each stack role."""

    inputs: dict[str, torch.Tensor]
    #: role ("encoder" / "decoder") -> (batch, seq) 1.0 for real tokens, 0.0 for padding.
    token_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    #: training labels when the task has them (for first-order Taylor importance).
    labels: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return next(iter(self.inputs.values())).shape[0]


def _as_pair(item: Any) -> tuple[str, Any]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return str(item[0]), item[1]
    raise UserError(
        f"calibration item {item!r} is neither a text nor a (text, label/target) pair"
    )


def make_batches(
    tokenizer: Any,
    data: Sequence[Any],
    task: str,
    *,
    nsamples: int,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
) -> list[CalibBatch]:
    """Tokenize calibration data into batches for ``task``.

    causal-lm: the texts are joined and ``nsamples`` windows of ``seq_len`` tokens are
    cut at random offsets (seeded), as Wanda/SparseGPT do with C4. Other tasks: the
    first ``nsamples`` items after a seeded shuffle, truncated to ``seq_len`` and padded
    per batch; for seq2seq the targets become ``labels`` (the model builds its decoder
    inputs from them).
    """
    if tokenizer is None:
        raise UserError("calibration needs a tokenizer (context.tokenizer is empty)")
    if not data:
        raise UserError(
            "calibration data is empty; pass calibration texts (CLI: --calibration-samples N > 0)"
        )
    rng = random.Random(seed)
    pairs = [_as_pair(x) for x in data]
    batches: list[CalibBatch] = []
    if task == "causal-lm":
        sep = tokenizer.eos_token or "\n\n"
        ids = tokenizer(sep.join(p[0] for p in pairs), return_tensors="pt",
                        add_special_tokens=False)["input_ids"][0]
        if ids.numel() < 2:
            raise UserError("calibration text tokenizes to fewer than 2 tokens")
        length = min(seq_len, ids.numel())
        starts = [rng.randrange(0, ids.numel() - length + 1) for _ in range(nsamples)]
        windows = torch.stack([ids[s:s + length] for s in starts])  # (n, length)
        for i in range(0, len(windows), batch_size):
            x = windows[i:i + batch_size]
            ones = torch.ones_like(x)
            batches.append(CalibBatch({"input_ids": x, "attention_mask": ones},
                                      {"decoder": ones.float()}, labels=x.clone()))
        return batches
    rng.shuffle(pairs)
    pairs = pairs[:nsamples]
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        texts = [p[0] for p in chunk]
        enc = tokenizer(texts, truncation=True, max_length=seq_len, padding=True,
                        return_tensors="pt")
        inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        masks = {"encoder": enc["attention_mask"].float()}
        labels = None
        if task == "seq2seq":
            targets = [p[1] if isinstance(p[1], str) else p[0] for p in chunk]
            tgt = tokenizer(text_target=targets, truncation=True, max_length=seq_len,
                            padding=True, return_tensors="pt")
            labels = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100)
            inputs["labels"] = labels
            masks["decoder"] = tgt["attention_mask"].float()
        elif task == "classification" and all(isinstance(p[1], int) for p in chunk):
            labels = torch.tensor([p[1] for p in chunk])
        elif task == "causal-lm":  # pragma: no cover - handled above
            pass
        batches.append(CalibBatch(inputs, masks, labels))
    return batches


# --- hooks accumulating squared inputs -------------------------------------------------


class _SumSq:
    """Forward hooks summing ``x**2`` per input feature of each module (padding masked)."""

    def __init__(self, modules: dict[str, tuple[nn.Module, str]]):
        # name -> (module, mask role)
        self.modules = modules
        self.sumsq: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []

    def __enter__(self) -> _SumSq:
        for name, (module, role) in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name, role)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _hook(self, name: str, role: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                return
            x = x.detach().float()
            mask = self.masks.get(role)
            if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]):
                x = x * mask.to(x.device).unsqueeze(-1)
                n = int(mask.sum())
            else:
                n = x[..., 0].numel()
            sq = x.pow(2).reshape(-1, x.shape[-1]).sum(0)  # (in,)
            if name in self.sumsq:
                self.sumsq[name] += sq
                self.tokens[name] += n
            else:
                self.sumsq[name] = sq
                self.tokens[name] = n

        return hook


def _mask_role(component: str, role: str) -> str:
    # cross-attention keys and values read the encoder's outputs
    return "encoder" if component.split(".")[0] in ("cross_k", "cross_v", "cross_kv") else role


def _forward_kwargs(model: nn.Module) -> dict[str, Any]:
    params = inspect.signature(model.forward).parameters
    if "use_cache" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        if getattr(model.config, "use_cache", None) is not None or "use_cache" in params:
            return {"use_cache": False}
    return {}


@torch.no_grad()
def collect_input_sumsq(
    model: nn.Module,
    batches: list[CalibBatch],
    modules: dict[str, tuple[nn.Module, str]],
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """One whole-model forward per batch; summed squared inputs per feature of ``modules``.

    ``modules`` maps a name to ``(module, role)``; ``role`` picks the token mask
    ("encoder"/"decoder") that excludes padding.
    """
    extra = _forward_kwargs(model)
    device = input_device(model)
    with _SumSq(modules) as acc:
        for batch in batches:
            acc.masks = batch.token_masks
            model(**to_device(batch.inputs, device), **extra)
    return acc.sumsq, acc.tokens


# --- sequential, block by block ----------------------------------------------------------


class _Stop(Exception):
    pass


def _hidden_of(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    raise UserError("cannot find the hidden states among a block's inputs")


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    raise TypeError(f"unexpected block output {type(out).__name__}")


@dataclass
class _Captured:
    hidden: list[torch.Tensor]  # per batch, block 0's input
    calls: list[list[tuple[tuple, dict]]]  # per block, per batch: (args after hidden, kwargs)


@torch.no_grad()
def _capture_stack(model: nn.Module, blocks: list[Block], batches: list[CalibBatch]) -> _Captured:
    hidden: list[torch.Tensor] = []
    calls: list[list[tuple[tuple, dict]]] = [[] for _ in blocks]
    last = len(blocks) - 1
    extra = _forward_kwargs(model)

    def pre_hook(i: int) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if i == 0:
                hidden.append(_hidden_of(args, kwargs).detach())
            rest = args[1:] if args and isinstance(args[0], torch.Tensor) else args
            kw = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            calls[i].append((tuple(rest), kw))
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
        raise UserError("calibration forward did not reach every block of the model")
    return _Captured(hidden, calls)


def stacks_of(model: nn.Module) -> list[list[Block]]:
    """The model's blocks grouped by stack, encoder first."""
    spec = arch_for(model)
    by_role: dict[str, list[Block]] = {}
    for block in iter_blocks(model, spec):
        by_role.setdefault(block.role, []).append(block)
    return [by_role[s.role] for s in spec.stacks if s.role in by_role]


@torch.no_grad()
def sequential_blocks(
    model: nn.Module,
    batches: list[CalibBatch],
    on_block: Callable[[Block, dict[str, torch.Tensor]], None],
    components: Callable[[Block], dict[str, str]],
) -> Iterator[None]:
    """Calibrate and prune block by block (see the module docstring).

    ``components(block)`` names the linears to watch: component -> full module name.
    ``on_block(block, sumsq)`` receives the summed squared inputs per watched module
    name and prunes the block in place. A generator so callers can report progress;
    it yields once per block.
    """
    for blocks in stacks_of(model):
        role = blocks[0].role
        if blocks[0].stack.shared:
            yield from _shared_stack(model, blocks, batches, on_block, components)
            continue
        with routed_through_proxies(model):
            cap = _capture_stack(model, blocks, batches)
        for i, block in enumerate(blocks):
            watched = {
                name: (block.linears[comp], _mask_role(comp, role))
                for comp, name in components(block).items()
            }
            with _SumSq(watched) as acc, routed_through_proxies(model):
                for j, batch in enumerate(batches):
                    acc.masks = batch.token_masks
                    args, kw = cap.calls[i][j]
                    block.module(cap.hidden[j], *args, **kw)
            on_block(block, acc.sumsq)
            with routed_through_proxies(model):
                for j in range(len(batches)):
                    args, kw = cap.calls[i][j]
                    cap.hidden[j] = _first(block.module(cap.hidden[j], *args, **kw)).detach()
            cap.calls[i] = []  # free this block's arguments
            release_freed_memory()
            yield None
        del cap


def _shared_stack(model: nn.Module, blocks: list[Block], batches: list[CalibBatch],
                  on_block: Callable, components: Callable) -> Iterator[None]:
    """A stack whose blocks run several times per forward (weights shared across depth,
    ALBERT): every call adds to the block's statistics, from whole-model forwards."""
    role = blocks[0].role
    for block in blocks:
        watched = {name: (block.linears[comp], _mask_role(comp, role))
                   for comp, name in components(block).items()}
        extra = _forward_kwargs(model)
        device = input_device(model)
        with _SumSq(watched) as acc, routed_through_proxies(model):
            for batch in batches:
                acc.masks = batch.token_masks
                model(**to_device(batch.inputs, device), **extra)
        on_block(block, acc.sumsq)
        yield None


def stack_blocks(model: nn.Module, role: str) -> list[nn.Module]:
    spec = arch_for(model)
    for stack in spec.stacks:
        if stack.role == role:
            return list(find_module_list(model, stack.layers)[1])
    return []
