"""Iterative pruning with recovery fine-tuning between steps, and lottery-ticket rewinding.

:func:`run_with_recovery` drives any pruning step function: it reaches the target in
``iterative_steps`` steps along a schedule (cubic as in Zhu & Gupta 2017, "To prune,
or not to prune", or linear), and after each step optionally

* rewinds the surviving weights of the targeted matrices to their values before any
  pruning (Frankle & Carbin 2019, with the pretrained weights as the rewind point;
  costs one copy of the targeted matrices), and
* fine-tunes for ``finetune_steps`` with :func:`compress.finetune.finetune`, keeping
  pruned weights at zero.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from compress.context import Context
from compress.errors import UserError
from compress.finetune import finetune
from compress.pruning.config import RecoveryConfig, schedule_fractions

log = logging.getLogger(__name__)


def task_for(model: nn.Module, context: Context) -> str:
    if context.task:
        return context.task
    from compress.models import task_of

    return task_of(model.config)


def run_with_recovery(
    model: nn.Module,
    config: RecoveryConfig,
    context: Context,
    prune_step: Callable[[nn.Module, float], dict[str, Any] | None],
    rewind_weights: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None,
) -> nn.Module:
    """Prune with ``prune_step(model, fraction_of_target)`` along the schedule; return the model.

    ``rewind_weights(model)`` returns name -> weight tensor of the matrices to rewind
    (only needed when ``config.rewind``).
    """
    fractions = schedule_fractions(config.iterative_steps, config.schedule)
    originals: dict[str, torch.Tensor] = {}
    if config.rewind:
        if rewind_weights is None:
            raise UserError(f"{config._where('rewind')} is not supported by this recipe")
        originals = {n: w.detach().clone() for n, w in rewind_weights(model).items()}
    teacher = None
    task = task_for(model, context) if config.finetune_steps else None
    if config.finetune_steps and task == "embedding":
        teacher = copy.deepcopy(model).eval()  # a bare encoder learns from its dense self
    steps: list[dict[str, Any]] = []
    was_training = model.training
    for i, fraction in enumerate(fractions):
        model.eval()
        record: dict[str, Any] = {"step": i + 1, "fraction_of_target": round(fraction, 6)}
        record.update(prune_step(model, fraction) or {})
        if originals:
            with torch.no_grad():
                for name, w in rewind_weights(model).items():
                    w.copy_(torch.where(w != 0, originals[name], torch.zeros_like(w)))
            record["rewound"] = True
        if config.finetune_steps:
            ft: dict[str, Any] = {}
            model = finetune(
                model, context.tokenizer, task, context.train,
                steps=config.finetune_steps, lr=config.finetune_lr,
                batch_size=config.finetune_batch_size, seq_len=config.finetune_seq_len,
                method=config.finetune_method, lora_r=config.lora_r,
                lora_alpha=config.lora_alpha, keep_zero=True, teacher=teacher,
                seed=config.seed + i, info=ft,
            )
            record["finetune"] = ft
        steps.append(record)
        log.info("pruning step %d/%d done: %s", i + 1, len(fractions), record)
    del teacher, originals
    model.train(was_training)
    context.info.setdefault("pruning_steps", []).extend(steps)
    return model
