"""Agreement with the dense model, measured in the benchmark's own forward passes.

Perplexity and accuracy miss damage that shows in how far a compressed model's outputs
move from the dense model's (ModelOpt's KL evaluation; Jaiswal et al. 2023, "Compressing
LLMs: the truth is rarely pure and never simple", LLM-KICK). Per task:

* **causal-lm** (on the perplexity windows) and **seq2seq** (on the teacher-forced
  target tokens): token KL(dense || compressed) and top-1 agreement;
* **classification**: prediction agreement (same argmax class as dense);
* **embedding**: cosine of each test text's embedding to the dense embedding.

The dense outputs come from :class:`Agreement` in *record* mode (one dense forward, kept
in the dense reference, :mod:`eval.benchmark.reference`); a compressed run compares in
the forward that also scores its perplexity or accuracy.

**KL is computed from a compact form of the dense distribution**, since 49k-vocabulary
logits over 24 x 512 tokens are too large to keep. For each scored token the reference
keeps the dense model's ``TOPK`` most likely tokens with their log-probabilities, the
log of the probability mass ``P_d(rest)`` of all other tokens, and ``TAIL_SAMPLES``
tokens drawn (with replacement, seeded by the item's index) from the dense distribution
restricted to the rest, with their log-probabilities. The per-token KL is

    KL = sum_{v in topk} p_d(v) (log p_d(v) - log p_c(v))
         + P_d(rest) * mean_{j} (log p_d(t_j) - log p_c(t_j)),   t_j ~ p_d(. | rest)

The first term is exact; the second is a Monte-Carlo estimate of the rest's exact
contribution ``sum_{v in rest} p_d(v) (log p_d(v) - log p_c(v))``, unbiased because the
``t_j`` are drawn from ``p_d`` restricted to the rest. So the reported KL (token-weighted
mean over the scored tokens) is an unbiased estimate of the full-vocabulary KL(dense ||
compressed), exactly 0 for identical outputs, and exact when the dense top-k holds all
the mass. On SmolLM2 (two 256-token windows, k = 32, 32 samples) it came within 0.5% of
the full KL for 30% magnitude pruning and 4-bit RTN and within 7% for 8-bit RTN (KL
0.003), where keeping the top 32 alone (the tail as one bucket, a lower bound) gives 76-79%.
A single token's estimate can be below 0 (the sampled part is noisy); the mean over
thousands of tokens is not, in practice. Top-1 agreement is exact: the dense model's
most likely token is (one of) the compressed model's most likely token(s). Both carry
95% bootstrap intervals over windows or sentences.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from compress.errors import UserError
from eval.benchmark.metrics import Metric
from eval.benchmark.samples import Samples, interval

log = logging.getLogger(__name__)

#: dense tokens kept per scored position (log-probabilities, float32)
TOPK = 32
#: tokens drawn per scored position from the dense distribution outside the top-k
TAIL_SAMPLES = 32


def dense_compact(logp: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """The dense distribution's compact form (module docstring) from ``logp`` (S, V).

    ``ids``/``logp`` (S, k): top-k tokens, most likely first; ``rest`` (S,): log of the
    mass outside them (``-inf`` where none); ``tail_ids``/``tail_logp`` (S, m): tokens
    drawn from the dense distribution outside the top-k (seeded with ``seed``).
    """
    k = min(TOPK, logp.shape[-1])
    ids = logp.topk(k, dim=-1).indices  # (S, k)
    at = logp.gather(-1, ids)
    rest_logp = logp.scatter(-1, ids, float("-inf"))  # (S, V), top-k removed
    rest = rest_logp.logsumexp(-1)  # (S,): exact, no 1 - sum cancellation
    if k == logp.shape[-1]:
        tail = torch.zeros(logp.shape[0], 0, dtype=torch.long, device=logp.device)
    else:
        # p_d(. | rest); rows with no mass left draw uniformly (their weight is 0 anyway)
        probs = (rest_logp - rest.clamp_min(-1e30)[:, None]).exp()
        probs = torch.where(rest[:, None] > float("-inf"), probs, torch.ones_like(probs))
        gen = torch.Generator(device=logp.device).manual_seed(seed)
        tail = torch.multinomial(probs, TAIL_SAMPLES, replacement=True, generator=gen)  # (S, m)
    return {"ids": ids, "logp": at, "rest": rest, "tail_ids": tail,
            "tail_logp": logp.gather(-1, tail)}


def token_kl(dense: dict[str, torch.Tensor], logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(dense || compressed) (module docstring): (S,) float64.

    ``dense`` is :func:`dense_compact`'s form, ``logp`` (S, V) the compressed model's
    log-softmax.
    """
    d_at = dense["logp"].double()
    top = (d_at.exp() * (d_at - logp.gather(-1, dense["ids"]).double())).sum(-1)  # (S,)
    if dense["tail_ids"].shape[-1] == 0:
        return top
    diff = dense["tail_logp"].double() - logp.gather(-1, dense["tail_ids"]).double()  # (S, m)
    weight = dense["rest"].double().exp()  # P_d(rest); 0 where nothing is left
    return top + torch.where(weight > 0, weight * diff.mean(-1), torch.zeros_like(weight))


