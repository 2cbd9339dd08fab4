"""CPU latency of a dense model against the same model with 50% of its FFN neurons removed
(or, with ``--student-layers N``, against a distillation student of N blocks).

    python bench/structured_speed.py                        # smollm2-135m, 2 threads
    python bench/structured_speed.py --model smollm2-135m --ffn-ratio 0.5 --rounds 15
    python bench/structured_speed.py --model minilm-l6-sentiment --student-layers 3

Protocol: both models in one process, ``torch.set_num_threads`` pinned, inference
mode, inputs of batch 1 x 128 and 8 x 128 tokens (fixed random ids); three warm-up
forwards per model and shape, then ``rounds`` rounds in which the two models run
alternately (order flipped every round, so drift hits both alike); the median of each
is reported with the ratio dense / pruned. The structured model comes from the
``structured`` recipe with ``importance=magnitude`` (which neurons go does not change
the speed); the student from the ``distill`` recipe with ``steps=0`` (every other block;
training does not change the speed), written to ``distill_speed.json``. Load average before and after is recorded: timings taken while other
processes share the cores are provisional and must be re-run on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SHAPES = ((1, 128), (8, 128))


def _bytes_on_disk(model, tok) -> int:
    from compress.saving import save_model

    with tempfile.TemporaryDirectory() as d:
        save_model(model, tok, Path(d) / "m")
        return sum(f.stat().st_size for f in (Path(d) / "m").glob("*.safetensors"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ffn-ratio", type=float, default=0.5)
    parser.add_argument("--student-layers", type=int, default=None,
                        help="time a distillation student of this many blocks instead")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = parser.parse_args(argv)

    import torch

    from compress import Context, compress, make_config
    from compress.fileio import atomic_write_json
    from compress.models import load_model
    from eval.machine import OtherCPU, cpu_info, quiet_reading
    from eval.paired import ratio_interval

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    others = OtherCPU()
    loaded = load_model(args.model)
    dense = loaded.model.eval()
    if args.student_layers:
        pruned = compress(copy.deepcopy(dense), make_config(
            "distill", student_layers=args.student_layers, steps=0),
            Context(tokenizer=loaded.tokenizer, task=loaded.task))
    else:
        pruned = compress(copy.deepcopy(dense), make_config(
            "structured", ffn_ratio=args.ffn_ratio, importance="magnitude"), Context())
    vocab = dense.config.vocab_size
    g = torch.Generator().manual_seed(0)
    inputs = {s: torch.randint(0, vocab, s, generator=g) for s in SHAPES}
    models = {"dense": dense, "pruned": pruned}
    times: dict[tuple[str, tuple], list[float]] = {(m, s): [] for m in models for s in SHAPES}

    def run(name: str, shape: tuple) -> float:
        ids = inputs[shape]
        t0 = time.perf_counter()
        with torch.inference_mode():
            models[name](input_ids=ids, attention_mask=torch.ones_like(ids))
        return time.perf_counter() - t0

    for s in SHAPES:
        for name in models:
            for _ in range(3):
                run(name, s)
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for s in SHAPES:
            for name in order:
                times[(name, s)].append(run(name, s))
    load_end = os.getloadavg()
    rows = []
    for s in SHAPES:
        d = statistics.median(times[("dense", s)])
        p = statistics.median(times[("pruned", s)])
        rows.append({"batch": s[0], "seq_len": s[1], "dense_ms": round(d * 1e3, 2),
                     "pruned_ms": round(p * 1e3, 2), "speedup": round(d / p, 3),
                     # the same rounds paired: pruned / dense with its 95% interval
                     "pruned_vs_dense": ratio_interval(times[("dense", s)], times[("pruned", s)]),
                     "dense_all_ms": [round(t * 1e3, 2) for t in times[("dense", s)]],
                     "pruned_all_ms": [round(t * 1e3, 2) for t in times[("pruned", s)]]})
        print(f"{s[0]} x {s[1]}: dense {d * 1e3:8.1f} ms   pruned {p * 1e3:8.1f} ms   "
              f"speedup {d / p:.2f}x")
    n_dense = sum(p.numel() for p in dense.parameters())
    n_pruned = sum(p.numel() for p in pruned.parameters())
    # the suite's one definition of a busy machine (eval.machine.is_busy)
    other_cores = others.cores()
    machine = quiet_reading(other_cores, (load_start[0], load_end[0]))
    quiet = machine["quiet"] is not False
    result = {
        "benchmark": "distill_speed" if args.student_layers else "structured_speed",
        "model": args.model,
        "ffn_ratio": None if args.student_layers else args.ffn_ratio,
        "student_layers": args.student_layers,
        "note": "'pruned' is the distillation student" if args.student_layers else None,
        "threads": args.threads,
        "rounds": args.rounds,
        "params_dense": n_dense,
        "params_pruned": n_pruned,
        "bytes_on_disk_dense": _bytes_on_disk(dense, loaded.tokenizer),
        "bytes_on_disk_pruned": _bytes_on_disk(pruned, loaded.tokenizer),
        "intermediate_size": [dense.config.to_dict().get("intermediate_size"),
                              pruned.config.to_dict().get("intermediate_size")],
        "results": rows,
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "other_processes_cores": other_cores,
        "cpu": cpu_info(),
        "machine": machine,
        "provisional": not quiet,
        "protocol": __doc__,
    }
    print(f"params {n_dense:,} -> {n_pruned:,}; load average {load_start[0]:.1f} -> "
          f"{load_end[0]:.1f}{'' if quiet else ' (busy machine: provisional timings)'}")
    name = (f"distill_speed_{args.model}.json" if args.student_layers
            else "structured_speed.json")
    atomic_write_json(args.out / name, result)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
