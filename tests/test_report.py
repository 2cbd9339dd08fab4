"""Report schema write/read, atomic writes, and the eval.compare table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from compress.errors import UserError
from compress.fileio import atomic_write_json
from eval.compare import (
    baseline_of,
    build_tables,
    column_names,
    delta_text,
    render,
    select_columns,
)
from eval.report import SCHEMA_VERSION, Report, pipeline_label, read_reports, run_key


def make_report(model="m", recipe="identity", config=None, metrics=None, profile=None,
                status="ok", quick=False, error=None):
    config = {"recipe": recipe, "version": 1, "seed": 0} | (config or {})
    r = Report(
        model={"name": model, "task": "causal-lm"},
        pipeline=[{"recipe": recipe, "config": config, "defaults": {"seed": 0, "sparsity": 0.5}}],
        quick=quick,
        status=status,
        error=error,
        metrics=metrics if metrics is not None else [
            {"name": "ppl_wiki", "value": 20.0, "higher_is_better": False, "protocol": {}}],
        profile=profile if profile is not None else {
            "bytes_on_disk": 100e6, "params_nonzero": 1e6,
            "latency": {"1x128": {"median_ms": 10.0}}},
    )
    r.git_commit = "abc"
    return r


def test_report_round_trip(tmp_path):
    r = make_report()
    path = r.write(tmp_path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["status"] == "ok"
    assert data["key"] == run_key("m", r.pipeline, False)
    (loaded,) = read_reports(tmp_path)
    assert loaded["metrics"] == r.metrics and loaded["profile"] == r.profile
    # the same run maps to the same file: a rerun replaces it
    assert make_report().write(tmp_path) == path and len(list(tmp_path.iterdir())) == 1
    assert make_report(quick=True).write(tmp_path) != path


def test_pipeline_label_shows_changed_fields_only():
    pipe = [{"recipe": "wanda", "config": {"recipe": "wanda", "version": 1, "seed": 0, "sparsity": 0.9},
             "defaults": {"recipe": "wanda", "version": 1, "seed": 0, "sparsity": 0.5}},
            {"recipe": "rtn", "config": {"bits": 4}, "defaults": {"bits": 4}}]
    assert pipeline_label(pipe) == "wanda(sparsity=0.9)+rtn"


def test_bad_json_files_are_skipped_with_one_line_each(tmp_path):
    make_report().write(tmp_path)
    (tmp_path / "broken.json").write_text('{"schema": "compress-suite/re')
    (tmp_path / "foreign.json").write_text('{"hello": 1}')
    future = make_report().to_dict() | {"schema_version": SCHEMA_VERSION + 1}
    (tmp_path / "future.json").write_text(json.dumps(future))
    bad_metric = make_report().to_dict()
    bad_metric["metrics"] = [{"name": "x", "value": "high"}]
    (tmp_path / "badmetric.json").write_text(json.dumps(bad_metric))
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / ".tmp-half.json").write_text("{")
    warnings: list[str] = []
    reports = read_reports(tmp_path, warn=warnings.append)
    assert len(reports) == 1
    assert len(warnings) == 5 and all("\n" not in w for w in warnings)
    assert any("newer than this suite" in w for w in warnings)
    assert any("unreadable JSON" in w for w in warnings)


def test_atomic_write_survives_a_killed_writer(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"old": True})
    script = textwrap.dedent(f"""
        import os, signal, tempfile, compress.fileio as f
        real = os.replace
        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        f.os.replace = die
        f.atomic_write_json({str(target)!r}, {{"new": True, "pad": "x" * 1000000}})
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert res.returncode == -9
    assert json.loads(target.read_text()) == {"old": True}
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers  # the temporary file of the killed writer, which readers skip
    assert [r for r in read_reports(tmp_path, warn=lambda _: None)] == []


def test_delta_colours_follow_direction():
    assert delta_text(10.0, 20.0, higher_is_better=False).style == "green"
    assert delta_text(10.0, 20.0, higher_is_better=True).style == "red"
    assert delta_text(30.0, 20.0, higher_is_better=True).plain == "+50.0%"
    assert delta_text(2000.0, 20.0, higher_is_better=False).plain == "100x"


def test_compare_table_rows_columns_and_deltas():
    base = make_report()
    pruned = make_report(recipe="magnitude", config={"sparsity": 0.9},
                         metrics=[{"name": "ppl_wiki", "value": 30.0, "higher_is_better": False,
                                   "protocol": {}}],
                         profile={"bytes_on_disk": 50e6, "params_nonzero": 1e5,
                                  "latency": {"1x128": {"median_ms": 12.0}}})
    failed = make_report(recipe="wanda", status="failed", metrics=[], profile={},
                         error="UserError: boom")
    other = make_report(model="n")
    reports = [r.to_dict() for r in (pruned, base, failed, other)]
    tables = build_tables(reports)
    assert [t.title for t in tables] == ["m (causal-lm)", "n (causal-lm)"]
    text = render(reports)
    lines = text.splitlines()
    idx = {name: next(i for i, line in enumerate(lines) if line.strip().startswith(name))
           for name in ("identity", "magnitude(sparsity=0.9)", "wanda")}
    assert idx["identity"] < idx["magnitude(sparsity=0.9)"]  # baseline first
    mag = lines[idx["magnitude(sparsity=0.9)"]]
    assert "30" in mag and "+50.0%" in mag and "-50.0%" in mag and "+20.0%" in mag
    assert "failed" in lines[idx["wanda"]] and "boom" in text
    md = render(reports, markdown=True)
    assert "### m (causal-lm)" in md and "| run" in md.replace("|  run", "| run")


