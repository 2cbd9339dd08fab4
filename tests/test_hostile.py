"""Hostile inputs and hard failures: corrupt weight files, absurd configs, odd fields,
remote code, and a disk that fills up during a save or a report write.

Every refusal is one line (a :class:`UserError`), says what is wrong and where, and
happens before any weight is allocated; a failed write leaves the previous file intact
and no temporary behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from compress.errors import UserError
from compress.fileio import TMP_PREFIX, DiskFull, atomic_write_json
from compress.models import load_model
from compress.saving import load_compressed, save_model
from compress.tiny import tiny_model


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture()
def llama_dir(tmp_path):
    """A tiny llama saved with save_pretrained (a folder the suite did not write)."""
    model, tok = tiny_model("llama")
    model.config.architectures = ["LlamaForCausalLM"]
    out = tmp_path / "llama"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _header(path: Path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8:8 + n])


def _last_tensor(path: Path) -> str:
    _, header = _header(path)
    return max((k for k in header if k != "__metadata__"),
               key=lambda k: header[k]["data_offsets"][1])


def _first_tensor(path: Path) -> str:
    _, header = _header(path)
    return min((k for k in header if k != "__metadata__"),
               key=lambda k: header[k]["data_offsets"][0])


# ----------------------------------------------------------------------- weight files


def test_truncated_safetensors_is_refused_naming_file_and_tensor(llama_dir):
    weights = llama_dir / "model.safetensors"
    last = _last_tensor(weights)
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size - 100)
    with pytest.raises(UserError) as exc:
        load_model(str(llama_dir))
    msg = one_line(exc)
    assert str(weights) in msg and repr(last) in msg and "truncated" in msg


def test_file_cut_inside_its_header_is_refused(llama_dir):
    weights = llama_dir / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(20)
    with pytest.raises(UserError) as exc:
        load_model(str(llama_dir))
    assert str(weights) in one_line(exc)


@pytest.mark.parametrize("flip", ["offset", "shape", "json"])
def test_bit_flip_in_the_header_is_refused(llama_dir, flip):
    weights = llama_dir / "model.safetensors"
    n, header = _header(weights)
    raw = bytearray(weights.read_bytes())
    head = raw[8:8 + n].decode()
    name = _first_tensor(weights)
    if flip == "json":
        i = head.index("{", 1)
        raw[8 + i] ^= 0x01  # '{' -> 'z': not JSON any more
    else:
        meta = header[name]
        old = json.dumps(meta["data_offsets"] if flip == "offset" else meta["shape"],
                         separators=(",", ":"))
        start = head.index(old, head.index(json.dumps(name)))
        digit = start + 1  # the first digit of the list
        raw[8 + digit] ^= 0x01  # one bit: '0' <-> '1', '2' <-> '3', ...
    weights.write_bytes(bytes(raw))
    with pytest.raises(UserError) as exc:
        load_model(str(llama_dir))
    msg = one_line(exc)
    assert str(weights) in msg
    if flip != "json":
        assert repr(name) in msg


def test_bit_flip_in_a_tensor_name_is_refused(llama_dir):
    """A flipped bit that keeps the header valid renames a tensor: the model would load
    with that weight randomly initialised; the loader refuses it instead."""
    weights = llama_dir / "model.safetensors"
    n, header = _header(weights)
    raw = bytearray(weights.read_bytes())
    name = next(k for k in header if k.endswith("mlp.up_proj.weight"))
    at = raw.index(name.encode(), 8, 8 + n) + name.index("up_proj")
    raw[at] ^= 0x20  # 'u' -> 'U'
    weights.write_bytes(bytes(raw))
    with pytest.raises(UserError) as exc:
        load_model(str(llama_dir))
    msg = one_line(exc)
    assert "mlp.Up_proj" in msg and "corrupt" in msg


def test_bit_flip_in_tensor_data_only_checksums_see(tmp_path, llama_dir):
    """Without a checksum a flipped bit inside tensor data changes no size: a folder the
    suite did not write loads (with the flipped value). A folder save_model wrote carries
    per-tensor sha256 sums, and the flip is refused naming the file and the tensor."""
    weights = llama_dir / "model.safetensors"
    n, header = _header(weights)
    name = _first_tensor(weights)

    def flip(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        raw[8 + n + header[name]["data_offsets"][0] + 3] ^= 0x10
        path.write_bytes(bytes(raw))

    flip(weights)
    assert load_model(str(llama_dir)).task == "causal-lm"  # not detected: documented

    model, tok = tiny_model("llama")
    model.config.architectures = ["LlamaForCausalLM"]
    ours = tmp_path / "ours"
    save_model(model, tok, ours)
    assert (ours / "compress_checksums.json").is_file()
    assert load_compressed(ours) is not None
    n, header = _header(ours / "model.safetensors")
    name = _first_tensor(ours / "model.safetensors")
    flip(ours / "model.safetensors")
    for loader in (load_compressed, lambda p: load_model(str(p))):
        with pytest.raises(UserError) as exc:
            loader(ours)
        msg = one_line(exc)
        assert "model.safetensors" in msg and repr(name) in msg and "sha256" in msg


def test_corrupt_file_of_a_registered_format_is_refused(tmp_path):
    """Folders in the suite's own formats (here the sparse bitmask) are checked too."""
    from compress import compress, make_config

    model, tok = tiny_model("llama")
    model = compress(model, make_config("magnitude", sparsity=0.5))
    out = tmp_path / "sparse"
    save_model(model, tok, out)
    files = sorted(out.glob("*.safetensors"))
    assert files
    with open(files[0], "r+b") as fh:
        fh.truncate(files[0].stat().st_size - 7)
    with pytest.raises(UserError) as exc:
        load_compressed(out)
    assert files[0].name in one_line(exc)


