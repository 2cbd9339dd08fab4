"""Importance of every structural unit, measured on calibration activations.

Structured pruning needs to know what each unit contributes before it removes it;
this module measures it for any model :mod:`compress.arch` reads (encoders, decoders,
encoder-decoders), from the context's shared calibration batches
(:func:`compress.calibration.calibration_batches`: every method sees the same tokens):

* **blocks** (depth pruning):

  - *block influence* (ShortGPT, Men et al. 2024, arXiv:2403.03853): ``BI_i = 1 -
    E_t[cos(x_i,t, x_{i+1},t)]``, the angular distance between a block's input and
    output hidden states, averaged over real tokens. A block whose output equals its
    input scores 0.
  - *skip loss* (Shortened LLaMA, Kim et al. 2024, arXiv:2402.02834; Minitron's depth
    metric, Muralidharan et al. 2024, arXiv:2407.14679): the increase of the task loss
    when the block is skipped (its output replaced by its input), one forward of the
    calibration set per block. Where the task has hard labels (next token, target
    token, class) the loss is their cross-entropy; a classifier without labels uses
    the KL divergence to the full model's outputs, a bare encoder ``1 - cos`` between
    its final hidden states and the full model's.

* **attention heads, KV groups and FFN neurons** (width pruning): activation-based
  scores of :mod:`compress.pruning.importance` (the norm of each unit's input to its
  output projection times that projection's column norms, Wanda's score lifted to
  whole units); a KV group scores the sum of its query heads (LLM-Pruner, Ma et al.
  2023, arXiv:2305.11627, groups coupled structures the same way).

* **hidden (embedding) channels**: Minitron's embedding-channel importance, the
  activation magnitude of each channel at the output of the normalisation layers,
  measured where the residual stream is read: the inputs of the first projection of
  every attention and FFN (which in pre- and post-norm blocks alike are normalised
  residual states) and of the LM head. Score of channel ``c``: ``sum_sites
  sqrt(mean_t x_{t,c}^2)``. Sheared-LLaMA (Xia et al. 2023, arXiv:2310.06694) prunes
  the same hidden dimension with learned masks; SliceGPT (Ashkboos et al. 2024,
  arXiv:2401.15024) rotates it first so that dropping channels is nearly exact. Here
  channels are dropped in the model's own basis and recovery distillation repairs
  the rest.

>>> scores = block_importance(model, batches, "causal-lm")     # doctest: +SKIP
>>> scores["decoder"].skip        # loss increase per block, lowest goes first
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.arch import arch_for
from compress.calibration import CalibBatch
from compress.errors import UserError
from compress.models import input_device, to_device
from compress.pruning.calibration import collect_input_sumsq

log = logging.getLogger(__name__)

BLOCK_METRICS = ("skip", "bi")


@dataclass
class BlockScores:
    """Importance of the blocks of one stack (per call for a shared-weight stack)."""

    role: str
    #: angular distance 1 - cos(input, output), averaged over real tokens.
    bi: list[float]
    #: increase of ``skip_metric`` when the block is skipped.
    skip: list[float]
    #: what ``skip`` measures: "loss" (task cross-entropy), "kl" (to the full model) or
    #: "hidden" (1 - cos of the final hidden states to the full model's).
    skip_metric: str
    #: the full model's value of that metric (0 for "kl" and "hidden").
    base: float = 0.0
    #: the stack runs one block several times (ALBERT): scores are per call.
    per_call: bool = False

    def scores(self, metric: str) -> list[float]:
        return self.skip if metric == "skip" else self.bi

    def to_dict(self) -> dict[str, Any]:
        return {"bi": [round(v, 6) for v in self.bi], "skip": [round(v, 6) for v in self.skip],
                "skip_metric": self.skip_metric, "base": round(self.base, 6),
                "per_call": self.per_call}


def _hidden_in(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    h = kwargs.get("hidden_states")
    return h if isinstance(h, torch.Tensor) else None


def _hidden_out(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _replace_hidden(out: Any, h: torch.Tensor) -> Any:
    """The block's output with its hidden states replaced by ``h`` (same structure)."""
    if isinstance(out, torch.Tensor):
        return h
    if isinstance(out, tuple):
        return (h, *out[1:])
    if isinstance(out, list):
        return [h, *out[1:]]
    raise UserError(f"cannot skip a block whose output is a {type(out).__name__}")


def _forward_kwargs(model: nn.Module) -> dict[str, Any]:
    from compress.arch import probe

    return probe.forward_kwargs(model)


