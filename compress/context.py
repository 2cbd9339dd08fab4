"""What a recipe may need besides the model, passed explicitly.

Recipes read device and dtype from the model itself; the context carries only what
the model cannot know: the tokenizer, calibration and training text, the task, and
(for recovery steps) a way to get the dense model the pipeline started from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from compress.calibration import CalibrationSpec

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass
class Context:
    """Inputs a recipe may use besides the model.

    ``calibration`` (the pool calibration sequences are drawn from) and ``train`` are
    lists of raw texts (or, for labelled tasks, ``(text, label)`` pairs, or ``(source,
    target)`` pairs for sequence-to-sequence); ``calib`` says how many sequences of how
    many tokens every calibrating recipe draws from the pool (:mod:`compress.calibration`:
    the same tensors for every recipe given this context). ``task`` names what the model
    is scored on ("causal-lm", "classification", "embedding", "seq2seq").

    ``teacher`` is a provider of the dense model as it was before the first step (a
    recovery step such as ``recover`` distils from it): called only by a step that needs
    it, so no second copy is held otherwise. ``eval.run`` reloads the model from its
    source with the same options; ``python -m compress.recipes.recover --teacher M``
    loads ``M``.
    """

    tokenizer: Any = None
    calibration: Sequence[Any] = field(default_factory=list)
    train: Sequence[Any] = field(default_factory=list)
    task: str | None = None
    #: free-form facts a recipe records for the report (e.g. measured sparsity).
    info: dict[str, Any] = field(default_factory=dict)
    calib: CalibrationSpec = field(default_factory=CalibrationSpec)
    #: where the pool came from, for the report (e.g. "wiki+news").
    calibration_source: str = "context.calibration"
    #: tokenized calibration set, drawn once per context (see compress.calibration).
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    #: the dense model before any step, loaded when called (None: no teacher available).
    teacher: Callable[[], nn.Module] | None = field(default=None, repr=False, compare=False)
