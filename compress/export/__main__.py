"""``python -m compress.export``: write a model in an interchange format other tools load.

    python -m compress.export out/smollm2-gptq4 --to gguf --out out/smollm2-gptq4.gguf
    python -m compress.export out/smollm2-rtn4 --to compressed-tensors --out out/ct \\
        --bits 4 --group-size 128

``MODEL`` is a zoo name, a local folder or a folder written by ``save_model``. The grid
of quantized weights (bits, scheme, granularity, group size) comes from the folder's
compressed-tensors ``quantization_config`` when it has one, else from the flags; the
exporter checks that every targeted weight lies on it exactly (see
:mod:`compress.export.grid`). Without a grid the weights are written as floats.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

from compress.errors import run_main
from compress.export import compressed_tensors, gguf
from compress.export.grid import mark
from compress.models import load_model, resolve_path
from compress.quant.layers import select_targets
from compress.quant.rtn import QuantSpec
from compress.saving import FORMAT_FILE, load_compressed

FORMATS = ("compressed-tensors", "gguf")


def grid_from_folder(folder: Path):
    """The :class:`QuantSpec` of a compressed-tensors folder's (single) weight scheme."""
    try:
        qc = json.loads((folder / "config.json").read_text()).get("quantization_config") or {}
    except (OSError, ValueError):
        return None
    groups = list((qc.get("config_groups") or {}).values())
    if not groups:
        return None
    w = groups[0]["weights"]
    # several groups differ only in group width (sub-groups of a partial group): the
    # widest is the recipe's group size
    widths = [g["weights"].get("group_size") or 0 for g in groups]
    granularity = "group" if any(widths) else "channel"
    return QuantSpec(
        int(w["num_bits"]),
        "sym" if w.get("symmetric", True) else "asym",
        granularity,
        max(widths) if any(widths) else 128,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m compress.export", description=__doc__.splitlines()[0]
    )
    p.add_argument("model", help="zoo name, local folder, or a folder written by save_model")
    p.add_argument("--to", choices=FORMATS, required=True, help="interchange format")
    p.add_argument(
        "--out", type=Path, required=True, help="folder (compressed-tensors) or file (gguf)"
    )
    p.add_argument("--bits", type=int, default=None, help="grid of the quantized weights: bits")
    p.add_argument("--scheme", choices=("sym", "asym"), default="sym")
    p.add_argument("--granularity", choices=("tensor", "channel", "group"), default="group")
    p.add_argument("--group-size", type=int, default=128)
    args = p.parse_args(argv)

    _, path = resolve_path(args.model)
    folder = Path(path)
    if (folder / FORMAT_FILE).exists():
        model = load_compressed(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        loaded = load_model(args.model)
        model, tokenizer = loaded.model, loaded.tokenizer
    spec = (
        QuantSpec(args.bits, args.scheme, args.granularity, args.group_size)
        if args.bits is not None
        else grid_from_folder(folder)
    )
    if spec is not None:
        mark(model, spec, select_targets(model))
    if args.to == "gguf":
        info = gguf.export(model, tokenizer, args.out)
    else:
        info = compressed_tensors.export(model, args.out)
        tokenizer.save_pretrained(args.out)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
