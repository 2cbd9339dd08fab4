"""Zoo: name resolution, atomic builds (fake tiny entries); real builds under -m slow."""

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

from compress import zoo
from compress.errors import UserError
from compress.models import TASKS


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path))
    return tmp_path


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(zoo.CACHE_ENV, raising=False)
    assert zoo.cache_dir() == Path.home() / ".cache" / "compress-suite"
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path))
    assert zoo.cache_dir() == tmp_path
    assert zoo.path_of("minilm-l6") == tmp_path / "zoo" / "minilm-l6"


def test_entries_are_consistent():
    assert set(zoo.ZOO) == {"smollm2-135m", "minilm-l6", "minilm-l6-sentiment", "bert2bert-punct"}
    for name, e in zoo.ZOO.items():
        assert e.name == name
        assert e.task in TASKS
        assert e.description
        assert all(d in zoo.ZOO for d in e.depends)
    assert zoo.ZOO["minilm-l6-sentiment"].depends == ("minilm-l6",)
    assert zoo.ZOO["bert2bert-punct"].depends == ("minilm-l6",)


def test_hub_aliases_and_closest_names():
    assert zoo.HUB_ALIASES["bert-large"] == "google-bert/bert-large-uncased"
    assert zoo.HUB_ALIASES["gpt2-xl"] == "openai-community/gpt2-xl"
    assert zoo.HUB_ALIASES["t5-3b"] == "google-t5/t5-3b"
    assert all("/" in v for v in zoo.HUB_ALIASES.values())
    assert not set(zoo.HUB_ALIASES) & set(zoo.ZOO)
    assert zoo.closest_names("smollm-135m")[0] == "smollm2-135m"
    assert zoo.closest_names("minilm-l6-sentimnt")[0] == "minilm-l6-sentiment"
    assert zoo.closest_names("Bert-Larg")[0] == "bert-large"
    assert zoo.closest_names("bert2bert")[0] == "bert2bert-punct"
    assert zoo.closest_names("zzzzzz") == []


def test_unknown_name_is_a_user_error(cache):
    with pytest.raises(UserError, match="did you mean 'smollm2-135m'"):
        zoo.ensure("smolm2-135m")
    with pytest.raises(UserError, match="Zoo models: smollm2-135m"):
        zoo.ensure("qqq")
    assert not (cache / "zoo" / "qqq").exists()


# ---------------------------------------------------------------- fake builds


def _fake_entries(monkeypatch, calls: list, fail_in: set | None = None):
    fail_in = fail_in if fail_in is not None else set()

    def make(name):
        def build(out: Path, deps: dict) -> dict:
            calls.append((name, dict(deps)))
            (out / "weights.bin").write_bytes(b"x" * 1000)
            if name in fail_in:
                raise RuntimeError(f"{name} failed midway")
            (out / "more.txt").write_text("done")
            return {"metrics": {"score": 1.5}, "deps_seen": sorted(deps)}

        return build

    monkeypatch.setitem(zoo.ZOO, "fake-base", zoo.ZooEntry(
        "fake-base", "embedding", "a fake base", make("fake-base")))
    monkeypatch.setitem(zoo.ZOO, "fake-child", zoo.ZooEntry(
        "fake-child", "classification", "a fake child", make("fake-child"),
        depends=("fake-base",)))


def test_build_once_with_dependencies(cache, monkeypatch):
    calls: list = []
    _fake_entries(monkeypatch, calls)
    path = zoo.ensure("fake-child")
    assert path == cache / "zoo" / "fake-child"
    assert [c[0] for c in calls] == ["fake-base", "fake-child"]
    assert calls[1][1] == {"fake-base": cache / "zoo" / "fake-base"}
    rec = json.loads((path / "zoo.json").read_text())
    assert rec["name"] == "fake-child" and rec["task"] == "classification"
    assert rec["metrics"] == {"score": 1.5}
    assert rec["deps_seen"] == ["fake-base"]
    assert rec["build_seconds"] >= 0 and rec["versions"]["torch"]
    assert (path / "more.txt").read_text() == "done"
    assert zoo.is_built("fake-base") and zoo.info("fake-child")["name"] == "fake-child"
    # second call: reused, nothing rebuilt
    assert zoo.ensure("fake-child") == path
    assert len(calls) == 2
    assert not [p for p in (cache / "zoo").iterdir() if p.name.startswith(".tmp-")]


