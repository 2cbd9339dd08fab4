"""Distillation training: the student's step, held-out evaluation and settings, run by
the suite's training loop (:func:`compress.training.train_loop`).

The loop gives AdamW with warmup then linear decay, gradient accumulation (the
micro-batches of :class:`compress.distill.data.Batches`), held-out evaluation,
best-so-far tracking, checkpoints that resume bit-exactly (:mod:`compress.checkpoint`;
weights in ``student.safetensors``), a time budget and a ``rich`` progress bar.

Determinism: the batches of step ``s`` are a pure function of (seed, s)
(:class:`compress.distill.data.Batches`); the learning rate is a pure function of
``s``; the torch RNG (dropout) is saved at step boundaries. A run resumed from a
checkpoint therefore ends with the same weights, bit for bit on the CPU, as one that
was never interrupted (the tests check it).

The best student is chosen by held-out loss: the task cross-entropy where there are
hard labels (so distilled and hard-label-only runs are selected the same way), the
pooled-embedding error to the teacher for embedders. The step-0 student (before any
update) is evaluated too, so training can never return something worse on that
measure than it started from.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from rich.console import Console

from compress.checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from compress.distill import losses
from compress.distill.data import Batches, Collator
from compress.distill.step import Projection, Weights, loss_terms, run_model
from compress.distill.teacher import Teacher
from compress.errors import UserError
from compress.models import input_device, to_device
from compress.training import LoopSettings, StepOut, fmt_terms, train_loop

log = logging.getLogger(__name__)

#: the weights file of the student in checkpoints (``last/`` and ``best/``).
WEIGHTS_FILE = "student.safetensors"


@dataclass
class TrainSettings:
    steps: int
    batch_size: int
    grad_accum: int
    lr: float
    warmup: float
    weight_decay: float
    max_grad_norm: float
    eval_every: int
    max_minutes: float | None
    seed: int
    weights: Weights
    checkpoint_dir: Path | None = None
    resume: bool = False
    keep_best: bool = True
    #: what must match between a checkpoint and a resumed run (config, data, maps).
    identity: dict[str, Any] = field(default_factory=dict)
    #: stop after the step at which this many tokens have been trained on.
    max_tokens: int | None = None
    #: names the run in progress lines ("distill", "recover").
    label: str = "distill"
    #: parameters (by ``id``) that train at their own peak learning rate, without weight
    #: decay (``recover``'s MoE routers); the schedule scales them as it scales ``lr``.
    own_lr: dict[int, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    steps_done: int
    stopped_by: str  # "steps" | "time" | "tokens" | "no-steps"
    seconds: float
    cpu_seconds: float
    tokens: int
    best_step: int
    best_eval: dict[str, float]
    final_eval: dict[str, float]
    curve: list[dict[str, Any]]
    resumed_from: int | None
    returned: str  # "best" | "last"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_at(step: int, settings: TrainSettings) -> float:
    """Linear warmup over ``warmup * steps`` steps, then linear decay to 0 at ``steps``."""
    warm = int(settings.warmup * settings.steps)
    if warm > 0 and step < warm:
        return settings.lr * (step + 1) / warm
    rest = max(1, settings.steps - warm)
    return settings.lr * max(0.0, (settings.steps - step) / rest)


def _param_groups(model: nn.Module, weight_decay: float,
                  own_lr: dict[int, float] | None = None) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases, norms' gains); the parameters in
    ``own_lr`` (id -> peak lr) in groups of their own, without decay."""
    decay, no_decay = [], []
    own: dict[float, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if own_lr and id(p) in own_lr:
            own.setdefault(own_lr[id(p)], []).append(p)
        else:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
        *({"params": ps, "weight_decay": 0.0, "lr": lr} for lr, ps in sorted(own.items())),
    ]


def _n_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    n = int(batch["attention_mask"].sum())
    if "decoder_mask" in batch:
        n += int(batch["decoder_mask"].sum())
    return n


# --------------------------------------------------------------------------- evaluation



def task_sums(logits: torch.Tensor, labels: torch.Tensor, task: str) -> tuple[float, int, int, int]:
    """(summed cross-entropy, scored tokens, correct, examples) of one held-out batch; a
    causal LM's logits are shifted against its labels, ``-100`` labels are not scored, and
    correct / examples are counted for classification only."""
    if task == "causal-lm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    nll = float(torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
    if task != "classification":
        return nll, int(keep.sum()), 0, 0
    return nll, int(keep.sum()), int((logits.argmax(-1) == labels).sum()), labels.shape[0]

