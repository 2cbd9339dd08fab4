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
count is restored afterwards; the count used is recorded.

**Speed against dense** (``dense=``, what every ``eval.run`` report uses): a latency from
one process compared with one from another moves by 30-40% on a shared machine, so the
profiler times the run against its dense model *in the same process*, in alternating
rounds after warm-up (:mod:`eval.paired`), per input shape and for generation. Each gets
``latency_vs_dense[shape]`` / ``generate_vs_dense``: the median per-round ratio
(model / dense, below 1 = faster) with a 95% bootstrap interval over rounds and a verdict
(``faster``, ``slower``, or ``no measurable change`` when the interval contains 1.0);
absolute milliseconds are secondary. Memory is measured first, on the compressed model
alone (a ``dense`` given as a loader is only loaded after that). ``machine`` records the
CPU (model, ISA flags: AVX2, AVX-512, VNNI, AMX) and the CPU other processes used while
timing (:mod:`eval.machine`); ``busy_machine`` is the suite's one rule,
:func:`eval.machine.is_busy`, applied to the timed interval.

>>> report = profile(model, tok, "causal-lm", threads=2, dense=lambda: load_model(name).model)
...                                                                        # doctest: +SKIP
>>> report["latency_vs_dense"]["1x128"]["ratio"], report["latency_vs_dense"]["1x128"]["ci95"]
(0.62, [0.58, 0.66])                                                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.nn as nn

from compress.errors import UserError, did_you_mean
from compress.stats import own_counts, parameter_counts
from compress.tasks import TASKS
from eval import protocol
from eval.benchmark import decoder_start_id, input_device, max_positions
from eval.machine import BusyMeter, cpu_info, quiet_reading
from eval.paired import alternate, ratio_interval

__all__ = ["dir_bytes", "memory_bytes", "profile", "weight_bytes"]

DECODER_TOKENS = 8
PROMPT_TOKENS = 16
#: tasks whose profile also times greedy generation
GENERATES = ("causal-lm", "seq2seq")
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


#: timed generation rounds (default). On the 2-core AVX2 machine one round's ratio of two
#: identical SmolLM2 copies scatters with a standard deviation of 7%; two independent
#: medians of 5 rounds then differed by more than 10% in 2.8% of simulated pairs, of 10
#: rounds in 0.2% (``reports/bench/round_noise_smollm2.json``, ``bench/round_noise.py``).
#: The forward shapes already had 10 rounds (``repeats``): 0.3% there.
GEN_ROUNDS = 10


@dataclass(frozen=True)
class _Rounds:
    """How often to time: warm-up calls, timed forwards per shape, timed generations."""

    warmup: int
    repeats: int
    gen_repeats: int
    gen_tokens: int


#: default (warm-up, timed forwards per shape, timed generations) per protocol
#: (:mod:`eval.protocol`): lean times half of full's rounds and 4 generations after one
#: warm-up call (the compressed model has run every shape once before, for its memory peak)
ROUNDS = {"full": (3, 10, GEN_ROUNDS), "lean": (1, 5, 4), "quick": (1, 3, 2)}


def _rounds(quick: bool, warmup, repeats, gen_repeats, gen_tokens: int) -> _Rounds:
    w, r, g = ROUNDS[protocol.of(quick)]
    rounds = _Rounds(
        warmup=w if warmup is None else warmup,
        repeats=r if repeats is None else repeats,
        gen_repeats=g if gen_repeats is None else gen_repeats,
        gen_tokens=gen_tokens,
    )
    if min(rounds.repeats, rounds.gen_repeats, rounds.gen_tokens) < 1 or rounds.warmup < 0:
        raise UserError("repeats, gen_repeats and gen_tokens must be at least 1, warmup at least 0")
    return rounds


def _check_shapes(model: nn.Module, shapes: Sequence[tuple[int, int]]) -> None:
    limit = max_positions(model)
    for batch, length in shapes:
        if batch < 1 or length < 1:
            raise UserError(f"bad shape {(batch, length)}: batch and length must be at least 1")
        if limit is not None and length > limit:
            raise UserError(f"shape length {length} exceeds the model's {limit} positions")


