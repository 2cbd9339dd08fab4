"""Untrusted model files run no code and are checked before they are read.

* Pickle checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) can execute arbitrary
  code when unpickled. The suite loads safetensors unless the user passes
  ``--allow-pickle``; even then transformers loads them with
  ``torch.load(weights_only=True)``, which refuses code objects.
* A folder whose configs carry an ``auto_map`` (classes in the folder's own ``*.py``
  files) is refused unless ``--trust-remote-code`` is given (:func:`check_remote_code`).
* Every safetensors file's header is checked against the file's size before loading
  (:func:`safetensors_header`): a truncated file or a corrupt header is one line naming
  the file and the tensor. A bit flipped inside tensor data changes no size; the
  folders the suite saves carry per-tensor sha256 checksums (:func:`write_checksums`)
  that catch it there, and only there.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from compress.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def check_weights_safe(folder: Path, allow_pickle: bool = False) -> None:
    """Refuse a folder whose only weights are pickle files, unless ``allow_pickle``."""
    if not folder.is_dir():
        return
    names = [p.name for p in folder.iterdir()]
    if any(n.endswith(".safetensors") for n in names) or allow_pickle:
        return
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise UserError(
            f"{folder} holds only pickle weights ({', '.join(sorted(pickles)[:3])}), which can run "
            "code when loaded; convert them to safetensors, or pass --allow-pickle to load them "
            "with torch.load(weights_only=True)"
        )


def safe_torch_load(path: Path, allow_pickle: bool = False):
    """``torch.load`` restricted to tensors (``weights_only=True``), only when allowed."""
    import torch

    if not allow_pickle:
        raise UserError(f"{path} is a pickle file; pass --allow-pickle to load it (weights only)")
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- remote code


#: files a model folder may carry that ask transformers to import its own Python code.
CODE_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json")


def remote_code_of(folder: Path) -> list[str]:
    """What in ``folder`` would make transformers run the folder's own Python code: the
    ``auto_map`` entries of its JSON configs (which name classes in its ``*.py`` files)."""
    found = []
    for name in CODE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # unreadable configs are refused by the loader with their own message
        if isinstance(data, dict) and data.get("auto_map"):
            found.append(f"auto_map in {name}")
    return found


def check_remote_code(folder: Path, trust_remote_code: bool = False) -> None:
    """Refuse a folder that carries its own Python code unless ``trust_remote_code``."""
    if trust_remote_code or not folder.is_dir():
        return
    asks = remote_code_of(folder)
    if asks:
        code = sorted(p.name for p in folder.glob("*.py"))
        what = ", ".join(code[:3]) + (" ..." if len(code) > 3 else "") if code else "Python code"
        raise UserError(
            f"{folder} carries its own Python code ({what}; {', '.join(asks)}), which would "
            "run when the model loads; pass --trust-remote-code to run it (only for code you "
            "trust)"
        )


# --------------------------------------------------------------------------- weight files

#: bytes per element of each safetensors dtype.
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1,
}
#: a header larger than this is not a real one (safetensors itself caps it at 100 MB).
MAX_HEADER = 100_000_000
#: the checksums the suite writes beside the files of a folder it saved.
CHECKSUMS = "compress_checksums.json"


def _corrupt(path: Path, what: str) -> UserError:
    return UserError(f"{path}: {what}; the file is truncated or corrupt: re-save or re-download it")


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size.

    Every tensor must have a known dtype, a shape of non-negative integers and data
    offsets that hold exactly ``numel x dtype size`` bytes, one tensor after another,
    inside the file. A truncated file or a corrupt header is a one-line
    :class:`UserError` naming the file and the first tensor that does not fit. A bit
    flipped inside tensor data changes no size and cannot be seen here: the suite's own
    folders carry per-tensor checksums for that (:func:`verify_checksums`).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _corrupt(path, f"only {size} bytes, not even a header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or n > size - 8:
            raise _corrupt(path, f"header length {n} bytes, but the file has {size}")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _corrupt(path, f"its header is not valid JSON ({str(exc).splitlines()[0][:80]})"
                       ) from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    data = size - 8 - n
    spans = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(meta, dict):
            raise _corrupt(path, f"tensor {name!r} has no description")
        dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
        if dtype not in DTYPE_BYTES:
            raise _corrupt(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise _corrupt(path, f"tensor {name!r} has shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise _corrupt(path, f"tensor {name!r} has data offsets {offsets!r}")
        numel = 1
        for d in shape:
            numel *= d
        want = numel * DTYPE_BYTES[dtype]
        if dtype in ("F4", "F6_E2M3", "F6_E3M2"):
            want = offsets[1] - offsets[0]  # packed sub-byte types: trust the span
        if offsets[1] - offsets[0] != want:
            raise _corrupt(path, f"tensor {name!r} ({dtype} {shape}) needs {want} bytes but "
                           f"its offsets span {offsets[1] - offsets[0]}")
        if offsets[1] > data:
            raise _corrupt(path, f"tensor {name!r} ends at byte {offsets[1]} of the data but "
                           f"the file holds {data} bytes of data")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    end = 0
    for begin, stop, name in spans:
        if begin != end:
            raise _corrupt(path, f"tensor {name!r} starts at byte {begin} of the data, not "
                           f"{end} (overlapping or missing data)")
        end = stop
    if end != data:
        raise _corrupt(path, f"{data - end} bytes after the last tensor's data")
    return header


def check_weight_files(folder: Path) -> None:
    """Check every safetensors file of ``folder`` (headers and sizes), and the checksums
    the suite wrote when it saved the folder, before any weight is read."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.safetensors")):
        safetensors_header(path)
    verify_checksums(folder)


