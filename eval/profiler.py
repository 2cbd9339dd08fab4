"""Size, speed and memory of a model: what compression is supposed to buy.

:func:`profile` measures, for a model in memory:

* **size**: total and nonzero parameters (:func:`compress.stats.parameter_counts`),
  bytes of parameters + buffers in memory (:func:`memory_bytes`: a quantized model's own
  storage figure where it carries one), bytes on disk (the folder ``save_model``
  writes, whole and weight files only);
* **latency** per input shape ``(batch, tokens)``: forward passes under
  ``torch.inference_mode`` after warm-up runs, median / p90 / mean milliseconds over
  ``repeats`` timed runs, and tokens per second (batch x tokens / median). Encoder-
  decoders get an encoder input of the shape and a decoder input of ``DECODER_TOKENS``
  tokens. Inputs are real text (a fixed English paragraph), not random ids, so that
  input-dependent methods (routing, activation sparsity) see ordinary activations;
* **generation** (causal LM, seq2seq): greedy ``generate`` of exactly ``gen_tokens`` new
  tokens (``min_new_tokens == max_new_tokens``) after a fixed ``PROMPT_TOKENS``-token
  prompt, batch 1; ``ms_per_token`` is the median total time divided by ``gen_tokens``,
  with nothing subtracted (so it includes the prompt's prefill, a small share at 16 tokens);
* **memory**: peak resident set size (RSS) of the process during the warm-up and timed
  runs, sampled with psutil every ``RSS_SAMPLE_S`` seconds from a background thread
  (``ru_maxrss`` cannot be reset, so it would report the peak of the whole process
  life); the delta over the RSS at the start; on CUDA, ``torch.cuda.max_memory_allocated``.

Threads: ``threads`` pins ``torch.set_num_threads`` for the measurement; the previous
count is restored afterwards; the count used is recorded. On a shared machine compare
methods in alternating rounds within one process and report medians.

>>> report = profile(model, tokenizer, "causal-lm", threads=2, quick=True)   # doctest: +SKIP
>>> report["latency"]["1x128"]["median_ms"]                                 # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.nn as nn

from compress.errors import UserError, did_you_mean
from compress.stats import own_counts, parameter_counts
from compress.tasks import TASKS
from eval.benchmark import decoder_start_id, input_device
from eval.machine import BusyMeter

__all__ = ["dir_bytes", "memory_bytes", "profile", "weight_bytes"]

DECODER_TOKENS = 8
PROMPT_TOKENS = 16
RSS_SAMPLE_S = 0.01
#: suffixes of weight files (everything else in a model folder is config/tokenizer)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".gguf", ".npz", ".npy", ".data")

_TEXT = (
    "The committee met on Tuesday to review the budget for the coming year. Members "
    "agreed that the new library would open in the spring, and that the old building "
    "on the river would be repaired before winter. Several residents asked about the "
    "cost of the bridge, which has been closed since the storm in March. The mayor said "
    "that engineers were still studying the damage and that a report would follow. "
)


def dir_bytes(path: str | os.PathLike) -> int:
    """Total size in bytes of the regular files under ``path`` (or of ``path`` if a file).

    >>> dir_bytes("out/model")   # doctest: +SKIP
    538_000_000
    """
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        raise UserError(f"{path} does not exist")
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def weight_bytes(path: str | os.PathLike) -> int:
    """Bytes of the weight files under ``path`` (suffixes in :data:`WEIGHT_SUFFIXES`, or ``*_data``)."""
    path = Path(path)
    return sum(
        p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and (p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith("_data"))
    )


def memory_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers as stored (shared tensors counted once).

    A model whose real storage differs from its float tensors (int8 packed params,
    bitsandbytes/quanto layers, an ONNX Runtime session) reports the bytes it carries in
    ``compress_parameter_counts`` (:func:`compress.stats.own_counts`), the same figure
    :func:`compress.stats.parameter_counts` gives.
    """
    own = own_counts(model)
    if own is not None:
        return own["bytes"]
    seen: set[int] = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen or t.device.type == "meta":
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


