"""Several sweeps on one reports folder: claims, waiting, SIGKILL, shards and workers.

Real sweep processes run the test-only ``sweep-probe-test`` recipe (``tests/
sweep_helpers.py``: it logs each run to a file and sleeps) on a tiny llama saved to a
folder, so the tests see exactly which runs happened where, and how often.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from eval.report import read_reports
from eval.sweep import load_sweep
from eval.sweep.claims import held_elsewhere, parse_shard, shard_of, try_claim, wait_claim
from eval.sweep.runner import shard_jobs

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from compress.tiny import tiny_model

    model, tok = tiny_model("llama")
    model.config.architectures = ["LlamaForCausalLM"]
    out = tmp_path_factory.mktemp("models") / "llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def sweep_file(tmp_path: Path, llama: Path, levels=LEVELS, sleep: float = 0.5,
               name: str = "probe", extra: str = "", tail: str = "") -> Path:
    text = textwrap.dedent(f"""
        name = "{name}"
        models = ["{llama}"]
        imports = ["sweep_helpers"]
        [defaults]
        quick = true
        threads = 1
        calib_sequences = 4
        reports = "{tmp_path / 'reports'}"
        [[runs]]
        recipe = "sweep-probe-test"
        sleep = {sleep}
        log = "{tmp_path / 'probe.log'}"
        grid = {{ level = {list(levels)} }}
        {extra}
    """) + tail
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def start(path: Path, *args: str) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)])}
    return subprocess.Popen([sys.executable, "-m", "eval.sweep", str(path), *args], env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def finish(procs: list[subprocess.Popen], timeout: float = 900) -> list[str]:
    errs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        errs.append(err)
        assert p.returncode == 0, err[-3000:]
    return errs


def logged(tmp_path: Path) -> Counter:
    log = tmp_path / "probe.log"
    return Counter(log.read_text().split()) if log.exists() else Counter()


def check_folder(tmp_path: Path, path: Path) -> None:
    """Exactly the runs of the sweep, one report each, nothing partial or temporary."""
    reports = tmp_path / "reports"
    expected = {j.key for j in load_sweep(path).jobs}
    found = read_reports(reports)
    keys = [r["key"] for r in found]
    assert sorted(keys) == sorted(expected), "missing or duplicate reports"
    assert all(r["status"] == "ok" for r in found)
    files = [p for p in reports.iterdir() if p.is_file()]
    assert not [p for p in files if p.name.startswith(".tmp-")]
    assert len([p for p in files if p.suffix == ".json"]) == len(expected)
    for p in files:  # every file complete: the reports and their per-item samples
        if p.name.endswith(".samples.npz"):
            with np.load(p, allow_pickle=False) as data:
                assert "meta" in data.files
        else:
            json.loads(p.read_text())
    manifest = json.loads((reports / "sweeps" / f"{load_sweep(path).name}.json").read_text())
    assert {j["key"]: j["state"] for j in manifest["jobs"]} == dict.fromkeys(expected, "ok") \
        or all(j["state"] in ("ok", "skipped-ok") for j in manifest["jobs"])


# ----------------------------------------------------------------------- unit


def test_claims_are_exclusive_and_die_with_their_process(tmp_path):
    claim = try_claim(tmp_path, "abc")
    assert claim is not None
    assert try_claim(tmp_path, "abc") is None  # a second descriptor: flock is per open file
    assert held_elsewhere(tmp_path, "abc")
    claim.release()
    assert not held_elsewhere(tmp_path, "abc")
    # a holder killed with SIGKILL releases its claim (the kernel drops the lock)
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); "
            "from eval.sweep.claims import try_claim; "
            f"c = try_claim(__import__('pathlib').Path({str(tmp_path)!r}), 'abc'); "
            "print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert try_claim(tmp_path, "abc") is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        with wait_claim(tmp_path, "abc"):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()


def test_shards_are_deterministic_disjoint_and_complete(tmp_path, llama_dir):
    jobs = load_sweep(sweep_file(tmp_path, llama_dir, levels=[i / 100 for i in range(1, 40)])).jobs
    for n in (1, 2, 3, 7):
        parts = [shard_jobs(jobs, (k, n)) for k in range(1, n + 1)]
        keys = [j.key for part in parts for j in part]
        assert sorted(keys) == sorted(j.key for j in jobs) and len(set(keys)) == len(keys)
        assert [j.key for j in shard_jobs(jobs, (1, n))] == [j.key for j in parts[0]]
    assert all(shard_of(j.key, 3) == int(j.key, 16) % 3 for j in jobs)
    assert parse_shard("2/3") == (2, 3)
    from compress.errors import UserError

    for bad in ("0/3", "4/3", "x", "1/0", "1/2/3"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)


# ----------------------------------------------------------------------- processes


def test_two_sweeps_on_one_folder_run_each_job_once(tmp_path, llama_dir):
    path = sweep_file(tmp_path, llama_dir, sleep=1.0)
    procs = [start(path), start(path)]
    finish(procs)
    assert logged(tmp_path) == Counter(f"{lv:g}" for lv in LEVELS)  # each run exactly once
    check_folder(tmp_path, path)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "reports").glob("*.json")}
    finish([start(path)])  # a third sweep afterwards finds everything done
    assert logged(tmp_path) == Counter(f"{lv:g}" for lv in LEVELS)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "reports").glob("*.json")} == mtimes


def test_three_shards_give_the_runs_of_one_sweep(tmp_path, llama_dir):
    path = sweep_file(tmp_path, llama_dir, sleep=0.2)
    finish([start(path, "--shard", f"{k}/3") for k in (1, 2, 3)])
    assert logged(tmp_path) == Counter(f"{lv:g}" for lv in LEVELS)
    check_folder(tmp_path, path)


def test_workers_on_one_machine(tmp_path, llama_dir):
    path = sweep_file(tmp_path, llama_dir, sleep=0.5)
    errs = finish([start(path, "--workers", "3")])
    assert logged(tmp_path) == Counter(f"{lv:g}" for lv in LEVELS)
    check_folder(tmp_path, path)
    assert "starting 3 workers" in errs[0]


def test_sigkill_of_a_holder_then_a_successful_sweep(tmp_path, llama_dir):
    """Sweep A holds a run open and is killed with SIGKILL: its claim dies with it, and the
    next sweep runs that run and finishes."""
    hold = tmp_path / "hold"
    hold.touch()
    path = sweep_file(tmp_path, llama_dir, levels=(0.9,), sleep=0.0,
                      extra=f'hold = "{hold}"')
    a = start(path)
    try:
        deadline = time.time() + 300
        while logged(tmp_path)["0.9"] < 1:  # A is inside the run, holding its claim
            assert a.poll() is None and time.time() < deadline, a.stderr.read()[-2000:]
            time.sleep(0.1)
        key = load_sweep(path).jobs[0].key
        assert held_elsewhere(tmp_path / "reports", key)
        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=30)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert not held_elsewhere(tmp_path / "reports", key)  # no stale lock after SIGKILL
    assert read_reports(tmp_path / "reports") == []
    hold.unlink()
    finish([start(path)])
    assert logged(tmp_path)["0.9"] == 2  # started by A, run again (once) by the next sweep
    check_folder(tmp_path, path)


def test_a_waiting_sweep_takes_over_from_a_killed_holder(tmp_path, llama_dir):
    """Sweep B finds a run claimed by sweep A, does the other runs, waits for A's claim;
    A is killed with SIGKILL; B takes the run over and finishes the whole sweep."""
    hold = tmp_path / "hold"
    hold.touch()
    # two [[runs]] tables: 0.1 and 0.2 run straight through, 0.9 waits on the hold file
    held = textwrap.dedent(f"""
        [[runs]]
        recipe = "sweep-probe-test"
        level = 0.9
        hold = "{hold}"
        log = "{tmp_path / 'probe.log'}"
    """)
    path = sweep_file(tmp_path, llama_dir, levels=(0.1, 0.2), sleep=0.0, tail=held)
    only_slow = ["--only", "sweep-probe-test(*level=0.9*)"]
    a = start(path, *only_slow)
    b = None
    try:
        deadline = time.time() + 300
        while logged(tmp_path)["0.9"] < 1:
            assert a.poll() is None and time.time() < deadline, a.stderr.read()[-2000:]
            time.sleep(0.1)
        # level 0.9 waits on the hold file; 0.1 and 0.2 must not: B runs them unheld
        b = start(path)
        while logged(tmp_path)["0.1"] < 1 or logged(tmp_path)["0.2"] < 1:
            assert b.poll() is None and time.time() < deadline, b.stderr.read()[-2000:]
            time.sleep(0.1)
        time.sleep(2)
        assert b.poll() is None and logged(tmp_path)["0.9"] == 1  # B waits, runs nothing twice
        os.kill(a.pid, signal.SIGKILL)
        a.wait(timeout=30)
        while logged(tmp_path)["0.9"] < 2:  # B has taken the claim over and runs it
            assert b.poll() is None and time.time() < deadline, b.stderr.read()[-2000:]
            time.sleep(0.1)
        hold.unlink()
        finish([b])
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert logged(tmp_path) == Counter({"0.1": 1, "0.2": 1, "0.9": 2})
    check_folder(tmp_path, path)