def _header(model, tokenizer, task: str, saved_dir, device, quick: bool, rounds: _Rounds,
            paired: bool) -> dict[str, Any]:
    """The sizes and the settings of a profile (everything but the timings)."""
    import transformers

    counts = parameter_counts(model)
    return {
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
        "protocol": protocol.of(quick),
        "warmup": rounds.warmup,
        "repeats": rounds.repeats,
        "gen_repeats": rounds.gen_repeats,
        "peak_rss_method": f"psutil RSS sampled every {RSS_SAMPLE_S * 1000:g} ms "
        "by a background thread during warm-up and timed runs"
        + (" of the compressed model alone (before the dense model is timed)" if paired else ""),
        "timing": "paired: alternating rounds against the dense model in this process"
        if paired else "unpaired: this model alone",
    }


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
    dense: nn.Module | Callable[[], nn.Module] | None = None,
    generate: bool = True,
) -> dict[str, Any]:
    """Size, latency, throughput and peak memory of ``model`` for ``task``.

    Defaults: ``warmup=3, repeats=10, gen_repeats=10`` (``quick``: 1, 3, 2); with ``dense``
    these are the alternating rounds (why ten: :data:`GEN_ROUNDS`). Returns a JSON-ready
    dict: params_total, params_nonzero, bytes_in_memory, bytes_on_disk,
    bytes_on_disk_weights, peak_rss_bytes, peak_rss_delta_bytes, cuda_max_memory_allocated
    (CUDA only), latency {"BxL": {median_ms, p90_ms, mean_ms, min_ms, tokens_per_second}},
    generate (causal-lm / seq2seq: ms_per_token, tokens_per_second, ...), with ``dense`` also
    latency_vs_dense {"BxL": {ratio, ci95, verdict, ...}} and generate_vs_dense; machine
    (CPU model and ISA flags, other processes' CPU while timing), busy_machine and its
    rule (:func:`eval.machine.is_busy`), device, dtype, threads, torch and transformers
    versions, and the settings used.

    ``dense`` is the uncompressed model (or a callable that loads it, called after the
    memory measurement so that its weights do not count in the peak). ``generate=False``
    times the forward shapes only (no generation, for any task).

    >>> r = profile(model, tok, "embedding", threads=1, dense=dense_model)   # doctest: +SKIP
    >>> r["latency_vs_dense"]["8x128"]                                         # doctest: +SKIP
    {'ratio': 0.61, 'ci95': [0.57, 0.66], 'verdict': 'faster', 'speedup': 1.64, ...}
    """
    if task not in TASKS:
        raise did_you_mean("task", task, TASKS)
    rounds = _rounds(quick, warmup, repeats, gen_repeats, gen_tokens)
    if threads is not None and threads < 1:
        raise UserError(f"threads must be at least 1 (got {threads})")
    _check_shapes(model, shapes)
    device = input_device(model)
    result = _header(model, tokenizer, task, saved_dir, device, quick, rounds, dense is not None)

    old_threads = torch.get_num_threads()
    was_training = model.training
    model.eval()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        result["threads"] = torch.get_num_threads()
        inputs = {(b, n): _shape_inputs(model, tokenizer, task, b, n, device) for b, n in shapes}
        busy = BusyMeter()
        # memory first, on the compressed model alone; timed here only without a dense model
        gen = generate and task in GENERATES
        result.update(_alone(model, tokenizer, inputs, device, rounds, timed=dense is None,
                             gen=gen))
        if dense is not None:
            busy = BusyMeter()  # the paired rounds are the timings to judge
            result.update(_paired(model, dense, tokenizer, inputs, device, rounds, gen=gen))
        # Timings are only comparable on a quiet machine: record how busy it was.
        reading = busy.stop()
        result.update(reading)
        loads = reading["load_average"].values()
        result["machine"] = {
            "cpu": cpu_info(),
            **quiet_reading(reading["other_processes_cores"], loads),
        }
    finally:
        torch.set_num_threads(old_threads)
        if was_training:
            model.train()
    return result


