"""SIGKILL a real process in the middle of writing a distillation checkpoint.

Whatever the moment, the checkpoint folder afterwards holds the previous complete
checkpoint or the new complete one (never a truncated or half-swapped one), and a run
resumed from it ends with the same weights, bit for bit, as one never interrupted.
Also the two ways :func:`compress.fileio.atomic_dir` replaces a folder (one atomic
exchange; two renames where that is unsupported), each killed at its worst moment.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import transformers as tf

from compress import Context, compress, make_config
from compress.tiny import tiny_config, tiny_tokenizer

TESTS = Path(__file__).resolve().parent

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression makes models smaller and faster, if it is done right.",
    "Pruning removes weights; quantization rounds them; distillation trains a student.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
] * 4

STEPS = 10


def run_distill(ckpt: Path, resume: bool = False) -> torch.nn.Module:
    """A tiny llama distilled for STEPS steps, a checkpoint after every step."""
    import compress.distill.data as dd

    cfg = tiny_config("llama")
    cfg.num_hidden_layers = 4
    torch.manual_seed(0)
    teacher, tok = tf.LlamaForCausalLM(cfg).eval(), tiny_tokenizer()
    config = make_config(
        "distill", student_layers=2, steps=STEPS, eval_every=1, batch_size=2, seq_len=16,
        lr=2e-3, eval_samples=4, warmup=0.0, checkpoint_dir=str(ckpt), resume=resume,
        layer_choice="spread",
    )
    # the real validation splits are for real models; restored afterwards, because this
    # also runs inside the pytest process and later tests need the real function
    real = dd.held_out_rows
    dd.held_out_rows = lambda task: TEXTS[:4]
    try:
        ctx = Context(tokenizer=tok, train=list(TEXTS), task="causal-lm")
        return compress(teacher, config, ctx)
    finally:
        dd.held_out_rows = real


#: the child: trains with checkpoint writes made slow (each file written in chunks with
#: pauses), printing when each save begins and ends. ``mode == "between-renames"``: no
#: atomic exchange, and the process kills itself after moving the old ``last`` aside.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    import safetensors.torch as st
    import compress.fileio as fileio
    import compress.checkpoint as tr
    from test_checkpoint_kill import run_distill

    def slow_write(data, path):
        with open(path, "wb") as fh:
            step = max(1, len(data) // 8)
            for i in range(0, len(data), step):
                fh.write(data[i:i + step]); fh.flush(); time.sleep(0.02)

    st.save_file = lambda tensors, path, metadata=None: slow_write(st.save(tensors, metadata), path)
    real_weights = tr.save_weights
    def slow_weights(model, path):
        real_weights(model, path)
        slow_write(Path(path).read_bytes(), path)
    tr.save_weights = slow_weights

    real_save = tr.save_checkpoint
    def save(folder, model, opt, rng, state):
        print("begin", state["step"], flush=True)
        real_save(folder, model, opt, rng, state)
        print("end", state["step"], flush=True)
    tr.save_checkpoint = save

    if {mode!r} == "between-renames":
        fileio._exchange = lambda a, b: False
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if Path(src).name == "last" and {kill_step} in saves:
                os.kill(os.getpid(), signal.SIGKILL)   # old `last` aside, new not yet in
        saves = set()
        def count(folder, model, opt, rng, state):
            saves.add(state["step"])
            save(folder, model, opt, rng, state)
        tr.save_checkpoint = count
        fileio.os.replace = replace
    run_distill(Path({ckpt!r}))
""")


def _saves(lines: list[str]) -> tuple[int, int]:
    """(step of the last save that began, step of the last that ended)."""
    began = ended = 0
    for line in lines:
        word, _, step = line.partition(" ")
        if word == "begin":
            began = int(step)
        elif word == "end":
            ended = int(step)
    return began, ended


