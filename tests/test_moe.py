"""MoEfication (``moefy``) on tiny models of every family: exactness, partition, routing,
router training, save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from compress import Context, UserError, compress, make_config
from compress.api import leftover_attachments
from compress.arch import iter_blocks
from compress.moe.convert import DenseFFN, build_moe, find_sites, moe_modules
from compress.moe.layer import AddBias, MoEFFN
from compress.moe.partition import (
    balanced_assign,
    balanced_kmeans,
    check_partition,
    partition_by_coactivation,
    partition_by_weights,
)
from compress.moe.routers import expert_energy, similarity_router, train_mlp_router
from compress.saving import FORMAT_FILE, load_compressed, save_model
from compress.tiny import _TRAIN_TEXT, sample_inputs, tiny_model

#: (tiny family, tiny_model kwargs); t5-gated is T5 v1.1's gated-GELU FFN.
FAMILIES = {
    "bert": ("bert", {}),
    "bert-cls": ("bert", {"classifier": True}),
    "gpt2": ("gpt2", {}),
    "llama": ("llama", {}),
    "opt": ("opt", {}),
    "t5": ("t5", {}),
    "t5-gated": ("t5", {"feed_forward_proj": "gated-gelu"}),
    "bart": ("bart", {}),
    "bert2bert": ("bert2bert", {}),
}

CALIB = _TRAIN_TEXT[:24]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on the shared 2-core machine, 2-thread scatter ops stall."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
FAST = dict(timing_rounds=0, router_steps=30, calibration_tokens=256, kmeans_iters=5)


def _model(key: str):
    family, kw = FAMILIES[key]
    model, tok = tiny_model(family, **kw)
    return family, model, tok


def _out(model, family):
    with torch.inference_mode():
        out = model(**sample_inputs(family))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize("key", FAMILIES)
def test_all_experts_active_equals_dense(key):
    family, model, tok = _model(key)
    before = _out(model, family)
    n_ffn = len(find_sites(model))
    ctx = Context(tokenizer=tok, calibration=CALIB)
    out = compress(model, make_config("moefy", num_experts=4, active_fraction=1.0, **FAST), ctx)
    assert out is model and not leftover_attachments(model)
    moes = [m for m in model.modules() if isinstance(m, MoEFFN)]
    assert len(moes) == n_ffn > 0 and all(m.top_k == 4 for m in moes)
    after = _out(model, family)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    info = ctx.info["moe"]
    assert info["layers_converted"] == n_ffn and info["active_fraction"] == 1.0


@pytest.mark.parametrize("key", ["bert", "opt", "llama"])
def test_replaced_modules_are_plain_modules(key):
    family, model, tok = _model(key)
    compress(model, make_config("moefy", num_experts=4, router="similarity", partition="weights",
                                timing_rounds=0))
    layer = next(iter_blocks(model)).module
    if key == "bert":
        assert isinstance(layer.intermediate.dense, MoEFFN)
        assert isinstance(layer.intermediate.intermediate_act_fn, nn.Identity)
        assert isinstance(layer.output.dense, AddBias)
        assert isinstance(layer.output.LayerNorm, nn.LayerNorm)  # the rest of BertOutput stays
    if key == "opt":
        assert isinstance(layer.fc1, MoEFFN) and isinstance(layer.fc2, AddBias)
        assert isinstance(layer.activation_fn, nn.Identity)
    if key == "llama":
        assert isinstance(layer.mlp, MoEFFN) and layer.mlp.gated
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _dense_rows(site) -> torch.Tensor:
    d = site.dense()
    parts = [d.w_in, d.w_out] + ([d.w_gate] if d.gated else [])
    parts += [b[:, None] for b in (d.b_in, d.b_gate) if b is not None]
    return torch.cat(parts, dim=1)  # (ff, ...) one row per neuron: its in, out, gate slices


def _expert_rows(moe: MoEFFN) -> torch.Tensor:
    E, de = moe.n_experts, moe.expert_size
    parts = [moe.w_in.transpose(1, 2).reshape(E * de, -1), moe.w_out.reshape(E * de, -1)]
    if moe.gated:
        parts.append(moe.w_gate.transpose(1, 2).reshape(E * de, -1))
    parts += [b.reshape(-1, 1) for b in (moe.b_in, moe.b_gate) if b is not None]
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("key", ["llama", "gpt2", "bert", "t5-gated"])
@pytest.mark.parametrize("partition", ["weights", "coactivation"])
def test_partition_covers_every_neuron_once_with_its_slices(key, partition):
    family, model, tok = _model(key)
    sites = find_sites(model)
    dense_rows = [_dense_rows(s) for s in sites]
    ctx = Context(tokenizer=tok, calibration=CALIB)
    cfg = make_config("moefy", num_experts=8, partition=partition, **FAST)
    compress(model, cfg, ctx)
    moes = [m for _, m in moe_modules(model)]
    for moe, rows in zip(moes, dense_rows, strict=True):
        assert moe.expert_size * moe.n_experts == rows.shape[0]  # equal sizes, all neurons
        got = _expert_rows(moe)
        # every expert row is exactly one dense neuron (in, out, gate together), each used once
        match = (got[:, None, :] == rows[None, :, :]).all(-1)  # (ff, ff)
        assert torch.equal(match.sum(0), torch.ones(rows.shape[0], dtype=torch.long))
        assert torch.equal(match.sum(1), torch.ones(rows.shape[0], dtype=torch.long))


def test_balanced_assignment_and_kmeans_sizes():
    gen = torch.Generator().manual_seed(0)
    dist = torch.rand(60, 6, generator=gen)
    labels = balanced_assign(dist, 10)
    assert torch.equal(torch.bincount(labels, minlength=6), torch.full((6,), 10))
    # well-separated clusters of equal size are recovered exactly
    centers = torch.eye(4) * 10
    pts = torch.cat([c + 0.1 * torch.randn(16, 4, generator=gen) for c in centers])
    labels = balanced_kmeans(pts, 4, seed=1)
    for i in range(4):
        assert labels[i * 16 : (i + 1) * 16].unique().numel() == 1
    assert labels.unique().numel() == 4
    perm = partition_by_weights(torch.randn(48, 8), torch.randn(48, 8), 6)
    check_partition(perm, 48, 6)
    perm = partition_by_coactivation(torch.randn(100, 48).relu(), 12)
    check_partition(perm, 48, 12)
    with pytest.raises(ValueError, match="exactly once"):
        check_partition(torch.tensor([0, 0, 1, 2]), 4, 2)
    with pytest.raises(UserError, match="cannot be split into 5 equal experts"):
        balanced_kmeans(torch.randn(48, 3), 5)


def _random_moe(gated: bool, E: int = 8, k: int = 2, routing: str = "topk") -> tuple:
    torch.manual_seed(0)
    d, ff = 16, 64
    dense = DenseFFN(
        w_in=torch.randn(ff, d), b_in=torch.randn(ff), w_gate=torch.randn(ff, d) if gated else None,
        b_gate=None, w_out=torch.randn(ff, d), b_out=torch.randn(d),
        act=nn.SiLU() if gated else nn.GELU(),
    )
    perm = torch.randperm(ff)
    moe = build_moe(dense, perm, E, router=similarity_router(dense, perm, E), routing=routing,
                    top_k=k, threshold=0.5, out_bias_inside=True)
    return moe, dense


def _poison(moe: MoEFFN, experts: list[int]) -> MoEFFN:
    """A copy whose given experts' weights are all NaN."""
    import copy

    bad = copy.deepcopy(moe)
    with torch.no_grad():
        for p in (bad.w_in, bad.w_out, bad.w_gate, bad.b_in):
            if p is not None:
                p[experts] = float("nan")
    return bad


