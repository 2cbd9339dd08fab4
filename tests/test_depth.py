"""Block importance and the ``depth`` recipe on tiny models of the three architectures.

The must-show of issue 19: a block made an exact identity (its attention and FFN output
projections zeroed, so the residual block passes its input through) is ranked least
important by every block metric, and dropping it leaves the logits unchanged.
"""

from __future__ import annotations

import pytest
import torch

from compress import Context, UserError, compress, make_config
from compress.arch import arch_for, iter_blocks
from compress.calibration import CalibrationSpec, calibration_batches
from compress.pruning import sizes
from compress.pruning.influence import block_importance, hidden_importance
from compress.recipes.depth import BLOCK_MAP_ATTR
from compress.registry import get_recipe
from compress.tiny import sample_inputs, tiny_model

TEXTS = ["The quick brown fox jumps over the lazy dog. Compression makes models smaller.",
         "The capital of France is Paris, and the capital of Italy is Rome.",
         "Numbers like 1, 2, 3, 10, 100 and 2026 appear in news text."] * 6
PAIRS = [("the quick brown fox jumps", "The quick brown fox jumps."),
         ("paris is the capital of france", "Paris is the capital of France.")] * 8
TASK = {"llama": "causal-lm", "bert": "embedding", "t5": "seq2seq", "bart": "seq2seq"}
#: four blocks per stack, so that a middle block can be made an identity. Post-norm blocks
#: initialised at std 0.02 and 32 wide barely change their input (a skip divergence of
#: 1e-8 on bart), so bert and bart get larger weights: the other blocks must clearly matter.
DEEP = {"llama": {"num_hidden_layers": 4},
        "bert": {"num_hidden_layers": 4, "initializer_range": 0.2},
        "t5": {"num_layers": 4, "num_decoder_layers": 4},
        "bart": {"encoder_layers": 4, "decoder_layers": 4, "init_std": 0.2}}
SPEC = CalibrationSpec(sequences=4, seq_len=16)
#: the linears whose outputs are added to the residual stream.
OUTPUTS = ("attn_o", "cross_o", "ffn_out")


def context(family, tok):
    data = PAIRS if TASK[family] == "seq2seq" else TEXTS
    return Context(tokenizer=tok, calibration=data, train=data, task=TASK[family], calib=SPEC)


def logits(model, family):
    with torch.inference_mode():
        out = model(**sample_inputs(family))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def make_identity(model, role, index):
    """Zero the output projections (weights and biases) of one block."""
    block = next(b for b in iter_blocks(model) if b.role == role and b.index == index)
    zeroed = []
    with torch.no_grad():
        for comp in OUTPUTS:
            mod = block.linears.get(comp)
            if mod is None:
                continue
            mod.weight.zero_()
            if getattr(mod, "bias", None) is not None:
                mod.bias.zero_()
            zeroed.append(comp)
    assert "attn_o" in zeroed and "ffn_out" in zeroed, zeroed


def identity_model(family):
    model, tok = tiny_model(family, width=32, **DEEP[family])
    roles = [s.role for s in arch_for(model).stacks]
    for role in roles:
        make_identity(model, role, 2)
    return model, tok, roles


@pytest.mark.parametrize("family", ["llama", "bert", "t5", "bart"])
def test_an_identity_block_is_ranked_least_important(family):
    model, tok, roles = identity_model(family)
    batches = calibration_batches(context(family, tok), model)
    scores = block_importance(model, batches, TASK[family])
    for role in roles:
        s = scores[role]
        assert len(s.bi) == 4
        for metric in ("bi", "skip"):
            values = s.scores(metric)
            assert min(range(4), key=values.__getitem__) == 2, (role, metric, values)
            assert values[2] < 1e-5, (role, metric, values)
            others = [v for i, v in enumerate(values) if i != 2]
            assert min(others) > 10 * max(values[2], 1e-7), (role, metric, values)
        if s.loss is not None:  # skipping a block that changes nothing changes no loss
            assert abs(s.loss[2]) < 1e-5, (role, s.loss)
        else:  # a bare encoder has no labels to measure a loss on
            with pytest.raises(UserError, match="needs labels"):
                s.scores("loss")


