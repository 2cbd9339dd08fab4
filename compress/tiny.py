"""Tiny random models of many transformers families, built from configs, offline.

Used by the tests and benchmarks so everything runs in seconds without a hub. A tiny
byte-level BPE tokenizer (vocab 512) is trained on a fixed sentence list, so no
tokenizer files are needed either.

Any config class transformers ships can be shrunk by :func:`tiny_config`: size
arguments are recognised by name (hidden size, layers, heads, KV heads, FFN width,
head size, experts, positions, vocabulary) and set small. :data:`TINY_OVERRIDES`
holds the few extra arguments some configs need to be valid at that size (a rotary
width no larger than the head, a per-layer attention pattern of the right length).
They describe how to *build* a small model, not how to compress it: the suite reads
every model through :mod:`compress.arch` discovery.

:data:`TINY_FAMILIES` are the seven families most tests use; :data:`MATRIX_FAMILIES`
are the families of the recipe x family test matrix, by kind and layer feature.

>>> model, tok = tiny_model("llama")          # doctest: +SKIP
>>> model, tok = tiny_model("phi3")           # fused qkv and gate-up   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
import transformers as tf

TINY_FAMILIES = ("bert", "gpt2", "llama", "opt", "t5", "bart", "bert2bert")
VOCAB = 512

#: family -> (kind, what it exercises); the recipe x family matrix runs every one.
MATRIX_FAMILIES: dict[str, tuple[str, str]] = {
    # decoder-only
    "gpt2": ("decoder", "Conv1D linears, fused qkv [q|k|v]"),
    "llama": ("decoder", "grouped KV heads, gated SiLU FFN"),
    "opt": ("decoder", "split FFN (fc1/fc2 in the block), ReLU"),
    "mistral": ("decoder", "sliding-window attention, GQA"),
    "qwen2": ("decoder", "q/k/v biases, GQA"),
    "qwen3": ("decoder", "QK-norm (per head)"),
    "gemma": ("decoder", "GeLU-tanh gated FFN, explicit head_dim, multi-query"),
    "gemma2": ("decoder", "logit soft-capping, local/global sliding layers"),
    "gemma3_text": ("decoder", "QK-norm, local/global layers (layer_types)"),
    "olmo2": ("decoder", "QK-norm over the whole projection"),
    "phi": ("decoder", "parallel attention+FFN, partial rotary"),
    "phi3": ("decoder", "fused qkv and fused gate-up projections"),
    "gpt_neox": ("decoder", "parallel block, fused qkv per head, partial rotary"),
    "gptj": ("decoder", "parallel block, partial rotary"),
    "falcon": ("decoder", "multi-query attention, fused qkv, parallel block"),
    "bloom": ("decoder", "ALiBi, fused qkv per head"),
    "gpt_bigcode": ("decoder", "multi-query attention, fused qkv"),
    "mpt": ("decoder", "ALiBi, fused Wqkv"),
    "stablelm": ("decoder", "partial rotary, per-head QK layernorm"),
    "starcoder2": ("decoder", "sliding window, biased GELU FFN"),
    "cohere": ("decoder", "parallel block, logit scale"),
    "granite": ("decoder", "residual/attention multipliers"),
    "persimmon": ("decoder", "fused qkv per head, QK layernorm, squared ReLU"),
    "gpt_neo": ("decoder", "local (windowed) attention layers"),
    "codegen": ("decoder", "fused qkv in model-parallel blocks, parallel block"),
    "nemotron": ("decoder", "squared-ReLU non-gated FFN, partial rotary"),
    "biogpt": ("decoder", "scaled embeddings, learned positions"),
    "xglm": ("decoder", "sinusoidal positions, split FFN"),
    "smollm3": ("decoder", "no rotary on some layers"),
    "mixtral": ("decoder", "native MoE FFN (fused 3-D experts)"),
    "qwen2_moe": ("decoder", "native MoE with a shared expert"),
    "olmoe": ("decoder", "native MoE, QK-norm"),
    "granitemoe": ("decoder", "native MoE (parallel experts), multipliers"),
    # encoder-only
    "bert": ("encoder", "post-norm encoder, split FFN"),
    "roberta": ("encoder", "BERT layout, offset positions"),
    "distilbert": ("encoder", "q_lin/k_lin/v_lin/out_lin names"),
    "albert": ("encoder", "weights shared across depth, factorised embeddings"),
    "electra": ("encoder", "embedding projection outside the blocks"),
    "deberta-v2": ("encoder", "disentangled relative-position attention"),
    "mpnet": ("encoder", "relative position bias"),
    "roformer": ("encoder", "rotary encoder"),
    "modernbert": ("encoder", "fused Wqkv, gated Wi, local/global attention"),
    "megatron-bert": ("encoder", "pre-norm BERT"),
    "xlm-roberta": ("encoder", "BERT layout"),
    # encoder-decoder
    "t5": ("encoder-decoder", "relative position bias owned by block 0, no biases"),
    "mt5": ("encoder-decoder", "gated-GeLU T5"),
    "bart": ("encoder-decoder", "split FFN, learned positions"),
    "mbart": ("encoder-decoder", "pre-norm BART"),
    "pegasus": ("encoder-decoder", "sinusoidal positions"),
    "marian": ("encoder-decoder", "tied source/target vocab"),
    "m2m_100": ("encoder-decoder", "scaled sinusoidal positions"),
    "blenderbot-small": ("encoder-decoder", "post-norm BART-like"),
    "longt5": ("encoder-decoder", "local attention encoder"),
    "switch_transformers": ("encoder-decoder", "native MoE (expert modules) T5"),
    "bert2bert": ("encoder-decoder", "EncoderDecoderModel over two BERTs"),
}

#: the extra config arguments some families need to be valid at the tiny size.
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "gptj": {"rotary_dim": 4},
    "codegen": {"rotary_dim": 4, "n_ctx": 256},
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "window_size": 4},
    "gemma": {"num_key_value_heads": 1},
    "gemma2": {"sliding_window": 4, "query_pre_attn_scalar": 8},
    "gemma3_text": {"sliding_window": 4, "query_pre_attn_scalar": 8},
    "mistral": {"sliding_window": 4},
    "starcoder2": {"sliding_window": 4},
    "stablelm": {"qk_layernorm": True},
    "falcon": {"multi_query": True, "new_decoder_architecture": False, "parallel_attn": True},
    "phi": {"partial_rotary_factor": 0.5},
    "gpt_neox": {"rotary_pct": 0.5},
    "qwen2_moe": {"shared_expert_intermediate_size": 64, "decoder_sparse_step": 1},
    "albert": {"embedding_size": 16, "num_hidden_groups": 1, "inner_group_num": 1},
    "electra": {"embedding_size": 16},
    "modernbert": {"global_attn_every_n_layers": 2, "local_attention": 4},
    "deberta-v2": {"relative_attention": True, "pos_att_type": ["p2c", "c2p"],
                   "position_buckets": 8, "max_relative_positions": 16},
    "mt5": {"feed_forward_proj": "gated-gelu"},
    "longt5": {"local_radius": 2, "encoder_attention_type": "local"},
    "switch_transformers": {"num_sparse_encoder_layers": 1, "num_sparse_decoder_layers": 1,
                            "expert_capacity": 64},
    "mpt": {"attn_config": {"alibi": True}},
}

_TRAIN_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Compression makes models smaller and faster, if it is done right.",
    "Pruning removes weights; quantization rounds them; distillation trains a student.",
    "A mixture of experts computes only the experts a router picks.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Numbers like 1, 2, 3, 10, 100 and 2026 appear in news text.",
] * 20


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> tf.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ``VOCAB`` entries and pad/bos/eos/unk/mask."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TRAIN_TEXT, trainer=trainer)
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )


#: size arguments recognised by name, and the tiny value each gets.
_SIZES: tuple[tuple[tuple[str, ...], int], ...] = (
    (("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "model_dim"), 32),
    (("num_hidden_layers", "n_layer", "num_layers", "encoder_layers", "decoder_layers",
      "num_decoder_layers", "n_layers"), 2),
    (("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads",
      "decoder_attention_heads", "n_heads", "attention_heads"), 4),
    (("num_key_value_heads",), 2),
    (("intermediate_size", "ffn_dim", "d_ff", "n_inner", "encoder_ffn_dim", "decoder_ffn_dim",
      "ffn_hidden_size", "moe_intermediate_size"), 64),
    (("head_dim", "d_kv", "attention_head_dim"), 8),
    (("vocab_size",), VOCAB),
    (("max_position_embeddings", "n_positions", "max_seq_len"), 256),
    (("num_local_experts", "num_experts", "n_routed_experts"), 4),
    (("num_experts_per_tok", "moe_topk"), 2),
)
_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 2}


def _core_config(family: str, w: int, overrides: dict) -> tf.PretrainedConfig | None:
    """The seven families most tests use, exactly as they have always been built."""
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "bert":
        base = dict(vocab_size=VOCAB, hidden_size=w, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=2 * w, max_position_embeddings=256, pad_token_id=0)
        return tf.BertConfig(**(base | overrides))
    if family == "gpt2":
        return tf.GPT2Config(**(dict(vocab_size=VOCAB, n_embd=w, n_layer=2, n_head=4,
                                     n_positions=256, bos_token_id=1, eos_token_id=2) | overrides))
    if family == "llama":
        return tf.LlamaConfig(**(dict(vocab_size=VOCAB, hidden_size=w, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=2 * w, max_position_embeddings=256)
                                 | ids | overrides))
    if family == "opt":
        return tf.OPTConfig(**(dict(vocab_size=VOCAB, hidden_size=w, num_hidden_layers=2,
                                    num_attention_heads=4, ffn_dim=2 * w, word_embed_proj_dim=w,
                                    max_position_embeddings=256) | ids | overrides))
    if family == "t5":
        return tf.T5Config(**(dict(vocab_size=VOCAB, d_model=w, d_ff=2 * w, d_kv=w // 4,
                                   num_layers=2, num_decoder_layers=2, num_heads=4,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=2)
                              | overrides))
    if family == "bart":
        return tf.BartConfig(**(dict(vocab_size=VOCAB, d_model=w, encoder_layers=2,
                                     decoder_layers=2, encoder_attention_heads=4,
                                     decoder_attention_heads=4, encoder_ffn_dim=2 * w,
                                     decoder_ffn_dim=2 * w, max_position_embeddings=256,
                                     decoder_start_token_id=2, forced_eos_token_id=None)
                                | ids | overrides))
    if family == "bert2bert":
        enc = _core_config("bert", w, {})
        dec = _core_config("bert", w, {"is_decoder": True, "add_cross_attention": True})
        cfg = tf.EncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
        cfg.decoder_start_token_id = 1
        cfg.pad_token_id = 0
        cfg.eos_token_id = 2
        return cfg
    return None


def tiny_config(family: str, width: int = 32, **overrides) -> tf.PretrainedConfig:
    """A small config of ``family`` (a transformers ``model_type``, or "bert2bert").

    ``width`` is the hidden size (4 heads of ``width // 4``, FFN of ``2 * width``).
    """
    core = _core_config(family, width, overrides)
    if core is not None:
        return core
    if family not in tf.CONFIG_MAPPING:
        raise ValueError(f"unknown tiny family {family!r}; transformers has no such model_type")
    cls = tf.CONFIG_MAPPING[family]
    params = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {}
    scaled = {32: width, 64: 2 * width, 8: width // 4}
    for names, value in _SIZES:
        if names[0] in ("vocab_size", "max_position_embeddings", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "num_local_experts",
                        "num_experts_per_tok"):
            scaled_value = value
        else:
            scaled_value = scaled.get(value, value)
        for name in names:
            if name in params:
                kwargs[name] = scaled_value
    kwargs.update({k: v for k, v in _IDS.items() if k in params})
    if "tie_word_embeddings" in params:
        kwargs["tie_word_embeddings"] = True
    if family in ("t5", "mt5", "longt5", "switch_transformers", "umt5"):
        kwargs["decoder_start_token_id"] = 0
    if family in ("bart", "mbart"):
        kwargs["forced_eos_token_id"] = None
    kwargs.update(TINY_OVERRIDES.get(family, {}))
    kwargs.update(overrides)
    return cls(**kwargs)


def _model_class(config: tf.PretrainedConfig, classifier: bool) -> type:
    from transformers.models.auto import modeling_auto as ma

    if classifier:
        return tf.AutoModelForSequenceClassification._model_mapping[type(config)]
    if getattr(config, "is_encoder_decoder", False):
        return tf.AutoModelForSeq2SeqLM._model_mapping[type(config)]
    mt = config.model_type
    if mt in ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in ma.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return tf.AutoModelForCausalLM._model_mapping[type(config)]
    return tf.AutoModel._model_mapping[type(config)]


def tiny_model(family: str, seed: int = 0, classifier: bool = False, width: int = 32,
               **overrides):
    """(model, tokenizer) for a randomly initialised tiny model of ``family``.

    Decoders come with their causal-LM head, encoder-decoders with their seq2seq head,
    encoders as the bare encoder (``classifier=True``: with a 3-label classification head).
    """
    torch.manual_seed(seed)
    config = tiny_config(family, width, **overrides)
    if classifier:
        config.num_labels = 3
    if family == "bert2bert":
        model = tf.EncoderDecoderModel(config=config)
    else:
        model = _model_class(config, classifier)(config)
    model.eval()
    return model, tiny_tokenizer()


def is_seq2seq(family: str) -> bool:
    return family == "bert2bert" or MATRIX_FAMILIES.get(family, ("",))[0] == "encoder-decoder" \
        or family in ("t5", "bart")


def sample_inputs(family: str, batch: int = 2, length: int = 12, seed: int = 0) -> dict:
    """Deterministic model inputs (ids avoid the special tokens)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if is_seq2seq(family):
        inputs["decoder_input_ids"] = torch.randint(5, VOCAB, (batch, length // 2), generator=g)
    return inputs
