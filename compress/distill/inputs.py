"""The task, the tokenized training and held-out examples and their collator, for every
step that trains a student against a teacher (``distill``, ``recover``).

Training rows come from a local file (``data_file``: its last 5% held out), else the
context's training rows, else the zoo's training split for the task; held-out rows from
the ``validation`` split of :mod:`compress.data` (never ``test``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from compress import data
from compress.context import Context
from compress.distill import data as distill_data
from compress.distill.data import Collator, fingerprint, tokenize_rows
from compress.errors import UserError
from compress.models import task_of
from compress.tasks import decoder_start as decoder_start  # re-exported

_CLASS_TASKS = (
    ("ForSequenceClassification", "classification"),
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),
    ("ForConditionalGeneration", "seq2seq"),
    ("EncoderDecoderModel", "seq2seq"),
)


def training_task(model: nn.Module, context: Context) -> str:
    """The training task: masked-lm for encoders with an MLM head, else the model's task."""
    name = type(model).__name__
    if name.endswith("ForMaskedLM"):
        return "masked-lm"
    task = context.task
    if task is None:  # a model handed over without a context: its class says what it is
        for suffix, guess in _CLASS_TASKS:
            if name.endswith(suffix):
                return guess
        task = task_of(model.config)
    if task == "embedding" and hasattr(model, "get_output_embeddings"):
        if model.get_output_embeddings() is not None:
            return "masked-lm"
    return task


def training_rows(context: Context, task: str, data_file: str | None) -> tuple[list, list, str]:
    """(train rows, held-out rows, where they came from)."""
    data_task = "causal-lm" if task == "masked-lm" else task
    if data_file is not None:
        rows = distill_data.rows_from_file(data_file, task)
        train, held = distill_data.split_file_rows(rows)
        return train, held, f"file:{data_file} (last 5% held out)"
    if context.train:
        train, source = list(context.train), "context.train"
    else:
        train, source = data.train_for(data_task), f"compress.data.train_for({data_task!r})"
    return train, distill_data.held_out_rows(data_task), f"{source}; held out: validation split"


@dataclass
class Inputs:
    examples: list[dict[str, Any]]
    eval_examples: list[dict[str, Any]]
    collator: Collator
    data_fp: str
    source: str


def training_inputs(model: nn.Module, context: Context, task: str, *, seq_len: int,
                    eval_samples: int, data_file: str | None = None) -> Inputs:
    """The tokenized training and held-out examples and the collator that batches them."""
    tokenizer = context.tokenizer
    train_rows, held_rows, data_source = training_rows(context, task, data_file)
    examples = tokenize_rows(train_rows, task, tokenizer, seq_len)
    eval_examples = tokenize_rows(held_rows, task, tokenizer, seq_len, max_examples=eval_samples)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    start = decoder_start(model)
    if task == "seq2seq" and start is None:
        raise UserError(f"{type(model).__name__} has no decoder_start_token_id in its config")
    collator = Collator(task, pad, start, getattr(tokenizer, "mask_token_id", None),
                        getattr(model.config, "vocab_size", None))
    return Inputs(examples, eval_examples, collator, fingerprint(examples), data_source)