@pytest.mark.parametrize("gated", [False, True])
def test_exactly_k_experts_touched_per_token(gated):
    E, k = 8, 2
    moe, dense = _random_moe(gated, E, k)
    x = torch.randn(6, 16)
    with torch.no_grad():
        chosen = moe.route(x)  # (N, E)
        assert torch.equal(chosen.sum(1), torch.full((6,), k))
        y = moe(x)
        for t in range(x.shape[0]):
            xt = x[t : t + 1]
            picked = chosen[t].nonzero().squeeze(1).tolist()
            others = [e for e in range(E) if e not in picked]
            # the token never reads the other experts' weights (single-token path)
            yt = _poison(moe, others)(xt)
            assert torch.isfinite(yt).all()
            torch.testing.assert_close(yt, y[t : t + 1], rtol=1e-4, atol=1e-4)
            # and it does read each chosen expert's
            for e in picked:
                assert torch.isnan(_poison(moe, [e])(xt)).all()
            # the output is the sum of exactly the chosen experts' dense neurons
            h = dense.activations(xt)
            mask = torch.zeros(dense.ff, dtype=torch.bool)
            for e in picked:
                mask[moe_perm_slice(moe, dense, e)] = True
            ref = (h * mask) @ dense.w_out + dense.b_out
            torch.testing.assert_close(yt, ref, rtol=1e-4, atol=1e-4)
        # batched path (3 tokens x 2 experts < 8): experts no token picked are never read
        unused = [e for e in range(E) if not chosen[:3, e].any()]
        assert len(unused) >= 2
        yb = _poison(moe, unused)(x[:3])
        assert torch.isfinite(yb).all()
        torch.testing.assert_close(yb, y[:3])
        moe.track_usage = True
        moe(x)
        assert int(moe.usage.sum()) == k * x.shape[0] and moe.tokens_seen == x.shape[0]


