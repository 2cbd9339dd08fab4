"""Command-line plumbing shared by every ``python -m compress.recipes.<name>``.

Flags are generated from the recipe's config dataclass (name, type, default and help
text), so a new config field is a new flag with no CLI code. Every entry point runs
through :func:`run_main` (:mod:`compress.errors`, re-exported here), which turns
:class:`UserError` into one line on stderr and exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compress import data
from compress.api import compress
from compress.config import RecipeConfig, _base_type
from compress.context import Context
from compress.errors import UserError, run_main
from compress.models import Loaded, load_model
from compress.registry import get_recipe
from compress.saving import save_model
from compress.stats import parameter_counts

__all__ = [
    "add_config_arguments",
    "add_model_arguments",
    "build_context",
    "calibration_spec_from_args",
    "config_from_args",
    "recipe_main",
    "run_main",
]


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type[RecipeConfig]) -> None:
    """One ``--flag`` per config field, with its type, default and help text."""
    group = parser.add_argument_group(f"{config_cls.RECIPE} options")
    for name, tp, default, help_text in config_cls.describe():
        base, optional = _base_type(tp)
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "default": None}
        choices = next(
            (f.metadata.get("choices") for f in config_cls.__dataclass_fields__.values()
             if f.name == name), None
        )
        if base is bool:
            kwargs["type"] = _parse_bool
            kwargs["metavar"] = "BOOL"
        elif base in (int, float, str):
            kwargs["type"] = base
        elif typing.get_origin(base) is tuple:
            inner = (typing.get_args(base) or (str,))[0]
            inner = inner if inner in (int, float, str) else str
            kwargs["type"] = inner
            kwargs["nargs"] = "+"
        else:
            kwargs["type"] = str
        if choices:
            kwargs["choices"] = choices
        shown = "none" if default is None else default
        group.add_argument(flag, help=f"{help_text} (default: {shown})", **kwargs)


def config_from_args(config_cls: type[RecipeConfig], args: argparse.Namespace) -> RecipeConfig:
    values = {
        name: getattr(args, name)
        for name, *_ in config_cls.describe()
        if getattr(args, name, None) is not None
    }
    return config_cls(**values)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="zoo name (smollm2-135m, minilm-l6, minilm-l6-sentiment, "
                        "bert2bert-punct), a local folder, or a hub id")
    parser.add_argument("--task", default=None,
                        help="causal-lm, classification, embedding or seq2seq (default: from config)")
    parser.add_argument("--device-map", default=None,
                        help="passed to from_pretrained (e.g. auto) for models bigger than one device")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickle (.bin/.pt) weights, loaded with weights_only=True")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the model repository's own Python code (off by default)")
    from compress.calibration import DEFAULT_SEQ_LEN, DEFAULT_SEQUENCES

    parser.add_argument("--calib-sequences", type=int, default=DEFAULT_SEQUENCES,
                        help="calibration sequences (N) every calibrating recipe reads, drawn "
                        f"from the task's calibration split; 0: none (default: {DEFAULT_SEQUENCES})")
    parser.add_argument("--calib-seq-len", type=int, default=DEFAULT_SEQ_LEN,
                        help="tokens per calibration sequence (L; at most L for short examples) "
                        f"(default: {DEFAULT_SEQ_LEN})")
    parser.add_argument("--calib-seed", type=int, default=0,
                        help="seed that draws the calibration sequences (default: 0)")


def calibration_spec_from_args(args: argparse.Namespace):
    from compress.calibration import CalibrationSpec

    return CalibrationSpec(args.calib_sequences, args.calib_seq_len, args.calib_seed)


#: where each task's calibration pool comes from (compress.data corpora, split "calibration").
CALIBRATION_SOURCES = {"causal-lm": "wiki+news", "classification": "tweets",
                       "embedding": "tweets", "seq2seq": "punct"}


def parse_shapes(texts: Sequence[str], flag: str = "--shapes") -> tuple[tuple[int, int], ...]:
    """``["1x128", "8x128"]`` -> ``((1, 128), (8, 128))``; anything else is a one-line error."""
    try:
        shapes = tuple(tuple(int(x) for x in t.lower().split("x")) for t in texts)
        if any(len(s) != 2 for s in shapes):
            raise ValueError
    except ValueError:
        raise UserError(f"{flag} {' '.join(texts)}: write each as BATCHxLENGTH, "
                        "e.g. 1x128") from None
    return shapes  # type: ignore[return-value]


def build_context(loaded: Loaded, calibration=None) -> Context:
    """Context with tokenizer, the calibration pool and spec, and training data.

    ``calibration``: a :class:`~compress.calibration.CalibrationSpec` (default: the
    suite's default N x L); ``sequences=0`` leaves the pool empty.
    """
    from compress.calibration import CalibrationSpec

    spec = calibration if calibration is not None else CalibrationSpec()
    if not isinstance(spec, CalibrationSpec):
        raise TypeError("calibration must be a CalibrationSpec")
    pool = data.calibration_for(loaded.task, sys.maxsize) if spec.sequences else []
    return Context(
        tokenizer=loaded.tokenizer,
        calibration=pool,
        train=data.train_for(loaded.task),
        task=loaded.task,
        calib=spec,
        calibration_source=f"compress.data {CALIBRATION_SOURCES.get(loaded.task, loaded.task)}",
    )


def recipe_main(name: str, argv: list[str] | None = None) -> int:
    """``python -m compress.recipes.<name> --model M --out DIR [flags]``."""
    recipe = get_recipe(name)

    def main(argv: list[str] | None) -> int:
        parser = argparse.ArgumentParser(
            prog=f"python -m compress.recipes.{name}",
            description=f"{recipe.summary} Saves the result with save_pretrained (and tokenizer).",
        )
        add_model_arguments(parser)
        parser.add_argument("--out", required=True, type=Path, help="folder to save the result in")
        add_config_arguments(parser, recipe.config_cls)
        args = parser.parse_args(argv)
        config = config_from_args(recipe.config_cls, args)
        t0 = time.perf_counter()
        loaded = load_model(args.model, args.task, device_map=args.device_map,
                            allow_pickle=args.allow_pickle,
                            trust_remote_code=args.trust_remote_code)
        before = parameter_counts(loaded.model)
        context = build_context(loaded, calibration_spec_from_args(args))
        model = compress(loaded.model, config, context)
        after = parameter_counts(model)
        save_model(model, loaded.tokenizer, args.out)
        print(
            f"{name}: {args.model} -> {args.out}  parameters {before['total']:,} -> "
            f"{after['total']:,}, nonzero {before['nonzero']:,} -> {after['nonzero']:,}  "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        return 0

    return run_main(main, argv)