class _PeakRSS:
    """Background thread sampling this process's RSS; ``peak`` is the maximum seen."""

    def __init__(self, interval: float = RSS_SAMPLE_S):
        self.interval = interval
        self.proc = psutil.Process()
        self.start_rss = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _summary(times: Sequence[float]) -> dict[str, float]:
    return {
        "median_ms": float(statistics.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "mean_ms": float(statistics.fmean(times)),
        "min_ms": float(min(times)),
    }


def _token_stream(tokenizer: Any, n: int) -> torch.Tensor:
    """At least ``n`` token ids of the fixed paragraph, repeated."""
    ids = tokenizer(_TEXT, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError("the tokenizer produced no tokens for the profiling text")
    reps = n // len(ids) + 1
    return torch.tensor(ids * reps, dtype=torch.long)


def _max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    from transformers import PretrainedConfig

    # composite models (bert2bert) keep sizes in sub-configs
    configs = [config] + [v for v in vars(config).values() if isinstance(v, PretrainedConfig)]
    for cfg in configs:
        for attr in ("max_position_embeddings", "n_positions"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int):
                return value
    return None


def _shape_inputs(model, tokenizer, task: str, batch: int, length: int, device) -> dict:
    stream = _token_stream(tokenizer, length + 7 * batch)
    ids = torch.stack([stream[7 * r : 7 * r + length] for r in range(batch)])  # (B, L)
    inputs = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    if task == "seq2seq":
        start = decoder_start_id(model)
        dec = torch.full((batch, DECODER_TOKENS), start, dtype=torch.long)  # (B, D)
        dec[:, 1:] = stream[: DECODER_TOKENS - 1]
        inputs["decoder_input_ids"] = dec.to(device)
    return inputs


def _dtype(model: nn.Module) -> str:
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return "none"


def _disk(model: nn.Module, tokenizer: Any, saved_dir: Path | None) -> dict[str, Any]:
    if saved_dir is not None:
        saved_dir = Path(saved_dir)
        return {
            "bytes_on_disk": dir_bytes(saved_dir),
            "bytes_on_disk_weights": weight_bytes(saved_dir),
            "disk_source": str(saved_dir),
        }
    from transformers.utils import logging as hf_logging

    from compress.saving import save_model

    tmp = Path(tempfile.mkdtemp(prefix="compress-profile-"))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar
    try:
        out = save_model(model, tokenizer, tmp / "model")
        return {
            "bytes_on_disk": dir_bytes(out),
            "bytes_on_disk_weights": weight_bytes(out),
            "disk_source": "save_model into a temporary folder (deleted)",
        }
    except Exception as exc:  # a model that cannot be saved still gets its other numbers
        return {
            "bytes_on_disk": None,
            "bytes_on_disk_weights": None,
            "disk_source": f"could not save: {type(exc).__name__}: {exc}",
        }
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        shutil.rmtree(tmp, ignore_errors=True)


def profile(
    model: nn.Module,
    tokenizer: Any,
    task: str,
    *,
    threads: int | None = None,
    quick: bool = False,
    saved_dir: Path | None = None,
    shapes: Sequence[tuple[int, int]] = ((1, 128), (8, 128)),
    gen_tokens: int = 32,
    warmup: int | None = None,
    repeats: int | None = None,
    gen_repeats: int | None = None,
) -> dict[str, Any]:
    """Size, latency, throughput and peak memory of ``model`` for ``task``.

    Defaults: ``warmup=3, repeats=10, gen_repeats=3`` (``quick``: 1, 3, 1). Returns a
    JSON-ready dict: params_total, params_nonzero, bytes_in_memory, bytes_on_disk,
    bytes_on_disk_weights, peak_rss_bytes, peak_rss_delta_bytes, cuda_max_memory_allocated
    (CUDA only), latency {"BxL": {median_ms, p90_ms, mean_ms, min_ms, tokens_per_second}},
    generate (causal-lm / seq2seq: ms_per_token, tokens_per_second, ...), device, dtype,
    threads, torch and transformers versions, and the settings used.

    >>> profile(model, tok, "embedding", threads=1, quick=True)["latency"]["8x128"]   # doctest: +SKIP
    {'median_ms': 41.2, 'p90_ms': 44.0, 'mean_ms': 41.9, 'min_ms': 40.7, 'tokens_per_second': 24854.4}
    """
    import transformers

    if task not in TASKS:
        raise did_you_mean("task", task, TASKS)
    warmup = (1 if quick else 3) if warmup is None else warmup
    repeats = (3 if quick else 10) if repeats is None else repeats
    gen_repeats = (1 if quick else 3) if gen_repeats is None else gen_repeats
    if repeats < 1 or gen_repeats < 1 or warmup < 0 or gen_tokens < 1:
        raise UserError("repeats, gen_repeats and gen_tokens must be at least 1, warmup at least 0")
    if threads is not None and threads < 1:
        raise UserError(f"threads must be at least 1 (got {threads})")
    limit = _max_positions(model)
    for batch, length in shapes:
        if batch < 1 or length < 1:
            raise UserError(f"bad shape {(batch, length)}: batch and length must be at least 1")
        if limit is not None and length > limit:
            raise UserError(f"shape length {length} exceeds the model's {limit} positions")

    counts = parameter_counts(model)
    device = input_device(model)
    result: dict[str, Any] = {
        "task": task,
        "params_total": counts["total"],
        "params_nonzero": counts["nonzero"],
        "bytes_in_memory": memory_bytes(model),
        **_disk(model, tokenizer, saved_dir),
        "device": str(device),
        "dtype": _dtype(model),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "quick": quick,
        "warmup": warmup,
        "repeats": repeats,
        "gen_repeats": gen_repeats,
        "peak_rss_method": f"psutil RSS sampled every {RSS_SAMPLE_S * 1000:g} ms "
        "by a background thread during warm-up and timed runs",
    }

    old_threads = torch.get_num_threads()
    was_training = model.training
    model.eval()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        result["threads"] = torch.get_num_threads()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        latency: dict[str, dict[str, float]] = {}
        busy = BusyMeter()
        with _PeakRSS() as rss, torch.inference_mode():
            for batch, length in shapes:
                inputs = _shape_inputs(model, tokenizer, task, batch, length, device)
                times = _time(lambda inputs=inputs: model(**inputs), device, warmup, repeats)
                stats = _summary(times)
                stats["tokens_per_second"] = batch * length / (stats["median_ms"] / 1000.0)
                latency[f"{batch}x{length}"] = stats
            if task in ("causal-lm", "seq2seq"):
                result["generate"] = _generation(
                    model, tokenizer, device, gen_tokens, min(warmup, 1), gen_repeats
                )
        result["latency"] = latency
        # Timings are only comparable on a quiet machine: record how busy it was.
        result.update(busy.stop())
        result["peak_rss_bytes"] = rss.peak
        result["peak_rss_delta_bytes"] = rss.peak - rss.start_rss
        if device.type == "cuda":
            result["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    finally:
        torch.set_num_threads(old_threads)
        if was_training:
            model.train()
    return result


def _generation(model, tokenizer, device, gen_tokens: int, warmup: int, repeats: int) -> dict:
    """Greedy generation of exactly ``gen_tokens`` tokens after a fixed prompt, batch 1."""
    prompt = (
        _token_stream(tokenizer, PROMPT_TOKENS)[:PROMPT_TOKENS].unsqueeze(0).to(device)
    )  # (1, P)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    produced: list[int] = []

    def run() -> None:
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=gen_tokens,
            min_new_tokens=gen_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
        )
        produced.append(out.shape[-1])

    times = _time(run, device, warmup, repeats)
    # decoder-only outputs include the prompt; encoder-decoder outputs start with the start token
    new = produced[-1] - (prompt.shape[-1] if not _is_encoder_decoder(model) else 1)
    stats = _summary(times)
    return {
        "gen_tokens": gen_tokens,
        "generated_tokens": int(new),
        "prompt_tokens": PROMPT_TOKENS,
        "total_median_ms": stats["median_ms"],
        "ms_per_token": stats["median_ms"] / gen_tokens,
        "tokens_per_second": gen_tokens / (stats["median_ms"] / 1000.0),
        "method": "median total generate() time / gen_tokens, prefill included, batch 1",
    }


def _is_encoder_decoder(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return bool(getattr(config, "is_encoder_decoder", False))
