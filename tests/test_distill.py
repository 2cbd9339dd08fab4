"""Distillation on tiny models of every family: student construction, losses, training,
exact resume, teacher cache, time budget, data files and the command line."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from functools import partial

import pytest
import torch
import transformers as tf

from compress import Context, UserError, compress, make_config
from compress.arch import arch_for, find_module_list, iter_blocks
from compress.distill import losses
from compress.distill.data import Batches, rows_from_file
from compress.distill.step import Weights, loss_terms, run_model
from compress.distill.student import (
    default_layer_map,
    make_student,
    parse_layer_map,
    resolve_layer_maps,
)
from compress.saving import load_compressed, save_model
from compress.tiny import sample_inputs, tiny_config, tiny_model, tiny_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression makes models smaller and faster, if it is done right.",
    "Pruning removes weights; quantization rounds them; distillation trains a student.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Numbers like 1, 2, 3, 10, 100 and 2026 appear in news text.",
    "A mixture of experts computes only the experts a router picks.",
] * 6

#: overrides that give each tiny family 4 blocks per stack.
FOUR = {
    "bert": dict(num_hidden_layers=4),
    "gpt2": dict(n_layer=4),
    "llama": dict(num_hidden_layers=4),
    "opt": dict(num_hidden_layers=4),
    "t5": dict(num_layers=4, num_decoder_layers=4),
    "bart": dict(encoder_layers=4, decoder_layers=4),
}
TASK = {"bert": "embedding", "gpt2": "causal-lm", "llama": "causal-lm", "opt": "causal-lm",
        "t5": "seq2seq", "bart": "seq2seq", "bert2bert": "seq2seq", "bert-cls": "classification"}


def four_block_model(family: str, seed: int = 0):
    """A tiny model of ``family`` with 4 blocks per stack (bert-cls: a BERT classifier)."""
    if family == "bert2bert":
        torch.manual_seed(seed)
        enc = tiny_config("bert", num_hidden_layers=4)
        dec = tiny_config("bert", num_hidden_layers=4, is_decoder=True, add_cross_attention=True)
        cfg = tf.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
        cfg.decoder_start_token_id, cfg.pad_token_id, cfg.eos_token_id = 1, 0, 2
        return tf.EncoderDecoderModel(config=cfg).eval(), tiny_tokenizer()
    if family == "bert-cls":
        return tiny_model("bert", seed=seed, classifier=True, num_hidden_layers=4)
    cfg = tiny_config(family)
    for key, value in FOUR[family].items():
        setattr(cfg, key, value)
    torch.manual_seed(seed)
    model = type(tiny_model(family)[0])(cfg)
    return model.eval(), tiny_tokenizer()


def rows_for(task: str):
    if task == "classification":
        return [(t, i % 3) for i, t in enumerate(TEXTS)]
    if task == "seq2seq":
        return [(t.lower().replace(",", "").replace(".", ""), t) for t in TEXTS]
    return list(TEXTS)


@pytest.fixture(autouse=True)
def small_held_out(monkeypatch):
    """Held-out rows from the tiny texts (the real validation splits are for real models)."""
    import compress.distill.data as dd

    monkeypatch.setattr(dd, "held_out_rows", lambda task: rows_for(task)[:8])


def outputs(model, family):
    fam = "bert" if family == "bert-cls" else family
    with torch.inference_mode():
        out = model(**sample_inputs(fam))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


ALL = ("bert", "bert-cls", "gpt2", "llama", "opt", "t5", "bart", "bert2bert")


# --------------------------------------------------------------------------- layer maps


def test_default_layer_map_keeps_first_and_last_and_matches_distilbert():
    assert default_layer_map(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's released map
    assert default_layer_map(6, 3) == [0, 3, 5]
    assert default_layer_map(30, 15) == [0, 2, 4, 6, 8, 10, 12, 15, 17, 19, 21, 23, 25, 27, 29]
    assert default_layer_map(4, 4) == [0, 1, 2, 3]
    assert default_layer_map(5, 1) == [4]
    with pytest.raises(UserError, match="between 1 and 4"):
        default_layer_map(4, 5)


def test_parse_layer_map_and_its_errors():
    assert parse_layer_map("0,2") == {"*": [0, 2]}
    assert parse_layer_map("encoder=0,1;decoder=1") == {"encoder": [0, 1], "decoder": [1]}
    for bad, msg in [("", "empty"), ("2,1", "increase"), ("0,0", "increase"), ("a,b", "comma"),
                     ("middle=0", "unknown stack"), ("-1", "start at 0"),
                     ("0;encoder=1", "either one list")]:
        with pytest.raises(UserError, match=msg):
            parse_layer_map(bad)


def test_resolve_layer_maps_per_stack():
    model, _ = four_block_model("t5")
    assert resolve_layer_maps(model) == {"encoder": [0, 3], "decoder": [0, 3]}
    assert resolve_layer_maps(model, per_stack={"decoder": 2}) == {
        "encoder": [0, 1, 2, 3], "decoder": [0, 3]}
    assert resolve_layer_maps(model, student_layers=3, per_stack={"encoder": 1}) == {
        "encoder": [3], "decoder": [0, 2, 3]}
    assert resolve_layer_maps(model, layer_map="decoder=1,2") == {
        "encoder": [0, 1, 2, 3], "decoder": [1, 2]}
    with pytest.raises(UserError, match="blocks 0..3; 7 does not exist"):
        resolve_layer_maps(model, layer_map="0,7")
    with pytest.raises(UserError, match="cannot have 6 blocks: the teacher's has 4"):
        resolve_layer_maps(model, student_layers=6)
    llama, _ = four_block_model("llama")
    with pytest.raises(UserError, match="no encoder stack"):
        resolve_layer_maps(llama, per_stack={"encoder": 1})


# --------------------------------------------------------------------------- the student


def _maps_for(model, layer_map="1,3"):
    return resolve_layer_maps(model, layer_map=layer_map)


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("layer_map", ["1,3", "0,2"])
def test_student_keeps_mapped_blocks_and_round_trips(family, layer_map, tmp_path):
    teacher, tok = four_block_model(family)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, maps = make_student(teacher, _maps_for(teacher, layer_map))
    # the teacher is untouched
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    spec = arch_for(student)
    keep = [int(x) for x in layer_map.split(",")]
    for stack in spec.stacks:
        _, s_blocks = find_module_list(student, stack.layers)
        _, t_blocks = find_module_list(teacher, stack.layers)
        assert len(s_blocks) == 2 and maps[stack.role] == keep
        for j, i in enumerate(keep):
            s_sd, t_sd = s_blocks[j].state_dict(), t_blocks[i].state_dict()
            rel = "relative_attention_bias"
            shared = [k for k in t_sd if rel not in k]
            assert shared and all(torch.equal(s_sd[k], t_sd[k]) for k in shared)
            if family == "t5":  # only the first kept block owns the relative position bias
                assert any(rel in k for k in s_sd) == (j == 0)
            for mod in s_blocks[j].modules():
                if hasattr(mod, "layer_idx"):
                    assert mod.layer_idx == j
    # embeddings and head come from the teacher
    t_names = dict(teacher.named_parameters())
    blocks = {b.name for b in iter_blocks(student)}
    outside = [n for n, _ in student.named_parameters()
               if not any(n.startswith(b + ".") for b in blocks)]
    assert outside and all(torch.equal(dict(student.named_parameters())[n], t_names[n])
                           for n in outside)
    # the config says 2 blocks and the folder round-trips with identical outputs
    expected = outputs(student, family)
    save_model(student, tok, tmp_path / "s")
    reloaded = load_compressed(tmp_path / "s")
    assert [len(find_module_list(reloaded, s.layers)[1]) for s in spec.stacks] == \
        [2] * len(spec.stacks)
    torch.testing.assert_close(outputs(reloaded, family), expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "opt", "t5", "bart", "bert2bert"])
def test_student_generation_with_kv_cache_matches_without(family):
    """layer_idx renumbered: the KV cache of block j is block j's, so cached decoding agrees."""
    teacher, _ = four_block_model(family)
    student, _ = make_student(teacher, _maps_for(teacher, "1,3"))
    inputs = sample_inputs(family if family != "bert2bert" else "bert2bert", batch=1, length=6)
    inputs.pop("decoder_input_ids", None)
    kw = dict(max_new_tokens=6, do_sample=False, num_beams=1, pad_token_id=0)
    with torch.inference_mode():
        cached = student.generate(**inputs, use_cache=True, **kw)
        plain = student.generate(**inputs, use_cache=False, **kw)
    assert torch.equal(cached, plain)


