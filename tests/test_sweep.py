"""Sweep files: expansion, up-front errors, compatibility checks, skip/resume, budget search.

The end-to-end tests run real sweeps over tiny models saved to folders (real load,
recipes, benchmark and profiler in quick mode), including a failing run, a rerun that
repeats nothing, and a sweep killed with SIGKILL mid-run and then resumed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from compress.errors import UserError
from compress.registry import make_config
from compress.tiny import tiny_config
from eval.budget import family_of, parse_budget, pick_for_model
from eval.report import Report, read_reports
from eval.run import step_record
from eval.sweep import MANIFESTS, check_pipeline, load_sweep, run_sweep

TESTS = Path(__file__).resolve().parent


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Tiny llama and bert2bert saved as local folders (the model names of the sweeps)."""
    from compress.tiny import tiny_model

    root = tmp_path_factory.mktemp("models")
    out = {}
    for family in ("llama", "bert2bert"):
        model, tok = tiny_model(family)
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(root / family)
        tok.save_pretrained(root / family)
        out[family] = str(root / family)
    return out


class FakeRunner:
    """Stands in for eval.run.run_pipeline: writes a real report with made-up numbers.

    Perplexity 20 / (1 - s) and nonzeros 1 - s for a pruning sparsity s; fails for
    ``sweep-probe-test`` with fail=true (as a real failing run would: report written).
    """

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.quick: list[bool] = []

    def __call__(self, model, configs, *, quick, reports_dir, stage=None, **kw):
        from compress.calibration import CalibrationSpec, run_key_part

        self.quick.append(bool(quick))
        pipeline = [step_record(c) for c in configs]
        spec = kw.get("calibration") or CalibrationSpec()
        report = Report(model={"name": model, "task": "causal-lm"}, pipeline=pipeline, quick=quick,
                        calibration=run_key_part(configs, spec))
        self.calls.append((model, report.to_dict()["label"]))
        if stage:
            stage("compress")
        s = next(
            (getattr(c, "sparsity", 0.0) for c in configs if c.RECIPE in ("magnitude", "wanda")),
            0.0,
        )
        if any(getattr(c, "fail", False) for c in configs):
            report.status, report.error = "failed", "RuntimeError: on purpose"
        else:
            report.status = "ok"
            report.metrics = [
                {
                    "name": "ppl_wiki",
                    "value": 20 / (1 - s),
                    "higher_is_better": False,
                    "protocol": {},
                }
            ]
            report.profile = {
                "bytes_on_disk": 1e6,
                "params_nonzero": 1e6 * (1 - s),
                "latency": {"1x128": {"median_ms": 5.0}},
            }
        report.wall_time_s = 0.01
        path = report.write(reports_dir)
        return path, report.to_dict()


def quiet_console():
    from rich.console import Console

    return Console(file=open(os.devnull, "w"), force_terminal=False)


SWEEP = """
    name = "t"
    models = ["{a}", "{b}"]
    imports = ["sweep_helpers"]
    [defaults]
    reports = "{reports}"
    threads = 1
    [[runs]]
    recipe = "identity"
    [[runs]]
    recipe = "magnitude"
    grid = {{ sparsity = [0.5, 0.9] }}
    quick_grid = {{ sparsity = [0.5] }}
    [[runs]]
    pipeline = [ {{ recipe = "wanda", sparsity = 0.5 }}, "rtn bits=4" ]
    grid = {{ "rtn.bits" = [8, 4], "0.scope" = ["row", "layer"] }}
    models = ["{a}"]
    [[runs]]
    pipeline = ["magnitude sparsity=0.5", "rtn bits=8"]
    both_orders = true
    models = ["{a}"]
    skip_quick = true
    [[runs]]
    recipe = "magnitude"
    sparsity = 0.5
    models = ["{a}"]
"""


