"""What a recipe may need besides the model, passed explicitly.

Recipes read device and dtype from the model itself; the context carries only what
the model cannot know: the tokenizer, calibration and training text, and the task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Context:
    """Inputs a recipe may use besides the model.

    ``calibration`` and ``train`` are lists of raw texts (or, for labelled tasks,
    ``(text, label)`` pairs, or ``(source, target)`` pairs for sequence-to-sequence);
    the recipe tokenizes with ``tokenizer``. ``task`` names what the model is scored
    on ("causal-lm", "classification", "embedding", "seq2seq").
    """

    tokenizer: Any = None
    calibration: Sequence[Any] = field(default_factory=list)
    train: Sequence[Any] = field(default_factory=list)
    task: str | None = None
    #: free-form facts a recipe records for the report (e.g. measured sparsity).
    info: dict[str, Any] = field(default_factory=dict)
