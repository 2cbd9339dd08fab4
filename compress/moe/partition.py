"""Splitting an FFN's intermediate neurons into equal-size experts.

Two ways, both ending in balanced k-means (every expert gets exactly ``n / E``
neurons):

* ``weights``: cluster the neurons' input-weight rows, L2-normalised (gated FFNs:
  the concatenated ``[gate, up]`` rows), as MoEfication's parameter clustering does;
  neurons that read the same directions of the hidden state land together.
* ``coactivation``: cluster the neurons' activation profiles over calibration tokens
  (``|h|`` per token, L2-normalised per neuron); neurons that fire on the same tokens
  land together, which is what routing needs.

A partition is a permutation ``perm`` of the ``n`` neurons; expert ``e`` owns
``perm[e * n/E : (e + 1) * n/E]``.

>>> perm = balanced_partition(torch.randn(64, 8), n_groups=4)   # doctest: +SKIP
"""

from __future__ import annotations

import torch

from compress.errors import UserError


def balanced_assign(dist: torch.Tensor, capacity: int) -> torch.Tensor:
    """Assign each of ``n`` points to one of ``k`` clusters, exactly ``capacity`` each.

    Greedy rounds: every unassigned point proposes to its nearest cluster that still
    has room; each cluster accepts its closest proposals up to its free room. A full
    cluster drops out, so it ends after at most ``k`` rounds. ``dist`` is (n, k) and
    ``n == k * capacity``.
    """
    n, k = dist.shape
    if n != k * capacity:
        raise ValueError(f"{n} points do not fill {k} clusters of {capacity}")
    labels = torch.full((n,), -1, dtype=torch.long)
    room = torch.full((k,), capacity, dtype=torch.long)
    todo = torch.arange(n)
    while todo.numel():
        d = dist[todo].clone()  # (m, k)
        d[:, room == 0] = float("inf")
        choice = d.argmin(dim=1)  # (m,)
        best = d.gather(1, choice[:, None]).squeeze(1)
        # rank of each proposal among the proposals to the same cluster, closest first
        order = torch.argsort(best, stable=True)
        order = order[torch.argsort(choice[order], stable=True)]
        sorted_choice = choice[order]
        first = torch.searchsorted(sorted_choice, sorted_choice, right=False)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel()) - first
        accept = rank < room[choice]
        labels[todo[accept]] = choice[accept]
        room -= torch.bincount(choice[accept], minlength=k)
        todo = todo[~accept]
    return labels


def _kmeans_pp_init(points: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    n = points.shape[0]
    centers = [points[torch.randint(n, (1,), generator=gen)].squeeze(0)]
    d2 = ((points - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2.clamp_min(0) + 1e-12
        i = torch.multinomial(probs / probs.sum(), 1, generator=gen)
        centers.append(points[i].squeeze(0))
        d2 = torch.minimum(d2, ((points - centers[-1]) ** 2).sum(1))
    return torch.stack(centers)


def balanced_kmeans(
    points: torch.Tensor, n_groups: int, *, iters: int = 25, seed: int = 0
) -> torch.Tensor:
    """Labels (n,) of a k-means clustering with exactly ``n / n_groups`` points per group."""
    n = points.shape[0]
    if n % n_groups:
        raise UserError(f"{n} neurons cannot be split into {n_groups} equal experts")
    capacity = n // n_groups
    points = points.float()
    gen = torch.Generator().manual_seed(seed)
    centers = _kmeans_pp_init(points, n_groups, gen)
    labels = None
    for _ in range(iters):
        dist = torch.cdist(points, centers)  # (n, k)
        new = balanced_assign(dist, capacity)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        centers = torch.zeros_like(centers).index_add_(0, labels, points) / capacity
    return labels


def labels_to_perm(labels: torch.Tensor) -> torch.Tensor:
    """Neuron order with expert 0's neurons first, then expert 1's, ... (stable)."""
    return torch.argsort(labels, stable=True)


def _normalise_rows(m: torch.Tensor) -> torch.Tensor:
    return m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)


def partition_by_weights(
    w_in: torch.Tensor, w_gate: torch.Tensor | None, n_experts: int, *, seed: int = 0,
    iters: int = 25,
) -> torch.Tensor:
    """Permutation grouping neurons by their (normalised) input-weight rows.

    ``w_in`` / ``w_gate`` are (ff, d): one row per intermediate neuron.
    """
    feats = w_in if w_gate is None else torch.cat([w_gate, w_in], dim=1)  # (ff, d or 2d)
    labels = balanced_kmeans(_normalise_rows(feats), n_experts, iters=iters, seed=seed)
    return labels_to_perm(labels)


def partition_by_coactivation(
    acts: torch.Tensor, n_experts: int, *, seed: int = 0, iters: int = 25, max_tokens: int = 4096
) -> torch.Tensor:
    """Permutation grouping neurons that are active on the same calibration tokens.

    ``acts`` is (tokens, ff), the FFN's intermediate activations (what W_out reads).
    """
    if acts.shape[0] > max_tokens:
        gen = torch.Generator().manual_seed(seed)
        acts = acts[torch.randperm(acts.shape[0], generator=gen)[:max_tokens]]
    profiles = acts.abs().t().contiguous()  # (ff, tokens)
    labels = balanced_kmeans(_normalise_rows(profiles), n_experts, iters=iters, seed=seed)
    return labels_to_perm(labels)


def check_partition(perm: torch.Tensor, n: int, n_experts: int) -> None:
    """Raise if ``perm`` is not a permutation of ``range(n)`` split into equal experts."""
    if perm.numel() != n or n % n_experts:
        raise ValueError(f"partition of {perm.numel()} neurons into {n_experts} experts, expected {n}")
    if not torch.equal(torch.sort(perm).values, torch.arange(n)):
        raise ValueError("partition does not cover every neuron exactly once")
