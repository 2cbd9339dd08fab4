"""Training and held-out data for distillation: rows -> token ids -> padded batches.

Rows come in the shapes of :func:`compress.data.train_for` (plain texts for
causal-lm / embedding / masked-lm, ``(text, label)`` for classification,
``(source, target)`` for seq2seq), either from the context (the zoo's training
split by default) or from a local text, CSV or JSON file (:func:`rows_from_file`,
read with ``datasets``). Held-out rows for evaluation during training come from the
``validation`` splits of :mod:`compress.data` (never ``test``), or from the last 5%
of a local file.

Tokenisation (:func:`tokenize_rows`):

* causal-lm: every text's ids plus the end-of-text id, joined into one stream and
  cut into windows of ``seq_len`` tokens (the remainder dropped): every example is
  full, so batches need no padding;
* the other tasks: one example per row, truncated to ``seq_len`` tokens; batches are
  right-padded to their longest example here (not by the tokenizer, so padding is
  on the right for every family).

:class:`Batches` yields the examples of each step in a fixed order: epoch ``e`` is a
permutation drawn from ``torch.Generator().manual_seed(seed * 1000003 + e)``, so the
batch of any step is a pure function of (seed, step) and a resumed run sees exactly
the batches the interrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress.errors import UserError
from compress.tasks import without_start as without_start  # re-exported

log = logging.getLogger(__name__)

#: tasks the distillation loop knows; masked-lm is an encoder with an MLM head.
DISTILL_TASKS = ("causal-lm", "masked-lm", "classification", "embedding", "seq2seq")
#: columns read from a local file, per task.
FILE_COLUMNS = {
    "causal-lm": ("text",),
    "masked-lm": ("text",),
    "embedding": ("text",),
    "classification": ("text", "label"),
    "seq2seq": ("source", "target"),
}
HELD_OUT_SHARE = 0.05
MLM_PROBABILITY = 0.15


def rows_from_file(path: str | Path, task: str) -> list[Any]:
    """Rows of a local ``.txt`` (one example a line), ``.csv`` or ``.json``/``.jsonl`` file.

    Columns: ``text`` (causal-lm, embedding, masked-lm), ``text`` + ``label``
    (classification; integer labels), ``source`` + ``target`` (seq2seq).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    builder = {".txt": "text", ".text": "text", ".csv": "csv", ".json": "json", ".jsonl": "json"}
    if suffix not in builder:
        raise UserError(
            f"data file {path.name!r}: unsupported type {suffix or '(none)'}; "
            "use .txt (one example a line), .csv or .json/.jsonl"
        )
    import datasets

    try:
        ds = datasets.load_dataset(builder[suffix], data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for bad files
        raise UserError(f"cannot read data file {path.name!r}: {str(exc).splitlines()[0]}") from None
    want = FILE_COLUMNS[task]
    missing = [c for c in want if c not in ds.column_names]
    if missing:
        raise UserError(
            f"data file {path.name!r} has columns {', '.join(ds.column_names)}; a {task} "
            f"model needs {', '.join(want)}"
        )
    cols = [ds[c] for c in want]
    if task == "classification":
        try:
            labels = [int(y) for y in cols[1]]
        except (TypeError, ValueError):
            raise UserError(f"data file {path.name!r}: labels must be integers") from None
        rows: list[Any] = list(zip((str(t) for t in cols[0]), labels, strict=True))
    elif len(want) == 2:
        rows = list(zip((str(s) for s in cols[0]), (str(t) for t in cols[1]), strict=True))
    else:
        rows = [str(t) for t in cols[0] if t is not None and str(t).strip()]
    if len(rows) < 2:
        raise UserError(f"data file {path.name!r} has {len(rows)} examples; need at least 2")
    return rows


def split_file_rows(rows: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(train, held-out): the last 5% of a file's rows (at least 1) are held out."""
    k = max(1, round(HELD_OUT_SHARE * len(rows)))
    return list(rows[:-k]), list(rows[-k:])


def held_out_rows(task: str) -> list[Any]:
    """Rows of the validation split for ``task`` (never the test split)."""
    from compress import data

    if task in ("causal-lm", "masked-lm"):
        wiki = list(data.load_split("wiki", "validation")["text"])
        news = list(data.load_split("news", "validation")["text"])
        # interleaved, then the rest of the longer list
        out = [t for pair in zip(wiki, news, strict=False) for t in pair]
        return out + wiki[len(news):] + news[len(wiki):]
    if task in ("classification", "embedding"):
        ds = data.load_split("tweets", "validation")
        if task == "embedding":
            return list(ds["text"])
        return list(zip(ds["text"], ds["label"], strict=True))
    ds = data.load_split("punct", "validation")
    return list(zip(ds["source"], ds["target"], strict=True))


def check_rows(rows: Sequence[Any], task: str, what: str) -> None:
    if not rows:
        raise UserError(f"no {what} examples for a {task} model")
    first = rows[0]
    pair = task in ("classification", "seq2seq")
    if pair != isinstance(first, (tuple, list)):
        shape = "(text, label) pairs" if task == "classification" else (
            "(source, target) pairs" if task == "seq2seq" else "plain texts")
        raise UserError(f"{what} examples for a {task} model must be {shape}, got {first!r:.80}")


def tokenize_rows(
    rows: Sequence[Any], task: str, tokenizer: Any, seq_len: int, max_examples: int | None = None
) -> list[dict[str, Any]]:
    """Token ids per example (see the module docstring); at most ``max_examples``."""
    if tokenizer is None:
        raise UserError("distillation needs the model's tokenizer (context.tokenizer is empty)")
    check_rows(rows, task, "training")
    out: list[dict[str, Any]] = []
    if task == "causal-lm":
        eos = tokenizer.eos_token_id
        stream: list[int] = []
        need = None if max_examples is None else (max_examples + 1) * seq_len
        for text in rows:
            stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
            if eos is not None:
                stream.append(eos)
            if need is not None and len(stream) >= need:
                break
        for start in range(0, len(stream) - seq_len + 1, seq_len):
            out.append({"input_ids": stream[start:start + seq_len]})
            if max_examples is not None and len(out) >= max_examples:
                break
        if not out:
            raise UserError(
                f"the text has {len(stream)} tokens, fewer than one window of seq_len={seq_len}"
            )
        return out
    rows = rows if max_examples is None else rows[:max_examples]
    for row in rows:
        if task == "classification":
            text, label = row
            ids = tokenizer(text, truncation=True, max_length=seq_len)["input_ids"]
            out.append({"input_ids": ids, "label": int(label)})
        elif task == "seq2seq":
            source, target = row
            ids = tokenizer(source, truncation=True, max_length=seq_len)["input_ids"]
            tgt = tokenizer(text_target=target, truncation=True, max_length=seq_len)["input_ids"]
            out.append({"input_ids": ids, "target_ids": tgt})
        else:
            ids = tokenizer(row, truncation=True, max_length=seq_len)["input_ids"]
            out.append({"input_ids": ids})
    return out


def fingerprint(examples: Sequence[dict[str, Any]]) -> str:
    """sha1 of the tokenised examples (keys the teacher cache and checkpoints)."""
    h = hashlib.sha1()
    for ex in examples:
        h.update(json.dumps(ex, sort_keys=True).encode())
    return h.hexdigest()


@dataclass
class Collator:
    """Pads a list of examples into a batch of tensors for ``task``."""

    task: str
    pad_id: int
    decoder_start_id: int | None = None
    mask_id: int | None = None
    vocab_size: int | None = None

    def __call__(self, examples: Sequence[dict[str, Any]], mlm_seed: int | None = None) -> dict:
        ids, mask = self._pad([e["input_ids"] for e in examples])  # (B, T)
        batch: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
        if self.task == "classification":
            batch["labels"] = torch.tensor([e["label"] for e in examples])  # (B,)
        elif self.task == "causal-lm":
            labels = ids.clone()
            labels[mask == 0] = -100
            batch["labels"] = labels  # (B, T), shifted by the loss
        elif self.task == "seq2seq":
            tgt, tmask = self._pad([without_start(e["target_ids"], self.decoder_start_id)
                                    for e in examples])  # (B, S)
            labels = tgt.clone()
            labels[tmask == 0] = -100
            dec = torch.full_like(tgt, self.decoder_start_id)
            dec[:, 1:] = tgt[:, :-1]  # shifted right; pads only feed unscored positions
            batch |= {"labels": labels, "decoder_input_ids": dec, "decoder_mask": tmask}
        elif self.task == "masked-lm":
            batch["input_ids"], batch["labels"] = self._mask_tokens(ids, mask, mlm_seed or 0)
        return batch

    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids, mask

    def _mask_tokens(self, ids: torch.Tensor, mask: torch.Tensor, seed: int):
        """BERT masking: 15% of real tokens; of those 80% [MASK], 10% random, 10% kept."""
        if self.mask_id is None:
            raise UserError("masked-lm distillation needs a tokenizer with a mask token")
        g = torch.Generator().manual_seed(seed)
        labels = ids.clone()
        chosen = (torch.rand(ids.shape, generator=g) < MLM_PROBABILITY) & mask.bool()
        labels[~chosen] = -100
        draw = torch.rand(ids.shape, generator=g)
        ids = ids.clone()
        ids[chosen & (draw < 0.8)] = self.mask_id
        rand = chosen & (draw >= 0.8) & (draw < 0.9)
        ids[rand] = torch.randint(self.vocab_size or 2, ids.shape, generator=g)[rand]
        return ids, labels


class Batches:
    """Deterministic micro-batches: ``for_step(step)`` gives ``grad_accum`` lists of indices.

    The examples are read as one endless sequence of seeded permutations (epoch ``e``:
    ``randperm`` with seed ``seed * 1000003 + e``), ``batch_size`` at a time, so no
    example is dropped at an epoch's end and a data set smaller than a batch still works.
    """

    def __init__(self, n_examples: int, batch_size: int, grad_accum: int, seed: int):
        if n_examples < 1:
            raise UserError("no training examples")
        self.n = n_examples
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.seed = seed
        self._perms: dict[int, list[int]] = {}

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch]

    def micro(self, index: int) -> list[int]:
        """Example indices of micro-batch number ``index`` (counting from 0 over the run)."""
        out = []
        for pos in range(index * self.batch_size, (index + 1) * self.batch_size):
            epoch, k = divmod(pos, self.n)
            out.append(self._permutation(epoch)[k])
        return out

    def for_step(self, step: int) -> Iterator[tuple[int, list[int]]]:
        """(micro-batch number, indices) for optimizer step ``step`` (from 0)."""
        for a in range(self.grad_accum):
            index = step * self.grad_accum + a
            yield index, self.micro(index)
