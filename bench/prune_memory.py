"""Peak resident memory while pruning, as a multiple of the model's own bytes.

    python bench/prune_memory.py                      # every case below, one subprocess each
    python bench/prune_memory.py --cases smollm2-135m:wanda --out reports/bench

Each measurement runs in a fresh subprocess: build or load the model, release the
loader's garbage (``gc`` + ``malloc_trim``), read the resident set (RSS), reset the
kernel's peak-RSS counter (``/proc/self/clear_refs`` <- 5, so VmHWM restarts at the
current RSS; a 5 ms sampling thread backs it up), prune, and read the peak. Reported:

* ``peak_over_model``: (model bytes + peak RSS - RSS just before pruning) / model
  bytes - the model counted once at its own size plus everything pruning added on top
  (1.0 = pruning needed nothing; ``torch.nn.utils.prune`` masks make it 2x and more);
* ``process_peak_over_model``: (peak RSS - RSS before the model existed) / model bytes,
  which also counts what the loader left behind (tokenizer, allocator free lists);
* ``calibration_activation_bytes``: one stack's calibration hidden states
  (``nsamples x seq_len x hidden x 4``), what Wanda holds besides the model.

The target is ``peak_over_model <= 1.3 + calibration_activation_bytes / model bytes``.

transformers 5 memory-maps safetensors weights; the zoo model's tensors are copied
into private memory before measuring (see ``_model``), as a model built in memory is.

Models: ``smollm2-135m`` (the zoo model when built, else random weights of the same
shape: memory depends on shapes, not values) and ``gpt2-xl-random``, a 1.56B-parameter
GPT-2-XL-shaped model with random weights (n_embd 1600, 48 layers, 25 heads). Cases
``torch-prune`` apply ``torch.nn.utils.prune.l1_unstructured`` + ``prune.remove`` to
the same matrices, for comparison. Timings of other processes do not matter here,
but memory pressure from them does not change RSS either.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

DEFAULT_CASES = (
    "smollm2-135m:magnitude",
    "smollm2-135m:magnitude-global",
    "smollm2-135m:wanda",
    "smollm2-135m:torch-prune",
    "gpt2-xl-random:magnitude",
    "gpt2-xl-random:magnitude-global",
    "gpt2-xl-random:wanda",
)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _Sampler:
    """Max RSS sampled every 5 ms (backs up VmHWM where clear_refs is refused)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status("VmRSS"))
            time.sleep(0.005)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("VmRSS"))


def _model(name: str):
    import torch
    import transformers as tf

    from compress.tiny import tiny_tokenizer

    if name == "smollm2-135m":
        from compress import zoo

        if zoo.is_built(name):
            from compress.models import load_model

            loaded = load_model(name)
            # transformers memory-maps safetensors: file pages count in RSS once read and
            # are replaced by private copies when written (counted twice for a while).
            # Copy every tensor into private memory so the model is counted once.
            with torch.no_grad():
                for t in list(loaded.model.parameters()) + list(loaded.model.buffers()):
                    t.data = t.data.clone()
            return loaded.model, loaded.tokenizer, "zoo weights (copied out of the mmap)"
        config = tf.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                num_hidden_layers=30, num_attention_heads=9,
                                num_key_value_heads=3, max_position_embeddings=8192,
                                tie_word_embeddings=True, rope_theta=100000.0)
        cls = tf.LlamaForCausalLM
    elif name == "gpt2-xl-random":
        config = tf.GPT2Config(n_embd=1600, n_layer=48, n_head=25, n_positions=1024,
                               vocab_size=50257)
        cls = tf.GPT2LMHeadModel
    else:
        raise SystemExit(f"unknown model {name}")
    torch.manual_seed(0)
    model = cls(config).eval()
    # ids of the tiny tokenizer (< 512) are valid for both vocabularies
    return model, tiny_tokenizer(), "random weights of the same shape"


def _texts() -> list[str]:
    from compress.data import calibration_for

    try:
        return calibration_for("causal-lm", 128)
    except Exception:  # noqa: BLE001 - data packages missing: any text will do for memory
        from compress.tiny import _TRAIN_TEXT

        return list(_TRAIN_TEXT)