# ----------------------------------------------------------------------- configs


def _write_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes", [
    {"num_hidden_layers": 10**9},
    {"hidden_size": 2**22, "intermediate_size": 2**24, "num_attention_heads": 4,
     "head_dim": 2**20, "vocab_size": 2**24},
])
def test_config_larger_than_memory_is_refused_before_allocating(llama_dir, changes):
    """The config is sized on the meta device (a billion layers by extrapolation from one
    and two), so the refusal costs neither memory nor time."""
    import psutil

    _write_config(llama_dir, **changes)
    rss = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    with pytest.raises(UserError) as exc:
        load_model(str(llama_dir))
    msg = one_line(exc)
    assert "config describes" in msg and "parameters" in msg and "--device-map auto" in msg
    assert time.perf_counter() - t0 < 60
    assert psutil.Process().memory_info().rss - rss < 200 * 2**20


def test_config_that_fits_only_when_memory_allows(llama_dir, monkeypatch):
    import transformers as tf

    from compress.models import config_param_count

    n = config_param_count(tf.AutoConfig.from_pretrained(llama_dir), "causal-lm")
    model, _ = tiny_model("llama")
    assert n == sum(p.numel() for p in model.parameters())
    monkeypatch.setenv("COMPRESS_AVAILABLE_MEMORY", str(n * 4 * 100))
    assert load_model(str(llama_dir)).task == "causal-lm"


@pytest.mark.parametrize("kind, edit, loads", [
    ("config", {"totally_unknown_field": {"nested": [1, 2]}, "another": None}, True),
    ("config", {"hidden_size": "wide"}, False),
    ("config", {"num_attention_heads": -4}, False),
    ("config", {"model_type": "no-such-model"}, False),
    ("config", {"vocab_size": 1.5}, False),
    ("config", "{not json", False),
    ("tokenizer_config", {"unexpected_tokenizer_field": 42, "more": ["x"]}, True),
    ("tokenizer", "{not json", False),
])
def test_unexpected_fields_load_or_refuse_in_one_line(llama_dir, kind, edit, loads):
    path = llama_dir / f"{kind}.json"
    if isinstance(edit, str):
        path.write_text(edit)
    else:
        data = json.loads(path.read_text())
        data.update(edit)
        path.write_text(json.dumps(data))
    if loads:
        assert load_model(str(llama_dir)).task == "causal-lm"
        return
    with pytest.raises(UserError) as exc:
        load_model(str(llama_dir))
    one_line(exc)


