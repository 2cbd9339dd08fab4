"""Profiler: counts and sizes against hand counts, timings present and sane, threads restored."""

from __future__ import annotations

import pytest
import torch

from compress.errors import UserError
from compress.tiny import tiny_model
from eval.profiler import dir_bytes, memory_bytes, profile

FAST = dict(quick=True, warmup=0, repeats=2, gen_repeats=1, gen_tokens=4, shapes=((1, 16), (2, 16)))

CASES = [
    ("gpt2", {}, "causal-lm"),
    ("llama", {}, "causal-lm"),
    ("bert", {}, "embedding"),
    ("bert", {"classifier": True}, "classification"),
    ("t5", {}, "seq2seq"),
    ("bert2bert", {}, "seq2seq"),
]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _manual_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() skips tied duplicates


@pytest.mark.parametrize("family,kw,task", CASES)
def test_profile_keys_counts_sizes_and_timings(family, kw, task):
    model, tok = tiny_model(family, **kw)
    r = profile(model, tok, task, **FAST)
    n = _manual_params(model)
    assert r["task"] == task and r["device"] == "cpu" and r["dtype"] == "float32"
    assert r["torch_version"] == torch.__version__ and r["threads"] == 1
    assert r["params_total"] == n
    assert 0 < r["params_nonzero"] <= n
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert r["bytes_in_memory"] == 4 * n + buffers
    # safetensors: 4 bytes a parameter plus a small JSON header; the folder adds tokenizer files
    assert 4 * n <= r["bytes_on_disk_weights"] <= 4 * n * 1.10 + 16_384
    assert r["bytes_on_disk"] > r["bytes_on_disk_weights"]
    assert r["peak_rss_bytes"] > 0 and r["peak_rss_delta_bytes"] >= 0
    assert set(r["latency"]) == {"1x16", "2x16"}
    for shape, stats in r["latency"].items():
        b, length = map(int, shape.split("x"))
        assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
        assert stats["tokens_per_second"] == pytest.approx(b * length / stats["median_ms"] * 1000)
    if task in ("causal-lm", "seq2seq"):
        gen = r["generate"]
        assert gen["generated_tokens"] == gen["gen_tokens"] == 4
        assert gen["ms_per_token"] > 0
        assert gen["ms_per_token"] == pytest.approx(gen["total_median_ms"] / 4)
    else:
        assert "generate" not in r
    assert not model.training


def test_nonzero_drops_after_zeroing_a_weight():
    model, tok = tiny_model("gpt2")
    before = profile(model, tok, "causal-lm", **FAST)
    weight = model.transformer.h[0].mlp.c_fc.weight
    zeroed = int(torch.count_nonzero(weight))
    with torch.no_grad():
        weight.zero_()
    after = profile(model, tok, "causal-lm", **FAST)
    assert after["params_total"] == before["params_total"]
    assert after["params_nonzero"] == before["params_nonzero"] - zeroed
    # a dense tensor of zeros takes the same room: size does not move
    assert after["bytes_in_memory"] == before["bytes_in_memory"]


def test_threads_are_pinned_recorded_and_restored():
    model, tok = tiny_model("bert")
    torch.set_num_threads(2)
    seen = []
    original_forward = model.forward

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original_forward(*args, **kwargs)

    model.forward = spy
    try:
        r = profile(model, tok, "embedding", threads=1, **FAST)
    finally:
        del model.forward
    assert r["threads"] == 1 and set(seen) == {1}
    assert torch.get_num_threads() == 2
    r = profile(model, tok, "embedding", **FAST)  # no pin: the current count is used and kept
    assert r["threads"] == 2 and torch.get_num_threads() == 2


def test_threads_restored_after_an_error():
    model, tok = tiny_model("bert")
    torch.set_num_threads(2)

    def boom(*args, **kwargs):
        raise RuntimeError("forward failed")

    model.forward = boom
    with pytest.raises(RuntimeError, match="forward failed"):
        profile(model, tok, "embedding", threads=1, **FAST)
    assert torch.get_num_threads() == 2