def measure_one(model_name: str, case: str, nsamples: int, seq_len: int) -> dict:
    import torch

    from compress import Context, compress, make_config
    from compress.pruning.targets import select_targets

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    _trim()
    rss_start = _status("VmRSS")
    model, tok, weights = _model(model_name)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())
    texts = _texts()
    ctx = Context(tokenizer=tok, calibration=texts, task="causal-lm")
    hidden = model.config.hidden_size
    _trim()
    rss_before = _status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    t0 = time.perf_counter()
    with _Sampler() as sampler:
        if case == "torch-prune":
            from torch.nn.utils import prune

            for t in select_targets(model):
                prune.l1_unstructured(t.module, "weight", amount=0.5)
                prune.remove(t.module, "weight")
        elif case == "magnitude":
            compress(model, make_config("magnitude", sparsity=0.5), ctx)
        elif case == "magnitude-global":
            compress(model, make_config("magnitude", sparsity=0.5, scope="global"), ctx)
        elif case == "wanda":
            from compress.calibration import CalibrationSpec

            ctx.calib = CalibrationSpec(sequences=nsamples, seq_len=seq_len)
            compress(model, make_config("wanda", sparsity=0.5), ctx)
        else:
            raise SystemExit(f"unknown case {case}")
    seconds = time.perf_counter() - t0
    peak = max(_status("VmHWM") if hwm_reset else 0, sampler.peak)
    act = nsamples * seq_len * hidden * 4 if case == "wanda" else 0
    return {
        "model": model_name,
        "weights": weights,
        "case": case,
        "params": sum(p.numel() for p in model.parameters()),
        "model_bytes": model_bytes,
        "rss_start": rss_start,
        "rss_before_pruning": rss_before,
        "peak_rss": peak,
        "peak_source": "VmHWM after clear_refs + 5 ms sampler" if hwm_reset else "5 ms sampler",
        "peak_over_model": round(1 + (peak - rss_before) / model_bytes, 4),
        "process_peak_over_model": round((peak - rss_start) / model_bytes, 4),
        "calibration_activation_bytes": act,
        "target_over_model": round(1.3 + act / model_bytes, 4),
        "nsamples": nsamples if case == "wanda" else None,
        "seq_len": seq_len if case == "wanda" else None,
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(),
        "machine": _machine(),
    }


def _machine() -> str:
    """CPUs and memory of the machine that measured (results from several may be merged)."""
    total = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:")), "?") if Path("/proc/meminfo").exists() else "?"
    gib = f"{int(total) / 2**20:.0f} GiB" if total.isdigit() else "? GiB"
    return f"{os.cpu_count()} CPUs, {gib}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                        help="MODEL:CASE items (default: all)")
    parser.add_argument("--nsamples", type=int, default=32,
                        help="Wanda calibration sequences (default 32)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("reports/bench"),
                        help="folder for prune_memory.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: MODEL:CASE in-process
    args = parser.parse_args(argv)
    if args.one:
        model_name, case = args.one.split(":")
        print(json.dumps(measure_one(model_name, case, args.nsamples, args.seq_len)))
        return 0
    results = []
    for item in args.cases:
        cmd = [sys.executable, __file__, "--one", item, "--nsamples", str(args.nsamples),
               "--seq-len", str(args.seq_len)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{item}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            model_name, case = item.split(":")
            results.append({"model": model_name, "case": case,
                            "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        ok = "ok" if r["peak_over_model"] <= r["target_over_model"] else "OVER"
        print(f"{r['model']:>15} {r['case']:>17}  model {r['model_bytes'] / 2**20:8.1f} MiB  "
              f"peak/model {r['peak_over_model']:.3f}  (process {r['process_peak_over_model']:.3f})"
              f"  target {r['target_over_model']:.3f} {ok}  ({r['seconds']} s)", flush=True)
    from compress.fileio import atomic_write_json

    path = args.out / "prune_memory.json"
    merged = {}
    if path.exists():  # earlier runs of other cases stay; a re-run case replaces its entry
        for r in json.loads(path.read_text()).get("results", []):
            merged[(r.get("model"), r.get("case"))] = r
    for r in results:
        merged[(r.get("model"), r.get("case"))] = r
    atomic_write_json(path, {
        "benchmark": "prune_memory", "protocol": __doc__, "results": list(merged.values()),
    })
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
