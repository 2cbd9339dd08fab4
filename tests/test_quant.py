"""Quantization math: round-trip bounds, packed-size accounting, GPTQ vs RTN, the rtn/gptq recipes."""

from __future__ import annotations

import math

import pytest
import torch

from compress import Context, UserError, compress, make_config
from compress.api import leftover_attachments
from compress.quant.gptq import HessianAccumulator, gptq_quantize
from compress.quant.packing import layer_bytes, pack_codes, unpack_codes
from compress.quant.rtn import QuantSpec, fake_quantize, quantize_matrix, snr_db, step_sizes
from compress.saving import load_compressed, save_model
from compress.tiny import TINY_FAMILIES, sample_inputs, tiny_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression makes models smaller and faster, if it is done right.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Numbers like 1, 2, 3, 10, 100 and 2026 appear in news text.",
] * 3


def _out(model, family):
    with torch.inference_mode():
        o = model(**sample_inputs(family))
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _weights(out=24, inp=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * 0.05
    w[3, 7] = 0.9  # an outlier
    return w


SPECS = [
    QuantSpec(b, s, gr, gs)
    for b in (8, 4, 3, 2)
    for s in ("sym", "asym")
    for gr, gs in (("tensor", 128), ("channel", 128), ("group", 32), ("group", 64), ("group", 128))
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe().replace(" ", "-"))
def test_round_to_nearest_error_is_at_most_half_a_step(spec):
    w = _weights()
    w_hat = fake_quantize(w, spec)
    step = step_sizes(w, spec)
    err = (w - w_hat).abs()
    # half a step, plus float32 rounding of the division
    assert bool((err <= step / 2 * (1 + 1e-4) + 1e-7).all()), float((err / step).max())
    q, scale, zero = quantize_matrix(w, spec)
    assert q.min() >= spec.qmin and q.max() <= spec.qmax
    assert torch.equal(q, q.round())
    # the codes times the scales reproduce the fake-quantized values
    n_units = scale.numel()
    assert n_units == {"tensor": 1, "channel": 24}.get(spec.granularity, 24 * math.ceil(200 / spec.group_size))
    # scales are fp16-representable (that is what the packed format stores)
    assert torch.equal(scale, scale.half().float())
    # at most 2^bits distinct values per unit
    unit = {"tensor": w_hat, "channel": w_hat[0]}.get(spec.granularity, w_hat[0, : spec.group_size])
    assert len(torch.unique(unit)) <= 2**spec.bits


def test_more_bits_less_error_and_8bit_channel_snr_is_high():
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(1)) * 0.02
    snrs = {b: snr_db(w, fake_quantize(w, QuantSpec(b, "sym", "channel"))) for b in (8, 4, 3, 2)}
    assert snrs[8] > 38.0  # theory for Gaussian rows with absmax ~3.5 sigma: ~42 dB
    assert snrs[8] > snrs[4] > snrs[3] > snrs[2]
    g128 = snr_db(w, fake_quantize(w, QuantSpec(4, "sym", "group", 128)))
    assert g128 > snrs[4]  # smaller groups, smaller steps


def test_zero_is_exact_and_constant_rows_survive():
    w = torch.zeros(4, 64)
    w[1] = 0.5
    for spec in (QuantSpec(4, "sym", "channel"), QuantSpec(3, "asym", "group", 32)):
        w_hat = fake_quantize(w, spec)
        assert torch.equal(w_hat[0], torch.zeros(64))
        assert torch.allclose(w_hat[1], w[1], atol=0.5 * step_sizes(w, spec)[1].max())


def test_bad_specs_are_user_errors():
    with pytest.raises(UserError, match="bits=1"):
        QuantSpec(bits=1)
    with pytest.raises(UserError, match="scheme"):
        QuantSpec(scheme="nf")


def test_packed_size_by_hand():
    # 4 x 256 weights, 4-bit symmetric, groups of 128: 2 groups per row
    spec = QuantSpec(4, "sym", "group", 128)
    b = layer_bytes(4, 256, spec)
    assert b["codes"] == 4 * 256 * 4 // 8 == 512
    assert b["scales"] == 2 * (4 * 2) == 16  # fp16 scale per group
    assert b["zeros"] == 0 and b["total"] == 528
    # asymmetric adds one 4-bit zero point per group: 8 groups -> 4 bytes
    assert layer_bytes(4, 256, QuantSpec(4, "asym", "group", 128))["total"] == 532
    # two outlier columns kept in fp32: 254 quantized columns -> still 2 groups per row
    b = layer_bytes(4, 256, spec, outlier_columns=2, outlier_elem_bytes=4)
    assert b["codes"] == math.ceil(4 * 254 * 4 / 8) == 508
    assert b["outliers"] == 4 * 2 * 4 and b["outlier_index"] == 2 * 4
    assert b["total"] == 508 + 16 + 32 + 8
    # per-tensor 3-bit: one scale; per-channel 8-bit asym: one scale + one zero per row
    assert layer_bytes(10, 10, QuantSpec(3, "sym", "tensor"))["total"] == math.ceil(300 / 8) + 2
    assert layer_bytes(10, 10, QuantSpec(8, "asym", "channel"))["total"] == 100 + 20 + 10


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packing_codes_gives_the_counted_bytes_and_round_trips(bits):
    spec = QuantSpec(bits, "sym", "group", 32)
    w = _weights(8, 96)
    q, scale, zero = quantize_matrix(w, spec)
    packed = pack_codes(q, bits, spec.qmin)
    assert packed.dtype == torch.uint8
    assert packed.numel() == layer_bytes(8, 96, spec)["codes"]
    assert torch.equal(unpack_codes(packed, bits, spec.qmin, q.numel()).reshape(q.shape), q.long())


