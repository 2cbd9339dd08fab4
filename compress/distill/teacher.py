"""The teacher's side of a batch: computed on the fly, or cached on disk and reused.

On the fly (the default) the teacher runs under ``torch.inference_mode`` in eval
mode (no dropout) and its outputs are cloned into ordinary tensors for the losses.

With ``cache_teacher`` the outputs are written per example (unpadded: logits, pooled
embedding and the mapped blocks' hidden states, as float16) into safetensors shards
in a folder keyed by a fingerprint of the teacher weights, the tokenised data, the
layer maps and the task; a later run (a re-run with other loss weights, the
hard-label comparison, a resumed run) reads them back instead of running the
teacher. Examples are looked up by their index in the tokenised training data, so a
run with another seed or batch size still finds them. Float16 storage changes the
soft targets by about 1e-3 relative; a run from cache is therefore close to, not
bit-identical with, a run on the fly.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from compress.distill.step import Outputs, detach_teacher, masks, run_model
from compress.errors import UserError
from compress.fileio import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

INDEX = "index.json"
#: a cache larger than this is refused (it would fill the disk); run on the fly instead.
MAX_CACHE_BYTES = 16 * 2**30


def weights_fingerprint(model: nn.Module) -> str:
    """sha1 over parameter names, shapes and bytes (a few seconds for 100M parameters)."""
    h = hashlib.sha1()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                 if p.dtype != torch.bool else p.cpu().numpy().tobytes())
    return h.hexdigest()


class Teacher:
    """Teacher outputs for a batch of training examples (by index)."""

    def __init__(self, model: nn.Module, task: str, kind: str, wanted: Mapping[str, Sequence[int]]):
        self.model = model
        self.task = task
        self.kind = kind
        self.wanted = {r: list(v) for r, v in wanted.items()}

    def compute(self, batch: Mapping[str, torch.Tensor]) -> Outputs:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                out = run_model(self.model, batch, self.task, self.wanted)
        finally:
            self.model.train(was_training)
        return detach_teacher(out)

    def outputs(self, batch: Mapping[str, torch.Tensor], indices: Sequence[int]) -> Outputs:
        return self.compute(batch)


class CachedTeacher(Teacher):
    """A :class:`Teacher` that stores per-example outputs in ``folder`` and reads them back."""

    def __init__(self, model, task, kind, wanted, folder: Path):
        super().__init__(model, task, kind, wanted)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.index: dict[str, str] = json.loads((self.folder / INDEX).read_text())
        except (OSError, ValueError):
            self.index = {}
        self.hits = 0
        self.misses = 0

    def outputs(self, batch: Mapping[str, torch.Tensor], indices: Sequence[int]) -> Outputs:
        keys = [str(i) for i in indices]
        if all(k in self.index for k in keys):
            self.hits += len(keys)
            return self._read(batch, keys)
        self.misses += len(keys)
        out = self.compute(batch)
        self._write(out, batch, keys)
        return out

    # per example: real lengths of the positions each tensor covers
    def _lengths(self, batch) -> dict[str, torch.Tensor]:
        return {role: m.sum(-1) for role, m in masks(batch, self.task, self.kind).items()}

    def _logit_role(self) -> str:
        return "decoder" if self.kind in ("decoder", "encoder-decoder") else "encoder"

    def _write(self, out: Outputs, batch, keys: list[str]) -> None:
        from safetensors.torch import save

        lengths = self._lengths(batch)
        tensors: dict[str, torch.Tensor] = {}
        for row, key in enumerate(keys):
            if out.logits is not None:
                if out.logits.dim() == 2:  # (B, C)
                    tensors[f"{key}.logits"] = out.logits[row]
                else:  # (B, T, V)
                    n = int(lengths[self._logit_role()][row])
                    tensors[f"{key}.logits"] = out.logits[row, :n]
            if out.pooled is not None:
                tensors[f"{key}.pooled"] = out.pooled[row]
            for (role, i), h in out.hidden.items():
                n = int(lengths[role][row])
                tensors[f"{key}.hidden.{role}.{i}"] = h[row, :n]
        tensors = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in tensors.items()}
        name = f"shard-{len(set(self.index.values())):06d}-{keys[0]}.safetensors"
        atomic_write_bytes(self.folder / name, save(tensors))
        for key in keys:
            self.index[key] = name
        atomic_write_json(self.folder / INDEX, self.index)

    def _read(self, batch, keys: list[str]) -> Outputs:
        from safetensors import safe_open

        device = batch["input_ids"].device
        by_file: dict[str, list[str]] = {}
        for key in keys:
            by_file.setdefault(self.index[key], []).append(key)
        got: dict[str, torch.Tensor] = {}
        for name, file_keys in by_file.items():
            try:
                with safe_open(str(self.folder / name), framework="pt") as fh:
                    have = set(fh.keys())
                    for key in file_keys:
                        for t in have:
                            if t.startswith(key + "."):
                                got[t] = fh.get_tensor(t)
            except OSError as exc:
                raise UserError(
                    f"teacher cache {self.folder} is damaged ({exc}); delete it to rebuild"
                ) from None
        lengths = self._lengths(batch)
        res = Outputs()
        sample = got.get(f"{keys[0]}.logits")
        if sample is not None:
            if sample.dim() == 1:
                res.logits = torch.stack([got[f"{k}.logits"] for k in keys]).float()  # (B, C)
            else:
                width = int(lengths[self._logit_role()].max())
                res.logits = self._stack_padded([got[f"{k}.logits"] for k in keys], width)
        if f"{keys[0]}.pooled" in got:
            res.pooled = torch.stack([got[f"{k}.pooled"] for k in keys]).float()  # (B, H)
        for role, idx in self.wanted.items():
            width = int(batch["attention_mask"].shape[1]) if role == "encoder" or self.kind != \
                "encoder-decoder" else int(batch["decoder_mask"].shape[1])
            for i in idx:
                res.hidden[(role, i)] = self._stack_padded(
                    [got[f"{k}.hidden.{role}.{i}"] for k in keys], width
                )
        res.logits = None if res.logits is None else res.logits.to(device)
        res.pooled = None if res.pooled is None else res.pooled.to(device)
        res.hidden = {k: v.to(device) for k, v in res.hidden.items()}
        return res

    @staticmethod
    def _stack_padded(rows: list[torch.Tensor], width: int) -> torch.Tensor:
        out = torch.zeros((len(rows), width, *rows[0].shape[1:]), dtype=torch.float32)
        for r, t in enumerate(rows):
            out[r, : t.shape[0]] = t.float()
        return out  # (B, T, ...)


def estimate_cache_bytes(
    model: nn.Module, task: str, n_examples: int, seq_len: int, n_hidden: int
) -> int:
    """Rough float16 size of a cache of ``n_examples`` examples (worst case: full length)."""
    from compress.arch import hidden_size

    cfg = getattr(model, "config", None)
    hidden = hidden_size(model)
    dec = getattr(cfg, "decoder", None)
    vocab = getattr(cfg, "vocab_size", None) or getattr(dec, "vocab_size", None) or 0
    per = n_hidden * seq_len * hidden
    if task in ("causal-lm", "masked-lm", "seq2seq"):
        per += seq_len * vocab
    elif task == "classification":
        per += getattr(cfg, "num_labels", 2)
    else:
        per += hidden
    return 2 * per * n_examples


def check_cache_size(nbytes: int) -> None:
    if nbytes > MAX_CACHE_BYTES:
        raise UserError(
            f"the teacher cache would take about {nbytes / 2**30:.0f} GiB (full-vocabulary "
            f"logits for every token); the limit is {MAX_CACHE_BYTES / 2**30:.0f} GiB. Run "
            "without cache_teacher (the teacher then runs on the fly) or with fewer steps"
        )
