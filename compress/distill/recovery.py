"""Recovery distillation: which teacher block each student block answers to, width
projections, and the held-out measure of how close the student is to its teacher.

A structural step leaves a student that is the dense model with parts removed or
rebuilt; recovery trains it to match the dense model again (Minitron, Muralidharan et
al. 2024, arXiv:2407.14679: prune, then distil from the unpruned model). The pieces:

* :func:`block_maps`: per stack role, the teacher block behind each student block:
  the map ``depth`` recorded in the config (:data:`~compress.distill.student.BLOCK_MAP_ATTR`,
  composed through earlier depth steps), else the identity where the depths agree
  (``structured``, ``moefy``), else DistilBERT's even spread (a student of another
  depth with no record, said so in the returned source);
* :class:`Projections`: where the student's hidden width differs from the teacher's, a
  learned linear map per mapped block from the student's width to the teacher's
  (Minitron's intermediate-state loss does the same), trained with the student and
  discarded after;
* :class:`TeacherAgreement`: the held-out quality proxy of the recovery curve,
  ``KL(teacher || student)`` of the output distributions at temperature 1 (per token
  for language models, per example for classifiers; for embedders the pooled-embedding
  MSE to the teacher), with the student's own held-out task loss beside it.

>>> maps, source = block_maps(student, teacher)   # doctest: +SKIP
>>> maps, source
({'decoder': [0, 1, 3]}, {'decoder': 'recorded by depth'})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from compress.arch import hidden_size
from compress.distill import losses
from compress.distill.data import Collator
from compress.distill.step import masks, run_model
from compress.distill.student import BLOCK_MAP_ATTR, default_layer_map, teacher_layer_counts
from compress.distill.teacher import Teacher
from compress.distill.trainer import Evaluator, task_sums
from compress.errors import UserError

#: held-out teacher outputs are kept in memory up to this size (else recomputed per eval).
TEACHER_EVAL_CACHE_BYTES = 256 * 2**20


def block_maps(student: nn.Module, teacher: nn.Module
               ) -> tuple[dict[str, list[int]], dict[str, str]]:
    """(per stack role the teacher block behind each student block, where each map came from)."""
    s_counts, t_counts = teacher_layer_counts(student), teacher_layer_counts(teacher)
    if set(s_counts) != set(t_counts):
        raise UserError(f"the student has stacks {', '.join(s_counts)} and the teacher "
                        f"{', '.join(t_counts)}; give the dense model this student came from")
    recorded = getattr(student.config, BLOCK_MAP_ATTR, None) or {}
    maps: dict[str, list[int]] = {}
    source: dict[str, str] = {}
    for role, n in s_counts.items():
        m = recorded.get(role) if isinstance(recorded, Mapping) else None
        if m is not None:
            m, source[role] = [int(i) for i in m], "recorded by depth"
            if len(m) != n:
                raise UserError(f"the student's {BLOCK_MAP_ATTR} lists {len(m)} {role} blocks "
                                f"but it has {n}; the config does not describe these weights")
        elif n == t_counts[role]:
            m, source[role] = list(range(n)), "identity (same depth)"
        elif n < t_counts[role]:
            m = default_layer_map(t_counts[role], n)
            source[role] = "even spread (no map recorded)"
        else:
            raise UserError(f"the student's {role} has {n} blocks, the teacher's {t_counts[role]}; "
                            "give the dense model this student came from")
        if m and max(m) >= t_counts[role]:
            raise UserError(f"the student's {role} maps to teacher block {max(m)} but the "
                            f"teacher has {t_counts[role]}; give the dense model this student "
                            "came from")
        maps[role] = m
    return maps, source


def check_heads(student: nn.Module, teacher: nn.Module) -> None:
    """Same model class, and outputs of the same width (vocabulary or labels) to compare."""
    name = type(student).__name__
    if name != type(teacher).__name__:
        raise UserError(f"the student is a {name} and the teacher a {type(teacher).__name__}; "
                        "give the dense model this student came from")
    attr = "num_labels" if name.endswith("ForSequenceClassification") else "vocab_size"
    s, t = getattr(student.config, attr, None), getattr(teacher.config, attr, None)
    if s is not None and t is not None and s != t:
        raise UserError(f"the student's {attr} is {s} and the teacher's {t}: their outputs "
                        "cannot be compared; give the dense model this student came from")


class Projections(nn.Module):
    """One ``Linear(student width -> teacher width)`` per mapped student block.

    Initialised to the truncated identity (student channel ``c`` -> teacher channel
    ``c``), which is exact for a student whose channels are the teacher's first ones.
    """

    def __init__(self, maps: Mapping[str, Sequence[int]], width_in: int, width_out: int,
                 device: torch.device):
        super().__init__()
        self.width_in, self.width_out = width_in, width_out
        self.proj = nn.ModuleDict()
        for role, m in maps.items():
            for j in range(len(m)):
                lin = nn.Linear(width_in, width_out, bias=False, device=device)
                with torch.no_grad():
                    lin.weight.copy_(torch.eye(width_out, width_in, device=device))
                self.proj[f"{role}_{j}"] = lin
        self.initial = {k: v.detach().clone() for k, v in self.state_dict().items()}

    def forward(self, role: str, j: int, h: torch.Tensor) -> torch.Tensor:
        lin = self.proj[f"{role}_{j}"]
        return lin(h.to(lin.weight.dtype))  # (B, T, H_s) -> (B, T, H_t)

    def change(self) -> float:
        """Mean relative change of the projection weights since initialisation."""
        now = self.state_dict()
        rel = [float((now[k] - v).norm() / v.norm().clamp_min(1e-12)) for k, v in
               self.initial.items()]
        return sum(rel) / max(len(rel), 1)


def projections_for(student: nn.Module, teacher: nn.Module, maps: Mapping[str, Sequence[int]],
                    device: torch.device) -> Projections | None:
    """Projections when the hidden widths differ, else None."""
    w_s, w_t = hidden_size(student), hidden_size(teacher)
    return None if w_s == w_t else Projections(maps, w_s, w_t, device)


class TeacherAgreement(Evaluator):
    """Held-out ``KL(teacher || student)`` at temperature 1 as ``loss`` (best-so-far picks
    the student closest to its teacher), with the student's task loss (``task_loss``) and
    accuracy or perplexity beside it; embedders: the pooled-embedding MSE (``loss``) and
    cosine to the teacher."""

    def __init__(self, examples: Sequence[dict[str, Any]], collator: Collator, task: str,
                 kind: str, batch_size: int, teacher: Teacher, device: torch.device):
        super().__init__(examples, collator, task, batch_size,
                         teacher if task == "embedding" else None, device)
        self.teacher, self.kind = teacher, kind
        self.cached: list[torch.Tensor] = []
        self.cache_ok = True

    def _teacher_logits(self, k: int, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if k < len(self.cached):
            return self.cached[k]
        logits = self.teacher.compute(batch).logits.float()
        size = sum(t.numel() for t in self.cached) * 4 + logits.numel() * 4
        if self.cache_ok and k == len(self.cached) and size <= TEACHER_EVAL_CACHE_BYTES:
            self.cached.append(logits)
        else:
            self.cache_ok, self.cached = False, []
        return logits

    def _kd_mask(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        if self.task == "classification":
            return None
        if self.task == "seq2seq":
            return masks(batch, self.task, self.kind)["decoder"]
        return batch["attention_mask"].bool()

    def __call__(self, model: nn.Module) -> dict[str, float]:
        if self.task == "embedding":
            return super().__call__(model)
        was_training = model.training
        model.eval()
        kl = nll = 0.0
        n_kl = count = correct = n_ex = 0
        try:
            with torch.inference_mode():
                for k, batch in enumerate(self._batches()):
                    logits = run_model(model, batch, self.task, {}).logits.float()
                    mask = self._kd_mask(batch)
                    n = logits.shape[0] if mask is None else int(mask.sum())
                    kl += float(losses.kd_loss(logits, self._teacher_logits(k, batch), 1.0,
                                               mask)) * n
                    n_kl += n
                    sums = task_sums(logits, batch["labels"], self.task)
                    nll, count = nll + sums[0], count + sums[1]
                    correct, n_ex = correct + sums[2], n_ex + sums[3]
        finally:
            model.train(was_training)
        res = {"loss": kl / max(n_kl, 1), "task_loss": nll / max(count, 1)}
        if self.task == "classification":
            res["accuracy"] = correct / max(n_ex, 1)
        else:
            res["ppl"] = float(torch.tensor(min(res["task_loss"], 50.0)).exp())
        return res