def test_cli_refuses_a_corrupt_folder_in_one_line(llama_dir):
    with open(llama_dir / "model.safetensors", "r+b") as fh:
        fh.truncate(1000)
    proc = subprocess.run(
        [sys.executable, "-m", "compress.recipes.identity", "--model", str(llama_dir), "--out",
         str(llama_dir.parent / "out")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "model.safetensors" in lines[0]
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------- remote code

CUSTOM_CONFIG = """
from pathlib import Path
from transformers import LlamaConfig

Path({marker!r}).write_text("configuration code ran")


class EvilConfig(LlamaConfig):
    model_type = "evil-llama"
"""

CUSTOM_MODEL = """
from pathlib import Path
from transformers import LlamaForCausalLM

from .configuration_evil import EvilConfig

Path({marker!r}).write_text("modeling code ran")


class EvilForCausalLM(LlamaForCausalLM):
    config_class = EvilConfig
"""


def test_remote_code_never_runs_without_the_flag(llama_dir, tmp_path):
    marker = tmp_path / "marker"
    (llama_dir / "configuration_evil.py").write_text(CUSTOM_CONFIG.format(marker=str(marker)))
    (llama_dir / "modeling_evil.py").write_text(CUSTOM_MODEL.format(marker=str(marker)))
    _write_config(llama_dir, model_type="evil-llama", architectures=["EvilForCausalLM"],
                  auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                            "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})
    with pytest.raises(UserError) as exc:
        load_model(str(llama_dir))
    msg = one_line(exc)
    assert "--trust-remote-code" in msg and "modeling_evil.py" in msg
    assert not marker.exists()
    # nor through the command line, nor through load_compressed
    proc = subprocess.run(
        [sys.executable, "-m", "eval.run", "--model", str(llama_dir), "--quick",
         "--reports", str(tmp_path / "reports")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert not marker.exists() and proc.returncode != 0
    with pytest.raises(UserError):
        load_compressed(llama_dir)
    assert not marker.exists()
    # asked for: the folder's code runs (that is what the flag means)
    loaded = load_model(str(llama_dir), trust_remote_code=True)
    assert marker.exists()
    assert type(loaded.model).__name__ == "EvilForCausalLM"


# ----------------------------------------------------------------------- full disk


def _no_tmp(folder: Path) -> None:
    left = [p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert left == [], left


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("how", ["oserror", "safetensors"])
def test_disk_full_during_save_model_keeps_the_previous_folder(tmp_path, monkeypatch, how):
    model, tok = tiny_model("bert")
    out = tmp_path / "model"
    save_model(model, tok, out)
    before = _snapshot(out)
    other, tok2 = tiny_model("bert", seed=1)

    if how == "oserror":  # the weights are written, then the tokenizer hits the full disk
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(tok2, "save_pretrained", full)
    else:  # safetensors reports ENOSPC as its own error type
        real = other.save_pretrained

        def full(folder, *args, **kwargs):
            real(folder, *args, **kwargs)
            raise RuntimeError("Error while serializing: I/O error: No space left on device "
                               "(os error 28)")

        monkeypatch.setattr(other, "save_pretrained", full)
    with pytest.raises(DiskFull) as exc:
        save_model(other, tok2, out)
    msg = one_line(exc)
    assert "disk full" in msg and str(out) in msg
    assert _snapshot(out) == before
    _no_tmp(tmp_path)
    assert isinstance(load_compressed(out), torch.nn.Module)


class _HalfWriter:
    """A file object that writes half of what it is given, then finds the disk full."""

    def __init__(self, fh):
        self.fh = fh

    def write(self, data):
        self.fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def test_disk_full_during_a_report_write_keeps_the_previous_report(tmp_path, monkeypatch):
    import compress.fileio as fileio
    from eval.report import Report, read_reports

    report = Report(model={"name": "m", "task": "causal-lm"}, pipeline=[], quick=True,
                    status="ok")
    path = report.write(tmp_path)
    before = path.read_bytes()
    real = os.fdopen
    monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode="r", *a, **k:
                        _HalfWriter(real(fd, mode, *a, **k)))
    report.status = "failed"
    with pytest.raises(DiskFull) as exc:
        report.write(tmp_path)
    assert "disk full" in one_line(exc)
    monkeypatch.setattr(fileio.os, "fdopen", real)
    assert path.read_bytes() == before
    _no_tmp(tmp_path)
    assert [r["status"] for r in read_reports(tmp_path)] == ["ok"]


def test_disk_full_ends_a_run_with_one_line(tmp_path, monkeypatch):
    """eval.run: the report of a run cannot be written on a full disk; the command says so
    in one line (exit status 2), like every other bad situation."""
    script = textwrap.dedent(f"""
        import errno, os, sys
        import compress.fileio as fileio
        real = os.fdopen
        class Full:
            def __init__(self, fh): self.fh = fh
            def write(self, data): raise OSError(errno.ENOSPC, "No space left on device")
            def __getattr__(self, n): return getattr(self.fh, n)
            def __enter__(self): return self
            def __exit__(self, *e): self.fh.close()
        fileio.os.fdopen = lambda fd, mode="r", *a, **k: Full(real(fd, mode, *a, **k))
        from compress.errors import run_main
        from eval.run import main as run
        sys.exit(run_main(run, ["--model", {str(_tiny_dir(tmp_path))!r}, "--quick",
                                "--reports", {str(tmp_path / "reports")!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "disk full" in errors[0]
    assert "Traceback" not in proc.stderr
    _no_tmp(tmp_path / "reports")


def _tiny_dir(tmp_path: Path) -> Path:
    model, tok = tiny_model("llama")
    model.config.architectures = ["LlamaForCausalLM"]
    out = tmp_path / "tiny"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _mount_tmpfs(where: Path, size: str) -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                         capture_output=True)
    return res.returncode == 0


def test_a_real_full_disk(tmp_path):
    """On a 64 KiB tmpfs (where the machine lets the tests mount one): a report that fits,
    then a model that does not; the report stays and nothing temporary is left."""
    disk = tmp_path / "small"
    if not _mount_tmpfs(disk, "64k"):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        report = disk / "report.json"
        atomic_write_json(report, {"ok": True})
        with pytest.raises(DiskFull) as exc:
            atomic_write_json(report, {"big": "x" * 400_000})
        assert "disk full" in one_line(exc)
        assert json.loads(report.read_text()) == {"ok": True}
        model, tok = tiny_model("llama")  # 137 KiB of weights
        with pytest.raises(DiskFull):
            save_model(model, tok, disk / "model")
        assert sorted(p.name for p in disk.iterdir()) == ["report.json"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
