"""Interchange formats: compressed-tensors folders that plain transformers loads with the
same logits, the exact grid recovery behind them, and the save-format choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from compress import Context, UserError, compress, make_config
from compress.calibration import CalibrationSpec
from compress.export.compressed_tensors import export
from compress.export.grid import GRID_ATTR, marked, recover, unit_width
from compress.quant.rtn import QuantSpec, fake_quantize
from compress.saving import FORMAT_FILE, format_for, load_compressed, save_model
from compress.tiny import _TRAIN_TEXT, sample_inputs, tiny_model

pytest.importorskip("compressed_tensors")

CALIB = _TRAIN_TEXT[:8]
GPTQ4 = dict(bits=4, scheme="sym", granularity="group", group_size=16)  # packed codes

#: run by a fresh interpreter that never imports this suite: plain transformers only
PLAIN_LOAD = """
import sys, torch, transformers as tf
folder = sys.argv[1]
model = tf.AutoModelForCausalLM.from_pretrained(folder)
x = torch.load(folder + "/inputs.pt")
with torch.no_grad():
    torch.save(model(**x).logits, folder + "/logits.pt")
assert not any(m == "compress" or m.startswith(("compress.", "eval.")) for m in sys.modules)
print("plain-ok", type(model).__name__)
"""


def _plain_logits(folder, inputs) -> torch.Tensor:
    torch.save(dict(inputs), folder / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD, str(folder)],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
        timeout=300,
    )
    assert "plain-ok" in done.stdout, done.stderr[-2000:]
    return torch.load(folder / "logits.pt")


def _compressed(steps):
    model, tok = tiny_model("llama")
    ctx = Context(tokenizer=tok, calibration=CALIB, calib=CalibrationSpec(4, 32))
    for recipe, kw in steps:
        model = compress(model, make_config(recipe, **kw), ctx)
    return model, tok


@pytest.mark.parametrize(
    "steps",
    [
        [("gptq", GPTQ4)],
        [("wanda", {"sparsity": 0.5, "pattern": "2:4"})],
    ],
    ids=["gptq-4bit", "wanda-2:4"],
)
def test_plain_transformers_reloads_compressed_tensors_with_the_same_logits(steps, tmp_path):
    model, tok = _compressed(steps)
    info = export(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    if steps[0][0] == "gptq":
        assert config["format"] == "pack-quantized" and info["layers"] == 14
        assert all(g["weights"]["num_bits"] == 4 for g in config["config_groups"].values())
    else:
        assert config["sparsity_config"]["sparsity_structure"] == "2:4"
        assert config["sparsity_config"]["global_sparsity"] == pytest.approx(0.5)
    x = sample_inputs("llama")
    with torch.no_grad():
        ref = model(**x).logits
    torch.testing.assert_close(_plain_logits(tmp_path, x), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(4, "sym", "group", 16),
        QuantSpec(4, "asym", "group", 16),
        QuantSpec(8, "sym", "channel"),
        QuantSpec(8, "asym", "channel"),
        QuantSpec(3, "sym", "tensor"),
        QuantSpec(2, "asym", "group", 32),
    ],
)
def test_recover_reproduces_rounded_weights_bit_for_bit(spec):
    torch.manual_seed(0)
    w = fake_quantize(torch.randn(24, 48) * torch.rand(24, 1) * 3, spec)
    grid = recover(w, spec)
    assert torch.equal(grid.dequantize(), w)
    low = 0 if spec.scheme == "asym" else spec.qmin
    assert int(grid.codes.min()) >= low and int(grid.codes.max()) <= spec.qmax
    # 48 columns in groups of 32: the partial last group becomes 16-wide sub-groups
    assert (
        grid.width
        == unit_width(48, spec)
        == (16 if spec.granularity == "group" and spec.group_size == 32 else grid.width)
    )


def test_recover_refuses_weights_off_the_grid():
    spec = QuantSpec(4, "sym", "group", 16)
    w = fake_quantize(torch.randn(8, 32), spec)
    w[3, 5] += 1e-3
    with pytest.raises(UserError, match="not on a 4-bit"):
        recover(w, spec)


def test_rtn_result_saves_as_compressed_tensors_and_reloads(tmp_path):
    model, tok = _compressed([("rtn", {"bits": 4, "granularity": "group", "group_size": 16})])
    assert format_for(model).name == "compressed-tensors"
    save_model(model, tok, tmp_path / "ct")
    assert json.loads((tmp_path / "ct" / FORMAT_FILE).read_text())["format"] == "compressed-tensors"
    again = load_compressed(tmp_path / "ct")
    # a plain float model: no compressed-tensors parameters, patched forwards or config left
    assert not [k for k in again.state_dict() if "weight_scale" in k or "weight_packed" in k]
    assert "forward" not in again.model.layers[0].mlp.down_proj.__dict__
    assert getattr(again.config, "quantization_config", None) is None
    x = sample_inputs("llama")
    with torch.no_grad():
        torch.testing.assert_close(again(**x).logits, model(**x).logits, rtol=0, atol=1e-6)
    dense, _ = tiny_model("llama")
    dense.save_pretrained(tmp_path / "dense")
    packed = (tmp_path / "ct" / "model.safetensors").stat().st_size
    assert packed < (tmp_path / "dense" / "model.safetensors").stat().st_size


def test_a_weight_changed_after_quantization_voids_the_grid_record():
    model, _ = _compressed([("rtn", {"bits": 8})])
    assert marked(model) is not None and format_for(model).name == "compressed-tensors"
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.001)
    assert marked(model) is None
    assert format_for(model) is None or format_for(model).name != "compressed-tensors"
    with pytest.raises(UserError, match="stale"):
        export(model, "/tmp/never-written")


def test_conv1d_and_kept_outliers_fall_back_to_the_other_formats():
    gpt2, tok = tiny_model("gpt2")
    gpt2 = compress(gpt2, make_config("rtn", bits=8))
    assert getattr(gpt2, GRID_ATTR)  # recorded, but Conv1D has no place in the format
    fmt = format_for(gpt2)
    assert fmt is None or fmt.name != "compressed-tensors"
    kept, _ = _compressed([("rtn", {"bits": 4, "outlier_fraction": 0.1})])
    assert marked(kept) is None
    with pytest.raises(UserError):
        export(gpt2, "/tmp/never-written")


def test_classes_transformers_cannot_load_packed_keep_the_suite_formats(tmp_path):
    """T5's _init_weights reads its attention linears' ``weight``, which a pack-quantized
    linear no longer has, so transformers cannot load such a folder: the 4-bit result saves
    in another format and round-trips; 8-bit (int-quantized keeps ``weight``) and a class
    without that habit (BART) use compressed-tensors."""
    grid = {"scheme": "sym", "granularity": "group", "group_size": 16}  # packed at 4 bits
    t5, tok = tiny_model("t5")
    t5 = compress(t5, make_config("rtn", bits=4, **grid), Context(tokenizer=tok))
    assert marked(t5) is not None
    fmt = format_for(t5)
    assert fmt is None or fmt.name != "compressed-tensors"
    save_model(t5, tok, tmp_path / "t5")
    x = sample_inputs("t5")
    with torch.no_grad():
        torch.testing.assert_close(load_compressed(tmp_path / "t5")(**x).logits, t5(**x).logits,
                                   rtol=0, atol=1e-6)
    t5_8, _ = tiny_model("t5")
    t5_8 = compress(t5_8, make_config("rtn", bits=8, **grid), Context(tokenizer=tok))
    assert format_for(t5_8).name == "compressed-tensors"
    bart, tok = tiny_model("bart")
    bart = compress(bart, make_config("rtn", bits=4, **grid), Context(tokenizer=tok))
    assert format_for(bart).name == "compressed-tensors"


@pytest.mark.parametrize("steps,types", [
    ([], {"F32"}),
    ([("rtn", {"bits": 4, "scheme": "sym", "granularity": "group", "group_size": 32})],
     {"F32", "Q4_0"}),
    ([("gptq", dict(GPTQ4, granularity="channel"))], {"F32", "Q4_0"}),
    ([("rtn", {"bits": 8})], {"F32", "Q8_0"}),
    ([("rtn", {"bits": 4, "scheme": "asym"})], {"F32"}),  # no exact GGUF type: floats
], ids=["dense", "rtn4-g32", "gptq4-channel", "rtn8", "rtn4-asym"])
def test_gguf_export_reloads_in_transformers_with_the_same_logits(steps, types, tmp_path):
    pytest.importorskip("gguf")
    import transformers as tf

    from compress.export.gguf import export as to_gguf

    model, tok = _compressed(steps)
    info = to_gguf(model, tok, tmp_path / "m.gguf")
    assert set(info["types"]) == types
    again = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf",
                                                    dtype=torch.float32)
    x = sample_inputs("llama")
    with torch.no_grad():
        torch.testing.assert_close(again(**x).logits, model(**x).logits, rtol=0, atol=1e-6)
    if "Q4_0" in types:  # 4.5 bits a weight for the linears instead of 32
        dense = to_gguf(tiny_model("llama")[0], tok, tmp_path / "dense.gguf")
        assert info["bytes"] < dense["bytes"]


def test_export_cli_reads_the_grid_from_a_saved_folder(tmp_path, capsys):
    from compress.export.__main__ import main

    model, tok = _compressed([("rtn", {"bits": 4, "scheme": "sym", "granularity": "group",
                                       "group_size": 32})])
    save_model(model, tok, tmp_path / "rtn4")
    assert main([str(tmp_path / "rtn4"), "--to", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["types"]["Q4_0"] == 14 and info["spec"]["bits"] == 4
    assert main([str(tmp_path / "rtn4"), "--to", "compressed-tensors",
                 "--out", str(tmp_path / "ct")]) == 0
    assert (tmp_path / "ct" / "config.json").exists()