def test_failed_build_leaves_nothing(cache, monkeypatch):
    calls: list = []
    _fake_entries(monkeypatch, calls, fail_in={"fake-child"})
    with pytest.raises(RuntimeError, match="failed midway"):
        zoo.ensure("fake-child")
    assert zoo.is_built("fake-base")  # the dependency finished and stays
    assert not (cache / "zoo" / "fake-child").exists()
    assert not [p for p in (cache / "zoo").iterdir() if p.name.startswith(".tmp-")]
    # the next call builds it again, now successfully
    _fake_entries(monkeypatch, calls, fail_in=set())
    path = zoo.ensure("fake-child")
    assert (path / "zoo.json").is_file()
    assert [c[0] for c in calls] == ["fake-base", "fake-child", "fake-child"]


def test_folder_without_zoo_json_is_not_built(cache, monkeypatch):
    calls: list = []
    _fake_entries(monkeypatch, calls)
    half = cache / "zoo" / "fake-base"
    half.mkdir(parents=True)
    (half / "weights.bin").write_bytes(b"partial")
    assert not zoo.is_built("fake-base")
    zoo.ensure("fake-base")
    assert zoo.is_built("fake-base") and len(calls) == 1
    assert (half / "weights.bin").read_bytes() == b"x" * 1000


def test_old_folder_set_aside_by_a_killed_swap_is_put_back(cache, monkeypatch):
    """atomic_dir's non-Linux fallback killed between its renames: no rebuild needed."""
    calls: list = []
    _fake_entries(monkeypatch, calls)
    built = zoo.ensure("fake-base")
    aside = built.with_name(".tmp-fake-base.old")
    built.rename(aside)  # what a kill after the first rename leaves
    assert not zoo.is_built("fake-base")
    assert zoo.ensure("fake-base") == built
    assert zoo.is_built("fake-base") and len(calls) == 1 and not aside.exists()