def test_llama_layer_types_follow_the_kept_blocks():
    teacher, _ = four_block_model("llama")
    teacher.config.layer_types = ["full_attention", "sliding_attention"] * 2
    student, _ = make_student(teacher, {"decoder": [1, 2]})
    assert student.config.layer_types == ["sliding_attention", "full_attention"]
    assert student.config.num_hidden_layers == 2


def test_bert2bert_sub_configs_updated():
    teacher, _ = four_block_model("bert2bert")
    student, _ = make_student(teacher, {"decoder": [0, 3]})
    assert student.config.decoder.num_hidden_layers == 2
    assert student.config.encoder.num_hidden_layers == 4
    assert student.decoder.config.num_hidden_layers == 2
    assert teacher.config.decoder.num_hidden_layers == 4


# --------------------------------------------------------------------------- losses


def test_loss_functions_zero_at_equality_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    assert losses.kd_loss(logits, logits.clone(), 2.0, mask) == 0
    other = logits + 0.5 * torch.randn(logits.shape, generator=g)
    assert losses.kd_loss(other, logits, 2.0, mask) > 0
    # padding positions do not count
    padded = other.clone()
    padded[0, 3:] = 100.0
    torch.testing.assert_close(losses.kd_loss(padded, logits, 2.0, mask),
                               losses.kd_loss(other, logits, 2.0, mask))
    # T^2 scaling: gradients keep their size, the value grows with T^2 for small differences
    h = torch.randn(2, 5, 8, generator=g)
    assert losses.cosine_loss([h], [h.clone()], [mask]) == 0
    assert losses.cosine_loss([h + torch.randn(h.shape, generator=g)], [h], [mask]) > 0
    assert losses.cosine_loss([3 * h], [h], [mask]).abs() < 1e-6  # scale-invariant
    p = torch.randn(4, 8, generator=g)
    assert losses.pooled_mse(p, p.clone()) == 0 and losses.pooled_mse(p + 0.1, p) > 0
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    lg = torch.randn(2, 3, 11, generator=g)
    manual = torch.nn.functional.cross_entropy(
        torch.stack([lg[0, 0], lg[0, 1], lg[1, 0]]), torch.tensor([1, 2, 3]))
    torch.testing.assert_close(losses.task_loss(lg, labels), manual)
    # a -inf teacher logit (a token the teacher rules out) gives no nan
    t = logits.clone()
    t[..., 0] = float("-inf")
    assert torch.isfinite(losses.kd_loss(other, t, 1.0, mask))