@pytest.mark.parametrize("metric", ["skip", "bi"])
@pytest.mark.parametrize("family", ["llama", "bert", "t5", "bart"])
def test_dropping_an_identity_block_leaves_the_logits_unchanged(family, metric):
    model, tok, roles = identity_model(family)
    before = logits(model, family)
    ctx = context(family, tok)
    out = compress(model, make_config("depth", blocks=1, metric=metric), ctx)
    assert ctx.info["depth"]["dropped"] == {r: [2] for r in roles}
    assert getattr(out.config, BLOCK_MAP_ATTR) == {r: [0, 1, 3] for r in roles}
    assert {s.role: s.n_blocks for s in arch_for(out).stacks} == dict.fromkeys(roles, 3)
    torch.testing.assert_close(logits(out, family), before, rtol=1e-5, atol=1e-5)
    # the dense model is left as it was
    assert {s.role: s.n_blocks for s in arch_for(model).stacks} == dict.fromkeys(roles, 4)


def _reload(model, path):
    model.save_pretrained(path)
    return type(model).from_pretrained(path).eval()


@pytest.mark.parametrize("family", ["llama", "bert", "t5", "bart"])
def test_depth_reaches_its_target_and_reloads_in_plain_transformers(family, tmp_path):
    model, tok = tiny_model(family, width=32, **DEEP[family])
    dense = sizes.non_embedding(model)
    largest = max(n for counts in sizes.block_params(model).values() for n in counts)
    ctx = context(family, tok)
    out = compress(model, make_config("depth", target=0.6), ctx)
    kept = sizes.non_embedding(out)
    assert dense * 0.6 - largest < kept <= dense * 0.6
    info = ctx.info["depth"]
    assert info["non_embedding_fraction"] == pytest.approx(kept / dense, abs=1e-6)
    assert info["params_after"]["non_embedding"] == kept
    # the shared calibration set was read (and recorded for the report)
    assert ctx.info["calibration"]["sequences"] == SPEC.sequences
    for stack in arch_for(out).stacks:  # the config's depth matches the tensors
        assert len(out.get_submodule(stack.path)) == len(info["kept"][stack.role])
    again = _reload(out, tmp_path / "m")
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in out.parameters())
    torch.testing.assert_close(logits(again, family), logits(out, family), rtol=0, atol=1e-6)
    assert getattr(again.config, BLOCK_MAP_ATTR) == info["kept"]


def test_per_layer_config_lists_follow_the_kept_blocks(tmp_path):
    """gemma2 alternates sliding and full attention by ``config.layer_types``."""
    model, tok = tiny_model("gemma2", width=32, num_hidden_layers=4)
    types = list(model.config.layer_types)
    assert len(set(types)) == 2
    ctx = Context(tokenizer=tok, calibration=TEXTS, task="causal-lm", calib=SPEC)
    out = compress(model, make_config("depth", blocks=1), ctx)
    keep = ctx.info["depth"]["kept"]["decoder"]
    assert list(out.config.layer_types) == [types[i] for i in keep]
    again = _reload(out, tmp_path / "m")
    torch.testing.assert_close(logits(again, "gemma2"), logits(out, "gemma2"), rtol=0, atol=1e-6)


def test_a_shared_block_runs_fewer_times():
    """ALBERT runs one block N times: depth pruning cuts calls (compute), not weights."""
    model, tok = tiny_model("albert", width=32, num_hidden_layers=4)
    ctx = Context(tokenizer=tok, calibration=TEXTS, task="embedding", calib=SPEC)
    out = compress(model, make_config("depth", target=0.5), ctx)
    assert out.config.num_hidden_layers == 2
    assert ctx.info["depth"]["importance"]["encoder"]["per_call"] is True


def test_refusals_are_one_line():
    model, tok = tiny_model("llama", width=32)
    ctx = Context(tokenizer=tok, calibration=TEXTS, task="causal-lm", calib=SPEC)
    with pytest.raises(UserError, match="no block"):
        compress(model, make_config("depth", blocks=2), ctx)
    with pytest.raises(UserError, match="names no stack"):
        compress(model, make_config("depth", stacks="encoder"), ctx)
    with pytest.raises(UserError, match="calibration"):
        compress(model, make_config("depth"), Context(tokenizer=tok, task="causal-lm"))