def _reference(moe: MoEFFN, x: torch.Tensor) -> torch.Tensor:
    """The MoE function by a plain loop over tokens and their chosen experts."""
    mask = moe.route(x)
    rows = []
    for t in range(x.shape[0]):
        y = moe.b_out.clone() if moe.b_out is not None else torch.zeros(moe.hidden)
        for e in mask[t].nonzero().squeeze(1).tolist():
            y = y + moe._expert(e, x[t : t + 1])[0]
        rows.append(y)
    return torch.stack(rows)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("routing", ["topk", "threshold"])
def test_every_compute_path_equals_the_dense_loop_reference(gated, routing):
    """grouped, batched, dense fallback and the single-token path all compute the same
    function as a per-token loop over the chosen experts."""
    moe, _ = _random_moe(gated, E=8, k=3, routing=routing)
    x = torch.randn(40, 16)
    forced = {"grouped": (2.0, 0), "batched": (2.0, 10**6), "dense": (0.0, 0)}
    with torch.no_grad():
        ref = _reference(moe, x)
        for path, (above, rows) in forced.items():
            moe.dense_above, moe.loop_min_rows = above, rows
            torch.testing.assert_close(moe(x), ref, rtol=1e-4, atol=1e-4)
            assert moe.last_path == path
        moe.dense_above_single = 2.0
        for t in range(3):
            torch.testing.assert_close(moe(x[t : t + 1]), ref[t : t + 1], rtol=1e-4, atol=1e-4)
            assert moe.last_path == "single"
        moe.dense_above_single = moe.dense_above = 0.0  # the fallback at one token, and at 64+
        big = torch.randn(70, 16)
        torch.testing.assert_close(moe(big), _reference(moe, big), rtol=1e-4, atol=1e-4)
        assert moe.last_path == "dense"
        torch.testing.assert_close(moe(x[:1]), ref[:1], rtol=1e-4, atol=1e-4)
        assert moe.last_path == "dense"


class _FixedScores(nn.Module):
    """A router that returns one leaf tensor of scores (to read its gradient)."""

    kind = "fixed"

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores = nn.Parameter(scores)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("routing", ["topk", "threshold"])
@pytest.mark.parametrize("path", ["grouped", "dense"])
def test_straight_through_gate_keeps_outputs_and_gives_the_router_its_gradient(
        gated, routing, path):
    """``router_grad`` in training: the same outputs as the eval forward on any path,
    the score gradient is the softmax Jacobian applied to g_e = <dL/dy, expert e's
    output> for every expert (selected or not), and unselected experts' weights get no
    gradient from the tokens that did not select them."""
    moe, _ = _random_moe(gated, E=8, k=3, routing=routing)
    x = torch.randn(40, 16)
    moe.dense_above = 0.0 if path == "dense" else 2.0
    moe.loop_min_rows = 0
    moe.eval()
    with torch.no_grad():
        ref = moe(x)
        scores = moe.router(x).clone()
        mask = moe.route(x)
    moe.router = _FixedScores(scores)
    moe.train()
    moe.router_grad = True
    y = moe(x)
    assert moe.last_path == "dense"
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    r = torch.randn_like(y)
    (y * r).sum().backward()
    with torch.no_grad():
        outs = torch.stack([moe._expert(e, x) for e in range(8)], 1)  # (N, E, d)
        g = (outs * r[:, None]).sum(-1)  # dL/dp_e: every expert's output on the token
        p = scores.softmax(-1)
        expected = p * (g - (g * p).sum(-1, keepdim=True))
    torch.testing.assert_close(moe.router.scores.grad, expected, rtol=1e-4, atol=1e-5)
    # one token's loss: the experts it did not select get no gradient to their weights
    moe.zero_grad(set_to_none=True)
    (moe(x)[5] * r[5]).sum().backward()
    grads = moe.w_in.grad.flatten(1).abs().sum(1)  # (E,)
    assert (grads[mask[5]] > 0).all() and (grads[~mask[5]] == 0).all()
    moe.router_grad = False  # off: no gradient reaches the router
    moe.router.scores.grad = None
    (moe(x) * r).sum().backward()
    assert moe.router.scores.grad is None


