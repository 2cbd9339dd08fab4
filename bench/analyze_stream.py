"""Benchmark: streamed weight analysis of a 1.5B-parameter checkpoint in little memory.

``python bench/analyze_stream.py [--rounds 2] [--threads 1] [--keep] [--out FILE]``

1. Writes (once; reused with ``--keep``) a GPT-2-XL-shaped safetensors checkpoint
   with random weights: n_embd 1600, 48 layers, 25 heads, vocabulary 50257,
   1024 positions, 1,557,611,200 parameters (6.2 GB in float32), in 13 shards
   with ``model.safetensors.index.json``, keys named like the original GPT-2 files
   (``h.0.attn.c_attn.weight``, no ``transformer.`` prefix). It is written shard
   by shard: the writer never holds more than one shard (about 0.5 GB).
2. Runs, in fresh subprocesses so that each one's peak resident memory
   (``ru_maxrss``) is its own, in alternating rounds after one unmeasured warm-up
   read (so both see the files in the page cache); the checkpoint is written by a
   subprocess too, since Linux carries ``ru_maxrss`` across fork and exec:
   * the **floor**: open every shard with ``safe_open`` and ``torch.sum`` every
     tensor, the least work that reads every weight;
   * the **analyzer**: ``eval.analyze.analyze_folder`` on the folder (skeleton on
     the meta device, exact statistics, histograms; no plots).
3. Prints parameters per second of both (per wall-clock second, and per CPU second
   of the process, which other processes on a shared machine disturb less), their
   ratio (analyzer / floor), and the analyzer's peak RSS, which must stay under 2 GB.

Threads are pinned (``--threads``, default 1) in both. The numbers are only as
quiet as the machine: on a shared machine, rerun when it is idle.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(n_embd=1600, n_layer=48, n_head=25, vocab_size=50257, n_positions=1024)
BLOCKS_PER_SHARD = 4
RSS_LIMIT = 2_000_000_000  # 2 GB
DONE_MARK = ".complete"


def default_dir() -> Path:
    base = Path(os.environ.get("COMPRESS_CACHE") or Path.home() / ".cache" / "compress-suite")
    return base.expanduser() / "bench" / "gpt2-xl-random"


def _block_tensors(i: int, d: int, g) -> dict:
    import torch

    def normal(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    p = f"h.{i}."
    return {  # GPT-2 Conv1D weights are stored [in, out]
        p + "ln_1.weight": 1.0 + normal(d), p + "ln_1.bias": normal(d),
        p + "attn.c_attn.weight": normal(d, 3 * d), p + "attn.c_attn.bias": normal(3 * d),
        p + "attn.c_proj.weight": normal(d, d), p + "attn.c_proj.bias": normal(d),
        p + "ln_2.weight": 1.0 + normal(d), p + "ln_2.bias": normal(d),
        p + "mlp.c_fc.weight": normal(d, 4 * d), p + "mlp.c_fc.bias": normal(4 * d),
        p + "mlp.c_proj.weight": normal(4 * d, d), p + "mlp.c_proj.bias": normal(d),
    }


def write_checkpoint(folder: Path, n_layer: int = SHAPE["n_layer"]) -> int:
    """Write the random GPT-2-XL-shaped checkpoint shard by shard; returns parameters."""
    import torch
    import transformers as tf
    from safetensors.torch import save_file

    from compress.fileio import atomic_write_json

    d, vocab = SHAPE["n_embd"], SHAPE["vocab_size"]
    need = 4 * (vocab * d + SHAPE["n_positions"] * d + n_layer * (12 * d * d + 13 * d))
    free = shutil.disk_usage(folder.parent if folder.parent.exists() else Path.home()).free
    if free < need * 1.1:
        raise SystemExit(f"error: need {need / 1e9:.1f} GB free disk for the checkpoint, "
                         f"{free / 1e9:.1f} GB free at {folder.parent}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    groups = [list(range(i, min(i + BLOCKS_PER_SHARD, n_layer)))
              for i in range(0, n_layer, BLOCKS_PER_SHARD)]
    n_shards = 1 + len(groups)
    weight_map, total, size = {}, 0, 0
    for s in range(n_shards):
        if s == 0:
            tensors = {
                "wte.weight": torch.randn(vocab, d, generator=g) * 0.02,
                "wpe.weight": torch.randn(SHAPE["n_positions"], d, generator=g) * 0.01,
                "ln_f.weight": 1.0 + torch.randn(d, generator=g) * 0.02,
                "ln_f.bias": torch.randn(d, generator=g) * 0.02,
            }
        else:
            tensors = {}
            for i in groups[s - 1]:
                tensors |= _block_tensors(i, d, g)
        name = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file(tensors, folder / name, metadata={"format": "pt"})
        for key, t in tensors.items():
            weight_map[key] = name
            total += t.numel()
            size += t.numel() * t.element_size()
        del tensors
    config = tf.GPT2Config(**(SHAPE | {"n_layer": n_layer}))
    config.architectures = ["GPT2LMHeadModel"]
    config.save_pretrained(folder)
    atomic_write_json(folder / "model.safetensors.index.json",
                      {"metadata": {"total_size": size}, "weight_map": weight_map})
    (folder / DONE_MARK).write_text(str(total))
    return total


# --- workers (run in their own processes) --------------------------------------------


def worker(kind: str, folder: Path, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    if kind == "floor":
        from safetensors import safe_open

        files = sorted(folder.glob("*.safetensors"))
        t0, c0 = time.perf_counter(), time.process_time()
        params, acc = 0, 0.0
        for f in files:
            with safe_open(f, "pt") as fh:
                for key in fh.keys():
                    t = fh.get_tensor(key)
                    acc += float(torch.sum(t))
                    params += t.numel()
                    del t
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    else:
        from eval.analyze import analyze_folder

        rep = analyze_folder(folder)
        cpu = rep["stream_cpu_s"]
        # throughput over the tensor streaming; setup (config, meta skeleton, first import
        # of the model code) is reported apart
        params, elapsed = rep["overall"]["params"], rep["stream_s"]
        acc = rep["overall"]["mean"]
    return {
        "kind": kind,
        "params": params,
        "elapsed_s": elapsed,
        "params_per_s": params / elapsed,
        "cpu_s": cpu,
        "params_per_cpu_s": params / cpu,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "check": acc,
        "setup_s": rep["elapsed_s"] - rep["stream_s"] if kind == "analyze" else 0.0,
        **({"components": {k: v["params"] for k, v in rep["by_component"].items()},
            "absent_from_files": rep["absent_from_files"]} if kind == "analyze" else {}),
    }


def run_worker(kind: str, folder: Path, threads: int, extra: list[str] | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, "--dir", str(folder),
         "--threads", str(threads), *(extra or [])],
        capture_output=True, text=True, env=env, cwd=REPO,
    )
    if out.returncode != 0:
        raise SystemExit(f"error: {kind} worker failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None,
                        help=f"checkpoint folder (default: {default_dir()})")
    parser.add_argument("--keep", action="store_true",
                        help="keep the checkpoint for the next run (and reuse a kept one)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating floor/analyzer rounds (default: 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--layers", type=int, default=SHAPE["n_layer"],
                        help="blocks (default 48 = GPT-2-XL; fewer for a quick try)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--worker", choices=("floor", "analyze", "write"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    folder = args.dir or default_dir()

    if args.worker == "write":
        print(json.dumps({"params": write_checkpoint(folder, args.layers)}))
        return 0
    if args.worker:
        print(json.dumps(worker(args.worker, folder, args.threads)))
        return 0

    reuse = args.keep and (folder / DONE_MARK).is_file()
    t0 = time.perf_counter()
    if reuse:
        print(f"reusing {folder}")
    else:
        print(f"writing a {args.layers}-layer GPT-2-XL-shaped random checkpoint to {folder}")
        # in a subprocess: Linux keeps ru_maxrss across fork+exec, so this process must
        # stay small for the workers' peak RSS to be their own
        run_worker("write", folder, args.threads, ["--layers", str(args.layers)])
    write_s = time.perf_counter() - t0
    try:
        run_worker("floor", folder, args.threads)  # warm-up: files into the page cache
        rounds = []
        for _ in range(max(1, args.rounds)):
            rounds.append((run_worker("floor", folder, args.threads),
                           run_worker("analyze", folder, args.threads)))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    floor_rate = statistics.median(f["params_per_s"] for f, _ in rounds)
    ana_rate = statistics.median(a["params_per_s"] for _, a in rounds)
    floor_cpu = statistics.median(f["params_per_cpu_s"] for f, _ in rounds)
    ana_cpu = statistics.median(a["params_per_cpu_s"] for _, a in rounds)
    peak = max(a["peak_rss_bytes"] for _, a in rounds)
    params = rounds[0][1]["params"]
    result = {
        "checkpoint": {**SHAPE, "n_layer": args.layers, "params": params,
                       "bytes": params * 4, "write_s": None if reuse else write_s},
        "threads": args.threads,
        "rounds": [{"floor": f, "analyze": a} for f, a in rounds],
        "floor_params_per_s": floor_rate,
        "analyze_params_per_s": ana_rate,
        "ratio_analyze_to_floor": ana_rate / floor_rate,
        "floor_params_per_cpu_s": floor_cpu,
        "analyze_params_per_cpu_s": ana_cpu,
        "ratio_analyze_to_floor_cpu": ana_cpu / floor_cpu,
        "analyze_peak_rss_bytes": peak,
        "rss_limit_bytes": RSS_LIMIT,
        "note": "medians over rounds; floor = safe_open + torch.sum per tensor; both read "
        "from the page cache after a warm-up pass; CPU-time rates are less disturbed by other "
        "processes than wall-clock rates; rerun on a quiet machine for final numbers",
    }
    print(f"checkpoint: {params:,} parameters ({params * 4 / 1e9:.1f} GB float32), "
          f"threads {args.threads}, {len(rounds)} round(s)")
    for i, (f, a) in enumerate(rounds):
        print(f"  round {i + 1}: floor {f['params_per_s'] / 1e6:8.1f} M params/s "
              f"({f['elapsed_s']:.1f} s)   analyzer {a['params_per_s'] / 1e6:8.1f} M params/s "
              f"({a['elapsed_s']:.1f} s, peak RSS {a['peak_rss_bytes'] / 1e6:.0f} MB)")
    print(f"floor    {floor_rate / 1e6:.1f} M params/s wall, {floor_cpu / 1e6:.1f} M per CPU-s")
    print(f"analyzer {ana_rate / 1e6:.1f} M params/s wall, {ana_cpu / 1e6:.1f} M per CPU-s  "
          f"= {ana_rate / floor_rate:.3f} x floor (wall), {ana_cpu / floor_cpu:.3f} x (CPU time)")
    ok = peak < RSS_LIMIT
    print(f"analyzer peak RSS {peak / 1e6:.0f} MB ({'under' if ok else 'OVER'} the 2 GB limit)")
    comps = rounds[0][1]["components"]
    d = SHAPE["n_embd"]
    expected = {"attn_qkv": args.layers * d * 3 * d, "ffn_in": args.layers * d * 4 * d,
                "embedding": (SHAPE["vocab_size"] + SHAPE["n_positions"]) * d}
    mapped = all(comps.get(k) == v for k, v in expected.items()) and "other" not in comps
    print(f"components mapped from the architecture table: {'yes' if mapped else 'NO'} "
          f"({', '.join(f'{k} {v:,}' for k, v in comps.items())}); tied and absent from the "
          f"files: {', '.join(rounds[0][1]['absent_from_files']['tied']) or 'none'}")
    result["components"] = comps
    if args.out:
        from compress.fileio import atomic_write_json

        atomic_write_json(args.out, result)
    return 0 if ok and mapped else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
