"""Block importance (skip + loss) on SmolLM2-135M, replaying the blocks before the skipped
one or recomputing them (compress.pruning.influence.REPLAY): alternating rounds in one
process, 2 threads, other processes' CPU recorded.

    .venv/bin/python bench/depth_replay.py reports/bench/depth_replay_smollm2.json
"""
import json
import statistics
import sys
import time

import torch

from compress import data
from compress.calibration import CalibrationSpec, calibration_batches
from compress.context import Context
from compress.models import load_model
from compress.pruning import influence
from eval.machine import BusyMeter, cpu_info


def main(out_path: str) -> None:
    torch.set_num_threads(2)
    loaded = load_model("smollm2-135m")
    model, tok = loaded.model, loaded.tokenizer
    spec = CalibrationSpec(sequences=2, seq_len=256)
    ctx = Context(tokenizer=tok, calibration=data.calibration_for("causal-lm", 64), task="causal-lm",
                  calib=spec)
    batches = calibration_batches(ctx, model)
    times = {True: [], False: []}
    scores = {}
    meter = BusyMeter()
    for rnd in range(2):
        for replay in ((True, False) if rnd % 2 == 0 else (False, True)):
            influence.REPLAY = replay
            t0 = time.perf_counter()
            s = influence.block_importance(model, batches, "causal-lm", ("skip", "loss"))
            times[replay].append(time.perf_counter() - t0)
            scores[replay] = s["decoder"].skip
    load = meter.stop()
    diff = max(abs(a - b) for a, b in zip(scores[True], scores[False], strict=True))
    out = {"question": "block importance (skip + loss, one-shot) with the blocks before the skipped "
           "one replayed vs recomputed", "model": "smollm2-135m", "calibration": "2 x 256 tokens",
           "threads": 2, "rounds": 2, "seconds_replay": times[True], "seconds_recompute": times[False],
           "ratio_median": statistics.median(times[True]) / statistics.median(times[False]),
           "max_abs_skip_score_difference": diff, "machine": load, "cpu": cpu_info()}
    json.dump(out, open(out_path, "w"), indent=1, default=str)
    print(json.dumps({k: out[k] for k in ("seconds_replay", "seconds_recompute", "ratio_median",
                                          "max_abs_skip_score_difference")}))
    print(load)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "reports/bench/depth_replay_smollm2.json")
