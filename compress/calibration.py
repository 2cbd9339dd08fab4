"""The one calibration protocol: N sequences x L tokens, the same tensors for every recipe.

Every recipe that calibrates (Wanda, SparseGPT, OWL, GPTQ, AWQ, SmoothQuant, the
rotation recipe, structured importance, outlier thresholds, quanto activations,
MoEfication) asks this module for its calibration tokens. The context carries one
:class:`CalibrationSpec`; within one context (one run, one sweep) every recipe
therefore sees identical token tensors, and the report records what they were.

The spec has one pair of fields with one meaning:

* ``sequences`` (N): how many calibration sequences;
* ``seq_len`` (L): tokens per sequence (at most, for tasks whose examples are short).

How the sequences are drawn from the task's calibration split (``context.calibration``,
the pool), deterministically from ``seed``:

* causal-lm: the pool's texts are joined with the tokenizer's EOS token (or a blank
  line) into one token stream, and N windows of exactly L tokens start at seeded
  random offsets -- the GPTQ / SparseGPT / Wanda protocol on C4 and WikiText. No
  padding. (A stream shorter than L gives windows of the whole stream.)
* classification, embedding: the pool's examples in a seeded shuffle, the first N,
  each truncated to L tokens; batches are padded and every statistic masks padding.
* seq2seq: (source, target) pairs the same way; sources and targets are each
  truncated to L tokens and the decoder reads the target (the model shifts it right).

The default, 64 x 256 = 16,384 tokens for causal LMs, is sized to a CPU: a 135M
model's sequential calibration then takes minutes, not hours. The papers use
128 x 2048 = 262,144 tokens; raise ``--calib-sequences`` / ``--calib-seq-len`` where
the hardware allows.

:func:`calibration_set` builds (once per context) a :class:`CalibrationSet` whose
``record`` goes into the report (``info.calibration``): source, split, task, N, L,
seed, sequences and token count actually drawn, and the sha256 of the token ids.
:func:`run_key_part` is the part of the run key that the calibration decides.

>>> spec = CalibrationSpec(sequences=64, seq_len=256)
>>> cal = calibration_set(context)                      # doctest: +SKIP
>>> batches = cal.batches(batch_size=8)                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from compress.errors import UserError

if TYPE_CHECKING:
    from compress.context import Context

#: bump when the drawing rule changes: it is part of every calibrating run's key.
PROTOCOL_VERSION = 1
DEFAULT_SEQUENCES = 64
DEFAULT_SEQ_LEN = 256
#: the batch size recipes use unless they need another (padding is masked everywhere).
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class CalibrationSpec:
    """N sequences x L tokens, drawn with ``seed`` (see the module docstring)."""

    sequences: int = DEFAULT_SEQUENCES
    seq_len: int = DEFAULT_SEQ_LEN
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("sequences", 0), ("seq_len", 2), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                flag = {"sequences": "--calib-sequences", "seq_len": "--calib-seq-len",
                        "seed": "--calib-seed"}[name]
                raise UserError(f"calibration {name} ({flag}) must be a whole number >= {low}, "
                                f"got {value!r}")

    def key(self) -> dict[str, int]:
        return {"sequences": self.sequences, "seq_len": self.seq_len, "seed": self.seed,
                "protocol": PROTOCOL_VERSION}

    @property
    def tokens(self) -> int:
        """The token budget N x L (an upper bound for tasks with short examples)."""
        return self.sequences * self.seq_len


def calibrates(config: Any) -> bool:
    """Whether ``config``'s recipe reads calibration tokens (its registered trait)."""
    from compress.registry import recipe_for_config

    traits = recipe_for_config(config).traits
    return bool(traits is not None and traits.calibrates_for(config))


def run_key_part(configs: Sequence[Any], spec: CalibrationSpec | None) -> dict[str, int] | None:
    """What the calibration adds to a run's key: the spec, when any step calibrates."""
    if spec is None:
        return None
    if any(calibrates(c) for c in configs):
        return spec.key()
    return None


