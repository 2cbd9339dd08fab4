"""eval.analyze: exact streamed statistics, component assignment, shards, plots, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy import stats as sps

from compress.errors import UserError
from compress.tiny import tiny_model
from eval.analyze import (
    Moments,
    analyze_folder,
    cumulative_fraction,
    linear_histogram,
    main,
    validate_thresholds,
    write_outputs,
)
from eval.analyze.stats import _slice_stats, _Workspace

THRESHOLDS = (1e-3, 1e-2, 0.1, 1.0)


def _save(family: str, folder: Path, **kw) -> tuple[torch.nn.Module, Path]:
    model, _ = tiny_model(family)
    model.save_pretrained(folder, **kw)
    return model, folder


def _reference(values: np.ndarray, thresholds=THRESHOLDS) -> dict:
    v = values.astype(np.float64)
    return {
        "params": v.size,
        "mean": v.mean(),
        "std": v.std(),
        "skewness": sps.skew(v),
        "excess_kurtosis": sps.kurtosis(v),
        "max_abs": np.abs(v).max(),
        "zeros": int((v == 0).sum()),
        "count_above": {f"{t:g}": int((np.abs(v) > t).sum()) for t in thresholds},
    }


def _assert_matches(summary: dict, ref: dict, rel: float = 1e-9) -> None:
    assert summary["params"] == ref["params"]
    assert summary["zeros"] == ref["zeros"]
    assert summary["count_above"] == ref["count_above"]
    assert summary["max_abs"] == pytest.approx(ref["max_abs"], rel=0, abs=0)
    for key in ("mean", "std", "skewness", "excess_kurtosis"):
        assert summary[key] == pytest.approx(ref[key], rel=rel, abs=1e-12), key


def _assert_same(a, b, where: str = "") -> None:
    """Equal structure; integers exact, floats to a relative 1e-9."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15), where
    else:
        assert a == b, where


def _file_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _concat(tensors) -> np.ndarray:
    return np.concatenate([t.double().reshape(-1).numpy() for t in tensors])


# --- streamed moments ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_chunked_moments_equal_numpy_on_the_whole(dtype):
    g = torch.Generator().manual_seed(0)
    parts = [
        torch.randn(1000, generator=g) * 0.02 + 0.5,  # offset mean: merge must be stable
        torch.zeros(37),
        torch.empty(523).exponential_(3.0, generator=g),
        torch.tensor([0.01, -0.01, 1.0, -1.0, 0.1, 1e-3]),  # exactly at thresholds
        torch.randn(7, generator=g) * 5,
    ]
    parts = [p.to(dtype) for p in parts]
    ws = _Workspace(THRESHOLDS)
    total = Moments(THRESHOLDS)
    for p in parts:
        x = p if p.dtype in (torch.float32, torch.float64) else p.float()
        for piece in torch.split(x, 97):  # slices of a tensor, merged
            m, counts = _slice_stats(piece, ws)
            assert int(counts.sum()) == piece.numel()
            total.merge(m)
    values = _concat(parts)
    _assert_matches(total.summary(), _reference(values))


def test_threshold_counts_are_exact_at_float32_neighbours():
    t = 0.01
    f = np.float32(t)  # 0.0099999998 < 0.01 in float64
    below = np.nextafter(f, np.float32(0))
    above = np.nextafter(f, np.float32(1))
    x = torch.tensor([below, f, above, -above, -f], dtype=torch.float32)
    m, _ = _slice_stats(x, _Workspace((t,)))
    expected = int((np.abs(x.double().numpy()) > t).sum())
    assert m.above == [expected] == [2]


def test_nonfinite_values_are_counted_apart():
    x = torch.tensor([1.0, float("nan"), -2.0, float("inf")])
    m, hist = _slice_stats(x, _Workspace(THRESHOLDS))
    assert (m.n, m.nonfinite, m.max_abs, int(hist.sum())) == (2, 2, 2.0, 2)


def test_bad_thresholds_are_user_errors():
    with pytest.raises(UserError, match="positive"):
        validate_thresholds([0.1, -1])
    assert validate_thresholds([1, 0.1, 0.1]) == (0.1, 1.0)


