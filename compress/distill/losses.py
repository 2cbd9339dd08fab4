"""The three loss terms of DistilBERT-style distillation (Sanh et al. 2019).

* :func:`kd_loss`: soft-target loss, ``KL(p_teacher || p_student)`` with both
  distributions at temperature ``T`` (``softmax(logits / T)``), multiplied by ``T**2``
  so its gradients keep their size as ``T`` changes (Hinton et al. 2015). Averaged over
  the real positions (over the vocabulary per token for language models, over the
  classes per example for classifiers).
* :func:`task_loss`: cross-entropy on the hard labels (next token, masked token,
  class, target token), averaged over the labelled positions.
* :func:`cosine_loss`: ``1 - cos(h_student, h_teacher)`` between the hidden states of
  mapped blocks, averaged over real tokens and over the block pairs.
* :func:`pooled_mse`: for encoders without a head (sentence embedders such as
  all-MiniLM-L6-v2) the soft target is the mean-pooled final embedding; this is
  the mean squared error between the student's and the teacher's.

Each term is exactly zero when the student equals the teacher (same inputs, same
weights, no dropout) and positive otherwise; the tests check both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (B, T) or (B,) over ``mask`` (same shape, bool)."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T**2 * KL(softmax(t/T) || softmax(s/T))`` per position, averaged over ``mask``.

    ``student_logits``/``teacher_logits``: (B, C) or (B, T, V); ``mask``: (B,) or (B, T).
    """
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)  # (..., V)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)  # (..., V)
    # KL(p_t || p_s) = sum p_t (log p_t - log p_s); exact zero when the logits are equal
    p_t = log_t.exp()
    # where the teacher gives a token probability 0 (a -inf logit) the term is 0, not nan
    kl = torch.where(p_t > 0, p_t * (log_t - log_s), torch.zeros_like(p_t)).sum(-1)  # (...,)
    return _masked_mean(kl, mask) * (t * t)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Cross-entropy on hard labels; ``labels`` equal to ``ignore_index`` are skipped.

    ``logits`` (B, C) with ``labels`` (B,), or (B, T, V) with ``labels`` (B, T) already
    aligned with the logits (shift next-token labels before calling).
    """
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore_index
    )


def cosine_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor | None],
) -> torch.Tensor:
    """Mean over block pairs of ``1 - cos(h_s, h_t)`` averaged over real tokens.

    Each pair is (B, T, H) student and teacher hidden states with a (B, T) mask.
    """
    if not student_hidden:
        raise ValueError("cosine_loss needs at least one pair of hidden states")
    terms = []
    for hs, ht, mask in zip(student_hidden, teacher_hidden, masks, strict=True):
        cos = F.cosine_similarity(hs.float(), ht.float(), dim=-1, eps=1e-8)  # (B, T)
        terms.append(_masked_mean(1.0 - cos, mask))
    return torch.stack(terms).mean()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, H) over ``mask`` (B, T): (B, H) sentence embeddings."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def pooled_mse(student_pooled: torch.Tensor, teacher_pooled: torch.Tensor) -> torch.Tensor:
    """Mean squared error between (B, H) sentence embeddings."""
    return F.mse_loss(student_pooled.float(), teacher_pooled.float())