@dataclass
class CalibBatch:
    """Model inputs for one batch plus the token masks of each stack role."""

    inputs: dict[str, torch.Tensor]
    #: role ("encoder" / "decoder") -> (batch, seq) 1.0 for real tokens, 0.0 for padding.
    token_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    #: class labels (classification) or target ids (seq2seq, -100 at padding).
    labels: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return next(iter(self.inputs.values())).shape[0]

    def tokens(self, role: str) -> int:
        mask = self.token_masks.get(role)
        return int(mask.sum()) if mask is not None else 0


@dataclass
class CalibSequence:
    """One calibration example: its token ids (and target ids / class label)."""

    input_ids: torch.Tensor  # (L_i,) int64
    target_ids: torch.Tensor | None = None  # (T_i,) seq2seq
    label: int | None = None


@dataclass
class CalibrationSet:
    """The drawn sequences of one context and the record the report keeps."""

    task: str
    sequences: list[CalibSequence]
    record: dict[str, Any]
    pad_id: int = 0
    #: seq2seq: the model's decoder start token; a target that begins with it loses it in
    #: the batches (it is fed, not predicted: :func:`compress.tasks.without_start`)
    decoder_start: int | None = None

    def batches(self, batch_size: int = DEFAULT_BATCH_SIZE) -> list[CalibBatch]:
        """The sequences in order, ``batch_size`` per batch, right-padded and masked."""
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        return [_collate(self.sequences[i:i + batch_size], self.task, self.pad_id,
                         self.decoder_start)
                for i in range(0, len(self.sequences), batch_size)]

    @property
    def tokens(self) -> int:
        return int(self.record["tokens"])