def make_sweep(tmp_path, tiny_models, text=SWEEP) -> Path:
    return write(
        tmp_path / "t.toml",
        text.format(
            a=tiny_models["llama"], b=tiny_models["bert2bert"], reports=tmp_path / "reports"
        ),
    )


def test_expansion_grids_orders_models_and_dedup(tmp_path, tiny_models, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    sweep = load_sweep(make_sweep(tmp_path, tiny_models))
    a, b = tiny_models["llama"], tiny_models["bert2bert"]
    labels = [(j.model, j.label) for j in sweep.jobs]
    assert labels[:2] == [(a, "identity"), (b, "identity")]
    assert (a, "magnitude(sparsity=0.9)") in labels and (b, "magnitude(sparsity=0.9)") in labels
    wr = [lbl for m, lbl in labels if lbl.startswith("wanda")]
    assert sorted(wr) == sorted(
        [
            "wanda(scope=layer)+rtn",
            "wanda(scope=layer)+rtn(bits=4)",
            "wanda+rtn",
            "wanda+rtn(bits=4)",
        ]
    )  # wanda's default scope is row, rtn's bits 8
    assert (a, "magnitude+rtn") in labels and (a, "rtn+magnitude") in labels
    # the last run repeats magnitude 0.5 on a: run once
    assert labels.count((a, "magnitude")) == 1
    assert len(labels) == 2 + 4 + 4 + 2
    assert len({j.key for j in sweep.jobs}) == len(sweep.jobs)
    assert sweep.threads == 1 and sweep.reports == tmp_path / "reports" and not sweep.quick
    quick = load_sweep(make_sweep(tmp_path, tiny_models), quick=True)
    qlabels = [j.label for j in quick.jobs]
    assert "magnitude(sparsity=0.9)" not in qlabels and "magnitude+rtn" not in qlabels
    assert all(j.quick for j in quick.jobs) and len(qlabels) == 2 + 2 + 4
    only_b = load_sweep(make_sweep(tmp_path, tiny_models), models=[b])
    assert {j.model for j in only_b.jobs} == {b}


@pytest.mark.parametrize(
    "body, message",
    [
        (
            'models = ["{a}"]\nmodles = []\n[[runs]]\nrecipe = "identity"',
            "unknown key 'modles'; did you mean 'models'",
        ),
        (
            'models = ["{a}"]\n[[runs]]\nrecipe = "magnitud"',
            "runs[0]: unknown recipe 'magnitud'; did you mean 'magnitude'",
        ),
        (
            'models = ["{a}"]\n[[runs]]\nrecipe = "magnitude"\nsparsty = 0.5',
            "unknown magnitude option 'sparsty'; did you mean 'sparsity'",
        ),
        (
            'models = ["{a}"]\n[[runs]]\nrecipe = "magnitude"\ngrid = {{ sparsity = [0.5, 1.5] }}',
            "sparsity=1.5 is out of range",
        ),
        (
            'models = ["{a}"]\n[[runs]]\npipeline = ["wanda", "rtn"]\ngrid = {{ sparsity = [0.5] }}',
            "in a pipeline write RECIPE.FIELD",
        ),
        (
            'models = ["{a}"]\n[[runs]]\npipeline = ["wanda", "rtn"]\ngrid = {{ "gptq.bits" = [4] }}',
            "runs[0].grid.gptq.bits: unknown recipe of the pipeline 'gptq'",
        ),
        (
            'models = ["nosuchmodel"]\n[[runs]]\nrecipe = "identity"',
            "bad.toml: models: unknown model 'nosuchmodel'",
        ),
        (
            'models = ["{a}"]\nbudgets = ["size"]\n[[runs]]\nrecipe = "identity"',
            "budgets: budget 'size'",
        ),
        ('models = ["{a}"]', "no [[runs]]"),
        (
            'models = ["{a}"]\n[[runs]]\nrecipe = "identity"\npipeline = ["rtn"]',
            "either recipe = NAME or pipeline",
        ),
        (
            'models = ["{a}"]\n[[runs]]\npipeline = ["rtn"]\nboth_orders = true',
            "needs a pipeline of two",
        ),
        (
            'models = ["{a}"]\n[defaults]\nthreads = 0\n[[runs]]\nrecipe = "identity"',
            "threads: expected a whole number",
        ),
        (
            'models = ["{a}"]\n[[runs]]\npipeline = ["wanda pattern=2:4", "gptq bits=4"]',
            "pipeline wanda -> gptq: the 2:4 zeros from wanda would not survive gptq",
        ),
        ('models = ["{a}"]\nmodels = 3', "not valid TOML"),
    ],
)
def test_errors_before_anything_runs(tmp_path, tiny_models, body, message):
    path = write(tmp_path / "bad.toml", body.format(a=tiny_models["llama"]))
    with pytest.raises(UserError) as info:
        load_sweep(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("bad.toml")
    assert not (tmp_path / "reports").exists()


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_sweep(tmp_path / "nope.toml")
    (tmp_path / "x.yaml").write_text("models: []")
    with pytest.raises(UserError, match="sweep files are TOML"):
        load_sweep(tmp_path / "x.yaml")


@pytest.mark.parametrize(
    "steps, message",
    [
        (
            [("wanda", {"pattern": "2:4"}), ("gptq", {})],
            "2:4 zeros from wanda would not survive gptq",
        ),
        ([("magnitude", {"sparsity": 0.9}), ("distill", {})], "unstructured zeros from magnitude"),
        ([("dynamic-int8", {}), ("rtn", {})], "dynamic-int8 turns the model into a runtime format"),
        ([("onnx-int8", {}), ("magnitude", {})], "put onnx-int8 last"),
        ([("rtn", {"bits": 4}), ("distill", {})], "distill would train the weights rtn rounded"),
        ([("rtn", {}), ("gptq", {})], "keep one quantization step"),
        (
            [("structured", {"ffn_ratio": 0.3}), ("wanda", {"pattern": "2:4"})],
            "2:4 pattern of wanda needs widths divisible by 4, but the FFN width is 45 after structured",
        ),
        (
            [("structured", {"ffn_ratio": 0.3}), ("moefy", {"num_experts": 16})],
            "num_experts=16 of moefy needs widths divisible by 16, but the FFN width is 45",
        ),
        ([("moefy", {"num_experts": 6})], "num_experts=6 of moefy needs widths divisible by 6"),
        (
            [("moefy", {}), ("rtn", {"bits": 8})],
            "rtn would quantize attention only; put rtn before",
        ),
    ],
)
def test_incompatible_pipelines(steps, message):
    configs = [make_config(r, **p) for r, p in steps]
    with pytest.raises(UserError, match=message):
        check_pipeline(configs, tiny_config("llama"))


@pytest.mark.parametrize(
    "steps",
    [
        [("magnitude", {"sparsity": 0.5}), ("rtn", {"bits": 4, "scheme": "asym"})],
        [("wanda", {"pattern": "2:4"}), ("rtn", {"bits": 8})],
        [("wanda", {"sparsity": 0.5}), ("dynamic-int8", {})],
        [("structured", {"ffn_ratio": 0.25}), ("wanda", {"pattern": "2:4"}), ("rtn", {"bits": 4})],
        [("distill", {}), ("rtn", {"bits": 4})],
        [("rtn", {"bits": 8}), ("moefy", {})],
        [("gptq", {"bits": 4}), ("magnitude", {"sparsity": 0.5})],
    ],
)
def test_compatible_pipelines(steps):
    check_pipeline([make_config(r, **p) for r, p in steps], tiny_config("llama"))


def test_rtn_keeps_exact_zeros_as_the_table_says():
    """The compatibility table's claim for rtn, checked on a pruned tiny model."""
    import torch

    from compress.api import compress
    from compress.context import Context
    from compress.tiny import tiny_model

    model, tok = tiny_model("llama")
    model = compress(
        model, make_config("magnitude", pattern="2:4", sparsity=0.5), Context(tokenizer=tok)
    )
    before = {n: (p == 0) for n, p in model.named_parameters() if p.dim() == 2}
    for scheme in ("sym", "asym"):
        out = compress(model, make_config("rtn", bits=4, scheme=scheme), Context(tokenizer=tok))
        for n, p in out.named_parameters():
            if n in before and before[n].any():
                assert torch.all(p[before[n]] == 0), f"{scheme}: zeros of {n} lost"


def test_fake_sweep_skips_done_retries_failed_and_writes_manifest(
    tmp_path, tiny_models, monkeypatch
):
    monkeypatch.syspath_prepend(str(TESTS))
    text = (
        SWEEP
        + """
    [[runs]]
    recipe = "sweep-probe-test"
    fail = true
    models = ["{a}"]
"""
    )
    sweep = load_sweep(make_sweep(tmp_path, tiny_models, text))
    fake = FakeRunner()
    out = run_sweep(sweep, run_fn=fake, console=quiet_console())
    n = len(sweep.jobs)
    assert out.ran == n == len(fake.calls) and out.count("failed") == 1
    assert len(read_reports(sweep.reports)) == n
    manifest = json.loads((sweep.reports / MANIFESTS / "t.json").read_text())
    assert len(manifest["jobs"]) == n
    assert sorted(j["state"] for j in manifest["jobs"]).count("failed") == 1
    assert all(j["report"] for j in manifest["jobs"])
    # rerun: nothing repeated but the failed run (retried by default)
    fake.calls.clear()
    again = run_sweep(load_sweep(sweep.path), run_fn=fake, console=quiet_console())
    assert fake.calls == [(tiny_models["llama"], "sweep-probe-test(fail=True)")]
    assert again.count("skipped-ok") == n - 1
    fake.calls.clear()
    run_sweep(load_sweep(sweep.path), run_fn=fake, console=quiet_console(), retry_failed=False)
    assert fake.calls == []
    assert len(read_reports(sweep.reports)) == n


@pytest.mark.parametrize("probes", ["quick", "full"])
def test_budget_search_finds_the_boundary(tmp_path, tiny_models, probes):
    text = f"""
        name = "s"
        models = ["{tiny_models["llama"]}"]
        budgets = ["nonzeros=0.3"]
        search_runs = 3
        search_probes = "{probes}"
        [defaults]
        reports = "{tmp_path / "reports"}"
        [[runs]]
        recipe = "identity"
        [[runs]]
        recipe = "magnitude"
        sparsity = 0.5
    """
    sweep = load_sweep(write(tmp_path / "s.toml", text))
    fake = FakeRunner()
    run_sweep(sweep, run_fn=fake, console=quiet_console())
    tried = [label for _, label in fake.calls]
    # 0.5 misses nonzeros<=0.3 and is the only run of the knob: the most compressed
    # setting, 0.99, meets it; the line through the two crosses 0.3 at 0.7, which meets
    # it; 0.69, one step below, confirms the boundary by missing. Quick probes: then
    # 0.7 once more, with the full protocol
    probed = [
        "identity",
        "magnitude",
        "magnitude(sparsity=0.99)",
        "magnitude(sparsity=0.7)",
        "magnitude(sparsity=0.69)",
    ]
    assert tried == probed + (["magnitude(sparsity=0.7)"] if probes == "quick" else [])
    assert fake.quick == [False, False] + [probes == "quick"] * 3 + (
        [False] if probes == "quick" else [])
    reports = read_reports(sweep.reports)
    (p,) = [
        p for p in pick_for_model(reports, parse_budget("nonzeros=0.3")) if p.family == "pruning"
    ]
    assert p.label == "magnitude(sparsity=0.7)" and not p.chosen["quick"]
    manifest = json.loads((sweep.reports / MANIFESTS / "s.json").read_text())
    origins = [j["origin"] for j in manifest["jobs"]]
    assert origins.count("search nonzeros=0.3") == 3
    assert origins.count("search nonzeros=0.3: full protocol") == (probes == "quick")
    # a rerun finds everything done, searches included
    fake.calls.clear()
    run_sweep(load_sweep(sweep.path), run_fn=fake, console=quiet_console())
    assert fake.calls == []


def test_search_probes_is_checked(tmp_path, tiny_models):
    text = f"""
        name = "s"
        models = ["{tiny_models["llama"]}"]
        search_probes = "fast"
        [[runs]]
        recipe = "identity"
    """
    with pytest.raises(UserError, match="search_probes.*'quick', 'full'"):
        load_sweep(write(tmp_path / "s.toml", text))


# ----------------------------------------------------------------------- real, end to end


def test_real_sweep_on_tiny_models_with_a_failing_run(tmp_path, tiny_models, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    text = f"""
        name = "e2e"
        models = ["{tiny_models["llama"]}", "{tiny_models["bert2bert"]}"]
        imports = ["sweep_helpers"]
        [defaults]
        quick = true
        threads = 1
        calib_sequences = 8
        reports = "{tmp_path / "reports"}"
        [[runs]]
        recipe = "identity"
        [[runs]]
        recipe = "magnitude"
        sparsity = 0.5
        models = ["{tiny_models["llama"]}"]
        [[runs]]
        recipe = "sweep-probe-test"
        fail = true
        models = ["{tiny_models["llama"]}"]
    """
    sweep = load_sweep(write(tmp_path / "e2e.toml", text))
    out = run_sweep(sweep, console=quiet_console())
    assert out.ran == 4 and out.count("ok") == 3 and out.count("failed") == 1
    reports = {(r["model"]["name"], r["label"]): r for r in read_reports(sweep.reports)}
    assert len(reports) == 4
    failed = reports[(tiny_models["llama"], "sweep-probe-test(fail=True)")]
    assert failed["status"] == "failed" and "on purpose" in failed["error"]
    mag = reports[(tiny_models["llama"], "magnitude")]
    dense = reports[(tiny_models["llama"], "identity")]
    assert mag["profile"]["params_nonzero"] < dense["profile"]["params_nonzero"]
    assert {m["name"] for m in reports[(tiny_models["bert2bert"], "identity")]["metrics"]} >= {
        "chrf"
    }
    mtimes = {p: p.stat().st_mtime_ns for p in sweep.reports.glob("*.json")}
    again = run_sweep(load_sweep(sweep.path), console=quiet_console(), retry_failed=False)
    assert again.ran == 0
    assert {p: p.stat().st_mtime_ns for p in sweep.reports.glob("*.json")} == mtimes


def test_killed_sweep_resumes_without_repeating_or_losing_runs(tmp_path, tiny_models):
    log_file = tmp_path / "probe.log"
    reports = tmp_path / "reports"
    levels = (0.1, 0.2, 0.3)
    text = f"""
        name = "kill"
        models = ["{tiny_models["llama"]}"]
        imports = ["sweep_helpers"]
        [defaults]
        quick = true
        threads = 1
        calib_sequences = 4
        reports = "{reports}"
        [[runs]]
        recipe = "sweep-probe-test"
        sleep = 3.0
        log = "{log_file}"
        grid = {{ level = {list(levels)} }}
    """
    path = write(tmp_path / "kill.toml", text)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "eval.sweep", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    try:
        # the second probe has started (its line is logged) and sleeps inside its run
        while time.time() < deadline:
            if log_file.exists() and len(log_file.read_text().split()) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail(f"sweep ended early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        else:
            pytest.fail("sweep did not reach its second run in time")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first = read_reports(reports)
    assert [r["pipeline"][0]["config"]["level"] for r in first] == [0.1]
    assert not [p for p in reports.iterdir() if p.suffix == ".json" and p.stat().st_size == 0]
    kept = {p: p.stat().st_mtime_ns for p in reports.glob("*.json")}

    sys.path.insert(0, str(TESTS))
    try:
        out = run_sweep(load_sweep(path), console=quiet_console())
    finally:
        sys.path.remove(str(TESTS))
    assert out.ran == 2 and out.count("skipped-ok") == 1 and out.count("ok") == 2
    final = read_reports(reports)
    assert sorted(r["pipeline"][0]["config"]["level"] for r in final) == list(levels)
    assert all(r["status"] == "ok" for r in final)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished run untouched
    # every level finished exactly once; only the killed one (0.2) had started twice
    assert log_file.read_text().split() == ["0.1", "0.2", "0.2", "0.3"]


@pytest.mark.parametrize(
    "name, quick, n", [("default", False, 39), ("default", True, 28), ("extended", False, None)]
)
def test_committed_sweep_files_parse_and_check(name, quick, n):
    root = TESTS.parent
    sweep = load_sweep(root / "recipes" / f"{name}.toml", quick=quick)
    assert len({j.key for j in sweep.jobs}) == len(sweep.jobs)
    if n is not None:
        assert len(sweep.jobs) == n
    families = {(j.model, family_of(j.pipeline)) for j in sweep.jobs}
    for model in ("smollm2-135m", "minilm-l6-sentiment", "bert2bert-punct"):
        for family in ("pruning", "quantization", "distillation", "moefication"):
            assert (model, family) in families, f"{name}: no {family} run on {model}"


def test_both_orders_with_a_step_grid(tmp_path, tiny_models):
    text = f"""
        models = ["{tiny_models["llama"]}"]
        [[runs]]
        pipeline = ["wanda", "rtn"]
        grid = {{ "1.bits" = [8, 4] }}
        both_orders = true
    """
    sweep = load_sweep(write(tmp_path / "o.toml", text))
    assert sorted(j.label for j in sweep.jobs) == sorted(
        ["wanda+rtn", "wanda+rtn(bits=4)", "rtn+wanda", "rtn(bits=4)+wanda"]
    )


def test_runs_timed_with_other_threads_are_redone(tmp_path, tiny_models):
    model = tiny_models["llama"]
    text = f"""
        models = ["{model}"]
        [defaults]
        threads = 2
        reports = "{tmp_path / 'reports'}"
        [[runs]]
        recipe = "identity"
    """
    sweep = load_sweep(write(tmp_path / "th.toml", text))
    (job,) = sweep.jobs
    old = Report(model={"name": model}, pipeline=job.pipeline, status="ok",
                 environment={"threads": 1})
    old.write(sweep.reports)
    fake = FakeRunner()
    run_sweep(sweep, run_fn=fake, console=quiet_console())
    assert fake.calls == [(model, "identity")]  # measured with 1 thread: measured again
    fake.calls.clear()
    run_sweep(load_sweep(sweep.path, threads=1), run_fn=fake, console=quiet_console())
    assert fake.calls == []  # the new report records no threads: taken as matching


def test_only_keeps_runs_whose_label_matches(tmp_path, tiny_models):
    model = tiny_models["llama"]
    text = f"""
        models = ["{model}"]
        [defaults]
        reports = "{tmp_path / 'reports'}"
        [[runs]]
        recipe = "identity"
        [[runs]]
        recipe = "magnitude"
        grid = {{ sparsity = [0.5, 0.9] }}
    """
    path = write(tmp_path / "only.toml", text)
    assert len(load_sweep(path).jobs) == 3
    sweep = load_sweep(path, only=["magnitude(sparsity=0.9)", "ident*"])
    assert sorted(j.label for j in sweep.jobs) == ["identity", "magnitude(sparsity=0.9)"]
    with pytest.raises(UserError, match="matches no run.*did you mean 'magnitude"):
        load_sweep(path, only=["magnitude(sparsity=0.3)"])