class Evaluator:
    """Held-out loss of the student (and accuracy / perplexity where they apply)."""

    def __init__(
        self,
        examples: Sequence[dict[str, Any]],
        collator: Collator,
        task: str,
        batch_size: int,
        teacher: Teacher | None,
        device: torch.device,
    ):
        self.examples = list(examples)
        self.collator = collator
        self.task = task
        self.batch_size = batch_size
        self.device = device
        self.targets: list[torch.Tensor] = []
        if task == "embedding":
            if teacher is None:
                raise UserError("an embedding model has no hard labels; distil it with a teacher")
            # the teacher's pooled embeddings of the held-out texts, computed once
            for batch in self._batches():
                self.targets.append(teacher.compute(batch).pooled.float())

    def _batches(self):
        for k, start in enumerate(range(0, len(self.examples), self.batch_size)):
            chunk = self.examples[start:start + self.batch_size]
            yield to_device(self.collator(chunk, mlm_seed=10_000_019 + k), self.device)

    def __call__(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        nll, count, correct, n_ex, sq, cos = 0.0, 0, 0, 0, 0.0, 0.0
        try:
            with torch.inference_mode():
                for k, batch in enumerate(self._batches()):
                    out = run_model(model, batch, self.task, {})
                    if self.task == "embedding":
                        t = self.targets[k]
                        s = out.pooled.float()
                        sq += float(((s - t) ** 2).mean(-1).sum())
                        cos += float(torch.nn.functional.cosine_similarity(s, t, dim=-1).sum())
                        n_ex += s.shape[0]
                        continue
                    sums = task_sums(out.logits.float(), batch["labels"], self.task)
                    nll, count = nll + sums[0], count + sums[1]
                    correct, n_ex = correct + sums[2], n_ex + sums[3]
        finally:
            model.train(was_training)
        if self.task == "embedding":
            return {"loss": sq / n_ex, "cosine": cos / n_ex}
        res = {"loss": nll / max(count, 1)}
        if self.task == "classification":
            res["accuracy"] = correct / max(n_ex, 1)
        if self.task in ("causal-lm", "masked-lm", "seq2seq"):
            res["ppl"] = math.exp(min(res["loss"], 50.0))
        return res


# --------------------------------------------------------------------------- the loop


def _announce(s: TrainSettings, w: Weights | None, n_examples: int) -> Console:
    """One line saying what is trained on what (``w`` None: no teacher)."""
    console = Console(stderr=True)
    what = "task loss only (no teacher)" if w is None else (
        f"kd {w.kd} (T={w.temperature}), task {w.task}, cos {w.cos}")
    resuming = f"; resuming from {s.checkpoint_dir}" if s.resume else ""
    console.print(
        f"{s.label}: {s.steps} steps of {s.grad_accum} x {s.batch_size} examples from "
        f"{n_examples}; loss: {what}{resuming}",
        highlight=False, markup=False, soft_wrap=True,
    )
    return console


class _Joint(nn.Module):
    """The student and the modules trained beside it (width projections), as one module
    for the optimizer, the best-so-far copy and the checkpoints."""

    def __init__(self, student: nn.Module, extra: nn.Module):
        super().__init__()
        self.student = student
        self.extra = extra


def train(
    student: nn.Module,
    teacher: Teacher | None,
    examples: Sequence[dict[str, Any]],
    evaluator: Evaluator,
    collator: Collator,
    task: str,
    kind: str,
    layer_maps: Mapping[str, Sequence[int]],
    settings: TrainSettings,
    *,
    extra: nn.Module | None = None,
    project: Projection | None = None,
    interrupt_at: Callable[[int], bool] | None = None,
) -> TrainResult:
    """Train ``student`` in place; on return it holds the best (or last) weights, in eval mode.

    ``teacher=None`` trains on the task loss alone (the hard-label baseline).
    ``extra`` holds modules trained jointly with the student and checkpointed with it
    (the projections ``project`` applies to student hidden states in the cosine term);
    they are the caller's to discard after.
    ``interrupt_at(step)`` (tests) raises ``KeyboardInterrupt`` before that step's update.
    """
    device = input_device(student)
    s = settings
    w = s.weights if teacher is not None else Weights(0.0, s.weights.task, 0.0, s.weights.temperature)
    student_wanted = {r: list(range(len(m))) for r, m in layer_maps.items()} if w.cos > 0 else {}
    batches = Batches(len(examples), s.batch_size, s.grad_accum, s.seed)
    trained = student if extra is None else _Joint(student, extra)
    opt = torch.optim.AdamW(_param_groups(trained, s.weight_decay, s.own_lr), lr=s.lr)

    def step_fn(step: int) -> StepOut:
        terms_sum: dict[str, float] = {}
        micro_count, tokens = 0, 0
        for micro, idx in batches.for_step(step):
            batch = to_device(collator([examples[i] for i in idx], mlm_seed=s.seed * 7919 + micro),
                              device)
            t_out = teacher.outputs(batch, idx) if teacher is not None else None
            s_out = run_model(student, batch, task, student_wanted)
            total, terms = loss_terms(s_out, t_out, batch, task, kind, layer_maps, w, project)
            if not torch.isfinite(total):
                raise UserError(
                    f"the loss became {float(total)} at step {step + 1} ({fmt_terms(terms)}); "
                    "lower lr or temperature"
                )
            (total / s.grad_accum).backward()
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v
            terms_sum["total"] = terms_sum.get("total", 0.0) + float(total.detach())
            micro_count += 1
            tokens += _n_tokens(batch)
        return StepOut(terms_sum, micro_count, tokens)

    console = _announce(s, w if teacher is not None else None, len(examples))
    loop = LoopSettings(
        steps=s.steps,
        lr_at=lambda step, base: lr_at(step, s) * (base / s.lr),
        max_grad_norm=s.max_grad_norm,
        evaluate=lambda: evaluator(student),
        eval_every=s.eval_every,
        keep_best=s.keep_best,
        checkpoint_dir=s.checkpoint_dir,
        resume=s.resume,
        identity=s.identity,
        weights_file=WEIGHTS_FILE,
        max_minutes=s.max_minutes,
        max_tokens=s.max_tokens,
        label=s.label,
        console=console,
        interrupt_at=interrupt_at,
    )
    result = train_loop(trained, opt, step_fn, loop)
    student.eval()
    fields = {k: v for k, v in asdict(result).items() if k != "losses"}
    return TrainResult(**fields)


__all__ = [
    "CHECKPOINT_VERSION",
    "Evaluator",
    "TrainResult",
    "TrainSettings",
    "load_checkpoint",
    "losses",
    "lr_at",
    "save_checkpoint",
    "train",
]