def test_killed_build_leaves_nothing_and_next_call_rebuilds(cache, monkeypatch):
    """SIGKILL a process in the middle of a build: no final folder, and the next
    ensure() cleans the leftover and builds."""
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from compress import zoo

        def build(out, deps):
            (out / "weights.bin").write_bytes(b"half")
            print("building", flush=True)
            time.sleep(60)
            return {}

        zoo.ZOO["fake-slow"] = zoo.ZooEntry("fake-slow", "embedding", "slow", build)
        zoo.ensure("fake-slow")
    """)
    env = dict(os.environ, **{zoo.CACHE_ENV: str(cache)})
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "building"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    zdir = cache / "zoo"
    assert not (zdir / "fake-slow").exists()
    assert [p for p in zdir.iterdir() if p.name.startswith(".tmp-fake-slow")]  # the leftover

    def build(out, deps):
        (out / "weights.bin").write_bytes(b"full")
        return {}

    monkeypatch.setitem(zoo.ZOO, "fake-slow", zoo.ZooEntry("fake-slow", "embedding", "s", build))
    path = zoo.ensure("fake-slow")
    assert (path / "weights.bin").read_bytes() == b"full"
    assert not [p for p in zdir.iterdir() if p.name.startswith(".tmp-fake-slow")]


def test_cli_list_and_errors(cache, capsys):
    from compress.cli import run_main

    assert run_main(zoo.main, ["list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "bert-large" in out
    assert run_main(zoo.main, ["build", "minilm-l7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown zoo model 'minilm-l7'; did you mean 'minilm-l6'")
    assert not (cache / "zoo" / "minilm-l6").exists()  # nothing built on a bad name


def test_cli_build_fake(cache, monkeypatch, capsys):
    calls: list = []
    _fake_entries(monkeypatch, calls)
    assert zoo.main(["build", "fake-base"]) == 0
    assert "fake-base:" in capsys.readouterr().out
    assert zoo.main(["build", "fake-base", "--rebuild"]) == 0
    assert len(calls) == 2


# ---------------------------------------------------------------- real models (slow)


@pytest.mark.slow
def test_smollm2_says_paris():
    import torch
    import transformers as tf

    path = zoo.ensure("smollm2-135m")
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    tok = tf.AutoTokenizer.from_pretrained(path)
    model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=6, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.slow
def test_minilm_embeddings_separate_similar_texts():
    import torch
    import transformers as tf

    path = zoo.ensure("minilm-l6")
    tok = tf.AutoTokenizer.from_pretrained(path)
    model = tf.AutoModel.from_pretrained(path).eval()
    assert json.loads((path / "config.json").read_text())["architectures"] == ["BertModel"]
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.",
             "Interest rates rose sharply this quarter."]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2


@pytest.mark.slow
def test_sentiment_beats_majority_class():
    import torch
    import transformers as tf

    from compress import data

    path = zoo.ensure("minilm-l6-sentiment")
    rec = zoo.info("minilm-l6-sentiment")
    m = rec["metrics"]
    assert m["validation_accuracy"] > m["validation_majority_rate"] + 0.15
    tok = tf.AutoTokenizer.from_pretrained(path)
    model = tf.AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert model.config.id2label == dict(enumerate(data.LABELS))
    test = data.load_split("tweets", "test")
    texts, labels = list(test["text"])[:300], list(test["label"])[:300]
    with torch.no_grad():
        pred = model(**tok(texts, padding=True, truncation=True, max_length=64,
                           return_tensors="pt")).logits.argmax(-1).tolist()
    acc = sum(p == y for p, y in zip(pred, labels, strict=True)) / len(labels)
    majority = max(labels.count(k) for k in (0, 1, 2)) / len(labels)
    assert acc > majority + 0.15, (acc, majority)


@pytest.mark.slow
def test_bert2bert_generates_after_reload():
    import torch
    import transformers as tf

    from compress import data

    path = zoo.ensure("bert2bert-punct")
    rec = zoo.info("bert2bert-punct")
    tok = tf.AutoTokenizer.from_pretrained(path)
    model = tf.AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    assert type(model).__name__ == "EncoderDecoderModel"
    val = data.load_split("punct", "validation")
    n = 16
    sources, targets = list(val["source"])[:n], list(val["target"])[:n]
    scores = zoo.punct_chrf(model, tok, sources, targets)
    # the greedy output is a real attempt at the target, far above an unrelated text
    assert scores["chrf"] > 50, scores
    inputs = tok(sources[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=80)
    assert out.shape[0] == 2 and out.shape[1] > 10
    assert rec["metrics"]["validation_copy_baseline_chrf"] > 90


@pytest.mark.slow
def test_bert2bert_beats_copy_baseline():
    rec = zoo.info("bert2bert-punct") or json.loads(
        (zoo.ensure("bert2bert-punct") / "zoo.json").read_text())
    m = rec["metrics"]
    assert m["validation_chrf"] > m["validation_copy_baseline_chrf"], m


def test_build_time_is_recorded_in_seconds(cache, monkeypatch):
    def build(out, deps):
        time.sleep(0.3)
        return {}

    monkeypatch.setitem(zoo.ZOO, "fake-timed", zoo.ZooEntry("fake-timed", "embedding", "t", build))
    zoo.ensure("fake-timed")
    assert 0.2 <= zoo.info("fake-timed")["build_seconds"] < 30
