"""Unstructured and N:M pruning (magnitude, Wanda) on tiny models of every family."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from functools import partial

import pytest
import torch

from compress import Context, UserError, compress, make_config
from compress.arch import iter_blocks
from compress.calibration import CalibrationSpec, draw
from compress.pruning import masks
from compress.pruning.targets import out_in, select_targets
from compress.saving import load_compressed, save_model
from compress.tiny import TINY_FAMILIES, sample_inputs, tiny_model

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Compression makes models smaller.",
    "Pruning removes weights; quantization rounds them; distillation trains a student.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
] * 8
PAIRS = [("the quick brown fox jumps", "The quick brown fox jumps."),
         ("paris is the capital of france", "Paris is the capital of France.")] * 8
TASK = {"bert": "embedding", "gpt2": "causal-lm", "llama": "causal-lm", "opt": "causal-lm",
        "t5": "seq2seq", "bart": "seq2seq", "bert2bert": "seq2seq"}
SPEC = CalibrationSpec(sequences=6, seq_len=16)


def context(family: str, tok) -> Context:
    data = PAIRS if TASK[family] == "seq2seq" else TEXTS
    return Context(tokenizer=tok, calibration=data, train=data, task=TASK[family], calib=SPEC)


def config(recipe: str, **kw):
    return make_config(recipe, **kw)


def outputs(model, family):
    with torch.inference_mode():
        out = model(**sample_inputs(family))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def targeted(model, groups=("attn", "cross", "ffn")):
    return select_targets(model, groups)


# --- exact selection -----------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_kth_smallest_is_exact_with_ties_and_narrowing(seed, monkeypatch):
    monkeypatch.setattr(masks, "GATHER_LIMIT", 50)  # force several narrowing passes
    monkeypatch.setattr(masks, "BINS", 16)
    g = torch.Generator().manual_seed(seed)
    chunks = [torch.randn(300, generator=g).abs(), torch.zeros(40),
              torch.full((60,), 0.5), torch.rand(500, generator=g) ** 8]
    allv = torch.cat(chunks).sort().values
    for k in (1, 17, 40, 41, 300, 450, len(allv) - 1, len(allv)):
        value, n_less = masks.kth_smallest(lambda: iter(chunks), k)
        assert value == float(allv[k - 1])
        assert n_less == int((allv < allv[k - 1]).sum())


def test_global_threshold_matches_a_full_sort():
    model, tok = tiny_model("gpt2")
    ref = {t.name: out_in(t).detach().clone() for t in targeted(model)}
    compress(model, make_config("magnitude", sparsity=0.7, scope="global"), context("gpt2", tok))
    kept, dropped = [], []
    for t in targeted(model):
        w = out_in(t)
        kept.append(ref[t.name][w != 0].abs())
        dropped.append(ref[t.name][w == 0].abs())
    kept, dropped = torch.cat(kept), torch.cat(dropped)
    assert dropped.numel() == round(0.7 * (kept.numel() + dropped.numel()))
    assert dropped.max() <= kept.min()


# --- targets reached, nothing else touched ---------------------------------------------

CASES = [
    ("magnitude", {"scope": "layer"}),
    ("magnitude", {"scope": "global"}),
    ("magnitude", {"scope": "row"}),
    ("wanda", {"scope": "row"}),
    ("wanda", {"scope": "layer"}),
]


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("recipe,kw", CASES, ids=[f"{r}-{k['scope']}" for r, k in CASES])
def test_target_reached_exactly_and_untargeted_unchanged(family, recipe, kw):
    model, tok = tiny_model(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = context(family, tok)
    sparsity = 0.5 if kw["scope"] == "row" else 0.9
    out = compress(model, config(recipe, sparsity=sparsity, **kw), ctx)
    assert out is model
    targets = targeted(model)
    names = {f"{t.name}.weight" for t in targets}
    for t in targets:
        zeros = masks.zeros_in(t)
        n_out, n_in = out_in(t).shape
        if kw["scope"] == "row":
            per_row = (out_in(t) == 0).sum(1)
            assert (per_row == round(sparsity * n_in)).all(), t.name
        elif kw["scope"] == "layer":
            assert zeros == round(sparsity * t.numel()), t.name
    if kw["scope"] == "global":
        total = sum(t.numel() for t in targets)
        assert sum(masks.zeros_in(t) for t in targets) == round(sparsity * total)
    for key, value in model.state_dict().items():
        if key not in names:
            assert torch.equal(value, before[key]), f"{key} changed"
    info = ctx.info["sparsity"]
    assert info["target"] == sparsity
    assert abs(info["measured"] - sparsity) < 1e-3
    assert set(info["per_group"]) == {t.group for t in targets}
    assert torch.isfinite(outputs(model, family)).all()


@pytest.mark.parametrize("target", [0.1, 0.5, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("recipe", ["magnitude", "wanda"])
def test_ladder_targets_are_accepted(recipe, target):
    model, tok = tiny_model("llama")
    ctx = context("llama", tok)
    compress(model, config(recipe, sparsity=target, scope="layer"), ctx)
    assert abs(ctx.info["sparsity"]["measured"] - target) < 1e-3


@pytest.mark.parametrize("family", ["llama", "t5", "bart", "bert2bert"])
def test_group_ratios_per_group(family):
    model, tok = tiny_model(family)
    ratios = {"attn": 0.9, "ffn": 0.7, "lm_head": 0.8}
    if family in ("t5", "bart", "bert2bert"):
        ratios["cross"] = 0.4
    text = ",".join(f"{k}={v}" for k, v in ratios.items())
    norms = {n: p.clone() for n, p in model.named_parameters() if "norm" in n.lower()}
    ctx = context(family, tok)
    compress(model, make_config("magnitude", group_ratios=text), ctx)
    per_group = ctx.info["sparsity"]["per_group"]
    assert set(per_group) == set(ratios)
    for group, ratio in ratios.items():
        assert abs(per_group[group]["measured"] - ratio) < 2e-3, group
    emb = model.get_input_embeddings().weight
    if ctx.info["sparsity"]["lm_head_tied_to_embeddings"]:
        assert int((emb == 0).sum()) > 0  # tied: pruning the head prunes the embedding
    params = dict(model.named_parameters())
    assert norms and all(torch.equal(params[n], p) for n, p in norms.items())


def test_embeddings_only_when_asked():
    model, tok = tiny_model("bert")
    emb = model.embeddings.word_embeddings.weight.clone()
    compress(model, make_config("magnitude"), context("bert", tok))
    assert torch.equal(model.embeddings.word_embeddings.weight, emb)
    compress(model, make_config("magnitude", groups="embeddings"), context("bert", tok))
    assert (model.embeddings.word_embeddings.weight == 0).float().mean() == pytest.approx(
        0.5, abs=1e-3)


# --- N:M ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("recipe", ["magnitude", "wanda"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_pattern_holds_in_every_group(family, recipe, pattern):
    n, m = (int(x) for x in pattern.split(":"))
    model, tok = tiny_model(family)
    ctx = context(family, tok)
    compress(model, config(recipe, pattern=pattern), ctx)
    for t in targeted(model):
        w = out_in(t)
        groups = (w != 0).reshape(w.shape[0], w.shape[1] // m, m).sum(-1)
        assert (groups <= n).all(), t.name
        assert masks.zeros_in(t) == t.numel() * (m - n) // m
    assert ctx.info["sparsity"]["nm_holds"] is True


def test_nm_on_conv1d_groups_run_along_the_input():
    model, tok = tiny_model("gpt2")
    compress(model, make_config("magnitude", pattern="2:4"), context("gpt2", tok))
    w = model.transformer.h[0].mlp.c_fc.weight  # Conv1D: [in, out]
    groups = (w.t() != 0).reshape(w.shape[1], -1, 4).sum(-1)
    assert (groups == 2).all()


# --- Wanda ----------------------------------------------------------------------------


def _reference_wanda(model, batches, sparsity):
    """Naive Wanda: per block, a whole-model forward of the partly pruned model, then prune."""
    from compress.pruning.calibration import collect_input_sumsq
    from compress.sequential import mask_role

    for block in list(iter_blocks(model)):
        watched = {n: (block.linears[c], mask_role(c, block.role))
                   for c, n in block.linear_names.items()}
        sumsq, _ = collect_input_sumsq(model, batches, watched)
        for t in targeted(model):
            if t.name in watched:
                score = out_in(t).abs() * sumsq[t.name].sqrt()[None, :]
                k = round(sparsity * score.shape[1])
                idx = score.argsort(dim=1, stable=True)[:, :k]
                with torch.no_grad():
                    out_in(t).scatter_(1, idx, 0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "t5", "bart", "bert2bert"])
def test_sequential_wanda_equals_a_naive_whole_model_reference(family):
    model, tok = tiny_model(family)
    ref = copy.deepcopy(model)
    ctx = context(family, tok)
    compress(model, config("wanda", sparsity=0.5), ctx)
    batches = draw(tok, ctx.calibration, TASK[family], SPEC).batches(3)
    _reference_wanda(ref, batches, 0.5)
    for a, b in zip(targeted(model), targeted(ref), strict=True):
        same = ((out_in(a) == 0) == (out_in(b) == 0)).float().mean()
        assert same > 0.995, f"{a.name}: masks agree on only {same:.3%}"
    assert ctx.info["sparsity"]["measured"] == 0.5


def test_wanda_beats_magnitude_when_inputs_are_skewed():
    # one input feature carries large activations: magnitude ignores it, Wanda keeps it
    model, tok = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 3] *= 30
    ctx = context("llama", tok)
    dense = outputs(model, "llama")
    mag, wan = copy.deepcopy(model), copy.deepcopy(model)
    compress(mag, make_config("magnitude", sparsity=0.5, scope="row"), ctx)
    compress(wan, config("wanda", sparsity=0.5), ctx)
    err_mag = (outputs(mag, "llama") - dense).pow(2).mean()
    err_wan = (outputs(wan, "llama") - dense).pow(2).mean()
    assert err_wan < err_mag


# --- the sparse format -----------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_sparse_save_restores_identical_tensors(family, tmp_path):
    model, tok = tiny_model(family)
    compress(model, make_config("magnitude", sparsity=0.9, groups="attn,cross,ffn,embeddings"),
             context(family, tok))
    save_model(model, tok, tmp_path / "sparse")
    fmt = json.loads((tmp_path / "sparse" / "compress_format.json").read_text())["format"]
    assert fmt == "sparse-bitmask"
    model.save_pretrained(tmp_path / "dense")
    sparse_bytes = (tmp_path / "sparse" / "model.sparse.safetensors").stat().st_size
    dense_bytes = (tmp_path / "dense" / "model.safetensors").stat().st_size
    assert sparse_bytes < 0.5 * dense_bytes
    again = load_compressed(tmp_path / "sparse")
    assert type(again) is type(model)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    torch.testing.assert_close(outputs(again, family), outputs(model, family), rtol=0, atol=0)


def test_dense_models_keep_the_ordinary_format(tmp_path):
    from compress.pruning.sparse_format import applies

    model, tok = tiny_model("llama")
    assert not applies(model)
    compress(model, make_config("magnitude", sparsity=0.5), context("llama", tok))
    assert applies(model)


# --- recovery fine-tuning, iterative, rewind --------------------------------------------


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "t5", "bert2bert"])
def test_recovery_finetuning_keeps_zeros(family, method):
    model, tok = tiny_model(family)
    ctx = context(family, tok)
    cfg = make_config("magnitude", sparsity=0.5, finetune_steps=3, finetune_method=method,
                      finetune_batch_size=4, finetune_seq_len=16, finetune_lr=1e-2)
    before = copy.deepcopy(model)
    compress(model, cfg, ctx)
    assert ctx.info["sparsity"]["measured"] == 0.5
    changed = 0
    for t, t0 in zip(targeted(model), targeted(before), strict=True):
        changed += int((out_in(t) != 0).logical_and(out_in(t) != out_in(t0)).sum())
    assert changed > 0, "fine-tuning changed no surviving weight"
    step = ctx.info["pruning_steps"][-1]["finetune"]
    assert step["method"] == method and step["steps"] == 3


def test_iterative_schedule_with_rewind_restores_survivors():
    model, tok = tiny_model("llama")
    ref = {t.name: out_in(t).detach().clone() for t in targeted(model)}
    ctx = context("llama", tok)
    compress(model, make_config("magnitude", sparsity=0.8, iterative_steps=3, rewind=True), ctx)
    fractions = [s["fraction_of_target"] for s in ctx.info["pruning_steps"]]
    assert fractions[-1] == 1.0 and fractions == sorted(fractions) and len(fractions) == 3
    for t in targeted(model):
        w = out_in(t)
        assert torch.equal(w[w != 0], ref[t.name][w != 0])
        assert masks.zeros_in(t) == round(0.8 * t.numel())


def test_embedding_finetuning_distils_from_the_dense_model():
    model, tok = tiny_model("bert")
    ctx = context("bert", tok)
    compress(model, make_config("magnitude", sparsity=0.5, finetune_steps=2,
                                finetune_method="full", finetune_seq_len=16), ctx)
    ft = ctx.info["pruning_steps"][-1]["finetune"]
    assert "skipped" not in ft and ft["steps"] == 2


# --- clear errors --------------------------------------------------------------------------


@pytest.mark.parametrize("kw,match", [
    ({"sparsity": 0.0}, "sparsity=0.0 is out of range"),
    ({"sparsity": 1.0}, "sparsity=1.0 is out of range"),
    ({"sparsity": 50}, "sparsity=50.0 is out of range"),
    ({"pattern": "2:4", "sparsity": 0.3}, "conflicts with pattern 2:4"),
    ({"pattern": "3:4"}, "pattern='3:4' is not allowed"),
    ({"group_ratios": "attn=2"}, "group_ratios: group ratio attn=2 is a fraction.*0.02"),
    ({"group_ratios": "atn=0.5"}, "group_ratios: unknown group 'atn'; did you mean 'attn'"),
    ({"group_ratios": "attn"}, "group_ratios: group ratio 'attn' is not NAME=VALUE"),
    ({"groups": "ffn,norms"}, "groups: unknown group 'norms'"),
    ({"scope": "global", "recipe": "wanda"}, "scope='global' is not allowed"),
])
def test_bad_configs_give_one_line_errors(kw, match):
    kw = dict(kw)
    recipe = kw.pop("recipe", "magnitude")
    with pytest.raises(UserError, match=match) as err:
        make_config(recipe, **kw)
    assert "\n" not in str(err.value)


def test_unreachable_targets_are_clear_errors():
    model, tok = tiny_model("llama")  # rows of 32 inputs
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match="removes every weight of each row"):
        compress(model, make_config("magnitude", sparsity=0.99, scope="row"), context("llama", tok))
    with pytest.raises(UserError, match="removes no weight"):  # 0.0005 * 512 rounds to 0
        compress(model, make_config("magnitude", sparsity=0.0005), context("llama", tok))
    with pytest.raises(UserError, match="removes every weight of each row"):
        compress(model, config("wanda", sparsity=0.99), context("llama", tok))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="has no cross matrices"):
        compress(model, make_config("magnitude", group_ratios="cross=0.5"), context("llama", tok))
    with pytest.raises(UserError, match="needs calibration text"):
        compress(model, config("wanda"), Context(tokenizer=tok, task="causal-lm"))
    with pytest.raises(UserError, match="Wanda cannot score embeddings"):
        make_config("wanda", groups="attn,embeddings")


def test_cli_flags_and_errors(tmp_path, call_main):
    help_text = subprocess.run(
        [sys.executable, "-m", "compress.recipes.magnitude", "--help"],
        capture_output=True, text=True, check=True).stdout
    for flag in ("--sparsity", "--pattern", "--scope", "--group-ratios", "--finetune-steps",
                 "--finetune-method", "--iterative-steps", "--rewind"):
        assert flag in help_text
    from compress.cli import recipe_main

    rc, _, err = call_main(partial(recipe_main, "magnitude"), "--model", tmp_path, "--out", tmp_path / "x",
                           "--sparsity", "50")
    assert rc == 2
    assert err.startswith("error: magnitude: sparsity=50.0 is out of range")
    assert "Traceback" not in err
