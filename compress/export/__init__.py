"""Interchange formats other tools load without this suite: compressed-tensors
(:mod:`compress.export.compressed_tensors`) and GGUF (:mod:`compress.export.gguf`)."""

import shutil
import tempfile
from pathlib import Path

from transformers import PreTrainedModel

from compress.errors import UserError
from compress.export import compressed_tensors  # registers the save format
from compress.export import gguf as gguf_export
from compress.moe.format import is_moe_model


def interchange_sizes(model, tokenizer, task: str | None = None) -> dict:
    """Real bytes of ``model`` written in each interchange format that takes it.

    Each format is written to a temporary place and measured (weight files only for
    compressed-tensors, the whole file for GGUF); a format that cannot hold the model
    gets the one-line reason instead. Engine graphs and MoE models (their own formats)
    get nothing. Used by ``eval.run`` so a report carries what the result really takes
    in the formats other tools load.
    """
    if not isinstance(model, PreTrainedModel) or is_moe_model(model):
        return {}
    out: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="compress-interchange-"))
    try:
        try:
            info = compressed_tensors.export(model, tmp / "ct")
            out["compressed-tensors"] = {"bytes": info["bytes_weights"], "layers": info["layers"],
                                         "sparsity": info["sparsity"]}
        except UserError as exc:
            out["compressed-tensors"] = {"bytes": None, "reason": str(exc)}
        if (task or "") == "causal-lm" or getattr(model.config, "model_type", None) in (
            gguf_export.PERMUTED_QK
        ):
            try:
                info = gguf_export.export(model, tokenizer, tmp / "model.gguf")
                out["gguf"] = {"bytes": info["bytes"], "types": info["types"]}
            except UserError as exc:
                out["gguf"] = {"bytes": None, "reason": str(exc)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