def test_baseline_prefers_full_over_quick():
    quick = make_report(quick=True).to_dict()
    full = make_report().to_dict()
    assert baseline_of([quick, full]) is full


def test_compare_cli_prints_table_and_warnings(tmp_path):
    make_report().write(tmp_path)
    make_report(recipe="magnitude", config={"sparsity": 0.9}).write(tmp_path)
    (tmp_path / "junk.json").write_text("[]")
    env = os.environ | {"COLUMNS": "200"}
    res = subprocess.run([sys.executable, "-m", "eval.compare", str(tmp_path)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "identity" in res.stdout and "magnitude(sparsity=0.9)" in res.stdout
    assert res.stderr.count("warning: skipping") == 1
    md = subprocess.run([sys.executable, "-m", "eval.compare", str(tmp_path), "--markdown"],
                        capture_output=True, text=True)
    assert "| identity" in md.stdout.replace("|  identity", "| identity")
    missing = subprocess.run([sys.executable, "-m", "eval.compare", str(tmp_path / "nope")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.startswith("error: reports folder")


def test_compare_unknown_model_filter(tmp_path):
    make_report().write(tmp_path)
    res = subprocess.run([sys.executable, "-m", "eval.compare", str(tmp_path), "--model", "mm"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "unknown model 'mm'; did you mean 'm'" in res.stderr


def test_busy_machine_timings_are_flagged():
    busy = make_report(profile={"bytes_on_disk": 1e6, "latency": {"1x128": {"median_ms": 99.0}},
                                "busy_machine": True})
    text = render([busy.to_dict()])
    assert "99.0 ms*" in text and "timed on a busy machine" in " ".join(text.split())
    quiet = render([make_report().to_dict()])
    assert "*" not in quiet.replace("**", "")


def _headers(table):
    return [str(c.header) for c in table.columns]


def test_compare_columns_pick_and_order():
    base = make_report(metrics=[
        {"name": "ppl_wiki", "value": 20.0, "higher_is_better": False, "protocol": {}},
        {"name": "acc", "value": 0.8, "higher_is_better": True, "protocol": {}}])
    reports = [base.to_dict()]
    assert column_names(reports)[:2] == ["ppl_wiki", "acc"]
    assert {"disk", "lat 1x128", "peak RSS"} <= set(column_names(reports))
    (full,) = build_tables(reports)
    assert _headers(full) == ["run", "status", "ppl_wiki ↓", "acc ↑", "disk", "nonzero",
                              "lat 1x128"]
    # user's order, names matched ignoring case and spaces, duplicates dropped
    cols = select_columns(reports, ["lat 1x128", " ACC", "ppl_wiki", "acc"])
    assert cols == ["lat 1x128", "acc", "ppl_wiki"]
    (picked,) = build_tables(reports, cols)
    assert _headers(picked) == ["run", "status", "lat 1x128", "acc ↑", "ppl_wiki ↓"]
    text = render(reports, columns=["disk"])
    assert "100.0 MB" in text and "ppl_wiki" not in text and "10.0 ms" not in text
    # a valid column without data for this model is simply absent
    (no_rss,) = build_tables(reports, ["peak RSS", "acc"])
    assert _headers(no_rss) == ["run", "status", "acc ↑"]


def test_compare_unknown_column_names_closest():
    reports = [make_report().to_dict()]
    with pytest.raises(UserError) as err:
        select_columns(reports, ["ppl_wik"])
    msg = str(err.value)
    assert "\n" not in msg
    assert "unknown column 'ppl_wik'; did you mean 'ppl_wiki'?" in msg
    assert "Known columns:" in msg and "lat 1x128" in msg and "disk" in msg
    with pytest.raises(UserError, match="names no column"):
        select_columns(reports, [" ", ""])


def test_compare_cli_columns(tmp_path):
    make_report().write(tmp_path)
    make_report(recipe="magnitude", config={"sparsity": 0.9}).write(tmp_path)
    env = os.environ | {"COLUMNS": "200"}
    res = subprocess.run([sys.executable, "-m", "eval.compare", str(tmp_path), "--markdown",
                          "--columns", "disk,ppl_wiki"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    header = next(line for line in res.stdout.splitlines() if "run" in line and "|" in line)
    assert header.index("disk") < header.index("ppl_wiki") and "lat" not in header
    bad = subprocess.run([sys.executable, "-m", "eval.compare", str(tmp_path),
                          "--columns", "disk,latency"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: unknown column 'latency'")
    assert "Known columns:" in bad.stderr