# --- whole checkpoints ---------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "opt", "t5", "bart", "bert2bert"])
def test_overall_statistics_equal_numpy(family, tmp_path):
    _save(family, tmp_path)
    rep = analyze_folder(tmp_path, THRESHOLDS, chunk_elements=1000)  # forces row chunks
    tensors = _file_tensors(tmp_path)
    _assert_matches(rep["overall"], _reference(_concat(tensors.values())))
    # every tensor of the file is counted exactly once in each breakdown
    for part in ("by_component", "by_group", "by_role", "weights_vs_biases"):
        assert sum(s["params"] for s in rep[part].values()) == rep["overall"]["params"]
    assert rep["schema_version"] == 1 and rep["family"]


def test_llama_components_blocks_and_values(tmp_path):
    _save("llama", tmp_path)
    rep = analyze_folder(tmp_path)
    comp = rep["by_component"]
    # hidden 32, 4 heads (head dim 8), 2 KV heads, FFN 64, 2 blocks, vocab 512
    assert comp["attn_q"]["params"] == 2 * 32 * 32
    assert comp["attn_k"]["params"] == comp["attn_v"]["params"] == 2 * 16 * 32
    assert comp["ffn_gate"]["params"] == comp["ffn_in"]["params"] == 2 * 32 * 64
    assert comp["ffn_out"]["params"] == 2 * 64 * 32
    assert comp["embedding"]["params"] == comp["lm_head"]["params"] == 512 * 32
    assert comp["norm"]["params"] == 32 * (2 * 2 + 1)
    assert set(rep["by_role"]) == {"decoder"}
    assert [(b["role"], b["index"]) for b in rep["by_block"]] == [("decoder", 0), ("decoder", 1)]
    tensors = _file_tensors(tmp_path)
    down = [tensors[f"model.layers.{i}.mlp.down_proj.weight"] for i in (0, 1)]
    _assert_matches(comp["ffn_out"], _reference(_concat(down)))
    block1 = rep["by_block"][1]["components"]["attn_v"]
    _assert_matches(block1, _reference(_concat([tensors["model.layers.1.self_attn.v_proj.weight"]])))
    ffn = [t for k, t in tensors.items() if ".mlp." in k]
    _assert_matches(rep["by_group"]["ffn"], _reference(_concat(ffn)))
    # non-persistent buffers (rotary inv_freq) are not reported as missing
    assert rep["absent_from_files"] == {"tied": [], "untied": []}


def test_gpt2_fused_qkv_biases_and_tied_head(tmp_path):
    _save("gpt2", tmp_path)
    rep = analyze_folder(tmp_path)
    comp = rep["by_component"]
    assert comp["attn_qkv"]["params"] == 2 * 32 * 96
    assert comp["ffn_in"]["params"] == comp["ffn_out"]["params"] == 2 * 32 * 128
    # biases: c_attn 96 + c_proj 32 + c_fc 128 + mlp.c_proj 32, and ln_1/ln_2 biases 2*32,
    # per block; plus ln_f bias
    assert comp["bias"]["params"] == 2 * (96 + 32 + 128 + 32 + 64) + 32
    assert rep["weights_vs_biases"]["bias"]["params"] == comp["bias"]["params"]
    block0 = rep["by_block"][0]
    assert block0["all"]["params"] == sum(
        s["params"] for s in block0["components"].values())
    assert block0["components"]["bias"]["params"] == 96 + 32 + 128 + 32 + 64
    # the LM head is tied to wte and not stored: counted once, and said so
    assert rep["absent_from_files"]["tied"] == ["lm_head.weight"]
    assert "lm_head" not in comp


def test_encoder_decoder_roles_and_cross_attention(tmp_path):
    _save("bert2bert", tmp_path)
    rep = analyze_folder(tmp_path)
    comp = rep["by_component"]
    assert comp["cross_q"]["params"] == 2 * 32 * 32
    roles = {(b["role"], c) for b in rep["by_block"] for c in b["components"]}
    assert ("decoder", "cross_q") in roles and ("encoder", "cross_q") not in roles
    assert [(b["role"], b["index"]) for b in rep["by_block"]] == [
        ("encoder", 0), ("encoder", 1), ("decoder", 0), ("decoder", 1)]
    tensors = _file_tensors(tmp_path)
    enc = [t for k, t in tensors.items() if k.startswith("encoder.")]
    _assert_matches(rep["by_role"]["encoder"], _reference(_concat(enc)))


