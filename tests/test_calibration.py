"""One calibration protocol: N sequences x L tokens, the same tensors for every recipe,
recorded in the report and part of the run key; padding never reaches a statistic."""

from __future__ import annotations

import copy

import pytest
import torch

from compress import Context, UserError, compress, make_config
from compress.calibration import CalibrationSpec, calibration_set, draw, run_key_part
from compress.tiny import tiny_model
from eval.report import Report, run_key
from eval.run import step_record

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Compression makes models smaller.",
    "Pruning removes weights; quantization rounds them; distillation trains a student.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Numbers like 1, 2, 3, 10, 100 and 2026 appear in news text.",
] * 6
PAIRS = [("the quick brown fox jumps", "The quick brown fox jumps."),
         ("paris is the capital of france and a city", "Paris is the capital of France, and a city.")] * 6


def _ctx(tok, task="causal-lm", data=TEXTS, spec=CalibrationSpec(8, 24)):
    return Context(tokenizer=tok, calibration=list(data), train=list(data), task=task, calib=spec)


@pytest.mark.parametrize("recipes", [("wanda", "gptq"), ("sparsegpt", "awq"), ("gptq", "owl")])
def test_two_calibrating_recipes_record_the_same_calibration_hash(recipes):
    model, tok = tiny_model("llama")
    ctx = _ctx(tok)
    records = []
    for name in recipes:
        compress(copy.deepcopy(model), make_config(name), ctx)
        records.append(dict(ctx.info["calibration"]))
    assert records[0] == records[1]
    assert records[0]["sequences"] == 8 and records[0]["tokens"] == 8 * 24
    # a fresh context with the same spec draws the very same tokens
    again = _ctx(tok)
    compress(copy.deepcopy(model), make_config(recipes[1]), again)
    assert again.info["calibration"]["sha256"] == records[0]["sha256"]


def test_changing_only_the_calibration_size_changes_the_run_key():
    configs = [make_config("gptq", bits=4)]
    pipeline = [step_record(c) for c in configs]
    keys = {run_key("m", pipeline, False, run_key_part(configs, spec))
            for spec in (CalibrationSpec(64, 256), CalibrationSpec(32, 256),
                         CalibrationSpec(64, 128), CalibrationSpec(64, 256, seed=1))}
    assert len(keys) == 4
    # a recipe that does not calibrate keeps its key (and its old reports)
    plain = [make_config("rtn", bits=4)]
    rtn = [step_record(c) for c in plain]
    assert run_key_part(plain, CalibrationSpec(32, 256)) is None
    assert run_key("m", rtn, False, run_key_part(plain, CalibrationSpec(8, 8))) == run_key(
        "m", rtn, False)
    # the report carries the spec and keys on it
    a = Report(model={"name": "m"}, pipeline=pipeline,
               calibration=run_key_part(configs, CalibrationSpec(64, 256)))
    b = Report(model={"name": "m"}, pipeline=pipeline,
               calibration=run_key_part(configs, CalibrationSpec(16, 256)))
    assert a.key != b.key and a.to_dict()["calibration"]["sequences"] == 64


def test_sweep_jobs_key_on_the_calibration_spec(tmp_path):
    from eval.sweep import load_sweep

    model, tok = tiny_model("llama")
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    keys = []
    for n in (16, 32):
        path = tmp_path / f"s{n}.toml"
        path.write_text(f'name = "s{n}"\nmodels = ["{tmp_path / "m"}"]\n[defaults]\n'
                        f'calib_sequences = {n}\nreports = "{tmp_path / "r"}"\n'
                        '[[runs]]\nrecipe = "wanda"\n[[runs]]\nrecipe = "magnitude"\n')
        sweep = load_sweep(path)
        keys.append({j.recipes[0]: j.key for j in sweep.jobs})
    assert keys[0]["wanda"] != keys[1]["wanda"]
    assert keys[0]["magnitude"] == keys[1]["magnitude"]
    bad = tmp_path / "bad.toml"
    bad.write_text(f'name = "b"\nmodels = ["{tmp_path / "m"}"]\n[defaults]\ncalib_seq_len = 1\n'
                   '[[runs]]\nrecipe = "wanda"\n')
    with pytest.raises(UserError, match="calib-seq-len"):
        load_sweep(bad)


def test_causal_lm_windows_are_exactly_L_tokens_seeded_and_deterministic():
    _, tok = tiny_model("llama")
    a = draw(tok, TEXTS, "causal-lm", CalibrationSpec(5, 16))
    b = draw(tok, TEXTS, "causal-lm", CalibrationSpec(5, 16))
    c = draw(tok, TEXTS, "causal-lm", CalibrationSpec(5, 16, seed=3))
    assert [s.input_ids.tolist() for s in a.sequences] == [s.input_ids.tolist() for s in b.sequences]
    assert a.record["sha256"] == b.record["sha256"] != c.record["sha256"]
    assert all(s.input_ids.numel() == 16 for s in a.sequences) and a.tokens == 80
    batches = a.batches(2)
    assert [bt.size for bt in batches] == [2, 2, 1]
    assert all(bt.token_masks["decoder"].all() for bt in batches)  # no padding
    # batching does not change the tokens
    flat = torch.cat([bt.inputs["input_ids"] for bt in a.batches(5)])
    assert torch.equal(flat, torch.cat([bt.inputs["input_ids"] for bt in batches]))


def test_short_examples_are_padded_masked_and_recorded():
    _, tok = tiny_model("bert2bert")
    cal = draw(tok, PAIRS, "seq2seq", CalibrationSpec(4, 8))
    assert cal.record["sequences"] == 4 and cal.record["target_tokens"] > 0
    (batch,) = cal.batches(4)
    enc, dec = batch.token_masks["encoder"], batch.token_masks["decoder"]
    assert int(enc.sum()) == cal.tokens and enc.shape[1] <= 8
    assert torch.equal(batch.inputs["labels"] != -100, dec.bool())
    with pytest.raises(UserError, match="needs calibration text"):
        draw(tok, [], "seq2seq", CalibrationSpec())
    with pytest.raises(UserError, match="--calib-sequences"):
        CalibrationSpec(sequences=-1)


def test_context_draws_once_and_writes_the_record():
    model, tok = tiny_model("gpt2")
    ctx = _ctx(tok)
    one = calibration_set(ctx, model)
    two = calibration_set(ctx, model)
    assert one is two and ctx.info["calibration"]["tokens"] == one.tokens


@pytest.mark.parametrize("family,task,data", [("bert", "embedding", TEXTS),
                                              ("bert2bert", "seq2seq", PAIRS)])
def test_gptq_hessians_skip_padding(family, task, data):
    """Padded batches of 4 give the same Hessians as unpadded batches of 1."""
    from compress.quant.gptq import HessianAccumulator
    from compress.quant.grid import weight_matrix
    from compress.quant.layers import select_targets
    from compress.sequential import all_linears, run_sequential

    model, tok = tiny_model(family)
    cal = draw(tok, data, task, CalibrationSpec(8, 12))
    targets = select_targets(model)
    hessians = []
    for bs in (1, 4):
        acc = {n: HessianAccumulator(weight_matrix(m).shape[1]) for n, m in targets.items()}

        def on_block(run, acc=acc):
            run.collect(all_linears(run.block), lambda name, x: acc[name].add(x))

        run_sequential(model, cal.batches(bs), on_block)
        hessians.append(acc)
    for name in targets:
        assert hessians[0][name].n == hessians[1][name].n > 0
        torch.testing.assert_close(hessians[0][name].H, hessians[1][name].H, rtol=1e-4, atol=1e-6)