def _batch_for(family, task, tok):
    from compress.distill.data import Collator, tokenize_rows

    examples = tokenize_rows(rows_for(task), task, tok, 16)[:4]
    return Collator(task, tok.pad_token_id, 1 if task == "seq2seq" else None)(examples)


@pytest.mark.parametrize("family", ALL)
def test_each_loss_term_zero_for_identical_student_positive_after_change(family):
    teacher, tok = four_block_model(family)
    task = TASK[family]
    kind = arch_for(teacher).kind
    maps = resolve_layer_maps(teacher, layer_map="0,1,2,3")  # the identity map
    student, _ = make_student(teacher, maps)
    batch = _batch_for(family, task, tok)
    w = Weights(1.0, 1.0, 1.0, 2.0)
    wanted_s = {r: list(range(len(m))) for r, m in maps.items()}

    def terms(model):
        with torch.inference_mode():
            t = run_model(teacher, batch, task, maps)
            s = run_model(model, batch, task, wanted_s)
        return loss_terms(s, t, batch, task, kind, maps, w)[1]

    same = terms(student)
    expected = {"kd", "cos"} | ({"task"} if task != "embedding" else set())
    assert set(same) == expected
    assert same["kd"] == 0 and same["cos"] < 1e-6  # cos(h, h) is 1 up to rounding
    # a perturbed student: both teacher terms become positive
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    changed = terms(student)
    assert changed["kd"] > 0 and changed["cos"] > 0
    # a shallower student differs from the teacher too
    shallow, smaps = make_student(teacher, _maps_for(teacher, "0,3"))
    with torch.inference_mode():
        t = run_model(teacher, batch, task, smaps)
        s = run_model(shallow, batch, task, {r: [0, 1] for r in smaps})
    vals = loss_terms(s, t, batch, task, kind, smaps, w)[1]
    assert vals["kd"] > 0 and vals["cos"] > 0