def _alone(model, tokenizer, inputs: dict, device, rounds: _Rounds, timed: bool,
           gen: bool) -> dict[str, Any]:
    """Peak memory of ``model`` running the shapes (and generation) alone; with ``timed``
    also its unpaired latency and generation timings."""
    out: dict[str, Any] = {}
    latency: dict[str, dict[str, float]] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with _PeakRSS() as rss, torch.inference_mode():
        for (batch, length), x in inputs.items():
            if timed:
                times = _time(lambda x=x: model(**x), device, rounds.warmup, rounds.repeats)
                latency[f"{batch}x{length}"] = _latency_stats(times, batch, length)
            else:  # the compressed model alone, for its memory peak; timed in _paired
                for _ in range(max(rounds.warmup, 1)):
                    model(**x)
        if gen:
            run, produced = _generator(model, tokenizer, device, rounds.gen_tokens)
            if timed:
                times = _time(run, device, min(rounds.warmup, 1), rounds.gen_repeats)
                out["generate"] = _generation_stats(times, produced, model, rounds.gen_tokens)
            else:
                run()
    if timed:
        out["latency"] = latency
    out["peak_rss_bytes"] = rss.peak
    out["peak_rss_delta_bytes"] = rss.peak - rss.start_rss
    if device.type == "cuda":
        out["cuda_max_memory_allocated"] = torch.cuda.max_memory_allocated(device)
    return out


def _paired(model, dense, tokenizer, inputs: dict, device, rounds: _Rounds,
            gen: bool) -> dict[str, Any]:
    """Alternating rounds of ``model`` and ``dense`` per shape and (``gen``) for
    generation: ``latency``, ``latency_vs_dense`` and ``generate`` and
    ``generate_vs_dense``."""
    if not isinstance(dense, nn.Module):
        dense = dense()
    dense_was_training = dense.training
    dense.eval()
    dense_device = input_device(dense)
    sync = (lambda: (_sync(device), _sync(dense_device))) if "cuda" in (
        device.type, dense_device.type) else None
    out: dict[str, Any] = {"latency": {}, "latency_vs_dense": {}}
    try:
        with torch.inference_mode():
            for (batch, length), x in inputs.items():
                xd = {k: v.to(dense_device) for k, v in x.items()}
                times = alternate(
                    {"dense": lambda xd=xd: dense(**xd), "model": lambda x=x: model(**x)},
                    rounds=rounds.repeats, warmup=rounds.warmup, sync=sync,
                )
                key = f"{batch}x{length}"
                out["latency"][key] = _latency_stats(times["model"], batch, length)
                out["latency_vs_dense"][key] = ratio_interval(times["dense"], times["model"])
            if gen:
                out.update(_paired_generation(model, dense, tokenizer, device, dense_device,
                                              rounds, sync))
    finally:
        if dense_was_training:
            dense.train()
    return out


def _paired_generation(model, dense, tokenizer, device, dense_device, rounds: _Rounds,
                       sync) -> dict[str, Any]:
    n = rounds.gen_tokens
    run, produced = _generator(model, tokenizer, device, n)
    run_d, _ = _generator(dense, tokenizer, dense_device, n)
    times = alternate({"dense": run_d, "model": run}, rounds=rounds.gen_repeats,
                      warmup=min(rounds.warmup, 1), sync=sync)
    gen_vs = ratio_interval(times["dense"], times["model"])
    gen_vs["dense_ms_per_token"] = round(gen_vs["dense_median_ms"] / n, 4)
    gen_vs["ms_per_token"] = round(gen_vs["median_ms"] / n, 4)
    return {
        "generate": _generation_stats(times["model"], produced, model, n),
        "generate_vs_dense": gen_vs,
    }


def _latency_stats(times: Sequence[float], batch: int, length: int) -> dict[str, float]:
    stats = _summary(times)
    stats["tokens_per_second"] = batch * length / (stats["median_ms"] / 1000.0)
    return stats


def _generator(model, tokenizer, device, gen_tokens: int) -> tuple[Callable[[], None], list[int]]:
    """A callable running greedy generation of exactly ``gen_tokens`` tokens after a fixed
    prompt, batch 1, and the list it appends each output length to."""
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

    return run, produced


def _generation_stats(times, produced: list[int], model, gen_tokens: int) -> dict[str, Any]:
    # decoder-only outputs include the prompt; encoder-decoder outputs start with the start token
    new = produced[-1] - (PROMPT_TOKENS if not _is_encoder_decoder(model) else 1)
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
