"""Memory a recipe needs beyond the model: its declared estimate against the measured peak.

    python bench/recipe_memory.py                          # every case, one subprocess each
    python bench/recipe_memory.py --cases minilm-l6-sentiment:wanda smollm2-135m:gptq
    python bench/recipe_memory.py --list                   # the cases and their settings
    python bench/recipe_memory.py --reestimate smollm2-135m  # stored peaks, current estimates

Every calibrating or training recipe (and the ones that copy the model: bitsandbytes'
reload, the ONNX export) runs on SmolLM2-135M and MiniLM-L6-sentiment at small but
real settings (``CASES``). Each case runs in a fresh subprocess:

1. load the zoo model and copy every tensor out of the safetensors memory map (so the
   model is counted once, as a model built in memory is), build the context as
   ``eval.run`` does (the task's calibration pool with ``CALIB`` = N x L, its training
   split), import the
   libraries recipes import lazily (peft, bitsandbytes, onnxruntime, optimum-quanto:
   their code is not what an estimate sizes; it is loaded in any process that ran a
   recipe before), and read the recipe's estimate from its registration
   (:func:`compress.footprint.model_facts`, ``Recipe.memory_need``);
2. release the loader's garbage (``gc`` + ``malloc_trim``), read the resident set
   (RSS), reset the kernel's peak counter (``/proc/self/clear_refs`` <- 5, VmHWM
   restarts at the current RSS; a 5 ms sampling thread backs it up);
3. ``compress(model, config, context)`` (the memory check included) and read the peak.

``measured`` = peak RSS - RSS just before ``compress``; ``ratio`` = estimate /
measured. The estimate should lie within 0.7x-1.5x of the measured peak delta: below,
the check lets through runs that do not fit; far above, it refuses runs that would.
Results go to ``reports/bench/recipe_memory.json`` (cases re-run replace their entry).

Memory does not depend on CPU speed, so a busy machine changes the seconds, not the
bytes. ``BENCH_THREADS`` sets torch's threads (default 2); the committed results used 1
(on a busy 2-core machine two threads made a case six times slower; a second thread's
buffers add a few MiB). ``torch-prune`` (``torch.nn.utils.prune`` on the same matrices, for comparison
with ``magnitude``) and the ``gpt2-xl-random`` model (1.56B parameters, random weights)
are available with ``--cases`` and not run by default.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

MODELS = ("smollm2-135m", "minilm-l6-sentiment")

#: the calibration set of every case (``context.calib``): N sequences x L tokens. A
#: quarter of the suite's default N and half its L (64 x 256): the 40 runs share a busy
#: 2-core machine (SmolLM2's sequential calibration at 64 x 256 takes over 15 minutes a
#: run there). Every estimate reads N and L from the context, so any N x L is a fair test.
CALIB = (16, 128)
#: case -> (recipe, config fields). Small but real: the settings of a smoke sweep; training
#: recipes run 2 steps (the peak is the first step's backward with the optimizer made).
CASES: dict[str, tuple[str, dict]] = {
    "wanda": ("wanda", {"sparsity": 0.5}),
    "sparsegpt": ("sparsegpt", {"sparsity": 0.5}),
    "owl": ("owl", {"sparsity": 0.5}),
    "gptq": ("gptq", {"bits": 4}),
    "awq": ("awq", {"bits": 4, "n_grid": 5}),
    "rotate-gptq": ("rotate", {"bits": 4, "method": "gptq"}),
    "hqq": ("hqq", {"bits": 4, "iters": 5}),
    "depth": ("depth", {"target": 0.75}),
    "structured": ("structured", {"ffn_ratio": 0.3}),
    "structured-taylor": ("structured", {"ffn_ratio": 0.3, "importance": "taylor"}),
    "magnitude-full-ft": ("magnitude", {"sparsity": 0.5, "finetune_steps": 2,
                                        "finetune_method": "full", "finetune_batch_size": 4,
                                        "finetune_seq_len": 128}),
    "magnitude-lora-ft": ("magnitude", {"sparsity": 0.5, "finetune_steps": 2,
                                        "finetune_method": "lora", "finetune_batch_size": 4,
                                        "finetune_seq_len": 128}),
    "rtn-outliers": ("rtn", {"bits": 8, "outlier_threshold": 6.0}),
    "quanto-act": ("quanto", {"weights": "int8", "activations": "int8"}),
    "smoothquant": ("smoothquant", {}),
    "moefy": ("moefy", {"num_experts": 8, "calibration_tokens": 2048, "router_steps": 20,
                        "timing_rounds": 2}),
    "distill": ("distill", {"steps": 2, "batch_size": 4, "seq_len": 128, "eval_every": 2,
                            "eval_samples": 16}),
    "qlora": ("qlora", {"steps": 2, "batch_size": 2, "seq_len": 128}),
    "bnb-4bit": ("bnb-4bit", {}),
    "onnx-int8": ("onnx-int8", {}),
    # fuse=False: a fused graph has no per-module MatMul to keep in float
    "runtime-outliers": ("runtime", {"weights": "int8", "outlier_threshold": 6.0,
                                     "fuse": False}),
}
DEFAULT_CASES = tuple(f"{m}:{c}" for m in MODELS for c in CASES)
#: the libraries recipes import on first use; imported before measuring.
LAZY_IMPORTS = ("peft", "bitsandbytes", "onnx", "onnxruntime", "onnxruntime.quantization",
                "optimum.quanto", "torch.onnx", "transformers.integrations.bitsandbytes")
LOW, HIGH = 0.7, 1.5


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
    """Max RSS sampled every 5 ms (backs up VmHWM where clear_refs is refused), and where
    the main thread was when the sampled RSS last rose to a new maximum (``peak_at``:
    the innermost suite frames, for reading which allocation the estimate missed)."""

    def __init__(self) -> None:
        self.peak = 0
        self.peak_at: list[str] = []
        self._main = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _where(self) -> list[str]:
        import traceback

        frame = sys._current_frames().get(self._main)
        if frame is None:
            return []
        stack = traceback.extract_stack(frame)
        ours = [f for f in stack if "/compress/" in f.filename or "/eval/" in f.filename]
        return [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in (ours or stack)[-6:]]

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _status("VmRSS")
            if rss > self.peak:
                self.peak = rss
                self.peak_at = self._where()
            time.sleep(0.005)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("VmRSS"))


def _private_copy(model) -> None:
    """transformers memory-maps safetensors: file pages count in RSS once read and are
    replaced by private copies when written. Copy every tensor into private memory so the
    model is counted once."""
    import torch

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.data = t.data.clone()


def _load(name: str):
    import torch
    import transformers as tf

    from compress.calibration import CalibrationSpec

    spec = CalibrationSpec(sequences=CALIB[0], seq_len=CALIB[1])

    from compress.cli import build_context
    from compress.models import Loaded

    if name == "gpt2-xl-random":
        from compress.tiny import tiny_tokenizer

        torch.manual_seed(0)
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=1600, n_layer=48, n_head=25,
                                                 n_positions=1024, vocab_size=50257)).eval()
        loaded = Loaded(model, tiny_tokenizer(), "causal-lm", "random", None)
        return loaded, build_context(loaded, spec), "random weights of GPT-2-XL's shape"
    from compress import zoo
    from compress.models import load_model

    if not zoo.is_built(name):
        raise SystemExit(f"{name} is not built (python -m compress.zoo build {name})")
    loaded = load_model(name)
    _private_copy(loaded.model)
    return loaded, build_context(loaded, spec), "zoo weights (copied out of the mmap)"


def measure_one(model_name: str, case: str) -> dict:
    import torch

    from compress import compress, make_config
    from compress.footprint import model_facts
    from compress.registry import get_recipe, recipe_names

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    recipe_names()  # every recipe module (and its imports) loaded, as in eval.run
    for mod in LAZY_IMPORTS:
        try:
            importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - a missing optional library: its recipe will say so
            pass
    _trim()
    rss_start = _status("VmRSS")
    loaded, context, weights = _load(model_name)
    model = loaded.model
    facts = model_facts(model, context)
    if case == "torch-prune":
        recipe, params, estimate, parts = "torch-prune", {"amount": 0.5}, None, {}
    else:
        recipe, params = CASES[case]
        config = make_config(recipe, **params)
        need = get_recipe(recipe).memory_need(config, facts)
        estimate, parts = need.bytes, need.parts
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

            from compress.pruning.targets import select_targets

            for t in select_targets(model):
                prune.l1_unstructured(t.module, "weight", amount=0.5)
                prune.remove(t.module, "weight")
        else:
            compress(model, config, context)
    seconds = time.perf_counter() - t0
    peak = max(_status("VmHWM") if hwm_reset else 0, sampler.peak)
    measured = peak - rss_before
    return {
        "model": model_name,
        "case": case,
        "recipe": recipe,
        "config": params,
        "calibration": {"sequences": CALIB[0], "seq_len": CALIB[1]},
        "weights": weights,
        "param_bytes": facts.param_bytes,
        "estimate_bytes": estimate,
        "estimate_parts": parts,
        "measured_bytes": measured,
        "ratio": round(estimate / measured, 3) if estimate is not None and measured > 0 else None,
        "rss_start": rss_start,
        "rss_before": rss_before,
        "peak_rss": peak,
        "peak_source": "VmHWM after clear_refs + 5 ms sampler" if hwm_reset else "5 ms sampler",
        "peak_at": sampler.peak_at,
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(),
        "machine": _machine(),
    }


def estimate_all(model_name: str) -> dict:
    """The current code's estimate of every case on ``model_name`` (nothing runs)."""
    from compress import make_config
    from compress.footprint import model_facts
    from compress.registry import get_recipe, recipe_names

    recipe_names()
    loaded, context, _ = _load(model_name)
    facts = model_facts(loaded.model, context)
    out = {}
    for case, (recipe, params) in CASES.items():
        need = get_recipe(recipe).memory_need(make_config(recipe, **params), facts)
        out[case] = {"estimate_bytes": need.bytes, "estimate_parts": need.parts}
    return out


