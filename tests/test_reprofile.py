"""eval.reprofile: old reports get a same-process latency ratio from a checked rebuild."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from compress import compress, make_config
from compress.errors import UserError
from compress.models import Loaded
from compress.tiny import tiny_model
from eval import reprofile
from eval.pipeline import step_record
from eval.profiler import profile

FAST = {"shapes": ((1, 16), (2, 16)), "warmup": 1, "repeats": 3}


def _step(recipe: str, version: int | None = None, **values) -> dict:
    rec = step_record(make_config(recipe, **values))
    if version is not None:
        rec["config"]["version"] = version
    return rec


def test_rebuild_reads_old_versions_drops_gone_options_and_trains_nothing():
    old = _step("wanda", sparsity=0.5)
    old["config"].update(version=1, nsamples=128, calib_batch_size=8)
    report = {"pipeline": [_step("distill", student_layers=2, steps=60), old,
                           _step("recover", steps=100)]}
    plan = reprofile.rebuild_configs(report)
    distill, wanda = plan.configs
    assert distill.steps == 0 and distill.layer_choice == "spread" and distill.student_layers == 2
    assert wanda.sparsity == 0.5 and wanda.RECIPE == "wanda"
    text = " | ".join(plan.changes)
    assert "distill: untrained rebuild (steps=0)" in text
    assert "wanda config version 1 read by version" in text
    assert "calib_batch_size, nsamples" in text
    assert "recover left out" in text
    with pytest.raises(UserError, match="nothing to rebuild"):
        reprofile.rebuild_configs({"pipeline": [_step("recover")]})


def test_a_layer_map_is_kept_as_recorded():
    plan = reprofile.rebuild_configs({"pipeline": [_step("distill", layer_map="0,2", steps=5)]})
    assert plan.configs[0].layer_map == "0,2" and plan.configs[0].steps == 0


def test_the_rebuild_check_names_what_differs():
    rec = {"params_total": 1000, "params_nonzero": 500, "bytes_in_memory": 4000,
           "bytes_on_disk": 10_000}
    assert reprofile.check_rebuild(dict(rec), rec) is None
    assert reprofile.check_rebuild(rec | {"bytes_in_memory": 4030}, rec) is None  # within 1%
    assert "parameters 999" in reprofile.check_rebuild(rec | {"params_total": 999}, rec)
    assert "params_nonzero 530" in reprofile.check_rebuild(rec | {"params_nonzero": 530}, rec)
    assert "bytes_in_memory None" in reprofile.check_rebuild(rec | {"bytes_in_memory": None}, rec)
    # a saved format that changed is a note, not a mismatch: the model in memory is timed
    assert reprofile.check_rebuild(rec | {"bytes_on_disk": 6_000}, rec) is None
    assert reprofile.disk_note(rec, rec) is None
    assert "saved format changed: 6000" in reprofile.disk_note(rec | {"bytes_on_disk": 6_000}, rec)


def _report(tmp_path, loaded: Loaded, sparsity: float, **profile_edits) -> tuple:
    """A report of ``magnitude`` on the tiny model, as eval.run would have left it before
    the profiler timed against dense (no latency_vs_dense)."""
    config = make_config("magnitude", sparsity=sparsity)
    model = compress(copy.deepcopy(loaded.model), config, None)
    prof = profile(model, loaded.tokenizer, loaded.task, quick=True, generate=False,
                   **FAST)
    prof.update(profile_edits)
    report = {"status": "ok", "quick": False, "model": {"name": "tiny", "task": loaded.task},
              "pipeline": [step_record(config)], "metrics": [{"name": "ppl", "value": 7.0}],
              "profile": prof}
    path = tmp_path / f"tiny__magnitude__{sparsity}.json"
    path.write_text(json.dumps(report))
    return path, report


@pytest.mark.parametrize("family,kw,task", [("llama", {}, "causal-lm"),
                                             ("bert", {"classifier": True}, "classification"),
                                             ("t5", {}, "seq2seq")])
def test_a_report_gets_the_ratio_of_its_checked_rebuild(tmp_path, monkeypatch, family, kw,
                                                        task):
    monkeypatch.setattr("eval.machine.is_busy", lambda *a, **k: False)
    model, tok = tiny_model(family, **kw)
    loaded = Loaded(model, tok, task, "tiny", None)
    before = copy.deepcopy(model.state_dict())
    path, report = _report(tmp_path, loaded, 0.5)
    assert reprofile.needs_ratio(report)
    result = reprofile.measure(report, loaded, copy.deepcopy(model), 1, False, **FAST)
    assert "skip" not in result, result
    new = reprofile.apply(report, result)
    vs = new["profile"]["latency_vs_dense"]
    assert set(vs) == {"1x16", "2x16"}
    for stats in vs.values():
        assert stats["ci95"][0] <= stats["ratio"] <= stats["ci95"][1] and stats["rounds"] == 3
    src = new["profile"]["latency_vs_dense_source"]
    assert src["threads"] == 1 and "git_commit" in src and src["rebuild_changes"] == []
    assert not reprofile.needs_ratio(report | {"profile": {"latency_vs_dense": {"1x128": {}}}})
    # nothing but the profile's additions changes; the dense model given is left as it was
    assert {k: v for k, v in new.items() if k != "profile"} == \
        {k: v for k, v in report.items() if k != "profile"}
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


def test_a_rebuild_that_differs_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setattr("eval.machine.is_busy", lambda *a, **k: False)
    model, tok = tiny_model("llama")
    loaded = Loaded(model, tok, "causal-lm", "tiny", None)
    _, report = _report(tmp_path, loaded, 0.5)
    report["profile"]["params_nonzero"] = report["profile"]["params_nonzero"] * 2
    result = reprofile.measure(report, loaded, copy.deepcopy(model), 1, False, **FAST)
    assert result["skip"].startswith("the rebuild differs from the report's model: params_nonzero")


def test_a_busy_machine_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("eval.machine.is_busy", lambda *a, **k: True)
    model, tok = tiny_model("llama")
    loaded = Loaded(model, tok, "causal-lm", "tiny", None)
    _, report = _report(tmp_path, loaded, 0.5)
    result = reprofile.measure(report, loaded, copy.deepcopy(model), 1, False, **FAST)
    assert "busy" in result["skip"] and "not written" in result["skip"]


def test_the_command_lists_what_it_would_measure(tmp_path, capsys):
    model, tok = tiny_model("llama")
    _report(tmp_path, Loaded(model, tok, "causal-lm", "tiny", None), 0.5)
    (tmp_path / "quick.json").write_text(json.dumps({"status": "ok", "quick": True,
                                                     "pipeline": [], "model": {"name": "x"}}))
    (tmp_path / "not-a-report.json").write_text("[1, 2]")
    assert reprofile.main([str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 report(s)") and "tiny__magnitude__0.5.json: rebuilt as recorded" in out
    with pytest.raises(UserError, match="not a folder of reports"):
        reprofile.main([str(tmp_path / "missing")])
    with pytest.raises(UserError, match="write each as BATCHxLENGTH"):
        reprofile.main([str(tmp_path), "--shapes", "1x"])


def test_a_model_that_does_not_load_skips_its_reports_only(tmp_path, capsys):
    model, tok = tiny_model("llama")
    path, report = _report(tmp_path, Loaded(model, tok, "causal-lm", "tiny", None), 0.5)
    report["model"]["name"] = str(tmp_path / "no-such-model")
    path.write_text(json.dumps(report))
    assert reprofile.main([str(tmp_path), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "skip the 1 report(s) of" in out and "cannot load it" in out
    assert out.rstrip().endswith("0 written, 1 skipped")
    assert json.loads(path.read_text()) == report  # left as it was


def test_report_md_says_how_many_latency_ratios_came_later():
    from eval.report.common import Writer
    from eval.report.overview import _latency_sources

    timed = {"profile": {"latency_vs_dense": {"1x128": {"ratio": 0.9}}}}
    later = {"profile": {"latency_vs_dense": {"1x128": {"ratio": 0.5}},
                         "latency_vs_dense_source": {"rebuild_changes": ["x"]}}}
    same = {"profile": {"latency_vs_dense": {"1x128": {"ratio": 1.0}},
                        "latency_vs_dense_source": {"rebuild_changes": []}}}
    w = Writer()
    _latency_sources(w, [timed, later, same, {"profile": {}}])
    assert w.text().startswith("2 of the 3 reports with a same-process latency ratio got it "
                               "later, from `python -m eval.reprofile`")
    assert "1 of those rebuilds differ" in w.text()
    w = Writer()
    _latency_sources(w, [timed])
    assert w.text() == "\n"  # nothing to say