@contextlib.contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _Stack:
    """A stack's block list and how many calls one forward makes of each block."""

    def __init__(self, model: nn.Module, stack: Any):
        self.role = stack.role
        self.blocks = model.get_submodule(stack.path)
        self.calls = stack.calls_per_block
        self.n = len(self.blocks) * self.calls  # depth as the forward sees it

    def hook_targets(self) -> list[tuple[nn.Module, int]]:
        """(module, depth position of its first call) per distinct block."""
        return [(b, i) for i, b in enumerate(self.blocks)]


def _mask(batch: CalibBatch, role: str, like: torch.Tensor) -> torch.Tensor | None:
    m = batch.token_masks.get(role)
    if m is not None and tuple(m.shape) == tuple(like.shape[:2]):
        return m.to(like.device, torch.float32)
    return None


@torch.no_grad()
def _block_influence(model: nn.Module, stacks: list[_Stack],
                     batches: list[CalibBatch]) -> dict[str, list[float]]:
    """Per stack role: 1 - mean cos(block input, block output) over real tokens."""
    sums = {s.role: torch.zeros(s.n, dtype=torch.float64) for s in stacks}
    counts = {s.role: torch.zeros(s.n, dtype=torch.float64) for s in stacks}
    current: dict[str, CalibBatch] = {}
    handles = []
    for s in stacks:
        for block, first in s.hook_targets():
            calls = [0]

            def hook(mod, args, kwargs, out, s=s, first=first, calls=calls):
                x, y = _hidden_in(args, kwargs), _hidden_out(out)
                pos = first + (calls[0] % s.calls) * len(s.blocks) if s.calls > 1 else first
                calls[0] += 1
                if x is None or y is None or x.shape != y.shape:
                    return
                cos = F.cosine_similarity(x.float(), y.float(), dim=-1, eps=1e-8)  # (B, T)
                m = _mask(current["batch"], s.role, x)
                if m is None:
                    m = torch.ones_like(cos)
                sums[s.role][pos] += float(((1.0 - cos) * m).sum())
                counts[s.role][pos] += float(m.sum())

            handles.append(block.register_forward_hook(hook, with_kwargs=True))
    extra = _forward_kwargs(model)
    device = input_device(model)
    with _hooks(handles):
        for batch in batches:
            current["batch"] = batch
            model(**to_device(batch.inputs, device), **extra)
    out = {}
    for s in stacks:
        if bool((counts[s.role] == 0).any()):
            raise UserError(f"calibration forward did not reach every {s.role} block")
        out[s.role] = (sums[s.role] / counts[s.role]).tolist()
    return out


def _metric_kind(model: nn.Module, batches: list[CalibBatch], task: str) -> str:
    if task == "embedding":
        return "hidden"
    if task in ("causal-lm", "seq2seq"):
        return "loss"
    if task == "classification" and all(b.labels is not None for b in batches):
        return "loss"
    return "kl"


def _output(model: nn.Module, out: Any, kind: str) -> torch.Tensor:
    if kind == "hidden":
        h = getattr(out, "last_hidden_state", None)
        return h if h is not None else _hidden_out(out)
    logits = getattr(out, "logits", None)
    if logits is None:
        raise UserError(f"{type(model).__name__} returns no logits to measure a loss on")
    return logits


