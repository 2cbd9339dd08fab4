"""The newer methods against small, direct implementations of their papers' equations.

SparseGPT (Frantar & Alistarh 2023), OWL (Yin et al. 2023), AWQ (Lin et al. 2023),
HQQ (Badri & Shaji 2023), SmoothQuant (Xiao et al. 2022) and the Hadamard rotation
(QuaRot / QuIP#-style incoherence processing): each on a tiny layer or model, checked
against a slow reference written from the paper, plus their recipes on every family.
"""

from __future__ import annotations

import copy

import pytest
import torch

from compress import Context, UserError, compress, make_config
from compress.api import leftover_attachments
from compress.calibration import CalibrationSpec
from compress.saving import load_compressed, save_model
from compress.tiny import TINY_FAMILIES, sample_inputs, tiny_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Compression makes models smaller.",
    "Pruning removes weights; quantization rounds them; distillation trains a student.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Numbers like 1, 2, 3, 10, 100 and 2026 appear in news text.",
] * 6
PAIRS = [("the quick brown fox jumps", "The quick brown fox jumps."),
         ("paris is the capital of france", "Paris is the capital of France.")] * 8
TASK = {"bert": "embedding", "gpt2": "causal-lm", "llama": "causal-lm", "opt": "causal-lm",
        "t5": "seq2seq", "bart": "seq2seq", "bert2bert": "seq2seq"}
SPEC = CalibrationSpec(sequences=6, seq_len=16)


def context(family: str, tok) -> Context:
    data = PAIRS if TASK[family] == "seq2seq" else TEXTS
    return Context(tokenizer=tok, calibration=data, train=data, task=TASK[family], calib=SPEC)


def outputs(model, family):
    with torch.inference_mode():
        out = model(**sample_inputs(family))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def correlated_layer(n=600, d_in=48, d_out=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=g) / d_in**0.5 + torch.eye(d_in)
    scale = torch.linspace(0.2, 3.0, d_in)  # uneven feature energy
    x = (torch.randn(n, d_in, generator=g) @ mix) * scale
    w = torch.randn(d_out, d_in, generator=g) * 0.1
    return x.double(), w.double()


def hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.t() @ x / x.shape[0]


# --- SparseGPT ---------------------------------------------------------------------------


def naive_sparsegpt(W, H, sparsity, damp, blocksize, nm=None):
    """Column by column OBS with the explicit inverse of the free columns' Hessian.

    Pruning weight j of a row, with F = {j, ..., n} still free: the optimal update of
    the free weights is  delta_F = -w_j / [H_F^-1]_jj * H_F^-1[:, j]  (Hassibi & Stork),
    and the saliency is w_j^2 / [H_F^-1]_jj. The mask is chosen at each block's start
    (lowest saliencies of the block) or, for N:M, every M columns per row.
    """
    W = W.double().clone()
    n = W.shape[1]
    Hd = H.double() + damp * torch.diag(H).mean() * torch.eye(n, dtype=torch.float64)
    finv = [torch.linalg.inv(Hd[j:, j:]) for j in range(n)]
    diag = torch.tensor([f[0, 0] for f in finv])
    mask = torch.zeros_like(W, dtype=torch.bool)
    for j in range(n):
        if nm is None and j % blocksize == 0:
            j2 = min(j + blocksize, n)
            sal = W[:, j:j2] ** 2 / diag[j:j2]
            k = round(sparsity * sal.numel())
            idx = sal.flatten().topk(k, largest=False).indices
            block = torch.zeros(sal.numel(), dtype=torch.bool)
            block[idx] = True
            mask[:, j:j2] = block.view_as(sal)
        if nm is not None and j % nm[1] == 0:
            m = nm[1]
            sal = W[:, j:j + m] ** 2 / diag[j:j + m]
            idx = sal.topk(m - nm[0], dim=1, largest=False).indices
            mask[:, j:j + m].scatter_(1, idx, True)
        rows = mask[:, j]
        f = finv[j]
        W[rows, j:] -= (W[rows, j] / f[0, 0])[:, None] * f[0][None, :]
        W[rows, j] = 0.0
    return W