def test_t5_shared_embedding_and_relative_bias(tmp_path):
    _save("t5", tmp_path)
    rep = analyze_folder(tmp_path)
    assert rep["by_role"]["shared"]["params"] == 512 * 32  # shared.weight only
    assert rep["by_component"]["embedding"]["params"] == 512 * 32
    # relative attention bias (buckets 32 x heads 4) in block 0 of each stack: "other"
    assert rep["by_component"]["other"]["params"] == 2 * 32 * 4
    assert rep["by_block"][0]["components"]["other"]["params"] == 32 * 4


def _rewrite_keys(folder: Path, rename) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    save_file({rename(k): v.contiguous() for k, v in tensors.items()}, path,
              metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("family", "rename"),
    [
        ("bert", lambda k: "bert." + k),  # BertModel saved inside a wrapper
        ("gpt2", lambda k: k.removeprefix("transformer.")),  # original GPT-2 files
        ("llama", lambda k: k.removeprefix("model.")),
    ],
)
def test_checkpoint_prefixes_map_to_the_same_components(family, rename, tmp_path):
    plain, renamed = tmp_path / "plain", tmp_path / "renamed"
    _save(family, plain)
    _save(family, renamed)
    _rewrite_keys(renamed, rename)
    a, b = analyze_folder(plain), analyze_folder(renamed)
    for key in ("by_component", "by_block", "by_role", "by_group"):
        _assert_same(b[key], a[key])  # the merge order may differ: floats to ~1e-12
    assert b["absent_from_files"] == a["absent_from_files"]


def test_sharded_checkpoint_equals_unsharded(tmp_path):
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    _save("bert2bert", one)
    _save("bert2bert", sharded, max_shard_size="50KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    a, b = analyze_folder(one), analyze_folder(sharded)
    assert len(b["files"]) > 2
    for key in ("overall", "by_component", "by_role", "by_group", "weights_vs_biases",
                "by_block", "absent_from_files"):
        _assert_same(b[key], a[key], key)
    assert b["histograms"] == a["histograms"]


def test_folder_with_only_pickle_weights(tmp_path):
    model, _ = tiny_model("bert")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UserError, match="--allow-pickle") as info:
        analyze_folder(tmp_path)
    assert "\n" not in str(info.value) and "safetensors" in str(info.value)
    rep = analyze_folder(tmp_path, allow_pickle=True)
    state = model.state_dict()
    _assert_matches(rep["overall"], _reference(_concat(state.values())))
    assert rep["format"] == "pickle"
    assert rep["by_component"]["attn_q"]["params"] == 2 * 32 * 32


def test_empty_folder_and_missing_config(tmp_path):
    with pytest.raises(UserError, match="no model weights"):
        analyze_folder(tmp_path)
    save_file({"w": torch.ones(3, 4), "step": torch.tensor([1])}, tmp_path / "x.safetensors")
    rep = analyze_folder(tmp_path)  # no config: overall stats only, said so
    assert rep["overall"]["params"] == 12 and rep["overall"]["frac_above"]["0.1"] == 1.0
    assert rep["warning"] and rep["by_component"].keys() == {"other"}
    assert rep["skipped_non_float"] == [{"name": "step", "dtype": "I64", "shape": [1]}]


# --- plots and command line ---------------------------------------------------------


def test_plots_are_written_and_not_blank(tmp_path):
    import matplotlib.image as mpimg

    _save("bert2bert", tmp_path / "m")  # two stacks: the hardest block plot
    reps = [analyze_folder(tmp_path / "m", model="tiny-b2b")]
    written = write_outputs(reps, tmp_path / "out")
    names = {p.name for p in written}
    assert names == {"tiny-b2b.json", "tiny-b2b_hist.png", "tiny-b2b_blocks.png",
                     "cumulative.png"}
    for p in written:
        assert p.stat().st_size > 10_000
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            img = mpimg.imread(p)
            assert img.shape[0] > 300 and img.shape[1] > 600
            assert float(img[..., :3].std()) > 0.01  # something was drawn
    data = json.loads((tmp_path / "out" / "tiny-b2b.json").read_text())
    assert data["overall"]["params"] == reps[0]["overall"]["params"]
    kinds = data["histograms"]["kinds"]
    assert sum(sum(k["neg"]) + sum(k["pos"]) for k in kinds.values()) == data["overall"]["params"]


