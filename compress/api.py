"""The one contract: ``compress(model, config, context=None) -> model``.

``functools.partial(compress, config=cfg)`` gives the ``compress(model) -> model``
form. The handler registered for ``type(config)`` does the work; this function
checks that it returned a model and that nothing was left hanging on it (pruning
masks, parametrizations, forward hooks).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from compress.config import RecipeConfig
from compress.context import Context
from compress.errors import UserError
from compress.memory import require_memory
from compress.registry import Recipe, recipe_for_config
from compress.stats import parameter_counts

log = logging.getLogger(__name__)


def leftover_attachments(model: nn.Module) -> list[str]:
    """Names of modules that still carry masks, parametrizations or hooks."""
    found = []
    for name, module in model.named_modules():
        if hasattr(module, "parametrizations"):
            found.append(f"{name or '<root>'}: parametrizations")
        if any(k.endswith("_mask") for k in module._buffers) and any(
            k.endswith("_orig") for k in module._parameters
        ):
            found.append(f"{name or '<root>'}: torch.nn.utils.prune mask")
        if module._forward_pre_hooks or module._forward_hooks:
            hooks = list(module._forward_pre_hooks.values()) + list(module._forward_hooks.values())
            # accelerate's dispatch hooks (device_map) are legitimate and stay, and so
            # are a module's own methods (optimum-quanto's activation quantizers).
            foreign = [h for h in hooks if "accelerate" not in type(h).__module__
                       and getattr(h, "__self__", None) is not module]
            if foreign:
                found.append(f"{name or '<root>'}: forward hooks")
    return found


def _check_not_offloaded(model: nn.Module, name: str) -> None:
    """Recipes change weights in place; weights that accelerate offloaded are not there."""
    offloaded = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if offloaded and name != "identity":
        raise UserError(
            f"{name} cannot change weights that device_map offloaded to the CPU or disk "
            f"({len(offloaded)} tensors, e.g. {offloaded[0]}); put the whole model on devices "
            "that hold it (--device-map auto with enough GPU memory, or several GPUs), or load "
            "it on the CPU without --device-map"
        )


def _check_memory(model: nn.Module, config: RecipeConfig, recipe: Recipe,
                  context: Context | None = None) -> None:
    """Stop with a clear message before a recipe needs more memory than is free."""
    from compress.arch import hidden_size

    hidden = hidden_size(model)
    extra = recipe.memory_bytes(config, parameter_counts(model)["bytes"], hidden)
    if context is not None and recipe.traits is not None and recipe.traits.calibrates_for(config):
        # one stack's hidden states for the shared calibration set, inputs and outputs
        extra += 2 * context.calib.tokens * hidden * 4
    if extra > 0:
        require_memory(
            extra,
            f"recipe {recipe.name!r} (calibration activations / optimizer state)",
            "use fewer calibration sequences (--calib-sequences) or a shorter --calib-seq-len "
            "(or --nsamples / --seq-len where the recipe has them), LoRA instead "
            "of full fine-tuning, or load the model with --device-map auto",
        )


def compress(model: nn.Module, config: RecipeConfig, context: Context | None = None) -> nn.Module:
    """Apply the recipe configured by ``config`` to ``model`` and return the model.

    Example::

        from compress import compress, make_config
        model = compress(model, make_config("identity"))
    """
    recipe = recipe_for_config(config)
    context = context or Context()
    _check_not_offloaded(model, recipe.name)
    _check_memory(model, config, recipe, context)
    torch.manual_seed(config.seed)
    log.info("applying recipe %s", recipe.name)
    out = recipe.handler(model, config, context)
    if not isinstance(out, nn.Module):
        raise TypeError(f"recipe {recipe.name!r} returned {type(out).__name__}, not a model")
    leftovers = leftover_attachments(out)
    if leftovers:
        raise RuntimeError(
            f"recipe {recipe.name!r} left attachments on the model: {'; '.join(leftovers[:5])}"
        )
    return out