def _batch_metric(y: torch.Tensor, batch: CalibBatch, task: str, kind: str,
                  ref: torch.Tensor | None) -> tuple[float, float]:
    """(sum of the per-position metric, number of positions) for one batch."""
    if kind == "loss":
        if task == "causal-lm":
            labels = batch.labels if batch.labels is not None else batch.inputs["input_ids"]
            mask = batch.inputs.get("attention_mask")
            labels = labels.to(y.device).clone()
            if mask is not None:
                labels[mask.to(y.device) == 0] = -100
            logits, labels = y[:, :-1], labels[:, 1:]
        elif task == "seq2seq":
            logits, labels = y, batch.inputs["labels"].to(y.device)
        else:
            logits, labels = y, batch.labels.to(y.device)
        flat = logits.float().reshape(-1, logits.shape[-1])
        lab = labels.reshape(-1)
        loss = F.cross_entropy(flat, lab, ignore_index=-100, reduction="sum")
        return float(loss), float((lab != -100).sum())
    if kind == "kl":
        log_p = F.log_softmax(ref.float(), -1)
        log_q = F.log_softmax(y.float(), -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (B,) or (B, T)
        return float(kl.sum()), float(kl.numel())
    cos = F.cosine_similarity(y.float(), ref.float(), dim=-1)  # (B, T)
    m = batch.token_masks.get("encoder")
    m = torch.ones_like(cos) if m is None or m.shape != cos.shape else m.to(cos)
    return float(((1 - cos) * m).sum()), float(m.sum())


@torch.no_grad()
def _skip_losses(model: nn.Module, stacks: list[_Stack], batches: list[CalibBatch],
                 task: str) -> tuple[dict[str, list[float]], str, float]:
    """Per stack role: the metric's increase when each block (call) is skipped."""
    kind = _metric_kind(model, batches, task)
    extra = _forward_kwargs(model)
    device = input_device(model)

    def run(refs: list[torch.Tensor] | None) -> tuple[float, list[torch.Tensor]]:
        total = n = 0.0
        outs = []
        for j, batch in enumerate(batches):
            y = _output(model, model(**to_device(batch.inputs, device), **extra), kind)
            if refs is None and kind != "loss":
                outs.append(y.detach())
                continue
            s, c = _batch_metric(y, batch, task, kind, None if refs is None else refs[j])
            total, n = total + s, n + c
        return (total / max(n, 1.0)), outs

    base, refs = run(None)
    refs_used = refs if kind != "loss" else None  # "kl" / "hidden": against the full model
    if kind != "loss":
        base = 0.0
    out: dict[str, list[float]] = {}
    for s in stacks:
        values = []
        for pos in range(s.n):
            block = s.blocks[pos % len(s.blocks)] if s.calls > 1 else s.blocks[pos]
            call_wanted = pos // len(s.blocks) if s.calls > 1 else 0
            calls = [0]

            def skip(mod, args, kwargs, out_, calls=calls, call_wanted=call_wanted, s=s):
                mine = calls[0] % max(s.calls, 1) == call_wanted
                calls[0] += 1
                if not mine:
                    return None
                x = _hidden_in(args, kwargs)
                y = _hidden_out(out_)
                if x is None or y is None or x.shape != y.shape:
                    raise UserError("a block's output is not shaped like its input; blocks "
                                    "cannot be skipped in this model")
                return _replace_hidden(out_, x)

            handle = block.register_forward_hook(skip, with_kwargs=True)
            with _hooks([handle]):
                value, _ = run(refs_used)
            values.append(value - base)
        out[s.role] = values
    return out, kind, base


def block_importance(model: nn.Module, batches: list[CalibBatch], task: str,
                     metrics: tuple[str, ...] = BLOCK_METRICS) -> dict[str, BlockScores]:
    """Block influence and skip loss of every block, per stack role (see the module doc).

    ``metrics`` limits what is measured ("skip" costs one calibration pass per block).
    """
    if not batches:
        raise UserError("block importance needs calibration data")
    spec = arch_for(model)
    stacks = [_Stack(model, s) for s in spec.stacks]
    was_training = model.training
    model.eval()
    try:
        bi = _block_influence(model, stacks, batches) if "bi" in metrics else {}
        if "skip" in metrics:
            skip, kind, base = _skip_losses(model, stacks, batches, task)
        else:
            skip, kind, base = {}, "none", 0.0
    finally:
        model.train(was_training)
    return {s.role: BlockScores(s.role, bi.get(s.role, [0.0] * s.n),
                                skip.get(s.role, [0.0] * s.n), kind, base, s.calls > 1)
            for s in stacks}


# --- hidden (embedding) channels ------------------------------------------------------

#: first projection of each path that reads the residual stream, in order of preference
READERS = (("attn_qkv", "attn_q"), ("cross_q",), ("ffn_gate_up", "ffn_in", "ffn_gate"),
           ("router",))


@torch.no_grad()
def hidden_importance(model: nn.Module, batches: list[CalibBatch]) -> torch.Tensor:
    """Score per hidden channel: ``sum_sites sqrt(mean_t x_c^2)`` over the normalised
    inputs of every block's attention and FFN and of the LM head (module docstring)."""
    from compress.arch import iter_blocks

    watched: dict[str, tuple[nn.Module, str]] = {}
    spec = arch_for(model)
    for block in iter_blocks(model, spec):
        for options in READERS:
            comp = next((c for c in options if c in block.linears), None)
            if comp is None:
                continue
            watched[block.linear_names[comp]] = (block.linears[comp], block.role)
    modules = dict(model.named_modules())
    for name in spec.lm_head:
        mod = modules.get(name)
        if isinstance(mod, nn.Linear):
            watched[name] = (mod, "decoder" if spec.kind != "encoder" else "encoder")
    if not watched:
        raise UserError("found no projection reading the hidden states")
    was_training = model.training
    model.eval()
    try:
        sumsq, tokens = collect_input_sumsq(model, batches, watched)
    finally:
        model.train(was_training)
    hidden = spec.hidden
    total = None
    for name, sq in sumsq.items():
        if sq.numel() != hidden:
            continue
        score = (sq / max(tokens[name], 1)).sqrt()
        total = score if total is None else total + score
    if total is None:
        raise UserError("no calibration activations reached the hidden-state readers")
    return total.double()


__all__ = ["BLOCK_METRICS", "BlockScores", "block_importance", "hidden_importance"]