def test_histogram_cumulative_is_exact_at_edges(tmp_path):
    _save("gpt2", tmp_path)
    rep = analyze_folder(tmp_path)
    values = np.abs(_concat(_file_tensors(tmp_path).values()))
    cut, frac = cumulative_fraction(rep)
    for i in range(0, len(cut), 7):
        assert frac[i] == (values < cut[i]).mean(), cut[i]
    ffn = [t for k, t in _file_tensors(tmp_path).items() if ".mlp." in k and k.endswith("weight")]
    cut, frac = cumulative_fraction(rep, ["ffn"])
    v = np.abs(_concat(ffn))
    assert frac[len(cut) // 2] == (v < cut[len(cut) // 2]).mean()
    grid, counts = linear_histogram(rep, ["ffn"], float(v.max()) * 1.05, bins=50)
    assert counts.sum() == pytest.approx(v.size) and len(grid) == 51
    assert counts[25] > counts[0]  # the bulk is in the middle


def test_cli_writes_json_and_prints_tables(tmp_path, capsys):
    _save("opt", tmp_path / "m")
    rc = main([str(tmp_path / "m"), "--out", str(tmp_path / "out"),
               "--thresholds", "0.05", "0.01", "--no-plots"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "|w|>0.01" in out and "component: attn_q" in out
    data = json.loads((tmp_path / "out" / "m.json").read_text())
    assert data["thresholds"] == [0.01, 0.05]
    assert not list((tmp_path / "out").glob("*.png"))


@pytest.mark.parametrize("name", ["./no/such/folder", "smolm2-135", "nobody/no-such-model"])
def test_cli_unknown_model_is_one_line_error(name, capsys):
    from compress.cli import run_main

    rc = run_main(main, [name, "--out", "unused"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1


def test_moments_summary_of_constant_values_is_defined():
    m, _ = _slice_stats(torch.ones(10), _Workspace(THRESHOLDS))
    s = m.summary()
    assert s["std"] == 0.0 and s["skewness"] is None and s["frac_above"]["0.1"] == 1.0
    assert Moments(THRESHOLDS).summary()["mean"] is None


def test_weight_files_are_picked_by_name(tmp_path):
    from eval.analyze import checkpoint_files

    (tmp_path / "training_args.bin").write_bytes(b"not weights")
    with pytest.raises(UserError, match="no model weights"):
        checkpoint_files(tmp_path)
    save_file({"w": torch.ones(2)}, tmp_path / "export.safetensors")
    assert checkpoint_files(tmp_path) == ("safetensors", [tmp_path / "export.safetensors"])
    save_file({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    assert checkpoint_files(tmp_path) == ("safetensors", [tmp_path / "model.safetensors"])
    # a single file can be named directly
    rep = analyze_folder(tmp_path / "export.safetensors")
    assert rep["overall"]["params"] == 2 and rep["files"] == ["export.safetensors"]


def test_grid_check_detects_weights_already_on_a_low_bit_grid(tmp_path):
    """Weights dequantized from 4-bit blocks of 32 (GGUF Q4_1-like) are detected; fp32 are not."""
    from compress.tiny import tiny_model
    from eval.analyze import analyze_folder
    from eval.grid_analysis import implications

    model, tok = tiny_model("llama")
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(tmp_path / "fp32")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name and "lm_head" not in name:
                blocks = p.reshape(-1, 32)  # per block: scale and minimum, 16 levels
                lo = blocks.min(1, keepdim=True).values
                d = (blocks.max(1, keepdim=True).values - lo) / 15
                p.copy_((torch.round((blocks - lo) / d) * d + lo).reshape(p.shape))
    model.save_pretrained(tmp_path / "q4")
    plain = analyze_folder(tmp_path / "fp32", model="fp32")["grid"]
    q4 = analyze_folder(tmp_path / "q4", model="q4")["grid"]
    assert plain["linear"]["grid"] is None
    assert plain["linear"]["blocks"]["32"]["median_distinct"] == 32
    assert q4["linear"]["grid"] == {"bits": 4, "block": 32, "share": 1.0}
    assert q4["linear"]["blocks"]["64"]["max_distinct"] <= 32
    text = " ".join(implications("q4", q4))
    assert "4-bit grid" in text and "at 4 bits or more" in text
    assert "every bit width is informative" in " ".join(implications("fp32", plain))
