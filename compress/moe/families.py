"""Where each family's FFN lives and which modules a MoE FFN replaces: one table.

The FFN components themselves (``ffn_in`` / ``ffn_gate`` / ``ffn_out``) come from the
architecture table (:mod:`compress.arch`). This table adds only what MoEfication needs
on top: which module becomes the :class:`~compress.moe.layer.MoEFFN` so that the
block's own forward stays unchanged and the experts really skip work in both FFN
matrices.

* ``replace="parent"``: the module holding ``ffn_in`` (Llama/GPT-2 ``mlp``, T5
  ``DenseReluDense``, BERT ``intermediate``) is swapped whole for the MoE FFN.
* ``replace="ffn_in"``: the ``ffn_in`` linear itself is swapped (OPT/BART ``fc1``,
  whose activation is applied by the block: that activation module becomes
  ``nn.Identity`` because the experts apply it inside).
* ``out="inside"``: the MoE FFN returns the full FFN output, output bias included.
  ``out="bias"``: the block still calls its ``ffn_out`` module on our output (BERT
  ``output.dense``, OPT/BART ``fc2``), so that module becomes a
  :class:`~compress.moe.layer.AddBias` holding only the output bias.
* ``act``: attribute name of the activation module on the parent of ``ffn_in``.
"""

from __future__ import annotations

from dataclasses import dataclass

from compress.errors import UserError


@dataclass(frozen=True)
class FFNLayout:
    replace: str  # "parent" | "ffn_in"
    out: str  # "inside" | "bias"
    act: str  # activation attribute on the parent of ffn_in
    act_to_identity: bool = False  # the block applies the activation: make it nn.Identity
    note: str = ""


_BERT = FFNLayout("parent", "bias", "intermediate_act_fn",
                  note="intermediate -> MoEFFN; output.dense -> AddBias (dropout, residual "
                  "and LayerNorm of BertOutput unchanged)")
_DECODER_MLP = FFNLayout("parent", "inside", "act_fn", note="mlp -> MoEFFN")
_OPT = FFNLayout("ffn_in", "bias", "activation_fn", act_to_identity=True,
                 note="fc1 -> MoEFFN, activation_fn -> Identity, fc2 -> AddBias; "
                 "activation dropout (training only) then acts on the FFN output")

FFN_LAYOUTS: dict[str, FFNLayout] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "encoder-decoder": _BERT,  # bert2bert: both stacks are BERT layers
    "llama": _DECODER_MLP,
    "mistral": _DECODER_MLP,
    "qwen2": _DECODER_MLP,
    "gpt2": FFNLayout("parent", "inside", "act",
                      note="mlp -> MoEFFN (GPT2MLP's output dropout is training-only)"),
    "t5": FFNLayout("parent", "inside", "act", note="DenseReluDense -> MoEFFN (no biases)"),
    "opt": _OPT,
    "bart": _OPT,
}


def layout_for(family: str) -> FFNLayout:
    try:
        return FFN_LAYOUTS[family]
    except KeyError:
        raise UserError(
            f"moefy: family {family!r} has no FFN layout in compress/moe/families.py; "
            f"supported: {', '.join(sorted(FFN_LAYOUTS))}"
        ) from None
