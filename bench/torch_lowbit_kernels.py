"""torch's own CPU low-bit matmuls (the kernels torchao's CPU int4 / int8 weight-only
layouts call) against fp32 ``F.linear``, one token at a time, SmolLM2's shapes.

    python bench/torch_lowbit_kernels.py            # writes reports/bench/torch_lowbit_kernels.json

Kernels: ``aten._weight_int4pack_mm_for_cpu`` (int4 codes packed by
``aten._convert_weight_to_int4pack_for_cpu``, groups of ``--group-size``) and
``aten._weight_int8pack_mm`` (int8 weights, one scale per output row), against
``F.linear`` with the fp32 weight, for an activation of one row (decoding). Alternating
rounds, ``--inner`` calls per timing (:mod:`eval.paired`); ratio = kernel / fp32 time
with its 95% interval. The JSON records the CPU and the CPU other processes used.
This is the torchao candidate of the CPU-engine comparison: installing torchao adds
its Python layouts around these same kernels.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: SmolLM2-135M: q/o/gate/up (1536 x 576 and 576 x 576 family), down (576 x 1536), LM head
SHAPES = ((1536, 576), (576, 1536), (576, 576), (49152, 576))


def main(argv: list[str] | None = None) -> int:
    from compress.fileio import atomic_write_json
    from eval.machine import OtherCPU, cpu_info, quiet_reading
    from eval.paired import alternate, ratio_interval

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--inner", type=int, default=50)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--out", type=Path, default=Path("reports/bench/torch_lowbit_kernels.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = args.group_size
    rows, others = [], OtherCPU()
    for n, k in SHAPES:
        w, x = torch.randn(n, k), torch.randn(1, k)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            torch.randint(0, 16, (n, k), dtype=torch.int32), 1)
        scales_zeros = torch.randn(k // g, n, 2)
        w8, s8 = torch.randint(-127, 127, (n, k), dtype=torch.int8), torch.rand(n)
        fns = {"fp32": lambda w=w, x=x: F.linear(x, w),
               "int4": lambda p=packed, sz=scales_zeros, x=x: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, g, sz),
               "int8": lambda w8=w8, s8=s8, x=x: torch.ops.aten._weight_int8pack_mm(x, w8, s8)}
        with torch.inference_mode():
            t = alternate(fns, rounds=args.rounds, warmup=3, inner=args.inner)
        row = {"out": n, "in": k, "fp32_us": round(statistics.median(t["fp32"]) * 1000, 2)}
        for kind in ("int4", "int8"):
            row[f"{kind}_us"] = round(statistics.median(t[kind]) * 1000, 2)
            row[f"{kind}_vs_fp32"] = ratio_interval(t["fp32"], t[kind])
        rows.append(row)
        print(f"{n} x {k}: fp32 {row['fp32_us']} us, int4 {row['int4_us']} us "
              f"({row['int4_vs_fp32']['ratio']}x), int8 {row['int8_us']} us "
              f"({row['int8_vs_fp32']['ratio']}x)", flush=True)
    machine = quiet_reading(others.cores())
    atomic_write_json(args.out, {"bench": "torch_lowbit_kernels", "threads": args.threads,
                                 "group_size": g, "torch": torch.__version__, "cpu": cpu_info(),
                                 "machine": machine, "provisional": machine["quiet"] is False,
                                 "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