@pytest.mark.parametrize("nm", [None, (2, 4)])
def test_sparsegpt_equals_obs_computed_in_full(nm):
    from compress.pruning.sparsegpt import sparsegpt_prune

    x, w = correlated_layer()
    H = hessian(x)
    got, loss, _ = sparsegpt_prune(w.float(), H, 0.5, nm=nm, blocksize=16, damp=0.01)
    want = naive_sparsegpt(w, H, 0.5, 0.01, 16, nm)
    assert torch.equal(got == 0, want == 0)
    torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-5)
    assert float((got == 0).float().mean()) == 0.5 and loss > 0
    # the weight update pays off: output error below Wanda's mask without updates (one
    # mask block over the layer, so both choose among all columns)
    got, _, _ = sparsegpt_prune(w.float(), H, 0.5, nm=nm, blocksize=48, damp=0.01)
    wanda = w.clone()
    score = w.abs() * x.pow(2).sum(0).sqrt()
    if nm is None:
        idx = score.argsort(dim=1)[:, : w.shape[1] // 2]
        wanda.scatter_(1, idx, 0.0)
    else:
        groups = score.view(w.shape[0], -1, 4).argsort(dim=2)[..., :2]
        wanda.view(w.shape[0], -1, 4).scatter_(2, groups, 0.0)
    err = lambda q: float((x @ (w - q.double()).t()).pow(2).mean())  # noqa: E731
    assert err(got) < err(wanda)


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_recipe_on_every_family(family, pattern, tmp_path):
    model, tok = tiny_model(family)
    ctx = context(family, tok)
    out = compress(model, make_config("sparsegpt", pattern=pattern, sparsity=0.5), ctx)
    info = ctx.info["sparsity"]
    assert abs(info["measured"] - 0.5) < 0.01
    if pattern != "unstructured":
        assert info["nm_holds"]
    assert not leftover_attachments(out)
    save_model(out, tok, tmp_path / "m")
    torch.testing.assert_close(outputs(load_compressed(tmp_path / "m"), family),
                               outputs(out, family), rtol=0, atol=0)


def test_sparsegpt_refuses_embeddings():
    with pytest.raises(UserError, match="SparseGPT cannot prune embeddings"):
        make_config("sparsegpt", groups="attn,embeddings")


# --- OWL ---------------------------------------------------------------------------------


def test_owl_sparsities_follow_the_papers_equations():
    """Outlier ratios from the dense model's Wanda scores, densities shifted to mean 1 - s."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from compress.arch import iter_blocks
    from compress.pruning.calibration import collect_input_sumsq
    from compress.tiny import tiny_tokenizer

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tiny_tokenizer().vocab_size, hidden_size=32,
                      intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # give blocks different outlier shares
        model.model.layers[1].mlp.down_proj.weight[:, :3] *= 25
        model.model.layers[3].self_attn.q_proj.weight[:2] *= 10
    tok = tiny_tokenizer()
    ctx = Context(tokenizer=tok, calibration=TEXTS, task="causal-lm", calib=SPEC)
    dense = copy.deepcopy(model)
    compress(model, make_config("owl", sparsity=0.7, owl_m=3.0, owl_lambda=0.1), ctx)
    # the reference: per block, one whole-model forward of the dense model
    from compress.calibration import calibration_set

    batches = calibration_set(ctx, dense).batches()
    ratios = []
    for block in iter_blocks(dense):
        mods = {n: (block.linears[c], "decoder") for c, n in block.linear_names.items()}
        sumsq, _ = collect_input_sumsq(dense, batches, mods)
        scores = torch.cat([(mods[n][0].weight.abs() * sumsq[n].sqrt()[None]).flatten()
                            for n in mods])
        ratios.append(float((scores > 3.0 * scores.mean()).float().mean()))
    r = torch.tensor(ratios, dtype=torch.float64)
    r = (r - r.min()) / (r.max() - r.min()) * 2 * 0.1
    want = 1 - (r - r.mean() + 0.3)
    rec = ctx.info["owl"]
    torch.testing.assert_close(torch.tensor(rec["outlier_ratio"], dtype=torch.float64),
                               torch.tensor(ratios, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(rec["sparsity"], dtype=torch.float64), want,
                               atol=1e-6, rtol=0)
    assert rec["sparsity"][1] < 0.7  # the block with outliers keeps more weights
    # each block reaches its own target (Wanda: per output row), the average the global one
    for block, s in zip(iter_blocks(model), want, strict=True):
        w = torch.cat([m.weight.flatten() for m in block.linears.values()])
        assert abs(float((w == 0).float().mean()) - float(s)) < 0.02
    assert abs(ctx.info["sparsity"]["measured"] - 0.7) < 0.01


@pytest.mark.parametrize("method", ["wanda", "magnitude", "sparsegpt"])
@pytest.mark.parametrize("family", ["gpt2", "bert2bert", "t5"])
def test_owl_with_every_method(method, family):
    model, tok = tiny_model(family)
    ctx = context(family, tok)
    compress(model, make_config("owl", method=method, sparsity=0.6), ctx)
    assert abs(ctx.info["sparsity"]["measured"] - 0.6) < 0.02
    assert ctx.info["owl"]["method"] == method and len(ctx.info["owl"]["sparsity"]) >= 2


def test_owl_refuses_what_it_cannot_do():
    with pytest.raises(UserError, match="OWL sets unstructured"):
        make_config("owl", pattern="2:4", sparsity=0.5)
    with pytest.raises(UserError, match="OWL sets the per-block targets"):
        make_config("owl", group_ratios="attn=0.5")


# --- AWQ ---------------------------------------------------------------------------------


def test_awq_scale_search_equals_the_papers_objective_on_tokens():
    """Eq. 4 evaluated over explicit tokens picks the same alpha and scale as the H form."""
    from compress.quant.awq import search_clip, search_scale
    from compress.quant.grid import QuantSpec, fake_quantize

    x, w = correlated_layer(d_in=64, d_out=16)
    x, w = x.float(), w.float()
    spec = QuantSpec(3, "asym", "group", 16)
    H = (x.double().t() @ x.double()) / x.shape[0]
    s, alpha, losses = search_scale([w], H, x.abs().mean(0), spec, n_grid=20)
    naive = []
    for i in range(20):
        a = i / 20
        sc = x.abs().mean(0).pow(a).clamp(min=1e-4)
        sc = sc / (sc.max() * sc.min()).sqrt()
        w_hat = fake_quantize(w * sc, spec) / sc
        naive.append(float((x @ w.t() - (x / sc) @ fake_quantize(w * sc, spec).t())
                           .double().pow(2).sum() / x.shape[0]))
        torch.testing.assert_close(w_hat, fake_quantize(w * sc, spec) / sc)
    assert int(torch.tensor(naive).argmin()) == round(alpha * 20)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(naive), rtol=2e-3, atol=1e-6)
    assert min(losses) <= losses[0]  # alpha = 0 is plain rounding: never worse
    # clipping: each (row, group) keeps the shrink with the least output error over tokens
    ws = w * s
    xs = x / s
    clipped = search_clip(ws, H / (s[:, None] * s[None, :]).double(), spec, n_grid=20,
                          max_shrink=0.5)
    for r in range(w.shape[0]):
        for k in range(4):
            cols = slice(16 * k, 16 * k + 16)
            g = ws[r, cols]
            best, best_err = None, float("inf")
            for i in range(10):
                m = g.abs().max() * (1 - i / 20)
                q = fake_quantize(g.clamp(-m, m)[None], QuantSpec(3, "asym", "channel"))[0]
                err = float(((xs[:, cols] @ (q - g)).double()).pow(2).sum())
                if err < best_err:
                    best, best_err = g.clamp(-m, m), err
            torch.testing.assert_close(clipped[r, cols], best, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("recipe", ["awq", "hqq"])
def test_awq_and_hqq_recipes_on_every_family(family, recipe, tmp_path):
    model, tok = tiny_model(family)
    before = outputs(model, family)
    ctx = context(family, tok)
    out = compress(model, make_config(recipe, bits=4, group_size=16), ctx)
    after = outputs(out, family)
    assert (after - before).abs().max() <= 0.2 * before.abs().max() + 1e-3
    info = ctx.info["quant"]
    assert info["method"] == recipe and info["scheme"] == "asym" and info["layers"] > 0
    assert info["packed_bytes"] < info["dense_bytes"]
    assert ("calibration" in ctx.info) == (recipe == "awq")
    save_model(out, tok, tmp_path / "m")
    torch.testing.assert_close(outputs(load_compressed(tmp_path / "m"), family), after,
                               rtol=0, atol=0)


# --- HQQ ---------------------------------------------------------------------------------


def naive_hqq(w, spec, p=0.7, beta=10.0, kappa=1.01, iters=20, round_zero=True):
    """The half-quadratic iterations written out for one group (a 1-D tensor)."""
    lo, hi = float(w.min()), float(w.max())
    from compress.quant.grid import _fp16_up

    s = float(_fp16_up(torch.tensor([(hi - lo) / spec.qmax]))[0])
    z = float(torch.tensor(-lo / s).to(torch.float16))
    if round_zero:
        z = float(round(z))
    best_z, best = z, None
    for it in range(iters + 1):
        q = torch.clamp(torch.round(w / s + z), 0, spec.qmax)
        wr = s * (q - z)
        err = float((w - wr).abs().mean())
        if best is None or err < best:
            best, best_z = err, z
        if it == iters:
            break
        e = w - wr
        we = torch.sign(e) * (e.abs() - e.abs().pow(p - 1) / beta).clamp_min(0)
        z = float((q - (w - we) / s).mean())
        beta *= kappa
    z16 = float(torch.tensor(best_z).to(torch.float16))
    return s * (torch.clamp(torch.round(w / s + z16), 0, spec.qmax) - z16)


def test_hqq_solver_decreases_its_objective_and_matches_the_equations():
    from compress.quant.grid import QuantSpec, fake_quantize
    from compress.quant.hqq import hqq_quantize, hqq_units

    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 128, generator=g) * 0.05
    w[:, 5] += 0.4  # outlier column
    for bits in (4, 3):
        spec = QuantSpec(bits, "asym", "group", 64, zero_point="float")
        units = w.reshape(-1, 64)
        for round_zero, start in ((True, "int"), (False, "float")):
            out, scale, zero, facts = hqq_units(units, spec, round_zero=round_zero,
                                                scale_search="none")
            start_spec = QuantSpec(bits, "asym", "channel", zero_point=start)
            before = (units - fake_quantize(units, start_spec)).abs().mean(1)
            after = (units - out).abs().mean(1)
            assert (after <= before + 1e-6).all() and after.mean() < before.mean()
            assert facts["mean_abs_error_after"] < facts["mean_abs_error_before"]
            for i in range(units.shape[0]):
                torch.testing.assert_close(out[i], naive_hqq(units[i], spec,
                                                             round_zero=round_zero),
                                           rtol=0, atol=1e-6)
            assert len(torch.unique(out[0])) <= 2**bits
            # with the step search (the default) the l_1 error is lower still
            searched, _, _, _ = hqq_units(units, spec, round_zero=round_zero)
            assert (units - searched).abs().mean() <= after.mean() + 1e-6
        # on the matrix: better than min/max rounding on the integer-zero grid it starts from
        w_hat, _ = hqq_quantize(w, spec)
        rtn = fake_quantize(w, QuantSpec(bits, "asym", "group", 64))
        assert (w - w_hat).abs().mean() < (w - rtn).abs().mean()


def test_hqq_reference_solver_follows_the_packages_default_loop():
    """``solver="reference"``: hqq e0b1d00's optimize_weights_proximal_legacy, transcribed
    directly (constant beta; one early stop for the whole matrix on its mean error; the
    zero of the step that stopped it is kept)."""
    from compress.quant.grid import QuantSpec, scale_zero
    from compress.quant.hqq import hqq_units

    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 128, generator=g) * 0.05
    w[:, 7] += 0.3
    for bits, round_zero in ((3, True), (3, False), (4, True)):
        spec = QuantSpec(bits, "asym", "group", 64, zero_point="float")
        units = w.reshape(-1, 64)
        s, zero = scale_zero(units, spec)
        zero = torch.round(zero) if round_zero else zero
        best = float("inf")
        for _ in range(20):
            wq = torch.clamp(torch.round(units / s + zero), 0, spec.qmax)
            wr = (wq - zero) * s
            e = units - wr
            we = torch.sign(e) * (e.abs() - e.abs().pow(0.7 - 1) / 10.0).clamp_min(0)
            zero = (wq - (units - we) / s).mean(1, keepdim=True)
            err = float(e.abs().mean())
            if err < best:
                best = err
            else:
                break
        z16 = zero.half().float()
        expected = s * (torch.clamp(torch.round(units / s + z16), 0, spec.qmax) - z16)
        out, _, _, _ = hqq_units(units, spec, round_zero=round_zero, solver="reference",
                                 scale_search="none")
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="solver"):
        hqq_units(units, spec, solver="nope")


def test_hqq_scale_search_follows_the_packages_grid_search():
    """``search_scale``: hqq e0b1d00's ``update_scale_grid_search`` transcribed in the
    package's convention (``scale`` is the inverse step, ``W_r = (W_q - zero) / scale``, codes
    fixed by the start grid, 129 candidates), and the relative variant written per group."""
    from compress.quant.grid import QuantSpec, scale_zero
    from compress.quant.hqq import search_scale

    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 128, generator=g) * torch.linspace(0.01, 0.2, 6)[:, None]
    w[:, 3] += 0.3
    spec = QuantSpec(3, "asym", "group", 64, zero_point="float")
    units = w.reshape(-1, 64)
    s, zero = scale_zero(units, spec)
    zero = torch.round(zero)
    inv = 1.0 / s
    wq = torch.clamp(torch.round(units * inv + zero), 0, spec.qmax)
    n = 129
    # the package: one absolute offset grid for every group
    rng = inv.abs().mean() * 0.05
    shifted = torch.linspace(-float(rng), float(rng), n)[:, None] + inv.view(1, -1)
    err = torch.stack([(units - (wq - zero) / shifted[i][:, None]).abs().mean(1)
                       for i in range(n)])
    expected = 1.0 / shifted[err.argmin(0), torch.arange(units.shape[0])]
    got = search_scale(units, s, zero, spec, "reference")
    torch.testing.assert_close(got.view(-1), expected.half().float(), rtol=1e-3, atol=0)
    # relative: each group's own +-5%
    for i in range(units.shape[0]):
        cands = [float(inv[i]) * (1 + t) for t in torch.linspace(-0.05, 0.05, n).tolist()]
        errs = [float((units[i] - (wq[i] - zero[i]) / c).abs().mean()) for c in cands]
        best = 1.0 / cands[min(range(n), key=errs.__getitem__)]
        got = search_scale(units, s, zero, spec, "relative")
        assert abs(float(got[i]) - best) <= 1e-3 * best
    # the start is a candidate: with fixed codes no group's l_1 error grows
    for mode in ("reference", "relative"):
        new = search_scale(units, s, zero, spec, mode)
        before = (units - (wq - zero) * s).abs().mean(1)
        after = (units - (wq - zero) * new).abs().mean(1)
        assert (after <= before * (1 + 1e-3)).all() and after.mean() < before.mean()
    assert search_scale(units, s, zero, spec, "none") is s
    with pytest.raises(ValueError, match="scale search"):
        search_scale(units, s, zero, spec, "nope")


# --- SmoothQuant -------------------------------------------------------------------------


def _llama_with_outlier_channel():
    model, tok = tiny_model("llama")
    with torch.no_grad():  # one channel of every attention input carries huge activations
        for layer in model.model.layers:
            layer.input_layernorm.weight[3] = 40.0
    return model, tok


def test_smoothquant_scales_follow_the_paper_and_keep_the_model_exact():
    from compress.calibration import calibration_set
    from compress.quant import calib
    from compress.quant.layers import select_targets
    from compress.quant.smooth import smooth

    model, tok = _llama_with_outlier_channel()
    ctx = context("llama", tok)
    batches = calibration_set(ctx, model).batches()
    targets = select_targets(model)
    layer = model.model.layers[0]
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
             "model.layers.0.self_attn.v_proj"]
    absmax = calib.input_absmax(model, targets, batches)
    w_before = torch.cat([targets[n].weight.detach().clone() for n in names])
    g_before = layer.input_layernorm.weight.detach().clone()
    before = outputs(model, "llama")
    applied, rejected = smooth(model, targets, absmax, batches[0], alpha=0.5)
    assert not rejected and len(applied) == 2 * 2  # attention and FFN input of each block
    s = absmax[names[0]].pow(0.5) / w_before.abs().amax(0).pow(0.5)  # the paper's s_j
    torch.testing.assert_close(layer.input_layernorm.weight, g_before / s)
    torch.testing.assert_close(torch.cat([targets[n].weight for n in names]), w_before * s)
    torch.testing.assert_close(outputs(model, "llama"), before, rtol=1e-4, atol=1e-4)
    assert float(s[3]) > 3 * float(s.median())  # the outlier channel is divided down


def test_smoothquant_beats_plain_w8a8_on_activation_outliers(tmp_path):
    model, tok = _llama_with_outlier_channel()
    dense = outputs(model, "llama")
    errs = {}
    for name, smooth_on in (("plain", False), ("smooth", True)):
        ctx = context("llama", tok)
        out = compress(copy.deepcopy(model), make_config("smoothquant", runtime="simulated",
                                                         smooth=smooth_on, act_bits=6), ctx)
        errs[name] = float((outputs(out, "llama") - dense).pow(2).mean())
        save_model(out, tok, tmp_path / name)
        torch.testing.assert_close(outputs(load_compressed(tmp_path / name), "llama"),
                                   outputs(out, "llama"), rtol=0, atol=0)
    assert errs["smooth"] < 0.5 * errs["plain"], errs


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("runtime", ["simulated", "dynamic-int8"])
def test_smoothquant_on_every_family(family, runtime, tmp_path):
    model, tok = tiny_model(family)
    before = outputs(model, family)
    ctx = context(family, tok)
    out = compress(model, make_config("smoothquant", runtime=runtime), ctx)
    after = outputs(out, family)
    assert (after - before).abs().max() <= 0.1 * before.abs().max() + 1e-3
    info = ctx.info["quant"]
    assert info["runtime"] == runtime and info["linears"] > 0
    if family in ("llama", "gpt2", "opt", "t5"):  # pre-norm blocks: every input norm folds
        assert info["smoothed_groups"] >= 2 * 2
    if family == "bert":  # post-norm: the norm output is also the residual; nothing folds
        assert info["smoothed_groups"] == 0 and info["unsmoothed_norms"]
    save_model(out, tok, tmp_path / "m")
    torch.testing.assert_close(outputs(load_compressed(tmp_path / "m"), family), after,
                               rtol=0, atol=0)


# --- Hadamard rotation -------------------------------------------------------------------


def test_rotation_is_orthogonal_and_its_helpers_match_the_matrix():
    from compress.quant.rotate import Rotation, block_size

    assert block_size(576) == 64 and block_size(1536) == 512 and block_size(96) == 32
    R = Rotation(96, seed=3)
    M = R.matrix()  # (96, 96)
    torch.testing.assert_close(M @ M.t(), torch.eye(96), atol=1e-5, rtol=0)
    W = torch.randn(7, 96)
    torch.testing.assert_close(R.right(W), W @ M, atol=1e-5, rtol=0)
    torch.testing.assert_close(R.right_t(R.right(W)), W, atol=1e-5, rtol=0)
    H = torch.randn(96, 96)
    H = H @ H.t()
    torch.testing.assert_close(R.hessian(H), M.t() @ H @ M, atol=1e-3, rtol=1e-5)


def test_rotated_rounding_spreads_outliers_and_equals_the_explicit_form():
    from compress.quant.gptq import gptq_quantize
    from compress.quant.grid import QuantSpec, fake_quantize
    from compress.quant.rotate import Rotation

    x, w = correlated_layer(d_in=64, d_out=16)
    x, w = x.float(), w.float()
    w[:, 5] *= 12  # an outlier input column
    spec = QuantSpec(3, "asym", "group", 32)
    R = Rotation(64, seed=0)
    M = R.matrix()
    rotated = R.right_t(fake_quantize(R.right(w), spec))
    torch.testing.assert_close(rotated, fake_quantize(w @ M, spec) @ M.t(), atol=1e-5, rtol=0)
    # R is orthogonal, so the weight error is the same in both bases; spreading the
    # outlier column over the block shrinks each group's range and the error with it
    assert (w - rotated).pow(2).sum() < 0.7 * (w - fake_quantize(w, spec)).pow(2).sum()
    H = hessian(x.double())
    q_rot, _ = gptq_quantize(R.right(w), R.hessian(H), spec, blocksize=16)
    q_explicit, _ = gptq_quantize(w @ M, M.t().double() @ H @ M.double(), spec, blocksize=16)
    torch.testing.assert_close(R.right_t(q_rot), q_explicit @ M.t(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_rotate_recipe_on_every_family(family, method, tmp_path):
    model, tok = tiny_model(family)
    before = outputs(model, family)
    ctx = context(family, tok)
    out = compress(model, make_config("rotate", bits=4, group_size=16, method=method), ctx)
    after = outputs(out, family)
    assert (after - before).abs().max() <= 0.2 * before.abs().max() + 1e-3
    assert ctx.info["quant"]["rounding"] == method
    save_model(out, tok, tmp_path / "m")
    torch.testing.assert_close(outputs(load_compressed(tmp_path / "m"), family), after,
                               rtol=0, atol=0)


def test_awq_with_gptq_rounding_and_unit_scales_is_gptq():
    """With one grid point (alpha = 0: s = 1) and no clipping, AWQ+GPTQ is plain GPTQ."""
    from compress.calibration import calibration_set
    from compress.quant.awq import awq_model
    from compress.quant.gptq import HessianAccumulator, gptq_quantize
    from compress.quant.grid import QuantSpec, weight_matrix
    from compress.quant.layers import select_targets
    from compress.sequential import all_linears, run_sequential

    model, tok = tiny_model("llama")
    ref = copy.deepcopy(model)
    ctx = context("llama", tok)
    batches = calibration_set(ctx, model).batches()
    spec = QuantSpec(3, "asym", "group", 16)
    targets = select_targets(ref)
    want = {}

    def on_block(run):  # GPTQ per linear on the block's float inputs, propagating float outputs
        acc = {n: HessianAccumulator(weight_matrix(targets[n]).shape[1])
               for n in all_linears(run.block).values()}
        run.collect(all_linears(run.block), lambda n, x: acc[n].add(x))
        for n, a in acc.items():
            want[n] = gptq_quantize(weight_matrix(targets[n]), a.H, spec, act_order=True)[0]

    run_sequential(ref, batches, on_block)
    awq_model(model, select_targets(model), spec, batches, n_grid=1, clip=False, rounding="gptq")
    for n, m in select_targets(model).items():
        torch.testing.assert_close(weight_matrix(m), want[n], rtol=1e-4, atol=1e-5)