# --------------------------------------------------------------------------- training


def _cfg(**kw):
    """Training settings; the fixed spread of blocks (these contexts have no calibration
    text to measure importance on; tests/test_recover.py tests the measured choice)."""
    base = dict(student_layers=2, steps=6, eval_every=2, batch_size=4, seq_len=16, lr=2e-3,
                eval_samples=8, warmup=0.0, layer_choice="spread")
    return make_config("distill", **(base | kw))


def _ctx(family, tok):
    task = TASK[family]
    return Context(tokenizer=tok, train=rows_for(task), task=task)


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("alpha_task", [1.0, 0.0])
def test_a_few_steps_reduce_the_loss(family, alpha_task):
    """15 steps lower the weighted objective (measured without dropout on a fixed batch);
    with alpha_task=0 the teacher terms alone, so the soft-target gradients point the right way."""
    if family == "bert" and alpha_task == 1.0:
        pytest.skip("an embedder has no task loss")
    teacher, tok = four_block_model(family)
    if alpha_task == 0.0:
        # random blocks are close to the identity (weights of std 0.02), so a shallower
        # student already matches a random teacher to 1e-4 and dropout noise swamps that:
        # make the blocks matter and switch dropout off
        with torch.no_grad():
            for block in iter_blocks(teacher):
                for lin in block.linears.values():
                    lin.weight.mul_(4.0)
        for mod in teacher.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    ctx = _ctx(family, tok)
    task = TASK[family]
    batch = _batch_for(family, task, tok)
    student0, maps = make_student(teacher, _maps_for(teacher, "0,3"))
    kind = arch_for(teacher).kind
    w = Weights(1.0, alpha_task, 1.0, 2.0)

    def objective(model):
        with torch.inference_mode():
            t = run_model(teacher, batch, task, maps)
            s = run_model(model, batch, task, {r: [0, 1] for r in maps})
        return loss_terms(s, t, batch, task, kind, maps, w)[0].item()

    cfg = _cfg(steps=15, keep_best=False, eval_every=15, alpha_task=alpha_task)
    student = compress(copy.deepcopy(teacher), cfg, ctx)
    assert objective(student) < 0.97 * objective(student0)
    info = ctx.info["distill"]
    assert info["steps_done"] == 15 and info["student_blocks"] == {r: 2 for r in maps}
    assert not student.training


