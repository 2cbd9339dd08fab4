"""SparseGPT: one-shot pruning with second-order weight reconstruction.

Frantar & Alistarh (2023), "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot" (arXiv:2301.00774). For a linear layer with calibration inputs
``X`` and ``H = 2/n X^T X`` (dampened by ``damp * mean(diag(H))``), columns are
visited left to right; each pruned weight's error is compensated on the columns not
yet visited with the optimal brain surgeon (OBS) update restricted to them:

    err      = (w[:, j] - mask_j * w[:, j]) / U[j, j]
    w[:, j:] -= err U[j, j:]                      # U: upper Cholesky factor of H^-1

``U[j, j:] / U[j, j]`` is the first row of ``(H_F)^-1`` scaled by its first entry, with
``F = {j, ..., n}`` the columns still free: the update is exactly OBS on ``F``
(the test checks it against explicit inverses). The mask is chosen adaptively, per
block of ``blocksize`` columns (the paper's B_s = 128), from the OBS saliency
``w^2 / [H_F^-1]_jj = w^2 / U[j, j]^2`` at the block's start: the lowest
``sparsity`` share of the block (``scope="layer"``, the paper's rule; ``"row"``: of
each row within the block). For N:M patterns (the paper's section 3.5), every ``M``
columns the ``M - N`` lowest saliencies of each row are pruned, with the weights as
updated so far. Updates past the block are applied once per block (lazy batching).
"""

from __future__ import annotations

import torch

from compress.hessian import inverse_cholesky, working_copies


@torch.no_grad()
def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    *,
    nm: tuple[int, int] | None = None,
    scope: str = "layer",
    blocksize: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, float, float]:
    """Prune ``W`` (``[out, in]``) given ``H`` (``[in, in]``).

    ``nm=(n, m)`` keeps ``n`` of every ``m`` consecutive inputs of each row (``sparsity``
    is then ignored). Returns (pruned and updated weights ``[out, in]`` float32, summed
    OBS loss, dampening used as a fraction of the mean diagonal).
    """
    W, H, dead = working_copies(W, H)
    out_f, in_f = W.shape
    U, used = inverse_cholesky(H, damp)
    U = U.float()
    if nm is not None:
        n_keep, m = nm
        if blocksize % m:
            blocksize = m * max(1, blocksize // m)
    loss = 0.0
    for i1 in range(0, in_f, blocksize):
        i2 = min(i1 + blocksize, in_f)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()  # (out, count)
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = torch.diag(U1)  # (count,)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if nm is None:
            saliency = W1.pow(2) / d1.pow(2)[None, :]  # (out, count)
            if scope == "row":
                k = int(round(sparsity * count))
                if k:
                    idx = saliency.topk(k, dim=1, largest=False).indices  # (out, k)
                    mask1.scatter_(1, idx, True)
            else:
                k = int(round(sparsity * saliency.numel()))
                if k:
                    idx = saliency.flatten().topk(k, largest=False).indices
                    flat = torch.zeros(saliency.numel(), dtype=torch.bool, device=W.device)
                    flat[idx] = True
                    mask1 = flat.view(out_f, count)
        for i in range(count):
            if nm is not None and i % m == 0:
                sal = W1[:, i:i + m].pow(2) / d1[i:i + m].pow(2)[None, :]  # (out, m)
                idx = sal.topk(m - n_keep, dim=1, largest=False).indices
                mask1.scatter_(1, i + idx, True)
            w = W1[:, i]  # (out,)
            d = U1[i, i]
            q = torch.where(mask1[:, i], torch.zeros_like(w), w)
            Q1[:, i] = q
            err = (w - q) / d  # (out,)
            loss += float(err.pow(2).sum() / 2)
            W1[:, i:] -= err[:, None] @ U1[i:i + 1, i:]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W, loss, used