def test_registration_gives_the_budget_search_its_knob():
    recipe = get_recipe("depth")
    assert recipe.family == "pruning"
    knob = recipe.knobs[0]
    assert (knob.field, knob.more) == ("target", "down")
    assert recipe.traits.calibrates_for(recipe.config_cls())
    assert recipe.memory_bytes(recipe.config_cls(), 4_000_000, 64) >= 4_000_000  # the student


def test_a_labelled_classifier_gets_skip_kl_and_skip_loss():
    model, tok = tiny_model("bert", width=32, classifier=True, initializer_range=0.2)
    data = [(t, i % 3) for i, t in enumerate(TEXTS)]
    ctx = Context(tokenizer=tok, calibration=data, task="classification", calib=SPEC)
    scores = block_importance(model, calibration_batches(ctx, model), "classification")
    s = scores["encoder"]
    assert s.skip_metric == "kl" and s.base_loss is not None and s.base_loss > 0
    assert len(s.loss) == 2 and all(v > 0 for v in s.skip)


def test_a_silenced_hidden_channel_scores_zero():
    """Channel 5 zeroed in every norm's gain: no attention, FFN or head reads it."""
    model, tok = tiny_model("llama", width=32)
    with torch.no_grad():
        for name, mod in model.named_modules():
            w = getattr(mod, "weight", None)
            if "norm" in name and w is not None and w.shape == (32,):
                w[5] = 0.0
    ctx = Context(tokenizer=tok, calibration=TEXTS, task="causal-lm", calib=SPEC)
    score = hidden_importance(model, calibration_batches(ctx, model))
    assert score.shape == (32,)
    assert score[5] == 0 and bool((score[torch.arange(32) != 5] > 0).all())


def test_a_second_depth_step_maps_back_to_the_dense_blocks():
    model, tok, _ = identity_model("llama")
    ctx = context("llama", tok)
    once = compress(model, make_config("depth", blocks=1), ctx)
    kept = ctx.info["depth"]["kept"]["decoder"]
    twice = compress(once, make_config("depth", blocks=1), ctx)
    again = ctx.info["depth"]["kept"]["decoder"]  # positions in ``once``
    assert getattr(twice.config, BLOCK_MAP_ATTR) == {"decoder": [kept[i] for i in again]}
    assert len(again) == 2 and 2 not in getattr(twice.config, BLOCK_MAP_ATTR)["decoder"]


def test_the_kv_cache_follows_the_kept_blocks():
    """Generation with the KV cache (indexed by each attention's renumbered layer_idx)
    matches generation without it."""
    model, tok = tiny_model("llama", width=32, num_hidden_layers=4)
    out = compress(model, make_config("depth", blocks=2), context("llama", tok))
    ids = sample_inputs("llama")["input_ids"][:1]
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.inference_mode():
        cached = out.generate(ids, use_cache=True, **kw)
        plain = out.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached, plain)


class _FakeRule:
    """Drop ``k`` of ``n`` blocks of one stack (the greedy's rule interface)."""

    def __init__(self, n, k):
        self.n, self.k, self.dropped = n, k, {"decoder": set()}

    def candidates(self):
        return [("decoder", i) for i in range(self.n)]

    def may_drop(self, r, i):
        return i not in self.dropped[r]

    def done(self):
        return len(self.dropped["decoder"]) >= self.k

    def drop(self, r, i):
        self.dropped[r].add(i)

    def unreachable(self):
        return UserError("nothing left")


def _set_cost(alone, pairs):
    """cost(S) = sum of each block's cost alone + a penalty for every pair in S."""
    def cost(blocks):
        return sum(alone[i] for i in blocks) + sum(
            p for (a, b), p in pairs.items() if a in blocks and b in blocks)
    return cost