@pytest.mark.parametrize("family", ["bert-cls", "llama", "bert2bert"])
def test_resume_after_interruption_gives_identical_weights(family, tmp_path, monkeypatch):
    """Uninterrupted 6 steps == 3 steps, KeyboardInterrupt, resume; also == a crash at step 3
    (the periodic checkpoint of step 2), resumed. BERT has dropout, so the RNG matters."""
    import compress.distill.trainer as trainer

    def run(ckpt, interrupt=None, crash=None, resume=False):
        teacher, tok = four_block_model(family)
        real = trainer.train

        def patched(*a, **k):
            if interrupt is not None:
                k["interrupt_at"] = lambda step: step == interrupt
            if crash is not None:
                def boom(step):
                    if step == crash:
                        raise RuntimeError("simulated crash")
                    return False
                k["interrupt_at"] = boom
            return real(*a, **k)

        monkeypatch.setattr(trainer, "train", patched)
        try:
            out = compress(teacher, _cfg(checkpoint_dir=str(ckpt), resume=resume, keep_best=False),
                           _ctx(family, tok))
        finally:
            monkeypatch.setattr(trainer, "train", real)
        return out

    whole = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", interrupt=3)
    state = json.loads((tmp_path / "b" / "last" / "state.json").read_text())
    assert state["step"] == 3
    resumed = run(tmp_path / "b", resume=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "c", crash=3)
    assert json.loads((tmp_path / "c" / "last" / "state.json").read_text())["step"] == 2
    crashed = run(tmp_path / "c", resume=True)
    for other in (resumed, crashed):
        sd = other.state_dict()
        for k, v in whole.state_dict().items():
            assert torch.equal(v, sd[k]), k
    # the loss curves agree too (same evaluations at the same steps)
    curves = [json.loads((tmp_path / d / "last" / "state.json").read_text())["curve"]
              for d in "abc"]
    assert [c["eval"] for c in curves[0]] == [c["eval"] for c in curves[1]]


def test_resume_refuses_a_different_run(tmp_path):
    teacher, tok = four_block_model("llama")
    compress(copy.deepcopy(teacher), _cfg(steps=2, checkpoint_dir=str(tmp_path)), _ctx("llama", tok))
    with pytest.raises(UserError, match="different run.*lr"):
        compress(copy.deepcopy(teacher), _cfg(steps=2, lr=1e-3, checkpoint_dir=str(tmp_path),
                                              resume=True), _ctx("llama", tok))
    with pytest.raises(UserError, match="nothing to resume"):
        compress(copy.deepcopy(teacher), _cfg(checkpoint_dir=str(tmp_path / "empty"),
                                              resume=True), _ctx("llama", tok))


def test_best_student_is_returned_and_recorded(tmp_path, monkeypatch):
    """With scripted held-out losses 5, 3, 4, 6 at steps 0, 2, 4, 6 the step-2 weights come
    back (from disk with a checkpoint folder, from memory without), not the last ones."""
    from safetensors.torch import load_file

    import compress.distill.trainer as trainer

    script = {0: 5.0, 2: 3.0, 4: 4.0, 6: 6.0}

    def scripted(self, model):
        return {"loss": script[self_steps.pop(0)]}

    teacher, tok = four_block_model("llama")
    results = []
    for ckpt in (tmp_path / "c", None):
        self_steps = [0, 2, 4, 6]
        monkeypatch.setattr(trainer.Evaluator, "__call__", scripted)
        ctx = _ctx("llama", tok)
        results.append(compress(copy.deepcopy(teacher),
                                _cfg(checkpoint_dir=None if ckpt is None else str(ckpt)), ctx))
        info = ctx.info["distill"]
        assert info["best_step"] == 2 and info["returned"] == "best"
        assert info["best_eval"] == {"loss": 3.0} and info["final_eval"] == {"loss": 6.0}
    best = load_file(str(tmp_path / "c" / "best" / "student.safetensors"))
    last = load_file(str(tmp_path / "c" / "last" / "student.safetensors"))
    on_disk, in_memory = (r.state_dict() for r in results)
    for k, v in best.items():
        assert torch.equal(on_disk[k], v) and torch.equal(in_memory[k], v), k
    assert any(not torch.equal(best[k], last[k]) for k in best)


