"""Building, training and scoring routers on calibration hidden states.

Targets: for each token, the *energy* of each expert, ``||h_e||^2`` of its slice of
the intermediate activations (``act_norm``, the issue's "activation norms") or
``||h_e W_out_e||^2`` of its contribution to the FFN output (``output_norm``). The
learned router is trained so that ``softmax(logits)`` matches each token's energy
shares (KL divergence, Adam); its top experts are then the experts that carry the
most energy, and threshold routing reads the softmax as predicted shares.

Routers are scored on held-out calibration tokens by

* ``energy_recall``: share of the token's expert energy inside the selected experts
  (the oracle, which selects by true energy, gives the upper bound ``oracle_recall``);
* ``topk_overlap``: fraction of the oracle's top-k experts the router also picked;
* ``rel_error``: ``||y_moe - y_dense|| / ||y_dense||`` of the FFN output, the number
  that decides the ``auto`` choice between similarity and learned routing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from compress.moe.convert import DenseFFN
from compress.moe.layer import MLPRouter, MoEFFN, SimilarityRouter

TARGETS = ("act_norm", "output_norm")


@torch.no_grad()
def energy_from_activations(
    h: torch.Tensor, perm: torch.Tensor, n_experts: int, target: str,
    w_out: torch.Tensor | None = None, chunk: int = 1024,
) -> torch.Tensor:
    """(N, E) expert energies from intermediate activations ``h`` (N, ff).

    ``w_out`` (ff, d neuron rows) is needed for ``target="output_norm"``.
    """
    E, de = n_experts, h.shape[1] // n_experts
    if target == "act_norm":
        return torch.cat([h[i : i + chunk][:, perm].reshape(-1, E, de).pow(2).sum(-1)
                          for i in range(0, h.shape[0], chunk)])
    w = w_out[perm].reshape(E, de, -1)  # (E, d_e, d)
    out = []
    for i in range(0, h.shape[0], chunk):
        hp = h[i : i + chunk][:, perm].reshape(-1, E, de)  # (n, E, d_e)
        out.append(torch.einsum("nef,efd->ned", hp, w).pow(2).sum(-1))  # (n, E)
    return torch.cat(out)


@torch.no_grad()
def expert_energy(
    dense: DenseFFN, x: torch.Tensor, perm: torch.Tensor, n_experts: int, target: str,
) -> torch.Tensor:
    """(N, E) energy of each expert for each token of ``x`` (N, d)."""
    return energy_from_activations(dense.activations(x), perm, n_experts, target, dense.w_out)


def similarity_router(dense: DenseFFN, perm: torch.Tensor, n_experts: int) -> SimilarityRouter:
    """Centroid of each expert's input rows (gate rows for gated FFNs) and mean bias."""
    w = dense.w_gate if dense.gated else dense.w_in
    b = dense.b_gate if dense.gated else dense.b_in
    de = dense.ff // n_experts
    router = SimilarityRouter(dense.hidden, n_experts).to(w.device, w.dtype)
    with torch.no_grad():
        router.centroids.copy_(w[perm].reshape(n_experts, de, -1).mean(1))
        if b is not None:
            router.offset.copy_(b[perm].reshape(n_experts, de).mean(1))
    return router


def _kl(logits: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """KL(shares || softmax(logits)), mean over tokens (0 when the router is exact)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    ent = torch.where(shares > 0, shares * shares.clamp_min(1e-30).log(), torch.zeros_like(shares))
    return (ent - shares * logp).sum(-1).mean()


def _shares(energy: torch.Tensor) -> torch.Tensor:
    return energy / energy.sum(-1, keepdim=True).clamp_min(1e-30)


def train_mlp_router(
    x_train: torch.Tensor, e_train: torch.Tensor, x_val: torch.Tensor, e_val: torch.Tensor, *,
    width: int, steps: int, lr: float, batch: int = 256, seed: int = 0,
) -> tuple[MLPRouter, dict[str, float]]:
    """Train an :class:`MLPRouter` on (hidden state, expert energy) pairs.

    Returns the router (eval mode, no grad) and its losses: held-out KL before and after
    training, and the training-batch KL over the first and last 10% of steps.
    """
    d, E = x_train.shape[1], e_train.shape[1]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    router = MLPRouter(d, E, width).to(x_train.device)  # initialised on the CPU: same seed, same router
    with torch.no_grad():
        router.x_mean.copy_(x_train.mean(0))
        router.x_inv_std.copy_(1.0 / x_train.std(0).clamp_min(1e-6))
    s_train, s_val = _shares(e_train), _shares(e_val)
    with torch.no_grad():
        val_before = float(_kl(router(x_val), s_val))
    opt = torch.optim.Adam(router.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    curve = []
    router.train()
    for _ in range(steps):
        idx = torch.randint(x_train.shape[0], (min(batch, x_train.shape[0]),),
                            generator=gen).to(x_train.device)
        loss = _kl(router(x_train[idx]), s_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        curve.append(float(loss.detach()))
    router.eval()
    router.requires_grad_(False)
    with torch.no_grad():
        val_after = float(_kl(router(x_val), s_val))
    tenth = max(1, len(curve) // 10)
    losses = {
        "val_kl_before": val_before,
        "val_kl_after": val_after,
        "train_kl_first": float(sum(curve[:tenth]) / tenth) if curve else math.nan,
        "train_kl_last": float(sum(curve[-tenth:]) / tenth) if curve else math.nan,
        "steps": steps,
    }
    return router, losses


@torch.no_grad()
def score_router(
    moe: MoEFFN, dense: DenseFFN, x: torch.Tensor, energy: torch.Tensor,
    y_dense: torch.Tensor | None = None,
) -> dict[str, float]:
    """Held-out quality of ``moe``'s routing (see the module docstring).

    ``energy`` is the (N, E) act_norm energy of ``x``; ``y_dense`` the dense FFN output
    without output bias (computed when not given).
    """
    mask = moe.route(x)  # (N, E)
    total = energy.sum(-1).clamp_min(1e-30)
    k_mean = mask.sum(-1).float().mean()
    recall = ((energy * mask).sum(-1) / total).mean()
    # the oracle selects the same number of experts per token, by true energy
    counts = mask.sum(-1)
    ranks = energy.argsort(dim=-1, descending=True).argsort(dim=-1)  # (N, E) rank of each expert
    oracle = ranks < counts[:, None]
    oracle_recall = ((energy * oracle).sum(-1) / total).mean()
    overlap = ((mask & oracle).sum(-1).float() / counts.clamp_min(1)).mean()
    y_dense = dense.output(x) if y_dense is None else y_dense
    y_moe = moe(x) - (moe.b_out if moe.b_out is not None else 0)
    rel = (y_moe - y_dense).norm() / y_dense.norm().clamp_min(1e-30)
    out = {
        "energy_recall": float(recall),
        "oracle_recall": float(oracle_recall),
        "topk_overlap": float(overlap),
        "rel_error": float(rel),
        "experts_per_token": float(k_mean),
        "active_fraction": float(k_mean / moe.n_experts),
    }
    if isinstance(moe.router, MLPRouter):
        out["val_kl"] = float(_kl(moe.router(x), _shares(energy)))
    return out