def _tensor_digests(path: Path) -> dict[str, str]:
    """sha256 of every tensor's bytes in a safetensors file (and of its header)."""
    header = safetensors_header(path)
    out = {}
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        out["__header__"] = hashlib.sha256(fh.read(n)).hexdigest()
        base = 8 + n
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            begin, end = meta["data_offsets"]
            fh.seek(base + begin)
            h = hashlib.sha256()
            left = end - begin
            while left > 0:
                chunk = fh.read(min(left, 1 << 24))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
            out[name] = h.hexdigest()
    return out


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder: Path) -> Path:
    """Write ``compress_checksums.json``: sha256 of every tensor of the folder's
    safetensors files and of every other file (only for folders the suite writes)."""
    from compress.fileio import atomic_write_json

    folder = Path(folder)
    files: dict[str, dict[str, str] | str] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS):
        files[path.name] = (_tensor_digests(path) if path.suffix == ".safetensors"
                            else _file_digest(path))
    return atomic_write_json(folder / CHECKSUMS, {"version": 1, "sha256": files})


def verify_checksums(folder: Path) -> bool:
    """Compare a folder with the checksums the suite wrote when saving it (False when it
    has none); a changed file or tensor is a one-line :class:`UserError` naming both."""
    folder = Path(folder)
    path = folder / CHECKSUMS
    if not path.is_file():
        return False
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["sha256"]
        assert isinstance(files, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise _corrupt(path, "unreadable checksums") from None
    for name, want in files.items():
        target = folder / name
        if not target.is_file():
            raise UserError(f"{target} is missing (the folder's checksums list it); the folder "
                            "is incomplete: re-save it")
        if isinstance(want, dict):
            got = _tensor_digests(target)
            for tensor, digest in want.items():
                if got.get(tensor) != digest:
                    what = ("its header changed" if tensor == "__header__" else
                            f"tensor {tensor!r} changed since the suite saved it")
                    raise _corrupt(target, f"{what} (sha256 mismatch)")
        elif _file_digest(target) != want:
            raise _corrupt(target, "its contents changed since the suite saved it (sha256 "
                           "mismatch)")
    return True