def test_hard_labels_only_never_calls_the_teacher(monkeypatch):
    import compress.distill.teacher as teacher_mod

    teacher, tok = four_block_model("bert-cls")
    calls = []
    monkeypatch.setattr(teacher_mod.Teacher, "compute", lambda self, b: calls.append(1))
    ctx = _ctx("bert-cls", tok)
    compress(teacher, _cfg(hard_labels_only=True, steps=3), ctx)
    info = ctx.info["distill"]
    assert not calls and info["hard_labels_only"]
    assert set(info["curve"][-1]["train"]) == {"task", "total"}
    assert info["loss_weights"]["kd"] == 0 and info["loss_weights"]["cos"] == 0
    with pytest.raises(UserError, match="embedding model has no hard labels"):
        compress(four_block_model("bert")[0], _cfg(hard_labels_only=True), _ctx("bert", tok))


def test_cached_teacher_is_reused_and_close_to_on_the_fly(tmp_path):
    teacher, tok = four_block_model("bert-cls")
    ctx = _ctx("bert-cls", tok)
    fly = compress(copy.deepcopy(teacher), _cfg(steps=4), ctx)
    ctx1 = _ctx("bert-cls", tok)
    first = compress(copy.deepcopy(teacher), _cfg(steps=4, cache_teacher=True,
                                                  checkpoint_dir=str(tmp_path)), ctx1)
    assert ctx1.info["distill"]["teacher_cache"]["misses"] > 0
    ctx2 = _ctx("bert-cls", tok)
    again = compress(copy.deepcopy(teacher), _cfg(steps=4, cache_teacher=True,
                                                  checkpoint_dir=str(tmp_path / "x")), ctx2)
    # a different checkpoint folder is a different cache; the same one is reused
    assert ctx2.info["distill"]["teacher_cache"]["hits"] == 0
    ctx3 = _ctx("bert-cls", tok)
    compress(copy.deepcopy(teacher), _cfg(steps=4, cache_teacher=True, alpha_task=0.5,
                                          checkpoint_dir=str(tmp_path)), ctx3)
    c3 = ctx3.info["distill"]["teacher_cache"]
    assert c3["misses"] == 0 and c3["hits"] == 4 * 4
    for model in (first, again):
        for k, v in fly.state_dict().items():
            torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-3, atol=1e-4)


def test_cache_refused_when_it_would_not_fit():
    from compress.distill.teacher import check_cache_size

    with pytest.raises(UserError, match="GiB"):
        check_cache_size(10**12)


def test_time_budget_stops_cleanly(tmp_path):
    teacher, tok = four_block_model("llama")
    ctx = _ctx("llama", tok)
    student = compress(teacher, _cfg(steps=100_000, max_minutes=0.02, eval_every=1000,
                                     checkpoint_dir=str(tmp_path)), ctx)
    info = ctx.info["distill"]
    assert info["stopped_by"] == "time" and 0 < info["steps_done"] < 100_000
    assert info["train_seconds"] < 30
    state = json.loads((tmp_path / "last" / "state.json").read_text())
    assert state["step"] == info["steps_done"]
    assert len(find_module_list(student, ("model.layers",))[1]) == 2


def test_steps_zero_returns_the_initialised_student():
    teacher, tok = four_block_model("opt")
    ctx = _ctx("opt", tok)
    student = compress(copy.deepcopy(teacher), _cfg(steps=0), ctx)
    init, _ = make_student(teacher, resolve_layer_maps(teacher, student_layers=2))
    for k, v in init.state_dict().items():
        assert torch.equal(v, student.state_dict()[k])
    assert ctx.info["distill"]["stopped_by"] == "no-steps"
    assert "loss" in ctx.info["distill"]["initial_eval"]