def test_model_size_summary_adds_up():
    model, tok = tiny_model("llama")
    ctx = Context(tokenizer=tok)
    compress(model, make_config("rtn", bits=4, granularity="group", group_size=16), ctx)
    info = ctx.info["quant"]
    dense = sum(p.numel() * 4 for p in model.parameters())  # untied tiny llama, fp32
    assert info["dense_bytes"] == dense
    assert info["packed_bytes"] == dense - info["target_dense_bytes"] + info["target_packed_bytes"]
    # 4 bits + one fp16 scale and one 4-bit zero point (asym, the 4-bit default) per 16
    # weights = 5.25 bits per weight
    assert info["scheme"] == "asym"
    assert info["target_bits_per_weight"] == pytest.approx(5.25)
    assert info["simulated"] is True and "runs_faster_here" not in info  # measured, not stated


def _correlated_layer(seed=0, n=2048, d_in=128, d_out=64):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=g) / math.sqrt(d_in)
    mix += 2.0 * torch.randn(d_in, 4, generator=g) @ torch.randn(4, d_in, generator=g) / 2
    x = torch.randn(n, d_in, generator=g) @ mix  # strongly correlated input features
    w = torch.randn(d_out, d_in, generator=g) * 0.05
    return x, w


@pytest.mark.parametrize("spec", [QuantSpec(3, "sym", "channel"), QuantSpec(4, "sym", "group", 32),
                                  QuantSpec(4, "asym", "channel")], ids=str)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_correlated_inputs(spec, act_order):
    x, w = _correlated_layer()
    acc = HessianAccumulator(w.shape[1])
    for chunk in x.split(500):
        acc.add(chunk)
    torch.testing.assert_close(acc.H, (2 * x.double().t() @ x.double() / x.shape[0]),
                               rtol=1e-4, atol=1e-4)  # accumulated in float32
    q_gptq, _ = gptq_quantize(w, acc.H, spec, blocksize=32, act_order=act_order)
    q_rtn = fake_quantize(w, spec)
    err_gptq = (x @ (w - q_gptq).t()).pow(2).mean()
    err_rtn = (x @ (w - q_rtn).t()).pow(2).mean()
    assert err_gptq < 0.7 * err_rtn, (float(err_gptq), float(err_rtn))
    # every GPTQ weight is on its grid: at most 2^bits values per row (per group); with
    # act_order the groups are static, i.e. consecutive original columns as in RTN
    row = q_gptq[0] if spec.granularity == "channel" else q_gptq[0, :32]
    assert len(torch.unique(row)) <= 2**spec.bits


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("recipe", ["rtn", "gptq"])
def test_simulated_recipes_on_every_family(family, recipe, tmp_path):
    model, tok = tiny_model(family)
    before = _out(model, family)
    ctx = Context(tokenizer=tok, calibration=list(TEXTS))
    cfg = make_config(recipe, bits=8, granularity="channel")
    out = compress(model, cfg, ctx)
    after = _out(out, family)
    assert not leftover_attachments(out)
    assert (after - before).abs().max() <= 0.05 * before.abs().max() + 1e-4
    info = ctx.info["quant"]
    assert info["method"] == recipe and info["bits"] == 8 and info["layers"] > 0
    assert info["packed_bytes"] < info["dense_bytes"]
    if recipe == "gptq":  # every linear (cross-attention k/v included) got a Hessian
        assert info["uncalibrated_layers"] == []
    save_model(out, tok, tmp_path / "m")
    torch.testing.assert_close(_out(load_compressed(tmp_path / "m"), family), after, rtol=0, atol=0)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_gptq_block_replay_reproduces_the_model(family):
    """GPTQ replays each block on recorded inputs; the replay must match a real forward.

    A replay that reused the decoder's key/value cache skipped bert2bert's
    cross-attention k/v projections (they never saw calibration input and were zeroed).
    """
    from compress.calibration import CalibrationSpec, draw
    from compress.models import task_of
    from compress.quant import calib
    from compress.sequential import BlockRun, _capture, stacks_of

    model, tok = tiny_model(family)
    # padded batches of 2: the replay must carry the attention masks the model built
    batches = draw(tok, list(TEXTS), task_of(model.config), CalibrationSpec(4, 32)).batches(2)
    for blocks in stacks_of(model):
        hidden, calls = _capture(model, blocks, batches)
        seen: list[torch.Tensor] = []

        def record(_m, a, k, seen=seen):
            seen.append(a[0] if a else k["hidden_states"])

        handle = blocks[1].module.register_forward_pre_hook(record, with_kwargs=True)
        with calib.hooks([handle]):
            for b in batches:
                calib.forward(model, b)
        run = BlockRun(blocks[0], hidden, calls[0], batches)
        for _ in range(2):  # replaying twice must not change anything (no cache state)
            for got, want in zip(run.outputs(), seen, strict=True):
                torch.testing.assert_close(got, want)