def _run_greedy(cost, n, k, lazy=True):
    from compress.recipes import depth as d

    calls = []

    def refresh(skipped, candidates):
        calls.append(len(candidates))
        s = skipped["decoder"]
        return {c: cost(s | {c[1]}) for c in candidates}

    rule = _FakeRule(n, k)
    first = {c: cost({c[1]}) for c in rule.candidates()}
    if not lazy:  # SLEB's plain greedy: every remaining block measured every round
        order = []
        while not rule.done():
            best = min((c for c in rule.candidates() if rule.may_drop(*c)),
                       key=lambda c: (cost(rule.dropped["decoder"] | {c[1]}), c))
            rule.drop(*best)
            order.append(best[1])
        return order, None
    trace = d._greedy(rule, first, 0.0, refresh, marginal=True)
    return [t["block"] for t in trace], sum(calls)


def test_iterative_selection_does_not_drop_two_blocks_that_only_one_may_go():
    from compress.recipes import depth as d

    # blocks 0 and 1 each cost little alone, but both gone costs a lot (they do the same
    # work); ranking once drops both, re-measuring drops one of them and block 3
    cost = _set_cost([0.1, 0.2, 1.0, 0.5, 2.0], {(0, 1): 10.0})
    rule = _FakeRule(5, 2)
    first = {c: cost({c[1]}) for c in rule.candidates()}
    oneshot = d._greedy(rule, first, 0.0, None, marginal=True)
    assert sorted(t["block"] for t in oneshot) == [0, 1]
    order, _ = _run_greedy(cost, 5, 2)
    assert order == [0, 3]
    assert cost(set(order)) < cost({0, 1})


def test_lazy_greedy_equals_plain_greedy_with_fewer_measurements():
    import random

    rng = random.Random(0)
    for _ in range(30):
        n, k = 10, 5
        alone = [rng.random() for _ in range(n)]
        pairs = {(a, b): rng.random() * 2 for a in range(n) for b in range(a + 1, n)
                 if rng.random() < 0.3}  # penalties only: each drop makes later ones cost more
        cost = _set_cost(alone, pairs)
        lazy, measured = _run_greedy(cost, n, k)
        plain, _ = _run_greedy(cost, n, k, lazy=False)
        assert lazy == plain
        assert measured < sum(n - j for j in range(1, k))  # plain re-measures all, every round


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_iterative_depth_records_its_drops_and_matches_the_identity_case(family):
    model, tok, roles = identity_model(family)
    ctx = context(family, tok)
    out = compress(model, make_config("depth", blocks=1, selection="iterative"), ctx)
    info = ctx.info["depth"]
    assert info["selection"] == "iterative"
    for role in roles:
        assert info["dropped"][role] == [2]
    assert [t["block"] for t in info["drops"]] == [2] * len(roles)
    # a second stack's pick is measured again with the first stack's block gone
    assert info["remeasured"] >= len(roles) - 1
    assert sum(1 for _ in iter_blocks(out)) == 3 * len(roles)


@pytest.mark.parametrize("family,kw", [("llama", DEEP["llama"]), ("t5", DEEP["t5"]),
                                       ("bert", DEEP["bert"]), ("albert", {})])
def test_replaying_the_blocks_before_a_skipped_one_gives_the_same_scores(family, kw,
                                                                         monkeypatch):
    from compress.pruning import influence

    model, tok = tiny_model(family, width=32, **kw)
    task = TASK.get(family, "embedding")
    ctx = Context(tokenizer=tok, calibration=PAIRS if task == "seq2seq" else TEXTS,
                  train=TEXTS, task=task, calib=SPEC)
    batches = calibration_batches(ctx, model)
    fast = block_importance(model, batches, task, ("skip", "loss"))
    monkeypatch.setattr(influence, "REPLAY", False)
    slow = block_importance(model, batches, task, ("skip", "loss"))
    for role in fast:
        assert fast[role].skip == pytest.approx(slow[role].skip, rel=1e-4, abs=1e-7)
        if slow[role].loss is not None:
            assert fast[role].loss == pytest.approx(slow[role].loss, rel=1e-4, abs=1e-7)
    # nothing is left patched
    assert all("forward" not in m.__dict__ for m in model.modules())
