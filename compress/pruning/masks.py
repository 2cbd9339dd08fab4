"""Setting weights to zero in place, exactly, without copying the model.

Three selection rules, all in place under ``torch.no_grad`` and in row chunks of at
most :data:`CHUNK_ELEMENTS` scores, so the extra memory is one chunk of scores and
indices, never a copy of a matrix (let alone of the model):

* :func:`prune_rows_` - per output row, the ``round(s * in)`` lowest scores (Wanda's
  comparison group; ``topk`` per chunk of rows).
* :func:`prune_pool_` - one threshold across a pool of matrices (one matrix for
  ``scope=layer``, every targeted matrix for ``scope=global``). The exact k-th
  smallest score is found by :func:`kth_smallest`, a streamed selection: a histogram
  over the current value range, then a narrower range holding the k-th value, until
  few enough values remain to sort. Ties at the threshold are broken in storage
  order, so exactly ``round(s * numel)`` weights become zero.
* :func:`prune_nm_` - N:M: in every group of M consecutive inputs of each output
  row, keep the N highest scores (2:4 and 4:8 as in NVIDIA's sparse tensor cores).

A *score function* maps ``(target, rows)`` to a fresh float tensor of scores for
``out_in(target)[rows]`` (shape ``(r, in)``); the weight is zeroed where the score is
lowest. See :mod:`compress.pruning.scoring`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from compress.errors import UserError
from compress.pruning.targets import Target, out_in

#: most scores held at once (4 MiB of float32).
CHUNK_ELEMENTS = 1 << 20
#: histogram bins per selection pass.
BINS = 1 << 16
#: a candidate range holding at most this many values is sorted directly.
GATHER_LIMIT = 1 << 20

ScoreFn = Callable[[Target, slice], torch.Tensor]


def _libc_trim() -> Callable[[], None]:
    try:
        import ctypes

        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to hand back
        return lambda: None
    return lambda: trim(0) and None


#: Hand memory freed by chunk temporaries back to the OS. glibc keeps freed blocks of a
#: few MiB in its heap (its mmap threshold grows with each large free), so without this
#: the resident set creeps up over thousands of chunks although live memory does not.
release_freed_memory = _libc_trim()


def row_chunks(target: Target, limit: int = CHUNK_ELEMENTS) -> Iterator[slice]:
    n_out, n_in = out_in(target).shape
    step = max(1, limit // max(1, n_in))
    for r0 in range(0, n_out, step):
        yield slice(r0, min(n_out, r0 + step))


def count_to_prune(sparsity: float, numel: int, what: str) -> int:
    """``round(sparsity * numel)``, refusing targets that round to nothing or everything."""
    k = int(round(sparsity * numel))
    if k <= 0:
        raise UserError(
            f"target {sparsity:g} removes no weight of {what} ({numel} weights: it rounds to 0); "
            f"the smallest reachable step is {1 / numel:.3g}"
        )
    if k >= numel:
        raise UserError(
            f"target {sparsity:g} removes every weight of {what} ({numel} weights); "
            "choose a lower target or a coarser scope"
        )
    return k


# --- per output row -------------------------------------------------------------


@torch.no_grad()
def prune_rows_(target: Target, score: ScoreFn, sparsity: float) -> int:
    """Zero the ``round(s * in)`` lowest-scored weights of every output row; returns count."""
    view = out_in(target)
    n_out, n_in = view.shape
    k = count_to_prune(sparsity, n_in, f"each row of {target.name}")
    for rows in row_chunks(target):
        idx = score(target, rows).contiguous().topk(k, dim=1, largest=False, sorted=False).indices  # (r, k)
        view[rows].scatter_(1, idx, 0)
    release_freed_memory()
    return k * n_out


# --- N:M --------------------------------------------------------------------------


@torch.no_grad()
def prune_nm_(target: Target, score: ScoreFn, n: int, m: int) -> int:
    """Keep the ``n`` highest scores of every ``m`` consecutive inputs of each row."""
    view = out_in(target)
    n_out, n_in = view.shape
    if n_in % m:
        raise UserError(
            f"{n}:{m} needs the input size to be a multiple of {m}; {target.name} has {n_in}"
        )
    for rows in row_chunks(target):
        sc = score(target, rows).contiguous()
        r = sc.shape[0]
        idx = sc.view(r, n_in // m, m).topk(m - n, dim=2, largest=False, sorted=False).indices
        view[rows].view(r, n_in // m, m).scatter_(2, idx, 0)  # (r, groups, m)
    release_freed_memory()
    return (m - n) * (n_in // m) * n_out


# --- one threshold over a pool of matrices ------------------------------------------


def _score_stream(pool: list[Target], score: ScoreFn) -> Callable[[], Iterator[torch.Tensor]]:
    def stream() -> Iterator[torch.Tensor]:
        for t in pool:
            for rows in row_chunks(t):
                yield score(t, rows).contiguous()
            # every pass over the pool frees thousands of chunk temporaries: hand them
            # back per matrix, or glibc's heap grows by up to the model's size (measured
            # on SmolLM2: +500 MiB during the threshold search without this)
            release_freed_memory()

    return stream


def _bin_index(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    # Monotone in x (every float op here rounds monotonically), so each bin is a
    # contiguous value range and re-selecting a bin by value selects the same values.
    return ((x - lo) * (BINS / (hi - lo))).floor_().clamp_(0, BINS - 1).long()


@torch.no_grad()
def kth_smallest(stream: Callable[[], Iterator[torch.Tensor]], k: int) -> tuple[float, int]:
    """Exact k-th smallest value (1-based) of a re-iterable stream of float tensors.

    Returns ``(value, n_less)`` where ``n_less`` counts values strictly below it.
    Memory: one chunk plus a histogram (or at most :data:`GATHER_LIMIT` candidates);
    time: a few passes over the stream.
    """
    lo, hi, total = math.inf, -math.inf, 0
    for x in stream():
        lo = min(lo, float(x.min()))
        hi = max(hi, float(x.max()))
        total += x.numel()
    below = 0  # values < lo; the answer lies in [lo, hi]

    def in_range(x: torch.Tensor, b: int | None = None) -> torch.Tensor:
        x = x[(x >= lo) & (x <= hi)]
        return x if b is None else x[_bin_index(x, lo, hi) == b]

    def exact(b: int | None) -> tuple[float, int]:
        # on the host: a pool may span devices (device_map), and candidates are few
        vals = torch.cat([in_range(x, b).cpu() for x in stream()])
        value = float(vals.kthvalue(k - below).values)
        return value, below + int((vals < value).sum())

    if total <= GATHER_LIMIT:
        return exact(None)  # small enough to select directly (one matrix, usually)
    while True:
        if lo == hi:
            return lo, below
        if not math.isfinite(BINS / (hi - lo)):
            return exact(None)  # a range too narrow to bin: sort what is left
        counts = torch.zeros(BINS, dtype=torch.long)
        for x in stream():
            counts += torch.bincount(_bin_index(in_range(x), lo, hi), minlength=BINS).cpu()
        release_freed_memory()
        cum = counts.cumsum(0)
        b = int(torch.searchsorted(cum, torch.tensor(k - below)))  # first bin reaching k
        below += int(cum[b - 1]) if b > 0 else 0
        if int(counts[b]) <= GATHER_LIMIT:
            return exact(b)
        new_lo, new_hi = math.inf, -math.inf
        for x in stream():
            x = in_range(x, b)
            if x.numel():
                new_lo, new_hi = min(new_lo, float(x.min())), max(new_hi, float(x.max()))
        if (new_lo, new_hi) == (lo, hi):
            return exact(b)  # cannot narrow further
        lo, hi = new_lo, new_hi


@torch.no_grad()
def prune_pool_(pool: list[Target], score: ScoreFn, sparsity: float, what: str) -> int:
    """Zero exactly ``round(s * numel)`` lowest-scored weights across ``pool``."""
    total = sum(t.numel() for t in pool)
    k = count_to_prune(sparsity, total, what)
    threshold, n_less = kth_smallest(_score_stream(pool, score), k)
    ties = k - n_less  # weights scored exactly at the threshold still to zero
    for t in pool:
        view = out_in(t)
        for rows in row_chunks(t):
            sc = score(t, rows).contiguous()
            drop = sc < threshold
            if ties > 0:
                eq = (sc == threshold).view(-1)
                n_eq = int(eq.sum())
                if n_eq > ties:  # only the first `ties` of them, in storage order
                    first = eq.nonzero().view(-1)[ties:]
                    eq[first] = False
                    n_eq = ties
                drop |= eq.view_as(drop)
                ties -= n_eq
            view[rows].masked_fill_(drop, 0)
    release_freed_memory()
    return k


# --- measuring ----------------------------------------------------------------------


@torch.no_grad()
def zeros_in(target: Target) -> int:
    w = target.module.weight
    return w.numel() - int(torch.count_nonzero(w))


def measure(targets: list[Target]) -> dict[str, float | int]:
    """Measured zeros / weights over ``targets``."""
    numel = sum(t.numel() for t in targets)
    zeros = sum(zeros_in(t) for t in targets)
    return {"weights": numel, "zeros": zeros, "sparsity": zeros / numel if numel else 0.0}
