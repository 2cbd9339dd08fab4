"""Wanda by the paper's own code on the suite's calibration tokens, to check ``wanda`` against it.

    python bench/wanda_reference.py --repo PATH/TO/locuslab-wanda [--model smollm2-135m]

Runs the per-block loop of ``prune_wanda`` from the reference repository (Sun et al. 2023,
arXiv:2306.11695; ``lib/prune.py``), with the repository's own ``WrappedGPT`` statistics
class loaded from ``--repo`` (``git show HEAD:lib/layerwrapper.py``), on a decoder whose
blocks sit at ``model.model.layers`` (Llama-like). The loop is transcribed rather than
imported because the repository's calibration loader downloads C4 and its block calls
predate ``position_embeddings``; everything else follows it: one forward of the dense
block collects every linear's input norms, each output row loses its lowest
``|W| * ||X_j||`` half, and the pruned block's outputs feed the next block. The tokens are
the suite's calibration set (``compress.calibration``, default 64 x 256), the score the
suite's full ``ppl_wiki`` (24 windows of 512 tokens). The JSON records the repository
commit, the calibration record and the perplexity; compare it with ``wanda-50`` in
``reports/bench/method_quality_<model>.json`` (same calibration sha256).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compress.calibration import CalibrationSpec, calibration_set  # noqa: E402
from compress.cli import build_context  # noqa: E402
from compress.fileio import atomic_write_json  # noqa: E402
from compress.models import load_model  # noqa: E402
from eval.machine import cpu_info  # noqa: E402


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout


def _linears(module: nn.Module, name: str = "") -> dict[str, nn.Linear]:
    """The repository's ``find_layers`` (nn.Linear only)."""
    if type(module) is nn.Linear:
        return {name: module}
    out: dict[str, nn.Linear] = {}
    for child_name, child in module.named_children():
        out.update(_linears(child, f"{name}.{child_name}" if name else child_name))
    return out


@torch.no_grad()
def prune_wanda_reference(model, sequences: list[torch.Tensor], wrapped_gpt, sparsity: float):
    inps = [model.model.embed_tokens(s.view(1, -1)) for s in sequences]
    pos = torch.arange(inps[0].shape[1]).view(1, -1)
    pe = model.model.rotary_emb(inps[0], pos)

    def call(layer, x):
        out = layer(x, attention_mask=None, position_ids=pos, position_embeddings=pe)
        return out[0] if isinstance(out, tuple) else out

    for layer in model.model.layers:
        subset = _linears(layer)
        wrapped = {n: wrapped_gpt(subset[n]) for n in subset}
        hooks = [subset[n].register_forward_hook(
            lambda _m, inp, out, w=wrapped[n]: w.add_batch(inp[0].data, out.data))
            for n in subset]
        for x in inps:
            call(layer, x)
        for h in hooks:
            h.remove()
        for n in subset:
            metric = subset[n].weight.data.abs() * torch.sqrt(
                wrapped[n].scaler_row.reshape((1, -1)))
            mask = torch.zeros_like(metric) == 1
            order = torch.sort(metric, dim=-1, stable=True)[1]
            mask.scatter_(1, order[:, :int(metric.shape[1] * sparsity)], True)
            subset[n].weight.data[mask] = 0
        inps = [call(layer, x) for x in inps]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, required=True,
                        help="a git checkout of github.com/locuslab/wanda")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/wanda_reference.json"))
    args = parser.parse_args(argv)
    try:
        src = _git(args.repo, "show", "HEAD:lib/layerwrapper.py")
        commit = _git(args.repo, "rev-parse", "HEAD").strip()
    except (OSError, subprocess.CalledProcessError):
        print(f"error: {args.repo} is not a git checkout of locuslab/wanda; clone it and pass "
              "--repo", file=sys.stderr)
        return 2
    module = types.ModuleType("layerwrapper")
    exec(compile(src, "layerwrapper.py", "exec"), module.__dict__)  # noqa: S102 - the repo's class
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    model = loaded.model.eval()
    context = build_context(loaded, CalibrationSpec())
    cal = calibration_set(context, model)
    prune_wanda_reference(model, [s.input_ids for s in cal.sequences], module.WrappedGPT,
                          args.sparsity)
    from quant_quality import _ppl

    ppl, protocol = _ppl(model, loaded.tokenizer, "wiki", 24)
    print(f"reference prune_wanda, sparsity {args.sparsity}: ppl_wiki {ppl:.2f}")
    atomic_write_json(args.out, {
        "bench": "wanda_reference", "model": args.model, "sparsity": args.sparsity,
        "reference": {"repo": "github.com/locuslab/wanda", "commit": commit,
                      "code": "prune_wanda's block loop, WrappedGPT from lib/layerwrapper.py"},
        "calibration": cal.record, "ppl_wiki": ppl, "protocol": protocol,
        "compare_with": f"reports/bench/method_quality_{args.model}.json wanda-50",
        "cpu": cpu_info(), "seconds": round(time.perf_counter() - t0, 1)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
