"""The lean protocol (eval.protocol), the main job's sweep file and eval.refcheck."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from compress.errors import UserError
from eval import protocol
from eval.benchmark.suites import SUITES
from eval.budget import comparable_runs
from eval.profiler import ROUNDS
from eval.refcheck import AGREES, CHANGED, DIFFERS, check, verdict
from eval.report import Report, run_key
from eval.sweep.runner import Estimator
from eval.sweep.spec import Job, load_sweep

ROOT = Path(__file__).resolve().parents[1]


def _report(name="m", recipe="identity", value=20.0, iv=(19.0, 21.0), proto="full",
            latency=None, config=None) -> Report:
    config = {"recipe": recipe, "version": 1, "seed": 0} | (config or {})
    metric = {"name": "ppl_wiki", "value": value, "higher_is_better": False, "protocol": {}}
    if iv is not None:
        metric["interval"] = {"low": iv[0], "high": iv[1]}
    profile = {"bytes_on_disk": 100e6, "params_nonzero": 1e6,
               "latency": {"1x128": {"median_ms": 10.0}}}
    if latency is not None:
        profile["latency_vs_dense"] = {"1x128": {"ratio": latency[0], "ci95": list(latency[1])}}
    r = Report(model={"name": name, "task": "causal-lm"},
               pipeline=[{"recipe": recipe, "config": config, "defaults": {"seed": 0}}],
               quick=proto == "quick", protocol=proto, status="ok", metrics=[metric],
               profile=profile, wall_time_s=10.0)
    r.git_commit = "abc"
    return r


def test_lean_settings_are_a_prefix_of_full_with_fewer_items():
    """Lean measures fewer of the full protocol's items, at the same lengths."""
    for task, suite in SUITES.items():
        assert suite.lean is not None, task
        for k, v in suite.full.items():
            if k in ("max_windows", "n_test", "n_train"):
                assert 0 < suite.lean[k] < v, (task, k)
            else:
                assert suite.lean[k] == v, (task, k)
        assert suite.settings(False) is suite.full
        assert suite.settings(True) is suite.quick
        with protocol.use("lean"):
            assert suite.settings(False) is suite.lean
            assert suite.settings(True) is suite.quick  # the quick flag wins
        assert suite.settings(False) is suite.full  # restored on exit
    w, r, g = ROUNDS["lean"]
    assert r < ROUNDS["full"][1] and g < ROUNDS["full"][2] and min(w, r, g) >= 1
    with pytest.raises(UserError, match="unknown protocol"):
        protocol.check("fast")


def test_lean_joins_the_key_and_report_full_and_quick_keys_unchanged():
    pipe = [{"config": {"recipe": "identity"}}]
    assert run_key("m", pipe, False) == run_key("m", pipe, False, protocol="full")
    assert run_key("m", pipe, True) == run_key("m", pipe, True, protocol="quick")
    assert run_key("m", pipe, False, protocol="lean") != run_key("m", pipe, False)
    full, lean = _report().to_dict(), _report(proto="lean").to_dict()
    assert "protocol" not in full and lean["protocol"] == "lean"
    assert lean["key"] != full["key"]
    assert protocol.of_report(full) == "full" and protocol.of_report(lean) == "lean"
    assert protocol.of_report(_report(proto="quick").to_dict()) == "quick"


def test_a_folder_compares_runs_only_with_a_baseline_of_their_protocol():
    runs = [_report(proto="lean").to_dict(), _report(recipe="magnitude", proto="lean").to_dict()]
    base, ok = comparable_runs(runs)
    assert protocol.of_report(base) == "lean" and len(ok) == 2
    runs.append(_report().to_dict())  # a full baseline joins: it wins, the lean runs drop out
    base, ok = comparable_runs(runs)
    assert protocol.of_report(base) == "full" and len(ok) == 1