def test_batches_are_a_pure_function_of_seed_and_step():
    a, b = Batches(10, 4, 2, seed=3), Batches(10, 4, 2, seed=3)
    assert list(a.for_step(7)) == list(b.for_step(7))
    seen = [i for s in range(5) for _, idx in a.for_step(s) for i in idx]  # 40 = 4 epochs
    assert sorted(seen) == sorted(list(range(10)) * 4)
    assert len(Batches(2, 5, 1, 0).micro(0)) == 5  # smaller than a batch: still works
    assert list(Batches(10, 4, 1, seed=4).for_step(0)) != list(a.for_step(0))


# --------------------------------------------------------------------------- config, data


def test_config_cross_field_rules():
    with pytest.raises(UserError, match="either layer_map or student_layers"):
        make_config("distill", layer_map="0,2", student_layers=2)
    with pytest.raises(UserError, match="resume needs checkpoint_dir"):
        make_config("distill", resume=True)
    with pytest.raises(UserError, match="alpha_task must be above 0"):
        make_config("distill", hard_labels_only=True, alpha_task=0.0)
    with pytest.raises(UserError, match="all 0"):
        make_config("distill", alpha_kd=0.0, alpha_task=0.0, alpha_cos=0.0)
    with pytest.raises(UserError, match="alpha_kd must be a finite number"):
        make_config("distill", alpha_kd=float("inf"))
    with pytest.raises(UserError, match="temperature=0.0 is out of range"):
        make_config("distill", temperature=0.0)


def test_run_time_checks_against_the_teacher():
    teacher, tok = four_block_model("llama")
    with pytest.raises(UserError, match="cannot have 6 blocks: the teacher's has 4"):
        compress(teacher, _cfg(student_layers=6), _ctx("llama", tok))
    with pytest.raises(UserError, match="keep every block of the teacher"):
        compress(teacher, _cfg(student_layers=4), _ctx("llama", tok))
    with pytest.raises(UserError, match="no encoder stack"):
        compress(teacher, _cfg(student_layers=None, encoder_layers=2), _ctx("llama", tok))


def test_data_files_text_csv_json(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(TEXTS))
    assert rows_from_file(tmp_path / "t.txt", "causal-lm")[:2] == TEXTS[:2]
    (tmp_path / "c.csv").write_text("text,label\n" + "\n".join(f'"{t}",{i % 3}'
                                                              for i, t in enumerate(TEXTS)))
    rows = rows_from_file(tmp_path / "c.csv", "classification")
    assert rows[1] == (TEXTS[1], 1)
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps({"source": t.lower(), "target": t})
                                                for t in TEXTS))
    assert rows_from_file(tmp_path / "s.jsonl", "seq2seq")[0] == (TEXTS[0].lower(), TEXTS[0])
    with pytest.raises(UserError, match="needs source, target"):
        rows_from_file(tmp_path / "c.csv", "seq2seq")
    with pytest.raises(UserError, match="does not exist"):
        rows_from_file(tmp_path / "nope.txt", "causal-lm")
    with pytest.raises(UserError, match="unsupported type .parquet"):
        (tmp_path / "x.parquet").write_text("")
        rows_from_file(tmp_path / "x.parquet", "causal-lm")
    # the recipe trains on the file and holds out its last 5%
    teacher, tok = four_block_model("bert-cls")
    ctx = Context(tokenizer=tok, train=[], task="classification")
    compress(teacher, _cfg(steps=2, data_file=str(tmp_path / "c.csv")), ctx)
    d = ctx.info["distill"]["data"]
    assert d["train"].startswith("file:") and d["eval_examples"] == 2


# --------------------------------------------------------------------------- command line


