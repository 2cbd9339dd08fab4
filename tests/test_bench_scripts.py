"""The bench scripts run: every one compiles, and quant_speed completes a smoke run."""

from __future__ import annotations

import importlib.util
import json
import py_compile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_bench_script_compiles(script):
    py_compile.compile(str(BENCH / script), doraise=True)


def test_quant_speed_smoke_run_on_a_tiny_decoder(tmp_path):
    spec = importlib.util.spec_from_file_location("quant_speed", BENCH / "quant_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "qs.json"
    assert mod.main(["--model", "tiny-llama", "--rounds", "1", "--inner", "1",
                     "--gen-tokens", "2", "--out", str(out)]) in (0, None)
    doc = json.loads(out.read_text())
    methods = doc["results"][0]["methods"]
    assert set(methods) == set(mod.METHODS)
    for name, entry in methods.items():
        assert entry["generate_per_token_speedup_vs_fp32"] > 0, name
        assert entry["argmax_agreement"] > 0.9, name  # a speed-up from a broken model is no speed-up
    assert methods["fp32"]["generate_per_token_speedup_vs_fp32"] == 1.0


def test_moe_ffn_smoke_run_records_ratio_interval_path_and_machine(tmp_path):
    import sys

    spec = importlib.util.spec_from_file_location("moe_ffn", BENCH / "moe_ffn.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["moe_ffn"] = mod  # its dataclass looks its module up
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop("moe_ffn", None)
    assert mod.main(["--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "moe_ffn-quick.json").read_text())
    assert doc["meta"]["cpu"]["isa_summary"] and "quiet" in doc["meta"]["machine_quiet"]
    for row in doc["rows"]:
        lo, hi = row["ci95"]
        assert lo <= row["ratio"] <= hi and row["path"] in ("single", "batched", "grouped", "dense")
    # every expert active: the layer falls back to the dense computation
    assert {r["path"] for r in doc["rows"] if r["active_fraction"] == 1.0} == {"dense"}


def test_cpu_engines_smoke_run_records_paired_ratios_quality_and_bars(tmp_path):
    spec = importlib.util.spec_from_file_location("cpu_engines", BENCH / "cpu_engines.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "ce.json"
    assert mod.main(["--model", "tiny-llama", "--engines", "onnxruntime", "--weights", "fp32",
                     "int4", "--rounds", "2", "--gen-tokens", "3", "--group-size", "16",
                     "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["cpu"]["isa_summary"] and "quiet" in doc["machine"]
    res = doc["results"][0]
    assert set(res["variants"]) == {"eager", "onnxruntime-fp32", "onnxruntime-int4"}
    fp32 = res["variants"]["onnxruntime-fp32"]
    assert fp32["quality"]["greedy_agreement"] == 1.0  # the engine in fp32 decodes like eager
    vs = res["variants"]["onnxruntime-int4"]["generate_ms_per_token_vs_engine_fp32"]
    assert vs["ci95"][0] <= vs["ratio"] <= vs["ci95"][1]
    # the decode step alone: generation minus a one-token generation, rounds where noise
    # made that difference negative dropped (all variants alike, so ratios stay paired)
    assert 0 <= res["decode_rounds_kept"] <= 2
    if res["decode_rounds_kept"]:
        assert {m["weights"] for m in res["must_show"]} == {"int4"}
        assert all(m["workload"] == "decode_ms_per_token" for m in res["must_show"])


def test_moe_granularity_smoke_run_on_a_tiny_decoder(tmp_path):
    spec = importlib.util.spec_from_file_location("moe_granularity", BENCH / "moe_granularity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from compress.tiny import tiny_model

    model, tok = tiny_model("llama", num_hidden_layers=2)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "mg.json"
    assert mod.main(["--model", str(tmp_path / "m"), "--blocks", "0,1", "--experts", "4,8",
                     "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["block"].rsplit(".", 1)[-1] for r in doc["blocks"]] == ["0", "1"]
    for row in doc["blocks"]:
        assert set(row["experts_oracle"]) == set(row["experts_learned"]) == {"4", "8"}
        # a per-token choice of single neurons keeps more than one fixed half for all tokens
        assert 0 <= row["neuron_oracle"] < row["static"] < 1.5
        # the low-rank neuron router is charged for its weights: fewer neurons kept
        for low in row["neuron_lowrank"].values():
            assert low["neurons_kept"] < row["ff"] // 2 and low["rel_error"] >= 0
            assert low["router_share"] > 0
    assert doc["calibration"]["tokens"] > 0 and doc["active_fraction"] == 0.5


#: the statistics class of locuslab/wanda's lib/layerwrapper.py (its running mean of the
#: squared input norms per column), written out so the test needs no checkout
_WRAPPED_GPT = '''
import torch
import torch.nn as nn
class WrappedGPT:
    def __init__(self, layer, layer_id=0, layer_name="none"):
        self.layer = layer
        self.columns = layer.weight.data.shape[1]
        self.scaler_row = torch.zeros((self.columns), device=layer.weight.device)
        self.nsamples = 0
    def add_batch(self, inp, out):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if isinstance(self.layer, nn.Linear):
            if len(inp.shape) == 3:
                inp = inp.reshape((-1, inp.shape[-1]))
            inp = inp.t()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(torch.float32)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples
'''


def test_wanda_reference_loop_prunes_exactly_what_the_wanda_recipe_prunes():
    import copy
    import tempfile
    import types

    import torch

    from compress import compress, make_config
    from compress.calibration import CalibrationSpec, calibration_set
    from compress.cli import build_context
    from compress.models import load_model
    from compress.tiny import tiny_model

    spec = importlib.util.spec_from_file_location("wanda_reference", BENCH / "wanda_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    wrapper = types.ModuleType("layerwrapper")
    exec(_WRAPPED_GPT, wrapper.__dict__)  # noqa: S102

    model, tok = tiny_model("llama", num_hidden_layers=2)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        tok.save_pretrained(d)
        loaded = load_model(d)
    context = build_context(loaded, CalibrationSpec(8, 32))
    ours = compress(copy.deepcopy(loaded.model), make_config("wanda", sparsity=0.5), context)
    ref = copy.deepcopy(loaded.model).eval()
    cal = calibration_set(context, ref)
    mod.prune_wanda_reference(ref, [s.input_ids for s in cal.sequences], wrapper.WrappedGPT, 0.5)
    pruned = 0
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        if ".layers." in name and a.dim() == 2:
            assert torch.equal(a == 0, b == 0), name
            pruned += 1
    assert pruned == 14  # 7 linears in each of the 2 blocks


def test_wanda_reference_refuses_a_folder_that_is_not_the_repo(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("wanda_reference", BENCH / "wanda_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--repo", str(tmp_path)]) == 2
    assert "not a git checkout of locuslab/wanda" in capsys.readouterr().err