def test_estimator_uses_lean_times_then_falls_back_on_full():
    full = _report(recipe="magnitude").to_dict() | {"wall_time_s": 100.0}
    est = Estimator([full])
    job = Job("m", (), False, protocol="lean")
    assert est.measured(job) and est(job) == 100.0
    est.add(_report(recipe="identity", proto="lean").to_dict() | {"wall_time_s": 30.0})
    assert est(job) == 30.0  # a lean run of the model now stands for lean jobs
    assert est(Job("m", (), False)) == 100.0  # full jobs keep the full times


def test_sweep_defaults_protocol_and_reference(tmp_path):
    text = textwrap.dedent(f"""
        name = "t"
        models = ["smollm2-135m"]
        [defaults]
        protocol = "lean"
        reference = "{tmp_path / 'ref'}"
        reports = "{tmp_path / 'out'}"
        [[runs]]
        recipe = "identity"
    """)
    (tmp_path / "t.toml").write_text(text)
    sweep = load_sweep(tmp_path / "t.toml")
    (job,) = sweep.jobs
    assert sweep.protocol == job.protocol == "lean" and sweep.reference == (tmp_path / "ref",)
    assert job.key == _report(name="smollm2-135m", proto="lean").to_dict()["key"]
    (tmp_path / "bad.toml").write_text(text.replace('"lean"', '"fast"'))
    with pytest.raises(UserError, match="protocol.*expected 'full' or 'lean'"):
        load_sweep(tmp_path / "bad.toml")


def test_the_main_sweep_is_lean_and_every_model_has_every_family():
    from eval.budget import family_of

    sweep = load_sweep(ROOT / "recipes" / "main.toml")
    assert sweep.protocol == "lean" and Path("reports") in sweep.reference
    assert sweep.reports != Path("reports")  # its own folder: the reference is never a cache
    families = {}
    for job in sweep.jobs:
        report = {"pipeline": job.pipeline, "model": {"name": job.model}}
        families.setdefault(job.model, set()).add(family_of(report))
    for model in sweep.models:
        assert {"baseline", "pruning", "quantization", "distillation",
                "moefication"} <= families[model], model


def test_verdict_rule():
    assert verdict(10.0, (9.0, 11.0), 10.9, (10.8, 11.5)) == AGREES  # overlap
    assert verdict(10.0, (9.0, 11.0), 12.0, (11.5, 12.5)) == DIFFERS
    assert verdict(10.0, (9.0, 11.0), 10.5, None) == AGREES  # old reference: value inside
    assert verdict(10.0, None, 10.5, (10.6, 11.0)) == DIFFERS
    assert verdict(10.0, None, 10.0, None) is None


def test_refcheck_matches_runs_by_configs_and_says_what_agrees(tmp_path):
    ref, lean_ref, out = tmp_path / "ref", tmp_path / "ref" / "lean", tmp_path / "out"
    lean_ref.mkdir(parents=True), out.mkdir()
    _report(value=20.0, iv=(19.5, 20.5), latency=(1.0, (0.95, 1.05))).write(ref)
    _report(value=20.3, iv=(19.0, 21.5), proto="lean").write(lean_ref)
    _report(recipe="magnitude", value=30.0, iv=(29.0, 31.0)).write(ref)
    _report(recipe="magnitude", value=40.0, iv=(38.0, 42.0), proto="quick").write(ref)
    _report(value=20.3, iv=(19.0, 21.5), proto="lean", latency=(1.02, (0.9, 1.1))).write(out)
    _report(recipe="magnitude", value=40.0, iv=(38.0, 42.0), proto="lean").write(out)
    _report(recipe="wanda", proto="lean").write(out)  # no reference run
    result = check(out, [ref, lean_ref])
    by_run = {e["run"]: e for e in result["runs"]}
    ident = {a["protocol"]: {n["number"]: n["verdict"] for n in a["numbers"]}
             for a in by_run["identity"]["against"]}
    assert ident == {"full": {"ppl_wiki": AGREES, "latency_vs_dense 1x128": AGREES},
                     "lean": {"ppl_wiki": AGREES}}
    # the full reference run, never the quick one of the same configs (which would agree)
    (mag,) = by_run["magnitude"]["against"]
    assert mag["protocol"] == "full" and mag["report"].endswith(
        _report(recipe="magnitude").filename)
    assert [n["verdict"] for n in mag["numbers"]] == [DIFFERS]
    assert by_run["wanda"]["against"] == []
    s = result["summary"]
    assert (s["runs"], s["with_reference"]) == (3, 2)
    assert s["full"] == {"runs": 2, "numbers": 3, AGREES: 2, DIFFERS: 1, CHANGED: 0}
    assert s["lean"] == {"runs": 1, "numbers": 1, AGREES: 1, DIFFERS: 0, CHANGED: 0}


