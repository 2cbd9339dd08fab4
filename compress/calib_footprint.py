"""The memory of calibration: the parts every calibrating recipe's estimate is built from.

Recipes declare their estimates with their registration (:mod:`compress.footprint`);
the calibrating ones add up these parts, each following the code that allocates it:
the calibration set (:mod:`compress.calibration`: N x L tokens from ``context.calib``,
a causal LM's pool tokenized as one text), the sequential pipeline
(:mod:`compress.sequential`: one stack's hidden states, recorded block arguments, one
block's forward on a batch), whole-model calibration forwards with hooks
(:mod:`compress.quant.calib`), and the Hessian solve of GPTQ and SparseGPT
(:mod:`compress.hessian`). ``bench/recipe_memory.py`` checks the sums against
measured peaks.

>>> parts = sequential_parts(facts)                     # doctest: +SKIP
>>> Need(parts | {"Hessian and its solve": hessian_bytes(facts)}, calib_hint(facts))  # doctest: +SKIP
"""

from __future__ import annotations

from compress.footprint import (
    F32,
    ModelFacts,
    StackFacts,
    block_forward_bytes,
    forward_bytes,
    hidden_states_bytes,
    joined_text_bytes,
)

#: in x in float64 allocations of one Hessian solve held at its peak (see hessian_bytes).
HESSIAN_COPIES = 8


#: RSS a process's first whole-model forwards add beyond their tensors (oneDNN / MKL
#: kernel caches and allocator pools): MiniLM's first forward on 8 x 47 tokens adds
#: 26.5 MiB for 0.6 MiB of activations. The sequential pipeline's estimate (a whole
#: block's temporaries at once) covers it on the bench's models; whole-model calibration
#: forwards add it.
FIRST_FORWARD = 24 * 2**20
#: the batch size of calibration (compress.calibration.DEFAULT_BATCH_SIZE).
CALIB_BATCH = 8


def calib_hint(facts: ModelFacts, other: str = "") -> str:
    """The cheaper option a calibrating recipe's refusal names."""
    n = max(1, facts.data.calib_sequences // 4)
    return (f"use fewer calibration sequences (--calib-sequences {n}) or a shorter "
            "--calib-seq-len" + (f", or {other}" if other else ""))


def calib_text_parts(facts: ModelFacts) -> dict[str, int]:
    """Drawing the calibration set: a causal LM's pool is tokenized as one joined text."""
    if facts.causal and facts.data.calib_sequences:
        return {"tokenized calibration text": joined_text_bytes(facts.data.calibration_chars)}
    return {}


def calib_forward_parts(facts: ModelFacts, hooked: bool = True) -> dict[str, int]:
    """Whole-model calibration forwards, one batch at a time (logits included), with the
    hooks' float copy of the widest input (``hooked``), and the drawn calibration text."""
    n = facts.data.calib_sequences
    if not n:
        return {}
    b, t = min(CALIB_BATCH, n), facts.data.calib_len()
    extra = b * t * facts.widest_in() * F32 if hooked else 0
    return {"calibration forward": forward_bytes(facts, b, t) + extra,
            "first forward's kernel caches": FIRST_FORWARD, **calib_text_parts(facts)}


def sequential_parts(facts: ModelFacts, batch: int = CALIB_BATCH) -> dict[str, int]:
    """What :func:`compress.sequential.run_sequential` holds besides a recipe's own
    statistics: one stack's hidden states for every calibration token (plus one batch of
    outputs while they are replaced), the arguments recorded for the blocks (rotary
    cos/sin per token; a padded task's 4D attention mask per batch), one block's forward
    on a batch, and the drawn calibration text."""
    n, t = facts.data.calib_sequences, facts.data.calib_len()
    if not n:
        return {}
    b = min(batch, n)
    s = facts.stacks[0] if facts.stacks else StackFacts("decoder", 1)
    args = n * t * s.head_dim * 2 * F32 if facts.causal else n * t * t * F32
    return {
        "calibration hidden states": hidden_states_bytes(facts, n * t + b * t),
        "recorded block arguments": args,
        "one block's forward": block_forward_bytes(facts, b, t),
        **calib_text_parts(facts),
    }


def hessian_bytes(facts: ModelFacts) -> int:
    """GPTQ / SparseGPT on the widest-input linear of a block (in x in): its float32
    accumulator, then in float64 the caller's copy, the solver's clone (or permuted
    copy), the identity, the dampened matrix, the Cholesky factor, the inverse and its
    factor, each a new in x in allocation (eight; the bench measures 8.8-10 of them at
    the peak, freed copies included), and four weight-sized float temporaries (W, Q,
    block errors) of the largest linear."""
    w = facts.widest_in()
    return w * w * F32 + HESSIAN_COPIES * w * w * 8 + 4 * facts.largest_linear() * F32
