"""The MoE FFN module, its routers, and the bias-only stand-in for a block's ``ffn_out``.

MoEfication (Zhang et al. 2022, "MoEfication: Transformer Feed-forward Layers are
Mixtures of Experts") splits the ``ff`` intermediate neurons of a dense FFN into ``E``
experts of ``ff / E`` neurons. Expert ``e`` owns index ``e`` of the stacked tensors::

    w_in   (E, d, d_e)    its columns of W_in^T (the up projection for gated FFNs)
    w_gate (E, d, d_e)    its columns of W_gate^T (gated FFNs only)
    w_out  (E, d_e, d)    its rows of W_out^T

so an expert's weights are contiguous slices and every product is a plain
``x_e @ w[e]`` (no transposed operand: measurably faster for the small per-expert
matmuls on CPU). For tokens ``x`` (N, d) the router
gives scores (N, E); a token runs through the experts it selects (top-k, or the
fewest experts whose predicted share of activation energy reaches ``threshold``),
and the outputs are summed with no reweighting, so with every expert selected the
module computes exactly the dense FFN (up to summation order).

Four ways to compute the same function (:meth:`MoEFFN.path_for` picks one per call,
from the token count and the number of selected (token, expert) pairs; no per-token
Python loop in any of them):

* ``grouped``: tokens grouped by expert; per expert, one gather of its tokens (skipped
  when it has them all), two or three matmuls on its contiguous weight slices, one
  scatter-add back (per-expert buffers: one (tokens x k, d) buffer of all pairs was
  slower at large k, where it copies every token k times);
* ``batched``: few tokens per expert: every expert's tokens gathered into one
  (E, C, d) buffer padded to the busiest expert's count, one batched matmul per
  projection, so the op count does not grow with E;
* ``single``: one token (decoding): the chosen experts' weights gathered, one batched
  matmul per projection;
* ``dense``: the dense fallback when the active fraction reaches ``dense_above``: all
  experts in three large matmuls, unselected experts' outputs zeroed.

Speed against the dense FFN: ``bench/moe_ffn.py`` (writes reports/bench/moe_ffn.json).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

ROUTINGS = ("topk", "threshold")

#: active fraction (selected (token, expert) pairs / all pairs) at or above which the
#: MoE FFN computes every expert densely and zeroes the unselected ones: past it the
#: gathers, scatters and small matmuls cost more than the skipped work saves. Measured
#: with ``bench/moe_ffn.py`` (reports/bench/moe_ffn.json) on MiniLM's FFN, 16 experts,
#: 8x128 tokens, 1 thread, a busy machine (provisional): the grouped path took 0.53 /
#: 0.81 / 0.98 of dense's time at 1/2, 3/4 and 7/8 active, the dense fallback 0.87-1.07.
DENSE_ABOVE = 0.85
#: the same for one token (decoding), where per-op overhead dominates: the single-token
#: path took 1.5x dense's time at 1/2 active and 2-2.6x above, the fallback about 1.45x
#: (same measurement, one token).
DENSE_ABOVE_SINGLE = 0.5
#: below this many tokens per expert on average, one batched matmul per projection over
#: all experts (padded) beats the per-expert loop, whose ~5 ops per expert dominate.
LOOP_MIN_ROWS = 48
#: from this many tokens the dense fallback runs one GEMM per projection (else a batched
#: matmul over experts, which needs no weight copy)
DENSE_GEMM_TOKENS = 64
PATHS = ("single", "batched", "grouped", "dense")


class SimilarityRouter(nn.Module):
    """No training: score of expert ``e`` = x . mean of its W_in rows (+ mean bias).

    That is the expert's mean pre-activation; for ReLU FFNs a high mean pre-activation
    means many active neurons (MoEfication's similarity / centroid routing).
    """

    kind = "similarity"

    def __init__(self, hidden: int, n_experts: int):
        super().__init__()
        self.centroids = nn.Parameter(torch.zeros(n_experts, hidden), requires_grad=False)
        self.offset = nn.Parameter(torch.zeros(n_experts), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, d) -> (N, E)
        return F.linear(x, self.centroids, self.offset)

    def flops_per_token(self) -> int:
        return 2 * self.centroids.numel()

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind}


class MLPRouter(nn.Module):
    """Learned: a two-layer MLP on standardized hidden states -> one logit per expert.

    Trained so that ``softmax(logits)`` matches each token's share of activation
    energy across experts (:mod:`compress.moe.routers`).
    """

    kind = "learned"

    def __init__(self, hidden: int, n_experts: int, width: int):
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(hidden))
        self.register_buffer("x_inv_std", torch.ones(hidden))
        self.fc1 = nn.Linear(hidden, width)
        self.fc2 = nn.Linear(width, n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, d) -> (N, E)
        z = (x - self.x_mean) * self.x_inv_std
        return self.fc2(F.relu(self.fc1(z)))

    def flops_per_token(self) -> int:
        return 2 * (self.fc1.weight.numel() + self.fc2.weight.numel())

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "width": self.fc1.out_features}


def make_router(spec: dict[str, Any], hidden: int, n_experts: int) -> nn.Module:
    if spec["kind"] == "similarity":
        return SimilarityRouter(hidden, n_experts)
    if spec["kind"] == "learned":
        return MLPRouter(hidden, n_experts, int(spec["width"]))
    raise ValueError(f"unknown router kind {spec['kind']!r}")


class AddBias(nn.Module):
    """Stands in for a block's ``ffn_out`` linear when the MoE FFN already did the matmul.

    BERT's ``output.dense`` and OPT/BART's ``fc2`` are called by the block on the FFN
    output; after MoEfication they only add the output bias (or nothing).
    """

    def __init__(self, bias: torch.Tensor | None):
        super().__init__()
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.bias is None else x + self.bias

    def extra_repr(self) -> str:
        return f"bias={None if self.bias is None else tuple(self.bias.shape)}"


class MoEFFN(nn.Module):
    """A feed-forward layer split into ``n_experts`` experts; only routed experts run.

    >>> moe = MoEFFN(hidden=576, expert_size=96, n_experts=16, act=nn.SiLU(), gated=True,
    ...              top_k=8)                                         # doctest: +SKIP
    >>> y = moe(x)   # (B, T, 576) -> (B, T, 576), half the FFN computed  # doctest: +SKIP
    """

    #: for :mod:`compress.arch` (native-expert discovery): the 3-D weights, and that each
    #: expert's slice is stored ``[in, out]``.
    EXPERT_PARAMS = {"up": "w_in", "gate": "w_gate", "down": "w_out"}
    is_transposed = True

    def __init__(
        self,
        *,
        hidden: int,
        expert_size: int,
        n_experts: int,
        act: nn.Module,
        gated: bool,
        in_bias: bool = False,
        out_bias: bool = False,
        router: dict[str, Any] | None = None,
        routing: str = "topk",
        top_k: int = 1,
        threshold: float = 0.9,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and n_experts={n_experts}")
        E, de, d = n_experts, expert_size, hidden
        kw = {"dtype": dtype}
        self.hidden, self.expert_size, self.n_experts = d, de, E
        self.gated = gated
        self.routing, self.top_k, self.threshold = routing, int(top_k), float(threshold)
        self.act = act
        self.w_in = nn.Parameter(torch.empty(E, d, de, **kw))
        self.b_in = nn.Parameter(torch.zeros(E, de, **kw)) if in_bias else None
        self.w_gate = nn.Parameter(torch.empty(E, d, de, **kw)) if gated else None
        self.b_gate = nn.Parameter(torch.zeros(E, de, **kw)) if gated and in_bias else None
        self.w_out = nn.Parameter(torch.empty(E, de, d, **kw))
        self.b_out = nn.Parameter(torch.zeros(d, **kw)) if out_bias else None
        self.router = make_router(router or {"kind": "similarity"}, d, E)
        #: when True, ``usage`` accumulates per-expert token counts (plain attribute,
        #: not saved, no hooks); used to measure the active fraction under threshold routing.
        self.track_usage = False
        self.usage: torch.Tensor | None = None
        self.tokens_seen = 0
        #: speed settings (plain attributes, not saved): see :meth:`path_for`
        self.dense_above = DENSE_ABOVE
        self.dense_above_single = DENSE_ABOVE_SINGLE
        self.loop_min_rows = LOOP_MIN_ROWS
        self.last_path: str | None = None
        #: when True (set by ``recover``, plain attribute, not saved), a training forward
        #: passes the router a gradient through a straight-through gate (:meth:`gates`)
        #: while computing exactly the same outputs.
        self.router_grad = False

    # -- description ---------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this module empty (saved as JSON)."""
        return {
            "hidden": self.hidden,
            "expert_size": self.expert_size,
            "n_experts": self.n_experts,
            "gated": self.gated,
            "in_bias": self.b_in is not None,
            "out_bias": self.b_out is not None,
            "router": self.router.spec(),
            "routing": self.routing,
            "top_k": self.top_k,
            "threshold": self.threshold,
        }

    def extra_repr(self) -> str:
        rule = f"top_k={self.top_k}" if self.routing == "topk" else f"threshold={self.threshold}"
        return (f"hidden={self.hidden}, experts={self.n_experts}x{self.expert_size}, "
                f"gated={self.gated}, {rule}")

    def expert_flops_per_token(self) -> int:
        """FLOPs (2 x multiply-adds) of one expert for one token."""
        return 2 * self.hidden * self.expert_size * (3 if self.gated else 2)

    # -- routing -------------------------------------------------------------
    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """(N, E) scores -> (N, E) bool mask of the experts each token runs."""
        N, E = scores.shape
        if self.routing == "topk":
            if self.top_k == E:
                return torch.ones(N, E, dtype=torch.bool, device=scores.device)
            idx = scores.topk(self.top_k, dim=-1).indices  # (N, k)
            return torch.zeros(N, E, dtype=torch.bool, device=scores.device).scatter_(1, idx, True)
        # threshold: fewest experts whose predicted energy share reaches the threshold
        probs = scores.float().softmax(dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)  # (N, E)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # share covered before this expert
        keep_sorted = before < self.threshold  # the first expert always has before=0
        return torch.zeros(N, E, dtype=torch.bool, device=scores.device).scatter_(
            1, order, keep_sorted
        )

    def route(self, x2: torch.Tensor) -> torch.Tensor:
        return self.select(self.router(x2))

    def gates(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, gate) for training the router: ``mask`` the experts selected as in
        :meth:`route`; ``gate = mask + (p - p.detach())`` for every expert, ``p`` the
        softmax of the router's scores. Its value is exactly ``mask`` (the forward is
        unchanged: an unweighted sum of the selected experts), and ``d gate_e / d p_e =
        1`` for every expert, selected or not, so ``dL/dp_e`` is the dot product of the
        loss gradient with expert ``e``'s output on that token: the first-order change
        in the loss from adding (or the negative of removing) that expert. The router is
        pushed towards the experts that would lower the loss, at the boundary of its
        top-k too, which a gradient through the selected experts alone cannot see (a
        straight-through estimator, Bengio et al. 2013, arXiv:1308.3432, over the
        softmax gate of MoE training, Fedus et al. 2021, arXiv:2101.03961). It needs
        every expert's output, so a gated forward runs the dense path."""
        scores = self.router(x2)
        mask = self.select(scores.detach())
        p = scores.float().softmax(dim=-1)
        gate = mask.to(p.dtype) + (p - p.detach())  # exactly the mask in value
        return mask, gate.to(x2.dtype)

    # -- compute -------------------------------------------------------------
    @staticmethod
    def _proj(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return x @ w if b is None else torch.addmm(b, x, w)

    def _expert(self, e: int, xe: torch.Tensor) -> torch.Tensor:
        """act(xe @ w_in[e] + b) [* gate] @ w_out[e]: (n, d) -> (n, d)."""
        h = self._proj(xe, self.w_in[e], None if self.b_in is None else self.b_in[e])  # (n, d_e)
        if self.gated:
            g = self._proj(xe, self.w_gate[e], None if self.b_gate is None else self.b_gate[e])
            h = self.act(g) * h
        else:
            h = self.act(h)
        return h @ self.w_out[e]  # (n, d_e) @ (d_e, d) -> (n, d)

    def _single_token(self, x2: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """One token (decoding): the chosen experts' weights gathered, one batched matmul
        per projection (a fixed number of ops whatever k is)."""
        k = experts.numel()
        xk = x2.expand(k, 1, self.hidden)  # (k, 1, d)
        h = torch.bmm(xk, self.w_in.index_select(0, experts))  # (k, 1, d_e)
        if self.b_in is not None:
            h = h + self.b_in.index_select(0, experts)[:, None]
        if self.gated:
            g = torch.bmm(xk, self.w_gate.index_select(0, experts))
            if self.b_gate is not None:
                g = g + self.b_gate.index_select(0, experts)[:, None]
            h = self.act(g) * h
        else:
            h = self.act(h)
        return torch.bmm(h, self.w_out.index_select(0, experts)).sum(0)  # (k, 1, d) -> (1, d)

    def _grouped(self, x2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Tokens grouped by expert: per expert one gather, its matmuls, one scatter-add."""
        N = x2.shape[0]
        pairs = mask.t().nonzero()  # (P, 2) rows (expert, token), sorted by expert
        tokens = pairs[:, 1]
        counts = mask.sum(0).tolist()
        y = torch.zeros_like(x2)  # (N, d)
        start = 0
        for e, c in enumerate(counts):
            if c == N:  # every token: no gather, no scatter
                y += self._expert(e, x2)
            elif c:
                tok = tokens[start : start + c]
                y.index_add_(0, tok, self._expert(e, x2.index_select(0, tok)))  # (c, d)
            start += c
        return y

    def _batched(self, x2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """All experts in one batched matmul per projection: each expert's tokens gathered
        into a (E, C, d) buffer padded to the busiest expert's count C. A dozen ops
        whatever E is (the per-expert loop issues ~5 per expert), for few tokens per
        expert, where per-op overhead outweighs the padding."""
        N, d = x2.shape
        E = self.n_experts
        pairs = mask.t().nonzero()  # (P, 2) (expert, token), expert-major
        experts, tokens = pairs[:, 0], pairs[:, 1]
        counts = mask.sum(0)  # (E,)
        C = int(counts.max())
        starts = counts.cumsum(0) - counts
        slot = experts * C + (torch.arange(tokens.numel(), device=x2.device) - starts[experts])
        gather = torch.full((E * C,), N, dtype=torch.long, device=x2.device)  # N: a zero row
        gather[slot] = tokens
        xb = torch.cat([x2, x2.new_zeros(1, d)]).index_select(0, gather).view(E, C, d)
        h = torch.bmm(xb, self.w_in)  # (E, C, d_e)
        if self.b_in is not None:
            h = h + self.b_in[:, None]
        if self.gated:
            g = torch.bmm(xb, self.w_gate)
            if self.b_gate is not None:
                g = g + self.b_gate[:, None]
            h = self.act(g) * h
        else:
            h = self.act(h)
        yb = torch.bmm(h, self.w_out).view(E * C, d)  # (E*C, d); padded slots unused
        return torch.zeros_like(x2).index_add_(0, tokens, yb.index_select(0, slot))

    def _dense(self, x2: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The dense fallback: every expert on every token in three large matmuls, the
        outputs of experts a token did not select multiplied by 0 (the same function;
        ``mask=None``: every expert selected, nothing to zero; a float ``mask`` is a
        gate, :meth:`gates`)."""
        N, d = x2.shape
        E, de = self.n_experts, self.expert_size
        if N >= DENSE_GEMM_TOKENS:
            # one GEMM per projection: the (d, E * d_e) weight layout is copied per call,
            # cheap next to the matmul at this many tokens (no second copy kept in memory)
            def proj(w, b):
                wide = w.permute(1, 0, 2).reshape(d, E * de)  # (d, E * d_e)
                return x2 @ wide if b is None else torch.addmm(b.reshape(-1), x2, wide)

            h = proj(self.w_in, self.b_in)  # (N, E * d_e)
            h = self.act(proj(self.w_gate, self.b_gate)) * h if self.gated else self.act(h)
            if mask is not None:
                h = (h.view(N, E, de) * mask.unsqueeze(-1).to(h.dtype)).view(N, E * de)
        else:
            h = torch.matmul(x2, self.w_in)  # (N, d) x (E, d, d_e) -> (E, N, d_e)
            if self.b_in is not None:
                h = h + self.b_in[:, None]
            if self.gated:
                g = torch.matmul(x2, self.w_gate)
                if self.b_gate is not None:
                    g = g + self.b_gate[:, None]
                h = self.act(g) * h
            else:
                h = self.act(h)
            if mask is not None:
                h = h * mask.t().unsqueeze(-1).to(h.dtype)  # (E, N, d_e), unselected zeroed
            h = h.transpose(0, 1).reshape(N, E * de)
        # (N, E * d_e) @ (E * d_e, d): w_out is (E, d_e, d), so its view is free
        return h @ self.w_out.view(E * de, d)

    def path_for(self, n_tokens: int, pairs: int) -> str:
        """Which computation runs for ``n_tokens`` tokens selecting ``pairs`` (token,
        expert) pairs in all: ``single`` (one token), ``dense`` (the active fraction
        ``pairs / (n_tokens * E)`` at least :attr:`dense_above`, or
        :attr:`dense_above_single` for one token: routing would cost more than it
        saves), ``batched`` (fewer than :attr:`loop_min_rows` tokens per
        expert on average) or ``grouped`` (the per-expert loop)."""
        E = self.n_experts
        if n_tokens == 1:
            return "dense" if pairs >= self.dense_above_single * E else "single"
        if pairs >= self.dense_above * n_tokens * E:
            return "dense"
        if pairs < self.loop_min_rows * E:
            return "batched"
        return "grouped"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.hidden)  # (N, d)
        if self.routing == "topk" and self.top_k == self.n_experts and not self.track_usage:
            # every expert for every token: no routing to compute, the dense FFN
            self.last_path = "dense"
            y = self._dense(x2, None)
            return (y if self.b_out is None else y + self.b_out).reshape(shape)
        gate = None
        if self.router_grad and self.training and torch.is_grad_enabled():
            mask, gate = self.gates(x2)  # the same selection; the gate carries the gradient
        else:
            mask = self.route(x2)  # (N, E) bool
        if self.track_usage:
            counts = mask.sum(0).to("cpu", torch.long)
            self.usage = counts if self.usage is None else self.usage + counts
            self.tokens_seen += x2.shape[0]
        N = x2.shape[0]
        pairs = N * self.top_k if self.routing == "topk" else int(mask.sum())
        # a gate reads every expert's output: the dense path
        path = "dense" if gate is not None else self.path_for(N, pairs)
        self.last_path = path
        if path == "single":
            y = self._single_token(x2, mask[0].nonzero().squeeze(1))
        elif path == "dense":
            y = self._dense(x2, mask if gate is None else gate)
        elif path == "batched":
            y = self._batched(x2, mask)
        else:
            y = self._grouped(x2, mask)
        if self.b_out is not None:
            y = y + self.b_out
        return y.reshape(shape)

    def reset_usage(self) -> None:
        self.usage, self.tokens_seen = None, 0