def test_path_choice_follows_active_fraction_and_tokens_per_expert():
    from compress.moe.layer import DENSE_ABOVE, LOOP_MIN_ROWS

    moe, _ = _random_moe(False, E=8, k=2)
    assert (moe.dense_above, moe.loop_min_rows) == (DENSE_ABOVE, LOOP_MIN_ROWS)
    assert moe.path_for(1, 2) == "single"
    assert moe.path_for(1, 4) == "dense"  # half the experts for one token: overhead wins
    assert moe.path_for(1, 8) == "dense"  # every expert: routing saves nothing
    assert moe.path_for(1024, 1024 * 2) == "grouped"  # 256 tokens per expert
    assert moe.path_for(16, 16 * 2) == "batched"  # 4 tokens per expert
    assert moe.path_for(1024, math.ceil(1024 * 8 * DENSE_ABOVE)) == "dense"
    x = torch.randn(1024, 16)
    with torch.no_grad():
        moe(x)
    assert moe.last_path == "grouped"


def moe_perm_slice(moe: MoEFFN, dense: DenseFFN, e: int) -> torch.Tensor:
    """Dense neuron indices held by expert ``e`` (found by matching weight rows)."""
    rows = moe.w_in[e].t()  # (d_e, d)
    match = (rows[:, None, :] == dense.w_in[None, :, :]).all(-1)  # (d_e, ff)
    return match.float().argmax(1)


def test_threshold_routing_varies_per_token():
    moe, dense = _random_moe(False, E=8, routing="threshold")
    x = torch.randn(200, 16)
    with torch.no_grad():
        mask = moe.route(x)
        counts = mask.sum(1)
        assert counts.min() >= 1 and counts.max() <= 8 and counts.unique().numel() > 1
        probs = moe.router(x).softmax(-1)
        covered = (probs * mask).sum(1)
        assert (covered >= moe.threshold - 1e-6).all()
        # dropping the smallest chosen expert would fall below the threshold
        smallest = torch.where(mask, probs, torch.full_like(probs, 2.0)).min(1).values
        assert (covered - smallest < moe.threshold).all()
        moe.threshold = 0.99
        assert moe.route(x).sum(1).float().mean() > counts.float().mean()


def test_router_training_lowers_loss():
    family, model, tok = _model("llama")
    from compress.calibration import CalibrationSpec
    from compress.moe import calib
    from compress.recipes.moefy import _calibration_inputs

    sites = find_sites(model)
    ctx = Context(tokenizer=tok, calibration=CALIB, task="causal-lm",
                  calib=CalibrationSpec(sequences=16, seq_len=64))
    inputs = _calibration_inputs(model, ctx, max_tokens=600)
    xs = calib.capture_ffn_inputs(model, sites, inputs)
    assert not leftover_attachments(model)
    dense = sites[0].dense()
    x = xs[sites[0].name]
    perm = partition_by_weights(dense.w_in, dense.w_gate, 8)
    energy = expert_energy(dense, x, perm, 8, "act_norm")
    n = x.shape[0] * 4 // 5
    _, losses = train_mlp_router(x[:n], energy[:n], x[n:], energy[n:], width=32, steps=150,
                                 lr=3e-3)
    assert losses["val_kl_after"] < 0.8 * losses["val_kl_before"]
    assert losses["train_kl_last"] < losses["train_kl_first"]


def test_recipe_records_report_facts():
    family, model, tok = _model("t5")
    ctx = Context(tokenizer=tok, calibration=CALIB)
    cfg = make_config("moefy", num_experts=8, active_fraction=0.25, router="auto",
                      finetune_steps=20, finetune_lr=1e-3, **(FAST | {"timing_rounds": 1}))
    compress(model, cfg, ctx)
    info = ctx.info["moe"]
    assert info["top_k"] == 2 and info["active_fraction"] == 0.25
    flops = info["ffn_flops_per_token"]
    assert flops["experts"] == pytest.approx(0.25 * flops["dense"])
    assert flops["moe"] == flops["experts"] + flops["router"]
    layer = info["layers"][0]
    assert set(layer["sparsity"]) == {"exact_zero", "near_zero_abs", "near_zero_rel",
                                      "neurons_for_90pct"}
    assert layer["sparsity"]["exact_zero"] > 0.3  # T5's ReLU FFN is sparse
    assert set(layer["router_scores"]) == {"similarity", "learned"}
    chosen = layer["router"]
    assert layer["router_scores"][chosen]["rel_error"] == min(
        s["rel_error"] for s in layer["router_scores"].values())
    assert layer["router_losses"]["val_kl_after"] < layer["router_losses"]["val_kl_before"]
    assert layer["finetune"]["val_rel_error_after"] < layer["finetune"]["val_rel_error_before"]
    for key in ("ffn_blocks_1x128", "model_1x128"):
        assert info["timing"][key]["dense_ms"] > 0 and info["timing"][key]["moe_ms"] > 0
    json.dumps(info)