def test_saved_dir_is_measured_not_resaved(tmp_path):
    model, tok = tiny_model("bert")
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "extra.bin").write_bytes(b"x" * 1000)
    r = profile(model, tok, "embedding", saved_dir=tmp_path / "m", **FAST)
    assert r["bytes_on_disk"] == dir_bytes(tmp_path / "m")
    assert (
        r["bytes_on_disk_weights"] == (tmp_path / "m" / "model.safetensors").stat().st_size + 1000
    )
    assert r["disk_source"] == str(tmp_path / "m")


def test_unsaveable_model_still_profiles():
    model, tok = tiny_model("bert")

    def refuse(*args, **kwargs):
        raise RuntimeError("no saving here")

    model.save_pretrained = refuse
    r = profile(model, tok, "embedding", **FAST)
    assert r["bytes_on_disk"] is None and "no saving here" in r["disk_source"]
    assert r["latency"]["1x16"]["median_ms"] > 0


def test_dir_bytes_and_memory_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"1" * 10)
    (tmp_path / "y.json").write_bytes(b"2" * 20)
    assert dir_bytes(tmp_path) == 30
    assert dir_bytes(tmp_path / "y.json") == 20
    with pytest.raises(UserError):
        dir_bytes(tmp_path / "missing")
    lin = torch.nn.Linear(4, 3).half()
    assert memory_bytes(lin) == (12 + 3) * 2


def test_bad_arguments_are_user_errors():
    model, tok = tiny_model("gpt2")
    with pytest.raises(UserError, match="did you mean 'causal-lm'"):
        profile(model, tok, "causal_lm", **FAST)
    with pytest.raises(UserError, match="positions"):
        profile(model, tok, "causal-lm", **(FAST | {"shapes": ((1, 4096),)}))
    with pytest.raises(UserError):
        profile(model, tok, "causal-lm", threads=0, **FAST)
    with pytest.raises(UserError):
        profile(model, tok, "causal-lm", **(FAST | {"repeats": 0}))


def test_quantized_storage_follows_compress_parameter_counts():
    """Int8 packed weights are not Parameters: the profiler's size figures are the model's
    own storage (compress.stats), like the CLI's and the memory check's, not its floats."""
    from compress import compress, make_config
    from compress.stats import parameter_counts

    model, tok = tiny_model("bert")
    dense = profile(model, tok, "embedding", **FAST)
    q = compress(model, make_config("dynamic-int8"))
    own = q.compress_parameter_counts
    floats_only = sum(t.numel() * t.element_size() for t in q.parameters())
    assert own["bytes"] > floats_only  # the packed int8 weights are invisible to .parameters()
    assert memory_bytes(q) == own["bytes"] == parameter_counts(q)["bytes"]
    r = profile(q, tok, "embedding", **FAST)
    assert r["bytes_in_memory"] == own["bytes"] < dense["bytes_in_memory"]
    assert (r["params_total"], r["params_nonzero"]) == (own["total"], own["nonzero"])

    # any module that declares its storage is measured by it
    box = torch.nn.Linear(4, 3)
    box.compress_parameter_counts = {"total": 15, "nonzero": 9, "bytes": 27}
    assert memory_bytes(box) == 27 and parameter_counts(box)["nonzero"] == 9


# --------------------------------------------------------------------------- paired timing


def test_ratio_interval_contains_the_truth_in_a_synthetic_case():
    """Dense times drift and jitter; the model takes 0.6x of its round's dense time with
    its own noise: the interval covers 0.6 and excludes 1.0."""
    import numpy as np

    from eval.paired import ratio_interval

    rng = np.random.default_rng(1)
    drift = np.linspace(10, 14, 20)  # a machine slowing down over the run
    dense = drift * rng.normal(1.0, 0.05, 20)
    model = 0.6 * drift * rng.normal(1.0, 0.05, 20)
    r = ratio_interval(dense, model)
    lo, hi = r["ci95"]
    assert lo <= 0.6 <= hi and hi < 1.0
    assert r["verdict"] == "faster" and r["rounds"] == 20
    assert r["ratio"] == pytest.approx(0.6, rel=0.05)
    assert ratio_interval(dense, model) == r  # seeded: same times, same interval