def _pad(rows: list[torch.Tensor], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(int(r.numel()) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
        mask[i, : r.numel()] = 1
    return out, mask


def _collate(seqs: list[CalibSequence], task: str, pad_id: int,
             start: int | None = None) -> CalibBatch:
    ids, mask = _pad([s.input_ids for s in seqs], pad_id)  # (B, T)
    inputs = {"input_ids": ids, "attention_mask": mask}
    if task == "causal-lm":
        return CalibBatch(inputs, {"decoder": mask.float()}, labels=ids.masked_fill(mask == 0, -100))
    masks = {"encoder": mask.float()}
    labels = None
    if task == "seq2seq":
        from compress.tasks import without_start

        tgt, tmask = _pad([torch.tensor(without_start(s.target_ids.tolist(), start),
                                        dtype=torch.long) for s in seqs], pad_id)  # (B, T')
        labels = tgt.masked_fill(tmask == 0, -100)
        inputs["labels"] = labels  # the model builds its decoder inputs from these
        masks["decoder"] = tmask.float()
    elif all(s.label is not None for s in seqs):
        labels = torch.tensor([s.label for s in seqs])
    return CalibBatch(inputs, masks, labels)


def _as_pair(item: Any) -> tuple[str, Any]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
        return item[0], item[1]
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return item["text"], item.get("target", item.get("label"))
    raise UserError(
        f"calibration item of type {type(item).__name__} is neither a text nor a "
        "(text, label/target) pair"
    )


def _ids(tokenizer: Any, text: str, max_len: int | None, special: bool = True) -> torch.Tensor:
    kw: dict[str, Any] = {"add_special_tokens": special}
    if max_len is not None:
        kw.update(truncation=True, max_length=max_len)
    return torch.tensor(tokenizer(text, **kw)["input_ids"], dtype=torch.long)


def _target_ids(tokenizer: Any, text: str, max_len: int) -> torch.Tensor:
    ids = tokenizer(text_target=text, truncation=True, max_length=max_len)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def draw(
    tokenizer: Any,
    pool: Sequence[Any],
    task: str,
    spec: CalibrationSpec,
    *,
    source: str = "context.calibration",
    split: str = "calibration",
) -> CalibrationSet:
    """Draw ``spec.sequences`` sequences from ``pool`` for ``task`` (module docstring)."""
    if tokenizer is None:
        raise UserError("calibration needs the model's tokenizer (context.tokenizer is empty)")
    if not pool or spec.sequences == 0:
        raise UserError(
            "this recipe needs calibration text: pass texts in context.calibration "
            "(command line: --calib-sequences N with N > 0)"
        )
    rng = random.Random(spec.seed)
    pairs = [_as_pair(x) for x in pool]
    seqs: list[CalibSequence] = []
    extra: dict[str, Any] = {}
    if task == "causal-lm":
        sep = getattr(tokenizer, "eos_token", None) or "\n\n"
        stream = _ids(tokenizer, sep.join(p[0] for p in pairs), None, special=False)
        if stream.numel() < 2:
            raise UserError("calibration text tokenizes to fewer than 2 tokens")
        length = min(spec.seq_len, stream.numel())
        starts = [rng.randrange(0, stream.numel() - length + 1) for _ in range(spec.sequences)]
        seqs = [CalibSequence(stream[s:s + length].clone()) for s in starts]
        extra["pool_tokens"] = int(stream.numel())
        extra["window"] = "random offsets into the joined stream"
    else:
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for i in order[: spec.sequences]:
            text, second = pairs[i]
            ids = _ids(tokenizer, text, spec.seq_len)
            if ids.numel() == 0:
                continue
            if task == "seq2seq":
                target = second if isinstance(second, str) else text
                seqs.append(CalibSequence(ids, target_ids=_target_ids(tokenizer, target,
                                                                      spec.seq_len)))
            else:
                seqs.append(CalibSequence(ids, label=second if isinstance(second, int) else None))
        extra["pool_examples"] = len(pairs)
        if not seqs:
            raise UserError("the calibration texts produced no tokens")
    digest = hashlib.sha256()
    for s in seqs:
        digest.update(s.input_ids.numpy().astype("<i8").tobytes())
        digest.update(b"|")
        if s.target_ids is not None:
            digest.update(s.target_ids.numpy().astype("<i8").tobytes())
        digest.update(b";")
    tokens = sum(int(s.input_ids.numel()) for s in seqs)
    record = {
        "source": source,
        "split": split,
        "task": task,
        "sequences": len(seqs),
        "seq_len": spec.seq_len,
        "seed": spec.seed,
        "tokens": tokens,
        "sha256": digest.hexdigest()[:16],
        "protocol": PROTOCOL_VERSION,
        **extra,
    }
    if task == "seq2seq":
        record["target_tokens"] = sum(int(s.target_ids.numel()) for s in seqs)
    pad = getattr(tokenizer, "pad_token_id", None)
    return CalibrationSet(task, seqs, record, pad_id=int(pad) if pad is not None else 0)


def task_of_context(model: Any, context: Context) -> str:
    if context.task:
        return context.task
    if model is None:
        raise UserError("calibration needs the task (context.task) or the model to infer it")
    from compress.models import task_of

    return task_of(model.config)


def calibration_set(context: Context, model: Any = None, *, recipe: str | None = None) -> CalibrationSet:
    """The context's calibration set (drawn once, cached on the context) and its record.

    Writes the record to ``context.info["calibration"]`` so the report carries it.
    ``recipe`` names the caller in the error when there is no calibration text.
    """
    task = task_of_context(model, context)
    spec = context.calib
    key = (spec, id(context.tokenizer), task, len(context.calibration))
    cached = context.cache.get("calibration")
    if cached is None or cached[0] != key:
        try:
            cal = draw(context.tokenizer, context.calibration, task, spec,
                       source=context.calibration_source)
        except UserError as exc:
            raise UserError(f"{recipe}: {exc}" if recipe else str(exc)) from None
        context.cache["calibration"] = (key, cal)
    else:
        cal = cached[1]
    context.info["calibration"] = dict(cal.record)
    if task == "seq2seq" and model is not None:
        from compress.tasks import decoder_start

        return dataclasses.replace(cal, decoder_start=decoder_start(model))
    return cal


def calibration_batches(context: Context, model: Any = None, *, batch_size: int = DEFAULT_BATCH_SIZE,
                        recipe: str | None = None) -> list[CalibBatch]:
    """Shorthand: the context's calibration set in batches of ``batch_size``."""
    return calibration_set(context, model, recipe=recipe).batches(batch_size)