def test_gptq_changes_every_targeted_linear_and_needs_calibration():
    from compress.quant.layers import select_targets

    model, tok = tiny_model("t5")
    originals = {n: m.weight.detach().clone() for n, m in select_targets(model).items()}
    compress(model, make_config("gptq", bits=3, granularity="group", group_size=16),
             Context(tokenizer=tok, calibration=list(TEXTS)))
    for name, m in select_targets(model).items():
        assert not torch.equal(m.weight, originals[name]), name
        assert len(torch.unique(m.weight[0, :16])) <= 8
    with pytest.raises(UserError, match="gptq: .*needs calibration text"):
        compress(tiny_model("gpt2")[0], make_config("gptq"), Context(tokenizer=tok))


def test_rtn_outliers_are_kept_exactly():
    model, tok = tiny_model("gpt2")
    name = "transformer.h.0.mlp.c_fc"
    w0 = model.get_submodule(name).weight.detach().t().clone()  # (out, in)
    ctx = Context(tokenizer=tok)
    compress(model, make_config("rtn", bits=2, outlier_fraction=0.125), ctx)
    w1 = model.get_submodule(name).weight.detach().t()
    keep = w0.abs().amax(dim=0).topk(4).indices  # 12.5% of 32 input columns
    torch.testing.assert_close(w1[:, keep], w0[:, keep], rtol=0, atol=0)
    # per block: c_attn, attn.c_proj, c_fc have 32 inputs (4 kept), mlp.c_proj 128 (16 kept)
    assert ctx.info["quant"]["outlier_columns"] == 2 * (3 * 4 + 16)
    # by activation threshold: a huge threshold keeps nothing, a tiny one keeps all columns
    for threshold, expect_all in ((1e6, False), (1e-6, True)):
        m, t = tiny_model("llama")
        c = Context(tokenizer=t, calibration=list(TEXTS))
        compress(m, make_config("rtn", bits=4, outlier_threshold=threshold), c)
        kept = c.info["quant"]["outlier_columns"]
        assert (kept > 0) == expect_all
    with pytest.raises(UserError, match="not both"):
        make_config("rtn", outlier_fraction=0.1, outlier_threshold=6.0)
    with pytest.raises(UserError, match="calibration"):
        compress(tiny_model("llama")[0], make_config("rtn", outlier_threshold=6.0),
                 Context(tokenizer=tok))


def test_gptq_survives_a_singular_hessian():
    # 4 tokens, 32 input features: H has rank 4; a vanishing damp must still work
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    acc = HessianAccumulator(32)
    acc.add(x)
    q, res = gptq_quantize(w, acc.H, QuantSpec(2, "sym", "tensor"), blocksize=1, damp=5e-324)
    assert torch.isfinite(q).all() and math.isfinite(res.loss) and res.damp > 5e-324


def _naive_gptq(w, H, spec, order, damp=0.01):
    """GPTQ written out: columns in ``order``; each rounded on its static group's grid
    (fixed from the original weights) and its error spread over the columns still to come
    with the explicit inverse of their Hessian (OBS; Frantar et al. 2022, eq. 2-3)."""
    from compress.quant.grid import dequantize_rows, quantize_rows, scale_zero

    W = w.double().clone()
    n = W.shape[1]
    g = spec.group_size
    params = [scale_zero(w[:, s:s + g], spec) for s in range(0, n, g)]
    Hd = H.double() + damp * torch.diag(H).mean() * torch.eye(n, dtype=torch.float64)
    for step, j in enumerate(order):
        rest = order[step:]
        Finv = torch.linalg.inv(Hd[rest][:, rest])
        scale, zero = params[j // g]
        q = dequantize_rows(quantize_rows(W[:, j:j + 1].float(), scale, zero, spec), scale,
                            zero).double()
        err = (W[:, j:j + 1] - q) / Finv[0, 0]
        W[:, rest] -= err @ Finv[0:1, :]
        W[:, j] = q[:, 0]
    return W.float()


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_static_groups_equals_the_explicit_obs_reference(act_order):
    x, w = _correlated_layer()
    x, w = x[:, :64], w[:, :64]
    H = 2 * x.double().t() @ x.double() / x.shape[0]
    spec = QuantSpec(3, "asym", "group", 16)
    q, _ = gptq_quantize(w, H, spec, blocksize=16, act_order=act_order, static_groups=True)
    order = (torch.argsort(torch.diag(H), descending=True, stable=True).tolist() if act_order
             else list(range(64)))
    torch.testing.assert_close(q, _naive_gptq(w, H, spec, order), rtol=1e-3, atol=1e-4)
