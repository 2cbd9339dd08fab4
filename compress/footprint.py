"""What a recipe holds in memory besides the model, estimated before it runs.

A recipe's registration declares its estimate (``register_recipe(..., memory=fn)``):
``fn(config, facts) -> bytes``, where ``facts`` (:class:`ModelFacts`) are the sizes
read from the model without running it: parameter bytes, hidden and FFN widths, heads,
the in/out features of every block linear, the width of the logits. The helpers below
size the things recipes allocate, each following the code that allocates it:

* :func:`forward_bytes`: the working memory of one forward pass without gradients
  (one block's temporaries at a time, plus the logits);
* :func:`saved_activation_bytes`: what autograd keeps for the backward pass;
* :func:`optimizer_bytes`: gradients plus AdamW's two moments of the trained parameters;
* :func:`hidden_states_bytes`: calibration hidden states kept between blocks.

:func:`compress.api.compress` checks the estimate against free memory before the recipe
starts (:func:`compress.memory.require_memory`); ``bench/recipe_memory.py`` measures
every calibrating or training recipe on SmolLM2 and MiniLM and compares the measured
peak with the estimate (``reports/bench/recipe_memory.json``).

>>> facts = model_facts(model)                             # doctest: +SKIP
>>> get_recipe("wanda").memory_bytes(config, facts)         # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

from compress.memory import fmt_bytes  # re-exported: the estimates' messages use it

#: bytes of a float32 (what calibration statistics, activations and optimizer state use).
F32 = 4


@dataclass(frozen=True)
class StackFacts:
    """Sizes of one stack of blocks (encoder or decoder)."""

    role: str
    blocks: int
    calls: int = 1  # forward calls per block (ALBERT: the shared block runs many times)
    heads: int = 1
    kv_heads: int = 1
    head_dim: int = 64
    ffn: int = 0  # FFN width (0: none found)
    gated: bool = False
    experts: int = 0  # native mixture-of-experts: experts per FFN
    cross: bool = False
    #: (in_features, out_features) of every block linear, per block.
    linears: tuple[tuple[tuple[int, int], ...], ...] = ()

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def ffn_width(self) -> int:
        return self.ffn


@dataclass(frozen=True)
class DataFacts:
    """How much text a recipe may tokenize (from the context): items and characters of
    the calibration pool and the training split, and the calibration protocol's
    sequences x tokens (``context.calib``, :mod:`compress.calibration`)."""

    task: str | None = None
    calibration_items: int = 0
    calibration_chars: int = 0
    train_items: int = 0
    train_chars: int = 0
    calib_sequences: int = 0
    calib_seq_len: int = 0
    #: characters of the longest calibration / training item (short examples pad to
    #: their batch's longest, not to the length limit).
    calibration_longest: int = 0
    train_longest: int = 0

    def calib_len(self) -> int:
        """Tokens per calibration sequence: L for a causal LM (windows of the joined
        stream), else at most the longest example (about 3 characters a token, plus the
        special tokens), padded to it within a batch."""
        if self.task in (None, "causal-lm") or not self.calibration_longest:
            return self.calib_seq_len
        return min(self.calib_seq_len, self.calibration_longest // 3 + 2)

    def train_len(self, seq: int) -> int:
        """Tokens per training sequence of at most ``seq``: ``seq`` for a causal LM
        (windows of the joined text), else at most the longest example."""
        if self.task in (None, "causal-lm") or not self.train_longest:
            return seq
        return min(seq, self.train_longest // 3 + 2)

    def calib_tokens(self) -> int:
        """Calibration tokens N x L (per-sequence length as :meth:`calib_len`)."""
        return self.calib_sequences * self.calib_len()


@dataclass(frozen=True)
class ModelFacts:
    """Sizes of a model that memory estimates need; read without running it.

    ``vocab`` is the width of per-token logits (language-model heads; 0 for models
    without one), ``labels`` the width of a per-sequence head (classifiers).
    """

    param_bytes: int
    hidden: int
    elem: int = F32  # bytes per element of the floating weights
    vocab: int = 0
    labels: int = 0
    kind: str = "decoder"
    stacks: tuple[StackFacts, ...] = ()
    #: a linear block weight's bytes, summed (what quantizers and pruners rewrite)
    linear_bytes: int = 0
    embedding_bytes: int = 0
    eager_attention: bool = False
    dropout: bool = False
    #: the largest single parameter's bytes (AdamW's per-parameter temporaries).
    largest_param_bytes: int = 0
    data: DataFacts = field(default_factory=DataFacts)

    @property
    def blocks(self) -> int:
        return sum(s.blocks * s.calls for s in self.stacks)

    @property
    def ffn(self) -> int:
        return max((s.ffn for s in self.stacks), default=0) or 4 * self.hidden

    @property
    def heads(self) -> int:
        return max((s.heads for s in self.stacks), default=1)

    def block_linears(self) -> list[tuple[tuple[int, int], ...]]:
        """(in, out) of the linears of every block, all stacks."""
        return [b for s in self.stacks for b in s.linears]

    def widest_in(self) -> int:
        return max((i for b in self.block_linears() for i, _ in b), default=self.hidden)

    def largest_linear(self) -> int:
        """Elements of the largest block linear."""
        return max((i * o for b in self.block_linears() for i, o in b),
                   default=self.hidden * self.ffn)

    def largest_block(self) -> int:
        """Elements of the block linears of the largest block."""
        return max((sum(i * o for i, o in b) for b in self.block_linears()),
                   default=self.largest_linear())

    def ffn_linear_bytes(self) -> int:
        """Bytes of the FFN linears (moefy copies them into experts): those whose input or
        output width is the FFN width."""
        ffn = {s.ffn for s in self.stacks if s.ffn}
        return sum(i * o * self.elem for b in self.block_linears() for i, o in b
                   if i in ffn or o in ffn)

    @property
    def task(self) -> str | None:
        return self.data.task

    @property
    def causal(self) -> bool:
        """A language model scored per token on joined text (causal-lm)."""
        if self.data.task:
            return self.data.task == "causal-lm"
        return bool(self.vocab) and self.kind == "decoder"

    @classmethod
    def simple(cls, param_bytes: int, hidden: int) -> ModelFacts:
        """Facts from the two numbers the first estimates took (legacy estimates)."""
        return cls(param_bytes=param_bytes, hidden=hidden)


def _first_float_elem(model: nn.Module) -> int:
    for p in model.parameters():
        if p.is_floating_point():
            return p.element_size()
    return F32


def _param_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or p.device.type == "meta":
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def _chars(items: Any) -> tuple[int, int, int]:
    """(items, characters, characters of the longest item)."""
    n = chars = longest = 0
    for item in items or ():
        n += 1
        if isinstance(item, str):
            c = len(item)
        elif isinstance(item, (tuple, list)):
            c = sum(len(x) for x in item if isinstance(x, str))
        elif isinstance(item, dict):
            c = sum(len(x) for x in item.values() if isinstance(x, str))
        else:
            c = 0
        chars += c
        longest = max(longest, c)
    return n, chars, longest


def data_facts(context: Any) -> DataFacts:
    """Items and characters of the context's calibration and training data, and its
    calibration spec."""
    if context is None:
        return DataFacts()
    ci, cc, longest = _chars(getattr(context, "calibration", None))
    ti, tc, train_longest = _chars(getattr(context, "train", None))
    spec = getattr(context, "calib", None)
    n = int(getattr(spec, "sequences", 0) or 0) if ci else 0
    return DataFacts(getattr(context, "task", None), ci, cc, ti, tc, calib_sequences=n,
                     calib_seq_len=int(getattr(spec, "seq_len", 0) or 0),
                     calibration_longest=longest, train_longest=train_longest)


def model_facts(model: nn.Module, context: Any = None) -> ModelFacts:
    """The :class:`ModelFacts` of ``model`` (architecture discovery, no tensor copied),
    with the sizes of ``context``'s data.

    Models the suite cannot read (no blocks found) get the parameter bytes and the
    config's hidden size only.
    """
    from compress.arch import arch_for, hidden_size, in_out_features, iter_blocks
    from compress.errors import UserError

    own = getattr(model, "compress_parameter_counts", None)
    param_bytes = int(own["bytes"]) if isinstance(own, dict) and "bytes" in own else \
        _param_bytes(model)
    cfg = getattr(model, "config", None)
    vocab = labels = 0
    try:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    except (AttributeError, NotImplementedError):
        head = None
    if head is not None and getattr(head, "weight", None) is not None:
        vocab = int(head.weight.shape[0])
    elif type(model).__name__.endswith(("ForSequenceClassification", "ForTokenClassification")):
        labels = int(getattr(cfg, "num_labels", 2) or 2)
    eager = getattr(cfg, "_attn_implementation", "eager") in (None, "eager")
    dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
    emb = 0
    try:
        e = model.get_input_embeddings()
        emb = int(e.weight.numel() * e.weight.element_size())
    except (AttributeError, NotImplementedError):
        pass
    largest = max((p.numel() * p.element_size() for p in model.parameters()
                   if p.device.type != "meta"), default=0)
    data = data_facts(context)
    try:
        spec = arch_for(model)
    except UserError:
        return ModelFacts(param_bytes=param_bytes, hidden=hidden_size(model),
                          elem=_first_float_elem(model), vocab=vocab, labels=labels,
                          eager_attention=eager, dropout=dropout, embedding_bytes=emb,
                          largest_param_bytes=largest, data=data)
    per_stack: dict[str, list[tuple[tuple[int, int], ...]]] = {}
    linear_bytes = 0
    elem = _first_float_elem(model)
    for block in iter_blocks(model, spec):
        shapes = []
        for mod in block.linears.values():
            i, o = in_out_features(mod)
            shapes.append((int(i), int(o)))
            linear_bytes += i * o * elem
        per_stack.setdefault(block.role, []).append(tuple(shapes))
    stacks = []
    for s in spec.stacks:
        lay = spec.layouts.get(f"{s.path}.0")
        a = lay.self_attn if lay is not None else None
        ffn = lay.ffn.intermediate if lay is not None and lay.ffn is not None else 0
        exp = lay.experts if lay is not None else None
        if not ffn and exp is not None:
            ffn = exp.intermediate or 0
        stacks.append(StackFacts(
            role=s.role, blocks=s.n_blocks, calls=s.calls_per_block,
            heads=a.heads if a else 1, kv_heads=a.kv_heads if a else 1,
            head_dim=a.head_dim if a else spec.hidden,
            ffn=int(ffn or 0), gated=bool(spec.gated_ffn),
            experts=int(exp.n_experts) if exp is not None else 0,
            cross=lay is not None and lay.cross_attn is not None,
            linears=tuple(per_stack.get(s.role, ())),
        ))
    return ModelFacts(param_bytes=param_bytes, hidden=int(spec.hidden or hidden_size(model)),
                      elem=elem, vocab=vocab, labels=labels, kind=spec.kind,
                      stacks=tuple(stacks), linear_bytes=int(linear_bytes),
                      embedding_bytes=emb, eager_attention=eager, dropout=dropout,
                      largest_param_bytes=largest, data=data)


#: parts a recipe holds before it allocates the rest, and frees: drawing the calibration
#: set tokenizes a causal LM's pool as one text, then keeps only the token ids.
EARLIER = ("tokenized calibration text",)


@dataclass(frozen=True)
class Need:
    """A recipe's memory estimate: bytes by what holds them, and the cheaper option a
    refusal names (one sentence, e.g. "use fewer calibration samples (nsamples=32)")."""

    parts: dict[str, int]
    hint: str = ""

    @property
    def bytes(self) -> int:
        """The sum of the parts; parts named in :data:`EARLIER` are a phase of their own
        (freed before the rest is allocated), so they count only where they exceed it."""
        early = sum(v for k, v in self.parts.items() if k in EARLIER)
        rest = sum(v for k, v in self.parts.items() if k not in EARLIER)
        return int(max(early, rest))

    def __int__(self) -> int:
        return self.bytes

    @staticmethod
    def peak(*needs: Need) -> Need:
        """The largest of needs met one after another (phases that free what they held)."""
        return max(needs, key=lambda n: n.bytes)

    def plus(self, parts: dict[str, int]) -> Need:
        """This need with more parts held at the same time."""
        merged = dict(self.parts)
        for k, v in parts.items():
            merged[k] = merged.get(k, 0) + int(v)
        return Need(merged, self.hint)

    def describe(self, top: int = 3) -> str:
        """The largest parts, e.g. "Hessians 1.2 GiB, calibration hidden states 0.3 GiB"."""
        parts = sorted(((v, k) for k, v in self.parts.items() if v > 0), reverse=True)
        return ", ".join(f"{k} {fmt_bytes(v)}" for v, k in parts[:top])


def call_estimate(fn: Any, config: Any, facts: ModelFacts) -> Need:
    """Run an estimate of either form (``(config, facts)`` or the first estimates'
    ``(config, param_bytes, hidden)``) and return a :class:`Need`."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
        required = [p for p in params if p.default is p.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        required = []
    if len(required) >= 3:
        out = fn(config, facts.param_bytes, facts.hidden)
    else:
        out = fn(config, facts)
    if isinstance(out, Need):
        return out
    return Need({"estimate": int(out)})


# --------------------------------------------------------------------------- building blocks


def hidden_states_bytes(facts: ModelFacts, tokens: int, copies: int = 1) -> int:
    """``copies`` float32 hidden states of ``tokens`` tokens."""
    return copies * tokens * facts.hidden * F32


def _attention_scores(facts: ModelFacts, s: StackFacts, batch: int, seq: int) -> int:
    """Scores and probabilities that eager attention (or sdpa's math path, taken for
    training with dropout) materialises: (batch, heads, seq, seq) twice."""
    return 2 * batch * s.heads * seq * seq * F32


def block_forward_bytes(facts: ModelFacts, batch: int, seq: int) -> int:
    """Temporaries of one block's forward without gradients, widest stack.

    Attention: the normed input, q, k, v, the rotated q and k and the output (six
    hidden-sized tensors at most); FFN: the normed input and, at the product, gate, up
    and act(gate) (three FFN-wide tensors); sdpa on the CPU tiles the scores, eager
    attention holds them whole.
    """
    worst = 0
    for s in facts.stacks or (StackFacts("decoder", 1, ffn=facts.ffn),):
        ffn = s.ffn or 4 * facts.hidden
        attn = 6 * facts.hidden
        if facts.eager_attention:
            attn += _attention_scores(facts, s, batch, seq) // (batch * seq * F32)
        width = max(attn, facts.hidden + 3 * ffn)
        worst = max(worst, batch * seq * (width + 2 * facts.hidden) * F32)
    return worst


def logits_bytes(facts: ModelFacts, batch: int, seq: int, copies: int = 1) -> int:
    """Per-token logits (language models) or per-sequence logits (classifiers)."""
    if facts.vocab:
        return copies * batch * seq * facts.vocab * F32
    return copies * batch * max(facts.labels, 1) * F32


def forward_bytes(facts: ModelFacts, batch: int, seq: int, *, logits: bool = True,
                  loss: bool = False) -> int:
    """Working memory of one whole-model forward without gradients.

    The embeddings' output, the widest block's temporaries and, with ``logits``, the
    logits (plus the log-softmax the loss makes from them, with ``loss``).
    """
    total = hidden_states_bytes(facts, batch * seq, 2) + block_forward_bytes(facts, batch, seq)
    if logits:
        total += logits_bytes(facts, batch, seq, 2 if loss else 1)
    return total


def saved_per_token(facts: ModelFacts, s: StackFacts, seq: int) -> int:
    """Floats autograd keeps per token and block for the backward pass.

    Attention: both norms' inputs and outputs, q, k, v, the rotated q and k, the
    attention output and the residual (about eight hidden-sized tensors, q/k/v at their
    own widths); FFN: the up and gate outputs, the activation and the product (four
    FFN-wide tensors, two without a gate). Eager attention, or sdpa with dropout in
    training, adds the scores, probabilities and dropout mask (three per head and key).
    """
    ffn = s.ffn or 4 * facts.hidden
    floats = 8 * facts.hidden + 2 * s.kv_width + (4 if s.gated else 3) * ffn
    if facts.eager_attention or facts.dropout:
        floats += 3 * s.heads * seq
    if facts.dropout:
        floats += 2 * facts.hidden  # dropout masks after attention and FFN
    return floats


def saved_activation_bytes(facts: ModelFacts, batch: int, seq: int,
                           blocks: dict[str, int] | None = None) -> int:
    """What a training forward keeps for backward, over the blocks that run.

    ``blocks`` maps a stack role to the number of its blocks (default: all of them).
    """
    total = 0
    for s in facts.stacks or (StackFacts("decoder", 1, ffn=facts.ffn),):
        n = (blocks or {}).get(s.role, s.blocks * s.calls)
        total += n * batch * seq * saved_per_token(facts, s, seq) * F32
    return total


def training_step_bytes(facts: ModelFacts, batch: int, seq: int, *, trainable_bytes: int,
                        blocks: dict[str, int] | None = None, loss_logits: int = 3) -> int:
    """Peak of one training step: saved activations, logits with their loss copies and
    gradients (``loss_logits`` logits-sized tensors: logits, log-softmax, its gradient),
    and the gradients plus AdamW moments of ``trainable_bytes``."""
    return (saved_activation_bytes(facts, batch, seq, blocks)
            + logits_bytes(facts, batch, seq, loss_logits)
            + hidden_states_bytes(facts, batch * seq, 4)
            + optimizer_bytes(trainable_bytes))


def optimizer_bytes(trainable_bytes: int) -> int:
    """Gradients (one copy) and AdamW's two moments (two copies) of the trained weights."""
    return 3 * trainable_bytes


#: a fast tokenizer's encoding of one long text held at once (ids, offsets and token
#: strings in Rust, then Python lists before the tensor is made): measured 93 bytes per
#: character (21 MiB for SmolLM2's tokenizer on 231k characters of Wikipedia).
TOKENIZE_BYTES_PER_CHAR = 100


def joined_text_bytes(chars: int) -> int:
    """Tokenizing ``chars`` characters joined into one text (causal-LM calibration and
    training windows are cut from one joined text)."""
    return int(chars) * TOKENIZE_BYTES_PER_CHAR


def lora_input_bytes(facts: ModelFacts, batch: int, seq: int) -> int:
    """What LoRA branches keep for backward: each adapted linear's dropped-out input
    (float32) and its dropout mask (one byte), per token."""
    per_token = sum(i * (F32 + 1) for b in facts.block_linears() for i, _ in b)
    return batch * seq * per_token


def finetune_parts(facts: ModelFacts, *, steps: int, method: str, batch: int, seq: int,
                   lora_r: int = 8, keep_zero: bool = True, teacher: bool = False,
                   train_chars: int | None = None) -> dict[str, int]:
    """What :func:`compress.finetune.finetune` holds at its peak (the first step's
    backward, with the optimizer state made).

    Full: gradients and AdamW's two moments of every parameter, AdamW's two temporaries
    of the largest parameter (its single-tensor CPU path), one-byte zero masks of the
    matrices; LoRA: adapters, their gradients and moments, and their inputs. Both: the
    saved activations of every block, the logits with log-softmax and their gradients,
    and, for a causal LM, the whole training split tokenized as one text.
    """
    if steps <= 0:
        return {}
    seq = facts.data.train_len(seq)
    parts: dict[str, int] = {}
    task = facts.task
    if task == "embedding" and not teacher:
        return {}  # nothing to train on: finetune() returns the model unchanged
    if facts.causal:
        chars = facts.data.train_chars if train_chars is None else train_chars
        parts["tokenized training text"] = joined_text_bytes(chars)
    if method == "full":
        parts["gradients and AdamW moments"] = (optimizer_bytes(facts.param_bytes)
                                                + 2 * facts.largest_param_bytes)
        if keep_zero:
            parts["zero masks"] = facts.linear_bytes // max(facts.elem, 1)
    else:
        adapters = lora_bytes(facts, lora_r)
        parts["LoRA adapters and AdamW"] = 4 * adapters + 2 * facts.largest_linear() * F32
        parts["LoRA inputs"] = lora_input_bytes(facts, batch, seq)
    parts["activations for backward"] = (saved_activation_bytes(facts, batch, seq)
                                         + hidden_states_bytes(facts, batch * seq, 4))
    parts["logits and loss"] = logits_bytes(facts, batch, seq, 4)
    if teacher:  # a bare encoder learns from its dense self: a copy runs beside it
        parts["teacher copy"] = facts.param_bytes
    return parts


def recovery_need(config: Any, facts: ModelFacts, hint: str) -> Need:
    """Recovery fine-tuning and rewinding of the pruning recipes (their RecoveryConfig
    fields): the fine-tuning peak plus, when rewinding, a copy of the targeted weights."""
    parts = finetune_parts(
        facts, steps=getattr(config, "finetune_steps", 0),
        method=getattr(config, "finetune_method", "lora"),
        batch=getattr(config, "finetune_batch_size", 8),
        seq=getattr(config, "finetune_seq_len", 128), lora_r=getattr(config, "lora_r", 8),
        teacher=facts.task == "embedding")
    if getattr(config, "rewind", False):
        parts["rewind copy of the targeted weights"] = facts.linear_bytes
    return Need(parts, hint)


FINETUNE_HINT = ("use finetune_method=lora instead of full fine-tuning, a smaller "
                 "finetune_batch_size or finetune_seq_len, or load the model with "
                 "--device-map auto")


def embedding_parts(config: Any, facts: ModelFacts) -> dict[str, int]:
    """``embeddings=int8|int4`` (rtn, gptq, awq, hqq) rounds each table in place through
    a rounded copy and its per-row grid: about two copies of the largest table."""
    if getattr(config, "embeddings", "none") in (None, "none"):
        return {}
    return {"rounding the embedding tables": 2 * facts.embedding_bytes}


def lora_bytes(facts: ModelFacts, r: int) -> int:
    """LoRA adapters (A: r x in, B: out x r) on every block linear, float32."""
    return sum(r * (i + o) * F32 for b in facts.block_linears() for i, o in b)


def as_facts(facts_or_bytes: Any, hidden: int | None = None) -> ModelFacts:
    """Accept the legacy ``(param_bytes, hidden)`` pair where facts are expected."""
    if isinstance(facts_or_bytes, ModelFacts):
        return facts_or_bytes
    return ModelFacts.simple(int(facts_or_bytes), int(hidden or 1024))


__all__ = [
    "F32", "FINETUNE_HINT", "embedding_parts", "TOKENIZE_BYTES_PER_CHAR", "DataFacts", "ModelFacts", "Need", "StackFacts", "as_facts", "call_estimate", "fmt_bytes", "block_forward_bytes", "forward_bytes",
    "data_facts", "finetune_parts", "hidden_states_bytes", "joined_text_bytes",
    "logits_bytes", "lora_bytes", "lora_input_bytes", "model_facts", "optimizer_bytes",
    "recovery_need",
    "saved_activation_bytes", "saved_per_token", "training_step_bytes",
]


