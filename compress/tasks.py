"""The tasks a model is scored on; the benchmark picks its suite by task.

>>> check_task("causal-lm")
'causal-lm'
"""

from __future__ import annotations

from compress.errors import did_you_mean

#: ``causal-lm`` (decoders), ``classification`` (a sequence-classification head),
#: ``embedding`` (a bare encoder) and ``seq2seq`` (encoder-decoders).
TASKS = ("causal-lm", "classification", "embedding", "seq2seq")


def check_task(task: str) -> str:
    """``task`` if it is one of :data:`TASKS`, else a one-line error with the closest."""
    if task not in TASKS:
        raise did_you_mean("task", task, TASKS)
    return task
