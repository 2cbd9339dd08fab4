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

#: block metrics: ``skip`` (divergence from the full model's outputs when the block is
#: skipped), ``loss`` (task-loss increase when skipped), ``bi`` (block influence).
BLOCK_METRICS = ("skip", "loss", "bi")


@dataclass
class BlockScores:
    """Importance of the blocks of one stack (per call for a shared-weight stack)."""

    role: str
    #: angular distance 1 - cos(input, output), averaged over real tokens.
    bi: list[float]
    #: divergence of the model's outputs from the full model's when the block is skipped
    #: (``skip_metric``): >= 0, and 0 exactly when skipping changes nothing.
    skip: list[float]
    #: what ``skip`` measures: "kl" (KL(full || skipped) of the output distribution, per
    #: token or example) or "hidden" (1 - cos of the final hidden states; no logits).
    skip_metric: str = "kl"
    #: increase of the task cross-entropy when the block is skipped (None: no labels).
    loss: list[float] | None = None
    #: the full model's task cross-entropy on the calibration set (None: no labels).
    base_loss: float | None = None
    #: the stack runs one block several times (ALBERT): scores are per call.
    per_call: bool = False

    def scores(self, metric: str) -> list[float]:
        """Per block (depth position) the score ``metric`` ranks by: lowest goes first."""
        if metric == "bi":
            return self.bi
        if metric == "loss":
            if self.loss is None:
                raise UserError("metric=loss needs labels (a causal LM, a seq2seq model or "
                                "a labelled classifier); use metric=skip or bi")
            return self.loss
        return self.skip

    def to_dict(self) -> dict[str, Any]:
        def r(v: list[float] | None) -> list[float] | None:
            return None if v is None else [round(x, 6) for x in v]

        return {"bi": r(self.bi), "skip": r(self.skip), "skip_metric": self.skip_metric,
                "loss": r(self.loss),
                "base_loss": None if self.base_loss is None else round(self.base_loss, 6),
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

    def locate(self, pos: int) -> tuple[nn.Module, int]:
        """(block module, which of its calls in one forward) at depth position ``pos``."""
        return self.blocks[pos % len(self.blocks)], pos // len(self.blocks)


def _mask(batch: CalibBatch, roles: tuple[str, ...], like: torch.Tensor) -> torch.Tensor:
    """The first of ``roles``' token masks shaped like ``like``'s (B, T); else all ones."""
    for role in roles:
        m = batch.token_masks.get(role)
        if m is not None and like.dim() >= 2 and tuple(m.shape) == tuple(like.shape[:2]):
            return m.to(like.device, torch.float32)
    return torch.ones(like.shape[:2] if like.dim() >= 2 else like.shape[:1],
                      device=like.device)


def _run(model: nn.Module, batch: CalibBatch) -> Any:
    from compress.sequential import forward_kwargs

    return model(**to_device(batch.inputs, input_device(model)), **forward_kwargs(model))


@torch.no_grad()
def _block_influence(model: nn.Module, stacks: list[_Stack],
                     batches: list[CalibBatch]) -> dict[str, list[float]]:
    """Per stack role: 1 - mean cos(block input, block output) over real tokens."""
    sums = {s.role: torch.zeros(s.n, dtype=torch.float64) for s in stacks}
    counts = {s.role: torch.zeros(s.n, dtype=torch.float64) for s in stacks}
    current: dict[str, CalibBatch] = {}
    calls: dict[int, int] = {}
    handles = []
    for s in stacks:
        for first, block in enumerate(s.blocks):

            def hook(mod, args, kwargs, out, s=s, first=first):
                x, y = _hidden_in(args, kwargs), _hidden_out(out)
                pos = first + calls.get(id(mod), 0) * len(s.blocks)
                calls[id(mod)] = calls.get(id(mod), 0) + 1
                if x is None or y is None or x.shape != y.shape:
                    return
                cos = F.cosine_similarity(x.float(), y.float(), dim=-1, eps=1e-8)  # (B, T)
                m = _mask(current["batch"], (s.role,), x)
                sums[s.role][pos] += float(((1.0 - cos) * m).sum())
                counts[s.role][pos] += float(m.sum())

            handles.append(block.register_forward_hook(hook, with_kwargs=True))
    with _hooks(handles):
        for batch in batches:
            current["batch"] = batch
            calls.clear()  # a shared block's call number restarts every forward
            _run(model, batch)
    out = {}
    for s in stacks:
        if bool((counts[s.role] == 0).any()):
            raise UserError(f"calibration forward did not reach every {s.role} block")
        out[s.role] = (sums[s.role] / counts[s.role]).tolist()
    return out


@contextlib.contextmanager
def _skipping(stack: _Stack, pos: int) -> Iterator[None]:
    """Within the context, the block (call) at depth ``pos`` passes its input through."""
    block, wanted = stack.locate(pos)
    calls = [0]

    def skip(mod, args, kwargs, out):
        mine = calls[0] == wanted
        calls[0] += 1
        if not mine:
            return None
        x, y = _hidden_in(args, kwargs), _hidden_out(out)
        if x is None or y is None or x.shape != y.shape:
            raise UserError("a block's output is not shaped like its input; blocks cannot be "
                            "skipped in this model")
        return _replace_hidden(out, x)

    with _hooks([block.register_forward_hook(skip, with_kwargs=True)]):
        yield


#: replay the recorded outputs of the blocks before a skipped one (False: recompute
#: every block on every pass; the same scores, slower: ``tests/test_depth.py``)
REPLAY = True


def _clone(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(o) for o in out)
    return out


@contextlib.contextmanager
def _recording(stacks: list[_Stack]) -> Iterator[list[tuple[nn.Module, int, Any]]]:
    """Within the context, every block call appends (block, its call number in this
    forward, its output) in the order the forward makes them."""
    calls: list[tuple[nn.Module, int, Any]] = []
    seen: dict[int, int] = {}
    handles = []
    if REPLAY:
        for s in stacks:
            for block in dict.fromkeys(s.blocks):  # a shared block once

                def hook(mod, args, kwargs, out):
                    k = seen.get(id(mod), 0)
                    seen[id(mod)] = k + 1
                    calls.append((mod, k, _clone(out)))

                handles.append(block.register_forward_hook(hook, with_kwargs=True))
    with _hooks(handles):
        yield calls


@contextlib.contextmanager
def _replaying(calls: list[tuple[nn.Module, int, Any]], stack: _Stack, pos: int
               ) -> Iterator[None]:
    """Within the context, the block calls recorded before the call at depth ``pos`` of
    ``stack`` return their recorded outputs (copies) without computing."""
    block, wanted = stack.locate(pos)
    upto = next((i for i, (m, k, _) in enumerate(calls) if m is block and k == wanted), 0)
    tables: dict[nn.Module, dict[int, Any]] = {}
    for mod, k, out in calls[:upto]:
        tables.setdefault(mod, {})[k] = out
    saved = {}
    for mod, table in tables.items():
        saved[mod] = mod.__dict__.get("forward")  # accelerate's hook wraps it per instance
        original = mod.forward
        count = [0]

        def forward(*args, _table=table, _original=original, _count=count, **kwargs):
            k = _count[0]
            _count[0] += 1
            return _clone(_table[k]) if k in _table else _original(*args, **kwargs)

        mod.forward = forward
    try:
        yield
    finally:
        for mod, before in saved.items():
            if before is None:
                del mod.forward
            else:
                mod.forward = before


def _output(model: nn.Module, out: Any) -> tuple[torch.Tensor, str]:
    """(what the skip metric compares, its kind): logits ("kl") or final hidden states."""
    logits = getattr(out, "logits", None)
    if logits is not None:
        return logits, "kl"
    h = getattr(out, "last_hidden_state", None)
    h = h if h is not None else _hidden_out(out)
    if h is None:
        raise UserError(f"{type(model).__name__} returns neither logits nor hidden states")
    return h, "hidden"


def _divergence(y: torch.Tensor, ref: torch.Tensor, kind: str,
                batch: CalibBatch) -> tuple[float, float]:
    """(sum over real positions, positions) of KL(full || y) or 1 - cos(y, full)."""
    if kind == "kl":
        log_q = F.log_softmax(y.float(), -1)
        per = (ref.exp() * (ref - log_q)).sum(-1)  # (B, T) or (B,); ref: full log-probs
    else:
        per = 1.0 - F.cosine_similarity(y.float(), ref, dim=-1)  # (B, T)
    m = _mask(batch, ("decoder", "encoder"), per) if per.dim() >= 2 else torch.ones_like(per)
    return float((per * m).sum()), float(m.sum())


def _cross_entropy(logits: torch.Tensor, batch: CalibBatch, task: str) -> tuple[float, float]:
    """(summed task cross-entropy, labelled positions) of one batch."""
    if task == "causal-lm":
        labels = batch.labels if batch.labels is not None else batch.inputs["input_ids"]
        logits, labels = logits[:, :-1], labels[:, 1:]  # (B, T-1, V): token t predicts t+1
    else:
        labels = batch.labels
    labels = labels.to(logits.device).reshape(-1)
    flat = logits.float().reshape(labels.numel(), -1)
    loss = F.cross_entropy(flat, labels, ignore_index=-100, reduction="sum")
    return float(loss), float((labels != -100).sum())


def _has_labels(task: str, batches: list[CalibBatch]) -> bool:
    return task in ("causal-lm", "seq2seq") or all(b.labels is not None for b in batches)


@torch.no_grad()
def _skip_scores(model: nn.Module, stacks: list[_Stack], batches: list[CalibBatch],
                 task: str) -> tuple[dict, dict | None, str, float | None]:
    """Per stack role and depth position: the output divergence and (where there are
    labels) the task-loss increase when that block (call) is skipped.

    Batch-major, so that only one batch's reference outputs are held at a time. The
    blocks that run before the skipped one compute exactly what they computed in the full
    forward, so their outputs are recorded there and replayed (:func:`_replaying`): a
    skipped block deep in the stack costs only the blocks after it.
    """
    sums = {s.role: [0.0] * s.n for s in stacks}
    losses = {s.role: [0.0] * s.n for s in stacks}
    n_div = n_loss = base_loss = 0.0
    kind = "kl"
    with_loss = False
    for batch in batches:
        with _recording(stacks) as calls:
            full, kind = _output(model, _run(model, batch))
        ref = F.log_softmax(full.float(), -1) if kind == "kl" else full.float()
        with_loss = kind == "kl" and _has_labels(task, batches)
        if with_loss:
            value, count = _cross_entropy(full, batch, task)
            base_loss, n_loss = base_loss + value, n_loss + count
        del full
        for s in stacks:
            for pos in range(s.n):
                with _replaying(calls, s, pos), _skipping(s, pos):
                    y, _ = _output(model, _run(model, batch))
                value, count = _divergence(y, ref, kind, batch)
                sums[s.role][pos] += value
                if with_loss:
                    losses[s.role][pos] += _cross_entropy(y, batch, task)[0]
        n_div += count
    skip = {r: [v / max(n_div, 1.0) for v in vs] for r, vs in sums.items()}
    if not with_loss:
        return skip, None, kind, None
    base = base_loss / max(n_loss, 1.0)
    loss = {r: [v / max(n_loss, 1.0) - base for v in vs] for r, vs in losses.items()}
    return skip, loss, kind, base


@torch.no_grad()
def skip_costs(model: nn.Module, batches: list[CalibBatch], task: str, metric: str,
               skipped: dict[str, set[int]], candidates: list[tuple[str, int]]
               ) -> dict[tuple[str, int], float]:
    """The cost of skipping each candidate block together with the blocks ``skipped``.

    Per candidate ``(role, position)`` one calibration pass with all of them skipped:
    ``metric="skip"`` gives the divergence from the *full* model's outputs (one extra
    pass per batch for them, shared by the candidates), ``"loss"`` the task loss itself,
    ``"bi"`` the candidate's block influence in the model with ``skipped`` removed (one
    pass for all candidates). SLEB's iterative criterion (Song et al. 2024,
    arXiv:2402.09025) compares these across candidates; ``depth`` takes the least.
    """
    spec = arch_for(model)
    stacks = {s.role: _Stack(model, s) for s in spec.stacks}

    def without(extra: tuple[str, int] | None = None) -> contextlib.ExitStack:
        gone = contextlib.ExitStack()
        for r, pos in sorted((r, p) for r, ps in skipped.items() for p in ps):
            gone.enter_context(_skipping(stacks[r], pos))
        if extra is not None:
            gone.enter_context(_skipping(stacks[extra[0]], extra[1]))
        return gone

    was_training = model.training
    model.eval()
    try:
        if metric == "bi":
            with without():
                bi = _block_influence(model, list(stacks.values()), batches)
            return {(r, i): bi[r][i] for r, i in candidates}
        if metric == "loss" and not _has_labels(task, batches):
            raise UserError("metric=loss needs labels (a causal LM, a seq2seq model or a "
                            "labelled classifier); use metric=skip or bi")
        sums = dict.fromkeys(candidates, 0.0)
        n = 0.0
        for batch in batches:
            ref = kind = None
            if metric == "skip":  # the full model's outputs, nothing skipped
                out, kind = _output(model, _run(model, batch))
                ref = F.log_softmax(out.float(), -1) if kind == "kl" else out.float()
                del out
            count = 0.0
            for cand in candidates:
                with without(cand):
                    y, kind_y = _output(model, _run(model, batch))
                if metric == "skip":
                    value, count = _divergence(y, ref, kind, batch)
                elif kind_y != "kl":
                    raise UserError("metric=loss needs a model with logits; use metric=skip "
                                    "or bi")
                else:
                    value, count = _cross_entropy(y, batch, task)
                sums[cand] += value
            n += count
    finally:
        model.train(was_training)
    return {c: v / max(n, 1.0) for c, v in sums.items()}


def block_importance(model: nn.Module, batches: list[CalibBatch], task: str,
                     metrics: tuple[str, ...] = BLOCK_METRICS) -> dict[str, BlockScores]:
    """Block influence, skip divergence and skip loss of every block, per stack role.

    ``metrics`` limits what is measured (``skip`` and ``loss`` share one extra calibration
    pass per block; ``bi`` needs one pass in all).
    """
    if not batches:
        raise UserError("block importance needs calibration data")
    spec = arch_for(model)
    stacks = [_Stack(model, s) for s in spec.stacks]
    was_training = model.training
    model.eval()
    try:
        bi = _block_influence(model, stacks, batches) if "bi" in metrics else {}
        skip: dict = {}
        loss, kind, base = None, "none", None
        if "skip" in metrics or "loss" in metrics:
            skip, loss, kind, base = _skip_scores(model, stacks, batches, task)
    finally:
        model.train(was_training)
    return {s.role: BlockScores(s.role, bi.get(s.role, [0.0] * s.n),
                                skip.get(s.role, [0.0] * s.n), kind,
                                None if loss is None else loss[s.role], base, s.calls > 1)
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


__all__ = ["BLOCK_METRICS", "BlockScores", "block_importance", "hidden_importance", "skip_costs"]