@pytest.mark.parametrize("key", FAMILIES)
def test_save_and_reload_give_identical_outputs(key, tmp_path):
    family, model, tok = _model(key)
    ctx = Context(tokenizer=tok, calibration=CALIB)
    cfg = make_config("moefy", num_experts=4, active_fraction=0.5, router="learned", **FAST)
    compress(model, cfg, ctx)
    before = _out(model, family)
    save_model(model, tok, tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"moe.json", "moe.safetensors", "config.json", FORMAT_FILE} <= files
    assert "model.safetensors" not in files
    reloaded = load_compressed(tmp_path / "m")
    assert type(reloaded) is type(model)
    n_moe = sum(isinstance(m, MoEFFN) for m in model.modules())
    assert n_moe and sum(isinstance(m, MoEFFN) for m in reloaded.modules()) == n_moe
    torch.testing.assert_close(_out(reloaded, family), before, rtol=0, atol=0)
    dense, _ = tiny_model(family, **FAMILIES[key][1])
    assert not torch.allclose(before, _out(dense, family))  # half the experts: not the dense model


def test_bad_settings_are_one_line_errors():
    family, model, tok = _model("llama")
    with pytest.raises(UserError, match="not divisible by num_experts=5; choose one of"):
        compress(model, make_config("moefy", num_experts=5, router="similarity", partition="weights"))
    with pytest.raises(UserError, match="threshold routing needs router=learned"):
        make_config("moefy", routing="threshold", router="similarity")
    with pytest.raises(UserError, match="needs calibration text") as err:
        compress(model, make_config("moefy", num_experts=4, partition="coactivation"),
                 Context(tokenizer=tok))
    assert "\n" not in str(err.value)
    assert not any(isinstance(m, MoEFFN) for m in model.modules())


def test_summary_pairs_moefy_runs_with_dense(tmp_path):
    from compress.moe.summary import _load, render

    def report(recipe, metrics, info=None, name="m", quick=False):
        cfg = {"num_experts": 16, "active_fraction": 0.5, "router": "learned"}
        return {"status": "ok", "quick": quick, "model": {"name": name}, "label": recipe,
                "pipeline": [{"recipe": recipe, "config": cfg}], "metrics": metrics,
                "profile": {"latency": {"1x128": {"median_ms": 10.0}}, "threads": 1},
                "info": info or {}}

    dense = report("identity", [{"name": "accuracy", "value": 0.8, "higher_is_better": True},
                                {"name": "ppl", "value": 20.0, "higher_is_better": False}])
    info = {"moe": {"active_fraction": 0.5, "routers_chosen": {"learned": 6},
                    "sparsity_mean": {"near_zero_abs": 0.1, "near_zero_rel": 0.2,
                                      "neurons_for_90pct": 0.3},
                    "ffn_flops_per_token": {"dense": 100, "moe": 55, "moe_over_dense": 0.55},
                    "router_scores_mean": {"learned": {"rel_error": 0.4}},
                    "timing": {"threads": 1, "ffn_blocks_1x128": {"dense_ms": 4.0, "moe_ms": 2.0,
                                                                   "speedup": 2.0}},
                    "layers": [{"block": "b.0", "activation": "GELU", "router": "learned",
                                "sparsity": {}, "router_scores": {}}]}}
    moe = report("moefy", [{"name": "accuracy", "value": 0.76, "higher_is_better": True},
                           {"name": "ppl", "value": 30.0, "higher_is_better": False}], info)
    for i, r in enumerate((dense, moe, {"status": "failed"})):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    text = render(_load(tmp_path))
    assert "accuracy 0.76 (95% of 0.8)" in text and "ppl 30 (1.50x 20)" in text
    assert "| 4 | 2 | 2 |" in text and "55 / 100 (0.55)" in text