def _check_complete(last: Path) -> int:
    """The checkpoint in ``last`` reads whole; returns its step."""
    from safetensors.torch import load_file

    from compress.distill.trainer import load_checkpoint

    state, opt_t, _, rng = load_checkpoint(last.parent)
    assert opt_t and "cpu" in rng
    assert load_file(str(last / "student.safetensors"))
    assert sorted(p.name for p in last.iterdir()) == [
        "optimizer.safetensors", "rng.safetensors", "state.json", "student.safetensors"]
    assert len(state["curve"]) == state["step"] + 1  # step 0 and every step since
    return state["step"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's final weights."""
    return run_distill(tmp_path_factory.mktemp("ref") / "ckpt").state_dict()


@pytest.mark.parametrize("mode", ["random", "between-renames"])
def test_sigkill_mid_checkpoint_leaves_a_complete_one_and_resume_works(
        mode, tmp_path, reference):
    ckpt = tmp_path / "ckpt"
    kill_step = 3
    script = CHILD.format(tests=str(TESTS), mode=mode, ckpt=str(ckpt), kill_step=kill_step)
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seed = random.randrange(10**6)
    delay = random.Random(seed).uniform(0.0, 1.5)
    lines: list[str] = []
    try:
        if mode == "random":
            deadline = time.time() + 240
            while time.time() < deadline:  # a complete checkpoint exists, then a random moment
                line = proc.stdout.readline()
                if not line:
                    pytest.fail(f"child ended early: {proc.stderr.read()[-2000:]}")
                lines.append(line.strip())
                if line.startswith("end"):
                    break
            else:
                pytest.fail("child did not save a checkpoint in time")
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines += [line.strip() for line in proc.stdout.read().splitlines()]
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    began, ended = _saves(lines)
    assert ended >= 1 and began < STEPS, lines
    last = ckpt / "last"
    if mode == "between-renames":
        # the kill landed between the two renames: only the aside copy is there
        assert (began, ended) == (kill_step, kill_step - 1)
        assert not last.exists() and (ckpt / ".tmp-last.old").is_dir()
    step = _check_complete(last)  # load_checkpoint puts an aside copy back
    note = f"kill after {delay:.2f} s (seed {seed}); saves began {began}, ended {ended}"
    # the previous complete checkpoint, or the new one if the kill came after its swap
    assert step in {ended, began}, note
    if mode == "between-renames":
        assert step == ended, note

    torch.manual_seed(1234)  # resume must not depend on the global RNG
    resumed = run_distill(ckpt, resume=True)
    with open(last / "state.json") as fh:
        assert json.load(fh)["step"] == STEPS
    assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".tmp-")], note
    sd = resumed.state_dict()
    for k, v in reference.items():
        assert torch.equal(v, sd[k]), f"{k} differs after resume; {note}"


ATOMIC_CHILD = textwrap.dedent("""
    import os, signal, sys
    import compress.fileio as f
    if sys.argv[1] == "fallback":
        f._exchange = lambda a, b: False
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)   # old folder aside, new one not yet in
        f.os.replace = replace
    else:
        def rmtree(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)   # swapped, old copy not yet removed
        f.shutil.rmtree = rmtree
    with f.atomic_dir(sys.argv[2]) as tmp:
        (tmp / "v").write_text("new")
""")


@pytest.mark.parametrize("how, expect", [("exchange", "new"), ("fallback", "old")])
def test_atomic_dir_killed_at_its_swap(tmp_path, how, expect):
    from compress.fileio import atomic_dir, clean_stale_tmp, restore_interrupted_dir

    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("old")
    res = subprocess.run([sys.executable, "-c", ATOMIC_CHILD, how, str(target)],
                         capture_output=True, text=True)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    if how == "fallback":
        assert not target.exists()
        assert clean_stale_tmp(tmp_path) == 1  # the new folder's temp; the old one goes back
    else:
        assert not restore_interrupted_dir(target)
        assert clean_stale_tmp(tmp_path) == 1  # the old folder, swapped out
    assert (target / "v").read_text() == expect
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