def test_refcheck_does_not_compare_numbers_measured_another_way():
    """Sizes may differ (that is what lean changes); a scoring change may not."""
    from eval.refcheck import compare_run

    def rep(**proto):
        r = _report().to_dict()
        r["metrics"][0]["protocol"] = {"corpus": "wiki", "seq_len": 512} | proto
        return r

    run = rep(max_windows=8, protocol="lean")
    assert [n["verdict"] for n in compare_run(run, rep(max_windows=24))] == [AGREES]
    assert [n["verdict"] for n in compare_run(run, rep(max_windows=24, seq_len=256))] == [
        CHANGED]


def test_refcheck_cli_writes_its_json_beside_the_folder(tmp_path, capsys):
    from eval.refcheck import main

    ref, out = tmp_path / "ref", tmp_path / "runs" / "reports"
    ref.mkdir(), out.mkdir(parents=True)
    _report().write(ref)
    _report(proto="lean").write(out)
    assert main([str(out), "--reference", str(ref)]) == 0
    data = json.loads((tmp_path / "runs" / "refcheck.json").read_text())
    assert data["summary"]["with_reference"] == 1
    assert "agree with the reference" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(UserError, match="not a folder"):
        main([str(tmp_path / "missing"), "--reference", str(ref)])


def test_a_lean_run_end_to_end_on_a_tiny_decoder(tmp_path, monkeypatch):
    """eval.run with protocol=lean: the report, its key, the benchmark's windows, the
    profiler's rounds and the dense reference's cache key all say lean."""
    from compress import make_config
    from compress.tiny import tiny_model
    from eval.run import run_pipeline

    try:
        from compress import data

        data.load_split("wiki", "test")
    except Exception as exc:  # data files missing on this machine
        pytest.skip(f"compress.data cannot load splits: {exc}")
    monkeypatch.setenv("COMPRESS_DENSE_CACHE", str(tmp_path / "dense"))
    model, tok = tiny_model("llama")
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    path, report = run_pipeline(str(tmp_path / "m"), [make_config("identity")],
                                protocol="lean", reports_dir=tmp_path / "r")
    assert report["status"] == "ok", report["error"]
    assert report["protocol"] == "lean" and not report["quick"]
    assert report["key"] == run_key(str(tmp_path / "m"), report["pipeline"], False,
                                    protocol="lean")
    ppl = next(m for m in report["metrics"] if m["name"] == "ppl_wiki")
    assert ppl["protocol"]["max_windows"] == SUITES["causal-lm"].lean["max_windows"]
    assert ppl["protocol"]["protocol"] == "lean"
    assert ppl["extra"]["n_tokens"] <= 8 * 512
    prof = report["profile"]
    assert (prof["protocol"], prof["repeats"], prof["gen_repeats"]) == ("lean", *ROUNDS["lean"][1:])
    assert report["info"]["dense_reference"]["source"] == "measured"
    # the same model measured full: another dense reference (another protocol), full key
    _, full = run_pipeline(str(tmp_path / "m"), [make_config("identity")],
                           reports_dir=tmp_path / "r")
    assert "protocol" not in full and full["key"] != report["key"]
    assert full["info"]["dense_reference"]["key"] != report["info"]["dense_reference"]["key"]
    assert protocol.of(False) == "full"  # nothing left set after the runs


