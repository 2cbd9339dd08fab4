"""The recipe x family matrix: every registered recipe on tiny models of many families.

One cell compresses a tiny random model of one family with one recipe (settings sized
for seconds, :data:`CELL_CONFIG`) and checks:

* the output is finite;
* ``save_model`` -> ``load_compressed`` gives the same outputs;
* the recipe's own claim (:func:`check_claim`): target sparsity reached; a structured
  model smaller, its config matching its tensors (the reload proves it); quantized
  weights on their grid; a MoE FFN computing only routed experts; a student of the
  asked-for depth; runtime formats holding their quantized modules.

A cell may instead be a one-line :class:`UserError` refusal. ``tests/test_families.py``
runs the cells; ``python -m tests.family_matrix`` renders the last run's outcomes
(``build/family_matrix.json``) as the markdown table README carries.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compress import Context, UserError, compress, make_config
from compress.arch import arch_for, out_in, targeted_linears
from compress.calibration import CalibrationSpec
from compress.registry import get_recipe
from compress.saving import load_compressed, save_model
from compress.tiny import MATRIX_FAMILIES, tiny_model
from compress.traits import RECOVERY

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "build" / "family_matrix.json"
WIDTH = 64  # hidden size of the matrix models (bitsandbytes 4-bit needs widths of 64)

TEXTS = ["The quick brown fox jumps over the lazy dog. Compression makes models smaller.",
         "The capital of France is Paris, and the capital of Italy is Rome.",
         "Pruning removes weights; quantization rounds them; distillation trains a student.",
         "Numbers like 1, 2, 3, 10, 100 and 2026 appear in news text."] * 6
PAIRS = [("the quick brown fox jumps", "The quick brown fox jumps."),
         ("paris is the capital of france", "Paris is the capital of France."),
         ("numbers like one two and three", "Numbers like one, two and three.")] * 6
TASK = {"decoder": "causal-lm", "encoder": "embedding", "encoder-decoder": "seq2seq"}
#: the calibration every calibrating recipe reads (compress.calibration): 4 x 16 tokens.
CALIB_SPEC = CalibrationSpec(sequences=4, seq_len=16)

#: per recipe: the settings of one cell (small calibration, a few steps).
CELL_CONFIG: dict[str, dict[str, Any]] = {
    "identity": {},
    "magnitude": {"sparsity": 0.5},
    "wanda": {"sparsity": 0.5},
    "sparsegpt": {"sparsity": 0.5},
    "owl": {"sparsity": 0.5},
    "structured": {"ffn_ratio": 0.5, "heads_ratio": 0.5},
    "depth": {"target": 0.75},
    "rtn": {"bits": 4, "granularity": "group", "group_size": 16},
    "gptq": {"bits": 4, "granularity": "group", "group_size": 16},
    "awq": {"bits": 4, "granularity": "group", "group_size": 16},
    "hqq": {"bits": 4, "granularity": "group", "group_size": 16},
    "rotate": {"bits": 4, "granularity": "group", "group_size": 16},
    "smoothquant": {},
    "dynamic-int8": {},
    "onnx-int8": {},
    "runtime": {"weights": "int8"},
    "bnb-int8": {},
    "bnb-4bit": {},
    "quanto": {"weights": "int8"},
    "qlora": {"steps": 2, "seq_len": 16, "batch_size": 2},
    "distill": {"student_layers": 1, "steps": 2, "batch_size": 2, "seq_len": 16,
                "eval_every": 2, "eval_samples": 2},
    "moefy": {"num_experts": 4, "active_fraction": 0.5, "router": "similarity",
              "partition": "weights", "timing_rounds": 0, "calibration_tokens": 64},
    # on the dense model, with a copy of it as the teacher (the cell's context has one)
    "recover": {"steps": 2, "batch_size": 2, "seq_len": 16, "eval_every": 1,
                "eval_samples": 2},
}


def inputs_for(model: nn.Module) -> dict[str, torch.Tensor]:
    from compress.tiny import VOCAB

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB, (2, 12), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        out["decoder_input_ids"] = torch.randint(5, VOCAB, (2, 6), generator=g)
    return out


def outputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        out = model(**inputs)
    y = getattr(out, "logits", None)
    if y is None:
        y = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return y.float()


def _sparsity_claim(out: nn.Module, cfg) -> str:
    zeros = total = 0
    for mod, _ in targeted_linears(out).values():
        w = out_in(mod)
        zeros += int((w == 0).sum())
        total += w.numel()
    got = zeros / total
    assert abs(got - cfg.sparsity) < 0.02, f"sparsity {got:.3f}, asked {cfg.sparsity}"
    return f"{got:.2f} zero"


def _grid_claim(out: nn.Module, cfg) -> str:
    for name, (mod, _) in targeted_linears(out).items():
        w = out_in(mod).detach()
        g = cfg.group_size if cfg.granularity == "group" else w.shape[1]
        if w.shape[1] % g:
            continue
        groups = w.reshape(w.shape[0], -1, g)
        distinct = max(len(torch.unique(row)) for row in groups.reshape(-1, g))
        assert distinct <= 2 ** cfg.bits, f"{name}: {distinct} values in a group"
    return f"{cfg.bits}-bit grid"


def _depth(model: nn.Module) -> dict[str, int]:
    return {s.role: s.n_blocks * s.calls_per_block for s in arch_for(model).stacks}


def _depth_claim(cfg, model_before: dict[str, Any], out: nn.Module,
                 info: dict[str, Any]) -> str:
    """Fewer blocks; non-embedding parameters at most the target, within one block of it
    (a shared-weight stack: calls, not parameters, are what the target counts)."""
    from compress.pruning import sizes

    depth = _depth(out)
    before = model_before["depth"]
    assert sum(depth.values()) < sum(before.values()), f"depth {depth}, dense {before}"
    assert depth == {r: len(k) for r, k in info["depth"]["kept"].items()}
    if model_before["shared"]:
        return f"calls {before} -> {depth}"
    dense, largest = model_before["non_embedding"], model_before["largest_block"]
    kept = sizes.non_embedding(out)
    assert kept <= cfg.target * dense, f"non-embedding {kept / dense:.3f} > {cfg.target}"
    assert kept > cfg.target * dense - largest, f"{kept / dense:.3f}: more than a block below"
    return f"depth {before} -> {depth}, {kept / dense:.2f} of non-embedding params"


def check_claim(recipe: str, cfg, model_before: dict[str, Any], out: nn.Module,
                info: dict[str, Any]) -> str:
    """Assert what ``recipe`` claims about ``out``; returns a short description."""
    if recipe == "identity":
        return "unchanged"
    if recipe in ("magnitude", "wanda", "sparsegpt") or (
            hasattr(cfg, "sparsity") and getattr(cfg, "pattern", "unstructured") == "unstructured"
            and get_recipe(recipe).family == "pruning" and recipe != "structured"):
        return _sparsity_claim(out, cfg)
    if recipe == "structured":
        after = sum(p.numel() for p in out.parameters())
        assert after < model_before["params"], "structured pruning removed nothing"
        return f"{after / model_before['params']:.2f} of params"
    if recipe == "depth":
        return _depth_claim(cfg, model_before, out, info)
    if recipe in ("rtn", "gptq", "hqq"):
        return _grid_claim(out, cfg)
    if recipe == "distill":
        depth = _depth(out)
        want = {r: min(n, cfg.student_layers) for r, n in model_before["depth"].items()}
        assert depth == want, f"student depth {depth}, asked {want}"
        return f"depth {depth}"
    if recipe == "recover":
        rec = info["recover"]
        assert rec["steps_done"] == cfg.steps, rec["stopped_by"]
        assert [p["step"] for p in rec["recovery_curve"]] == list(range(cfg.steps + 1))
        return f"{rec['steps_done']} steps, {rec['tokens_seen']} tokens"
    if recipe == "moefy":
        from compress.moe.layer import MoEFFN

        moes = [m for m in out.modules() if isinstance(m, MoEFFN)]
        assert moes and all(m.top_k < m.n_experts for m in moes), "no routed MoE FFN"
        return f"{len(moes)} MoE FFNs, top {moes[0].top_k}/{moes[0].n_experts}"
    quant = info.get("quant", {})
    if quant.get("int8_weights") is not None:  # an ONNX graph: its int8 weight elements
        assert quant["int8_weights"] > 0, "no int8 weight in the graph"
        return f"{quant['int8_weights']} int8 weights"
    layers = quant.get("layers")
    if layers is not None:
        assert layers > 0, "no linear was quantized"
        return f"{layers} quantized linears"
    return "ran"


def _block_sizes(model: nn.Module) -> dict[str, int]:
    from compress.pruning import sizes

    try:
        blocks = [n for counts in sizes.block_params(model).values() for n in counts]
        return {"non_embedding": sizes.non_embedding(model), "largest_block": max(blocks),
                "shared": all(s.shared for s in arch_for(model).stacks)}
    except UserError:  # no blocks found: the recipes that need them refuse on their own
        return {}


def run_cell(family: str, recipe: str, tmp: Path) -> dict[str, Any]:
    """Run one cell; returns its outcome ("ok" with the claim, or "refused" with the line)."""
    kind = MATRIX_FAMILIES[family][0]
    model, tok = tiny_model(family, width=WIDTH)
    task = TASK[kind]
    data = PAIRS if task == "seq2seq" else TEXTS
    # the dense teacher of a recovery step: a copy taken before any recipe changes the model
    dense = copy.deepcopy(model) if get_recipe(recipe).family == RECOVERY else None
    ctx = Context(tokenizer=tok, calibration=data, train=data, task=task, calib=CALIB_SPEC,
                  teacher=None if dense is None else (lambda: copy.deepcopy(dense)))
    cfg = make_config(recipe, **CELL_CONFIG[recipe])
    inputs = inputs_for(model)
    before = {"params": sum(p.numel() for p in model.parameters()), "depth": _depth(model),
              "out": outputs(model, inputs), **_block_sizes(model)}
    try:
        out = compress(model, cfg, ctx)
    except UserError as exc:
        line = str(exc)
        assert "\n" not in line, f"refusal is not one line: {line!r}"
        return {"outcome": "refused", "why": line}
    y = outputs(out, inputs)
    assert torch.isfinite(y).all(), "non-finite output"
    if recipe == "identity":
        torch.testing.assert_close(y, before["out"], rtol=0, atol=0)
    claim = check_claim(recipe, cfg, before, out, ctx.info)
    save_model(out, tok, tmp / "m")
    again = outputs(load_compressed(tmp / "m"), inputs)
    torch.testing.assert_close(again, y, rtol=0, atol=1e-5)
    return {"outcome": "ok", "claim": claim}


def record(family: str, recipe: str, result: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data.setdefault(family, {})[recipe] = result
    RESULTS.write_text(json.dumps(data, indent=1, sort_keys=True))


def render(data: dict[str, dict[str, dict]]) -> str:
    """The markdown table: one row per family, one column per recipe."""
    recipes = sorted({r for row in data.values() for r in row})
    lines = ["| family | kind | " + " | ".join(recipes) + " |",
             "|---|---|" + "---|" * len(recipes)]
    cells = refused = failed = 0
    for family in [f for f in MATRIX_FAMILIES if f in data]:
        row = data[family]
        marks = []
        for r in recipes:
            o = row.get(r, {}).get("outcome")
            cells += o is not None
            refused += o == "refused"
            failed += o == "failed"
            marks.append({"ok": "ok", "refused": "refused", "failed": "FAIL"}.get(o, ""))
        lines.append(f"| {family} | {MATRIX_FAMILIES[family][0]} | " + " | ".join(marks) + " |")
    pct = 100 * refused / cells if cells else math.nan
    lines.append("")
    lines.append(f"{len(data)} families x {len(recipes)} recipes = {cells} cells: "
                 f"{cells - refused - failed} ran and passed their checks, {refused} refused in "
                 f"one line ({pct:.1f}%), {failed} failed.")
    reasons = sorted({f"- {f} / {r}: {o['why']}" for f, row in data.items()
                      for r, o in row.items() if o.get("outcome") == "refused"})
    if reasons:
        lines += ["", "Refusals:", *reasons]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if not RESULTS.exists():
        sys.exit("no results: run  .venv/bin/python -m pytest -m families tests/test_families.py")
    sys.stdout.write(render(json.loads(RESULTS.read_text())))