def _cli(*args, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "compress.recipes.distill", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_cli_teacher_aliases_and_unknown_names(tmp_path, call_main):
    from compress.errors import run_main
    from compress.recipes.distill import main as distill_main

    main = partial(run_main, distill_main)
    help_text = _cli("--help").stdout  # the real module path, once
    assert "--teacher" in help_text and "--student-layers" in help_text
    assert "--hard-labels-only" in help_text and "--max-minutes" in help_text
    # a short hub name resolves to its hub id; offline that is one clear line
    rc, _, err = call_main(main, "--teacher", "bert-large", "--out", tmp_path / "x")
    assert rc == 2, err
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("error: cannot load model 'bert-large' from the hub")
    assert "zoo model" in line and "minilm-l6-sentiment" in line
    # an unknown name is refused before any work, with the closest names
    rc, _, err = call_main(main, "--teacher", "bert-lage", "--out", tmp_path / "y")
    assert rc == 2
    assert err.strip().startswith("error: unknown model 'bert-lage'; did you mean")
    assert "'bert-large'" in err
    # --model still works as the generic name
    rc, _, err = call_main(main, "--model", "gpt2-xl", "--out", tmp_path / "z")
    assert rc == 2 and "cannot load model 'gpt2-xl'" in err
    assert not any((tmp_path / d).exists() for d in "xyz")


@pytest.mark.parametrize("bad,msg", [
    (["--layer-map", "2,1"], "layer_map: block numbers must increase"),
    (["--student-layers", "0"], "student_layers=0 is out of range"),
    (["--resume", "true"], "resume needs checkpoint_dir"),
])
def test_cli_rejects_bad_flags_in_one_line(tmp_path, bad, msg, call_main):
    from compress.errors import run_main
    from compress.recipes.distill import main

    rc, _, err = call_main(partial(run_main, main), "--teacher", "minilm-l6-sentiment", "--out", tmp_path / "o",
                           *bad)
    assert rc == 2 and msg in err and "Traceback" not in err and err.count("\n") == 1


def test_cli_distils_a_local_folder(tmp_path):
    model, tok = four_block_model("llama")
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(tmp_path / "teacher")
    tok.save_pretrained(tmp_path / "teacher")
    (tmp_path / "train.txt").write_text("\n".join(TEXTS))
    res = _cli("--teacher", str(tmp_path / "teacher"), "--out", str(tmp_path / "student"),
               "--data-file", str(tmp_path / "train.txt"), "--steps", "3", "--batch-size", "2",
               "--seq-len", "16", "--eval-samples", "2", "--calib-sequences", "0",
               "--layer-choice", "spread", "--checkpoint-dir", str(tmp_path / "ckpt"))
    assert res.returncode == 0, res.stderr
    assert "distill:" in res.stdout and "{'decoder': 4} -> {'decoder': 2}" in res.stdout
    student = load_compressed(tmp_path / "student")
    assert student.config.num_hidden_layers == 2
    record = json.loads((tmp_path / "student" / "distill.json").read_text())
    assert record["info"]["steps_done"] == 3 and record["config"]["steps"] == 3
    assert (tmp_path / "ckpt" / "last" / "student.safetensors").exists()
    # no pickle anywhere in the checkpoint
    assert all(p.suffix in (".safetensors", ".json") for p in (tmp_path / "ckpt").rglob("*")
               if p.is_file())


def test_masked_lm_teacher_distils_with_mlm_labels():
    """An encoder with an MLM head: KD over the vocabulary, task loss on masked tokens."""
    torch.manual_seed(0)
    teacher = tf.BertForMaskedLM(tiny_config("bert", num_hidden_layers=4)).eval()
    tok = tiny_tokenizer()
    ctx = Context(tokenizer=tok, train=list(TEXTS), task="embedding")
    student = compress(teacher, _cfg(steps=3), ctx)
    info = ctx.info["distill"]
    assert info["task"] == "masked-lm" and info["student_blocks"] == {"encoder": 2}
    assert {"task", "kd", "cos"} <= set(info["curve"][-1]["train"])
    assert isinstance(student, tf.BertForMaskedLM)


def test_half_precision_teacher_trains_in_fp32_and_returns_its_dtype():
    teacher, tok = four_block_model("llama")
    teacher = teacher.to(torch.bfloat16)
    student = compress(teacher, _cfg(steps=2), _ctx("llama", tok))
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