def test_main_job_steps_and_whole_job_estimate(monkeypatch, capsys):
    from compress import zoo
    from eval import mainjob

    lean = [n for n, _ in mainjob.steps(mainjob.LEAN, [])]
    full = [n for n, _ in mainjob.steps(mainjob.FULL, [])]
    assert lean == ["zoo", "sweep", "analysis", "report", "compare", "refcheck"]
    assert full == lean[:-1]  # the full job is the reference: nothing to check it against
    sweep_cmd = dict(mainjob.steps(mainjob.LEAN, ["--threads", "1"]))["sweep"]
    assert sweep_cmd[-2:] == ["--threads", "1"] and "runs/main/reports" in sweep_cmd
    monkeypatch.setattr(zoo, "is_built", lambda name: False)
    expected = sum(zoo.ZOO[n].typical_seconds for n in
                   ("smollm2-135m", "minilm-l6", "minilm-l6-sentiment", "bert2bert-punct"))
    assert mainjob.zoo_left() == expected  # minilm-l6 counted once, as a dependency
    monkeypatch.setattr(zoo, "is_built", lambda name: name != "bert2bert-punct")
    assert mainjob.zoo_left() == zoo.ZOO["bert2bert-punct"].typical_seconds
    monkeypatch.setattr(mainjob, "sweep_left", lambda layout: 600.0)
    total = mainjob.left(mainjob.LEAN, 0, lean)
    assert total == pytest.approx(zoo.ZOO["bert2bert-punct"].typical_seconds + 600.0
                                  + sum(mainjob.FIXED_SECONDS.values()))
    assert mainjob.left(mainjob.LEAN, 2, lean) == pytest.approx(
        sum(mainjob.FIXED_SECONDS.values()))
    monkeypatch.chdir(ROOT)
    assert mainjob.main(["--dry-run"]) == 0
    assert "estimate" in capsys.readouterr().out


def test_lengths_fit_a_model_with_few_positions():
    from eval.benchmark.suites import fit_to_positions

    full = SUITES["causal-lm"].full
    assert fit_to_positions(full, 8192) is full and fit_to_positions(full, None) is full
    fitted = fit_to_positions(full, 256)
    assert (fitted["seq_len"], fitted["stride"], fitted["fitted_to_positions"]) == (254, 254, 256)
    assert fitted["max_windows"] == full["max_windows"]
    cls = SUITES["classification"].full  # doc_len 256 needs two positions to spare
    assert fit_to_positions(cls, 512) is cls
    assert fit_to_positions(cls, 256)["doc_len"] == 254 and fit_to_positions(cls, 256)[
        "max_len"] == cls["max_len"]


@pytest.mark.parametrize("family,kw", [("gpt2", {}), ("roberta", {"classifier": True})])
def test_a_model_with_256_positions_is_benchmarked_not_crashed(family, kw, tmp_path,
                                                              monkeypatch):
    """Learned absolute positions (gpt2) and offset positions (roberta) below the suite's
    lengths: the benchmark fits its windows and texts and records it (was: IndexError)."""
    from compress import make_config
    from compress.tiny import tiny_model
    from eval.run import run_pipeline

    monkeypatch.setenv("COMPRESS_DENSE_CACHE", str(tmp_path / "dense"))
    monkeypatch.setitem(SUITES["classification"].quick, "n_test", 32)
    model, tok = tiny_model(family, **kw)
    limit = getattr(model.config, "max_position_embeddings", None) or model.config.n_positions
    assert limit == 256
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    try:
        _, report = run_pipeline(str(tmp_path / "m"), [make_config("identity")], quick=True,
                                 reports_dir=tmp_path / "r")
    except Exception as exc:  # data files missing on this machine
        pytest.skip(f"cannot run: {exc}")
    assert report["status"] == "ok", report["error"]
    fitted = [m["protocol"].get("fitted_to_positions") for m in report["metrics"]
              if m["name"] in ("ppl_wiki", "similarity_spearman")]
    assert fitted == [256]