def test_identical_times_are_no_measurable_change_and_slower_is_slower():
    from eval.paired import NO_CHANGE, ratio_interval

    same = ratio_interval([5.0, 6.0, 5.5, 7.0, 5.2], [5.1, 5.9, 5.6, 6.8, 5.3])
    assert same["ci95"][0] <= 1.0 <= same["ci95"][1] and same["verdict"] == NO_CHANGE
    slow = ratio_interval([5.0, 6.0, 5.5, 7.0], [7.5, 9.0, 8.2, 10.6])
    assert slow["verdict"] == "slower" and slow["ratio"] == pytest.approx(1.5, rel=0.02)
    with pytest.raises(ValueError):
        ratio_interval([1.0, 2.0], [1.0])


def test_alternate_rotates_the_order_and_times_every_callable_each_round():
    from eval.paired import alternate

    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    times = alternate(fns, rounds=3, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_paired_sleeps_give_a_reproducible_ratio():
    """Two runs of the same pair give ratios within +-10% of each other (sleep-based, so
    the machinery is checked without depending on free CPU)."""
    import time as _time

    from eval.paired import alternate, ratio_interval

    def measure():
        t = alternate({"dense": lambda: _time.sleep(0.008), "model": lambda: _time.sleep(0.004)},
                      rounds=9, warmup=1)
        return ratio_interval(t["dense"], t["model"])

    a, b = measure(), measure()
    assert a["ratio"] == pytest.approx(b["ratio"], rel=0.10)
    assert a["ratio"] < 0.75 and a["verdict"] == "faster"


@pytest.mark.parametrize("family,kw,task", [CASES[1], CASES[2], CASES[4]])
def test_profile_against_its_own_copy_reports_a_ratio_near_one(family, kw, task):
    import copy

    model, tok = tiny_model(family, **kw)
    dense = copy.deepcopy(model)
    loads = []

    def loader():
        loads.append(1)
        return dense

    r = profile(model, tok, task, dense=loader, **(FAST | {"repeats": 9, "gen_repeats": 5}))
    assert loads == [1]  # loaded once, after the memory pass
    assert set(r["latency_vs_dense"]) == {"1x16", "2x16"}
    # identical compute: a ratio close to 1 -- on a quiet machine. Where other jobs kept
    # the cores busy while timing (the profile says so), millisecond forwards of a tiny
    # model are preempted at random and single ratios of 4 were seen: only the structure
    # is checked then (the sleep-based test above checks the statistics).
    band = (0.0, float("inf")) if r["busy_machine"] else (0.6, 1.6)
    for stats in r["latency_vs_dense"].values():
        lo, hi = stats["ci95"]
        assert lo <= stats["ratio"] <= hi and stats["rounds"] == 9
        assert band[0] < stats["ratio"] < band[1], (stats, r["machine"])
        assert stats["verdict"] in ("faster", "slower", "no measurable change")
    if task in ("causal-lm", "seq2seq"):
        g = r["generate_vs_dense"]
        assert band[0] < g["ratio"] < band[1] and g["rounds"] == 5
        assert r["generate"]["generated_tokens"] == 4
    assert r["timing"].startswith("paired")
    cpu = r["machine"]["cpu"]
    assert cpu["logical_cores"] >= 1 and "isa_summary" in cpu
    assert "other_processes_cores" in r["machine"] and isinstance(r["busy_machine"], bool)


def test_cpu_info_reads_the_isa_flags(monkeypatch):
    import eval.machine as machine

    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
            "model name\t: Intel(R) Xeon(R) Platinum 8480+\n"
            "flags\t\t: fpu avx2 fma avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n\n"
            "processor\t: 1\n")
    monkeypatch.setattr(machine, "_cpuinfo_text", lambda: text)
    info = machine.cpu_info()
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["isa"]["avx2"] and info["isa"]["avx512"] and info["isa"]["vnni"]
    assert info["isa"]["amx_int8"] and not info["isa"]["avx_vnni"]
    assert info["isa_summary"] == "AVX2, AVX-512, VNNI, AMX"
    monkeypatch.setattr(machine, "_cpuinfo_text", lambda: "processor\t: 0\nflags\t\t: avx2 fma\n")
    info = machine.cpu_info()
    assert info["isa_summary"] == "AVX2" and not info["isa"]["vnni"]