def reestimate(folder: Path, models: list[str]) -> None:
    """Replace the stored results' estimates by the current code's (the measured peaks do
    not depend on them), so estimates can be revised without re-running every case."""
    from compress.fileio import atomic_write_json

    path = folder / "recipe_memory.json"
    data = json.loads(path.read_text())
    for model_name in models:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--estimate-only", model_name]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        fresh = json.loads(proc.stdout.strip().splitlines()[-1])
        for r in data["results"]:
            if r.get("model") != model_name or r.get("case") not in fresh or "error" in r:
                continue
            r.update(fresh[r["case"]], estimate_recomputed=True)
            r["ratio"] = round(r["estimate_bytes"] / r["measured_bytes"], 3)
    atomic_write_json(path, data)


def _machine() -> str:
    """CPUs and memory of the machine that measured (results from several may be merged)."""
    total = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:")), "?") if Path("/proc/meminfo").exists() else "?"
    gib = f"{int(total) / 2**20:.0f} GiB" if total.isdigit() else "? GiB"
    return f"{os.cpu_count()} CPUs, {gib}"


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:8.1f}"


def _save(folder: Path, result: dict) -> Path:
    """Merge ``result`` into ``folder/recipe_memory.json`` (a re-run case replaces its
    entry; the others stay)."""
    from compress.fileio import atomic_write_json

    path = folder / "recipe_memory.json"
    merged = {}
    if path.exists():
        for r in json.loads(path.read_text()).get("results", []):
            merged[(r.get("model"), r.get("case"))] = r
    merged[(result.get("model"), result.get("case"))] = result
    return atomic_write_json(path, {
        "benchmark": "recipe_memory", "protocol": __doc__, "band": [LOW, HIGH],
        "results": sorted(merged.values(), key=lambda r: (r.get("model", ""), r.get("case", ""))),
    })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                        help="MODEL:CASE items (default: every case on both models)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"),
                        help="folder for recipe_memory.json")
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: MODEL:CASE in-process
    parser.add_argument("--estimate-only", help=argparse.SUPPRESS)  # internal: MODEL
    parser.add_argument("--reestimate", nargs="+", metavar="MODEL",
                        help="recompute the stored results' estimates for these models with "
                        "the current code, without running anything")
    args = parser.parse_args(argv)
    if args.estimate_only:
        print(json.dumps(estimate_all(args.estimate_only)))
        return 0
    if args.reestimate:
        reestimate(args.out, args.reestimate)
        return 0
    if args.list:
        for name, (recipe, params) in CASES.items():
            print(f"{name:>20}  {recipe} {params}")
        return 0
    if args.one:
        model_name, case = args.one.split(":")
        print(json.dumps(measure_one(model_name, case)))
        return 0
    for item in args.cases:
        model_name, _, case = item.partition(":")
        if case not in CASES and case != "torch-prune":
            raise SystemExit(f"unknown case {case!r}; known: {', '.join(CASES)}, torch-prune")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", item]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{item}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            _save(args.out, {"model": model_name, "case": case,
                             "error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        _save(args.out, r)  # after every case: an interrupted bench keeps what it measured
        ok = "" if r["ratio"] is None else ("ok" if LOW <= r["ratio"] <= HIGH else "OUT")
        print(f"{r['model']:>20} {r['case']:>18}  estimate {_mib(r['estimate_bytes'])} MiB  "
              f"measured {_mib(r['measured_bytes'])} MiB  ratio {r['ratio']} {ok}  "
              f"({r['seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
