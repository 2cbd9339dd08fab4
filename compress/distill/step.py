"""One forward pass and the weighted loss for a batch: student, teacher and their terms.

Hidden states are read from the output of each transformer block with forward
hooks (found through :mod:`compress.arch`) that exist only for the duration of the
call: ``output_hidden_states`` is not used because several families (GPT-2, Llama,
OPT, T5) return the *normalised* final state as their last entry, which would not
be comparable with an inner block's output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from compress.arch import arch_for
from compress.distill import losses

#: (stack role, block index) -> hidden state (B, T, H)
Hidden = dict[tuple[str, int], torch.Tensor]
#: (stack role, student block index, student hidden state (B, T, H_s)) -> (B, T, H_t): a
#: learned map into the teacher's width where the student's hidden size differs.
Projection = Callable[[str, int, torch.Tensor], torch.Tensor]


@dataclass
class Outputs:
    """What the losses need from one model on one batch."""

    logits: torch.Tensor | None = None  # (B, C) or (B, T, V)
    pooled: torch.Tensor | None = None  # (B, H), embedding task
    hidden: Hidden = field(default_factory=dict)


@dataclass(frozen=True)
class Weights:
    kd: float
    task: float
    cos: float
    temperature: float


@contextlib.contextmanager
def capture_blocks(model: nn.Module, wanted: Mapping[str, Sequence[int]]) -> Iterator[Hidden]:
    """Collect the outputs of the blocks ``wanted`` ({role: indices}) while inside."""
    spec = arch_for(model)
    captured: Hidden = {}
    handles = []
    try:
        for stack in spec.stacks:
            idx = wanted.get(stack.role, ())
            if not idx:
                continue
            blocks = model.get_submodule(stack.path)
            if stack.shared:  # one block run N times per forward: calls are the depth
                handles.append(blocks[0].register_forward_hook(
                    _nth_call_hook(captured, stack.role, set(idx), stack.calls_per_block)))
                continue
            for j in idx:

                def hook(_mod, _inp, out, key=(stack.role, j)):
                    captured[key] = out[0] if isinstance(out, (tuple, list)) else out

                handles.append(blocks[j].register_forward_hook(hook))
        yield captured
    finally:
        for h in handles:
            h.remove()


def _nth_call_hook(captured: Hidden, role: str, wanted: set[int], calls: int):
    """A forward hook keeping the outputs of the ``wanted`` calls of a block that runs
    ``calls`` times per forward (ALBERT's shared layer)."""
    count = [0]

    def hook(_mod, _inp, out):
        j = count[0] % calls
        count[0] += 1
        if j in wanted:
            captured[(role, j)] = out[0] if isinstance(out, (tuple, list)) else out

    return hook


def _use_cache_off(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return {"use_cache": False} if cfg is not None and hasattr(cfg, "use_cache") else {}


def model_inputs(model: nn.Module, batch: Mapping[str, torch.Tensor], task: str) -> dict:
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if task == "seq2seq":
        inputs["decoder_input_ids"] = batch["decoder_input_ids"]
    if task in ("causal-lm", "seq2seq"):
        inputs |= _use_cache_off(model)
    return inputs


def run_model(
    model: nn.Module, batch: Mapping[str, torch.Tensor], task: str, wanted: Mapping[str, Sequence[int]]
) -> Outputs:
    """Forward ``model`` on ``batch``; logits (or pooled embedding) and wanted block outputs."""
    with capture_blocks(model, wanted) as hidden:
        out = model(**model_inputs(model, batch, task))
    res = Outputs(hidden=dict(hidden))
    if task == "embedding":
        last = getattr(out, "last_hidden_state", None)
        if last is None:
            last = out[0]
        res.pooled = losses.mean_pool(last, batch["attention_mask"])  # (B, H)
    else:
        res.logits = out.logits if hasattr(out, "logits") else out[0]
    return res


def masks(batch: Mapping[str, torch.Tensor], task: str, kind: str) -> dict[str, torch.Tensor]:
    """Real-token masks per stack role for a model of ``kind`` (encoder/decoder/enc-dec)."""
    enc = batch["attention_mask"].bool()
    if kind == "encoder-decoder":
        return {"encoder": enc, "decoder": batch["decoder_mask"].bool()}
    return {"encoder" if kind == "encoder" else "decoder": enc}


def detach_teacher(out: Outputs) -> Outputs:
    """Plain tensors from ``inference_mode`` ones (autograd cannot save inference tensors)."""
    return Outputs(
        logits=None if out.logits is None else out.logits.clone(),
        pooled=None if out.pooled is None else out.pooled.clone(),
        hidden={k: v.clone() for k, v in out.hidden.items()},
    )


def loss_terms(
    student: Outputs,
    teacher: Outputs | None,
    batch: Mapping[str, torch.Tensor],
    task: str,
    kind: str,
    layer_maps: Mapping[str, Sequence[int]],
    weights: Weights,
    project: Projection | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(weighted total, {term: value}) for one batch. ``teacher`` None: task loss only.

    ``layer_maps[role][j]`` is the teacher block whose output student block ``j``'s output
    is compared with (cosine term), after ``project`` where the widths differ.
    """
    terms: dict[str, torch.Tensor] = {}
    stack_masks = masks(batch, task, kind)
    labels = batch.get("labels")
    if weights.task > 0 and task != "embedding":
        if task == "causal-lm":
            # next-token: position t predicts token t+1
            terms["task"] = losses.task_loss(student.logits[:, :-1], labels[:, 1:])
        else:
            terms["task"] = losses.task_loss(student.logits, labels)
    if teacher is not None and weights.kd > 0:
        if task == "embedding":
            terms["kd"] = losses.pooled_mse(student.pooled, teacher.pooled)
        else:
            if task == "classification":
                kd_mask = None
            elif task == "seq2seq":
                kd_mask = stack_masks["decoder"]
            else:
                kd_mask = batch["attention_mask"].bool()
            terms["kd"] = losses.kd_loss(student.logits, teacher.logits, weights.temperature, kd_mask)
    if teacher is not None and weights.cos > 0:
        s_h, t_h, ms = [], [], []
        for role, keep in layer_maps.items():
            for j, i in enumerate(keep):
                # LayerDrop (M2M-100, BART) skips blocks in training: no pair for those
                if (role, j) in student.hidden and (role, i) in teacher.hidden:
                    h = student.hidden[(role, j)]
                    s_h.append(h if project is None else project(role, j, h))
                    t_h.append(teacher.hidden[(role, i)])
                    ms.append(stack_masks[role])
        if s_h:
            terms["cos"] = losses.cosine_loss(s_h, t_h, ms)
    scale = {"kd": weights.kd, "task": weights.task, "cos": weights.cos}
    total = sum(scale[k] * v for k, v in terms.items())
    values = {k: float(v.detach()) for k, v in terms.items()}
    return total, values