@dataclass
class DenseReference:
    """The dense model's side of every comparison, from one dense benchmark run.

    ``samples``: per metric name, the dense per-item statistics (paired intervals);
    ``outputs``: per agreement group, the dense outputs (top-k log-probabilities,
    predicted classes, embeddings); ``record``: where it came from (cache key, path,
    built or loaded), for the report.
    """

    samples: dict[str, Samples]
    outputs: dict[str, dict[str, np.ndarray]]
    record: dict[str, Any] = field(default_factory=dict)


class TokenAgreement:
    """Token KL and top-1 agreement over items (windows or sentences) of one corpus.

    Record mode (``reference=None``) keeps the dense compact form per item; compare mode
    checks each item scores the same target tokens as the reference and accumulates
    per-item KL sums, top-1 matches and token counts.
    """

    def __init__(self, name: str, unit: str, reference: dict[str, np.ndarray] | None = None):
        self.name, self.unit, self.reference = name, unit, reference
        self.items: dict[int, dict[str, Any]] = {}

    def observe(self, item: int, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """``logits`` (S, V) that predict ``targets`` (S,) for item ``item``."""
        logp = torch.log_softmax(logits.float(), dim=-1)  # (S, V)
        if self.reference is None:
            compact = dense_compact(logp, seed=item)
            self.items[item] = {k: v.cpu().numpy() for k, v in compact.items()}
            self.items[item]["ids"] = self.items[item]["ids"].astype(np.int32)
            self.items[item]["tail_ids"] = self.items[item]["tail_ids"].astype(np.int32)
            self.items[item]["targets"] = targets.int().cpu().numpy()
            return
        ref = self.reference
        lo, hi = int(ref["offsets"][item]), int(ref["offsets"][item + 1])
        if not np.array_equal(ref["targets"][lo:hi], targets.cpu().numpy()):
            raise UserError(
                f"the dense reference scored other tokens in {self.name} item {item}; "
                "delete the dense reference cache and rerun"
            )
        dense = {
            key: torch.as_tensor(ref[key][lo:hi], device=logp.device)
            for key in ("ids", "logp", "rest", "tail_ids", "tail_logp")
        }
        dense["ids"], dense["tail_ids"] = dense["ids"].long(), dense["tail_ids"].long()
        kl = token_kl(dense, logp)
        # dense's top token is a top token here too (ties count as agreement)
        top1 = logp.gather(-1, dense["ids"][:, :1])[:, 0] >= logp.max(-1).values
        self.items[item] = {
            "kl": float(kl.sum()),
            "top1": int(top1.sum()),
            "tokens": int(targets.numel()),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """Record mode: the reference, items concatenated in item order with offsets."""
        order = sorted(self.items)
        if order != list(range(len(order))):
            raise UserError(f"{self.name}: items {order[:5]}... are not 0..n-1")
        rows = [self.items[i] for i in order]
        sizes = [len(r["targets"]) for r in rows]
        out = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
        out["offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return out

    def samples(self) -> tuple[Samples, Samples]:
        """Compare mode: (KL per token, top-1 agreement) as per-item samples."""
        rows = [self.items[i] for i in sorted(self.items)]
        tokens = np.array([r["tokens"] for r in rows], dtype=float)
        kl = Samples("ratio", self.unit, {"num": [r["kl"] for r in rows], "den": tokens})
        top1 = Samples("ratio", self.unit, {"num": [r["top1"] for r in rows], "den": tokens})
        return kl, top1


class Agreement:
    """The agreement collectors of one benchmark run: off, record, or compare.

    ``Agreement.off()`` measures nothing, ``Agreement.record()`` keeps the dense
    outputs, ``Agreement(reference_arrays)`` compares against them.
    """

    def __init__(self, reference: dict[str, dict[str, np.ndarray]] | None, recording: bool):
        self.reference = reference or {}
        self.recording = recording
        self.tokens: dict[str, TokenAgreement] = {}
        self.recorded: dict[str, dict[str, np.ndarray]] = {}
        self.metrics: list[Metric] = []

    @classmethod
    def off(cls) -> Agreement:
        return cls(None, recording=False)

    @classmethod
    def record(cls) -> Agreement:
        return cls(None, recording=True)

    @property
    def active(self) -> bool:
        return self.recording or bool(self.reference)

    def token_collector(self, group: str, unit: str) -> TokenAgreement | None:
        """A collector for ``group`` (pass its ``observe`` to the scoring forward), or None."""
        if self.recording:
            self.tokens[group] = TokenAgreement(group, unit)
        elif group in self.reference:
            self.tokens[group] = TokenAgreement(group, unit, self.reference[group])
        else:
            return None
        return self.tokens[group]

    def finish_tokens(self, group: str, protocol: dict[str, Any]) -> None:
        """Close ``group``: keep its reference, or add its ``kl_*`` and ``top1_*`` metrics."""
        collector = self.tokens.get(group)
        if collector is None:
            return
        if self.recording:
            self.recorded[group] = collector.arrays()
            return
        kl, top1 = collector.samples()
        proto = dict(
            protocol,
            agreement=f"dense top-{TOPK} exact + {TAIL_SAMPLES} sampled tail tokens per token "
            "(eval.benchmark.agreement)",
        )
        self._add(f"kl_{group}", kl, False, proto, "token KL(dense || compressed), nats")
        self._add(f"top1_{group}", top1, True, dict(proto), "top-1 agreement with dense")

    def outputs(self, group: str, values: np.ndarray, kind: str, protocol: dict[str, Any]) -> None:
        """Per-example outputs: predicted classes (``kind="agreement"``) or unit
        embeddings (``kind="cosine"``); recorded, or compared as ``<kind>_<group>``."""
        values = np.asarray(values)
        if self.recording:
            self.recorded[group] = {"values": values}
            return
        ref = self.reference.get(group)
        if ref is None:
            return
        dense = ref["values"]
        if dense.shape != values.shape:
            raise UserError(
                f"dense reference for {group} has shape {dense.shape}, this run {values.shape}"
            )
        if kind == "agreement":
            per_item = (values == dense).astype(float)
            what = "fraction of examples where the predicted class equals dense's"
        else:
            per_item = (values.astype(np.float64) * dense).sum(-1)  # both L2-normalised
            what = "mean cosine of each example's embedding to the dense embedding"
        s = Samples("mean", "examples", {"x": per_item})
        proto = dict(protocol, agreement=f"{kind} with the dense model's outputs")
        self._add(f"{kind}_{group}", s, True, proto, what)

    def _add(self, name: str, s: Samples, hib: bool, protocol: dict[str, Any], what: str) -> None:
        m = Metric(name, s.value(), hib, protocol, {"measures": what}, interval(s), samples=s)
        self.metrics.append(m)
